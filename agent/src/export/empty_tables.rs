//! The empty-page-table families, written from the last
//! [`crate::empty_tables::Snapshot`] (the estimator runs on its own
//! interval; a scrape only copies its numbers). Documented in
//! `docs/metrics.md#empty-page-tables`.
//!
//! Every size is in bytes (tables × page size). Each estimate comes with an
//! error bound: the largest distance between the estimate and the truth at
//! 99 % confidence, 0 when every span was read. Sums of estimates are
//! estimates of sums; a sum's bound is that of the summed ranges.

use ptwatch_common::ProcessKey;

use super::{
    exposition::{label_text, Exposition},
    families as f,
    metrics::OTHER_LABELS,
};
use crate::{
    aggregate::{CgroupLabels, Export, View},
    empty_tables::{Snapshot, Sum, Tracked},
    scan::Method,
};

/// Clock ticks of `/proc/PID/stat`'s start time: `USER_HZ`, 100 on every
/// architecture Linux runs ptwatch on.
const NS_PER_STAT_TICK: u64 = 1_000_000_000 / 100;

/// The live processes of a harvest, as the estimator takes them: which have
/// their own series, under which cgroup (so that its sums agree with the
/// other cgroup series).
pub fn tracked(view: &View<'_>) -> Vec<Tracked> {
    view.records()
        .filter(|record| record.is_live())
        .map(|record| Tracked {
            pid: record.pid(),
            start_time: Some(record.key.start_time_ns / NS_PER_STAT_TICK),
            cgroup: record.cgroup.as_deref().map(|labels| labels.path.clone()),
            own_series: record.series.export == Export::Own,
        })
        .collect()
}

fn method_label(method: Method) -> String {
    label_text(&["method"], &[method.as_str()])
}

/// Write the families of `snapshot`; `growing` are the live processes
/// whose current series grows on its own, with its labels (in pid order).
pub fn render<'a>(out: &mut Exposition, snapshot: &Snapshot, growing: impl Iterator<Item = (&'a str, ProcessKey)>) {
    let bytes = |tables: u64| snapshot.bytes(tables);
    let mut own = std::collections::HashSet::new();
    {
        // Collect once: both families list the same processes.
        let mut rows = Vec::new();
        for (labels, key) in growing {
            let start_time = key.start_time_ns / NS_PER_STAT_TICK;
            let Some(process) = snapshot.process(key.tgid, Some(start_time)) else { continue };
            own.insert(key.tgid);
            rows.push((labels, process));
        }
        let mut other = Sum::default();
        for process in snapshot.processes.iter().filter(|p| !own.contains(&p.pid)) {
            other.add(process);
        }
        {
            let mut empty = out.family(&f::PROCESS_EMPTY);
            for (labels, process) in &rows {
                empty.sample(labels, "", bytes(process.empty.estimate));
            }
            empty.sample(OTHER_LABELS, "", bytes(other.empty.estimate));
        }
        let mut error = out.family(&f::PROCESS_EMPTY_ERROR);
        for (labels, process) in &rows {
            error.sample(labels, &method_label(process.method), bytes(process.empty.error()));
        }
        error.sample(OTHER_LABELS, &method_label(other.weakest_method()), bytes(other.empty.error()));
    }

    let cgroups: Vec<(String, &Sum)> = snapshot
        .cgroups
        .iter()
        .map(|(path, sum)| {
            let labels = CgroupLabels::from_path(path);
            (label_text(f::CGROUP_LABELS, &[&labels.path, &labels.container_id, &labels.pod_uid]), sum)
        })
        .collect();
    {
        let mut cgroup_empty = out.family(&f::CGROUP_EMPTY);
        for (labels, sum) in &cgroups {
            cgroup_empty.sample(labels, "", bytes(sum.empty.estimate));
        }
    }
    {
        let mut cgroup_error = out.family(&f::CGROUP_EMPTY_ERROR);
        for (labels, sum) in &cgroups {
            cgroup_error.sample(labels, "", bytes(sum.empty.error()));
        }
    }

    out.family(&f::NODE_EMPTY).sample("", "", bytes(snapshot.node.empty.estimate));
    out.family(&f::NODE_EMPTY_ERROR).sample("", "", bytes(snapshot.node.empty.error()));
    {
        let mut by_method = out.family(&f::EMPTY_PROCESSES_BY_METHOD);
        for (method, count) in Method::ALL.iter().zip(snapshot.node.by_method) {
            by_method.values(&[method.as_str()], count);
        }
    }
    let pass = &snapshot.pass;
    out.family(&f::EMPTY_ESTIMATE_CPU).sample("", "", snapshot.cpu_total.as_secs_f64());
    out.family(&f::EMPTY_ESTIMATE_PASSES).sample("", "", pass.passes);
    out.family(&f::EMPTY_ESTIMATE_LAST_CPU).sample("", "", pass.cpu.as_secs_f64());
    out.family(&f::EMPTY_ESTIMATE_BUDGET).sample("", "", pass.budget.as_secs_f64());
}
