//! The empty-page-table families, printed from the last
//! [`crate::empty_tables::Snapshot`] (the estimator runs on its own
//! interval; a scrape only copies its numbers). Documented in
//! `docs/metrics.md#empty-page-tables`.
//!
//! Every size is in bytes (tables × page size). Each estimate comes with an
//! error bound: the largest distance between the estimate and the truth at
//! 99 % confidence, 0 when every span was read. Sums of estimates are
//! estimates of sums; a sum's bound is that of the summed ranges.

use prometheus::proto::{MetricFamily, MetricType};

use super::metrics::{process_labels, Family, OTHER_PROCESS_LABELS};
use crate::{
    aggregate::{CgroupLabels, ProcessRecord},
    empty_tables::{Snapshot, Sum},
    scan::{estimate::Bounds, Method},
};

const PROCESS_LABELS_METHOD: &[&str] = &["pid", "comm", "cgroup", "container_id", "pod_uid", "method"];

pub(super) const PROCESS_EMPTY: Family = Family {
    name: "ptwatch_process_empty_pagetable_bytes",
    help: "Page-table memory of the process that maps nothing (empty PTE tables, and upper-level tables over them), estimated by the periodic pass (--empty-tables-interval); pid=\"other\" sums every other process of the node.",
    kind: MetricType::GAUGE,
    labels: super::metrics::PROCESS_LABELS,
};
pub(super) const PROCESS_EMPTY_ERROR: Family = Family {
    name: "ptwatch_process_empty_pagetable_error_bytes",
    help: "How far ptwatch_process_empty_pagetable_bytes may be from the truth (99 % confidence); 0 when exact. method: exact, sampled or bounded (not read yet); for pid=\"other\", the least precise among its processes.",
    kind: MetricType::GAUGE,
    labels: PROCESS_LABELS_METHOD,
};
pub(super) const CGROUP_EMPTY: Family = Family {
    name: "ptwatch_cgroup_empty_pagetable_bytes",
    help: "Page-table memory that maps nothing, summed over the live processes of the cgroup (every process, not only those with their own series).",
    kind: MetricType::GAUGE,
    labels: super::metrics::CGROUP_LABELS,
};
pub(super) const CGROUP_EMPTY_ERROR: Family = Family {
    name: "ptwatch_cgroup_empty_pagetable_error_bytes",
    help: "How far ptwatch_cgroup_empty_pagetable_bytes may be from the truth (99 % confidence); 0 when exact.",
    kind: MetricType::GAUGE,
    labels: super::metrics::CGROUP_LABELS,
};
pub(super) const NODE_EMPTY: Family = Family {
    name: "ptwatch_node_empty_pagetable_bytes",
    help: "Page-table memory that maps nothing, summed over every process of the node: what a kernel with PT_RECLAIM, or allocators releasing whole 2 MiB spans, would give back.",
    kind: MetricType::GAUGE,
    labels: &[],
};
pub(super) const NODE_EMPTY_ERROR: Family = Family {
    name: "ptwatch_node_empty_pagetable_error_bytes",
    help: "How far ptwatch_node_empty_pagetable_bytes may be from the truth (99 % confidence); 0 when exact.",
    kind: MetricType::GAUGE,
    labels: &[],
};
pub(super) const PROCESSES_BY_METHOD: Family = Family {
    name: "ptwatch_empty_pagetable_processes",
    help: "Processes of the node by how their empty page tables were estimated: exact (every span read), sampled (a random sample of spans within the budget), bounded (not read yet or not readable: bounds from /proc/PID/status).",
    kind: MetricType::GAUGE,
    labels: &["method"],
};
pub(super) const ESTIMATE_CPU: Family = Family {
    name: "ptwatch_empty_pagetable_estimate_cpu_seconds_total",
    help: "CPU time (user + system) the empty-page-table passes used since the agent started.",
    kind: MetricType::COUNTER,
    labels: &[],
};
pub(super) const ESTIMATE_PASSES: Family = Family {
    name: "ptwatch_empty_pagetable_estimate_passes_total",
    help: "Empty-page-table passes since the agent started.",
    kind: MetricType::COUNTER,
    labels: &[],
};
pub(super) const ESTIMATE_LAST_CPU: Family = Family {
    name: "ptwatch_empty_pagetable_estimate_last_pass_cpu_seconds",
    help: "CPU time of the last empty-page-table pass.",
    kind: MetricType::GAUGE,
    labels: &[],
};
pub(super) const ESTIMATE_BUDGET: Family = Family {
    name: "ptwatch_empty_pagetable_estimate_budget_seconds",
    help: "CPU time one empty-page-table pass may use (--empty-tables-budget).",
    kind: MetricType::GAUGE,
    labels: &[],
};

