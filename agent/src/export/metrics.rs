//! The metric families ptwatch exports, built from a fresh [`Snapshot`] at
//! every scrape by a Prometheus [`Collector`], so no background copy of the
//! kernel maps can go stale.
//!
//! Every metric is documented in `docs/metrics.md`; keep the two in step.

use std::{sync::Mutex, time::Instant};

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
    Encoder as _, Registry, TextEncoder,
};

use super::self_metrics::{SelfReading, SelfSource};
use crate::aggregate::{CgroupRecord, MapUsage, ProcessRecord, Snapshot};

/// Facts about the agent fixed at start-up.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub version: String,
    pub kernel: String,
    pub probe_mode: String,
    /// [`crate::probes::ReclaimAccounting::method`].
    pub reclaim_accounting: String,
    pub pt_reclaim_supported: bool,
    /// `(event, attach)` of each planned event; attach `none` when the
    /// event cannot be observed.
    pub probes: Vec<(String, String)>,
    /// Page-table frees are probed (fentry or kprobe plan).
    pub frees_observed: bool,
    /// The DONTNEED tracepoint programs are attached.
    pub dontneed_attached: bool,
}

impl AgentInfo {
    pub fn new(probes: &crate::probes::Probes, pt_reclaim_supported: bool) -> Self {
        let plan = probes.plan();
        let attach =
            |choice: &crate::probes::plan::EventChoice| choice.attach.map_or("none", |a| a.as_str()).to_owned();
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: crate::kernel::procfs::kernel_release(),
            probe_mode: probes.mode().as_str().to_owned(),
            reclaim_accounting: probes.accounting().method().to_owned(),
            pt_reclaim_supported,
            probes: vec![
                (plan.pagetable_free.event.to_owned(), attach(&plan.pagetable_free)),
                (plan.pt_reclaim.event.to_owned(), attach(&plan.pt_reclaim)),
            ],
            frees_observed: plan.pagetable_free.attach.is_some(),
            dontneed_attached: ptwatch_common::names::MADVISE_PROGRAMS
                .iter()
                .all(|(_, walk, plain)| probes.attached().iter().any(|(name, _)| name == walk || name == plain)),
        }
    }
}

/// Names of the metric families the agent exports with this plan.
pub fn exported_families(frees_observed: bool) -> Vec<&'static str> {
    ALL_FAMILIES
        .iter()
        .filter(|f| frees_observed || !f.name.contains("pagetable_pages_freed"))
        .map(|f| f.name)
        .collect()
}

/// Something that yields a fresh snapshot of the kernel counters.
pub trait SnapshotSource: Send {
    /// `full`: also ask the host about every process and cgroup (the
    /// periodic harvest); otherwise only about new ones (a scrape), see
    /// [`crate::aggregate::Aggregator::harvest_counters`].
    fn snapshot(&mut self, full: bool) -> anyhow::Result<Snapshot>;
}

