//! Loading and attaching the kernel programs.
//!
//! `plan` checks each plan's attach points on the running kernel, `attach`
//! loads the object and attaches a plan's programs, `config` turns kernel
//! facts into the programs' [`KernelConfig`], `calibrate` enables the exact
//! page-table walk of the tracepoint plan, `stats` reads the kernel's
//! statistics of the attached programs, and [`Probes`] owns the loaded
//! object: while it lives the programs stay attached, dropping it detaches
//! everything.

mod attach;
mod calibrate;
mod config;
pub mod limitation;
mod object;
pub mod plan;
mod reap;
mod stats;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    Ebpf,
};
use ptwatch_common::{
    names, DontneedSlot, IoRequest, KernelConfig, NodeCounters, ProcessCounters, ProcessKey, ThreadContext,
    DEFAULT_MAX_TRACKED_PROCESSES,
};

pub use config::kernel_config;
use plan::{Attach, KernelSymbols, Outcome, PlanReport, PlanResult, ProbeMode};
pub use reap::STALE_REQUEST_AGE;
pub use stats::ProgramStats;

use crate::kernel::{btf::KernelBtf, kallsyms::Kallsyms, support};

/// How PTE pages reclaimed by a DONTNEED request are counted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum ReclaimAccounting {
    /// Each PTE table freed inside a DONTNEED request on its address space
    /// and outside `free_pgtables` (fentry and kprobe plans): exact. The
    /// request is marked at entry, or, where PT_RECLAIM works and exec is
    /// marked, told by elimination (a PTE-table free of the running task's
    /// own mm outside teardown, munmap and exec is PT_RECLAIM's).
    FreeClassification,
    /// Tables under the request's range at entry minus at exit (tracepoint
    /// plan): exact, also for multi-threaded processes.
    PageTableWalk,
    /// Drop of `mm->pgtables_bytes` across the request (tracepoint plan
    /// without the walk): exact only when no other thread changes the
    /// process' page tables meanwhile. `why`: why the walk is not used.
    PgtablesBytes { why: String },
}

impl ReclaimAccounting {
    pub fn method(&self) -> &'static str {
        match self {
            Self::FreeClassification => "free_classification",
            Self::PageTableWalk => "page_table_walk",
            Self::PgtablesBytes { .. } => "pgtables_bytes",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this ptwatch binary was built without its eBPF object (bpf-linker was missing at build time); rebuild with `cargo xtask run`")]
    NoObject,
    #[error(transparent)]
    Btf(#[from] crate::kernel::btf::BtfError),
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("testing whether PT_RECLAIM works")]
    PtReclaimCheck(#[source] std::io::Error),
    #[error("probe mode {mode} is not possible on this kernel: {reasons}")]
    NoPlan { mode: &'static str, reasons: String },
}

/// `(program, attach point)` of each attached program.
pub type AttachedPrograms = Vec<(&'static str, String)>;

/// The maps the aggregation layer reads (see `ptwatch_common::counters`
/// for what each holds and why every count is in exactly one of
/// `processes` and `overflow`, and always in `node`).
pub struct ProbeMaps {
    /// Per process: never evicted; the agent removes an entry once it has
    /// seen the process exit and kept its counts.
    pub processes: HashMap<MapData, ProcessKey, ProcessCounters>,
    /// DONTNEED counts of busy processes, direct-mapped by tgid, and who
    /// owns each claimed slot: part of their owner's counts
    /// (`aggregate::slots`).
    pub dontneed_slots: Array<MapData, DontneedSlot>,
    pub dontneed_slot_owners: HashMap<MapData, u32, ProcessKey>,
    /// Per cgroup id: what processes could not count in `processes` (full),
    /// and under `UNATTRIBUTED_CGROUP` frees of address spaces with no
    /// owner left. Entries are never removed.
    pub overflow: HashMap<MapData, u64, ProcessCounters>,
    pub node: PerCpuArray<MapData, NodeCounters>,
    /// Per thread inside a hooked call, and io_uring requests in flight
    /// (tracepoint plan): what missed exit hooks leave there is removed by
    /// the aggregator's full harvests (threads that are gone) and
    /// [`ProbeMaps::reap_stale_io_requests`].
    pub threads: HashMap<MapData, u32, ThreadContext>,
    pub io_requests: HashMap<MapData, u64, IoRequest>,
}

/// What a caller needs from the object besides the aggregation every plan
/// does. The default is the agent's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Send a [`ptwatch_common::TraceEvent`] per DONTNEED request and per
    /// page-table free (`ptwatch trace`).
    pub events: Option<EventOptions>,
    /// Entries of `PROCESS_COUNTERS` (`--max-tracked-processes`); the
    /// cgroup overflow map is sized from it.
    pub max_tracked_processes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { events: None, max_tracked_processes: DEFAULT_MAX_TRACKED_PROCESSES }
    }
}

/// Kernel-side event filters and the ring buffer size of `ptwatch trace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventOptions {
    /// Only this process (0: every process).
    pub tgid: u32,
    /// Only tasks in this cgroup v2 id (0: every cgroup).
    pub cgroup_id: u64,
    /// Ring buffer size: a power of two, at least one page.
    pub ring_bytes: u32,
}

impl LoadOptions {
    fn apply(&self, base: KernelConfig) -> KernelConfig {
        match self.events {
            Some(events) => KernelConfig {
                emit_events: 1,
                trace_tgid: u64::from(events.tgid),
                trace_cgroup_id: events.cgroup_id,
                ..base
            },
            None => base,
        }
    }
}

/// The event stream of an object loaded with [`LoadOptions::events`].
pub struct EventMaps {
    pub events: RingBuf<MapData>,
    /// Events that did not fit in the ring buffer, per CPU.
    pub lost: PerCpuArray<MapData, u64>,
}

/// The loaded, attached programs. Dropping this detaches them.
pub struct Probes {
    ebpf: Ebpf,
    plan: PlanReport,
    accounting: ReclaimAccounting,
    /// `(program, attach point)` for each attached program.
    attached: AttachedPrograms,
    /// Whether PT_RECLAIM works on this kernel (tested at load).
    pt_reclaim: bool,
}

/// What a successful plan attempt yields.
struct Attempt {
    ebpf: Ebpf,
    accounting: ReclaimAccounting,
    attached: AttachedPrograms,
    /// Tracepoint plan: why the walk is or is not used.
    walk: Option<String>,
}

impl Probes {
    /// Choose and attach a plan for `mode` on this kernel.
    pub fn load(btf: KernelBtf, mode: ProbeMode) -> Result<Self, ProbeError> {
        Self::load_with(btf, mode, LoadOptions::default())
    }

