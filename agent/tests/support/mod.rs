//! Helpers shared by the integration tests.
//!
//! These tests load the real eBPF programs into the running kernel and run
//! real workloads, so they need root, the built object and the workload
//! binary (`cargo xtask test` provides all three). Missing prerequisites
//! fail loudly; nothing is skipped.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use ptwatch::{
    aggregate::{Aggregator, CgroupLabels, Counts, KernelMaps, ProcessRecord},
    kernel::btf::VMLINUX_BTF,
    probes::{plan::ProbeMode, LoadOptions, Probes},
};
use ptwatch_common::{NodeCounters, ProcessKey};
use ptwatch_workload::Report;

fn binary_from_env(var: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run the suite with `cargo xtask test`"));
    assert!(path.exists(), "{var}={} does not exist", path.display());
    path
}

pub fn workload_bin() -> PathBuf {
    binary_from_env("PTWATCH_WORKLOAD_BIN")
}

pub fn ptwatch_bin() -> PathBuf {
    binary_from_env("PTWATCH_BIN")
}

/// The probe mode under test: `PTWATCH_TEST_PROBE_MODE` (the VM tests force
/// each mode in turn), else auto.
pub fn probe_mode() -> ProbeMode {
    match std::env::var("PTWATCH_TEST_PROBE_MODE").as_deref() {
        Ok("fentry") => ProbeMode::Fentry,
        Ok("kprobe") => ProbeMode::Kprobe,
        Ok("tracepoint") => ProbeMode::Tracepoint,
        Ok("auto") | Err(_) => ProbeMode::Auto,
        Ok(other) => panic!("PTWATCH_TEST_PROBE_MODE={other}: expected fentry, kprobe, tracepoint or auto"),
    }
}

