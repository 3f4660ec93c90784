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

use support::{promtool_check, run_workload, AgentProcess};

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse exposition text")
}

/// Samples of `name` whose labels include `labels`.
fn values(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<(HashMap<String, String>, f64)> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), value)
        })
        .collect()
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = values(scrape, name, labels);
    assert_eq!(found.len(), 1, "exactly one sample of {name}{labels:?} expected, got {found:?}");
    found[0].1
}

/// Scrape and validate with promtool.
fn scrape(agent: &AgentProcess) -> (String, prometheus_parse::Scrape) {
    let text = agent.scrape();
    promtool_check(&text);
    let parsed = parse(&text);
    (text, parsed)
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
    let (_, first) = scrape(&agent);
    let (text, scrape) = scrape(&agent);

    let start = value(&scrape, "process_start_time_seconds", &[]);
    // /proc's start time has a resolution of one clock tick, and btime of a second.
    assert!((spawned_at - 2.0..spawned_at + 30.0).contains(&start), "started {start}, spawned {spawned_at}");
    let rss = value(&scrape, "process_resident_memory_bytes", &[]);
    let vm_rss = (status_kib(pid, "VmRSS") * 1024) as f64;
    assert!((rss / vm_rss - 1.0).abs() < 0.2, "process_resident_memory_bytes {rss} vs VmRSS {vm_rss}");
    let fds = value(&scrape, "process_open_fds", &[]);
    let listed = fs::read_dir(format!("/proc/{pid}/fd")).expect("list the agent's fds").count() as f64;
    // The scrape's own connection is closed by now, or about to be.
    assert!((fds - listed).abs() <= 2.0, "process_open_fds {fds} vs {listed} in /proc/{pid}/fd");
    let cpu = value(&scrape, "process_cpu_seconds_total", &[]);
    assert!(cpu > 0.0 && cpu >= value(&first, "process_cpu_seconds_total", &[]), "{cpu}");
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
    let agent = AgentProcess::start(&[]);
    // The workload is alive while scraped: it has its PROCESS_COUNTERS entry.
    let held = support::Held::start(8);
    let (_, first) = scrape(&agent);
    let (text, scrape) = scrape(&agent);

    // Each response's build time is observed after it is sent: the second
    // scrape shows at least the first (and the readiness probe's).
    let count = value(&scrape, "ptwatch_scrape_duration_seconds_count", &[]);
    assert!(count >= value(&first, "ptwatch_scrape_duration_seconds_count", &[]) + 1.0, "{text}");
    assert!(value(&scrape, "ptwatch_scrape_duration_seconds_sum", &[]) > 0.0);
    assert!(text.contains(&format!("ptwatch_scrape_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n")), "{text}");
    assert!(text.contains("# TYPE ptwatch_scrape_duration_seconds histogram"), "{text}");

    // Attach status agrees with probe_info; DONTNEED is always probed.
    assert_eq!(value(&scrape, "ptwatch_probe_attached", &[("event", "dontneed")]), 1.0);
    for (labels, _) in values(&scrape, "ptwatch_probe_info", &[]) {
        let event = labels["event"].as_str();
        let expected = if labels["attach"] == "none" { 0.0 } else { 1.0 };
        assert_eq!(value(&scrape, "ptwatch_probe_attached", &[("event", event)]), expected, "{event}");
    }
    assert_eq!(values(&scrape, "ptwatch_probe_attached", &[]).len(), 3, "{text}");

    // Capacities are the kernel's, as bpftool shows them for this agent.
    let kernel = maps_of(agent.child.id());
    for map in ["PROCESS_COUNTERS", "PAGETABLE_FREES", "INFLIGHT", "IN_FREE_PGTABLES"] {
        let max = value(&scrape, "ptwatch_map_max_entries", &[("map", map)]);
        // The kernel keeps 15 characters of a map name.
        let short = &map[..map.len().min(15)];
        assert_eq!(Some(max as u64), kernel.get(short).copied(), "{map}: bpftool shows {kernel:?}");
        let entries = value(&scrape, "ptwatch_map_entries", &[("map", map)]);
        assert!(entries <= max, "{map}: {entries} > {max}");
    }
    // The held workload has its entry; its DONTNEED call is over, so its
    // in-flight entry is gone (other processes' calls may be in flight).
    assert!(value(&scrape, "ptwatch_map_entries", &[("map", "PROCESS_COUNTERS")]) >= 1.0);
    assert!(value(&scrape, "ptwatch_map_entries", &[("map", "INFLIGHT")]) < 64.0);
    let series = format!(r#"ptwatch_madvise_dontneed_calls_total{{pid="{}""#, held.report.pid);
    assert!(text.contains(&series), "{text}");
}

#[test]
fn bpf_run_counts_grow_while_bpf_stats_is_enabled() {
    let agent = AgentProcess::start(&[]);
    let stats = BpfStats::set("1");
    let (_, before) = scrape(&agent);
    assert_eq!(value(&before, "ptwatch_bpf_stats_enabled", &[]), 1.0);
    let report = run_workload(&["cuts", "16", "0", "2048", "1", "dontneed"]);
    assert!(report.calls >= 8, "{report:?}");
    let (text, after) = scrape(&agent);
    let runs = |scrape: &prometheus_parse::Scrape, prefix: &str| -> f64 {
        values(scrape, "ptwatch_bpf_program_runs_total", &[])
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
    let seconds: f64 = values(&after, "ptwatch_bpf_program_run_seconds_total", &[]).iter().map(|(_, v)| v).sum();
    let seconds_before: f64 =
        values(&before, "ptwatch_bpf_program_run_seconds_total", &[]).iter().map(|(_, v)| v).sum();
    assert!(seconds > seconds_before, "run time must grow: {seconds_before} -> {seconds}");
    // Every attached program has its pair of series.
    assert_eq!(
        values(&after, "ptwatch_bpf_program_runs_total", &[]).len(),
        values(&after, "ptwatch_bpf_program_run_seconds_total", &[]).len()
    );

    // Off: the gauge says so and the run series go (the kernel stops counting).
    let previous = stats.previous.clone();
    drop(stats);
    let off = BpfStats::set("0");
    std::thread::sleep(Duration::from_millis(10));
    let (text, scrape) = scrape(&agent);
    assert_eq!(value(&scrape, "ptwatch_bpf_stats_enabled", &[]), 0.0, "{text}");
    assert!(values(&scrape, "ptwatch_bpf_program_runs_total", &[]).is_empty(), "{text}");
    drop(off);
    assert_eq!(fs::read_to_string(BPF_STATS).expect("read").trim(), previous, "restored");
}
