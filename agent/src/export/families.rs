//! Every metric family ptwatch exports, in one table: name, type, unit,
//! help, labels and which probe plans export it. The renderers
//! (`metrics.rs`, `self_metrics.rs`) write samples for these constants only;
//! `docs/metrics.md` documents the same table, in the same order.
//!
//! To add a family: define its constant here, list it in [`FAMILIES`], and
//! write its samples from the snapshot it comes from, in the renderer of
//! that source (see `metrics::Metrics::render`).

use Kind::{Counter, Gauge, Histogram};
use Plans::{All, FreeProbes};

/// The metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Which probe plans export a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plans {
    All,
    /// Only plans that probe page-table frees (fentry, kprobe): the
    /// tracepoint plan cannot see them, and exporting zeros would read as
    /// "nothing freed".
    FreeProbes,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    /// The sample name (counters end in `_total`).
    pub name: &'static str,
    pub kind: Kind,
    /// What one unit of a sample's value is (for the docs; `pages` are
    /// page-table pages, 4 KiB each on x86_64).
    pub unit: &'static str,
    pub help: &'static str,
    /// Label names, in the order samples carry them (a label whose value
    /// is unknown is left out of a sample).
    pub labels: &'static [&'static str],
    pub plans: Plans,
}

impl Family {
    /// The family name in an OpenMetrics header: a counter's loses `_total`.
    pub fn openmetrics_name(&self) -> &'static str {
        match self.kind {
            Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            Gauge | Histogram => self.name,
        }
    }

    /// Whether a plan that does (or does not) probe page-table frees
    /// exports it.
    pub fn exported_with(&self, frees_probed: bool) -> bool {
        match self.plans {
            All => true,
            FreeProbes => frees_probed,
        }
    }
}

/// Labels of per-process series. `start_time` (the process' start, Unix
/// seconds with nanoseconds) tells two processes with the same pid apart;
/// the cgroup labels are left out when unknown.
pub const PROCESS_LABELS: &[&str] = &["pid", "comm", "start_time", "cgroup", "container_id", "pod_uid"];
pub const CGROUP_LABELS: &[&str] = &["cgroup", "container_id", "pod_uid"];
const PROCESS_FREE_LABELS: &[&str] =
    &["pid", "comm", "start_time", "cgroup", "container_id", "pod_uid", "cause", "level"];
const CGROUP_FREE_LABELS: &[&str] = &["cgroup", "container_id", "pod_uid", "cause", "level"];

const fn family(
    name: &'static str,
    kind: Kind,
    unit: &'static str,
    labels: &'static [&'static str],
    plans: Plans,
    help: &'static str,
) -> Family {
    Family { name, kind, unit, help, labels, plans }
}

// --- Per process ---------------------------------------------------------

pub const PTE_PAGES_RECLAIMED: Family = family(
    "ptwatch_pte_pages_reclaimed_total",
    Counter,
    "pages",
    PROCESS_LABELS,
    All,
    "PTE page-table pages freed by PT_RECLAIM in the process' address space (one page each, 4 KiB on x86_64).",
);
pub const DONTNEED_CALLS: Family = family(
    "ptwatch_madvise_dontneed_calls_total",
    Counter,
    "calls",
    PROCESS_LABELS,
    All,
    "Successful MADV_DONTNEED and MADV_DONTNEED_LOCKED requests (madvise, process_madvise, io_uring) by the process.",
);
pub const DONTNEED_BYTES: Family = family(
    "ptwatch_madvise_dontneed_bytes_total",
    Counter,
    "bytes",
    PROCESS_LABELS,
    All,
    "Bytes covered by the process' successful MADV_DONTNEED requests.",
);
pub const PAGETABLE_PAGES_FREED: Family = family(
    "ptwatch_pagetable_pages_freed_total",
    Counter,
    "pages",
    PROCESS_FREE_LABELS,
    FreeProbes,
    "Page-table pages freed in the process' address space, by cause (reclaim, unmap, exit, other, collapse, thp) and level (pte, pmd, pud, p4d, unknown). fentry and kprobe probe modes only.",
);
pub const PROCESS_PAGETABLE_BYTES: Family = family(
    "ptwatch_process_pagetable_bytes",
    Gauge,
    "bytes",
    PROCESS_LABELS,
    All,
    "Page-table memory of the live process now (VmPTE of /proc/<pid>/status), bytes.",
);

