//! The agent's own metrics, through a real agent's `/metrics`: scrape
//! duration, kernel map fill, probe attach status, eBPF run statistics and
//! the standard `process_*` metrics, each compared with what the kernel or
//! `/proc` says independently. Every exposition is checked by promtool.

mod support;

use std::{
    collections::HashMap,
    fs,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use support::{promtool_check, run_workload, AgentProcess, Metrics};

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Scrape and validate with promtool.
fn checked_metrics(agent: &AgentProcess) -> Metrics {
    let metrics = agent.metrics();
    promtool_check(&metrics.text);
    metrics
}

/// `kernel.bpf_stats_enabled` set for the life of the value; the previous
/// value is written back on drop, also when an assertion fails (drops run
/// while the panic unwinds).
struct BpfStats {
    previous: String,
}

impl BpfStats {
    fn set(value: &str) -> Self {
        let previous = fs::read_to_string(BPF_STATS).expect("read kernel.bpf_stats_enabled").trim().to_owned();
        fs::write(BPF_STATS, value).expect("set kernel.bpf_stats_enabled");
        Self { previous }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(err) = fs::write(BPF_STATS, &self.previous) {
            eprintln!("could not restore {BPF_STATS} to {}: {err}", self.previous);
        }
    }
}

/// `(name, max_entries)` of the maps held by process `pid`: their ids from
/// the descriptors' `/proc/<pid>/fdinfo`, names and capacities from bpftool.
fn maps_of(pid: u32) -> HashMap<String, u64> {
    let ids = support::bpf_ids_held(pid, "map_id");
    assert!(!ids.is_empty(), "the agent holds no eBPF map descriptors");
    let maps = support::bpftool_objects("map");
    maps.iter()
        .filter(|m| m["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|m| Some((m["name"].as_str()?.to_owned(), m["max_entries"].as_u64()?)))
        .collect()
}

/// `/proc/<pid>/status` field in kB.
fn status_kib(pid: u32, field: &str) -> u64 {
    ptwatch::kernel::procfs::status_kib(pid, field)
        .expect("read /proc/<pid>/status")
        .unwrap_or_else(|| panic!("no {field} for {pid}"))
}

#[test]
fn process_metrics_match_proc() {
    let spawned_at = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    let agent = AgentProcess::start(&[]);
    let pid = agent.child.id();
    let first = checked_metrics(&agent);
    let scrape = checked_metrics(&agent);
    let text = &scrape.text;

    let start = scrape.value("process_start_time_seconds", &[]);
    // /proc's start time has a resolution of one clock tick, and btime of a second.
    assert!((spawned_at - 2.0..spawned_at + 30.0).contains(&start), "started {start}, spawned {spawned_at}");
    let rss = scrape.value("process_resident_memory_bytes", &[]);
    let vm_rss = (status_kib(pid, "VmRSS") * 1024) as f64;
    assert!((rss / vm_rss - 1.0).abs() < 0.2, "process_resident_memory_bytes {rss} vs VmRSS {vm_rss}");
    let fds = scrape.value("process_open_fds", &[]);
    let listed = fs::read_dir(format!("/proc/{pid}/fd")).expect("list the agent's fds").count() as f64;
    // The scrape's own connection is closed by now, or about to be.
    assert!((fds - listed).abs() <= 2.0, "process_open_fds {fds} vs {listed} in /proc/{pid}/fd");
    let cpu = scrape.value("process_cpu_seconds_total", &[]);
    assert!(cpu > 0.0 && cpu >= first.value("process_cpu_seconds_total", &[]), "{cpu}");
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read the agent's stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..].split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_now = (fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime")) / ticks;
    assert!(cpu <= cpu_now, "process_cpu_seconds_total {cpu} ahead of /proc ({cpu_now})");
    assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
    assert!(text.contains("# TYPE process_resident_memory_bytes gauge"), "{text}");
}

#[test]
fn scrape_duration_probe_status_and_kernel_maps() {
    let agent = AgentProcess::start(&["--max-tracked-processes", "1000"]);
    // The workload is alive while scraped: it has its PROCESS_COUNTERS entry.
    let held = support::Held::start(8);
    let first = checked_metrics(&agent);
    let scrape = checked_metrics(&agent);
    let text = &scrape.text;

    // Each response's build time is observed after it is sent: the second
    // scrape shows at least the first (and the readiness probe's).
    let count = scrape.value("ptwatch_scrape_duration_seconds_count", &[]);
    assert!(count >= first.value("ptwatch_scrape_duration_seconds_count", &[]) + 1.0, "{text}");
    assert!(scrape.value("ptwatch_scrape_duration_seconds_sum", &[]) > 0.0);
    assert!(text.contains(&format!("ptwatch_scrape_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n")), "{text}");
    assert!(text.contains("# TYPE ptwatch_scrape_duration_seconds histogram"), "{text}");

    // Attach status agrees with probe_info; DONTNEED is always probed.
    assert_eq!(scrape.value("ptwatch_probe_attached", &[("event", "dontneed")]), 1.0);
    // The plan's cost to everyone else is stated on every sample: the
    // tracepoint plan's syscall tracepoints tax every syscall of the node.
    let tracepoint_plan = text.contains(r#"probe_mode="tracepoint""#);
    let cost = if tracepoint_plan { "every_syscall" } else { "hooked_functions_only" };
    for (labels, _) in scrape.samples("ptwatch_probe_info", &[]) {
        let event = labels["event"].as_str();
        let expected = if labels["attach"] == "none" { 0.0 } else { 1.0 };
        assert_eq!(scrape.value("ptwatch_probe_attached", &[("event", event)]), expected, "{event}");
        assert_eq!(labels["bystander_cost"], cost, "{text}");
    }
    // One sample per event of the plan report.
    assert_eq!(scrape.samples("ptwatch_probe_attached", &[]).len(), ptwatch::probes::plan::Event::ALL.len(), "{text}");
    assert_eq!(scrape.samples("ptwatch_probe_info", &[]).len(), ptwatch::probes::plan::Event::ALL.len(), "{text}");
    // Recursion misses are counted by the kernel at all times: one series
    // per attached program, whatever bpf_stats says.
    assert!(!scrape.samples("ptwatch_bpf_program_misses_total", &[]).is_empty(), "{text}");

    // Capacities are the kernel's, as bpftool shows them for this agent,
    // and the per-process map's is the user's setting.
    let kernel = maps_of(agent.child.id());
    assert_eq!(scrape.value("ptwatch_map_max_entries", &[("map", "PROCESS_COUNTERS")]), 1000.0);
    assert_eq!(
        scrape.value("ptwatch_map_max_entries", &[("map", "OVERFLOW_COUNTERS")]),
        f64::from(ptwatch_common::overflow_capacity(1000))
    );
    for map in ["PROCESS_COUNTERS", "OVERFLOW_COUNTERS", "THREAD_CONTEXT"] {
        let max = scrape.value("ptwatch_map_max_entries", &[("map", map)]);
        // The kernel keeps 15 characters of a map name.
        let short = &map[..map.len().min(15)];
        assert_eq!(Some(max as u64), kernel.get(short).copied(), "{map}: bpftool shows {kernel:?}");
        let entries = scrape.value("ptwatch_map_entries", &[("map", map)]);
        assert!(entries <= max, "{map}: {entries} > {max}");
    }
    // The held workload has its entry; its DONTNEED call is over, so its
    // thread's context is gone (other processes' calls may be in flight).
    assert!(scrape.value("ptwatch_map_entries", &[("map", "PROCESS_COUNTERS")]) >= 1.0);
    assert!(scrape.value("ptwatch_map_entries", &[("map", "THREAD_CONTEXT")]) < 64.0);
    // The unattributed slot always exists.
    assert!(scrape.value("ptwatch_map_entries", &[("map", "OVERFLOW_COUNTERS")]) >= 1.0);
    for family in
        ["ptwatch_thread_contexts_reaped_total", "ptwatch_context_exit_misses_total", "ptwatch_lost_events_total"]
    {
        assert_eq!(scrape.samples(family, &[]).len(), 1, "{family}: {text}");
    }
    let series = format!(r#"ptwatch_madvise_dontneed_calls_total{{pid="{}""#, held.report.pid);
    assert!(text.contains(&series), "{text}");
}

#[test]
fn bpf_run_counts_grow_while_bpf_stats_is_enabled() {
    let agent = AgentProcess::start(&[]);
    let stats = BpfStats::set("1");
    let before = checked_metrics(&agent);
    assert_eq!(before.value("ptwatch_bpf_stats_enabled", &[]), 1.0);
    let report = run_workload(&["cuts", "16", "0", "2048", "1", "dontneed"]);
    assert!(report.calls >= 8, "{report:?}");
    let after = checked_metrics(&agent);
    let text = &after.text;
    let runs = |scrape: &Metrics, prefix: &str| -> f64 {
        scrape
            .samples("ptwatch_bpf_program_runs_total", &[])
            .iter()
            .filter(|(labels, _)| labels["program"].starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    // Each DONTNEED call runs the madvise entry and exit programs once (other
    // processes' calls add to that).
    for prefix in ["madvise_enter_", "madvise_exit_"] {
        let grown = runs(&after, prefix) - runs(&before, prefix);
        assert!(
            grown >= report.calls as f64,
            "{prefix}: grew by {grown}, workload made {} calls\n{text}",
            report.calls
        );
    }
    let seconds: f64 = after.samples("ptwatch_bpf_program_run_seconds_total", &[]).iter().map(|(_, v)| v).sum();
    let seconds_before: f64 = before.samples("ptwatch_bpf_program_run_seconds_total", &[]).iter().map(|(_, v)| v).sum();
    assert!(seconds > seconds_before, "run time must grow: {seconds_before} -> {seconds}");
    // Every attached program has its pair of series.
    assert_eq!(
        after.samples("ptwatch_bpf_program_runs_total", &[]).len(),
        after.samples("ptwatch_bpf_program_run_seconds_total", &[]).len()
    );

    // Off: the gauge says so and the run series go (the kernel stops counting).
    let previous = stats.previous.clone();
    drop(stats);
    let off = BpfStats::set("0");
    std::thread::sleep(Duration::from_millis(10));
    let scrape = checked_metrics(&agent);
    let text = &scrape.text;
    assert_eq!(scrape.value("ptwatch_bpf_stats_enabled", &[]), 0.0, "{text}");
    assert!(scrape.samples("ptwatch_bpf_program_runs_total", &[]).is_empty(), "{text}");
    drop(off);
    assert_eq!(fs::read_to_string(BPF_STATS).expect("read").trim(), previous, "restored");
}