    /// [`Probes::load`] with options: the same plans, in the same order.
    ///
    /// The BTF is consumed: after the offsets and attach points are
    /// resolved it is freed as soon as a plan is tried, keeping only the
    /// ids fentry programs need ([`KernelBtf::into_skeleton`]), which keeps
    /// the agent's start-up peak to one copy of the blob.
    pub fn load_with(btf: KernelBtf, mode: ProbeMode, options: LoadOptions) -> Result<Self, ProbeError> {
        // Tracepoints need tracefs; the other plans do not, so a failure
        // here only rules out the tracepoint plan.
        let tracefs = support::ensure_tracefs().map_err(|err| err.to_string());
        // Before anything is attached (the agent's own tgid is filtered in
        // the programs anyway): whether a DONTNEED can reclaim at all.
        let pt_reclaim = support::pt_reclaim_works().map_err(ProbeError::PtReclaimCheck)?;
        let base = options.apply(kernel_config(&btf, tracefs.as_ref().ok().copied(), pt_reclaim)?);
        let kallsyms = Kallsyms::load(ptwatch_common::hooks::ALL.iter().map(|hook| hook.function))
            .map_err(|err| tracing::warn!(error = %err, "cannot read /proc/kallsyms: the kprobe plan is unavailable"))
            .ok();
        let kernel = KernelSymbols {
            btf: &btf,
            kallsyms: kallsyms.as_ref(),
            tracefs: tracefs.as_ref().ok().copied(),
            io_uring_readable: config::io_uring_readable(&base),
            version: crate::kernel::procfs::kernel_version(),
            pt_reclaim,
            exec_marked: base.task_in_execve_bit != u64::MAX,
            request_events: options.events.is_some(),
        };
        let mut checks: Vec<_> = [Attach::Fentry, Attach::Kprobe, Attach::Tracepoint]
            .into_iter()
            .map(|attach| plan::check(attach, &kernel))
            .collect();
        drop(kallsyms);
        if let (Err(reason), Some(tracepoint)) = (&tracefs, checks.last_mut()) {
            tracepoint.usable = Err(reason.clone());
        }
        let mut btf = Some(btf);
        let mut results = Vec::new();
        let mut chosen: Option<Attempt> = None;
        for mut check in checks {
            let attach = check.attach;
            let outcome = if !mode.alternatives().contains(&attach) {
                Outcome::Excluded
            } else if chosen.is_some() {
                Outcome::NotTried
            } else if let Err(reason) = &check.usable {
                Outcome::Unusable(reason.clone())
            } else {
                // Only fentry programs need BTF at load (their targets'
                // ids), and fentry is the first plan: whatever is tried,
                // no later plan needs the blob.
                let skeleton = match (attach, btf.take()) {
                    (Attach::Fentry, Some(btf)) => {
                        let functions: Vec<&str> = check.to_attach().map(|point| point.name.as_str()).collect();
                        Some(btf.into_skeleton(&functions)?)
                    }
                    _ => None,
                };
                let attempted = attach::attempt(base, &mut check, skeleton.as_ref(), &options);
                drop(skeleton);
                match attempted {
                    Ok(attempt) => {
                        chosen = Some(attempt);
                        Outcome::Chosen
                    }
                    Err(reason) => Outcome::Failed(reason),
                }
            };
            match &outcome {
                Outcome::Chosen => {
                    tracing::info!(plan = attach.as_str(), detail = %check.describe(), "probe plan attached");
                    for limitation in &check.limitations {
                        tracing::info!(plan = attach.as_str(), %limitation, "the probe plan misses");
                    }
                }
                Outcome::Failed(reason) | Outcome::Unusable(reason) => {
                    tracing::info!(plan = attach.as_str(), %reason, "probe plan not usable");
                }
                Outcome::NotTried | Outcome::Excluded => {}
            }
            results.push(PlanResult { bystander_cost: attach.bystander_cost(), check, outcome });
        }
        drop(btf);
        let Some(attempt) = chosen else {
            let reasons = results
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Failed(reason) | Outcome::Unusable(reason) => {
                        Some(format!("{}: {reason}", r.check.attach.as_str()))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ProbeError::NoPlan { mode: mode.as_str(), reasons });
        };
        let chosen_attach = results
            .iter()
            .find(|r| matches!(r.outcome, Outcome::Chosen))
            .map_or(Attach::Tracepoint, |r| r.check.attach);
        Ok(Self {
            ebpf: attempt.ebpf,
            plan: PlanReport { chosen: chosen_attach, plans: results, walk: attempt.walk },
            accounting: attempt.accounting,
            attached: attempt.attached,
            pt_reclaim,
        })
    }

