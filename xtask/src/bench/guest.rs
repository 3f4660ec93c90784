//! The bystander session inside a real Debian kernel booted under qemu,
//! where the fentry and kprobe plans attach (this host allows neither).
//!
//! virtme-ng shares the host's root file system with the guest, so the
//! guest runs this very xtask binary (`xtask bench-child session`) on a
//! session written as JSON, with the host-built agent; the results come
//! back as JSON through a directory the guest may write. The VM runs under
//! TCG software emulation: its timings are ratios only.
use std::{fs, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};

use super::bystanders::{self, Session, SessionResults, VmInfo};
use crate::vm::{self, Arch, Step, VmOptions};

/// The kernel lines a VM session can boot (`--vm-kernel`).
pub use crate::vm::KernelLine as Kernel;

/// Default `--vm-kernel`: the newest Debian kernel, 7.x today.
pub const DEFAULT_KERNEL: &str = "x86_64/newest-7";

/// How the guest's clocks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Clock {
    /// qemu `-icount`: guest time advances by a fixed 2 ns per emulated
    /// instruction, on one vCPU. What the guest measures is then a count of
    /// instructions, the same whatever the host's load (other people's
    /// builds stretch real time, not guest time), so ratios are stable. It
    /// weighs every instruction alike: no cache misses, no TLB costs.
    Icount,
    /// Real time, as many vCPUs as host CPUs (multi-threaded TCG): the
    /// guest's timings stretch with the host's load.
    Host,
}

impl Clock {
    /// For the printed results.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Icount => {
                "qemu -icount (1 vCPU): guest time is 2 ns per emulated instruction, so times are instruction counts, independent of the host's load; ratios are instruction-count ratios (every instruction weighs alike: no cache or TLB costs)"
            }
            Self::Host => "real time on multi-threaded TCG: timings stretch with the host's load; read ratios only",
        }
    }
}

/// `-icount shift=1`: 2 ns of guest time per instruction (500 MIPS), a
/// rate close to what TCG achieves here, so guest timers stay sensible.
const ICOUNT_SHIFT: u32 = 1;

/// An agent start under TCG (BTF, program loads, verifier) took 12 s on
/// Debian 7.3.4; a pessimistic figure, only used to size the timeout.
const AGENT_START_GUESS: Duration = Duration::from_secs(30);
const BOOT_GUESS: Duration = Duration::from_secs(120);

/// A generous bound on a session's length under emulation (nothing else
/// runs in the guest, so no pair is run again).
fn timeout(session: &Session) -> Duration {
    let pairs = session.pairs * (session.arms.len() as u32 + 1);
    // Timed runs, bpf_stats runs and their quiet windows; emulated child
    // start-ups and calibration add about as much again.
    let per_block = session.block_secs
        * session.workloads.len() as f64
        * (1.0 + 2.0 * session.stats_batches as f64 / session.batches as f64);
    let per_pair = Duration::from_secs_f64(2.0 * per_block * 2.0) + AGENT_START_GUESS;
    BOOT_GUESS + per_pair * pairs * 3
}

/// Boot `kernel`, run `session` in it and return what it measured.
/// `dir` (host side, writable by the guest) receives the session, the
/// results, the agent's log and the guest's output.
pub fn run(
    which: Kernel,
    clock: Clock,
    session: &Session,
    dir: &Path,
    workspace_root: &Path,
) -> Result<SessionResults> {
    if which.arch != Arch::X86_64 {
        bail!("the VM bench boots x86_64 kernels (the host's architecture), not {which}");
    }
    vm::ensure_vm_tools(&[which.arch]).context("installing the VM tools (qemu, virtme-ng, virtiofsd)")?;
    let kernel =
        vm::fetch_kernel(which, &vm::default_cache_dir()).with_context(|| format!("fetching the {which} kernel"))?;
    if !kernel.release.starts_with("7.") {
        eprintln!("[bench] warning: the {which} kernel is {}, not 7.x (see --vm-kernel)", kernel.release);
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("session.json");
    let results = dir.join("results.json");
    let _ = fs::remove_file(&results);
    let mut session = session.clone();
    session.environment = "vm".to_owned();
    session.log = dir.join("agent.log");
    fs::write(&config, serde_json::to_string_pretty(&session)?)
        .with_context(|| format!("writing {}", config.display()))?;
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let script = format!(
        "sysctl -qw kernel.bpf_stats_enabled=0; {} bench-child session {} {}",
        xtask.display(),
        config.display(),
        results.display()
    );

    let limit = timeout(&session);
    eprintln!(
        "[bench] vm: booting {} under qemu (TCG) for {} arms x {} pairs (timeout {} min)",
        kernel.release,
        session.arms.len() + 1,
        session.pairs,
        limit.as_secs() / 60
    );
    let host_load_start = bystanders::read_trimmed("/proc/loadavg");
    let mut options = VmOptions::new(limit);
    options.rw_dirs.push(dir.to_path_buf());
    options.cwd = Some(workspace_root.to_path_buf());
    if clock == Clock::Icount {
        // icount needs single-threaded TCG; one vCPU also keeps the
        // agent's and the driver's instructions out of the loop's time.
        options.cpus = 1;
        options.qemu_args.push(format!("-icount shift={ICOUNT_SHIFT}"));
    }
    let run = vm::run_steps(&kernel, &[Step::new("bench", script)], &options)
        .with_context(|| format!("running in the {which} kernel"))?;
    let output = run.log.step("bench").map(|step| (step.output.clone(), step.status)).unwrap_or_default();
    let log = dir.join("guest.log");
    fs::write(&log, &output.0).with_context(|| format!("writing {}", log.display()))?;
    if !results.is_file() {
        let tail: Vec<&str> = output.0.lines().rev().take(15).collect();
        bail!(
            "the guest wrote no results (exit {:?}{}); end of its output ({}):\n{}",
            output.1,
            run.failure().map(|why| format!("; {why}")).unwrap_or_default(),
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let mut measured = bystanders::load(&results)?;
    measured.vm = Some(VmInfo {
        host_loadavg: [host_load_start, bystanders::read_trimmed("/proc/loadavg")],
        clock: clock.describe().to_owned(),
    });
    Ok(measured)
}
