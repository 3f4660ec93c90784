//! The aggregation against a scripted kernel, `/proc` and host: identity
//! and pid reuse, exits, renames, map overflow, counters that never go
//! down, and sums that always equal the node totals.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use ptwatch_common::{Cause, Level};

use super::{testing::*, *};

fn every_process() -> Selection {
    Selection { top: 0, ..Selection::default() }
}

fn top(top: usize, rank_by: RankBy) -> Selection {
    Selection { top, rank_by, ..Selection::default() }
}

/// Exported own series plus `other`, for each counter.
/// A deterministic xorshift generator: `next(n)` is in `0..n`.
fn below(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed;
    move |n| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    }
}

fn exported_sum<S: CounterSource, L: Liveness, H: Host>(agg: &Aggregator<S, L, H>) -> Counts {
    let mut sum = agg.snapshot().folded.counts;
    for record in agg.records() {
        for series in record.all_series() {
            if let Some(own) = series.exported() {
                sum.add(own);
            }
        }
    }
    sum
}

/// Every exported series by identity and name, with its value.
fn exported_series<S: CounterSource, L: Liveness, H: Host>(
    agg: &Aggregator<S, L, H>,
) -> BTreeMap<(ProcessKey, String), Counts> {
    let mut series = BTreeMap::new();
    for record in agg.records() {
        for s in record.all_series() {
            if let Some(own) = s.exported() {
                assert!(series.insert((record.key, s.comm.to_string()), *own).is_none(), "one series per label set");
            }
        }
    }
    series
}

fn only(agg: &Aggregator<Shared, Proc, FakeHost>, pid: u32) -> &ProcessRecord {
    let records: Vec<&ProcessRecord> = agg.records_of(pid).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    records[0]
}

#[test]
fn live_processes_are_reported_with_kernel_counts_under_their_proc_name() {
    let world = World::new(64);
    let key = world.start(10, 1, "worker");
    // The kernel named the entry after the thread that created it.
    world.reclaim(key, "tokio-rt-worker", 0, 512);
    let mut agg = world.aggregator(Duration::from_secs(60), every_process());
    agg.harvest(Instant::now()).unwrap();
    assert_eq!(agg.snapshot().node.frees.reclaimed(), 512);
    let record = only(&agg, 10);
    assert_eq!(record.total().reclaimed(), 512);
    assert_eq!(&*record.series.comm, "worker");
    assert_eq!(record.series.exported().map(Counts::reclaimed), Some(512));
    assert!(record.renamed.is_empty(), "naming a new record is not a rename");
    assert!(world.kernel.0.borrow().taken.is_empty());
}

