//! `ptwatch trace` through the real binary, with the real eBPF programs and
//! real workloads: the events of a DONTNEED workload carry its pid and comm
//! and the PTE pages PT_RECLAIM freed (equal to its VmPTE drop), filters
//! keep unrelated processes out, lost events are counted and reported, and
//! trace runs next to an agent without either disturbing the other.
//!
//! Other tests run at the same time and make their own DONTNEED calls, so
//! every assertion is about the workloads these tests start.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use ptwatch_workload::wall_clock_ns;
use serde_json::Value;
use support::{assert_one_line_error, expect_pt_reclaim, ptwatch_bin, run_workload, workload_bin, AgentProcess};

/// The comm the kernel keeps for `ptwatch-workload` (15 characters).
const WORKLOAD_COMM: &str = "ptwatch-workloa";

/// A running `ptwatch trace`, attached (it logged "probes attached").
struct Trace {
    child: std::process::Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Trace {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(ptwatch_bin())
            .arg("trace")
            .args(args)
            .env_remove("PTWATCH_PROBE_MODE")
            .env("PTWATCH_PROBE_MODE", probe_mode_name())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ptwatch trace");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        let mut seen = String::new();
        loop {
            match stderr.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains("probes attached") => break,
                Ok(line) => seen.push_str(&(line + "\n")),
                Err(_) => {
                    let _ = child.kill();
                    panic!("ptwatch trace {args:?} did not attach:\n{seen}");
                }
            }
        }
        Self { child, stdout, stderr }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// SIGINT (Ctrl-C), wait; exit status, stdout lines, stderr.
    fn stop(mut self) -> (std::process::ExitStatus, Vec<String>, String) {
        self.signal(libc::SIGINT);
        self.finish()
    }

    fn finish(&mut self) -> (std::process::ExitStatus, Vec<String>, String) {
        let status = self.child.wait().expect("wait for trace");
        let stdout: Vec<String> = self.stdout.iter().collect();
        let stderr: Vec<String> = self.stderr.iter().collect();
        (status, stdout, stderr.join("\n"))
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn probe_mode_name() -> &'static str {
    match support::probe_mode() {
        ptwatch::probes::plan::ProbeMode::Auto => "auto",
        ptwatch::probes::plan::ProbeMode::Fentry => "fentry",
        ptwatch::probes::plan::ProbeMode::Kprobe => "kprobe",
        ptwatch::probes::plan::ProbeMode::Tracepoint => "tracepoint",
    }
}

/// Lines of `pipe`, read on a thread (the channel closes at EOF).
fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The JSON lines of a `--json` run: events, lost notices, and the summary
/// (which must be the last line).
struct JsonRun {
    events: Vec<Value>,
    lost_notices: Vec<u64>,
    summary: Value,
}

fn parse_json(stdout: &[String]) -> JsonRun {
    let values: Vec<Value> = stdout
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not a JSON line: {line:?}: {err}")))
        .collect();
    let summary = values.last().cloned().expect("trace printed nothing");
    assert_eq!(summary["type"], "summary", "the last line is the summary: {summary}");
    let mut run = JsonRun { events: Vec::new(), lost_notices: Vec::new(), summary };
    for value in &values[..values.len() - 1] {
        match value["type"].as_str() {
            Some("event") => run.events.push(value.clone()),
            Some("lost") => run.lost_notices.push(num(value, "lost")),
            _ => panic!("unexpected line {value}"),
        }
    }
    run
}

fn flag(value: &Value, key: &str) -> bool {
    value[key].as_bool().unwrap_or_else(|| panic!("no boolean {key:?} in {value}"))
}

fn num(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_else(|| panic!("no number {key:?} in {value}"))
}

fn of_pid(events: &[Value], pid: u32) -> Vec<&Value> {
    events.iter().filter(|e| num(e, "pid") == u64::from(pid)).collect()
}

fn sum_pages<'a>(events: impl IntoIterator<Item = &'a Value>) -> u64 {
    events.into_iter().map(|e| num(e, "pages")).sum()
}

