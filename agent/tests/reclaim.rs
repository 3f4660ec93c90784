//! PT_RECLAIM counts of the real programs against the kernel's own
//! accounting (`VmPTE`), on real workloads.

mod support;

use support::{pt_reclaim, run_workload, Attached};

const KIB_PER_TABLE: u64 = 4;

/// Run a single-threaded workload and check the per-process counts against
/// the VmPTE drops it measured around each call.
fn check_cuts(attached: &mut Attached, mib: u32, offset_kib: u32, cut_kib: u32, rounds: u32, advice: &str) {
    let args = [
        "cuts".to_owned(),
        mib.to_string(),
        offset_kib.to_string(),
        cut_kib.to_string(),
        rounds.to_string(),
        advice.to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = run_workload(&args);
    let record = attached.process(report.pid);
    assert_eq!(
        record.reclaimed() * KIB_PER_TABLE,
        report.vmpte_drop_kib,
        "{args:?}: ptwatch counted {} PTE pages, VmPTE dropped {} kB",
        record.reclaimed(),
        report.vmpte_drop_kib
    );
    // The workload knows which spans each call covers completely; on a
    // PT_RECLAIM kernel all of them are freed (so the test cannot pass by
    // counting nothing).
    assert_eq!(record.reclaimed(), report.expected_tables, "{args:?}");
    assert_eq!(record.counts.dontneed_calls, report.calls, "{args:?}: calls");
    assert_eq!(record.counts.dontneed_bytes, report.bytes, "{args:?}: bytes");
}

#[test]
fn dontneed_cuts_of_several_sizes_and_alignments_equal_the_vmpte_drop() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let mut attached = Attached::new();
    // (MiB, offset from a 2 MiB boundary in KiB, cut in KiB, rounds)
    for (mib, offset, cut, rounds) in [
        (64, 0, 2048, 1),      // one table per call
        (64, 0, 65536, 2),     // one call for all 32 tables, twice
        (64, 1000, 3000, 1),   // unaligned cuts: some spans never fully covered
        (33, 512, 6144, 1),    // unaligned start and odd size
        (16, 4, 1024, 1),      // cuts smaller than a span: nothing reclaimable
        (1024, 0, 1048576, 1), // 1 GiB in one call: 512 tables
    ] {
        check_cuts(&mut attached, mib, offset, cut, rounds, "dontneed");
    }
}

#[test]
fn dontneed_locked_and_process_madvise_are_counted() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let mut attached = Attached::new();
    check_cuts(&mut attached, 32, 0, 4096, 1, "dontneed-locked");
    check_cuts(&mut attached, 64, 0, 8192, 1, "process-madvise");
    check_cuts(&mut attached, 64, 0, 65536, 1, "process-madvise");
}

#[test]
fn madv_free_reclaims_nothing_and_is_not_a_dontneed() {
    let mut attached = Attached::new();
    let report = run_workload(&["cuts", "32", "0", "2048", "1", "free"]);
    assert_eq!(report.vmpte_drop_kib, 0, "MADV_FREE never frees page tables");
    let counted = attached.find(report.pid);
    assert!(counted.is_none(), "MADV_FREE must not be counted: {counted:?}");
    // Positive control: the same workload with DONTNEED is counted.
    let control = run_workload(&["cuts", "32", "0", "2048", "1", "dontneed"]);
    assert_eq!(attached.process(control.pid).counts.dontneed_calls, control.calls);
}

#[test]
fn several_processes_at_once_are_kept_apart() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let mut attached = Attached::new();
    let sizes = [16u32, 48, 128, 256];
    let workers: Vec<_> = sizes
        .iter()
        .map(|mib| {
            let mib = mib.to_string();
            std::thread::spawn(move || run_workload(&["cuts", &mib, "0", "2048", "3", "dontneed"]))
        })
        .collect();
    let reports: Vec<_> = workers.into_iter().map(|w| w.join().expect("worker")).collect();
    for (report, mib) in reports.iter().zip(sizes) {
        let record = attached.process(report.pid);
        assert_eq!(record.reclaimed() * KIB_PER_TABLE, report.vmpte_drop_kib, "{mib} MiB worker");
        assert_eq!(record.reclaimed(), u64::from(mib / 2) * 3, "{mib} MiB worker, 3 rounds");
    }
}

