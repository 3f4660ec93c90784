//! What every kernel must show, whatever the probe plan: run on this host
//! (tracepoint plan) by `cargo xtask test`, and inside real Debian kernels
//! (6.1, 6.18, 7.x) by `cargo xtask vm-test`, which forces each plan in turn
//! with `PTWATCH_TEST_PROBE_MODE` and says whether the kernel has PT_RECLAIM
//! with `PTWATCH_EXPECT_PT_RECLAIM`.
//!
//! Every test asserts something in every plan: where a plan cannot see an
//! event, the test checks that ptwatch says so and exports nothing for it.

mod support;

use ptwatch::probes::{
    plan::{Attach, ProbeMode},
    ReclaimAccounting,
};
use ptwatch_common::{Cause, FreeCounts, Level};
use support::{expect_pt_reclaim, probe_mode, run_workload, Attached, Process};

fn frees_of(record: &Process, cause: Cause) -> u64 {
    Level::ALL.iter().map(|level| record.counts.freed(cause, *level)).sum()
}

fn no_frees(record: &Process) -> bool {
    record.counts.frees == FreeCounts::default()
}

#[test]
fn the_requested_plan_is_the_one_in_force() {
    let attached = Attached::new();
    let plan = attached.probes.plan();
    match probe_mode() {
        ProbeMode::Fentry => {
            assert_eq!(plan.pagetable_free.attach, Some(Attach::Fentry));
            assert_eq!(plan.pt_reclaim.attach, Some(Attach::Fentry));
        }
        ProbeMode::Kprobe => {
            assert_eq!(plan.pagetable_free.attach, Some(Attach::Kprobe));
            assert_eq!(plan.pt_reclaim.attach, Some(Attach::Kprobe));
        }
        ProbeMode::Tracepoint => {
            assert_eq!(plan.pagetable_free.attach, None);
            assert_eq!(plan.pt_reclaim.attach, Some(Attach::Tracepoint));
        }
        ProbeMode::Auto => {
            // Every alternative tried before the chosen one has a reason.
            let chosen = plan.pt_reclaim.attach.expect("reclaim is always observable");
            let earlier = [Attach::Fentry, Attach::Kprobe, Attach::Tracepoint].into_iter().take_while(|a| *a != chosen);
            assert_eq!(earlier.count(), plan.pt_reclaim.rejected.len(), "{plan:?}");
        }
    }
}

#[test]
fn pt_reclaim_support_is_detected() {
    assert_eq!(support::pt_reclaim(), expect_pt_reclaim(), "behavioural PT_RECLAIM detection");
}

#[test]
fn dontneed_reclaim_equals_the_vmpte_drop() {
    let mut attached = Attached::new();
    let frees_seen = attached.probes.plan().pagetable_free.attach.is_some();
    for args in [["cuts", "64", "0", "2048", "1", "dontneed"], ["cuts", "1024", "0", "1048576", "1", "dontneed"]] {
        let report = run_workload(&args);
        let record = attached.process(report.pid);
        if expect_pt_reclaim() {
            assert_eq!(record.reclaimed(), report.expected_tables, "{args:?}");
            assert_eq!(record.reclaimed() * 4, report.vmpte_drop_kib, "{args:?}");
        } else {
            assert_eq!(report.vmpte_drop_kib, 0, "no PT_RECLAIM: VmPTE does not drop");
            assert_eq!(record.reclaimed(), 0, "{args:?}");
        }
        assert_eq!(record.counts.dontneed_calls, report.calls);
        if frees_seen {
            // The frees behind the reclaim, by cause and level.
            assert_eq!(record.counts.freed(Cause::Reclaim, Level::Pte), record.reclaimed());
        } else {
            assert!(no_frees(&record), "frees exported without a free probe: {record:?}");
        }
    }
}

/// Run a workload and return its record when the plan probes frees. When it
/// does not, check that nothing was exported for frees and return `None`.
fn frees_of_workload(attached: &mut Attached, args: &[&str]) -> Option<(ptwatch_workload::Report, Process)> {
    let report = run_workload(args);
    let record = attached.find(report.pid);
    if attached.probes.plan().pagetable_free.attach.is_none() {
        assert!(record.is_none_or(|r| no_frees(&r)), "no free probe, nothing exported: {args:?}");
        return None;
    }
    let record = record.unwrap_or_else(|| panic!("the {args:?} workload has free counters"));
    Some((report, record))
}