pub(super) const FAMILIES: &[&Family] = &[
    &PROCESS_EMPTY,
    &PROCESS_EMPTY_ERROR,
    &CGROUP_EMPTY,
    &CGROUP_EMPTY_ERROR,
    &NODE_EMPTY,
    &NODE_EMPTY_ERROR,
    &PROCESSES_BY_METHOD,
    &ESTIMATE_CPU,
    &ESTIMATE_PASSES,
    &ESTIMATE_LAST_CPU,
    &ESTIMATE_BUDGET,
];

/// The families for `snapshot`; `records` say which processes have their
/// own series and under which labels (those of their other families).
pub(super) fn families(snapshot: &Snapshot, records: &[ProcessRecord]) -> Vec<MetricFamily> {
    let bytes = |tables: u64| snapshot.bytes(tables) as f64;
    let (mut empty, mut error) = (PROCESS_EMPTY.empty(), PROCESS_EMPTY_ERROR.empty());
    let mut own = std::collections::HashSet::new();
    // A record whose exit is not noticed yet may name a pid a new process
    // reuses; the next harvest drops it.
    for record in records.iter().filter(|r| r.selected && r.exited_at.is_none()) {
        let Some(process) = snapshot.process(record.pid, None) else { continue };
        own.insert(record.pid);
        let pid = record.pid.to_string();
        let labels = process_labels(record, &pid);
        empty.mut_metric().push(PROCESS_EMPTY.sample(&labels, bytes(process.empty.estimate)));
        let [pid, comm, cgroup, container_id, pod_uid] = labels;
        let with_method = [pid, comm, cgroup, container_id, pod_uid, process.method.as_str()];
        error.mut_metric().push(PROCESS_EMPTY_ERROR.sample(&with_method, bytes(process.empty.error())));
    }
    let mut other = Sum::default();
    for process in snapshot.processes.iter().filter(|p| !own.contains(&p.pid)) {
        other.processes += 1;
        other.empty = other.empty + process.empty;
        other.by_method[Method::ALL.iter().position(|&m| m == process.method).unwrap_or(0)] += 1;
    }
    empty.mut_metric().push(PROCESS_EMPTY.sample(&OTHER_PROCESS_LABELS, bytes(other.empty.estimate)));
    let [pid, comm, cgroup, container_id, pod_uid] = OTHER_PROCESS_LABELS;
    let other_labels = [pid, comm, cgroup, container_id, pod_uid, other.weakest_method().as_str()];
    error.mut_metric().push(PROCESS_EMPTY_ERROR.sample(&other_labels, bytes(other.empty.error())));

    let (mut cgroup_empty, mut cgroup_error) = (CGROUP_EMPTY.empty(), CGROUP_EMPTY_ERROR.empty());
    for (path, sum) in &snapshot.cgroups {
        let labels = CgroupLabels::from_path(path);
        let values = [labels.path.as_str(), &labels.container_id, &labels.pod_uid];
        cgroup_empty.mut_metric().push(CGROUP_EMPTY.sample(&values, bytes(sum.empty.estimate)));
        cgroup_error.mut_metric().push(CGROUP_EMPTY_ERROR.sample(&values, bytes(sum.empty.error())));
    }

    let mut by_method = PROCESSES_BY_METHOD.empty();
    for (method, count) in Method::ALL.iter().zip(snapshot.node.by_method) {
        by_method.mut_metric().push(PROCESSES_BY_METHOD.sample(&[method.as_str()], count as f64));
    }
    let node: Bounds = snapshot.node.empty;
    let pass = &snapshot.pass;
    vec![
        empty,
        error,
        cgroup_empty,
        cgroup_error,
        NODE_EMPTY.single(&[], bytes(node.estimate)),
        NODE_EMPTY_ERROR.single(&[], bytes(node.error())),
        by_method,
        ESTIMATE_CPU.single(&[], snapshot.cpu_total.as_secs_f64()),
        ESTIMATE_PASSES.single(&[], pass.passes as f64),
        ESTIMATE_LAST_CPU.single(&[], pass.cpu.as_secs_f64()),
        ESTIMATE_BUDGET.single(&[], pass.budget.as_secs_f64()),
    ]
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use std::time::Duration;

    use prometheus::{Encoder as _, TextEncoder};

    use super::*;
    use crate::empty_tables::{PassReport, ProcessEmpty};

    fn process(pid: u32, cgroup: &str, method: Method, empty: Bounds) -> ProcessEmpty {
        ProcessEmpty {
            pid,
            start_time: 1,
            comm: "x".into(),
            cgroup: Some(cgroup.into()),
            own_series: false,
            method,
            tables: 1000,
            empty,
            passes_old: Some(0),
        }
    }

    fn render(snapshot: &Snapshot, records: &[ProcessRecord]) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&families(snapshot, records), &mut buffer).unwrap();
        String::from_utf8(buffer).unwrap()
    }

    #[test]
    fn own_series_other_cgroups_and_node_add_up() {
        let snapshot = Snapshot::new(
            4096,
            vec![
                process(7, "/a", Method::Exact, Bounds::exact(256)),
                process(8, "/a", Method::Sampled, Bounds::new(90, 100, 120)),
                process(9, "/b", Method::Bounded, Bounds::new(0, 5, 10)),
            ],
            PassReport {
                passes: 3,
                cpu: Duration::from_millis(40),
                budget: Duration::from_millis(300),
                ..PassReport::default()
            },
            Duration::from_millis(120),
        );
        let mut record = ProcessRecord::new(7, b"halves");
        record.selected = true;
        record.cgroup = CgroupLabels::from_path("/a");
        let text = render(&snapshot, &[record]);
        assert!(
            text.contains(r#"ptwatch_process_empty_pagetable_bytes{pid="7",comm="halves",cgroup="/a"} 1048576"#),
            "{text}"
        );
        assert!(text.contains(
            r#"ptwatch_process_empty_pagetable_error_bytes{pid="7",comm="halves",cgroup="/a",method="exact"} 0"#
        ));
        // other: 8 and 9, 105 tables, range 90..130: off by at most 25.
        assert!(text.contains(r#"ptwatch_process_empty_pagetable_bytes{pid="other",comm="other"} 430080"#), "{text}");
        assert!(
            text.contains(
                r#"ptwatch_process_empty_pagetable_error_bytes{pid="other",comm="other",method="bounded"} 102400"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"ptwatch_cgroup_empty_pagetable_bytes{cgroup="/a"} 1458176"#), "{text}");
        assert!(text.contains(r#"ptwatch_cgroup_empty_pagetable_error_bytes{cgroup="/b"} 20480"#), "{text}");
        assert!(text.contains("ptwatch_node_empty_pagetable_bytes 1478656"), "{text}");
        assert!(text.contains(r#"ptwatch_empty_pagetable_processes{method="sampled"} 1"#));
        assert!(text.contains("ptwatch_empty_pagetable_estimate_cpu_seconds_total 0.12"));
        assert!(text.contains("ptwatch_empty_pagetable_estimate_passes_total 3"));
        assert!(text.contains("ptwatch_empty_pagetable_estimate_last_pass_cpu_seconds 0.04"));
        assert!(text.contains("ptwatch_empty_pagetable_estimate_budget_seconds 0.3"));
        assert!(text.contains("# TYPE ptwatch_node_empty_pagetable_bytes gauge"));
    }

    #[test]
    fn a_record_without_an_estimate_has_no_series_and_the_node_still_adds_up() {
        let snapshot = Snapshot::new(
            4096,
            vec![process(9, "/b", Method::Exact, Bounds::exact(1))],
            PassReport::default(),
            Duration::ZERO,
        );
        let mut gone = ProcessRecord::new(12, b"gone");
        gone.selected = true;
        let text = render(&snapshot, &[gone]);
        assert!(!text.contains(r#"pid="12""#), "{text}");
        assert!(text.contains(r#"ptwatch_process_empty_pagetable_bytes{pid="other",comm="other"} 4096"#), "{text}");
    }
}