/// Two agents on one node (a DaemonSet next to a systemd unit, or an
/// upgrade's old and new pod) load programs and maps of their own; neither
/// may take anything from the other: each counts every call and table of a
/// workload that runs while both are attached, the same as the kernel.
#[test]
fn two_agents_on_one_node_count_the_same_as_the_kernel() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let mut first = Attached::new();
    let mut second = Attached::new();
    for args in [
        ["cuts", "64", "1000", "3000", "2", "dontneed"],
        ["cuts", "2", "0", "4", "4", "dontneed"],
        ["cuts", "64", "0", "8192", "1", "process-madvise"],
    ] {
        let report = run_workload(&args);
        let (one, two) = (first.process(report.pid), second.process(report.pid));
        assert_eq!(one.counts, two.counts, "{args:?}: the two agents disagree");
        assert_eq!(one.reclaimed() * KIB_PER_TABLE, report.vmpte_drop_kib, "{args:?}");
        assert_eq!(one.counts.dontneed_calls, report.calls, "{args:?}: calls");
        assert_eq!(one.counts.dontneed_bytes, report.bytes, "{args:?}: bytes");
    }
    let report = run_workload(&["threads", "4", "16", "20"]);
    let (one, two) = (first.process(report.pid), second.process(report.pid));
    assert_eq!(one.counts, two.counts, "threads: the two agents disagree");
    assert_eq!(one.reclaimed(), report.expected_tables, "threads");
    assert_eq!(one.counts.dontneed_calls, report.calls, "threads: calls");
}

#[test]
fn a_process_that_exits_at_once_keeps_its_counts() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let mut attached = Attached::new();
    // The workload exits as soon as its last call returns, before any harvest.
    let report = run_workload(&["cuts", "8", "0", "8192", "1", "dontneed"]);
    assert!(!ptwatch::kernel::procfs::process_exists(report.pid), "workload has exited");
    let record = attached.process(report.pid);
    assert_eq!(record.reclaimed(), 4);
    assert!(record.exited, "exit noticed");
    // Still exported on the next harvest (within the TTL).
    assert_eq!(attached.process(report.pid).reclaimed(), 4);
}

#[test]
fn multi_threaded_fault_and_dontneed_concurrently_are_counted_exactly() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let mut attached = Attached::new();
    let before = attached.node();
    // 4 threads × 60 rounds × {touch 32 MiB; DONTNEED 32 MiB}, each thread
    // in a region of its own: faults of some threads overlap DONTNEED calls
    // of others, in disjoint ranges, so every method the plans use is exact.
    let report = run_workload(&["threads", "4", "32", "60"]);
    let record = attached.process(report.pid);
    assert_eq!(report.expected_tables, 4 * 16 * 60, "{report:?}");
    assert_eq!(record.reclaimed(), report.expected_tables);
    // The threads do not end before the process (a C library's own calls
    // at a thread's end would add to the process's): every call is the
    // workload's.
    assert_eq!(record.counts.dontneed_calls, report.calls, "DONTNEED calls counted and made");
    // Every table the threads created was freed again: the kernel's VmPTE
    // confirms the expectation (threads' stacks account for the rest).
    assert!(report.vmpte_end_kib < 200, "VmPTE at the end: {} kB", report.vmpte_end_kib);
    let after = attached.node();
    assert!(after.frees.reclaimed() - before.frees.reclaimed() >= record.reclaimed());
    assert_eq!(after.approximate_calls, before.approximate_calls, "an exact method measured every call");
}

#[test]
fn the_agents_own_dontneed_is_not_counted() {
    let mut attached = Attached::new();
    // This test process loaded the probes, so it is "the agent".
    let region = ptwatch_workload::Region::new(8 << 20, 0).expect("map");
    region.touch();
    ptwatch_workload::advise(region.start, region.len, ptwatch_workload::Advice::Dontneed).expect("madvise");
    let own = attached.find(std::process::id());
    assert!(own.is_none(), "agent activity counted: {own:?}");
    // Positive control: a child's identical call is counted.
    let child = run_workload(&["cuts", "8", "0", "8192", "1", "dontneed"]);
    assert_eq!(attached.process(child.pid).counts.dontneed_calls, 1);
}

#[test]
fn node_total_includes_every_process() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let mut attached = Attached::new();
    let before = attached.node().frees.reclaimed();
    let a = run_workload(&["cuts", "16", "0", "2048", "1", "dontneed"]);
    let b = run_workload(&["cuts", "32", "0", "2048", "1", "dontneed"]);
    let after = attached.node().frees.reclaimed();
    // Other processes on the machine may reclaim too: at least ours.
    assert!(
        after - before >= (a.vmpte_drop_kib + b.vmpte_drop_kib) / KIB_PER_TABLE,
        "node total grew by {} only",
        after - before
    );
}
