//! The exposition rendered from a scripted aggregator: labels, escaping,
//! `other`, families per plan, both formats, and sums that equal the node
//! totals in the text itself.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::Duration;

use super::*;
use crate::aggregate::{
    testing::{reclaimed, World},
    Selection,
};

fn info(frees_probed: bool) -> AgentInfo {
    AgentInfo {
        version: "0.1.0",
        kernel: "6.18.0".into(),
        probe_mode: Attach::Fentry,
        reclaim_accounting: "free_classification",
        pt_reclaim_supported: true,
        probes: vec![
            ("dontneed", Some(Attach::Fentry)),
            ("io_uring_dontneed", Some(Attach::Fentry)),
            ("pt_reclaim", Some(Attach::Fentry)),
            ("pagetable_free", frees_probed.then_some(Attach::Fentry)),
        ],
        frees_probed,
        clock: BootClock::new(10_000_000, 1_764_000_000),
        bystander_cost: "hooked_functions_only",
    }
}

/// A scrape of `world`'s aggregator.
fn scrape(world: &World, selection: Selection, frees_probed: bool, format: Format) -> String {
    let aggregator = world.aggregator(Duration::from_secs(60), selection);
    let metrics = Metrics::new(Box::new(Unsend(aggregator)), info(frees_probed));
    metrics.render(format)
}

type Scripted = crate::aggregate::Aggregator<
    crate::aggregate::testing::Shared,
    crate::aggregate::testing::Proc,
    crate::aggregate::testing::FakeHost,
>;

/// The scripted world is single-threaded (`Rc`); the collector wants
/// `Send`. Tests never move it across threads.
struct Unsend(Scripted);
// SAFETY: created, used and dropped on the test's own thread.
unsafe impl Send for Unsend {}
impl Harvest for Unsend {
    fn harvest(&mut self, full: bool) -> Result<(), ProbeError> {
        let now = Instant::now();
        if full {
            self.0.harvest(now)?;
        } else {
            self.0.harvest_counters(now)?;
        }
        Ok(())
    }
    fn view(&self) -> View<'_> {
        self.0.view()
    }
}

/// Every sample line as (name with labels, value).
fn samples(text: &str) -> Vec<(&str, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series, value.parse().unwrap())
        })
        .collect()
}

fn sum(text: &str, family: &str) -> f64 {
    samples(text).iter().filter(|(series, _)| series.split('{').next() == Some(family)).map(|(_, value)| value).sum()
}

fn value(text: &str, series: &str) -> f64 {
    let found: Vec<f64> = samples(text).iter().filter(|(s, _)| *s == series).map(|(_, v)| *v).collect();
    assert_eq!(found.len(), 1, "{series} in\n{text}");
    found[0]
}