/// The summary's totals are the sums of the events printed.
fn assert_summary_matches(run: &JsonRun) {
    let summary = &run.summary;
    assert_eq!(num(summary, "events"), run.events.len() as u64, "{summary}");
    let totals = summary["totals"].as_array().expect("totals");
    assert_eq!(totals.iter().map(|t| num(t, "events")).sum::<u64>(), run.events.len() as u64);
    assert_eq!(totals.iter().map(|t| num(t, "pages")).sum::<u64>(), sum_pages(&run.events));
    for total in totals {
        let matching: Vec<&Value> = run
            .events
            .iter()
            .filter(|e| e["event"] == total["event"] && e["cause"] == total["cause"] && e["level"] == total["level"])
            .collect();
        assert_eq!(num(total, "events"), matching.len() as u64, "{total}");
        assert_eq!(num(total, "pages"), sum_pages(matching), "{total}");
    }
    for process in summary["processes"].as_array().expect("processes") {
        let pid = num(process, "pid") as u32;
        let events = of_pid(&run.events, pid);
        let calls: Vec<&&Value> = events.iter().filter(|e| e["event"] == "dontneed").collect();
        assert_eq!(num(process, "dontneed_calls"), calls.len() as u64, "{process}");
        assert_eq!(num(process, "reclaimed_pages"), calls.iter().map(|e| num(e, "pages")).sum::<u64>());
        assert_eq!(num(process, "dontneed_bytes"), calls.iter().map(|e| num(e, "bytes")).sum::<u64>());
    }
    // The lost count of the summary is the last one announced (or none).
    assert_eq!(num(summary, "lost"), run.lost_notices.last().copied().unwrap_or(0), "{summary}");
    // What the summary says the plan can see bounds what it showed.
    let seen = &summary["visibility"];
    if probe_mode_name() != "auto" {
        assert_eq!(seen["plan"], probe_mode_name(), "{seen}");
    }
    let causes = seen["causes"].as_array().expect("causes");
    let limitations = seen["limitations"].as_array().expect("limitations");
    for free in run.events.iter().filter(|e| e["event"] == "free") {
        assert!(flag(seen, "frees_observed"), "a free event from a plan that sees none: {free} ({seen})");
        assert!(causes.contains(&free["cause"]), "cause outside the plan's: {free} ({seen})");
        // Reclaim, collapse and THP frees are PTE tables by their path;
        // the others name a level only where the plan can tell it.
        let level_from_path = ["reclaim", "collapse", "thp"].contains(&free["cause"].as_str().unwrap_or(""));
        if !level_from_path && !flag(seen, "free_levels_named") {
            assert_eq!(free["level"], "unknown", "{free} ({seen})");
        }
    }
    assert_eq!(flag(seen, "frees_observed"), seen["plan"] != "tracepoint", "{seen}");
    assert_eq!(causes.is_empty(), !flag(seen, "frees_observed"), "{seen}");
    assert!(flag(seen, "frees_observed") || !limitations.is_empty(), "unseen frees are said: {seen}");
}

/// The DONTNEED events of a `cuts MIB 0 CUT_KIB 1 dontneed` run match its
/// report: one per call, with its range, and PT_RECLAIM's pages = VmPTE drop.
fn assert_cuts_events(events: &[&Value], report: &ptwatch_workload::Report, cut_kib: u64) {
    let calls: Vec<&&Value> = events.iter().filter(|e| e["event"] == "dontneed").collect();
    assert_eq!(calls.len() as u64, report.calls, "one dontneed event per call");
    for call in &calls {
        assert_eq!(call["comm"], WORKLOAD_COMM);
        assert_eq!(num(call, "len"), cut_kib * 1024, "{call}");
        assert_eq!(num(call, "bytes"), cut_kib * 1024, "{call}");
        assert!(call["start"].as_str().is_some_and(|s| s.starts_with("0x")), "{call}");
        assert_eq!((call["cause"].as_str(), call["level"].as_str()), (Some("reclaim"), Some("pte")));
    }
    let reclaimed: u64 = calls.iter().map(|e| num(e, "pages")).sum();
    if expect_pt_reclaim() {
        assert_eq!(reclaimed, report.expected_tables, "{report:?}");
        assert_eq!(reclaimed * 4, report.vmpte_drop_kib, "pages == VmPTE drop: {report:?}");
    } else {
        assert_eq!(reclaimed, 0);
        assert_eq!(report.vmpte_drop_kib, 0);
    }
    // With a free probe, each reclaimed table is also a free event.
    let reclaim_frees = sum_pages(events.iter().copied().filter(|e| e["event"] == "free" && e["cause"] == "reclaim"));
    let frees_seen = events.iter().any(|e| e["event"] == "free");
    if frees_seen {
        assert_eq!(reclaim_frees, reclaimed);
    }
}