impl<S, L, H> SnapshotSource for crate::aggregate::Aggregator<S, L, H>
where
    S: crate::aggregate::CounterSource + Send,
    L: crate::aggregate::Liveness + Send,
    H: crate::aggregate::Host + Send,
{
    fn snapshot(&mut self, full: bool) -> anyhow::Result<Snapshot> {
        let now = Instant::now();
        Ok(if full { self.harvest(now)? } else { self.harvest_counters(now)? })
    }
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

/// Per-process labels: the cgroup ones are omitted from a sample when
/// unknown (an empty value, which Prometheus treats as absent).
const PROCESS_LABELS: &[&str] = &["pid", "comm", "cgroup", "container_id", "pod_uid"];
const CGROUP_LABELS: &[&str] = &["cgroup", "container_id", "pod_uid"];

const PTE_PAGES_RECLAIMED: Family = Family {
    name: "ptwatch_pte_pages_reclaimed_total",
    help: "PTE page-table pages freed by PT_RECLAIM in the process' address space (one page each, 4 KiB on x86_64).",
    kind: MetricType::COUNTER,
    labels: PROCESS_LABELS,
};
const DONTNEED_CALLS: Family = Family {
    name: "ptwatch_madvise_dontneed_calls_total",
    help: "Successful MADV_DONTNEED and MADV_DONTNEED_LOCKED calls (madvise and process_madvise) by the process.",
    kind: MetricType::COUNTER,
    labels: PROCESS_LABELS,
};
const DONTNEED_BYTES: Family = Family {
    name: "ptwatch_madvise_dontneed_bytes_total",
    help: "Bytes covered by the process' successful MADV_DONTNEED calls.",
    kind: MetricType::COUNTER,
    labels: PROCESS_LABELS,
};
const PAGETABLE_PAGES_FREED: Family = Family {
    name: "ptwatch_pagetable_pages_freed_total",
    help: "Page-table pages freed in the process' address space, by cause (reclaim, unmap, exit, other, collapse, thp) and level (pte, pmd, pud, p4d, unknown). fentry and kprobe probe modes only.",
    kind: MetricType::COUNTER,
    labels: &["pid", "comm", "cgroup", "container_id", "pod_uid", "cause", "level"],
};
const PROCESS_PAGETABLE_BYTES: Family = Family {
    name: "ptwatch_process_pagetable_bytes",
    help: "Page-table memory of the live process now (VmPTE of /proc/<pid>/status), bytes.",
    kind: MetricType::GAUGE,
    labels: PROCESS_LABELS,
};
const CGROUP_PTE_PAGES_RECLAIMED: Family = Family {
    name: "ptwatch_cgroup_pte_pages_reclaimed_total",
    help: "PTE page-table pages freed by PT_RECLAIM in processes of the cgroup, including processes that exited.",
    kind: MetricType::COUNTER,
    labels: CGROUP_LABELS,
};
const CGROUP_DONTNEED_CALLS: Family = Family {
    name: "ptwatch_cgroup_madvise_dontneed_calls_total",
    help: "Successful MADV_DONTNEED calls by processes of the cgroup, including processes that exited.",
    kind: MetricType::COUNTER,
    labels: CGROUP_LABELS,
};
const CGROUP_DONTNEED_BYTES: Family = Family {
    name: "ptwatch_cgroup_madvise_dontneed_bytes_total",
    help:
        "Bytes covered by successful MADV_DONTNEED calls of processes of the cgroup, including processes that exited.",
    kind: MetricType::COUNTER,
    labels: CGROUP_LABELS,
};
const CGROUP_PAGETABLE_PAGES_FREED: Family = Family {
    name: "ptwatch_cgroup_pagetable_pages_freed_total",
    help: "Page-table pages freed in processes of the cgroup, by cause and level, including processes that exited. fentry and kprobe probe modes only.",
    kind: MetricType::COUNTER,
    labels: &["cgroup", "container_id", "pod_uid", "cause", "level"],
};
const CGROUP_PAGETABLE_BYTES: Family = Family {
    name: "ptwatch_cgroup_pagetable_bytes",
    help: "Page-table memory charged to the cgroup now (pagetables of its cgroup v2 memory.stat), bytes; for cgroups with tracked processes.",
    kind: MetricType::GAUGE,
    labels: CGROUP_LABELS,
};
const NODE_PAGETABLE_BYTES: Family = Family {
    name: "ptwatch_node_pagetable_bytes",
    help: "Page-table memory of the node now (PageTables of /proc/meminfo), bytes.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const NODE_PAGETABLE_PAGES_FREED: Family = Family {
    name: "ptwatch_node_pagetable_pages_freed_total",
    help: "Page-table pages freed on this node since the agent started, by cause and level. fentry and kprobe probe modes only.",
    kind: MetricType::COUNTER,
    labels: &["cause", "level"],
};
const PROBE_INFO: Family = Family {
    name: "ptwatch_probe_info",
    help: "Always 1; for each event (pagetable_free, pt_reclaim), how it is probed: fentry, kprobe, tracepoint, or none when this kernel cannot show it.",
    kind: MetricType::GAUGE,
    labels: &["event", "attach"],
};
const NODE_PTE_PAGES_RECLAIMED: Family = Family {
    name: "ptwatch_node_pte_pages_reclaimed_total",
    help: "PTE page-table pages freed by PT_RECLAIM on this node since the agent started, including processes that exited.",
    kind: MetricType::COUNTER,
    labels: &[],
};
const NODE_DONTNEED_CALLS: Family = Family {
    name: "ptwatch_node_madvise_dontneed_calls_total",
    help: "Successful MADV_DONTNEED calls on this node since the agent started.",
    kind: MetricType::COUNTER,
    labels: &[],
};
const NODE_DONTNEED_BYTES: Family = Family {
    name: "ptwatch_node_madvise_dontneed_bytes_total",
    help: "Bytes covered by successful MADV_DONTNEED calls on this node since the agent started.",
    kind: MetricType::COUNTER,
    labels: &[],
};
const MAP_UPDATE_FAILURES: Family = Family {
    name: "ptwatch_map_update_failures_total",
    help: "Kernel map updates that failed (an event was counted on the node but not per process).",
    kind: MetricType::COUNTER,
    labels: &["map"],
};
const TRACKED_PROCESSES: Family = Family {
    name: "ptwatch_tracked_processes",
    help: "Processes with their own per-process series, including exited ones kept for --exited-ttl.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const FOLDED_PROCESSES: Family = Family {
    name: "ptwatch_folded_processes",
    help: "Processes counted by the agent (live, or exited within --exited-ttl) without their own series: their counts are in the pid=\"other\" series.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const BUILD_INFO: Family = Family {
    name: "ptwatch_build_info",
    help: "Always 1; labels describe the agent version, the kernel release and the probe mode in use.",
    kind: MetricType::GAUGE,
    labels: &["version", "kernel", "probe_mode"],
};
const PT_RECLAIM_SUPPORTED: Family = Family {
    name: "ptwatch_pt_reclaim_supported",
    help: "1 if the running kernel reclaims empty PTE tables on MADV_DONTNEED (tested at start-up), else 0.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const RECLAIM_ACCOUNTING: Family = Family {
    name: "ptwatch_reclaim_accounting_info",
    help: "Always 1; `method` says how reclaim is counted: page_table_walk (exact) or pgtables_bytes (approximate for multi-threaded processes).",
    kind: MetricType::GAUGE,
    labels: &["method"],
};
const APPROXIMATE_CALLS: Family = Family {
    name: "ptwatch_node_approximate_dontneed_calls_total",
    help: "DONTNEED calls whose reclaim was measured through pgtables_bytes instead of an exact page-table walk.",
    kind: MetricType::COUNTER,
    labels: &[],
};
const SCRAPE_ERRORS: Family = Family {
    name: "ptwatch_scrape_errors_total",
    help: "Scrapes at which the kernel maps could not be read.",
    kind: MetricType::COUNTER,
    labels: &[],
};

const MAP_ENTRIES: Family = Family {
    name: "ptwatch_map_entries",
    help: "Entries in each kernel hash map of the agent now (process and free counters: after the last harvest released exited processes).",
    kind: MetricType::GAUGE,
    labels: &["map"],
};
const MAP_MAX_ENTRIES: Family = Family {
    name: "ptwatch_map_max_entries",
    help: "Capacity of each kernel hash map of the agent (LRU maps evict their oldest entry when full).",
    kind: MetricType::GAUGE,
    labels: &["map"],
};
const PROBE_ATTACHED: Family = Family {
    name: "ptwatch_probe_attached",
    help: "1 when the event (pagetable_free, pt_reclaim, dontneed) has a working probe, else 0.",
    kind: MetricType::GAUGE,
    labels: &["event"],
};
const BPF_STATS_ENABLED: Family = Family {
    name: "ptwatch_bpf_stats_enabled",
    help: "1 while kernel.bpf_stats_enabled is set, so that the kernel counts eBPF program runs and their time.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const BPF_PROGRAM_RUNS: Family = Family {
    name: "ptwatch_bpf_program_runs_total",
    help: "Runs of each attached eBPF program counted by the kernel (run_cnt) while kernel.bpf_stats_enabled=1; exported only then.",
    kind: MetricType::COUNTER,
    labels: &["program"],
};
const BPF_PROGRAM_RUN_SECONDS: Family = Family {
    name: "ptwatch_bpf_program_run_seconds_total",
    help: "Time spent in each attached eBPF program counted by the kernel (run_time_ns) while kernel.bpf_stats_enabled=1; exported only then.",
    kind: MetricType::COUNTER,
    labels: &["program"],
};
const PROCESS_CPU_SECONDS: Family = Family {
    name: "process_cpu_seconds_total",
    help: "Total user and system CPU time spent by the agent in seconds.",
    kind: MetricType::COUNTER,
    labels: &[],
};
const PROCESS_RESIDENT_MEMORY: Family = Family {
    name: "process_resident_memory_bytes",
    help: "Resident memory size of the agent in bytes.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const PROCESS_START_TIME: Family = Family {
    name: "process_start_time_seconds",
    help: "Start time of the agent since unix epoch in seconds.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const PROCESS_OPEN_FDS: Family = Family {
    name: "process_open_fds",
    help: "Number of open file descriptors of the agent.",
    kind: MetricType::GAUGE,
    labels: &[],
};

const ALL_FAMILIES: &[&Family] = &[
    &PTE_PAGES_RECLAIMED,
    &PAGETABLE_PAGES_FREED,
    &PROCESS_PAGETABLE_BYTES,
    &CGROUP_PTE_PAGES_RECLAIMED,
    &CGROUP_DONTNEED_CALLS,
    &CGROUP_DONTNEED_BYTES,
    &CGROUP_PAGETABLE_PAGES_FREED,
    &CGROUP_PAGETABLE_BYTES,
    &NODE_PAGETABLE_BYTES,
    &NODE_PAGETABLE_PAGES_FREED,
    &PROBE_INFO,
    &DONTNEED_CALLS,
    &DONTNEED_BYTES,
    &NODE_PTE_PAGES_RECLAIMED,
    &NODE_DONTNEED_CALLS,
    &NODE_DONTNEED_BYTES,
    &MAP_UPDATE_FAILURES,
    &TRACKED_PROCESSES,
    &FOLDED_PROCESSES,
    &BUILD_INFO,
    &PT_RECLAIM_SUPPORTED,
    &RECLAIM_ACCOUNTING,
    &APPROXIMATE_CALLS,
    &SCRAPE_ERRORS,
    &MAP_ENTRIES,
    &MAP_MAX_ENTRIES,
    &PROBE_ATTACHED,
    &BPF_STATS_ENABLED,
    &BPF_PROGRAM_RUNS,
    &BPF_PROGRAM_RUN_SECONDS,
    &PROCESS_CPU_SECONDS,
    &PROCESS_RESIDENT_MEMORY,
    &PROCESS_START_TIME,
    &PROCESS_OPEN_FDS,
];

impl Family {
    fn empty(&self) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(self.name.to_owned());
        family.set_help(self.help.to_owned());
        family.set_field_type(self.kind);
        family
    }

    fn sample(&self, label_values: &[&str], value: f64) -> Metric {
        debug_assert_eq!(label_values.len(), self.labels.len(), "{}", self.name);
        let labels = self
            .labels
            .iter()
            .zip(label_values)
            // An empty value is the same as no label to Prometheus; leaving
            // it out keeps unknown cgroup, container and pod off the wire.
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect();
        let mut metric = Metric::default();
        metric.set_label(labels);
        match self.kind {
            MetricType::COUNTER => {
                let mut counter = Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
            _ => {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
        }
        metric
    }

    fn single(&self, label_values: &[&str], value: f64) -> MetricFamily {
        let mut family = self.empty();
        family.mut_metric().push(self.sample(label_values, value));
        family
    }

    /// One sample per selected process (`value` None leaves it out), and
    /// the `other` sample with everything else.
    fn per_process(
        &self,
        processes: &[ProcessRecord],
        other: u64,
        value: impl Fn(&ProcessRecord) -> Option<u64>,
    ) -> MetricFamily {
        let mut family = self.empty();
        for process in processes.iter().filter(|p| p.selected) {
            if let Some(value) = value(process) {
                let pid = process.pid.to_string();
                family.mut_metric().push(self.sample(&process_labels(process, &pid), value as f64));
            }
        }
        family.mut_metric().push(self.sample(&OTHER_PROCESS_LABELS, other as f64));
        family
    }

    /// One sample per cgroup; `value` None leaves the cgroup out.
    fn per_cgroup(&self, cgroups: &[CgroupRecord], value: impl Fn(&CgroupRecord) -> Option<u64>) -> MetricFamily {
        let mut family = self.empty();
        for cgroup in cgroups {
            if let Some(value) = value(cgroup) {
                family.mut_metric().push(self.sample(&cgroup_labels(cgroup), value as f64));
            }
        }
        family
    }
}

/// The labels of the series that carry the processes without their own.
const OTHER_PROCESS_LABELS: [&str; 5] = ["other", "other", "", "", ""];

fn process_labels<'a>(process: &'a ProcessRecord, pid: &'a str) -> [&'a str; 5] {
    let cgroup = &process.cgroup;
    [pid, &process.comm, &cgroup.path, &cgroup.container_id, &cgroup.pod_uid]
}

fn cgroup_labels(cgroup: &CgroupRecord) -> [&str; 3] {
    let labels = &cgroup.labels;
    [&labels.path, &labels.container_id, &labels.pod_uid]
}

/// The agent's own families: probes, kernel maps, eBPF run statistics and
/// the standard `process_*` metrics.
pub fn self_families(snapshot: &Snapshot, info: &AgentInfo, reading: &SelfReading) -> Vec<MetricFamily> {
    let mut attached = PROBE_ATTACHED.empty();
    for (event, attach) in &info.probes {
        attached.mut_metric().push(PROBE_ATTACHED.sample(&[event], if attach == "none" { 0.0 } else { 1.0 }));
    }
    attached.mut_metric().push(PROBE_ATTACHED.sample(&["dontneed"], if info.dontneed_attached { 1.0 } else { 0.0 }));
    let (mut entries, mut max_entries) = (MAP_ENTRIES.empty(), MAP_MAX_ENTRIES.empty());
    let maps: Vec<&MapUsage> = snapshot.maps.iter().chain(&reading.maps).collect();
    for map in maps {
        entries.mut_metric().push(MAP_ENTRIES.sample(&[map.name], map.entries as f64));
        max_entries.mut_metric().push(MAP_MAX_ENTRIES.sample(&[map.name], map.max_entries as f64));
    }
    let (mut runs, mut run_seconds) = (BPF_PROGRAM_RUNS.empty(), BPF_PROGRAM_RUN_SECONDS.empty());
    for program in &reading.programs {
        runs.mut_metric().push(BPF_PROGRAM_RUNS.sample(&[&program.name], program.runs as f64));
        run_seconds.mut_metric().push(BPF_PROGRAM_RUN_SECONDS.sample(&[&program.name], program.run_seconds));
    }
    let mut families = vec![attached, entries, max_entries, runs, run_seconds];
    if let Some(enabled) = reading.bpf_stats_enabled {
        families.push(BPF_STATS_ENABLED.single(&[], if enabled { 1.0 } else { 0.0 }));
    }
    if let Some(process) = &reading.process {
        families.extend([
            PROCESS_CPU_SECONDS.single(&[], process.cpu_seconds),
            PROCESS_RESIDENT_MEMORY.single(&[], process.resident_bytes as f64),
            PROCESS_START_TIME.single(&[], process.start_time_seconds),
            PROCESS_OPEN_FDS.single(&[], process.open_fds as f64),
        ]);
    }
    families
}

/// The metric families for one snapshot.
pub fn families(snapshot: &Snapshot, info: &AgentInfo, scrape_errors: u64) -> Vec<MetricFamily> {
    let processes = &snapshot.processes;
    let folded = &snapshot.folded;
    let node = &snapshot.node;
    let mut map_failures = MAP_UPDATE_FAILURES.empty();
    for (map, value) in [
        ("PROCESS_COUNTERS", node.process_map_update_failures),
        ("INFLIGHT", node.inflight_update_failures),
        ("PAGETABLE_FREES", node.free_map_update_failures),
    ] {
        map_failures.mut_metric().push(MAP_UPDATE_FAILURES.sample(&[map], value as f64));
    }
    let mut frees = PAGETABLE_PAGES_FREED.empty();
    let mut cgroup_frees = CGROUP_PAGETABLE_PAGES_FREED.empty();
    let mut node_frees = NODE_PAGETABLE_PAGES_FREED.empty();
    if info.frees_observed {
        for process in processes.iter().filter(|p| p.selected) {
            let pid = process.pid.to_string();
            let [pid, comm, cgroup, container_id, pod_uid] = process_labels(process, &pid);
            for (&(cause, level), &pages) in &process.frees {
                let labels = [pid, comm, cgroup, container_id, pod_uid, cause_name(cause), level_name(level)];
                let own = process.own_frees((cause, level), pages);
                frees.mut_metric().push(PAGETABLE_PAGES_FREED.sample(&labels, own as f64));
            }
        }
        let [pid, comm, cgroup, container_id, pod_uid] = OTHER_PROCESS_LABELS;
        for (&(cause, level), &pages) in &snapshot.folded.counts.frees {
            let labels = [pid, comm, cgroup, container_id, pod_uid, cause_name(cause), level_name(level)];
            frees.mut_metric().push(PAGETABLE_PAGES_FREED.sample(&labels, pages as f64));
        }
        for cgroup in &snapshot.cgroups {
            let [path, container_id, pod_uid] = cgroup_labels(cgroup);
            for (&(cause, level), &pages) in &cgroup.frees {
                let labels = [path, container_id, pod_uid, cause_name(cause), level_name(level)];
                cgroup_frees.mut_metric().push(CGROUP_PAGETABLE_PAGES_FREED.sample(&labels, pages as f64));
            }
        }
        for (cause, row) in snapshot.node_frees.pages.iter().enumerate() {
            for (level, &pages) in row.iter().enumerate() {
                let labels = [cause_name(cause as u32), level_name(level as u32)];
                node_frees.mut_metric().push(NODE_PAGETABLE_PAGES_FREED.sample(&labels, pages as f64));
            }
        }
    }
    let mut probes = PROBE_INFO.empty();
    for (event, attach) in &info.probes {
        probes.mut_metric().push(PROBE_INFO.sample(&[event, attach], 1.0));
    }
    let cgroups = &snapshot.cgroups;
    let mut node_pagetable_bytes = NODE_PAGETABLE_BYTES.empty();
    if let Some(bytes) = snapshot.node_pagetable_bytes {
        node_pagetable_bytes.mut_metric().push(NODE_PAGETABLE_BYTES.sample(&[], bytes as f64));
    }
    vec![
        PTE_PAGES_RECLAIMED
            .per_process(processes, folded.counts.pte_pages_reclaimed, |p| Some(p.own_pte_pages_reclaimed())),
        frees,
        node_frees,
        probes,
        DONTNEED_CALLS.per_process(processes, folded.counts.dontneed_calls, |p| Some(p.own_dontneed_calls())),
        DONTNEED_BYTES.per_process(processes, folded.counts.dontneed_bytes, |p| Some(p.own_dontneed_bytes())),
        PROCESS_PAGETABLE_BYTES.per_process(processes, folded.pagetable_bytes, |p| p.pagetable_bytes),
        CGROUP_PTE_PAGES_RECLAIMED.per_cgroup(cgroups, |c| Some(c.pte_pages_reclaimed)),
        CGROUP_DONTNEED_CALLS.per_cgroup(cgroups, |c| Some(c.dontneed_calls)),
        CGROUP_DONTNEED_BYTES.per_cgroup(cgroups, |c| Some(c.dontneed_bytes)),
        cgroup_frees,
        CGROUP_PAGETABLE_BYTES.per_cgroup(cgroups, |c| c.pagetable_bytes),
        node_pagetable_bytes,
        NODE_PTE_PAGES_RECLAIMED.single(&[], node.pte_pages_reclaimed as f64),
        NODE_DONTNEED_CALLS.single(&[], node.dontneed_calls as f64),
        NODE_DONTNEED_BYTES.single(&[], node.dontneed_bytes as f64),
        map_failures,
        TRACKED_PROCESSES.single(&[], processes.iter().filter(|p| p.selected).count() as f64),
        FOLDED_PROCESSES.single(&[], folded.processes as f64),
        BUILD_INFO.single(&[&info.version, &info.kernel, &info.probe_mode], 1.0),
        PT_RECLAIM_SUPPORTED.single(&[], if info.pt_reclaim_supported { 1.0 } else { 0.0 }),
        RECLAIM_ACCOUNTING.single(&[&info.reclaim_accounting], 1.0),
        APPROXIMATE_CALLS.single(&[], node.approximate_calls as f64),
        SCRAPE_ERRORS.single(&[], scrape_errors as f64),
    ]
    .into_iter()
    // Families without samples are left out, as client libraries do.
    .filter(|family| !family.get_metric().is_empty())
    .collect()
}

fn cause_name(cause: u32) -> &'static str {
    ptwatch_common::cause::NAMES.get(cause as usize).copied().unwrap_or("other")
}