#[test]
fn process_series_carry_pid_name_start_time_and_cgroup_and_are_escaped() {
    let world = World::new(64);
    world.host.0.borrow_mut().ids.insert(9, "/system.slice/a.service".into());
    let key = world.start(7, 12_345_678_901, "a \"q\" \\b\nc");
    world.reclaim(key, "x", 9, 3);
    let text = scrape(&world, Selection { top: 0, ..Selection::default() }, true, Format::Text);
    let labels = r#"pid="7",comm="a \"q\" \\b\nc",start_time="1764000012.345678901",cgroup="/system.slice/a.service""#;
    assert_eq!(value(&text, &format!("ptwatch_pte_pages_reclaimed_total{{{labels}}}")), 3.0, "{text}");
    assert_eq!(value(&text, &format!("ptwatch_madvise_dontneed_bytes_total{{{labels}}}")), 4096.0);
    assert_eq!(
        value(&text, &format!(r#"ptwatch_pagetable_pages_freed_total{{{labels},cause="reclaim",level="pte"}}"#)),
        3.0
    );
    assert_eq!(value(&text, r#"ptwatch_pte_pages_reclaimed_total{pid="other",comm="other"}"#), 0.0);
    assert_eq!(value(&text, r#"ptwatch_cgroup_pte_pages_reclaimed_total{cgroup="/system.slice/a.service"}"#), 3.0);
    assert!(text.contains("# TYPE ptwatch_pte_pages_reclaimed_total counter\n"), "{text}");
    assert!(text.contains("# TYPE ptwatch_process_pagetable_bytes gauge\n"));
}

#[test]
fn node_info_and_health_families_are_always_present() {
    let world = World::new(64);
    let text = scrape(&world, Selection::default(), false, Format::Text);
    for series in [
        "ptwatch_node_pte_pages_reclaimed_total",
        "ptwatch_node_madvise_dontneed_calls_total",
        "ptwatch_lost_events_total",
        "ptwatch_context_exit_misses_total",
        "ptwatch_thread_contexts_reaped_total",
        "ptwatch_tracked_processes",
        "ptwatch_folded_processes",
        "ptwatch_scrape_errors_total",
        r#"ptwatch_map_update_failures_total{map="PROCESS_COUNTERS"}"#,
        r#"ptwatch_map_update_failures_total{map="OVERFLOW_COUNTERS"}"#,
        r#"ptwatch_map_update_failures_total{map="THREAD_CONTEXT"}"#,
        r#"ptwatch_overflow_events_total{reason="process_map_full"}"#,
        r#"ptwatch_overflow_events_total{reason="no_owner"}"#,
        r#"ptwatch_probe_attached{event="pagetable_free"}"#,
        r#"ptwatch_map_max_entries{map="PROCESS_COUNTERS"}"#,
    ] {
        value(&text, series);
    }
    assert_eq!(value(&text, r#"ptwatch_build_info{version="0.1.0",kernel="6.18.0",probe_mode="fentry"}"#), 1.0);
    assert_eq!(
        value(
            &text,
            r#"ptwatch_probe_info{event="pagetable_free",attach="none",bystander_cost="hooked_functions_only"}"#
        ),
        1.0
    );
    assert_eq!(value(&text, "ptwatch_pt_reclaim_supported"), 1.0);
    // The tracepoint plan cannot see frees: no free family at all.
    assert!(!text.contains("pagetable_pages_freed"), "{text}");
    // The scrape's own duration shows from the next scrape on.
    assert!(text.contains("ptwatch_scrape_duration_seconds_count 0\n"), "{text}");
}

#[test]
fn per_process_plus_other_equals_the_node_in_every_family_under_map_pressure() {
    let world = World::new(3);
    world.host.0.borrow_mut().ids.insert(5, "/crowd".into());
    for pid in 1..=10 {
        let key = world.start(pid, 1, "crowd");
        world.reclaim(key, "crowd", 5, u64::from(pid));
        let mut freed = reclaimed(0);
        freed.frees.pages[Cause::Unmap.index()][Level::Pmd.index()] = 2;
        world.kernel.0.borrow_mut().count(key, b"crowd", 5, &freed);
    }
    for selection in [Selection { top: 2, ..Selection::default() }, Selection { top: 0, ..Selection::default() }] {
        let text = scrape(&world, selection, true, Format::Text);
        for (family, node) in [
            ("ptwatch_pte_pages_reclaimed_total", "ptwatch_node_pte_pages_reclaimed_total"),
            ("ptwatch_madvise_dontneed_calls_total", "ptwatch_node_madvise_dontneed_calls_total"),
            ("ptwatch_madvise_dontneed_bytes_total", "ptwatch_node_madvise_dontneed_bytes_total"),
            ("ptwatch_pagetable_pages_freed_total", "ptwatch_node_pagetable_pages_freed_total"),
            ("ptwatch_cgroup_pagetable_pages_freed_total", "ptwatch_node_pagetable_pages_freed_total"),
            ("ptwatch_cgroup_pte_pages_reclaimed_total", "ptwatch_node_pte_pages_reclaimed_total"),
        ] {
            assert_eq!(sum(&text, family), sum(&text, node), "{family}\n{text}");
        }
        assert_eq!(sum(&text, "ptwatch_node_pte_pages_reclaimed_total"), 55.0);
        assert_eq!(value(&text, r#"ptwatch_map_update_failures_total{map="PROCESS_COUNTERS"}"#), 14.0);
        assert_eq!(value(&text, r#"ptwatch_map_entries{map="PROCESS_COUNTERS"}"#), 3.0);
    }
}

#[test]
fn openmetrics_families_and_eof() {
    let world = World::new(64);
    let key = world.start(7, 1, "a");
    world.reclaim(key, "a", 0, 3);
    let text = scrape(&world, Selection::default(), true, Format::OpenMetrics);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
    assert!(text.contains("# TYPE ptwatch_pte_pages_reclaimed counter\n"), "{text}");
    assert!(text.contains("\nptwatch_pte_pages_reclaimed_total{pid=\"7\""), "{text}");
    assert!(text.contains("# TYPE ptwatch_process_pagetable_bytes gauge\n"));
    assert!(text.contains("# TYPE ptwatch_scrape_duration_seconds histogram\n"));
    assert!(!text.contains("# TYPE ptwatch_pte_pages_reclaimed_total"), "{text}");
}

#[test]
fn every_family_written_is_in_the_table_and_written_once() {
    let world = World::new(64);
    world.host.0.borrow_mut().ids.insert(5, "/a".into());
    world.host.0.borrow_mut().memory_stat.insert("/a".into(), 4096);
    world.host.0.borrow_mut().node = Some(8192);
    world.host.0.borrow_mut().vmpte.insert(7, 4096);
    let key = world.start(7, 1, "a");
    world.reclaim(key, "a", 5, 3);
    let aggregator = world.aggregator(Duration::from_secs(60), Selection::default());
    let latest = Arc::new(crate::empty_tables::Latest::default());
    let one = crate::empty_tables::ProcessEmpty {
        pid: 9,
        start_time: 1,
        comm: "x".into(),
        cgroup: Some("/a".into()),
        own_series: false,
        method: crate::scan::Method::Exact,
        tables: 1,
        empty: crate::scan::estimate::Bounds::exact(1),
        passes_old: Some(0),
    };
    let pass = crate::empty_tables::PassReport::default();
    latest.set(crate::empty_tables::Snapshot::new(4096, vec![one], pass, Duration::ZERO));
    let metrics = Metrics::new(Box::new(Unsend(aggregator)), info(true))
        .with_empty_tables(latest)
        .with_section(Arc::new(crate::export::server::HttpStats::default()));
    let text = metrics.render(Format::Text);
    let typed: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let unique: std::collections::BTreeSet<&str> = typed.iter().copied().collect();
    assert_eq!(unique.len(), typed.len(), "a family written twice: {typed:?}");
    for name in &typed {
        assert!(f::FAMILIES.iter().any(|family| family.name == *name), "{name} is not in the family table");
    }
    // Without a self source, the process_* and bpf families are absent;
    // everything else in the table is written.
    let missing: Vec<&str> = f::FAMILIES
        .iter()
        .map(|family| family.name)
        .filter(|name| !typed.contains(name) && !name.starts_with("process_") && !name.starts_with("ptwatch_bpf_"))
        .collect();
    assert_eq!(missing, Vec::<&str>::new());
}

/// A harvest that fails after its first success: the scrape counts the
/// error and serves the values it had.
struct Flaky {
    inner: Unsend,
    calls: u32,
}

impl Harvest for Flaky {
    fn harvest(&mut self, full: bool) -> Result<(), ProbeError> {
        self.calls += 1;
        if self.calls > 1 {
            return Err(ProbeError::MissingMap("PROCESS_COUNTERS"));
        }
        self.inner.harvest(full)
    }
    fn view(&self) -> View<'_> {
        self.inner.view()
    }
}

#[test]
fn a_failed_harvest_is_counted_and_the_previous_values_are_served() {
    let world = World::new(64);
    let key = world.start(7, 1, "a");
    world.reclaim(key, "a", 0, 3);
    let aggregator = world.aggregator(Duration::from_secs(60), Selection::default());
    let metrics = Metrics::new(Box::new(Flaky { inner: Unsend(aggregator), calls: 0 }), info(false));
    assert!(metrics.refresh(), "the first harvest works");
    world.reclaim(key, "a", 0, 5);
    assert!(!metrics.refresh(), "the second fails");
    let text = metrics.render(Format::Text);
    assert_eq!(value(&text, "ptwatch_scrape_errors_total"), 2.0, "the refresh and the scrape: {text}");
    assert_eq!(value(&text, "ptwatch_node_pte_pages_reclaimed_total"), 3.0, "the values of the last success");
}

#[test]
fn empty_tables_own_series_other_cgroups_and_node_add_up() {
    use crate::{
        empty_tables::{PassReport, ProcessEmpty, Snapshot},
        scan::{estimate::Bounds, Method},
    };
    let world = World::new(64);
    world.host.0.borrow_mut().ids.insert(5, "/a".into());
    // Started 1 s after boot: 100 ticks of /proc/PID/stat.
    let key = world.start(7, 1_000_000_000, "halves");
    world.reclaim(key, "halves", 5, 3);
    let process = |pid: u32, start_time: u64, cgroup: &str, method: Method, empty: Bounds| ProcessEmpty {
        pid,
        start_time,
        comm: "x".into(),
        cgroup: Some(cgroup.into()),
        own_series: false,
        method,
        tables: 1000,
        empty,
        passes_old: Some(0),
    };
    let latest = Arc::new(crate::empty_tables::Latest::default());
    latest.set(Snapshot::new(
        4096,
        vec![
            process(7, 100, "/a", Method::Exact, Bounds::exact(256)),
            process(8, 5, "/a", Method::Sampled, Bounds::new(90, 100, 120)),
            process(9, 5, "/b", Method::Bounded, Bounds::new(0, 5, 10)),
        ],
        PassReport {
            passes: 3,
            cpu: Duration::from_millis(40),
            budget: Duration::from_millis(300),
            ..PassReport::default()
        },
        Duration::from_millis(120),
    ));
    let aggregator = world.aggregator(Duration::from_secs(60), Selection::default());
    let metrics = Metrics::new(Box::new(Unsend(aggregator)), info(true)).with_empty_tables(latest);
    metrics.refresh();
    let text = metrics.render(Format::Text);
    let own = "ptwatch_process_empty_pagetable_bytes{pid=\"7\",comm=\"halves\",start_time=\"1764000001.000000000\",cgroup=\"/a\"}";
    assert_eq!(value(&text, own), 1_048_576.0, "{text}");
    // other: 8 and 9, 105 tables, range 90..130: off by at most 25.
    assert_eq!(value(&text, "ptwatch_process_empty_pagetable_bytes{pid=\"other\",comm=\"other\"}"), 430_080.0);
    assert_eq!(
        value(&text, "ptwatch_process_empty_pagetable_error_bytes{pid=\"other\",comm=\"other\",method=\"bounded\"}"),
        102_400.0
    );
    assert_eq!(sum(&text, "ptwatch_process_empty_pagetable_bytes"), value(&text, "ptwatch_node_empty_pagetable_bytes"));
    assert_eq!(value(&text, "ptwatch_cgroup_empty_pagetable_bytes{cgroup=\"/a\"}"), 1_458_176.0);
    assert_eq!(value(&text, "ptwatch_cgroup_empty_pagetable_error_bytes{cgroup=\"/b\"}"), 20_480.0);
    assert_eq!(value(&text, "ptwatch_node_empty_pagetable_bytes"), 1_478_656.0);
    assert_eq!(value(&text, "ptwatch_empty_pagetable_processes{method=\"sampled\"}"), 1.0);
    assert_eq!(value(&text, "ptwatch_empty_pagetable_estimate_cpu_seconds_total"), 0.12);
    assert_eq!(value(&text, "ptwatch_empty_pagetable_estimate_passes_total"), 3.0);
    assert_eq!(value(&text, "ptwatch_empty_pagetable_estimate_budget_seconds"), 0.3);
    // A pid reused by a process the estimate did not see: no own series.
    assert!(!text.contains("ptwatch_process_empty_pagetable_error_bytes{pid=\"8\""), "{text}");
}

#[test]
fn the_rows_allocation_is_kept_from_one_scrape_to_the_next() {
    let counts = Counts::default();
    let mut rows: Vec<Row<'_>> = Vec::with_capacity(1000);
    rows.push(Row { labels: "x", counters: [0; 3], pagetable_bytes: None, own: &counts, growing: None });
    let pointer = rows.as_ptr() as usize;
    let kept: Vec<Row<'static>> = recycle(rows);
    assert!(kept.is_empty());
    assert_eq!((kept.capacity(), kept.as_ptr() as usize), (1000, pointer), "the same allocation");
}