#[test]
fn reclaim_is_traced_with_the_workloads_pid_comm_and_pages() {
    let trace = Trace::start(&["--json", "--comm", "ptwatch-workload"]);
    let report = run_workload(&["cuts", "64", "0", "2048", "1", "dontneed"]);
    std::thread::sleep(Duration::from_millis(500));
    let (status, stdout, stderr) = trace.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let run = parse_json(&stdout);
    assert!(run.events.iter().all(|e| e["comm"] == WORKLOAD_COMM), "--comm keeps only the workloads");
    assert_cuts_events(&of_pid(&run.events, report.pid), &report, 2048);
    assert_summary_matches(&run);
    assert!(stderr.contains("probes detached"), "{stderr}");
}

/// `sh` that waits for a line on stdin, then execs `ptwatch-workload ARGS`
/// under the same pid: the pid is known before the workload runs.
struct Deferred {
    child: std::process::Child,
}

impl Deferred {
    fn new(args: &[&str]) -> Self {
        let script = format!("read go; exec {} {}", workload_bin().display(), args.join(" "));
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        Self { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn run(mut self) -> ptwatch_workload::Report {
        use std::io::Write as _;
        self.child.stdin.take().expect("stdin").write_all(b"go\n").expect("release the workload");
        let output = self.child.wait_with_output().expect("workload");
        assert!(output.status.success());
        serde_json::from_slice(&output.stdout).expect("workload report")
    }
}

#[test]
fn pid_filter_excludes_other_processes() {
    let target = Deferred::new(&["cuts", "32", "0", "2048", "1", "dontneed"]);
    let pid = target.pid().to_string();
    let trace = Trace::start(&["--json", "--pid", &pid]);
    let other = run_workload(&["cuts", "32", "0", "2048", "1", "dontneed"]);
    let report = target.run();
    std::thread::sleep(Duration::from_millis(500));
    let (status, stdout, stderr) = trace.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let run = parse_json(&stdout);
    assert!(run.events.iter().all(|e| num(e, "pid") == u64::from(report.pid)), "only pid {pid}");
    assert!(of_pid(&run.events, other.pid).is_empty());
    assert_cuts_events(&of_pid(&run.events, report.pid), &report, 2048);
    assert_summary_matches(&run);
}

#[test]
fn cgroup_filter_excludes_other_cgroups() {
    let root = ptwatch::aggregate::cgroup::CgroupTree::detect().expect("a cgroup v2 tree (needed by --cgroup)");
    let name = format!("ptwatch-trace-test-{}", std::process::id());
    let dir = root.dir(&name);
    std::fs::create_dir(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _remove = Remove(dir.clone());
    let trace = Trace::start(&["--json", "--cgroup", &format!("/{name}")]);
    let inside = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec {} cuts 32 0 2048 1 dontneed",
                dir.display(),
                workload_bin().display()
            ),
        ])
        .output()
        .expect("workload in a cgroup");
    assert!(inside.status.success(), "{}", String::from_utf8_lossy(&inside.stderr));
    let report: ptwatch_workload::Report = serde_json::from_slice(&inside.stdout).expect("report");
    let outside = run_workload(&["cuts", "32", "0", "2048", "1", "dontneed"]);
    std::thread::sleep(Duration::from_millis(500));
    let (status, stdout, stderr) = trace.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let run = parse_json(&stdout);
    assert!(of_pid(&run.events, outside.pid).is_empty(), "the workload outside the cgroup is excluded");
    assert!(run.events.iter().all(|e| e["cgroup"] == format!("/{name}")), "only the cgroup's tasks");
    assert_cuts_events(&of_pid(&run.events, report.pid), &report, 2048);
    assert_summary_matches(&run);
}

