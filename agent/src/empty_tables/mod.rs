//! Empty page tables as a live metric: the agent's periodic, budgeted run of
//! the `ptwatch scan` estimator ([`crate::scan::process::scan`]) over every
//! process of the node.
//!
//! PT_RECLAIM (6.14+) frees a PTE table only when one `MADV_DONTNEED` covers
//! its whole 2 MiB span; kernels without it free none. What is left behind,
//! empty, is what an operator can win back (by a kernel upgrade, or by
//! making allocators release whole spans), so the agent estimates it for
//! every process, in passes of bounded CPU time:
//!
//! 1. a census of every process (`stat`, `status`: [`census`]), which is
//!    what the node sum covers;
//! 2. the processes that are due, in the order of [`schedule`], each
//!    estimated within a share of what is left of the pass' budget (exactly
//!    if it fits, else sampled, with a 99 % interval);
//! 3. a [`Snapshot`] for the exporter: every process (the last estimate of
//!    each, or bounds from its `status` if none yet), and sums per cgroup
//!    and for the node.
//!
//! It runs on its own thread and interval, never inside a scrape, and knows
//! nothing of the aggregation: the agent tells it which processes it tracks
//! ([`Tracked`]) and reads the snapshot back.

pub mod census;
pub mod schedule;
pub mod snapshot;

use std::{collections::HashMap, time::Duration};

pub use snapshot::{PassReport, ProcessEmpty, Snapshot, Sum};

use self::census::{Fingerprint, Seen};
use crate::scan::{
    self,
    budget::{Budget, CostModel},
    estimate::{Bounds, Geometry},
    Method, Options,
};

/// How often and how long the agent estimates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Time between passes.
    pub interval: Duration,
    /// CPU time (user + system) one pass may use.
    pub budget: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        // At most 0.5 % of one core (300 ms a minute), census included: with
        // the rest of the agent (0.25-0.3 % at 1,000 tracked processes,
        // docs/benchmarks.md) under 1 %. A minute is fresh enough for memory
        // that accumulates over hours.
        Self { interval: Duration::from_secs(60), budget: Duration::from_millis(300) }
    }
}

/// A process the agent tracks, as it identifies it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    pub pid: u32,
    /// `/proc/PID/stat` start time, when the agent knows it: a process on a
    /// reused pid is then not taken for the tracked one.
    pub start_time: Option<u64>,
    /// The cgroup v2 path the agent exports for it (so that the sums agree
    /// with its other cgroup series); None: read from `/proc`.
    pub cgroup: Option<String>,
    /// It has series of its own.
    pub own_series: bool,
}

/// The latest snapshot, shared between the estimating task and the
/// exporter (which prints it at every scrape until the next pass).
#[derive(Debug, Default)]
pub struct Latest(std::sync::Mutex<Option<std::sync::Arc<Snapshot>>>);

impl Latest {
    pub fn set(&self, snapshot: Snapshot) {
        let mut latest = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *latest = Some(std::sync::Arc::new(snapshot));
    }

