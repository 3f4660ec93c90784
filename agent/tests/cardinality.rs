//! Bounded cardinality with the real agent and real eBPF: with
//! `--top-processes 1`, two workloads give one series of their own plus the
//! `pid="other"` series; with `--max-tracked-processes 64`, 300 live
//! processes overflow the kernel's per-process map. Either way own + other
//! equals the node totals, cgroup totals are exact, and no counter falls.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::Duration,
};

use ptwatch_workload::crowd::CrowdReport;
use support::{
    promtool_check, pt_reclaim, sum_mismatch, workload_bin, AgentProcess, CounterWatch, Held, Metrics, TestCgroup,
    PROCESS_FAMILIES,
};

/// `(pid label, value)` of every sample of `name`.
fn by_pid(metrics: &Metrics, name: &str) -> Vec<(String, f64)> {
    metrics
        .samples(name, &[])
        .into_iter()
        .map(|(labels, v)| (labels.get("pid").cloned().unwrap_or_default(), v))
        .collect()
}

#[test]
fn top_one_gives_one_own_series_and_other_and_sums_equal_the_node_totals() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let agent = AgentProcess::start(&["--top-processes", "1", "--rank-processes-by", "reclaimed"]);
    // 512 and 4 PTE tables reclaimed; both stay alive, so both are counted.
    // The big one starts first and reclaims more than anything else on the
    // machine, so the small one is never the biggest: it never gets a series.
    let big = Held::start(1024);
    let small = Held::start(8);
    assert!(big.report.expected_tables > small.report.expected_tables);
    let (big_pid, small_pid) = (big.report.pid.to_string(), small.report.pid.to_string());

    // Other tests may DONTNEED at the same moment: an event that lands
    // between the agent's read of the maps and of the node counters shows in
    // one and not yet in the other. A few scrapes find a quiet moment; each
    // is checked in full.
    let mut mismatch = String::new();
    for _ in 0..20 {
        let metrics = agent.metrics();
        promtool_check(&metrics.text);
        assert_eq!(metrics.value("ptwatch_tracked_processes", &[]), 1.0, "one growing series: --top-processes 1");
        assert!(metrics.value("ptwatch_folded_processes", &[]) >= 1.0, "the small workload is folded");
        for (family, _) in PROCESS_FAMILIES {
            let series = by_pid(&metrics, family);
            assert!(series.iter().any(|(pid, _)| pid == "other"), "{series:?}");
            assert!(!series.iter().any(|(pid, _)| *pid == small_pid), "small workload folded: {series:?}");
        }
        // The biggest reclaimer on the node has the growing series: the big
        // workload, with everything it did (selected when first seen).
        let reclaimed = by_pid(&metrics, "ptwatch_pte_pages_reclaimed_total");
        let own = reclaimed.iter().find(|(pid, _)| *pid == big_pid).unwrap_or_else(|| panic!("{reclaimed:?}"));
        assert_eq!(own.1, (big.report.vmpte_drop_kib / 4) as f64, "{reclaimed:?}");
        let gauge = by_pid(&metrics, "ptwatch_process_pagetable_bytes");
        assert!(
            gauge.iter().any(|(pid, _)| *pid == big_pid) && gauge.iter().any(|(pid, _)| pid == "other"),
            "{gauge:?}"
        );

        mismatch = sum_mismatch(&metrics);
        if mismatch.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(mismatch.is_empty(), "sums never matched the node totals: {mismatch}");
    drop((small, big));
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{status:?}\n{stderr}");
}

/// `ptwatch-workload crowd CHILDREN SPANS` in `cgroup`: alive until dropped.
struct Crowd {
    child: std::process::Child,
    report: CrowdReport,
}