/// PTE tables a DONTNEED workload left in place: those its cuts emptied
/// minus those the kernel reclaimed (its `VmPTE` drop, 4 kB a table).
fn left_by_dontneed(report: &ptwatch_workload::Report) -> u64 {
    if !expect_pt_reclaim() {
        assert_eq!(report.vmpte_drop_kib, 0, "no PT_RECLAIM: VmPTE does not drop");
    }
    report.expected_tables - report.vmpte_drop_kib / 4
}

#[test]
fn min_pages_and_cause_filters() {
    // 2 MiB cuts reclaim 1 table per call, 8 MiB cuts 4: --min-pages 2
    // keeps the second workload's calls only (frees are 1 page each).
    let trace = Trace::start(&["--json", "--comm", "ptwatch-workload", "--min-pages", "2"]);
    let small = run_workload(&["cuts", "32", "0", "2048", "1", "dontneed"]);
    let big = run_workload(&["cuts", "32", "0", "8192", "1", "dontneed"]);
    std::thread::sleep(Duration::from_millis(500));
    let (status, stdout, stderr) = trace.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let run = parse_json(&stdout);
    assert!(run.events.iter().all(|e| num(e, "pages") >= 2), "--min-pages 2");
    assert!(of_pid(&run.events, small.pid).is_empty());
    if expect_pt_reclaim() {
        let calls = of_pid(&run.events, big.pid);
        assert_eq!(calls.len() as u64, big.calls, "each 8 MiB call reclaimed 4 tables");
        assert_eq!(sum_pages(calls) * 4, big.vmpte_drop_kib);
    }
    assert_summary_matches(&run);

    // --cause unmap: no DONTNEED call, only munmap frees (where the plan
    // sees frees at all).
    let trace = Trace::start(&["--json", "--comm", "ptwatch-workload", "--cause", "unmap"]);
    let dontneed = run_workload(&["cuts", "32", "0", "2048", "1", "dontneed"]);
    // Compared within the munmap's wall-clock window: a table the
    // workload's loader frees at start-up is not the munmap's.
    let (unmap, start, end) = support::unmap_paced(32, |_| wall_clock_ns(), |_| wall_clock_ns());
    let munmap_window = start..=end;
    std::thread::sleep(Duration::from_millis(500));
    let (status, stdout, stderr) = trace.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let run = parse_json(&stdout);
    assert!(run.events.iter().all(|e| e["cause"] == "unmap" && e["event"] == "free"), "--cause unmap");
    let in_munmap = |e: &&Value| munmap_window.contains(&num(e, "timestamp_ns"));
    // The DONTNEED workload unmaps its region before exiting, in a quiet
    // window of its own: the empty tables DONTNEED left behind go then
    // (without PT_RECLAIM, 6.1, every one), with the region's upper-level
    // tables where no other mapping shares them: its VmPTE drop.
    let left_behind = left_by_dontneed(&dontneed);
    let region_unmap = dontneed.region_unmap.expect("the cuts workload times its munmap");
    let region_unmap_window = region_unmap.start_ns..=region_unmap.end_ns;
    let freed_by_region_unmap = of_pid(&run.events, dontneed.pid)
        .into_iter()
        .filter(|e| region_unmap_window.contains(&num(e, "timestamp_ns")))
        .collect::<Vec<_>>();
    // What the run could see is in its summary. Where the architecture
    // does not name levels (arm64, riscv64), frees are `unknown`: every
    // level together, exact against VmPTE.
    let seen = &run.summary["visibility"];
    let (frees_observed, levels_named) = (flag(seen, "frees_observed"), flag(seen, "free_levels_named"));
    if frees_observed && levels_named {
        let pte_in_munmap =
            sum_pages(of_pid(&run.events, unmap.pid).into_iter().filter(in_munmap).filter(|e| e["level"] == "pte"));
        assert_eq!(pte_in_munmap, unmap.expected_tables, "munmap frees its PTE tables");
        let pte_freed = sum_pages(freed_by_region_unmap.iter().copied().filter(|e| e["level"] == "pte"));
        assert_eq!(pte_freed, left_behind, "tables left by DONTNEED, freed by munmap: {dontneed:?}");
        let freed = sum_pages(freed_by_region_unmap);
        assert_eq!(freed * 4, region_unmap.vmpte_drop_kib, "every level the munmap freed: {dontneed:?}");
    } else if frees_observed {
        assert!(run.events.iter().all(|e| e["level"] == "unknown"), "levels not named here");
        let in_munmap = sum_pages(of_pid(&run.events, unmap.pid).into_iter().filter(in_munmap));
        assert_eq!(in_munmap * 4, unmap.vmpte_drop_kib, "munmap frees its tables, every level");
        // Levels together: the munmap's VmPTE drop, which holds at least
        // the tables DONTNEED left.
        let freed = sum_pages(freed_by_region_unmap);
        assert_eq!(freed * 4, region_unmap.vmpte_drop_kib, "tables freed by the munmap: {dontneed:?}");
        assert!(freed >= left_behind, "the tables DONTNEED left go with the region: {dontneed:?}");
    } else {
        assert!(run.events.is_empty(), "the tracepoint plan sees no frees");
    }
    assert_summary_matches(&run);
}

