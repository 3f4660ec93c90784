//! `ptwatch scan` against real processes, through the real binary: a
//! workload that DONTNEEDs 256 MiB and keeps the mapping must show its empty
//! PTE tables on a kernel without PT_RECLAIM (6.1) and about none on one with
//! it (this host, 6.18); one that DONTNEEDs in 1 MiB halves keeps them on
//! every kernel. The agent's periodic estimator, which shares scan's code,
//! must give the same numbers. Run here by `cargo xtask test`, and inside
//! the VMs with `PTWATCH_EXPECT_PT_RECLAIM` set from the kernel's config.

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::{expect_pt_reclaim, ptwatch_bin, workload_bin, Held};

fn ptwatch(args: &[&str]) -> Output {
    Command::new(ptwatch_bin()).args(args).output().expect("run ptwatch")
}

/// Run `ptwatch ARGS --json`, which must succeed, and parse its output.
fn scan_json(args: &[&str]) -> Value {
    let output = ptwatch(&[args, &["--json"]].concat());
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("scan prints valid JSON")
}

/// `VmPTE` (kB) of `pid` once two reads 20 ms apart agree: a held workload
/// prints its report and then blocks on stdin, allocating nothing, so this
/// is what it reported unless its page tables are still changing.
fn settled_vmpte_kib(pid: u32) -> u64 {
    let read = || ptwatch::kernel::procfs::status_kib(pid, "VmPTE").expect("read status").expect("VmPTE");
    let mut last = read();
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("VmPTE of {pid} kept changing for 2 s");
}

fn num(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_else(|| panic!("no number {key:?} in {value}"))
}

/// Exactly one line of stderr, with `needle` in it, and exit code `code`.
fn assert_one_line_error(output: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "exit code; stderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one error line expected, got:\n{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(output.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn dontneed_leaves_empty_tables_only_without_pt_reclaim() {
    let held = Held::start(256);
    let pid = held.report.pid.to_string();
    let vmpte_kib = settled_vmpte_kib(held.report.pid);
    let scan = scan_json(&["scan", &pid]);
    eprintln!("workload {:?}, VmPTE {vmpte_kib} kB\nscan {scan:#}", held.report);
    assert_eq!(settled_vmpte_kib(held.report.pid), vmpte_kib, "the workload's page tables changed during the scan");
    assert_eq!(num(&scan, "pid"), u64::from(held.report.pid));
    assert_eq!(held.report.expected_tables, 128);
    // Nothing else runs in the workload, and it waits on stdin without
    // allocating (a heap growing across a 2 MiB boundary would add a table):
    // VmPTE is what it measured.
    assert_eq!(vmpte_kib, held.report.vmpte_end_kib, "VmPTE now and as the workload measured it");
    assert_eq!(num(&scan, "vmpte_kib"), vmpte_kib);
    assert_eq!(num(&scan, "tables"), vmpte_kib / 4);
    let (tables, needed, empty) = (num(&scan, "tables"), num(&scan, "needed_tables"), num(&scan, "empty_tables"));
    assert_eq!(empty, tables.saturating_sub(needed));
    assert_eq!(num(&scan, "empty_bytes"), empty * 4096);
    assert_eq!(
        needed,
        num(&scan, "needed_pte_tables") + num(&scan, "needed_pmd_tables") + num(&scan, "needed_pud_tables")
    );

    // The mapping is listed first either way: 128 aligned spans plus what
    // of its 2 MiB slack is aligned, all empty.
    let regions = scan["regions"].as_array().expect("regions");
    let first = &regions[0];
    assert!(num(first, "empty_spans") >= 128, "{first}");
    assert_eq!(first["name"], "[anon]");
    let size = u64::from_str_radix(first["end"].as_str().expect("end"), 16).expect("hex")
        - u64::from_str_radix(first["start"].as_str().expect("start"), 16).expect("hex");
    assert_eq!(size, (256 + 4) << 20, "the workload's mapping: 256 MiB and 2 spans of slack");

    if expect_pt_reclaim() {
        assert!(empty <= 2, "PT_RECLAIM freed the tables; {empty} empty left");
    } else {
        assert!(
            empty >= held.report.expected_tables,
            "{empty} empty tables, {} left behind",
            held.report.expected_tables
        );
        // Not more than what is left plus an upper-level table or two.
        assert!(empty <= held.report.expected_tables + 4, "{empty}");
    }

    // The text report says the same.
    let text = ptwatch(&["scan", &pid]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with(&format!("pid {pid} (")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("empty") && l.split_whitespace().nth(1) == Some(&empty.to_string())));
    assert!(text.contains("[anon]"), "{text}");
}