// --- Per cgroup ----------------------------------------------------------

pub const CGROUP_PTE_PAGES_RECLAIMED: Family = family(
    "ptwatch_cgroup_pte_pages_reclaimed_total",
    Counter,
    "pages",
    CGROUP_LABELS,
    All,
    "PTE page-table pages freed by PT_RECLAIM in processes of the cgroup, including processes that exited.",
);
pub const CGROUP_DONTNEED_CALLS: Family = family(
    "ptwatch_cgroup_madvise_dontneed_calls_total",
    Counter,
    "calls",
    CGROUP_LABELS,
    All,
    "Successful MADV_DONTNEED requests by processes of the cgroup, including processes that exited.",
);
pub const CGROUP_DONTNEED_BYTES: Family = family(
    "ptwatch_cgroup_madvise_dontneed_bytes_total",
    Counter,
    "bytes",
    CGROUP_LABELS,
    All,
    "Bytes covered by successful MADV_DONTNEED requests of processes of the cgroup, including processes that exited.",
);
pub const CGROUP_PAGETABLE_PAGES_FREED: Family = family(
    "ptwatch_cgroup_pagetable_pages_freed_total",
    Counter,
    "pages",
    CGROUP_FREE_LABELS,
    FreeProbes,
    "Page-table pages freed in processes of the cgroup, by cause and level, including processes that exited. fentry and kprobe probe modes only.",
);
pub const CGROUP_PAGETABLE_BYTES: Family = family(
    "ptwatch_cgroup_pagetable_bytes",
    Gauge,
    "bytes",
    CGROUP_LABELS,
    All,
    "Page-table memory charged to the cgroup now (pagetables of its cgroup v2 memory.stat), bytes; for cgroups with tracked processes.",
);

// --- Node ----------------------------------------------------------------

pub const NODE_PAGETABLE_BYTES: Family = family(
    "ptwatch_node_pagetable_bytes",
    Gauge,
    "bytes",
    &[],
    All,
    "Page-table memory of the node now (PageTables of /proc/meminfo), bytes.",
);
pub const NODE_PTE_PAGES_RECLAIMED: Family = family(
    "ptwatch_node_pte_pages_reclaimed_total",
    Counter,
    "pages",
    &[],
    All,
    "PTE page-table pages freed by PT_RECLAIM on this node since the agent started, including processes that exited.",
);
pub const NODE_PAGETABLE_PAGES_FREED: Family = family(
    "ptwatch_node_pagetable_pages_freed_total",
    Counter,
    "pages",
    &["cause", "level"],
    FreeProbes,
    "Page-table pages freed on this node since the agent started, by cause and level. fentry and kprobe probe modes only.",
);
pub const NODE_DONTNEED_CALLS: Family = family(
    "ptwatch_node_madvise_dontneed_calls_total",
    Counter,
    "calls",
    &[],
    All,
    "Successful MADV_DONTNEED requests on this node since the agent started.",
);
pub const NODE_DONTNEED_BYTES: Family = family(
    "ptwatch_node_madvise_dontneed_bytes_total",
    Counter,
    "bytes",
    &[],
    All,
    "Bytes covered by successful MADV_DONTNEED requests on this node since the agent started.",
);
pub const APPROXIMATE_CALLS: Family = family(
    "ptwatch_node_approximate_dontneed_calls_total",
    Counter,
    "calls",
    &[],
    All,
    "DONTNEED requests whose reclaim was measured through pgtables_bytes instead of an exact page-table walk.",
);
pub const UNMEASURED_REQUESTS: Family = family(
    "ptwatch_node_unmeasured_dontneed_requests_total",
    Counter,
    "requests",
    &[],
    All,
    "io_uring DONTNEED requests whose reclaim this probe plan could not measure (counted as calls and bytes, not as reclaim).",
);

// --- How complete the per-process counts are ------------------------------