    /// Whether PT_RECLAIM works on this kernel: DONTNEED frees empty PTE
    /// tables (the behavioural check run at load).
    pub fn pt_reclaim_active(&self) -> bool {
        self.pt_reclaim
    }

    pub fn plan(&self) -> &PlanReport {
        &self.plan
    }

    pub fn mode(&self) -> Attach {
        self.plan.mode()
    }

    pub fn accounting(&self) -> &ReclaimAccounting {
        &self.accounting
    }

    pub fn attached(&self) -> &[(&'static str, String)] {
        &self.attached
    }

    /// The loaded object, for the kernel's statistics of its programs and
    /// maps (self-metrics, `export::self_metrics`).
    pub fn object(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Hand the aggregation maps over to their reader. Call once.
    pub fn take_maps(&mut self) -> Result<ProbeMaps, ProbeError> {
        Ok(ProbeMaps {
            processes: self.take(names::PROCESS_COUNTERS)?,
            dontneed_slots: self.take(names::DONTNEED_SLOTS)?,
            dontneed_slot_owners: self.take(names::DONTNEED_SLOT_OWNERS)?,
            overflow: self.take(names::OVERFLOW_COUNTERS)?,
            node: self.take(names::NODE_COUNTERS)?,
            threads: self.take(names::THREAD_CONTEXT)?,
            io_requests: self.take(names::IO_REQUESTS)?,
        })
    }

    /// Hand the event stream over to its reader (objects loaded with
    /// [`LoadOptions::events`]). Call once.
    pub fn take_events(&mut self) -> Result<EventMaps, ProbeError> {
        Ok(EventMaps { events: self.take(names::TRACE_EVENTS)?, lost: self.take(names::TRACE_LOST)? })
    }

    fn take<T>(&mut self, name: &'static str) -> Result<T, ProbeError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
        T::try_from(map).map_err(|source| ProbeError::Map { name, source })
    }
}