fn level_name(level: u32) -> &'static str {
    ptwatch_common::level::NAMES.get(level as usize).copied().unwrap_or("unknown")
}

/// Reads the kernel maps at collection time.
pub struct PtwatchCollector {
    state: Mutex<CollectorState>,
    info: AgentInfo,
    descs: Vec<Desc>,
    /// The agent's own metrics; None in unit tests of the other families.
    self_source: Option<Box<dyn SelfSource>>,
}

struct CollectorState {
    source: Box<dyn SnapshotSource>,
    last: Snapshot,
    scrape_errors: u64,
}

impl PtwatchCollector {
    pub fn new(source: Box<dyn SnapshotSource>, info: AgentInfo) -> Self {
        let descs = ALL_FAMILIES
            .iter()
            .filter_map(|f| {
                Desc::new(
                    f.name.to_owned(),
                    f.help.to_owned(),
                    f.labels.iter().map(|l| (*l).to_owned()).collect(),
                    Default::default(),
                )
                .ok()
            })
            .collect();
        Self {
            state: Mutex::new(CollectorState { source, last: Snapshot::default(), scrape_errors: 0 }),
            info,
            descs,
            self_source: None,
        }
    }

    /// Also export the agent's own metrics, read from `source` at each scrape.
    pub fn with_self_source(mut self, source: Box<dyn SelfSource>) -> Self {
        self.self_source = Some(source);
        self
    }