#[test]
fn munmap_frees_are_counted_as_unmap() {
    let mut attached = Attached::new();
    let Some((report, record)) = frees_of_workload(&mut attached, &["unmap", "64"]) else { return };
    assert_eq!(Some(record.counts.freed(Cause::Unmap, Level::Pte)), Some(report.expected_tables), "{record:?}");
    // Every page-table page the munmap released, at any level, is counted.
    assert_eq!(frees_of(&record, Cause::Unmap) * 4, report.vmpte_drop_kib, "{record:?}");
    assert_eq!(frees_of(&record, Cause::Reclaim), 0, "munmap is not PT_RECLAIM");
}

#[test]
fn exit_frees_are_counted_as_exit_and_attributed_to_the_process() {
    let mut attached = Attached::new();
    let Some((report, record)) = frees_of_workload(&mut attached, &["exit", "64"]) else { return };
    let exit_pte = record.counts.freed(Cause::Exit, Level::Pte);
    assert!(
        exit_pte >= report.expected_tables,
        "exit freed {exit_pte} PTE tables, the workload had {}: {record:?}, node: {:?}",
        report.expected_tables,
        attached.node().frees
    );
    // VmPTE at its peak counted every table of the process; exit frees them all.
    assert!(frees_of(&record, Cause::Exit) * 4 >= report.vmpte_peak_kib - 8, "{record:?} vs {report:?}");
    assert_eq!(record.comm, "ptwatch-workloa");
}

/// THP-backed anonymous memory: DONTNEED zaps its huge PMDs, and the kernel
/// frees the PTE table deposited with each THP (VmPTE drops by one table per
/// THP). That is cause `thp`, never PT_RECLAIM.
#[test]
fn thp_deposited_tables_are_counted_as_thp_not_reclaim() {
    let mut attached = Attached::new();
    let accounting = attached.probes.accounting().clone();
    let report = run_workload(&["thp", "16"]);
    assert_eq!(report.vmpte_drop_kib, report.expected_tables * 4, "one deposited table per THP: {report:?}");
    let record = attached.process(report.pid);
    match accounting {
        ReclaimAccounting::FreeClassification => {
            assert_eq!(Some(record.counts.freed(Cause::Thp, Level::Pte)), Some(report.expected_tables), "{record:?}");
            assert_eq!(frees_of(&record, Cause::Thp) * 4, report.vmpte_drop_kib, "{record:?}");
            assert_eq!(frees_of(&record, Cause::Reclaim), 0, "{record:?}");
            assert_eq!(record.reclaimed(), 0, "{record:?}");
        }
        // The walk reads only PMDs that point to PTE tables: none here.
        ReclaimAccounting::PageTableWalk => {
            assert_eq!(record.reclaimed(), 0, "{record:?}");
            assert!(no_frees(&record), "no free probe: {record:?}");
        }
        // The fallback sees the VmPTE drop and cannot tell a deposited
        // table from a reclaimed one: documented as approximate.
        ReclaimAccounting::PgtablesBytes { .. } => {
            assert_eq!(record.reclaimed() * 4, report.vmpte_drop_kib, "{record:?}");
        }
    }
    assert_eq!(record.counts.dontneed_calls, 1);
}

/// Small-page shmem collapsed by MADV_COLLAPSE: the PTE tables of the
/// collapsed spans are retired through `pte_free_defer` (6.5+), cause
/// `collapse`, attributed to the process whose mm they belonged to.
#[test]
fn shmem_collapse_frees_are_counted_as_collapse() {
    let mut attached = Attached::new();
    let collapse_hooked = attached.probes.plan().pagetable_free.detail.contains("collapse");
    let report = run_workload(&["collapse", "16"]);
    assert!(report.expected_tables > 0, "MADV_COLLAPSE mapped no span by a PMD: {report:?}");
    let record = attached.find(report.pid);
    let collapsed = record.as_ref().map_or(0, |r| frees_of(r, Cause::Collapse));
    if collapse_hooked {
        assert_eq!(collapsed, report.expected_tables, "{record:?} vs {report:?}");
        assert_eq!(collapsed * 4, report.vmpte_drop_kib, "{record:?} vs {report:?}");
    } else {
        // 6.1 frees them with an inline pte_free: nothing to hook, and the
        // plan says so (no `collapse` among its causes).
        assert_eq!(collapsed, 0, "{record:?}");
    }
    // Not a DONTNEED: never reclaim.
    assert_eq!(record.map_or(0, |r| r.reclaimed()), 0);
}