pub const MAP_UPDATE_FAILURES: Family = family(
    "ptwatch_map_update_failures_total",
    Counter,
    "updates",
    &["map"],
    All,
    "Kernel map updates that failed because the map was full: PROCESS_COUNTERS (the event went to its cgroup's overflow slot, pid=\"other\"), OVERFLOW_COUNTERS (it went to the unattributed slot), THREAD_CONTEXT (a call's context was lost; its frees count as cause other). Node totals count every event.",
);
pub const OVERFLOW_EVENTS: Family = family(
    "ptwatch_overflow_events_total",
    Counter,
    "events",
    &["reason"],
    All,
    "Events counted in pid=\"other\" rather than in their process' own series: process_map_full (in the cgroup's total still), cgroup_map_full and no_owner (in no cgroup).",
);
pub const LOST_EVENTS: Family = family(
    "ptwatch_lost_events_total",
    Counter,
    "events",
    &[],
    All,
    "Events counted in the node totals only: no per-process or overflow slot could take them (never expected).",
);
pub const CONTEXT_EXIT_MISSES: Family = family(
    "ptwatch_context_exit_misses_total",
    Counter,
    "calls",
    &[],
    All,
    "Hooked calls whose exit the kernel did not report (kretprobe instances exhausted, or a program skipped by recursion protection); their context was discarded, never trusted.",
);
pub const THREAD_CONTEXTS_REAPED: Family = family(
    "ptwatch_thread_contexts_reaped_total",
    Counter,
    "entries",
    &[],
    All,
    "Per-thread contexts left in THREAD_CONTEXT by threads that exited after a missed exit hook, removed by the agent.",
);
pub const IO_REQUESTS_REAPED: Family = family(
    "ptwatch_io_requests_reaped_total",
    Counter,
    "entries",
    &[],
    All,
    "io_uring madvise requests left in IO_REQUESTS because their completion was not seen, removed by the agent after 10 minutes.",
);
pub const TRACKED_PROCESSES: Family = family(
    "ptwatch_tracked_processes",
    Gauge,
    "processes",
    &[],
    All,
    "Processes whose per-process series grow on their own (at most --top-processes), including exited ones kept for --exited-ttl.",
);
pub const FOLDED_PROCESSES: Family = family(
    "ptwatch_folded_processes",
    Gauge,
    "processes",
    &[],
    All,
    "Processes counted by the agent (live, or exited within --exited-ttl) without a growing series of their own: what they count goes to the pid=\"other\" series.",
);

// --- The agent -------------------------------------------------------------

pub const BUILD_INFO: Family = family(
    "ptwatch_build_info",
    Gauge,
    "",
    &["version", "kernel", "probe_mode"],
    All,
    "Always 1; labels describe the agent version, the kernel release and the probe mode in use.",
);
pub const PROBE_INFO: Family = family(
    "ptwatch_probe_info",
    Gauge,
    "",
    &["event", "attach", "bystander_cost"],
    All,
    "Always 1; for each event (dontneed, io_uring_dontneed, pt_reclaim, pagetable_free), how it is probed: fentry, kprobe, tracepoint, or none when this plan cannot show it on this kernel; bystander_cost: what the plan costs processes it does not trace (hooked_functions_only, or every_syscall while syscall tracepoints are attached).",
);
pub const PT_RECLAIM_SUPPORTED: Family = family(
    "ptwatch_pt_reclaim_supported",
    Gauge,
    "0/1",
    &[],
    All,
    "1 if the running kernel reclaims empty PTE tables on MADV_DONTNEED (tested at start-up), else 0.",
);
pub const RECLAIM_ACCOUNTING: Family = family(
    "ptwatch_reclaim_accounting_info",
    Gauge,
    "",
    &["method"],
    All,
    "Always 1; method says how reclaim is counted: free_classification, page_table_walk (both exact) or pgtables_bytes (approximate for multi-threaded processes).",
);
pub const PROBE_ATTACHED: Family = family(
    "ptwatch_probe_attached",
    Gauge,
    "0/1",
    &["event"],
    All,
    "1 when the event (dontneed, io_uring_dontneed, pt_reclaim, pagetable_free) has a working probe, else 0.",
);
pub const SCRAPE_ERRORS: Family = family(
    "ptwatch_scrape_errors_total",
    Counter,
    "scrapes",
    &[],
    All,
    "Scrapes at which the kernel maps could not be read.",
);
pub const SCRAPE_DURATION: Family = family(
    "ptwatch_scrape_duration_seconds",
    Histogram,
    "seconds",
    &[],
    All,
    "Time to build each /metrics response (read the kernel maps, harvest, encode), seconds.",
);
pub const HTTP_METRICS_REQUESTS: Family = family(
    "ptwatch_http_metrics_requests_total",
    Counter,
    "requests",
    &[],
    All,
    "/metrics requests answered with metrics; concurrent ones share a render (ptwatch_scrape_duration_seconds_count).",
);
pub const HTTP_CONNECTIONS_OPEN: Family = family(
    "ptwatch_http_connections_open",
    Gauge,
    "connections",
    &[],
    All,
    "Connections open now, TLS handshakes included.",
);
pub const HTTP_MAX_CONNECTIONS: Family = family(
    "ptwatch_http_max_connections",
    Gauge,
    "connections",
    &[],
    All,
    "The connection cap in force: --http-max-connections, lowered to fit the open-file limit.",
);
pub const HTTP_CONNECTIONS_ACCEPTED: Family =
    family("ptwatch_http_connections_accepted_total", Counter, "connections", &[], All, "Connections accepted.");