#[test]
fn a_fresh_process_has_no_empty_tables() {
    let mut sleep = Command::new("sleep").arg("60").spawn().expect("spawn sleep");
    // Let exec finish so that the scan sees sleep, not the forked test.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let scan = scan_json(&["scan", &sleep.id().to_string()]);
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert_eq!(scan["comm"], "sleep");
    assert!(num(&scan, "tables") > 0);
    assert_eq!(num(&scan, "empty_tables"), 0, "{scan:#}");
    assert!(num(&scan, "present_pages") > 0);
}

#[test]
fn all_lists_the_workload() {
    let held = Held::start(256);
    let report = scan_json(&["scan", "--all", "--top", "100000"]);
    let processes = report["processes"].as_array().expect("processes");
    let empties: Vec<u64> = processes.iter().map(|p| num(p, "empty_tables")).collect();
    assert!(empties.windows(2).all(|w| w[0] >= w[1]), "sorted by empty tables: {empties:?}");
    assert_eq!(num(&report, "empty_tables"), empties.iter().sum::<u64>());
    assert_eq!(num(&report, "scanned"), processes.len() as u64);
    let workload = processes
        .iter()
        .find(|p| num(p, "pid") == u64::from(held.report.pid))
        .unwrap_or_else(|| panic!("workload {} not in --all", held.report.pid));
    assert!(num(&workload["biggest_region"], "empty_spans") >= 128, "{workload}");
    if !expect_pt_reclaim() {
        assert!(num(workload, "empty_tables") >= 128, "{workload}");
    }

    // --top cuts the list, not the totals; the text table names the workload.
    let top1 = scan_json(&["scan", "--all", "--top", "1"]);
    assert_eq!(top1["processes"].as_array().map(Vec::len), Some(1));
    let text = ptwatch(&["scan", "--all", "--top", "100000"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|l| l.split_whitespace().next() == Some(&held.report.pid.to_string())),
        "workload not in:\n{text}"
    );
    assert!(text.lines().last().is_some_and(|l| l.contains("processes scanned")), "{text}");
}

#[test]
fn bad_input_is_one_line() {
    // Beyond pid_max: no such process.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    assert_one_line_error(&ptwatch(&["scan", &(pid_max + 1).to_string()]), 1, "no process with pid");
    // A process that has exited.
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let gone_pid = gone.id().to_string();
    gone.wait().expect("wait");
    assert_one_line_error(&ptwatch(&["scan", &gone_pid, "--json"]), 1, "no process with pid");
    // Usage errors.
    assert_one_line_error(&ptwatch(&["scan"]), 2, "<PID|--all>");
    assert_one_line_error(&ptwatch(&["scan", "--json"]), 2, "<PID|--all>");
    assert_one_line_error(&ptwatch(&["scan", "1", "--all"]), 2, "cannot be used with");
    assert_one_line_error(&ptwatch(&["scan", "--all", "--top", "abc"]), 2, "--top");
    assert_one_line_error(&ptwatch(&["scan", "abc"]), 2, "abc");
    assert_one_line_error(&ptwatch(&["scan", "0"]), 2, "PID");
    assert_one_line_error(&ptwatch(&["scan", "-5"]), 2, "-5");
}