    /// Harvest now (also used between scrapes, so that exits are noticed and
    /// kernel entries released even when nobody scrapes). Returns whether
    /// the kernel maps could be read (readiness waits for the first success).
    pub fn refresh(&self) -> bool {
        self.update(true)
    }

    /// Harvest; `full` as in [`SnapshotSource::snapshot`].
    fn update(&self, full: bool) -> bool {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        match state.source.snapshot(full) {
            Ok(snapshot) => {
                state.last = snapshot;
                true
            }
            Err(err) => {
                state.scrape_errors += 1;
                tracing::warn!(error = %crate::error_chain::ErrorChain(&*err), "reading kernel maps failed; exporting the previous values");
                false
            }
        }
    }
}

impl Collector for PtwatchCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // The kernel maps are read at every scrape; what /proc and cgroupfs
        // say comes from the periodic harvest (--harvest-interval).
        self.update(false);
        let reading = self.self_source.as_ref().map(|source| source.read()).unwrap_or_default();
        let state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut families = families(&state.last, &self.info, state.scrape_errors);
        families.extend(self_families(&state.last, &self.info, &reading));
        // Families without samples are left out, as client libraries do.
        families.retain(|family| !family.get_metric().is_empty());
        families
    }
}

/// Encode everything in `registry` in the Prometheus text format.
pub fn encode_text(registry: &Registry) -> Result<(String, String), prometheus::Error> {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    encoder.encode(&registry.gather(), &mut buffer)?;
    let text = String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
    Ok((text, encoder.format_type().to_owned()))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;
    use crate::aggregate::CgroupLabels;

    fn info() -> AgentInfo {
        AgentInfo {
            version: "0.1.0".into(),
            kernel: "6.18.0".into(),
            probe_mode: "tracepoint".into(),
            reclaim_accounting: "page_table_walk".into(),
            pt_reclaim_supported: true,
            probes: vec![("pt_reclaim".into(), "fentry".into()), ("pagetable_free".into(), "fentry".into())],
            frees_observed: true,
            dontneed_attached: true,
        }
    }

    struct Fixed(Snapshot);
    impl SnapshotSource for Fixed {
        fn snapshot(&mut self, _full: bool) -> anyhow::Result<Snapshot> {
            Ok(self.0.clone())
        }
    }

    fn record(pid: u32, comm: &str, reclaimed: u64) -> ProcessRecord {
        ProcessRecord {
            pid,
            comm: comm.into(),
            pte_pages_reclaimed: reclaimed,
            dontneed_calls: 2,
            dontneed_bytes: 8192,
            frees: [((2, 0), 7), ((0, 0), reclaimed)].into_iter().collect(),
            selected: true,
            ..ProcessRecord::new(pid, comm.as_bytes())
        }
    }

    const UID: &str = "8d2f3c1e-5b7a-4e0f-9a61-2c3d4e5f6a7b";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn container() -> CgroupLabels {
        CgroupLabels::from_path(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        ))
    }

    fn render(snapshot: Snapshot) -> String {
        let registry = Registry::new();
        registry.register(Box::new(PtwatchCollector::new(Box::new(Fixed(snapshot)), info()))).unwrap();
        encode_text(&registry).unwrap().0
    }

    #[test]
    fn label_values_are_escaped_per_the_exposition_format() {
        // No cgroup known: the cgroup labels are left out.
        let text = render(Snapshot { processes: vec![record(7, "a \"q\" \\b\nc", 3)], ..Snapshot::default() });
        assert!(text.contains(r#"ptwatch_pte_pages_reclaimed_total{pid="7",comm="a \"q\" \\b\nc"} 3"#), "{text}");
    }

    #[test]
    fn node_and_info_families_are_always_present() {
        let mut snapshot = Snapshot::default();
        snapshot.node.pte_pages_reclaimed = 42;
        let text = render(snapshot);
        assert!(text.contains("ptwatch_node_pte_pages_reclaimed_total 42"), "{text}");
        assert!(text.contains(r#"ptwatch_build_info{version="0.1.0",kernel="6.18.0",probe_mode="tracepoint"} 1"#));
        assert!(text.contains("ptwatch_pt_reclaim_supported 1"));
        assert!(text.contains("# TYPE ptwatch_node_pte_pages_reclaimed_total counter"));
        // No process: only the `other` series, at zero.
        assert!(text.contains(r#"ptwatch_pte_pages_reclaimed_total{pid="other",comm="other"} 0"#), "{text}");
        assert_eq!(text.matches("ptwatch_pte_pages_reclaimed_total{").count(), 1, "{text}");
        assert!(text.contains("ptwatch_folded_processes 0"), "{text}");
    }

    #[test]
    fn every_process_gets_its_series() {
        let text =
            render(Snapshot { processes: vec![record(1, "one", 10), record(2, "two", 20)], ..Snapshot::default() });
        assert!(text.contains(r#"ptwatch_pte_pages_reclaimed_total{pid="1",comm="one"} 10"#));
        assert!(text.contains(r#"ptwatch_pte_pages_reclaimed_total{pid="2",comm="two"} 20"#));
        assert!(text.contains(r#"ptwatch_madvise_dontneed_bytes_total{pid="2",comm="two"} 8192"#));
        assert!(text.contains("ptwatch_tracked_processes 2"));
        assert!(text.contains(r#"ptwatch_pagetable_pages_freed_total{pid="2",comm="two",cause="exit",level="pte"} 7"#));
        assert!(
            text.contains(r#"ptwatch_pagetable_pages_freed_total{pid="1",comm="one",cause="reclaim",level="pte"} 10"#)
        );
        assert!(text.contains(r#"ptwatch_probe_info{event="pt_reclaim",attach="fentry"} 1"#));
        assert!(text.contains(r#"ptwatch_node_pagetable_pages_freed_total{cause="unmap",level="pud"} 0"#));
    }

    #[test]
    fn processes_carry_their_cgroup_container_and_pod() {
        let mut inside = record(3, "app", 5);
        inside.cgroup = container();
        inside.pagetable_bytes = Some(81920);
        let mut plain = record(4, "cron", 1);
        plain.cgroup = CgroupLabels::from_path("/system.slice/cron.service");
        let text = render(Snapshot { processes: vec![inside, plain], ..Snapshot::default() });
        let path = &container().path;
        let labels = format!(r#"pid="3",comm="app",cgroup="{path}",container_id="{ID}",pod_uid="{UID}""#);
        assert!(text.contains(&format!("ptwatch_pte_pages_reclaimed_total{{{labels}}} 5")), "{text}");
        assert!(text.contains(&format!("ptwatch_madvise_dontneed_calls_total{{{labels}}} 2")), "{text}");
        assert!(text.contains(&format!("ptwatch_process_pagetable_bytes{{{labels}}} 81920")), "{text}");
        assert!(
            text.contains(&format!(r#"ptwatch_pagetable_pages_freed_total{{{labels},cause="exit",level="pte"}} 7"#)),
            "{text}"
        );
        // Known cgroup, no container: only the cgroup label.
        assert!(
            text.contains(
                r#"ptwatch_pte_pages_reclaimed_total{pid="4",comm="cron",cgroup="/system.slice/cron.service"} 1"#
            ),
            "{text}"
        );
        // No VmPTE (exited): no gauge sample.
        assert!(!text.contains(r#"ptwatch_process_pagetable_bytes{pid="4""#), "{text}");
        assert!(text.contains("# TYPE ptwatch_process_pagetable_bytes gauge"));
    }

    #[test]
    fn cgroup_and_node_page_table_families() {
        let cgroup = CgroupRecord {
            labels: container(),
            pte_pages_reclaimed: 48,
            dontneed_calls: 2,
            dontneed_bytes: 100,
            frees: [((0, 0), 48)].into_iter().collect(),
            pagetable_bytes: Some(4096),
        };
        let removed = CgroupRecord {
            labels: CgroupLabels::from_path("/gone"),
            pte_pages_reclaimed: 1,
            ..CgroupRecord::default()
        };
        let text = render(Snapshot {
            cgroups: vec![cgroup, removed],
            node_pagetable_bytes: Some(11_509_760),
            ..Snapshot::default()
        });
        let path = &container().path;
        let labels = format!(r#"cgroup="{path}",container_id="{ID}",pod_uid="{UID}""#);
        for (name, value) in [
            ("ptwatch_cgroup_pte_pages_reclaimed_total", 48),
            ("ptwatch_cgroup_madvise_dontneed_calls_total", 2),
            ("ptwatch_cgroup_madvise_dontneed_bytes_total", 100),
            ("ptwatch_cgroup_pagetable_bytes", 4096),
        ] {
            assert!(text.contains(&format!("{name}{{{labels}}} {value}")), "{name}: {text}");
        }
        assert!(text.contains(&format!(
            r#"ptwatch_cgroup_pagetable_pages_freed_total{{{labels},cause="reclaim",level="pte"}} 48"#
        )));
        assert!(text.contains(r#"ptwatch_cgroup_pte_pages_reclaimed_total{cgroup="/gone"} 1"#), "{text}");
        assert!(!text.contains(r#"ptwatch_cgroup_pagetable_bytes{cgroup="/gone"}"#), "no memory.stat, no sample");
        assert!(text.contains("ptwatch_node_pagetable_bytes 11509760"), "{text}");
        assert!(text.contains("# TYPE ptwatch_cgroup_pagetable_bytes gauge"));
        assert!(text.contains("# TYPE ptwatch_cgroup_pte_pages_reclaimed_total counter"));
    }

    #[test]
    fn free_families_depend_on_the_plan() {
        let without = exported_families(false);
        assert!(!without.iter().any(|f| f.contains("pagetable_pages_freed")));
        assert!(without.contains(&"ptwatch_cgroup_pte_pages_reclaimed_total"));
        assert!(without.contains(&"ptwatch_node_pagetable_bytes"));
        assert!(exported_families(true).contains(&"ptwatch_cgroup_pagetable_pages_freed_total"));
    }
}