pub const HTTP_CONNECTIONS_DROPPED: Family = family(
    "ptwatch_http_connections_dropped_total",
    Counter,
    "connections",
    &["reason"],
    All,
    "Connections the agent closed on its own or refused, by reason (docs/http.md).",
);
pub const HTTP_ACCEPT_ERRORS: Family = family(
    "ptwatch_http_accept_errors_total",
    Counter,
    "errors",
    &[],
    All,
    "Failed accept calls (e.g. EMFILE: out of file descriptors); the listener backs off after each.",
);
pub const MAP_ENTRIES: Family = family(
    "ptwatch_map_entries",
    Gauge,
    "entries",
    &["map"],
    All,
    "Entries in each kernel hash map of the agent (PROCESS_COUNTERS and OVERFLOW_COUNTERS as of the last harvest, which takes exited processes out; THREAD_CONTEXT as of the last full harvest).",
);
pub const MAP_MAX_ENTRIES: Family = family(
    "ptwatch_map_max_entries",
    Gauge,
    "entries",
    &["map"],
    All,
    "Capacity of each kernel hash map of the agent (PROCESS_COUNTERS is --max-tracked-processes; entries are never evicted: see ptwatch_map_update_failures_total).",
);
pub const BPF_STATS_ENABLED: Family = family(
    "ptwatch_bpf_stats_enabled",
    Gauge,
    "0/1",
    &[],
    All,
    "1 while kernel.bpf_stats_enabled is set, so that the kernel counts eBPF program runs and their time.",
);
pub const BPF_PROGRAM_RUNS: Family = family(
    "ptwatch_bpf_program_runs_total",
    Counter,
    "runs",
    &["program"],
    All,
    "Runs of each attached eBPF program counted by the kernel (run_cnt) while kernel.bpf_stats_enabled=1; exported only then.",
);
pub const BPF_PROGRAM_MISSES: Family = family(
    "ptwatch_bpf_program_misses_total",
    Counter,
    "runs",
    &["program"],
    All,
    "Runs of each attached eBPF program the kernel skipped (recursion_misses: another program was running on that CPU, e.g. a preempted one); their events were not counted. Always exported.",
);
pub const BPF_PROGRAM_RUN_SECONDS: Family = family(
    "ptwatch_bpf_program_run_seconds_total",
    Counter,
    "seconds",
    &["program"],
    All,
    "Time spent in each attached eBPF program counted by the kernel (run_time_ns) while kernel.bpf_stats_enabled=1; exported only then.",
);
pub const PROCESS_CPU_SECONDS: Family = family(
    "process_cpu_seconds_total",
    Counter,
    "seconds",
    &[],
    All,
    "Total user and system CPU time spent by the agent in seconds.",
);
pub const PROCESS_RESIDENT_MEMORY: Family =
    family("process_resident_memory_bytes", Gauge, "bytes", &[], All, "Resident memory size of the agent in bytes.");