#[test]
fn lost_events_are_counted_and_reported() {
    // A one-page ring buffer (about 40 events) and a reader that is stopped
    // while a workload makes 8192 DONTNEED calls: most cannot fit.
    let trace = Trace::start(&["--json", "--comm", "ptwatch-workload", "--buffer-kib", "4"]);
    trace.signal(libc::SIGSTOP);
    let report = run_workload(&["cuts", "32", "0", "4", "1", "dontneed"]);
    trace.signal(libc::SIGCONT);
    // Let it print the events that fitted and notice the loss.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, stdout, stderr) = trace.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let run = parse_json(&stdout);
    let lost = num(&run.summary, "lost");
    let seen = of_pid(&run.events, report.pid).len() as u64;
    assert!(lost > 0, "nothing lost with a 4 KiB buffer: {}", run.summary);
    assert!(!run.lost_notices.is_empty(), "the loss was announced while tracing");
    // Every call of the workload was either shown or lost (others' events
    // may be lost too).
    assert!(seen + lost >= report.calls, "{seen} shown + {lost} lost < {} calls", report.calls);
    assert!(seen < report.calls);
    assert_summary_matches(&run);

    // The text form says it on stderr and in the summary.
    let trace = Trace::start(&["--comm", "ptwatch-workload", "--buffer-kib", "4"]);
    trace.signal(libc::SIGSTOP);
    run_workload(&["cuts", "16", "0", "4", "1", "dontneed"]);
    trace.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, stdout, stderr) = trace.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("events lost so far"), "{stderr}");
    let summary_line = stdout.iter().find(|l| l.contains(" events in ")).expect("summary line");
    assert!(!summary_line.ends_with(", 0 lost"), "{summary_line}");
    assert!(stdout.iter().any(|l| l.contains("ring buffer was full")), "{stdout:?}");
}

#[test]
fn duration_ends_it_with_exit_0_and_a_text_summary() {
    let mut trace = Trace::start(&["--duration", "3s", "--comm", "ptwatch-workload"]);
    let report = run_workload(&["cuts", "16", "0", "2048", "1", "dontneed"]);
    let (status, stdout, stderr) = trace.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout[0].starts_with("TIME ") && stdout[0].contains("PAGES"), "{stdout:?}");
    let rows: Vec<&String> = stdout
        .iter()
        .filter(|l| l.split_whitespace().nth(1) == Some(&report.pid.to_string()) && l.contains(" dontneed "))
        .collect();
    assert_eq!(rows.len() as u64, report.calls, "one row per call: {stdout:?}");
    let pid = report.pid.to_string();
    let (calls, reclaimed) = (report.calls.to_string(), (report.vmpte_drop_kib / 4).to_string());
    let expected = [pid.as_str(), WORKLOAD_COMM, calls.as_str(), "16", "MiB", reclaimed.as_str()];
    assert!(
        stdout.iter().any(|l| l.split_whitespace().take(6).eq(expected.iter().copied())),
        "the summary's process line {expected:?}: {stdout:?}"
    );
    assert!(rows.iter().any(|r| r.contains("dontneed") && r.contains("+2 MiB")), "{rows:?}");
    assert!(stdout.iter().any(|l| l.contains(" events in ") && l.ends_with("0 lost")), "{stdout:?}");
    assert!(stdout.iter().any(|l| l.starts_with("EVENT ")), "{stdout:?}");
}

