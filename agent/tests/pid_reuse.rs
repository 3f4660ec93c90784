//! A pid that two processes hold one after the other, seen by the real
//! agent: two series told apart by `start_time`, each with its own
//! process' counts, and no counter series ever going down.
//!
//! The test lowers `kernel.pid_max` so that pids come round within
//! seconds: it changes the machine, so it is `#[ignore]`d and runs only in
//! a throw-away guest (`cargo xtask vm-test`, the preemptible boot, with
//! `--ignored`).

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use support::{run_workload, AgentProcess, CounterWatch, Metrics};

/// Small enough to wrap in a few hundred spawns, above the kernel's
/// minimum (301).
const PID_MAX: u32 = 1024;
/// Where pid allocation starts again after `pid_max` (the kernel's
/// `RESERVED_PIDS`).
const FIRST_AFTER_WRAP: u32 = 300;

/// Restores `kernel.pid_max` when dropped (the guest is thrown away anyway,
/// but a test that fails half-way should leave nothing odd behind).
struct PidMax(String);

impl PidMax {
    fn lower(to: u32) -> Self {
        let before = std::fs::read_to_string("/proc/sys/kernel/pid_max").expect("read kernel.pid_max");
        std::fs::write("/proc/sys/kernel/pid_max", to.to_string()).expect("lower kernel.pid_max (needs root)");
        Self(before)
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/pid_max", self.0.trim());
    }
}

/// Spawn short-lived processes until the next pid handed out should be
/// `pid` (the kernel hands pids out in order, wrapping at `pid_max`);
/// false if that did not happen within two rounds.
fn burn_pids_until_next_is(pid: u32) -> bool {
    for _ in 0..2 * PID_MAX {
        let child = Command::new("true").spawn().expect("spawn true");
        let got = child.id();
        let mut child = child;
        let _ = child.wait();
        let next = if got + 1 >= PID_MAX { FIRST_AFTER_WRAP } else { got + 1 };
        if next == pid {
            return true;
        }
    }
    false
}

/// Series of `family` with `pid`, by `start_time`.
fn by_start_time(metrics: &Metrics, family: &str, pid: u32) -> Vec<(String, f64)> {
    let mut series: Vec<(String, f64)> = metrics
        .samples(family, &[("pid", &pid.to_string())])
        .into_iter()
        .map(|(labels, value)| (labels.get("start_time").cloned().unwrap_or_default(), value))
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    series
}

#[test]
#[ignore = "lowers kernel.pid_max: runs in a throw-away guest (cargo xtask vm-test)"]
fn a_recycled_pid_is_two_series_and_no_counter_goes_down() {
    let _pid_max = PidMax::lower(PID_MAX);
    let agent = AgentProcess::start(&["--harvest-interval", "200ms", "--top-processes", "1000", "--exited-ttl", "10m"])
        .wait_ready();
    let mut watch = CounterWatch::default();
    let calls = "ptwatch_madvise_dontneed_calls_total";
    let wait_for = |watch: &mut CounterWatch, what: &str, done: &dyn Fn(&Metrics) -> bool| -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metrics = agent.metrics();
            watch.observe(&metrics);
            if done(&metrics) {
                return metrics;
            }
            assert!(Instant::now() < deadline, "{what} within 20 s:\n{}", metrics.text);
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // Pids under 300 are never handed out again after a wrap: move past
    // them first (a fresh guest may not have reached them yet).
    for _ in 0..PID_MAX {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let got = child.id();
        let _ = child.wait();
        if got >= FIRST_AFTER_WRAP {
            break;
        }
    }
    // The first process: 3 DONTNEED calls, then it exits.
    let first = run_workload(&["cuts", "6", "0", "2048", "1", "dontneed"]);
    let pid = first.pid;
    assert!(pid >= FIRST_AFTER_WRAP, "pid {pid} would never come round");
    wait_for(&mut watch, "the first process' series", &|m| {
        by_start_time(m, calls, pid).iter().any(|(_, v)| *v == first.calls as f64)
    });

    // The second: the same pid, a different number of calls. Other
    // threads (the agent's, the harness') take pids too: try a few times.
    let mut second = None;
    for _ in 0..5 {
        assert!(burn_pids_until_next_is(pid), "pid {pid} never came round (pid_max {PID_MAX})");
        let report = run_workload(&["cuts", "10", "0", "2048", "1", "dontneed"]);
        if report.pid == pid {
            second = Some(report);
            break;
        }
    }
    let second = second.unwrap_or_else(|| panic!("no second process got pid {pid} in 5 tries"));
    assert_ne!(first.calls, second.calls, "the two processes must be told apart by their counts");

    let metrics = wait_for(&mut watch, "two series for the pid", &|m| by_start_time(m, calls, pid).len() == 2);
    let series = by_start_time(&metrics, calls, pid);
    assert_ne!(series[0].0, series[1].0, "two start times: {series:?}");
    // The older start time is the first process.
    assert_eq!(
        series.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        [first.calls as f64, second.calls as f64],
        "each series counts its own process: {series:?}"
    );
    let bytes = by_start_time(&metrics, "ptwatch_madvise_dontneed_bytes_total", pid);
    assert_eq!(bytes.iter().map(|(_, v)| *v).collect::<Vec<_>>(), [first.bytes as f64, second.bytes as f64]);

    // A few more harvests: the first process' series stays as it was, and
    // nothing goes down anywhere.
    for _ in 0..10 {
        let metrics = agent.metrics();
        watch.observe(&metrics);
        assert_eq!(by_start_time(&metrics, calls, pid), series);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(watch.scrapes >= 12 && watch.series() > 0);
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
}