    /// None until the first pass has finished.
    pub fn get(&self) -> Option<std::sync::Arc<Snapshot>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Stop a pass when less than this is left: a process estimated in less
/// would get neither `smaps` nor a useful sample; it waits for the next pass.
const MIN_STEP: Duration = Duration::from_millis(2);

/// What the estimator remembers of a process between passes.
struct Known {
    start_time: u64,
    /// From `/proc/PID/cgroup` when first seen.
    cgroup: Option<String>,
    estimate: Option<Estimated>,
    /// The pass at which reading its `smaps` or `pagemap` was refused (the
    /// agent lacks `CAP_SYS_PTRACE` for another user's or a more privileged
    /// process): not tried again for a while.
    denied_at: Option<u64>,
}

struct Estimated {
    method: Method,
    tables: u64,
    empty: Bounds,
    pass: u64,
    fingerprint: Fingerprint,
}

/// The agent's estimator: keeps estimates and cost calibration across passes.
pub struct Estimator {
    settings: Settings,
    geometry: Geometry,
    cost: CostModel,
    known: HashMap<u32, Known>,
    passes: u64,
    cpu_total: Duration,
    seed: u64,
}

impl Estimator {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            geometry: scan::geometry(),
            cost: CostModel::default(),
            known: HashMap::new(),
            passes: 0,
            cpu_total: Duration::ZERO,
            seed: scan::read::fresh_seed(),
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// One pass, on the calling thread (it blocks for up to about the
    /// budget in CPU time, longer in wall time on a busy machine).
    pub fn pass(&mut self, tracked: &[Tracked]) -> Snapshot {
        let budget = Budget::cpu(self.settings.budget);
        self.passes += 1;
        let seen = match census::census() {
            Ok(seen) => seen,
            Err(err) => {
                tracing::warn!(error = %err, "listing /proc failed; no empty-table estimate this pass");
                Vec::new()
            }
        };
        let tracked: HashMap<u32, &Tracked> = tracked.iter().map(|t| (t.pid, t)).collect();
        let tracked_as =
            |s: &Seen| tracked.get(&s.pid).filter(|t| t.start_time.is_none_or(|st| st == s.stat.start_time));

        // Forget exited processes and reused pids; meet new ones.
        let live: HashMap<u32, u64> = seen.iter().map(|s| (s.pid, s.stat.start_time)).collect();
        self.known.retain(|pid, known| live.get(pid) == Some(&known.start_time));
        for s in &seen {
            self.known.entry(s.pid).or_insert_with(|| Known {
                start_time: s.stat.start_time,
                cgroup: match tracked_as(s).and_then(|t| t.cgroup.clone()) {
                    Some(path) => Some(path),
                    None => census::cgroup_of(s.pid),
                },
                estimate: None,
                denied_at: None,
            });
        }

        let candidates: Vec<schedule::Candidate> = seen
            .iter()
            .map(|s| {
                let known = self.known.get(&s.pid);
                let estimate = known.and_then(|k| k.estimate.as_ref());
                let unchanged = estimate.is_some_and(|e| e.fingerprint == s.fingerprint());
                let denied = known.and_then(|k| k.denied_at);
                let due = match denied {
                    // Refused: ask again as rarely as a stale estimate.
                    Some(at) => schedule::due(s.pid, Some(at), true, self.passes),
                    None => schedule::due(s.pid, estimate.map(|e| e.pass), unchanged, self.passes),
                };
                schedule::Candidate {
                    pid: s.pid,
                    tables: s.status.tables(self.geometry).unwrap_or(0),
                    own_series: tracked_as(s).is_some_and(|t| t.own_series),
                    due,
                }
            })
            .collect();
        let order = schedule::order(&candidates);
        let by_pid: HashMap<u32, &Seen> = seen.iter().map(|s| (s.pid, s)).collect();
        let mut report = PassReport { passes: self.passes, budget: self.settings.budget, ..PassReport::default() };
        for (done, pid) in order.iter().enumerate() {
            if budget.remaining().is_some_and(|left| left < MIN_STEP) {
                report.deferred = (order.len() - done) as u64;
                break;
            }
            let Some(s) = by_pid.get(pid) else { continue };
            self.estimate(s, &budget, &mut report);
        }

        let processes = seen
            .iter()
            .map(|s| {
                let known = self.known.get(&s.pid);
                let t = tracked_as(s);
                let cgroup = t.and_then(|t| t.cgroup.clone()).or_else(|| known.and_then(|k| k.cgroup.clone()));
                let tables = s.status.tables(self.geometry).unwrap_or(0);
                let (method, empty, passes_old) = match known.and_then(|k| k.estimate.as_ref()) {
                    Some(e) => (e.method, drifted(e.empty, e.tables, tables), Some(self.passes - e.pass)),
                    None => (Method::Bounded, scan::procstat::status_bounds(&s.status, self.geometry), None),
                };
                ProcessEmpty {
                    pid: s.pid,
                    start_time: s.stat.start_time,
                    comm: s.status.comm.clone(),
                    cgroup,
                    own_series: t.is_some_and(|t| t.own_series),
                    method,
                    tables,
                    empty,
                    passes_old,
                }
            })
            .collect();
        report.listed = seen.len() as u64;
        report.cpu = budget.used();
        self.cpu_total += report.cpu;
        Snapshot::new(self.geometry.page_size, processes, report, self.cpu_total)
    }

