//! Helpers shared by the integration tests.
//!
//! These tests load the real eBPF programs into the running kernel and run
//! real workloads, so they need root, the built object and the workload
//! binary (`cargo xtask test` provides all three). Missing prerequisites
//! fail loudly; nothing is skipped.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use ptwatch::{
    aggregate::{Aggregator, ProcessRecord, Snapshot},
    kernel::btf::VMLINUX_BTF,
    probes::{plan::ProbeMode, ProbeMaps, Probes},
};
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

/// The real probes, attached for the lifetime of the value.
pub struct Attached {
    pub probes: Probes,
    pub aggregator: Aggregator<ProbeMaps>,
}

impl Attached {
    pub fn new() -> Self {
        ptwatch::kernel::support::require_privileges().expect("integration tests must run as root");
        ptwatch::kernel::support::ensure_tracefs().expect("tracefs");
        let btf = ptwatch::kernel::btf::KernelBtf::load(Path::new(VMLINUX_BTF)).expect("kernel BTF");
        let mut probes = Probes::load(&btf, probe_mode()).expect("load and attach the eBPF programs");
        let maps = probes.take_maps().expect("maps");
        Self { probes, aggregator: Aggregator::new(maps, std::time::Duration::from_secs(600)) }
    }

    pub fn snapshot(&mut self) -> Snapshot {
        self.aggregator.harvest(Instant::now()).expect("read kernel maps")
    }

    /// The record of `pid`, which must exist.
    pub fn process(&mut self, pid: u32) -> ProcessRecord {
        self.snapshot()
            .processes
            .into_iter()
            .find(|p| p.pid == pid)
            .unwrap_or_else(|| panic!("no counters for pid {pid}"))
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
        let child = Command::new(ptwatch_bin())
            .args(["agent", "--listen", &addr.to_string()])
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ptwatch agent");
        let agent = Self { child, addr };
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(addr, "/metrics").is_some_and(|(status, _)| status == 200) {
                return agent;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("ptwatch agent did not serve /metrics on {addr} within 30 s");
    }

    pub fn scrape(&self) -> String {
        let (status, body) = http_get(self.addr, "/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
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

/// A loopback address with a port nobody listens on right now.
pub fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

/// A minimal HTTP/1.1 GET: status code and body, or None if nobody answers.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Some((status, body))
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