pub const PROCESS_START_TIME: Family = family(
    "process_start_time_seconds",
    Gauge,
    "seconds",
    &[],
    All,
    "Start time of the agent since unix epoch in seconds.",
);
pub const PROCESS_OPEN_FDS: Family =
    family("process_open_fds", Gauge, "descriptors", &[], All, "Number of open file descriptors of the agent.");

// --- Empty page tables (the periodic estimate) ------------------------------

const PROCESS_METHOD_LABELS: &[&str] = &["pid", "comm", "start_time", "cgroup", "container_id", "pod_uid", "method"];

pub const PROCESS_EMPTY: Family = family(
    "ptwatch_process_empty_pagetable_bytes",
    Gauge,
    "bytes",
    PROCESS_LABELS,
    All,
    "Page-table memory of the process that maps nothing (empty PTE tables, and upper-level tables over them), estimated by the periodic pass (--empty-tables-interval); pid=\"other\" sums every other process of the node.",
);
pub const PROCESS_EMPTY_ERROR: Family = family(
    "ptwatch_process_empty_pagetable_error_bytes",
    Gauge,
    "bytes",
    PROCESS_METHOD_LABELS,
    All,
    "How far ptwatch_process_empty_pagetable_bytes may be from the truth (99 % confidence); 0 when exact. method: exact, sampled or bounded (not read yet); for pid=\"other\", the least precise among its processes.",
);
pub const CGROUP_EMPTY: Family = family(
    "ptwatch_cgroup_empty_pagetable_bytes",
    Gauge,
    "bytes",
    CGROUP_LABELS,
    All,
    "Page-table memory that maps nothing, summed over the live processes of the cgroup (every process, not only those with their own series).",
);
pub const CGROUP_EMPTY_ERROR: Family = family(
    "ptwatch_cgroup_empty_pagetable_error_bytes",
    Gauge,
    "bytes",
    CGROUP_LABELS,
    All,
    "How far ptwatch_cgroup_empty_pagetable_bytes may be from the truth (99 % confidence); 0 when exact.",
);
pub const NODE_EMPTY: Family = family(
    "ptwatch_node_empty_pagetable_bytes",
    Gauge,
    "bytes",
    &[],
    All,
    "Page-table memory that maps nothing, summed over every process of the node: what a kernel with PT_RECLAIM, or allocators releasing whole 2 MiB spans, would give back.",
);
pub const NODE_EMPTY_ERROR: Family = family(
    "ptwatch_node_empty_pagetable_error_bytes",
    Gauge,
    "bytes",
    &[],
    All,
    "How far ptwatch_node_empty_pagetable_bytes may be from the truth (99 % confidence); 0 when exact.",
);
pub const EMPTY_PROCESSES_BY_METHOD: Family = family(
    "ptwatch_empty_pagetable_processes",
    Gauge,
    "processes",
    &["method"],
    All,
    "Processes of the node by how their empty page tables were estimated: exact (every span read), sampled (a random sample of spans within the budget), bounded (not read yet or not readable: bounds from /proc/PID/status).",
);
pub const EMPTY_ESTIMATE_CPU: Family = family(
    "ptwatch_empty_pagetable_estimate_cpu_seconds_total",
    Counter,
    "seconds",
    &[],
    All,
    "CPU time (user + system) the empty-page-table passes used since the agent started.",
);
pub const EMPTY_ESTIMATE_PASSES: Family = family(
    "ptwatch_empty_pagetable_estimate_passes_total",
    Counter,
    "passes",
    &[],
    All,
    "Empty-page-table passes since the agent started.",
);
pub const EMPTY_ESTIMATE_LAST_CPU: Family = family(
    "ptwatch_empty_pagetable_estimate_last_pass_cpu_seconds",
    Gauge,
    "seconds",
    &[],
    All,
    "CPU time of the last empty-page-table pass.",
);
pub const EMPTY_ESTIMATE_BUDGET: Family = family(
    "ptwatch_empty_pagetable_estimate_budget_seconds",
    Gauge,
    "seconds",
    &[],
    All,
    "CPU time one empty-page-table pass may use (--empty-tables-budget).",
);

