//! Child processes and files for the VM machinery: a checked run that
//! quotes the failing command, a process-group kill for qemu and its
//! helpers, a file lock shared between concurrent runs, and a child whose
//! output is drained while it runs.

use std::{
    fs,
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// Run a command, capture its output, fail with the command line and stderr
/// when it fails.
pub fn run_checked(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    cmd.stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("{what}: cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "{what}: `{line}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// An exclusive `flock` held until drop.
pub struct FileLock {
    _file: fs::File,
}

impl FileLock {
    pub fn exclusive(path: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own, open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            bail!("locking {}: {}", path.display(), std::io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }
}

/// End what is left of a process group (qemu, virtiofsd): SIGTERM, then
/// SIGKILL. Does nothing when the group is already empty.
pub fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names
    // the process group created for the child (signal 0 only checks it
    // exists).
    let alive = || unsafe { libc::kill(-pgid, 0) } == 0;
    if !alive() {
        return;
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        if !alive() {
            return;
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Read a child's stdout and stderr to the end in background threads, so a
/// chatty child (a kernel console) never blocks on a full pipe.
pub struct Drained {
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

impl Drained {
    pub fn start(child: &mut Child) -> Self {
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        };
        Self {
            stdout: drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
            stderr: drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
        }
    }

    /// (stdout, stderr) as text, once the child has exited.
    pub fn finish(self) -> (String, String) {
        let text = |h: JoinHandle<Vec<u8>>| String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned();
        (text(self.stdout), text(self.stderr))
    }
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The last `n` lines of a console log.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn unix_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}
