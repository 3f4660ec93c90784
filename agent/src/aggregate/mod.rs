//! From kernel maps to a consistent picture of processes.
//!
//! The kernel keeps cumulative counters per live tgid. [`Aggregator::harvest`]
//! reads them, notices processes that have exited, keeps their final counts
//! for a configurable time (so a short-lived process is still scraped at
//! least once) and then forgets them, deleting their kernel map entries so
//! the maps stay small and a recycled pid starts from zero.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ptwatch_common::{NodeCounters, ProcessCounters};

use crate::{
    kernel::procfs,
    probes::{ProbeError, ProbeMaps},
};

/// The counters of one process, as exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pid: u32,
    pub comm: String,
    pub pte_pages_reclaimed: u64,
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    /// When the agent noticed the process was gone.
    pub exited_at: Option<Instant>,
}

impl ProcessRecord {
    fn update(&mut self, counters: &ProcessCounters) {
        self.pte_pages_reclaimed = counters.pte_pages_reclaimed;
        self.dontneed_calls = counters.dontneed_calls;
        self.dontneed_bytes = counters.dontneed_bytes;
    }
}

/// Everything a scrape exports about the kernel side.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub node: NodeCounters,
    pub processes: Vec<ProcessRecord>,
}

/// Anything that can tell whether a pid is still running; real code asks
/// `/proc`, unit tests script it.
pub trait Liveness {
    fn is_alive(&self, pid: u32) -> bool;
}

/// Liveness from `/proc/<pid>`.
pub struct ProcLiveness;

impl Liveness for ProcLiveness {
    fn is_alive(&self, pid: u32) -> bool {
        procfs::process_exists(pid)
    }
}

/// Where kernel counters come from: the real maps, or a script in tests.
pub trait CounterSource {
    fn node(&self) -> Result<NodeCounters, ProbeError>;
    fn processes(&self) -> Result<Vec<(u32, ProcessCounters)>, ProbeError>;
    /// Forget a process in the kernel maps.
    fn forget(&mut self, pid: u32);
}

impl CounterSource for ProbeMaps {
    fn node(&self) -> Result<NodeCounters, ProbeError> {
        let per_cpu = self.node.get(&0, 0).map_err(|source| ProbeError::Map {
            name: "NODE_COUNTERS",
            source,
        })?;
        Ok(per_cpu
            .iter()
            .fold(NodeCounters::default(), |mut sum, cpu| {
                sum.pte_pages_reclaimed += cpu.pte_pages_reclaimed;
                sum.dontneed_calls += cpu.dontneed_calls;
                sum.dontneed_bytes += cpu.dontneed_bytes;
                sum.process_map_update_failures += cpu.process_map_update_failures;
                sum.inflight_update_failures += cpu.inflight_update_failures;
                sum
            }))
    }

    fn processes(&self) -> Result<Vec<(u32, ProcessCounters)>, ProbeError> {
        self.processes
            .iter()
            .map(|entry| {
                entry.map_err(|source| ProbeError::Map {
                    name: "PROCESS_COUNTERS",
                    source,
                })
            })
            .collect()
    }

    fn forget(&mut self, pid: u32) {
        // An absent key is fine: another harvest may have removed it.
        let _ = self.processes.remove(&pid);
    }
}

/// Keeps per-process records across harvests.
pub struct Aggregator<S, L = ProcLiveness> {
    source: S,
    liveness: L,
    exited_ttl: Duration,
    processes: BTreeMap<u32, ProcessRecord>,
}

impl<S: CounterSource> Aggregator<S> {
    pub fn new(source: S, exited_ttl: Duration) -> Self {
        Self::with_liveness(source, ProcLiveness, exited_ttl)
    }
}

impl<S: CounterSource, L: Liveness> Aggregator<S, L> {
    pub fn with_liveness(source: S, liveness: L, exited_ttl: Duration) -> Self {
        Self {
            source,
            liveness,
            exited_ttl,
            processes: BTreeMap::new(),
        }
    }

