//! Booting a prepared kernel and running the guest runner's steps in it,
//! the same call for every architecture: [`run_steps`] picks the boot
//! method of the kernel's architecture (virtme-ng with the host's root for
//! x86_64, qemu with a hand-made initramfs for arm64 and riscv64) and
//! returns the parsed framed stream with the console.

mod cpio;
mod initramfs;
mod qemu;
mod virtme;

use std::{
    fs,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context, Result};

use super::{
    arch::{BootMethod, Cpu},
    fetch::PreparedKernel,
    guest::{GuestLog, Step},
    process::{tail, unix_millis},
};

/// How to run the VM. `VmOptions::new(timeout)` gives the defaults.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Whole run: boot + steps + power-off.
    pub timeout: Duration,
    /// qemu `-m`, e.g. `2G`.
    pub memory: String,
    /// vCPUs.
    pub cpus: u32,
    /// CPU model; `None`: the architecture's default.
    pub cpu: Option<Cpu>,
    /// Extra kernel command-line arguments.
    pub append: Vec<String>,
    /// virtme-ng only: working directory of the steps in the guest (the
    /// host's root file system is the guest's, read-only). `None`: the
    /// caller's cwd.
    pub cwd: Option<PathBuf>,
    /// virtme-ng only: more host directories the guest may write (the
    /// run's scratch directory always is).
    pub rw_dirs: Vec<PathBuf>,
    /// More qemu arguments (e.g. `-icount`).
    pub qemu_args: Vec<String>,
    /// Initramfs only: host files the guest needs, as (name in the guest's
    /// `/ptwatch/`, host path). Static executables: the guest has nothing
    /// but busybox.
    pub files: Vec<(String, PathBuf)>,
}

impl VmOptions {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            memory: "2G".into(),
            cpus: 2,
            cpu: None,
            append: Vec::new(),
            cwd: None,
            rw_dirs: Vec::new(),
            qemu_args: Vec::new(),
            files: Vec::new(),
        }
    }
}

/// Where files given in [`VmOptions::files`] are in an initramfs guest.
pub const GUEST_FILES_DIR: &str = "/ptwatch";

/// What a guest did.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The parsed framed stream: may be incomplete (see
    /// [`GuestRun::failure`]).
    pub log: GuestLog,
    /// The raw framed stream.
    pub stream: String,
    /// Kernel console and qemu/vng messages (for initramfs guests, the
    /// stream too).
    pub console: String,
    /// Host time from starting qemu until it exited.
    pub elapsed: Duration,
    /// Host time until the guest's user space ran.
    pub boot_time: Option<Duration>,
    /// Scratch directory of the run (kept after failures, or always with
    /// `PTWATCH_VM_KEEP=1`).
    pub run_dir: PathBuf,
}

impl GuestRun {
    /// Why the run cannot be trusted, with the console's last lines: the
    /// guest died or stopped before its runner finished.
    pub fn failure(&self) -> Option<String> {
        self.log.incomplete().map(|why| {
            format!(
                "{why} after {:.0}s; last console lines:\n{}\n(scratch files kept in {})",
                self.elapsed.as_secs_f64(),
                tail(&self.console, 40),
                self.run_dir.display()
            )
        })
    }
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Boot `kernel` and run `steps` as root. Fails when the VM cannot start,
/// the kernel does not reach user space, or the timeout passes; a guest
/// that dies later returns a [`GuestRun`] whose [`GuestRun::failure`] says
/// so. A step's non-zero exit is not an error here.
pub fn run_steps(kernel: &PreparedKernel, steps: &[Step], opts: &VmOptions) -> Result<GuestRun> {
    if !kernel.vmlinuz.is_file() {
        anyhow::bail!("{} does not exist: fetch the kernel again", kernel.vmlinuz.display());
    }
    // Scratch directory: under the cache, not /tmp (virtme-ng overlays the
    // guest's /tmp, so writes there would not reach the host).
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let run_dir = kernel.cache_dir.join("runs").join(format!("{}-{}-{n}", std::process::id(), unix_millis()));
    fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let result = match kernel.line.arch.boot_method() {
        BootMethod::Virtme => virtme::run(kernel, steps, opts, &run_dir),
        BootMethod::Initramfs => qemu::run(kernel, steps, opts, &run_dir),
    };
    if let Ok(run) = &result {
        fs::write(run_dir.join("console.log"), &run.console).ok();
        fs::write(run_dir.join("stream.log"), &run.stream).ok();
        if run.failure().is_none() && std::env::var_os("PTWATCH_VM_KEEP").is_none() {
            fs::remove_dir_all(&run_dir).ok();
        }
    }
    result
}
