//! The agent under test, started for each "with" run and stopped after, so
//! that "without" runs have no probe attached at all.
use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

/// Loading BTF, testing PT_RECLAIM and loading the programs takes a second
/// or two; far more means it is stuck.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The agent's probe plans (`ptwatch agent --probe-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProbePlan {
    /// Syscall and io_uring tracepoints: the only plan some hosts allow.
    Tracepoint,
    /// fentry/fexit on kernel functions.
    Fentry,
    /// kprobes/kretprobes on the same functions.
    Kprobe,
}

impl ProbePlan {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
        }
    }
}

pub struct Agent {
    child: Child,
    addr: SocketAddr,
    log: String,
}

impl Agent {
    /// [`Agent::start_with`] with a forced probe plan.
    pub fn start_plan(binary: &Path, log: &Path, plan: ProbePlan) -> Result<Self> {
        Self::start_with(binary, log, &["--probe-mode", plan.name()])
    }

    /// Start `ptwatch agent` on a free local port with extra arguments,
    /// logging to `log`, and return once /metrics answers (the probes are
    /// attached by then).
    pub fn start_with(binary: &Path, log: &Path, args: &[&str]) -> Result<Self> {
        let addr = free_port()?;
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(binary)
            .arg("agent")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            // The log goes to a file: no terminal colour codes in it.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} agent", binary.display()))?;
        let mut agent = Self { child, addr, log: log.display().to_string() };
        agent.wait_ready()?;
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /metrics`: the whole body (the response ends when the agent
    /// closes the connection).
    pub fn scrape(&self) -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).context("connecting")?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).context("setting a timeout")?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
        stream.write_all(request.as_bytes()).context("sending the request")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).context("reading /metrics")?;
        let response = String::from_utf8(response).context("/metrics is not UTF-8")?;
        let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("/metrics answered {}", head.lines().next().unwrap_or_default());
        }
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            return Ok(dechunk(body));
        }
        Ok(body.to_owned())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("polling the agent")? {
                bail!("the agent exited ({status}) before serving /metrics; its log is {}", self.log);
            }
            if metrics_answer(self.addr) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not serve /metrics on {} within {READY_TIMEOUT:?}; its log is {}",
                    self.addr,
                    self.log
                );
            }
            thread::sleep(POLL);
        }
    }

    /// SIGTERM, as a service manager would, and wait: the agent detaches its
    /// probes on the way out.
    pub fn stop(&mut self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("agent pid out of range")?;
        // SAFETY: signalling our own child, which has not been reaped yet.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("SIGTERM to the agent failed: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the agent")? {
                if !status.success() {
                    bail!("the agent exited with {status} on SIGTERM; its log is {}", self.log);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Agent {
    /// On an error path, never leave an agent (and its probes) behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port nobody listens on right now. Another process could take it before
/// the agent binds, in which case the agent fails to start and says so.
fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free local port")?;
    listener.local_addr().context("finding a free local port")
}

/// Whether `GET /metrics` returns 200.
fn metrics_answer(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        return false;
    }
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // The status line is enough; reading on would wait for the whole body.
    let mut head = [0u8; 64];
    let Ok(n) = stream.read(&mut head) else {
        return false;
    };
    let head = String::from_utf8_lossy(&head[..n]);
    head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200")
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