    /// Read the kernel maps and bring the records up to date.
    pub fn harvest(&mut self, now: Instant) -> Result<Snapshot, ProbeError> {
        let node = self.source.node()?;
        let kernel = self.source.processes()?;
        let mut gone = Vec::new();
        for (pid, counters) in &kernel {
            let alive = self.liveness.is_alive(*pid);
            let record = self.processes.entry(*pid).or_insert_with(|| ProcessRecord {
                pid: *pid,
                comm: procfs::comm_to_string(&counters.comm),
                pte_pages_reclaimed: 0,
                dontneed_calls: 0,
                dontneed_bytes: 0,
                exited_at: None,
            });
            if record.exited_at.is_some() && alive {
                // The pid was recycled after we saw the old process exit:
                // this is a new process.
                *record = ProcessRecord {
                    pid: *pid,
                    comm: procfs::comm_to_string(&counters.comm),
                    pte_pages_reclaimed: 0,
                    dontneed_calls: 0,
                    dontneed_bytes: 0,
                    exited_at: None,
                };
            }
            record.update(counters);
            if !alive {
                record.exited_at.get_or_insert(now);
                gone.push(*pid);
            }
        }
        for pid in gone {
            self.source.forget(pid);
        }
        // Records whose kernel entry is gone (forgotten above in an earlier
        // harvest, or evicted): check they are still alive.
        for record in self.processes.values_mut() {
            if record.exited_at.is_none() && !kernel.iter().any(|(pid, _)| *pid == record.pid) {
                if !self.liveness.is_alive(record.pid) {
                    record.exited_at = Some(now);
                }
            }
        }
        let ttl = self.exited_ttl;
        self.processes.retain(|_, record| {
            record
                .exited_at
                .is_none_or(|at| now.saturating_duration_since(at) < ttl)
        });
        Ok(Snapshot {
            node,
            processes: self.processes.values().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use std::{cell::RefCell, collections::HashSet, rc::Rc};

    use super::*;

    #[derive(Default)]
    struct Script {
        node: NodeCounters,
        processes: BTreeMap<u32, ProcessCounters>,
        forgotten: Vec<u32>,
    }

    #[derive(Clone, Default)]
    struct Shared(Rc<RefCell<Script>>);

    impl CounterSource for Shared {
        fn node(&self) -> Result<NodeCounters, ProbeError> {
            Ok(self.0.borrow().node)
        }
        fn processes(&self) -> Result<Vec<(u32, ProcessCounters)>, ProbeError> {
            Ok(self
                .0
                .borrow()
                .processes
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect())
        }
        fn forget(&mut self, pid: u32) {
            let mut script = self.0.borrow_mut();
            script.processes.remove(&pid);
            script.forgotten.push(pid);
        }
    }

    #[derive(Clone, Default)]
    struct Alive(Rc<RefCell<HashSet<u32>>>);

    impl Liveness for Alive {
        fn is_alive(&self, pid: u32) -> bool {
            self.0.borrow().contains(&pid)
        }
    }

    fn counters(reclaimed: u64, comm: &[u8]) -> ProcessCounters {
        let mut c = ProcessCounters {
            pte_pages_reclaimed: reclaimed,
            dontneed_calls: 1,
            dontneed_bytes: 4096,
            ..Default::default()
        };
        c.comm[..comm.len()].copy_from_slice(comm);
        c
    }

    #[test]
    fn live_processes_are_reported_with_kernel_counts() {
        let source = Shared::default();
        let alive = Alive::default();
        alive.0.borrow_mut().insert(10);
        source
            .0
            .borrow_mut()
            .processes
            .insert(10, counters(512, b"worker"));
        source.0.borrow_mut().node.pte_pages_reclaimed = 600;
        let mut agg = Aggregator::with_liveness(source.clone(), alive, Duration::from_secs(60));
        let snap = agg.harvest(Instant::now()).unwrap();
        assert_eq!(snap.node.pte_pages_reclaimed, 600);
        assert_eq!(snap.processes.len(), 1);
        assert_eq!(snap.processes[0].pte_pages_reclaimed, 512);
        assert_eq!(snap.processes[0].comm, "worker");
        assert!(source.0.borrow().forgotten.is_empty());
    }

    #[test]
    fn exited_processes_stay_for_the_ttl_then_go() {
        let source = Shared::default();
        let alive = Alive::default();
        source
            .0
            .borrow_mut()
            .processes
            .insert(20, counters(7, b"short"));
        let mut agg = Aggregator::with_liveness(source.clone(), alive, Duration::from_secs(30));
        let t0 = Instant::now();
        let snap = agg.harvest(t0).unwrap();
        // Exited before the first harvest: still exported with its counts,
        // and its kernel entry is released at once.
        assert_eq!(snap.processes[0].pte_pages_reclaimed, 7);
        assert!(snap.processes[0].exited_at.is_some());
        assert_eq!(source.0.borrow().forgotten, vec![20]);
        let snap = agg.harvest(t0 + Duration::from_secs(29)).unwrap();
        assert_eq!(snap.processes.len(), 1, "kept within the TTL");
        let snap = agg.harvest(t0 + Duration::from_secs(31)).unwrap();
        assert!(snap.processes.is_empty(), "dropped after the TTL");
    }

    #[test]
    fn a_recycled_pid_starts_a_new_record() {
        let source = Shared::default();
        let alive = Alive::default();
        source
            .0
            .borrow_mut()
            .processes
            .insert(30, counters(100, b"old"));
        let mut agg =
            Aggregator::with_liveness(source.clone(), alive.clone(), Duration::from_secs(300));
        let t0 = Instant::now();
        agg.harvest(t0).unwrap();
        // A new process gets pid 30 and reclaims 3 pages.
        alive.0.borrow_mut().insert(30);
        source
            .0
            .borrow_mut()
            .processes
            .insert(30, counters(3, b"new"));
        let snap = agg.harvest(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(snap.processes.len(), 1);
        assert_eq!(snap.processes[0].comm, "new");
        assert_eq!(snap.processes[0].pte_pages_reclaimed, 3);
        assert!(snap.processes[0].exited_at.is_none());
    }

    #[test]
    fn a_process_that_exits_later_is_noticed() {
        let source = Shared::default();
        let alive = Alive::default();
        alive.0.borrow_mut().insert(40);
        source
            .0
            .borrow_mut()
            .processes
            .insert(40, counters(9, b"later"));
        let mut agg =
            Aggregator::with_liveness(source.clone(), alive.clone(), Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(agg.harvest(t0).unwrap().processes[0].exited_at.is_none());
        alive.0.borrow_mut().remove(&40);
        let snap = agg.harvest(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(snap.processes[0].pte_pages_reclaimed, 9);
        assert!(snap.processes[0].exited_at.is_some());
        assert_eq!(source.0.borrow().forgotten, vec![40]);
    }
}
