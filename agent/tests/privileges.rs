//! Privileges of the real `ptwatch agent` (docs/install.md#privileges): what
//! it keeps after attaching, that it runs as an unprivileged user with
//! exactly the documented capabilities, and the one-line error when one is
//! missing.

mod support;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use ptwatch::privileges::{CapabilitySet, ThreadCredentials, CAP_BPF};
use support::{
    assert_one_line_error, free_port, ptwatch_bin, run_workload, AgentProcess, Held, Metrics, AGENT_VARIABLES,
};

/// The capabilities docs/install.md says the agent keeps after attaching:
/// none from Linux 6.5 on (map reads through held descriptors need none),
/// CAP_BPF before that when `kernel.unprivileged_bpf_disabled` is set.
fn documented_kept_set() -> CapabilitySet {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut numbers = release.trim().split(['.', '-']).map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let unprivileged_bpf_disabled =
        std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").map(|s| s.trim() != "0").unwrap_or(true);
    if version >= (6, 5) || !unprivileged_bpf_disabled {
        CapabilitySet::EMPTY
    } else {
        CapabilitySet::of(&[CAP_BPF])
    }
}

/// Credentials of every thread of `pid`.
fn thread_credentials(pid: u32) -> Vec<(String, ThreadCredentials)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("agent threads");
    tasks
        .map(|task| {
            let task = task.expect("task entry");
            let status = std::fs::read_to_string(task.path().join("status")).expect("thread status");
            let name = task.file_name().to_string_lossy().into_owned();
            (name, ThreadCredentials::parse(&status).expect("Cap* lines in status"))
        })
        .collect()
}

/// The value of `family{pid="PID",…}`, if present.
fn per_process_value(metrics: &Metrics, family: &str, pid: u32) -> Option<f64> {
    metrics.get(family, &[("pid", &pid.to_string())])
}

/// A copy of the agent binary that any user may run (the build directory
/// may be closed to others), removed when dropped.
struct WorldExecutable(PathBuf);

impl WorldExecutable {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ptwatch-privileges-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let binary = dir.join("ptwatch");
        std::fs::copy(ptwatch_bin(), &binary).expect("copy ptwatch");
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod ptwatch");
        Self(binary)
    }
}