#[test]
fn an_exited_process_is_taken_out_with_its_final_counts_and_kept_for_the_ttl() {
    let world = World::new(64);
    let key = world.start(20, 1, "short");
    world.reclaim(key, "short", 0, 7);
    let mut agg = world.aggregator(Duration::from_secs(30), every_process());
    let t0 = Instant::now();
    agg.harvest(t0).unwrap();
    // It counts more, then exits before the next harvest.
    world.reclaim(key, "short", 0, 3);
    world.proc.exit(20);
    agg.harvest(t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(world.kernel.0.borrow().taken, vec![key]);
    assert!(world.kernel.0.borrow().processes.is_empty(), "the entry was taken out");
    let record = only(&agg, 20);
    assert_eq!(record.lifetime, Lifetime::Exited { at: t0 + Duration::from_secs(1) });
    assert_eq!(record.series.exported().map(Counts::reclaimed), Some(10));
    assert_eq!(agg.snapshot().maps[0], MapUsage { name: "PROCESS_COUNTERS", entries: 0, max_entries: 64 });
    agg.harvest(t0 + Duration::from_secs(30)).unwrap();
    assert_eq!(agg.records().count(), 1, "kept within the TTL");
    agg.harvest(t0 + Duration::from_secs(31)).unwrap();
    assert_eq!(agg.records().count(), 0, "dropped after the TTL");
    assert_eq!(agg.snapshot().folded.counts.reclaimed(), 10, "its counts stay in other");
    assert_eq!(exported_sum(&agg), Counts::of_node(&agg.snapshot().node));
}

#[test]
fn a_process_that_exited_before_the_first_harvest_is_still_exported() {
    let world = World::new(64);
    let key = ProcessKey { tgid: 21, _pad: 0, start_time_ns: 5 };
    world.reclaim(key, "blink", 0, 4);
    let mut agg = world.aggregator(Duration::from_secs(30), every_process());
    // Even a scrape (no full harvest) checks a new record.
    agg.harvest_counters(Instant::now()).unwrap();
    let record = only(&agg, 21);
    assert!(!record.is_live());
    assert_eq!((&*record.series.comm, record.series.exported().map(Counts::reclaimed)), ("blink", Some(4)));
    assert_eq!(world.kernel.0.borrow().taken, vec![key]);
}

#[test]
fn a_recycled_pid_is_a_new_process_with_its_own_series() {
    let world = World::new(64);
    let old = world.start(30, 100, "app");
    world.reclaim(old, "app", 0, 100);
    let mut agg = world.aggregator(Duration::from_secs(300), every_process());
    let t0 = Instant::now();
    agg.harvest(t0).unwrap();
    // The process exits and another one, with the same name, gets its pid
    // before the next harvest.
    world.proc.exit(30);
    let new = world.start(30, 200, "app");
    world.reclaim(new, "app", 0, 3);
    agg.harvest(t0 + Duration::from_secs(1)).unwrap();
    let records: Vec<&ProcessRecord> = agg.records_of(30).collect();
    assert_eq!(records.len(), 2, "two processes: {records:?}");
    assert_eq!((records[0].key, records[0].is_live()), (old, false));
    assert_eq!(records[0].series.exported().map(Counts::reclaimed), Some(100), "the old series keeps its value");
    assert_eq!((records[1].key, records[1].is_live()), (new, true));
    assert_eq!(records[1].series.exported().map(Counts::reclaimed), Some(3));
    assert_eq!(world.kernel.0.borrow().taken, vec![old], "only the old entry was taken out");
    assert_eq!(exported_sum(&agg).reclaimed(), 103);
}

#[test]
fn a_late_event_of_an_exited_process_is_added_and_taken_out_again() {
    let world = World::new(64);
    let key = world.start(40, 1, "late");
    world.reclaim(key, "late", 0, 5);
    let mut agg = world.aggregator(Duration::from_secs(300), every_process());
    let t0 = Instant::now();
    agg.harvest(t0).unwrap();
    world.proc.exit(40);
    agg.harvest(t0 + Duration::from_secs(1)).unwrap();
    // Its address space is torn down later, in another task: the kernel
    // re-creates the entry from zero.
    world.reclaim(key, "late", 0, 2);
    agg.harvest_counters(t0 + Duration::from_secs(2)).unwrap();
    assert_eq!(only(&agg, 40).series.exported().map(Counts::reclaimed), Some(7));
    assert!(world.kernel.0.borrow().processes.is_empty(), "taken out again");
    assert_eq!(world.kernel.0.borrow().taken, vec![key, key]);
}

/// A merge skips entries that hold what the last merge applied; an entry
/// taken out and re-created with that same value is new all the same.
#[test]
fn an_entry_re_created_with_the_value_it_was_taken_out_with_is_counted_again() {
    let world = World::new(64);
    let key = world.start(42, 1, "same");
    world.reclaim(key, "same", 0, 3);
    let mut agg = world.aggregator(Duration::from_secs(300), every_process());
    let t0 = Instant::now();
    agg.harvest(t0).unwrap();
    world.proc.exit(42);
    agg.harvest(t0 + Duration::from_secs(1)).unwrap();
    // Two late events, each re-creating the entry with the value it had
    // when it was last taken out (and read).
    for (at, total) in [(2, 6), (3, 9)] {
        world.reclaim(key, "same", 0, 3);
        agg.harvest_counters(t0 + Duration::from_secs(at)).unwrap();
        assert_eq!(only(&agg, 42).series.exported().map(Counts::reclaimed), Some(total));
        assert_eq!(exported_sum(&agg), Counts::of_node(&agg.snapshot().node));
    }
    assert_eq!(world.kernel.0.borrow().taken, vec![key, key, key]);
    // Unchanged entries of live processes are skipped and still exact.
    let live = world.start(43, 1, "live");
    world.reclaim(live, "live", 0, 4);
    for at in 4..7 {
        agg.harvest_counters(t0 + Duration::from_secs(at)).unwrap();
        assert_eq!(only(&agg, 43).series.exported().map(Counts::reclaimed), Some(4));
    }
    assert_eq!(exported_sum(&agg), Counts::of_node(&agg.snapshot().node));
}

#[test]
fn a_kernel_entry_that_goes_down_is_counted_as_new_and_the_series_never_falls() {
    let world = World::new(64);
    let key = world.start(41, 1, "odd");
    world.reclaim(key, "odd", 0, 10);
    let mut agg = world.aggregator(Duration::from_secs(300), every_process());
    let t0 = Instant::now();
    agg.harvest(t0).unwrap();
    // The entry is re-created behind the agent's back, then counts 2.
    world.kernel.0.borrow_mut().processes.remove(&key);
    world.reclaim(key, "odd", 0, 2);
    agg.harvest(t0 + Duration::from_secs(1)).unwrap();
    let record = only(&agg, 41);
    assert_eq!(record.series.exported().map(Counts::reclaimed), Some(12));
    assert_eq!(record.series.exported().map(|c| c.dontneed_calls), Some(2));
}

#[test]
fn an_exec_closes_the_old_names_series_and_the_new_name_counts_from_there() {
    let world = World::new(64);
    let key = world.start(50, 1, "execbefore");
    world.reclaim(key, "execbefore", 0, 32);
    let mut agg = world.aggregator(Duration::from_secs(60), every_process());
    let t0 = Instant::now();
    agg.harvest(t0).unwrap();
    world.proc.rename(50, "execafter");
    agg.harvest(t0 + Duration::from_secs(1)).unwrap();
    world.reclaim(key, "execbefore", 0, 16);
    agg.harvest_counters(t0 + Duration::from_secs(2)).unwrap();
    let series = exported_series(&agg);
    assert_eq!(series.get(&(key, "execbefore".into())).map(Counts::reclaimed), Some(32));
    assert_eq!(series.get(&(key, "execafter".into())).map(Counts::reclaimed), Some(16));
    assert_eq!(exported_sum(&agg), Counts::of_node(&agg.snapshot().node));
    // After the TTL the old name's series goes, its count stays in other.
    agg.harvest(t0 + Duration::from_secs(61)).unwrap();
    let series = exported_series(&agg);
    assert_eq!(series.keys().map(|(_, comm)| comm.as_str()).collect::<Vec<_>>(), ["execafter"]);
    assert_eq!(agg.snapshot().folded.counts.reclaimed(), 32);
    assert_eq!(exported_sum(&agg), Counts::of_node(&agg.snapshot().node));
}

#[test]
fn processes_beyond_the_map_capacity_count_in_their_cgroups_slot() {
    let world = World::new(2);
    world.host.0.borrow_mut().ids.insert(9, "/crowd".into());
    let keys: Vec<ProcessKey> = (0..5).map(|i| world.start(60 + i, 1, "crowd")).collect();
    for key in &keys {
        world.reclaim(*key, "crowd", 9, 2);
    }
    // And a free of an address space with no owner left.
    world.kernel.0.borrow_mut().node.unowned_frees += 1;
    world.kernel.0.borrow_mut().node.frees.pages[Cause::Exit.index()][Level::Pte.index()] += 1;
    world.kernel.0.borrow_mut().overflow.get_mut(&UNATTRIBUTED_CGROUP).unwrap().frees.pages[Cause::Exit.index()]
        [Level::Pte.index()] += 1;
    let mut agg = world.aggregator(Duration::from_secs(60), every_process());
    agg.harvest(Instant::now()).unwrap();
    assert_eq!(agg.records().count(), 2, "two fit in the map");
    assert_eq!(agg.snapshot().node.process_map_overflows, 3);
    let crowd = agg.cgroups().find(|c| c.labels.path == "/crowd").unwrap();
    assert_eq!(crowd.counts().reclaimed(), 10, "the cgroup total is exact");
    assert_eq!(crowd.counts().dontneed_calls, 5);
    // Per-process series + other = node, for every counter.
    assert_eq!(exported_sum(&agg), Counts::of_node(&agg.snapshot().node));
    assert_eq!(agg.snapshot().folded.counts.reclaimed(), 6, "three processes' reclaim is in other");
    let usage: Vec<(&str, u64)> = agg.snapshot().maps.iter().map(|m| (m.name, m.entries)).collect();
    assert_eq!(usage, [("PROCESS_COUNTERS", 2), ("OVERFLOW_COUNTERS", 2), ("THREAD_CONTEXT", 0)]);
}

#[test]
fn contexts_of_threads_that_are_gone_are_removed_and_counted() {
    let world = World::new(64);
    world.proc.0.borrow_mut().1.insert(77);
    for tid in [77, 78] {
        world.kernel.0.borrow_mut().threads.insert(tid, ThreadContext { tgid: 70, ..ThreadContext::default() });
    }
    let mut agg = world.aggregator(Duration::from_secs(60), every_process());
    let t0 = Instant::now();
    agg.harvest_counters(t0).unwrap();
    assert_eq!(world.kernel.0.borrow().threads.len(), 2, "scrapes do not reap");
    agg.harvest(t0).unwrap();
    assert_eq!(world.kernel.0.borrow().threads.keys().copied().collect::<Vec<_>>(), [77], "78 is gone");
    assert_eq!(agg.snapshot().reaped_thread_contexts, 1);
    assert_eq!(agg.snapshot().maps[2], MapUsage { name: "THREAD_CONTEXT", entries: 1, max_entries: 16384 });
}

const POD: &str =
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8d2f3c1e_5b7a_4e0f_9a61_2c3d4e5f6a7b.slice";
const CONTAINER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn container_path() -> String {
    format!("{POD}/cri-containerd-{CONTAINER}.scope")
}

#[test]
fn the_cgroup_captured_in_the_kernel_labels_an_exited_process() {
    let world = World::new(64);
    world.host.0.borrow_mut().ids.insert(77, container_path());
    let key = ProcessKey { tgid: 60, _pad: 0, start_time_ns: 1 };
    world.reclaim(key, "short", 77, 4);
    let mut agg = world.aggregator(Duration::from_secs(60), every_process());
    agg.harvest(Instant::now()).unwrap();
    let record = only(&agg, 60);
    assert!(!record.is_live());
    assert_eq!(record.cgroup_id, 77);
    let cgroup = record.cgroup.as_deref().unwrap();
    assert_eq!(cgroup.path, container_path());
    assert_eq!(cgroup.container_id, CONTAINER);
    assert_eq!(cgroup.pod_uid, "8d2f3c1e-5b7a-4e0f-9a61-2c3d4e5f6a7b");
    assert_eq!(record.pagetable_bytes, None, "no VmPTE for an exited process");
}

#[test]
fn without_a_kernel_id_the_cgroup_comes_from_proc_while_the_process_lives() {
    let world = World::new(64);
    let key = world.start(70, 1, "cron");
    world.host.0.borrow_mut().pids.insert(70, "/system.slice/cron.service".into());
    world.host.0.borrow_mut().vmpte.insert(70, 81920);
    world.reclaim(key, "cron", 0, 3);
    world.reclaim(ProcessKey { tgid: 71, _pad: 0, start_time_ns: 1 }, "gone", 0, 5);
    let mut agg = world.aggregator(Duration::from_secs(60), every_process());
    agg.harvest(Instant::now()).unwrap();
    let live = only(&agg, 70);
    assert_eq!(live.cgroup.as_deref().map(|c| c.path.as_str()), Some("/system.slice/cron.service"));
    assert_eq!(live.pagetable_bytes, Some(81920));
    // 71 had exited: nothing to ask, no label.
    assert!(only(&agg, 71).cgroup.is_none());
    let cgroups: Vec<&CgroupTotals> = agg.cgroups().collect();
    assert_eq!(cgroups.len(), 1, "unknown cgroups have no totals");
    assert_eq!(cgroups[0].counts().reclaimed(), 3);
}

#[test]
fn cgroup_totals_sum_processes_and_survive_their_exit_and_ttl() {
    let world = World::new(64);
    world.host.0.borrow_mut().ids.insert(9, container_path());
    world.host.0.borrow_mut().ids.insert(10, "/other".into());
    world.host.0.borrow_mut().memory_stat.insert(container_path(), 123 * 4096);
    world.host.0.borrow_mut().node = Some(999 * 4096);
    let (a, b) = (world.start(80, 1, "a"), world.start(81, 1, "b"));
    world.reclaim(a, "a", 9, 32);
    world.reclaim(b, "b", 9, 16);
    world.reclaim(ProcessKey { tgid: 82, _pad: 0, start_time_ns: 1 }, "c", 10, 100);
    let mut agg = world.aggregator(Duration::from_secs(30), every_process());
    let t0 = Instant::now();
    agg.harvest(t0).unwrap();
    assert_eq!(agg.snapshot().node_pagetable_bytes, Some(999 * 4096));
    let total = |agg: &Aggregator<Shared, Proc, FakeHost>, path: &str| {
        agg.cgroups().find(|c| c.labels.path == path).map(|c| (c.counts().reclaimed(), c.counts().dontneed_calls))
    };
    assert_eq!(total(&agg, &container_path()), Some((48, 2)));
    let container = agg.cgroups().find(|c| c.labels.path == container_path()).unwrap();
    assert_eq!(container.labels.container_id, CONTAINER);
    assert_eq!(container.pagetable_bytes, Some(123 * 4096));
    assert_eq!(agg.cgroups().find(|c| c.labels.path == "/other").unwrap().pagetable_bytes, None);

    // Both exit; after the TTL their records go, the totals stay.
    world.proc.exit(80);
    world.proc.exit(81);
    agg.harvest(t0 + Duration::from_secs(1)).unwrap();
    agg.harvest(t0 + Duration::from_secs(40)).unwrap();
    assert_eq!(agg.records().count(), 0);
    assert_eq!(total(&agg, &container_path()), Some((48, 2)));

    // A new process in the same cgroup adds to the total.
    let d = world.start(83, 1, "d");
    world.reclaim(d, "d", 9, 2);
    agg.harvest(t0 + Duration::from_secs(41)).unwrap();
    assert_eq!(total(&agg, &container_path()), Some((50, 3)));

    // The cgroups are removed: their totals go one TTL after they were
    // last seen.
    world.proc.exit(83);
    world.host.0.borrow_mut().ids.clear();
    agg.harvest(t0 + Duration::from_secs(42)).unwrap();
    agg.harvest(t0 + Duration::from_secs(72)).unwrap();
    assert_eq!(agg.cgroups().map(|c| c.labels.path.as_str()).collect::<Vec<_>>(), [container_path()]);
    agg.harvest(t0 + Duration::from_secs(103)).unwrap();
    assert_eq!(agg.cgroups().count(), 0);
}

#[test]
fn a_process_selected_later_counts_from_its_selection() {
    let world = World::new(64);
    let key = world.start(5, 1, "late");
    world.reclaim(key, "late", 0, 4);
    let selection = Selection { min_reclaimed_pages: Some(10), ..Selection::default() };
    let mut agg = world.aggregator(Duration::from_secs(60), selection);
    let t0 = Instant::now();
    agg.harvest(t0).unwrap();
    assert_eq!(only(&agg, 5).series.exported(), None, "below the threshold");
    assert_eq!(agg.snapshot().folded.counts.reclaimed(), 4);
    world.reclaim(key, "late", 0, 8);
    agg.harvest(t0 + Duration::from_secs(1)).unwrap();
    // The 12 it had were exported in `other` (4) or are now (8): its own
    // series starts at 0 and `other` keeps them.
    assert_eq!(only(&agg, 5).series.exported().map(Counts::reclaimed), Some(0));
    assert_eq!(agg.snapshot().folded.counts.reclaimed(), 12);
    world.reclaim(key, "late", 0, 8);
    agg.harvest(t0 + Duration::from_secs(2)).unwrap();
    assert_eq!(only(&agg, 5).series.exported().map(Counts::reclaimed), Some(8));
    assert_eq!(agg.snapshot().folded.counts.reclaimed(), 12);
}

#[test]
fn top_one_keeps_the_biggest_and_folds_the_rest() {
    let world = World::new(64);
    let (big, small) = (world.start(1, 1, "big"), world.start(2, 1, "small"));
    world.reclaim(big, "big", 0, 512);
    world.reclaim(small, "small", 0, 8);
    let mut agg = world.aggregator(Duration::from_secs(60), top(1, RankBy::Reclaimed));
    agg.harvest(Instant::now()).unwrap();
    assert_eq!(only(&agg, 1).series.exported().map(Counts::reclaimed), Some(512));
    assert_eq!(only(&agg, 2).series.exported(), None);
    assert_eq!(agg.snapshot().folded.counts.reclaimed(), 8);
    assert_eq!((agg.snapshot().folded.processes, agg.snapshot().own_series), (1, 1));
    assert_eq!(exported_sum(&agg).reclaimed(), 520);
}

#[test]
fn a_challenger_must_beat_the_weakest_by_a_quarter_and_a_demoted_series_freezes() {
    let world = World::new(64);
    let (a, b) = (world.start(1, 1, "a"), world.start(2, 1, "b"));
    world.host.0.borrow_mut().vmpte.insert(1, 100 << 10);
    world.reclaim(a, "a", 0, 1);
    let mut agg = world.aggregator(Duration::from_secs(60), top(1, RankBy::PagetableBytes));
    let t0 = Instant::now();
    agg.harvest(t0).unwrap();
    let own = |agg: &Aggregator<Shared, Proc, FakeHost>| {
        agg.records().filter(|r| r.series.export == Export::Own).map(|r| r.pid()).collect::<Vec<_>>()
    };
    // 120 KiB does not beat 100 KiB by more than a quarter.
    world.host.0.borrow_mut().vmpte.insert(2, 120 << 10);
    world.reclaim(b, "b", 0, 1);
    agg.harvest(t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(own(&agg), [1]);
    // 130 KiB does: a's series is frozen at its value, b gets one.
    world.host.0.borrow_mut().vmpte.insert(2, 130 << 10);
    agg.harvest(t0 + Duration::from_secs(2)).unwrap();
    assert_eq!(own(&agg), [2]);
    world.reclaim(a, "a", 0, 5);
    agg.harvest(t0 + Duration::from_secs(3)).unwrap();
    assert_eq!(only(&agg, 1).series.exported().map(Counts::reclaimed), Some(1), "frozen");
    // a needs more than 162.5 KiB to come back; then its series grows again
    // from where it stopped (never lower).
    world.host.0.borrow_mut().vmpte.insert(1, 170 << 10);
    agg.harvest(t0 + Duration::from_secs(4)).unwrap();
    assert_eq!(own(&agg), [1]);
    world.reclaim(a, "a", 0, 2);
    agg.harvest(t0 + Duration::from_secs(5)).unwrap();
    assert_eq!(only(&agg, 1).series.exported().map(Counts::reclaimed), Some(3));
    // Gauges fold by plain sum: b's series is frozen, its VmPTE is other's.
    assert_eq!(agg.snapshot().folded.pagetable_bytes, 130 << 10);
    assert_eq!(exported_sum(&agg), Counts::of_node(&agg.snapshot().node));
}

/// Many harvests of a small map under pressure: processes start, count,
/// rename, exit, expire, and get their pids reused (with another start
/// time); kernel entries are sometimes re-created behind the agent's back.
/// At every harvest (scrape or full): every exported series (by identity
/// and name), `other` and every cgroup total only grow; own + `other`
/// equals the node totals; at most `top` processes have a growing series;
/// a series' labels are never exported twice.
#[test]
fn sums_stay_exact_and_counters_monotonic_through_churn() {
    for (rank_by, capacity) in [(RankBy::PagetableBytes, 6), (RankBy::Reclaimed, 1000)] {
        let world = World::new(capacity);
        for id in 1..=3 {
            world.host.0.borrow_mut().ids.insert(id, format!("/cg{id}"));
        }
        let mut agg = world.aggregator(Duration::from_secs(20), top(5, rank_by));
        let mut next = below(0x2545_f491_4f6c_dd1d_u64);
        let t0 = Instant::now();
        // Live processes: key → (comm, cgroup).
        let mut live: BTreeMap<ProcessKey, (String, u64)> = BTreeMap::new();
        let mut last_series: BTreeMap<(ProcessKey, String), Counts> = BTreeMap::new();
        let mut last_other = Counts::default();
        let mut last_cgroups: BTreeMap<String, Counts> = BTreeMap::new();
        let names = ["churn", "exec1", "exec2"];
        for step in 0..400u64 {
            let now = t0 + Duration::from_secs(step);
            // A few pids from a small range, so they get reused.
            for _ in 0..next(3) {
                let pid = 100 + next(40) as u32;
                if !live.keys().any(|k| k.tgid == pid) {
                    let key = world.start(pid, step * 1000 + next(1000), names[0]);
                    live.insert(key, (names[0].into(), 1 + next(3)));
                }
            }
            let keys: Vec<ProcessKey> = live.keys().copied().collect();
            for key in keys {
                let (comm, cgroup) = live[&key].clone();
                // The kernel entry re-created behind the agent's back (it
                // never is; the agent must cope anyway), visibly: with a call
                // and no reclaim, where there was reclaim. Only right after a
                // harvest: counts not read yet would be lost with the entry.
                if next(20) == 0 {
                    let mut kernel = world.kernel.0.borrow_mut();
                    if kernel.processes.get(&key).is_some_and(|c| c.frees.reclaimed() > 0) {
                        kernel.processes.remove(&key);
                        kernel.count(key, comm.as_bytes(), cgroup, &reclaimed(0));
                        continue;
                    }
                }
                let mut delta = reclaimed(next(64));
                delta.dontneed_calls = next(3);
                delta.frees.pages[Cause::Exit.index()][Level::Pmd.index()] = next(4);
                world.kernel.0.borrow_mut().count(key, comm.as_bytes(), cgroup, &delta);
                world.host.0.borrow_mut().vmpte.insert(key.tgid, next(1 << 20));
                match next(20) {
                    0 | 1 => {
                        world.proc.exit(key.tgid);
                        live.remove(&key);
                    }
                    2 => {
                        let comm = names[next(3) as usize];
                        world.proc.rename(key.tgid, comm);
                        live.get_mut(&key).unwrap().0 = comm.into();
                    }
                    _ => {}
                }
            }
            if step % 3 == 0 {
                agg.harvest(now).unwrap();
            } else {
                agg.harvest_counters(now).unwrap();
            }
            let node = Counts::of_node(&agg.snapshot().node);
            assert_eq!(exported_sum(&agg), node, "step {step} ({rank_by:?}, capacity {capacity})");
            let series = exported_series(&agg);
            for (id, value) in &series {
                if let Some(before) = last_series.get(id) {
                    assert!(value.covers(before), "step {step}: series {id:?} fell from {before:?} to {value:?}");
                }
            }
            // A series that stopped being exported never comes back.
            let ended: Vec<(ProcessKey, String)> =
                last_series.keys().filter(|id| !series.contains_key(*id)).cloned().collect();
            for id in ended {
                last_series.insert(id, Counts { dontneed_calls: u64::MAX, ..Counts::default() });
            }
            for (id, value) in &series {
                assert_ne!(
                    last_series.get(id).map(|c| c.dontneed_calls),
                    Some(u64::MAX),
                    "step {step}: series {id:?} came back ({value:?})"
                );
            }
            last_series.extend(series);
            let other = agg.snapshot().folded.counts;
            assert!(other.covers(&last_other), "step {step}: other fell");
            last_other = other;
            for cgroup in agg.cgroups() {
                let counts = cgroup.counts();
                if let Some(before) = last_cgroups.get(&cgroup.labels.path) {
                    assert!(counts.covers(before), "step {step}: cgroup {} fell", cgroup.labels.path);
                }
                last_cgroups.insert(cgroup.labels.path.clone(), counts);
            }
            let growing = agg.records().filter(|r| r.series.export == Export::Own).count();
            assert!(growing <= 5, "step {step}: {growing} growing series");
            assert_eq!(agg.snapshot().folded.processes + agg.snapshot().own_series, agg.records().count() as u64);
        }
        assert!(last_series.len() > 20, "the churn exported many series: {}", last_series.len());
        if capacity < 100 {
            assert!(agg.snapshot().node.process_map_overflows > 0, "the small map overflowed");
        }
    }
}

/// What `other` and the cgroup totals carry is kept incrementally; every
/// summary checks it against a full sum over the records and slots
/// (`Aggregator::check_sums`, in test builds). Random churn through every
/// change that moves counts: growth, exits and expiry (a TTL of 0 too),
/// renames, selection and demotion by thresholds, cgroups resolved late,
/// the overflow slots of a small map.
#[test]
fn sums_kept_incrementally_equal_a_full_sum_through_random_churn() {
    let thresholds = Selection { top: 0, min_reclaimed_pages: Some(40), ..Selection::default() };
    let hysteresis = Selection { top: 3, min_pagetable_bytes: Some(1 << 19), ..Selection::default() };
    for (ttl, selection) in [(0, every_process()), (3, thresholds), (5, hysteresis), (20, top(2, RankBy::Reclaimed))] {
        let world = World::new(8);
        world.host.0.borrow_mut().ids.insert(1, "/cg1".into());
        let mut agg = world.aggregator(Duration::from_secs(ttl), selection);
        let mut next = below(0x9e37_79b9_7f4a_7c15_u64);
        let t0 = Instant::now();
        let mut live: BTreeMap<ProcessKey, (String, u64)> = BTreeMap::new();
        let names = ["a", "b", "c"];
        for step in 0..300u64 {
            // cgroup 2's directory shows up late: records of it join then.
            if step == 100 {
                world.host.0.borrow_mut().ids.insert(2, "/cg2".into());
            }
            for _ in 0..next(3) {
                let pid = 200 + next(30) as u32;
                if !live.keys().any(|k| k.tgid == pid) {
                    let key = world.start(pid, step * 1000 + next(1000), names[0]);
                    let cgroup = next(3);
                    if cgroup == 0 {
                        world.host.0.borrow_mut().pids.insert(pid, "/cg1".into());
                    }
                    live.insert(key, (names[0].into(), cgroup));
                }
            }
            let keys: Vec<ProcessKey> = live.keys().copied().collect();
            for key in keys {
                let (comm, cgroup) = live[&key].clone();
                if next(2) == 0 {
                    world.kernel.0.borrow_mut().count(key, comm.as_bytes(), cgroup, &reclaimed(next(16)));
                }
                world.host.0.borrow_mut().vmpte.insert(key.tgid, next(1 << 20));
                match next(16) {
                    0 => {
                        world.proc.exit(key.tgid);
                        world.host.0.borrow_mut().pids.remove(&key.tgid);
                        live.remove(&key);
                    }
                    1 => {
                        let comm = names[next(3) as usize];
                        world.proc.rename(key.tgid, comm);
                        live.get_mut(&key).unwrap().0 = comm.into();
                    }
                    _ => {}
                }
            }
            let now = t0 + Duration::from_secs(step);
            if step % 4 == 0 {
                agg.harvest(now).unwrap();
            } else {
                agg.harvest_counters(now).unwrap();
            }
            assert_eq!(exported_sum(&agg), Counts::of_node(&agg.snapshot().node), "step {step}, ttl {ttl}");
        }
        assert!(agg.snapshot().node.process_map_overflows > 0, "the small map overflowed");
        // (With a TTL of 0 no cgroup is exported.)
        assert!(ttl == 0 || agg.cgroups().any(|c| c.labels.path == "/cg2"), "the late cgroup was resolved");
    }
}