impl Crowd {
    fn start(cgroup: &TestCgroup, children: usize, spans: usize) -> Self {
        let mut child = cgroup
            .command(&workload_bin(), &["crowd", &children.to_string(), &spans.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the crowd");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("the crowd's report");
        let report = serde_json::from_str(&line).unwrap_or_else(|err| panic!("crowd report {line:?}: {err}"));
        Self { child, report }
    }

    /// Release the children and wait for all of them.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait for the crowd");
        assert!(status.success(), "crowd: {status}");
    }
}

/// The cgroup's total of `family`, if exported.
fn cgroup_total(metrics: &Metrics, family: &str, cgroup: &TestCgroup) -> Option<f64> {
    metrics.get(family, &[("cgroup", &cgroup.label)])
}

/// A per-process map of 64 entries and 300 live processes in one cgroup,
/// each reclaiming 2 tables: at least 236 of them cannot have an entry.
/// Their counts go to the cgroup's overflow slot: the cgroup's total is
/// exactly 600, the node's exact, own + other = node, the overflow is
/// reported, and across 20+ scrapes (while they live and after they exit)
/// no counter series goes down.
#[test]
fn at_map_capacity_cgroup_and_node_totals_stay_exact_and_no_counter_falls() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let agent = AgentProcess::start(&[
        "--max-tracked-processes",
        "64",
        "--top-processes",
        "0",
        "--harvest-interval",
        "250ms",
        "--exited-ttl",
        "2s",
    ])
    .wait_ready();
    let mut watch = CounterWatch::default();
    let cgroup = TestCgroup::create("pressure");
    let crowd = Crowd::start(&cgroup, 300, 2);
    assert_eq!(crowd.report.children, 300);
    // Every child's own accounting saw its two tables go.
    assert_eq!(crowd.report.vmpte_drop_kib / 4, 600, "{:?}", crowd.report.vmpte_drop_kib);
    let bytes = crowd.report.bytes as f64;
    let exact = |metrics: &Metrics| {
        [
            ("ptwatch_cgroup_pte_pages_reclaimed_total", 600.0),
            ("ptwatch_cgroup_madvise_dontneed_calls_total", 300.0),
            ("ptwatch_cgroup_madvise_dontneed_bytes_total", bytes),
        ]
        .into_iter()
        .all(|(family, expected)| cgroup_total(metrics, family, &cgroup) == Some(expected))
    };
    // Other processes' events may land between the agent's reads of the
    // maps and of the node totals: the sums must match at a quiet moment,
    // and the crowd's cgroup totals at every scrape once harvested.
    let (mut matched, mut mismatch) = (false, String::new());
    let mut metrics = agent.metrics();
    for _ in 0..25 {
        metrics = agent.metrics();
        watch.observe(&metrics);
        if exact(&metrics) {
            match sum_mismatch(&metrics) {
                found if found.is_empty() => matched = true,
                found => mismatch = found,
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    promtool_check(&metrics.text);
    assert!(exact(&metrics), "cgroup totals of the crowd:\n{}", metrics.text);
    assert!(matched, "own + other never matched the node totals: {mismatch}");
    // The map was full and said so.
    let entries = metrics.value("ptwatch_map_entries", &[("map", "PROCESS_COUNTERS")]);
    assert!(entries <= 64.0, "{entries} entries in a map of 64");
    assert_eq!(metrics.value("ptwatch_map_max_entries", &[("map", "PROCESS_COUNTERS")]), 64.0);
    let overflowed = metrics.value("ptwatch_map_update_failures_total", &[("map", "PROCESS_COUNTERS")]);
    // At least one event (the DONTNEED call) of each of 236 processes.
    assert!(overflowed >= 236.0, "at least 236 processes went to their cgroup's slot: {overflowed}");
    assert_eq!(metrics.value("ptwatch_overflow_events_total", &[("reason", "process_map_full")]), overflowed);
    // At most 64 of the crowd have series of their own; the rest are in other.
    let own: Vec<String> = crowd.report.pids.iter().map(|p| p.to_string()).collect();
    let with_series = metrics
        .samples("ptwatch_pte_pages_reclaimed_total", &[])
        .iter()
        .filter(|(labels, _)| labels.get("pid").is_some_and(|pid| own.contains(pid)))
        .count();
    assert!(with_series <= 64, "{with_series} of the crowd have series");

    // They exit; their entries are taken out, their series expire, and the
    // cgroup keeps its total.
    crowd.stop();
    for _ in 0..25 {
        let metrics = agent.metrics();
        watch.observe(&metrics);
        assert!(exact(&metrics), "the cgroup keeps its totals after its processes exit:\n{}", metrics.text);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(watch.scrapes >= 40 && watch.series() > 50, "{} scrapes of {} series", watch.scrapes, watch.series());
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
}