#[test]
fn kernel_threads_and_other_users_are_one_line() {
    // kthreadd is pid 2 when the test sees the host's pid namespace.
    if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
        assert_one_line_error(&ptwatch(&["scan", "2"]), 1, "no user address space");
    }
    let held = Held::start(4);
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(ptwatch_bin())
        .args(["scan", &held.report.pid.to_string()])
        .output()
        .expect("setpriv (util-linux)");
    assert_one_line_error(&output, 1, "permission denied");
}

#[test]
fn help_explains_the_numbers() {
    let output = ptwatch(&["scan", "--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "VmPTE",
        "pagemap",
        "2 MiB",
        "needed",
        "empty",
        "upper bound",
        "Exit code",
        "--top",
        "--all",
        "--budget",
        "sampled",
    ] {
        assert!(help.contains(needle), "{needle:?} not in scan --help");
    }
}

/// A `ptwatch-workload halves|whole|sparse` process, alive until dropped.
struct HeldEmpty {
    child: std::process::Child,
    report: ptwatch_workload::sparse::EmptyReport,
}

impl HeldEmpty {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead as _;
        let mut child = Command::new(workload_bin())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the workload");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("report");
        let report = serde_json::from_str(&line).unwrap_or_else(|err| panic!("{args:?}: report {line:?}: {err}"));
        Self { child, report }
    }

    fn pid(&self) -> String {
        self.report.report.pid.to_string()
    }

    /// Page-table pages the kernel kept for the workload's range (VmPTE
    /// growth since before it mapped anything).
    fn kept_tables(&self) -> u64 {
        (self.report.report.vmpte_end_kib - self.report.vmpte_before_kib) / 4
    }
}