    /// Estimate one process within its share of what is left.
    fn estimate(&mut self, s: &Seen, budget: &Budget, report: &mut PassReport) {
        let share =
            budget.remaining().unwrap_or(self.settings.budget).min(self.settings.budget.mul_f64(schedule::MAX_SHARE));
        let options = Options {
            top: 0,
            budget: budget.share(share),
            seed: self.seed ^ u64::from(s.pid).rotate_left(20) ^ self.passes,
        };
        match scan::process::scan(s.pid, self.geometry, options, &mut self.cost) {
            Ok(scan) if scan.start_time == s.stat.start_time => {
                match scan.method {
                    Method::Exact => report.estimated_exact += 1,
                    Method::Sampled | Method::Bounded => report.estimated_sampled += 1,
                }
                if let Some(known) = self.known.get_mut(&s.pid) {
                    known.estimate = Some(Estimated {
                        method: scan.method,
                        tables: scan.tables,
                        empty: scan.empty(),
                        pass: self.passes,
                        fingerprint: s.fingerprint(),
                    });
                }
            }
            // Exited or replaced since the census: the next pass sees it.
            Ok(_) => {}
            Err(err) if err.is_vanished() => {}
            Err(scan::ScanError::PermissionDenied { .. }) => {
                report.denied += 1;
                if let Some(known) = self.known.get_mut(&s.pid) {
                    known.denied_at = Some(self.passes);
                }
            }
            Err(err) => {
                tracing::debug!(pid = s.pid, error = %crate::error_chain::ErrorChain(&err), "cannot estimate empty page tables")
            }
        }
    }
}

/// An older estimate made when the process had `then` tables, now that it
/// has `now`: tables added since may be empty or not, tables freed may have
/// been empty or not, so the range widens by the difference.
fn drifted(empty: Bounds, then: u64, now: u64) -> Bounds {
    if now >= then {
        Bounds::new(empty.min, empty.estimate, empty.max + (now - then))
    } else {
        let freed = then - now;
        Bounds::new(empty.min.saturating_sub(freed), empty.estimate.min(now), empty.max.min(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_widens_the_range() {
        let e = Bounds::new(10, 20, 30);
        assert_eq!(drifted(e, 100, 100), e);
        assert_eq!(drifted(e, 100, 105), Bounds::new(10, 20, 35));
        assert_eq!(drifted(e, 100, 90), Bounds::new(0, 20, 30));
        assert_eq!(drifted(e, 100, 15), Bounds::new(0, 15, 15));
    }

    #[test]
    fn a_pass_covers_every_process_and_this_one_exactly() {
        let mut estimator =
            Estimator::new(Settings { interval: Duration::from_secs(60), budget: Duration::from_secs(5) });
        let own = std::process::id();
        let tracked = [Tracked { pid: own, own_series: true, cgroup: Some("/mine".into()), start_time: None }];
        let snapshot = estimator.pass(&tracked);
        let me = snapshot.process(own, None).expect("own process in the snapshot");
        assert!(me.own_series);
        assert_eq!(me.cgroup.as_deref(), Some("/mine"));
        assert_eq!(me.passes_old, Some(0));
        assert_ne!(me.method, Method::Bounded, "own process estimated at the first pass");
        assert_eq!(snapshot.node.processes, snapshot.processes.len() as u64);
        assert_eq!(snapshot.node.processes, snapshot.pass.listed);
        assert!(snapshot.cgroups.contains_key("/mine"));
        assert_eq!(snapshot.other.processes + 1, snapshot.node.processes);
        assert!(snapshot.pass.cpu > Duration::ZERO);

        // Nothing about this process changes much in between: a second pass
        // does not need to read it again unless its counters moved.
        let again = estimator.pass(&tracked);
        assert_eq!(again.pass.passes, 2);
        assert!(
            again.pass.estimated_exact + again.pass.estimated_sampled
                < snapshot.pass.estimated_exact + snapshot.pass.estimated_sampled
        );
    }

    #[test]
    fn a_spent_budget_leaves_bounds() {
        let mut estimator = Estimator::new(Settings { interval: Duration::from_secs(60), budget: Duration::ZERO });
        let snapshot = estimator.pass(&[]);
        assert!(snapshot.processes.iter().all(|p| p.method == Method::Bounded));
        assert_eq!(snapshot.node.by_method[2], snapshot.node.processes);
        assert!(snapshot.pass.deferred > 0);
        assert!(snapshot.node.empty.min <= snapshot.node.empty.estimate);
    }
}