#[test]
fn trace_runs_next_to_an_agent_and_both_count() {
    let agent = AgentProcess::start(&["--harvest-interval", "1s", "--probe-mode", probe_mode_name()]);
    let trace = Trace::start(&["--json", "--comm", "ptwatch-workload"]);
    let report = run_workload(&["cuts", "64", "0", "2048", "1", "dontneed"]);
    // The agent harvests every second.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, stdout, stderr) = trace.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let run = parse_json(&stdout);
    assert_cuts_events(&of_pid(&run.events, report.pid), &report, 2048);
    let metrics = agent.metrics();
    let pid = report.pid.to_string();
    let sample =
        |family: &str| metrics.get(family, &[("pid", &pid)]).unwrap_or_else(|| panic!("no {family}{{pid={pid}}}"));
    assert_eq!(sample("ptwatch_madvise_dontneed_calls_total"), report.calls as f64);
    assert_eq!(sample("ptwatch_pte_pages_reclaimed_total") * 4.0, report.vmpte_drop_kib as f64);
    // The agent keeps counting after trace detached its own programs.
    let after = run_workload(&["cuts", "16", "0", "2048", "1", "dontneed"]);
    std::thread::sleep(Duration::from_millis(1500));
    let calls = agent.metrics().get("ptwatch_madvise_dontneed_calls_total", &[("pid", &after.pid.to_string())]);
    assert_eq!(calls, Some(after.calls as f64), "calls of pid {} after trace detached", after.pid);
    let (status, _) = agent.stop();
    assert!(status.success());
}

#[test]
fn bad_flags_are_one_line_and_exit_2() {
    let ptwatch = |args: &[&str]| Command::new(ptwatch_bin()).args(args).output().expect("run ptwatch");
    assert_one_line_error(&ptwatch(&["trace", "--pid", "0"]), 2, "--pid");
    assert_one_line_error(&ptwatch(&["trace", "--pid", "abc"]), 2, "abc");
    assert_one_line_error(&ptwatch(&["trace", "--cause", "nope"]), 2, "nope");
    assert_one_line_error(&ptwatch(&["trace", "--min-pages", "-1"]), 2, "-1");
    assert_one_line_error(&ptwatch(&["trace", "--duration", "0s"]), 2, "greater than zero");
    assert_one_line_error(&ptwatch(&["trace", "--buffer-kib", "6"]), 2, "power of two");
    assert_one_line_error(&ptwatch(&["trace", "--cgroup", "/no-such-cgroup-here"]), 2, "no cgroup at");
    assert_one_line_error(&ptwatch(&["trace", "--probe-mode", "magic"]), 2, "magic");
    assert_one_line_error(&ptwatch(&["trace", "extra"]), 2, "extra");
}

#[test]
fn help_explains_the_numbers() {
    let help = |command: &str| {
        let output = Command::new(ptwatch_bin()).args([command, "--help"]).output().expect("run ptwatch");
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let trace = help("trace");
    for needle in ["PAGES", "PT_RECLAIM", "dontneed", "free", "CAUSE", "LEVEL", "lost", "--min-pages", "Exit code"] {
        assert!(trace.contains(needle), "{needle:?} not in trace --help");
    }
    let agent = help("agent");
    for needle in ["PT_RECLAIM", "MADV_DONTNEED", "exit"] {
        assert!(agent.contains(needle), "{needle:?} not in agent --help");
    }
    let check = help("check");
    for needle in ["PT_RECLAIM", "probe", "metrics", "Exit code"] {
        assert!(check.contains(needle), "{needle:?} not in check --help");
    }
}