impl Drop for HeldEmpty {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The agent's estimator, one pass for `pid`, with a budget that lets it
/// read everything even in an emulated VM (the budget is tested in
/// `empty_tables.rs`; here, that both give the same answer).
fn agent_estimate(pid: u32) -> ptwatch::empty_tables::ProcessEmpty {
    use ptwatch::empty_tables::{Estimator, Settings, Tracked};
    let settings = Settings { interval: std::time::Duration::from_secs(60), budget: std::time::Duration::from_secs(5) };
    let mut estimator = Estimator::new(settings);
    let snapshot = estimator.pass(&[Tracked { pid, own_series: true, ..Tracked::default() }]);
    snapshot.process(pid, None).unwrap_or_else(|| panic!("{pid} not estimated")).clone()
}

#[test]
fn dontneed_in_halves_keeps_every_table_on_every_kernel() {
    let held = HeldEmpty::start(&["halves", "512"]);
    let kept = held.kept_tables();
    eprintln!("{:?}: the kernel kept {kept} tables", held.report);
    assert_eq!(held.report.report.vmpte_drop_kib, 0, "no call covered a whole 2 MiB span");
    assert!((256..=258).contains(&kept), "{kept}");
    let scan = scan_json(&["scan", &held.pid()]);
    assert_eq!(scan["method"], "exact");
    let empty = num(&scan, "empty_tables");
    assert!(empty.abs_diff(kept) <= 1, "scan: {empty} empty, the kernel kept {kept}");
    assert_eq!(num(&scan, "empty_tables_min"), empty);
    assert_eq!(num(&scan, "empty_tables_max"), empty);
    let agent = agent_estimate(held.report.report.pid);
    assert_eq!(agent.empty.estimate, empty, "the agent and scan share one estimator");
}

#[test]
fn whole_span_dontneed_leaves_no_table_with_pt_reclaim_and_every_one_without() {
    let held = HeldEmpty::start(&["whole", "256"]);
    let kept = held.kept_tables();
    eprintln!("{:?}: the kernel kept {kept} tables", held.report);
    let scan = scan_json(&["scan", &held.pid()]);
    let agent = agent_estimate(held.report.report.pid);
    let empty = num(&scan, "empty_tables");
    assert_eq!(agent.empty.estimate, empty);
    if expect_pt_reclaim() {
        assert_eq!(held.report.report.vmpte_drop_kib, 128 * 4, "PT_RECLAIM freed the 128 tables");
        assert!(empty <= 2, "{empty} empty tables left");
    } else {
        // The tables left are the empty ones: the gauge must say as many.
        assert_eq!(held.report.report.vmpte_drop_kib, 0, "no PT_RECLAIM");
        assert!((128..=130).contains(&kept), "{kept}");
        assert!(empty.abs_diff(kept) <= 1, "{empty} empty, {kept} left");
    }
}

/// `scan`'s sampled intervals (the function the CLI calls, 100 seeds, a
/// 1 ms budget) hold `truth` (±1 for a table the process may add) about 99
/// times in 100. A single interval misses once in 100 by design, which
/// made a one-sample assertion fail about one CI run in ten (it ran in 12
/// kernels); 7 misses or more in 100 has a chance of 1e-4 if the interval
/// is right, while a biased or too narrow one (a miss in 5) fails surely.
fn assert_intervals_hold(pid: u32, truth: u64) {
    use ptwatch::scan::{
        budget::{Budget, CostModel},
        process::{scan, Options},
    };
    const RUNS: u64 = 100;
    let geometry = ptwatch::scan::geometry();
    let mut misses = Vec::new();
    for seed in 0..RUNS {
        let budget = Budget::cpu(std::time::Duration::from_millis(1));
        let options = Options { top: 0, budget, seed };
        let scan = scan(pid, geometry, options, &mut CostModel::default()).expect("scan the held workload");
        assert_eq!(scan.method, ptwatch::scan::Method::Sampled, "{scan:?}");
        if !(scan.empty_tables_min <= truth + 1 && truth <= scan.empty_tables_max + 1) {
            misses.push((scan.empty_tables_min, scan.empty_tables, scan.empty_tables_max, scan.effort.samples));
        }
    }
    eprintln!("{} of {RUNS} sampled intervals missed {truth}: {misses:?}", misses.len());
    assert!(
        misses.len() <= 6,
        "{} of {RUNS} intervals (min, estimate, max, samples) missed {truth}: {misses:?}",
        misses.len()
    );
}

#[test]
fn scan_says_how_it_estimated() {
    // 4 GiB with one page per span, half DONTNEEDed again: 1,024 empty
    // tables on every kernel.
    let held = HeldEmpty::start(&["sparse", "4", "2"]);
    let truth = held.report.empty_tables;
    assert_eq!(truth, 1024);
    let exact = scan_json(&["scan", &held.pid()]);
    assert_eq!(exact["method"], "exact");
    assert!(num(&exact, "empty_tables").abs_diff(truth) <= 1, "{exact:#}");
    assert_eq!(num(&exact["effort"], "spans_estimated"), 0);

    // A budget too small for smaps and for reading 2,048 spans: sampled,
    // with an interval around the estimate. Whether the interval holds the
    // truth is a 99 % matter: asserted over many samples below, not here.
    let sampled = scan_json(&["scan", &held.pid(), "--budget", "1ms"]);
    assert_eq!(sampled["method"], "sampled", "{sampled:#}");
    assert_eq!(sampled["effort"]["smaps_read"], false);
    let (min, max) = (num(&sampled, "empty_tables_min"), num(&sampled, "empty_tables_max"));
    assert!(min <= num(&sampled, "empty_tables") && num(&sampled, "empty_tables") <= max);
    assert!(min < max, "a sample leaves a range: {sampled:#}");
    assert!(num(&sampled["effort"], "samples") >= 32);
    assert!(sampled["regions"][0]["estimated"] == true, "{sampled:#}");
    assert_intervals_hold(held.report.report.pid, truth);

    let text = ptwatch(&["scan", &held.pid(), "--budget", "1ms"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().any(|l| l.starts_with("method       sampled:")), "{text}");
    assert!(text.contains("(99 % interval)") && text.contains("(estimated from the sample)"), "{text}");
    let text = ptwatch(&["scan", &held.pid()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().any(|l| l.starts_with("method       exact:")), "{text}");
    assert!(text.contains("how many empty tables exist"), "{text}");
    assert_one_line_error(&ptwatch(&["scan", &held.pid(), "--budget", "0"]), 2, "--budget");
}
