//! The real agent over a process lifecycle: ten thousand short-lived
//! processes (bounded kernel maps, memory and series; exact node totals),
//! a process that changes its name by `execve`, and agents stopped and
//! started in the middle of a workload.
//!
//! The workload runs in a cgroup of its own: its cgroup's total must equal
//! what its processes saw, and the node's delta the sum of every cgroup's
//! (a compiler running beside the test reclaims page tables too).

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ptwatch_workload::fleet::FleetReport;
use support::{expect_pt_reclaim, http_get, workload_bin, AgentProcess, CounterWatch, Metrics, TestCgroup};

/// `VmRSS` of `pid` in kB.
fn rss_kib(pid: u32) -> u64 {
    ptwatch::kernel::procfs::status_kib(pid, "VmRSS").expect("agent status").expect("VmRSS")
}

/// Entries and capacity of the agent's process map, counted by bpftool (the
/// kernel's view, independent of the agent's own gauge).
fn kernel_process_map(agent_pid: u32) -> (u64, u64) {
    let json = |args: &[&str]| -> serde_json::Value {
        let output = std::process::Command::new("bpftool").args(args).output().expect("bpftool (Debian package)");
        assert!(output.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("bpftool JSON")
    };
    // bpftool does not list a map's holders here: take the map ids from
    // the agent's own descriptors.
    let agent_maps = support::bpf_ids_held(agent_pid, "map_id");
    let maps = support::bpftool_objects("map");
    let map = maps
        .iter()
        .find(|m| {
            // Kernel object names are cut at 15 characters.
            m["name"] == "PROCESS_COUNTER" && m["id"].as_u64().is_some_and(|id| agent_maps.contains(&id))
        })
        .unwrap_or_else(|| panic!("no PROCESS_COUNTERS map among the agent's maps {agent_maps:?}"));
    let id = map["id"].as_u64().expect("map id").to_string();
    let entries = json(&["map", "dump", "id", &id, "--json"]).as_array().map_or(0, Vec::len) as u64;
    (entries, map["max_entries"].as_u64().expect("max_entries"))
}

/// Peaks seen while the agent works.
#[derive(Debug, Default)]
struct Peaks {
    rss_kib: u64,
    process_map_entries: f64,
    process_series: usize,
    samples: usize,
}

const CHILDREN: u64 = 10_000;
const HARVEST: Duration = Duration::from_millis(250);
const TTL: Duration = Duration::from_secs(10);
/// Growth of the agent's RSS over its idle size that the fleet may cause:
/// thousands of exited processes are kept for the TTL and rendered at each
/// scrape, then dropped. (The absolute footprint is `cargo xtask bench`'s.)
const RSS_GROWTH_LIMIT_KIB: u64 = 32 * 1024;

/// Reclaim per `cgroup` label of every cgroup series.
fn reclaim_by_cgroup(metrics: &Metrics) -> std::collections::HashMap<String, f64> {
    metrics
        .samples("ptwatch_cgroup_pte_pages_reclaimed_total", &[])
        .into_iter()
        .filter_map(|(mut labels, value)| Some((labels.remove("cgroup")?, value)))
        .collect()
}

#[test]
fn ten_thousand_short_lived_processes_keep_the_agent_bounded_and_node_totals_exact() {
    assert!(expect_pt_reclaim(), "this test needs PT_RECLAIM (6.14+) to have reclaims to count");
    let agent = AgentProcess::start(&["--exited-ttl", "10s", "--harvest-interval", "250ms"]).wait_ready();
    let agent_pid = agent.child.id();
    std::thread::sleep(HARVEST * 2);
    let idle_rss_kib = rss_kib(agent_pid);
    let before = agent.metrics();
    let node_before = before.value("ptwatch_node_pte_pages_reclaimed_total", &[]);

    // Sample the agent's memory, map and series while the fleet runs.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = Arc::clone(&running);
        let addr = agent.addr;
        std::thread::spawn(move || {
            let mut peaks = Peaks::default();
            let mut tick = 0u64;
            while running.load(Ordering::SeqCst) {
                peaks.rss_kib = peaks.rss_kib.max(rss_kib(agent_pid));
                tick += 1;
                // Scrape twice a second (Prometheus scrapes far less often).
                if !tick.is_multiple_of(5) {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                if let Some((200, body)) = http_get(addr, "/metrics") {
                    let metrics = Metrics::parse(body);
                    let entries = metrics.value("ptwatch_map_entries", &[("map", "PROCESS_COUNTERS")]);
                    let max = metrics.value("ptwatch_map_max_entries", &[("map", "PROCESS_COUNTERS")]);
                    assert!(entries <= max, "process map over capacity: {entries} > {max}");
                    peaks.process_map_entries = peaks.process_map_entries.max(entries);
                    peaks.process_series = peaks.process_series.max(
                        metrics
                            .samples("ptwatch_madvise_dontneed_calls_total", &[])
                            .iter()
                            .filter(|(labels, _)| labels.contains_key("pid"))
                            .count(),
                    );
                    peaks.samples += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peaks
        })
    };
    let started = Instant::now();
    let cgroup = TestCgroup::create("lifecycle");
    let output = cgroup
        .command(&workload_bin(), &["fleet", &CHILDREN.to_string(), "2", "4"])
        .output()
        .expect("spawn the fleet workload");
    let fleet_time = started.elapsed();
    assert!(output.status.success(), "fleet failed: {}", String::from_utf8_lossy(&output.stderr));
    let fleet: FleetReport = serde_json::from_slice(&output.stdout).expect("fleet report");
    assert_eq!(fleet.children, CHILDREN);
    // Every child's own accounting saw its tables go.
    assert_eq!(fleet.vmpte_drop_kib / 4, fleet.expected_tables, "{fleet:?}");

    // Two harvests later everything the children did is in; nothing that
    // reclaimed since `before` has expired yet (the TTL is longer).
    std::thread::sleep(HARVEST * 3);
    let totals = agent.metrics();
    let (by_cgroup_before, by_cgroup) = (reclaim_by_cgroup(&before), reclaim_by_cgroup(&totals));
    let fleet_tables = (fleet.vmpte_drop_kib / 4) as f64;
    assert_eq!(
        by_cgroup.get(&cgroup.label).copied(),
        Some(fleet_tables),
        "the workload's cgroup total must equal its processes' own VmPTE drops"
    );
    let cgroups_delta: f64 =
        by_cgroup.iter().map(|(label, now)| now - by_cgroup_before.get(label).copied().unwrap_or(0.0)).sum();
    let node_delta = totals.value("ptwatch_node_pte_pages_reclaimed_total", &[]) - node_before;
    assert_eq!(node_delta, cgroups_delta, "node reclaim delta vs the sum of every cgroup's: {by_cgroup:?}");
    assert!(node_delta >= fleet_tables);
    let calls_delta = totals.value("ptwatch_node_madvise_dontneed_calls_total", &[])
        - before.value("ptwatch_node_madvise_dontneed_calls_total", &[]);
    assert!(calls_delta >= CHILDREN as f64, "every child's DONTNEED is counted: {calls_delta}");

    // Past the TTL and a few harvests, every exited child has expired.
    std::thread::sleep(TTL + HARVEST * 4);
    running.store(false, Ordering::SeqCst);
    let peaks = sampler.join().expect("sampler");
    let after = agent.metrics();
    eprintln!(
        "fleet of {CHILDREN} in {fleet_time:?}; agent idle RSS {idle_rss_kib} kB, peaks {peaks:?}, RSS now {} kB; node reclaim {node_delta} for the fleet's {fleet_tables}",
        rss_kib(agent_pid)
    );

    // Bounded: memory, kernel maps (the agent's gauge and the kernel's own
    // count), and per-process series (every child expired).
    assert!(peaks.samples >= 5, "too few samples to judge: {peaks:?}");
    assert!(
        peaks.rss_kib < idle_rss_kib + RSS_GROWTH_LIMIT_KIB,
        "agent RSS peaked at {} kB, {idle_rss_kib} kB idle",
        peaks.rss_kib
    );
    let (entries, max) = kernel_process_map(agent_pid);
    assert!(entries < 100, "exited processes must leave the kernel map: {entries} of {max} entries left");
    assert!(after.value("ptwatch_map_entries", &[("map", "PROCESS_COUNTERS")]) < 100.0);
    let children: std::collections::HashSet<String> = fleet.pids.iter().map(|p| format!("pid=\"{p}\"")).collect();
    let lingering: Vec<&str> =
        after.text.lines().filter(|l| l.split(['{', ',']).any(|part| children.contains(part))).take(5).collect();
    assert!(lingering.is_empty(), "series of exited children must expire after the TTL: {lingering:?}");
    assert!(after.value("ptwatch_tracked_processes", &[]) < 100.0);
    assert_eq!(after.sum("ptwatch_map_update_failures_total", &[]), 0.0);

    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
}

/// `ptwatch-workload phases MIB`: one phase per [`Phased::phase`] call.
struct Phased {
    child: std::process::Child,
    reports: std::io::BufReader<std::process::ChildStdout>,
}

impl Phased {
    fn start(mib: u32) -> Self {
        let mut child = std::process::Command::new(workload_bin())
            .args(["phases", &mib.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the phases workload");
        let reports = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, reports }
    }

    /// Run one phase and return what the process saw.
    fn phase(&mut self) -> ptwatch_workload::Report {
        use std::io::{BufRead as _, Write as _};
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).expect("start a phase");
        let mut line = String::new();
        self.reports.read_line(&mut line).expect("phase report");
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("phase report {line:?}: {err}"))
    }
}

impl Drop for Phased {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The agent's `family{pid=…}` value once it has harvested it.
fn harvested(agent: &AgentProcess, family: &str, pid: u32) -> f64 {
    let pid = pid.to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = agent.metrics();
        if let Some(value) = metrics.get(family, &[("pid", &pid)]) {
            return value;
        }
        assert!(Instant::now() < deadline, "no {family}{{pid={pid}}} within 5 s:\n{}", metrics.text);
        std::thread::sleep(HARVEST);
    }
}

/// Agent A sees phase 1 and is stopped by `signal`; phase 2 runs with no
/// agent; agent B starts and sees phase 3. Each agent counts exactly the
/// phase it saw: nothing from before its start, nothing twice.
fn restart_mid_workload(signal: libc::c_int) {
    assert!(expect_pt_reclaim(), "this test needs PT_RECLAIM (6.14+)");
    let mut workload = Phased::start(64);
    let args = ["--harvest-interval", "250ms"];

    let agent_a = AgentProcess::start(&args).wait_ready();
    let a_programs = support::bpf_ids_held(agent_a.child.id(), "prog_id");
    assert!(!a_programs.is_empty(), "agent A holds its programs");
    let phase1 = workload.phase();
    assert_eq!(phase1.vmpte_drop_kib / 4, phase1.expected_tables, "{phase1:?}");
    let pid = phase1.pid;
    assert_eq!(harvested(&agent_a, "ptwatch_pte_pages_reclaimed_total", pid), (phase1.vmpte_drop_kib / 4) as f64);
    assert_eq!(harvested(&agent_a, "ptwatch_madvise_dontneed_calls_total", pid), 1.0);
    if signal == libc::SIGTERM {
        let (status, stderr) = agent_a.stop();
        assert!(status.success(), "{stderr}");
    } else {
        let mut agent_a = agent_a;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(agent_a.child.id() as i32, signal) };
        let status = agent_a.child.wait().expect("wait for agent A");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(signal));
    }
    // Killed or stopped, the kernel unloads what A held.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !support::programs_still_loaded(&a_programs).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(support::programs_still_loaded(&a_programs), Vec::<u64>::new(), "programs of agent A left behind");

    let unobserved = workload.phase();
    assert!(unobserved.vmpte_drop_kib > 0);

    let agent_b = AgentProcess::start(&args).wait_ready();
    let phase3 = workload.phase();
    assert_eq!(phase3.pid, pid);
    assert_eq!(
        harvested(&agent_b, "ptwatch_pte_pages_reclaimed_total", pid),
        (phase3.vmpte_drop_kib / 4) as f64,
        "agent B counts phase 3 only (phase 1 went with agent A, phase 2 ran unobserved)"
    );
    assert_eq!(harvested(&agent_b, "ptwatch_madvise_dontneed_calls_total", pid), 1.0);
    assert_eq!(
        harvested(&agent_b, "ptwatch_madvise_dontneed_bytes_total", pid),
        phase3.bytes as f64,
        "bytes of phase 3 only"
    );
    let (status, stderr) = agent_b.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn agent_stopped_with_sigterm_and_restarted_counts_each_phase_once() {
    restart_mid_workload(libc::SIGTERM);
}

#[test]
fn agent_killed_with_sigkill_and_restarted_counts_each_phase_once() {
    restart_mid_workload(libc::SIGKILL);
}

/// `sh -c "exec app"` in miniature: a process DONTNEEDs 64 MiB as
/// `execbefore`, execs itself as `execafter` and DONTNEEDs 32 MiB more. Two
/// series of the same pid and start time, each with its own counts and
/// name; the old one keeps its value; every sum stays exact.
#[test]
fn an_exec_gives_the_new_name_its_own_series_from_the_exec_on() {
    assert!(expect_pt_reclaim(), "this test needs PT_RECLAIM (6.14+)");
    let dir = std::env::temp_dir().join(format!("ptwatch-exec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for name in ["execbefore", "execafter"] {
        std::os::unix::fs::symlink(workload_bin(), dir.join(name)).expect("symlink the workload");
    }
    let agent = AgentProcess::start(&["--harvest-interval", "250ms", "--top-processes", "0", "--exited-ttl", "5m"])
        .wait_ready();
    let mut watch = CounterWatch::default();
    let after = dir.join("execafter");
    let mut child = std::process::Command::new(dir.join("execbefore"))
        .args(["exec-step", "64"])
        .arg(&after)
        .args(["exec-step", "32"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn execbefore");
    let pid = child.id().to_string();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut step = |go: bool| -> Option<ptwatch_workload::Report> {
        use std::io::{BufRead as _, Write as _};
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).expect("pace the workload");
        go.then(|| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("the step's report");
            serde_json::from_str(&line).unwrap_or_else(|err| panic!("report {line:?}: {err}"))
        })
    };
    let reclaimed = |metrics: &Metrics, comm: &str| {
        metrics.get("ptwatch_pte_pages_reclaimed_total", &[("pid", &pid), ("comm", comm)])
    };
    let wait_for = |watch: &mut CounterWatch, what: &str, done: &dyn Fn(&Metrics) -> bool| -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = agent.metrics();
            watch.observe(&metrics);
            if done(&metrics) {
                return metrics;
            }
            assert!(Instant::now() < deadline, "{what} within 10 s:\n{}", metrics.text);
            std::thread::sleep(HARVEST);
        }
    };

    let before = step(true).expect("report as execbefore");
    assert_eq!(before.vmpte_drop_kib / 4, 32, "{before:?}");
    wait_for(&mut watch, "32 tables as execbefore", &|m| reclaimed(m, "execbefore") == Some(32.0));
    step(false);
    // The rename is seen at a full harvest: a new series at zero.
    wait_for(&mut watch, "the execafter series", &|m| reclaimed(m, "execafter") == Some(0.0));
    let later = step(true).expect("report as execafter");
    assert_eq!((later.pid, later.vmpte_drop_kib / 4), (before.pid, 16), "{later:?}");
    let metrics = wait_for(&mut watch, "16 tables as execafter", &|m| reclaimed(m, "execafter") == Some(16.0));
    assert_eq!(reclaimed(&metrics, "execbefore"), Some(32.0), "the old name keeps its counts");
    let series = metrics.samples("ptwatch_madvise_dontneed_calls_total", &[("pid", &pid)]);
    assert_eq!(series.len(), 2, "{series:?}");
    let starts: std::collections::HashSet<&String> = series.iter().map(|(labels, _)| &labels["start_time"]).collect();
    assert_eq!(starts.len(), 1, "one process, one start time: {series:?}");
    assert_eq!(series.iter().map(|(_, calls)| calls).sum::<f64>(), 2.0);
    // Own series + other = node, for every family (other processes may
    // race the reads: a few scrapes find a quiet moment).
    let mut mismatch = String::new();
    for _ in 0..20 {
        let metrics = agent.metrics();
        watch.observe(&metrics);
        mismatch = support::sum_mismatch(&metrics);
        if mismatch.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(mismatch.is_empty(), "sums never matched the node totals: {mismatch}");
    drop(stdin);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
}
