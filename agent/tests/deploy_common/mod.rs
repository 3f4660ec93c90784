//! Helpers shared by the tests of `deploy/` and of the release artifacts
//! (`deploy_*.rs`): where the deploy files, the artifacts and the PyPI tools
//! are, child processes that are stopped when dropped, and the kernel's view
//! of a running agent process.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The version every artifact carries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Highest `systemd-analyze security` exposure accepted for the unit (0 is
/// best, 10 worst; "OK" ends at 4.9). The unit scores 2.2 with systemd 252:
/// what remains is the capabilities, host network and the bpf /
/// perf_event_open system calls the agent cannot do without.
pub const EXPOSURE_CEILING: f64 = 2.5;

/// Effective capabilities the unit grants: CAP_DAC_READ_SEARCH (2),
/// CAP_SYS_ADMIN (21), CAP_PERFMON (38), CAP_BPF (39).
pub const UNIT_CAPABILITIES: u64 = 1 << 2 | 1 << 21 | 1 << 38 | 1 << 39;

/// The virtual environment `cargo xtask setup --for test` installs the PyPI
/// tools into (xtask/src/setup/python.rs).
const PYTHON_VENV: &str = "/opt/ptwatch-dev/venv";

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `target/dist` of `cargo xtask dist`, named by `PTWATCH_DIST_DIR`
/// (`cargo xtask test` runs dist first and sets it).
pub fn dist_dir() -> PathBuf {
    let dir = std::env::var_os("PTWATCH_DIST_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!("PTWATCH_DIST_DIR is not set: run `cargo xtask test` (or `cargo xtask dist` and set it to target/dist)")
    });
    assert!(
        dir.join("SHA256SUMS").is_file(),
        "{} holds no release (no SHA256SUMS): run `cargo xtask dist`",
        dir.display()
    );
    dir
}

/// A file of the release in [`dist_dir`], which must exist.
pub fn artifact(name: &str) -> PathBuf {
    let path = dist_dir().join(name);
    assert!(path.is_file(), "{} is missing: `cargo xtask dist` did not write it", path.display());
    path
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ptwatch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn venv_tool(name: &str) -> PathBuf {
    let path = Path::new(PYTHON_VENV).join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup --for test` (it installs the PyPI tools)",
        path.display()
    );
    path
}

pub fn run(command: &mut Command, what: &str) -> Output {
    command.output().unwrap_or_else(|err| panic!("cannot run {what} ({command:?}): {err}"))
}

pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Run and require exit 0; stdout.
pub fn run_ok(command: &mut Command, what: &str) -> String {
    let output = run(command, what);
    assert!(output.status.success(), "{what} failed ({:?}):\n{}", output.status, text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `kubectl kustomize deploy/kubernetes`: the manifests as applied.
pub fn kustomize() -> String {
    let output = run(
        Command::new("kubectl").arg("kustomize").arg(deploy_dir().join("kubernetes")),
        "kubectl (needed to render deploy/kubernetes)",
    );
    assert!(output.status.success(), "kubectl kustomize failed:\n{}", text(&output));
    String::from_utf8(output.stdout).expect("UTF-8 manifests")
}

/// The documents of a multi-document YAML stream, as JSON values (PyYAML
/// from the tools' venv: the test crate has no YAML parser).
pub fn yaml_documents(yaml: &str) -> Vec<serde_json::Value> {
    use std::io::Write as _;
    let script = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))";
    let mut child = Command::new(venv_tool("python3"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 of the tools' venv");
    child.stdin.take().expect("stdin").write_all(yaml.as_bytes()).expect("feed the YAML");
    let output = child.wait_with_output().expect("python3");
    assert!(output.status.success(), "YAML did not parse:\n{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("JSON from python")
}

/// A child process stopped when dropped: SIGTERM, then SIGKILL after 20 s.
pub struct Guard(pub Child);

impl Guard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets it clean up.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `command` with stdout and stderr going to `log`.
pub fn spawn(command: &mut Command, what: &str, log: &Path) -> Guard {
    let log = std::fs::File::create(log).expect("log file");
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {what} ({command:?}): {err}"));
    Guard(child)
}

/// Poll `ready` every 200 ms for up to `seconds`; panic with `log` if it
/// never holds.
pub fn wait_for(what: &str, log: &Path, seconds: u64, ready: impl Fn() -> bool) {
    wait_until(what, seconds, ready, || std::fs::read_to_string(log).unwrap_or_default());
}

/// Poll `ready` every 200 ms for up to `seconds`; panic with what `context`
/// says (a log) if it never holds.
pub fn wait_until(what: &str, seconds: u64, ready: impl Fn() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} not ready within {seconds} s; its log:\n{}", context());
}

/// The `/proc/<pid>/status` of a `ptwatch` process with arguments `args`:
/// argv[0] is whatever its starter chose (systemd passes the unit's bare
/// `ptwatch`), so only its file name is compared.
pub fn status_of_ptwatch_with_args(args: &str) -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let argv = std::fs::read(entry.path().join("cmdline")).ok()?;
        let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
        let (argv0, rest) = argv.trim_end().split_once(' ')?;
        (Path::new(argv0).file_name()? == "ptwatch" && rest == args)
            .then(|| std::fs::read_to_string(entry.path().join("status")).ok())
            .flatten()
    })
}

pub fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_else(|| panic!("no {name} in {status}"))
}

/// What the unit promises about the agent process systemd started: not
/// root, the unit's bounding set, no capability beyond it, no_new_privs, a
/// seccomp filter.
pub fn assert_runs_confined_by_the_unit(status: &str) {
    let uid = status_field(status, "Uid:");
    assert!(!uid.starts_with("0\t") && !uid.starts_with("0 "), "runs as a dynamic user, not root: Uid {uid}");
    // The bounding set is the unit's (the agent may not shrink it without
    // CAP_SETPCAP); once attached the agent keeps at most those
    // (agent/src/privileges.rs drops what it no longer needs).
    let bounding = u64::from_str_radix(status_field(status, "CapBnd:"), 16).expect("CapBnd");
    assert_eq!(bounding, UNIT_CAPABILITIES, "bounding set {bounding:#x}");
    let effective = u64::from_str_radix(status_field(status, "CapEff:"), 16).expect("CapEff");
    assert_eq!(effective & !UNIT_CAPABILITIES, 0, "effective capabilities {effective:#x}");
    assert_eq!(status_field(status, "NoNewPrivs:"), "1");
    assert_eq!(status_field(status, "Seccomp:"), "2", "seccomp filter mode");
}

/// The overall exposure in a `systemd-analyze security` report.
pub fn exposure(report: &str) -> f64 {
    report
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for ptwatch.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"))
}