/// Run `ptwatch-workload ARGS` to completion and return its report.
pub fn run_workload(args: &[&str]) -> Report {
    let output = Command::new(workload_bin()).args(args).output().expect("spawn workload");
    assert!(output.status.success(), "workload {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("workload prints a JSON report")
}

/// Run `ptwatch-workload unmap-paced MIB`: `before` runs once its region is
/// touched, right before the go of its munmap, `after` once the munmap's
/// report is read, both given the workload's pid. Returns the munmap's
/// report and what both returned: what a test observes around the munmap
/// alone (the process's other frees, its loader's at start-up say, depend
/// on where the kernel placed things).
pub fn unmap_paced<B, A>(mib: u32, before: impl FnOnce(u32) -> B, after: impl FnOnce(u32) -> A) -> (Report, B, A) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut child = Command::new(workload_bin())
        .args(["unmap-paced", &mib.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the unmap-paced workload");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the workload's first report");
    let before = before(child.id());
    writeln!(stdin).expect("the munmap's go");
    line.clear();
    stdout.read_line(&mut line).expect("the workload's report");
    let after = after(child.id());
    drop(stdin);
    assert!(child.wait().expect("wait for the workload").success(), "unmap-paced workload failed");
    let report = serde_json::from_str(&line).unwrap_or_else(|err| panic!("workload report {line:?}: {err}"));
    (report, before, after)
}

/// One process as a test sees it after a harvest: owned, its counts
/// summed over every name it had.
#[derive(Clone, Debug)]
pub struct Process {
    pub key: ProcessKey,
    pub pid: u32,
    /// The name it has now.
    pub comm: String,
    pub counts: Counts,
    pub exited: bool,
    /// cgroup v2 id the kernel captured (0: none).
    pub cgroup_id: u64,
    pub cgroup: Option<CgroupLabels>,
    /// `VmPTE` in bytes while alive.
    pub pagetable_bytes: Option<u64>,
}

impl Process {
    fn of(record: &ProcessRecord) -> Self {
        Self {
            key: record.key,
            pid: record.pid(),
            comm: record.series.comm.to_string(),
            counts: record.total(),
            exited: !record.is_live(),
            cgroup_id: record.cgroup_id,
            cgroup: record.cgroup.as_deref().cloned(),
            pagetable_bytes: record.pagetable_bytes,
        }
    }

    /// PTE pages PT_RECLAIM freed.
    pub fn reclaimed(&self) -> u64 {
        self.counts.reclaimed()
    }
}

/// The real probes, attached for the lifetime of the value, and an
/// aggregator of their maps (exited processes kept for 600 s, every process
/// with a series of its own: whatever else runs on the machine, the test's
/// own processes are exported).
pub struct Attached {
    pub probes: Probes,
    pub aggregator: Aggregator<KernelMaps>,
}

impl Attached {
    pub fn new() -> Self {
        Self::with_options(LoadOptions::default())
    }

    pub fn with_options(options: LoadOptions) -> Self {
        ptwatch::kernel::support::require_privileges().expect("integration tests must run as root");
        ptwatch::kernel::support::ensure_tracefs().expect("tracefs");
        let btf = ptwatch::kernel::btf::KernelBtf::load(Path::new(VMLINUX_BTF)).expect("kernel BTF");
        let mut probes = Probes::load_with(btf, probe_mode(), options).expect("load and attach the eBPF programs");
        let maps = probes.take_maps().expect("maps");
        let every_process = ptwatch::aggregate::Selection { top: 0, ..ptwatch::aggregate::Selection::default() };
        let aggregator =
            Aggregator::new(KernelMaps::new(maps), std::time::Duration::from_secs(600)).with_selection(every_process);
        Self { probes, aggregator }
    }

    /// A full harvest now.
    pub fn harvest(&mut self) -> &Aggregator<KernelMaps> {
        self.harvest_at(Instant::now())
    }

    /// A full harvest as if at `now` (later than now: to expire records).
    pub fn harvest_at(&mut self, now: Instant) -> &Aggregator<KernelMaps> {
        self.aggregator.harvest(now).expect("read kernel maps");
        &self.aggregator
    }

    /// Node totals after a harvest.
    pub fn node(&mut self) -> NodeCounters {
        self.harvest().snapshot().node
    }

    /// Every process after a harvest.
    pub fn processes(&mut self) -> Vec<Process> {
        self.harvest().records().map(Process::of).collect()
    }

    /// The process `pid` after a harvest, if counted (the newest when the
    /// pid was recycled).
    pub fn find(&mut self, pid: u32) -> Option<Process> {
        self.harvest().records_of(pid).last().map(Process::of)
    }

    /// The process `pid`, which must have been counted.
    pub fn process(&mut self, pid: u32) -> Process {
        self.find(pid).unwrap_or_else(|| panic!("no counters for pid {pid}"))
    }
}

/// Whether the running kernel has PT_RECLAIM; the host of this project does.
pub fn pt_reclaim() -> bool {
    ptwatch::kernel::support::pt_reclaim_works().expect("PT_RECLAIM check")
}

/// A `ptwatch agent` process serving on a free loopback port; killed (with
/// SIGTERM) when dropped.
pub struct AgentProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl AgentProcess {
    pub fn start(extra: &[&str]) -> Self {
        let addr = free_port();
        let mut command = agent_command();
        command.args(["--listen", &addr.to_string()]).args(extra);
        Self::spawn(command, addr).wait_until("serve /metrics", |agent| {
            http_get(agent.addr, "/metrics").is_some_and(|(status, _)| status == 200)
        })
    }

    /// Start `command` (from [`agent_command`]), which should listen on
    /// `addr`, without waiting for anything.
    pub fn spawn(mut command: Command, addr: std::net::SocketAddr) -> Self {
        let child = command.spawn().expect("spawn ptwatch agent");
        Self { child, addr }
    }

    /// Wait until `/readyz` answers 200: probes attached, privileges
    /// dropped, first harvest done.
    pub fn wait_ready(self) -> Self {
        self.wait_until("become ready", |a| http_get(a.addr, "/readyz").is_some_and(|(status, _)| status == 200))
    }

    /// Wait up to 30 s for `ready`; panic with the agent's stderr if it
    /// exits or never gets there.
    pub fn wait_until(mut self, what: &str, ready: impl Fn(&Self) -> bool) -> Self {
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while Instant::now() < deadline {
            if ready(&self) {
                return self;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    use std::io::Read as _;
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("ptwatch agent exited ({status}) before it could {what}:\n{stderr}");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("ptwatch agent did not {what} on {} within 30 s", self.addr);
    }

    pub fn scrape(&self) -> String {
        let (status, body) = http_get(self.addr, "/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Scrape and parse `/metrics`.
    pub fn metrics(&self) -> Metrics {
        Metrics::parse(self.scrape())
    }

    /// SIGTERM and wait; returns the exit status and what it wrote to stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for agent");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            use std::io::Read as _;
            let _ = pipe.read_to_string(&mut stderr);
        }
        std::mem::forget(self);
        (status, stderr)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `N` different loopback addresses nobody listens on right now. They are
/// picked while all are held: picking one at a time can return the same
/// ephemeral port twice.
pub fn free_ports<const N: usize>() -> [std::net::SocketAddr; N] {
    let held: Vec<std::net::TcpListener> =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port")).collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr"))
}

/// A loopback address with a port nobody listens on right now.
pub fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

/// Every variable `ptwatch agent` reads (docs/configuration.md).
pub const AGENT_VARIABLES: &[&str] = &[
    "PTWATCH_CONFIG",
    "PTWATCH_LISTEN",
    "PTWATCH_EXITED_TTL",
    "PTWATCH_HARVEST_INTERVAL",
    "PTWATCH_PROBE_MODE",
    "PTWATCH_BTF",
    "PTWATCH_TOP_PROCESSES",
    "PTWATCH_RANK_PROCESSES_BY",
    "PTWATCH_MIN_PROCESS_PAGETABLE_BYTES",
    "PTWATCH_MIN_PROCESS_RECLAIMED_PAGES",
    "PTWATCH_MAX_TRACKED_PROCESSES",
    "PTWATCH_LOG",
    "PTWATCH_LOG_FORMAT",
    "PTWATCH_TLS_CERT",
    "PTWATCH_TLS_KEY",
    "PTWATCH_BASIC_AUTH_USER",
    "PTWATCH_BASIC_AUTH_PASSWORD_FILE",
    "PTWATCH_BEARER_TOKEN_FILE",
    "PTWATCH_HTTP_MAX_CONNECTIONS",
    "PTWATCH_HTTP_HEADER_TIMEOUT",
    "PTWATCH_HTTP_IDLE_TIMEOUT",
    "PTWATCH_HTTP_WRITE_TIMEOUT",
    "PTWATCH_HTTP_MAX_HEADER_BYTES",
    "PTWATCH_HTTP_MAX_CONCURRENT_SCRAPES",
];

/// `ptwatch agent` with stderr captured and none of the agent's `PTWATCH_*`
/// variables inherited, so that each test controls its configuration.
pub fn agent_command() -> Command {
    let mut command = Command::new(ptwatch_bin());
    command.arg("agent").stderr(std::process::Stdio::piped());
    for name in AGENT_VARIABLES {
        command.env_remove(name);
    }
    command
}

/// A minimal HTTP/1.1 GET: status code and body, or None if nobody answers.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, path, &[]).map(|r| (r.status, r.body))
}

/// What [`http_request`] and [`https_request`] return.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Status line and headers, as received.
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// GET `path` over plain HTTP with extra `headers`; None if nobody answers.
pub fn http_request(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<HttpResponse> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    exchange(&mut stream, addr, path, headers)
}

/// GET `path` over TLS, trusting only `root` (DER), as server name
/// `localhost`; None if the connection or the handshake fails.
pub fn https_request(
    addr: std::net::SocketAddr,
    root: &[u8],
    path: &str,
    headers: &[(&str, &str)],
) -> Option<HttpResponse> {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(root.to_vec())).expect("trust the test certificate");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let tcp = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    exchange(&mut stream, addr, path, headers)
}

fn exchange(
    stream: &mut (impl std::io::Read + std::io::Write),
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<HttpResponse> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    // A TLS peer that closes without close_notify ends in an error after
    // the whole response has arrived: keep what was read.
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Some(HttpResponse { status, head: head.to_owned(), body })
}

/// Exactly one line of stderr, with `needle` in it, and exit code `code`.
pub fn assert_one_line_error(output: &std::process::Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ") && !l.contains(" WARN ")).collect();
    assert_eq!(output.status.code(), Some(code), "exit code; stderr:\n{stderr}");
    assert_eq!(lines.len(), 1, "one error line expected, got:\n{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {:?}", lines[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_each_cause_once(lines[0]);
}

/// An error line says each cause once: no `: `-separated segment of it is
/// repeated, as in `cannot listen on …: Address already in use (os error
/// 98): Address already in use (os error 98)` (an error that prints its
/// source and also exposes it, shown with its chain).
pub fn assert_each_cause_once(line: &str) {
    let segments: Vec<&str> = line.split(": ").map(str::trim).filter(|s| !s.is_empty()).collect();
    for (index, segment) in segments.iter().enumerate() {
        let earlier = &segments[..index];
        // A long segment inside an earlier one is a repeat too (a cause in
        // parentheses, then again after a colon).
        let repeated =
            earlier.contains(segment) || (segment.len() >= 12 && earlier.iter().any(|e| e.contains(segment)));
        assert!(!repeated, "the cause {segment:?} is repeated in {line:?}");
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Validate with promtool, the Prometheus project's parser and linter.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian package prometheus; `cargo xtask setup` installs it)");
    use std::io::Write as _;
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool rejected /metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// PT_RECLAIM expected on this kernel: `PTWATCH_EXPECT_PT_RECLAIM` from the
/// VM runner (taken from the kernel's config), else detected.
pub fn expect_pt_reclaim() -> bool {
    match std::env::var("PTWATCH_EXPECT_PT_RECLAIM").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => pt_reclaim(),
    }
}

/// A `ptwatch-workload hold MIB` process: alive, with its DONTNEEDed
/// mapping, until dropped (which closes its stdin and waits for it).
pub struct Held {
    pub child: std::process::Child,
    pub report: Report,
}

impl Held {
    /// `ptwatch-workload hold MIB`.
    pub fn start(mib: u32) -> Self {
        let mut command = Command::new(workload_bin());
        command.args(["hold", &mib.to_string()]);
        Self::spawn(command)
    }

    /// `command`, which must end up running `ptwatch-workload hold MIB`
    /// (e.g. through a wrapper that first joins a cgroup).
    pub fn spawn(mut command: Command) -> Self {
        use std::io::BufRead as _;
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the hold workload");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read the workload's report");
        let report = serde_json::from_str(&line).unwrap_or_else(|err| panic!("workload report {line:?}: {err}"));
        Self { child, report }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A top-level cgroup of the v2 tree for one test, removed when dropped.
pub struct TestCgroup {
    pub dir: PathBuf,
    /// Its `cgroup` label (path relative to the v2 mount).
    pub label: String,
}

impl TestCgroup {
    /// `/ptwatch-<tag>-<pid>` under the v2 mount.
    pub fn create(tag: &str) -> Self {
        let tree = ptwatch::aggregate::cgroup::CgroupTree::detect().expect("a cgroup v2 tree");
        let name = format!("ptwatch-{tag}-{}", std::process::id());
        let dir = tree.root().join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        Self { dir, label: format!("/{name}") }
    }

    /// `program ARGS`, started by a shell that first moves itself into this
    /// cgroup: the program's first event already happens there.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("sh");
        command
            .args(["-c", r#"echo $$ > "$1" && shift && exec "$@""#, "sh"])
            .arg(self.dir.join("cgroup.procs"))
            .arg(program)
            .args(args);
        command
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A process that just exited may leave the cgroup a moment late.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Watches every counter series (`*_total`, by its full label set) over
/// successive scrapes: none may ever go down, including a series that
/// disappears and comes back.
#[derive(Default)]
pub struct CounterWatch {
    last: HashMap<String, f64>,
    pub scrapes: usize,
}

impl CounterWatch {
    pub fn observe(&mut self, metrics: &Metrics) {
        self.scrapes += 1;
        for sample in &metrics.scrape.samples {
            if !sample.metric.ends_with("_total") {
                continue;
            }
            let (prometheus_parse::Value::Counter(value) | prometheus_parse::Value::Untyped(value)) = sample.value
            else {
                continue;
            };
            let mut labels: Vec<(&String, &String)> = sample.labels.iter().collect();
            labels.sort();
            let key = format!("{}{labels:?}", sample.metric);
            if let Some(before) = self.last.get(&key) {
                assert!(value >= *before, "scrape {}: {key} went down from {before} to {value}", self.scrapes);
            }
            self.last.insert(key, value);
        }
    }

    /// Counter series seen so far.
    pub fn series(&self) -> usize {
        self.last.len()
    }
}

/// Per-process families and the node total each must add up to.
pub const PROCESS_FAMILIES: [(&str, &str); 3] = [
    ("ptwatch_pte_pages_reclaimed_total", "ptwatch_node_pte_pages_reclaimed_total"),
    ("ptwatch_madvise_dontneed_calls_total", "ptwatch_node_madvise_dontneed_calls_total"),
    ("ptwatch_madvise_dontneed_bytes_total", "ptwatch_node_madvise_dontneed_bytes_total"),
];

/// Where own series + `other` differ from the node totals (empty: nowhere).
/// An event landing between the agent's reads of the maps shows in the node
/// first: callers retry a few scrapes to find a quiet moment.
pub fn sum_mismatch(metrics: &Metrics) -> String {
    let mut mismatch = String::new();
    for (family, node) in PROCESS_FAMILIES {
        let sum: f64 = metrics.sum(family, &[]);
        let total = metrics.value(node, &[]);
        if sum != total {
            mismatch += &format!("{family}: own + other = {sum}, {node} = {total}; ");
        }
    }
    mismatch
}

/// Ids of the eBPF objects process `pid` holds descriptors of, from its
/// `/proc/<pid>/fdinfo`: `kind` is `"prog_id"` or `"map_id"`. (This
/// bpftool does not list an object's holding processes.)
pub fn bpf_ids_held(pid: u32, kind: &str) -> std::collections::HashSet<u64> {
    let prefix = format!("{kind}:");
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap_or_else(|err| panic!("reading /proc/{pid}/fdinfo: {err}"))
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok()))
        .collect()
}

/// `bpftool <kind> show --json` (`kind`: `prog` or `map`): every such
/// object loaded in the kernel.
pub fn bpftool_objects(kind: &str) -> Vec<serde_json::Value> {
    let output = Command::new("bpftool")
        .args([kind, "show", "--json"])
        .output()
        .expect("bpftool is needed (Debian package bpftool; `cargo xtask setup` installs it)");
    assert!(output.status.success(), "bpftool {kind} show: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("bpftool JSON")
}

/// Which of the program `ids` are still loaded in the kernel.
pub fn programs_still_loaded(ids: &std::collections::HashSet<u64>) -> Vec<u64> {
    bpftool_objects("prog").iter().filter_map(|p| p["id"].as_u64()).filter(|id| ids.contains(id)).collect()
}

/// A `/metrics` response read back with a Prometheus text-format parser:
/// the one way tests look up sample values.
pub struct Metrics {
    pub text: String,
    scrape: prometheus_parse::Scrape,
}

impl Metrics {
    pub fn parse(text: String) -> Self {
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse exposition text");
        Self { text, scrape }
    }

    /// Every sample of `name` whose labels include `labels`, with all its
    /// labels.
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(HashMap<String, String>, f64)> {
        self.scrape
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

    /// The value of the sample of `name` with `labels`, if there is one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name, labels).first().map(|(_, value)| *value)
    }

    /// The value of the only sample of `name` with `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.samples(name, labels);
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}\n{}", self.text);
        found[0].1
    }

    /// Sum of every sample of `name` with `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).iter().map(|(_, value)| value).sum()
    }
}