impl Drop for WorldExecutable {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `ptwatch agent --listen ADDR` as user and group 65534 (nobody) with
/// exactly `caps` (setpriv names, e.g. `bpf,perfmon`) inheritable and
/// ambient, so that they survive the exec into the agent.
fn agent_as_nobody(binary: &Path, caps: &str, addr: std::net::SocketAddr) -> Command {
    let plus: String = caps.split(',').filter(|c| !c.is_empty()).map(|c| format!(",+{c}")).collect();
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--inh-caps=-all{plus}"),
            &format!("--ambient-caps=-all{plus}"),
        ])
        .arg(binary)
        .args(["agent", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for name in AGENT_VARIABLES {
        command.env_remove(name);
    }
    command
}

#[test]
fn root_agent_keeps_only_the_documented_capabilities_and_still_counts() {
    let agent = AgentProcess::start(&[]).wait_ready();
    let kept = documented_kept_set();
    let threads = thread_credentials(agent.child.id());
    assert!(threads.len() > 1, "the agent is multi-threaded: every thread must be checked");
    for (tid, creds) in &threads {
        assert_eq!((creds.effective, creds.permitted), (kept, kept), "thread {tid}: {creds:?}");
        assert_eq!((creds.inheritable, creds.ambient), (CapabilitySet::EMPTY, CapabilitySet::EMPTY), "thread {tid}");
        // Root has CAP_SETPCAP, so the bounding set goes too: an exec cannot
        // bring anything back.
        assert_eq!(creds.bounding, kept, "thread {tid}: bounding set");
        assert!(creds.no_new_privs, "thread {tid}: no_new_privs");
    }

    // A workload started after the drop is still counted exactly.
    let report = run_workload(&["cuts", "16", "0", "2048", "1", "dontneed"]);
    assert!(report.vmpte_drop_kib >= 16 / 2 * 4, "PT_RECLAIM should reclaim here: {report:?}");
    let metrics = agent.metrics();
    assert_eq!(
        per_process_value(&metrics, "ptwatch_pte_pages_reclaimed_total", report.pid),
        Some((report.vmpte_drop_kib / 4) as f64),
        "reclaim of pid {} after the drop",
        report.pid
    );
    assert_eq!(
        per_process_value(&metrics, "ptwatch_madvise_dontneed_calls_total", report.pid),
        Some(report.calls as f64)
    );

    let (status, stderr) = agent.stop();
    assert!(status.success(), "a capability-less agent still detaches and exits cleanly: {status:?}\n{stderr}");
    let logged = stderr.lines().find(|l| l.contains("capabilities dropped")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(logged.contains("CAP_SYS_ADMIN") && logged.contains("CAP_BPF"), "what was dropped is logged: {logged}");
}

#[test]
fn unprivileged_user_with_the_documented_capabilities_counts_reclaim() {
    let binary = WorldExecutable::new("ok");
    // Without CAP_SYS_ADMIN the walk cannot be calibrated and reclaim is
    // measured through pgtables_bytes: exact for this single-threaded
    // workload too.
    for (caps, accounting) in [
        ("bpf,perfmon,dac_read_search", "pgtables_bytes"),
        ("bpf,perfmon,dac_read_search,sys_admin", "page_table_walk"),
    ] {
        let addr = free_port();
        let agent = AgentProcess::spawn(agent_as_nobody(&binary.0, caps, addr), addr).wait_ready();
        let granted = CapabilitySet::parse_names(caps).expect("capability names");
        let kept = documented_kept_set().intersection(granted);
        for (tid, creds) in thread_credentials(agent.child.id()) {
            assert_eq!((creds.effective, creds.permitted), (kept, kept), "{caps}: thread {tid}: {creds:?}");
            assert_eq!(creds.ambient, CapabilitySet::EMPTY, "{caps}: thread {tid}");
            assert!(creds.no_new_privs, "{caps}: thread {tid}");
        }

        // A root-owned process that keeps its DONTNEEDed mapping: the agent,
        // user nobody, reads its /proc files too.
        let held = Held::start(16);
        let metrics = agent.metrics();
        assert_eq!(
            metrics.get("ptwatch_reclaim_accounting_info", &[("method", accounting)]),
            Some(1.0),
            "{caps}: accounting {accounting} expected:\n{}",
            metrics.text
        );
        assert!(held.report.vmpte_drop_kib > 0, "{:?}", held.report);
        assert_eq!(
            per_process_value(&metrics, "ptwatch_pte_pages_reclaimed_total", held.report.pid),
            Some((held.report.vmpte_drop_kib / 4) as f64),
            "{caps}: reclaim of pid {} equals its VmPTE drop",
            held.report.pid
        );
        let vmpte_kib = ptwatch::kernel::procfs::status_kib(held.report.pid, "VmPTE").expect("status").expect("VmPTE");
        assert_eq!(
            per_process_value(&metrics, "ptwatch_process_pagetable_bytes", held.report.pid),
            Some((vmpte_kib * 1024) as f64),
            "{caps}: page-table bytes of another user's process"
        );
        drop(held);
        let (status, stderr) = agent.stop();
        assert!(status.success(), "{caps}: {status:?}\n{stderr}");
        assert!(stderr.contains("unchanged (no CAP_SETPCAP)"), "{caps}: bounding set cannot be changed:\n{stderr}");
    }
}

fn run_to_exit(mut command: Command) -> Output {
    command.output().expect("run setpriv (util-linux)")
}

#[test]
fn missing_capabilities_are_named_in_one_line() {
    let binary = WorldExecutable::new("missing");
    for (caps, needle) in [
        ("", "missing capability CAP_PERFMON,CAP_BPF"),
        ("bpf", "missing capability CAP_PERFMON:"),
        ("perfmon,dac_read_search", "missing capability CAP_BPF:"),
        // Loading is allowed, but tracefs is root-only.
        ("bpf,perfmon", "CAP_DAC_READ_SEARCH"),
    ] {
        let output = run_to_exit(agent_as_nobody(&binary.0, caps, free_port()));
        assert_one_line_error(&output, 1, needle);
    }
    // Root without CAP_PERFMON (bounding set CAP_BPF only).
    let mut command = Command::new("setpriv");
    command
        .args(["--bounding-set=-all,+bpf", "--inh-caps=-all"])
        .arg(&binary.0)
        .args(["agent", "--listen", &free_port().to_string()])
        .stderr(Stdio::piped());
    assert_one_line_error(&run_to_exit(command), 1, "missing capability CAP_PERFMON:");
}
