//! The empty page tables the agent exports, against the kernel's own
//! accounting (`VmPTE`) of workloads that leave a known number of them:
//!
//! - `halves 512`: 512 MiB DONTNEEDed in 1 MiB halves of each 2 MiB span,
//!   which PT_RECLAIM cannot free: 256 empty PTE tables on every kernel;
//! - `whole 256`: each span DONTNEEDed whole: PT_RECLAIM frees every table,
//!   a kernel without it keeps all 128;
//! - `sparse 64 N`: one page in each 2 MiB span of 64 GiB (32,768 PTE
//!   tables, 128 MiB of them), every N-th DONTNEEDed again: the estimate
//!   must hold its stated bound and the pass its CPU budget, whether the
//!   process is read exactly or sampled.
//!
//! The estimator is run as the agent runs it ([`Estimator::pass`]); the last
//! test checks the exported series of a real agent.

mod support;

use std::{
    io::BufRead as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use ptwatch::{
    empty_tables::{Estimator, ProcessEmpty, Settings, Snapshot, Tracked},
    scan::Method,
};
use ptwatch_workload::sparse::EmptyReport;
use support::{expect_pt_reclaim, workload_bin};

/// A workload that prints its report and keeps its memory until dropped.
struct Held {
    child: Child,
    report: EmptyReport,
}

impl Held {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(workload_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the workload");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read the workload's report");
        let report =
            serde_json::from_str(&line).unwrap_or_else(|err| panic!("workload {args:?} report {line:?}: {err}"));
        Self { child, report }
    }

    fn pid(&self) -> u32 {
        self.report.report.pid
    }

    /// Page-table pages the kernel kept for the workload's range: `VmPTE`
    /// now minus `VmPTE` before it mapped anything.
    fn kept_tables(&self) -> u64 {
        (self.report.report.vmpte_end_kib - self.report.vmpte_before_kib) / 4
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// One pass of the agent's estimator with `budget`, the workload tracked
/// with its own series (so that the schedule reads it first).
fn pass(pid: u32, budget: Duration) -> (ProcessEmpty, Snapshot) {
    let mut estimator = Estimator::new(Settings { interval: Duration::from_secs(60), budget });
    let tracked = [Tracked { pid, own_series: true, ..Tracked::default() }];
    let snapshot = estimator.pass(&tracked);
    let process = snapshot.process(pid, None).unwrap_or_else(|| panic!("workload {pid} not in the snapshot")).clone();
    eprintln!(
        "pid {pid}: {:?} {} tables, empty {:?}; pass {:?} of {:?} CPU, {} processes",
        process.method, process.tables, process.empty, snapshot.pass.cpu, snapshot.pass.budget, snapshot.pass.listed
    );
    (process, snapshot)
}

/// A pass may overrun its budget by the minimum sample of the process it
/// stops in and the final `status` reads: a few milliseconds.
fn assert_within_budget(snapshot: &Snapshot) {
    let allowed = snapshot.pass.budget + Duration::from_millis(5);
    assert!(
        snapshot.pass.cpu <= allowed,
        "pass used {:?} of CPU, budget {:?}",
        snapshot.pass.cpu,
        snapshot.pass.budget
    );
}

#[test]
fn halves_leave_as_many_empty_tables_as_the_kernel_kept() {
    let held = Held::start(&["halves", "512"]);
    let kept = held.kept_tables();
    eprintln!("{:?}; kernel kept {kept} tables", held.report);
    // 256 PTE tables, and a PMD table if the range opened a new GiB.
    assert!((256..=258).contains(&kept), "VmPTE grew by {kept} tables for 256 spans");
    assert_eq!(held.report.report.vmpte_drop_kib, 0, "no call covered a whole span: nothing reclaimed");

    let (process, snapshot) = pass(held.pid(), Settings::default().budget);
    assert_eq!(process.method, Method::Exact);
    assert!(process.empty.is_exact(), "{:?}", process.empty);
    assert!(
        process.empty.estimate.abs_diff(kept) <= 1,
        "estimate {} vs {kept} kept by the kernel",
        process.empty.estimate
    );
    assert!(process.own_series && process.passes_old == Some(0));
    assert!(snapshot.node.empty.estimate >= process.empty.estimate);
    assert_within_budget(&snapshot);
}

#[test]
fn whole_span_dontneed_leaves_none_with_pt_reclaim_and_every_table_without() {
    let held = Held::start(&["whole", "256"]);
    let kept = held.kept_tables();
    let (process, _) = pass(held.pid(), Settings::default().budget);
    eprintln!("{:?}; kernel kept {kept} tables", held.report);
    assert_eq!(process.method, Method::Exact);
    if expect_pt_reclaim() {
        assert_eq!(held.report.report.vmpte_drop_kib, 128 * 4, "PT_RECLAIM freed every table");
        // An upper-level table emptied with them may stay (PT_RECLAIM frees
        // PTE tables only).
        assert!(process.empty.estimate <= 2, "{:?}", process.empty);
    } else {
        assert_eq!(held.report.report.vmpte_drop_kib, 0, "no PT_RECLAIM: nothing freed");
        assert!((128..=130).contains(&kept), "{kept}");
        assert!(process.empty.estimate.abs_diff(kept) <= 1, "estimate {} vs {kept} left", process.empty.estimate);
    }
}

/// `sparse 64 EVERY` read with `budget`: the truth (what the workload
/// emptied, checked against VmPTE) lies within the estimate's bounds, the
/// error bound is a small share of the tables, the pass keeps its budget.
fn sparse(every: &str, budget: Duration, expect: Method) {
    let held = Held::start(&["sparse", "64", every]);
    let truth = held.report.empty_tables;
    // 32,768 PTE tables, 64 or 65 PMD tables, a PUD table or two.
    assert!((32_768 + 64..=32_768 + 67).contains(&held.kept_tables()), "{:?}", held.report);
    for round in 0..3 {
        let (process, snapshot) = pass(held.pid(), budget);
        assert_eq!(process.method, expect, "round {round}");
        let empty = process.empty;
        // The workload's own few tables (stack, heap) may add one.
        assert!(empty.min <= truth + 1 && truth <= empty.max + 1, "round {round}: truth {truth} outside {empty:?}");
        assert!(
            empty.error() <= process.tables / 20,
            "round {round}: error bound {} of {} tables",
            empty.error(),
            process.tables
        );
        if expect == Method::Exact {
            assert!(empty.estimate.abs_diff(truth) <= 1, "{empty:?}");
        }
        assert_within_budget(&snapshot);
    }
}

#[test]
fn a_sparse_64_gib_mapping_fits_the_default_budget_exactly() {
    sparse("0", Settings::default().budget, Method::Exact);
}

#[test]
fn a_sparse_64_gib_mapping_is_sampled_within_its_bound_under_a_small_budget() {
    // 40 ms a pass, at most half of it for one process: smaps (~60 ms here)
    // does not fit, nor the whole of pagemap (~50 ms).
    sparse("0", Duration::from_millis(40), Method::Sampled);
    sparse("2", Duration::from_millis(40), Method::Sampled);
}