/// Every family, in the order of docs/metrics.md.
pub const FAMILIES: &[&Family] = &[
    &PTE_PAGES_RECLAIMED,
    &DONTNEED_CALLS,
    &DONTNEED_BYTES,
    &PAGETABLE_PAGES_FREED,
    &PROCESS_PAGETABLE_BYTES,
    &CGROUP_PTE_PAGES_RECLAIMED,
    &CGROUP_DONTNEED_CALLS,
    &CGROUP_DONTNEED_BYTES,
    &CGROUP_PAGETABLE_PAGES_FREED,
    &CGROUP_PAGETABLE_BYTES,
    &NODE_PAGETABLE_BYTES,
    &NODE_PTE_PAGES_RECLAIMED,
    &NODE_PAGETABLE_PAGES_FREED,
    &NODE_DONTNEED_CALLS,
    &NODE_DONTNEED_BYTES,
    &APPROXIMATE_CALLS,
    &UNMEASURED_REQUESTS,
    &MAP_UPDATE_FAILURES,
    &OVERFLOW_EVENTS,
    &LOST_EVENTS,
    &CONTEXT_EXIT_MISSES,
    &THREAD_CONTEXTS_REAPED,
    &IO_REQUESTS_REAPED,
    &TRACKED_PROCESSES,
    &FOLDED_PROCESSES,
    &SCRAPE_ERRORS,
    &BUILD_INFO,
    &PROBE_INFO,
    &PT_RECLAIM_SUPPORTED,
    &PROBE_ATTACHED,
    &MAP_ENTRIES,
    &MAP_MAX_ENTRIES,
    &SCRAPE_DURATION,
    &HTTP_METRICS_REQUESTS,
    &HTTP_CONNECTIONS_OPEN,
    &HTTP_MAX_CONNECTIONS,
    &HTTP_CONNECTIONS_ACCEPTED,
    &HTTP_CONNECTIONS_DROPPED,
    &HTTP_ACCEPT_ERRORS,
    &BPF_STATS_ENABLED,
    &BPF_PROGRAM_RUNS,
    &BPF_PROGRAM_RUN_SECONDS,
    &BPF_PROGRAM_MISSES,
    &PROCESS_CPU_SECONDS,
    &PROCESS_RESIDENT_MEMORY,
    &PROCESS_START_TIME,
    &PROCESS_OPEN_FDS,
    &RECLAIM_ACCOUNTING,
    &PROCESS_EMPTY,
    &PROCESS_EMPTY_ERROR,
    &CGROUP_EMPTY,
    &CGROUP_EMPTY_ERROR,
    &NODE_EMPTY,
    &NODE_EMPTY_ERROR,
    &EMPTY_PROCESSES_BY_METHOD,
    &EMPTY_ESTIMATE_CPU,
    &EMPTY_ESTIMATE_PASSES,
    &EMPTY_ESTIMATE_LAST_CPU,
    &EMPTY_ESTIMATE_BUDGET,
];

/// Names of the families a plan exports (`ptwatch check`).
pub fn exported_families(frees_probed: bool) -> Vec<&'static str> {
    FAMILIES.iter().filter(|f| f.exported_with(frees_probed)).map(|f| f.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut names = std::collections::HashSet::new();
        for family in FAMILIES {
            assert!(names.insert(family.name), "{} listed twice", family.name);
            assert!(family.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            // Counters end in _total, nothing else does.
            assert_eq!(family.kind == Counter, family.name.ends_with("_total"), "{}", family.name);
            assert!(family.help.ends_with('.'), "{}: help is a sentence", family.name);
            assert!(!family.help.contains('\n'));
        }
    }

    #[test]
    fn free_families_depend_on_the_plan() {
        let without = exported_families(false);
        assert!(!without.contains(&PAGETABLE_PAGES_FREED.name));
        assert!(!without.contains(&CGROUP_PAGETABLE_PAGES_FREED.name));
        assert!(!without.contains(&NODE_PAGETABLE_PAGES_FREED.name));
        assert!(without.contains(&CGROUP_PTE_PAGES_RECLAIMED.name));
        assert!(without.contains(&NODE_PAGETABLE_BYTES.name));
        assert_eq!(exported_families(true).len(), FAMILIES.len());
    }
}
