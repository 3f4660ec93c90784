//! The floor under the tracepoint plan's eBPF time (d): what `bpf_stats`
//! reports per madvise call for two programs that do nothing, attached where
//! the plan attaches its own (`syscalls:sys_enter_madvise` and
//! `sys_exit_madvise`). It is what running any program there costs (the
//! tracepoint's dispatch to eBPF and the clock reads of the accounting
//! itself), measured in the same session on the same loop: no
//! tracepoint-plan program can report less per call on this machine.
//!
//! The programs are loaded with the `bpf(2)` and `perf_event_open(2)` system
//! calls directly: two instructions, no object file, nothing of the agent's.
use std::{
    ffi::CStr,
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::stats::{self, ProgStats, StatsEnabled};

/// The tracepoints of the plan's madvise programs, entry and exit.
const TRACEPOINTS: [&str; 2] = ["sys_enter_madvise", "sys_exit_madvise"];
const TRACEFS: &str = "/sys/kernel/tracing";

// uapi/linux/bpf.h and uapi/linux/perf_event.h.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_ATTR_SIZE_VER0: u32 = 64;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
/// `r0 = 0; exit`, as `struct bpf_insn`s (code, registers, offset, immediate).
const RETURN_ZERO: [u64; 2] = [0xb7, 0x95];

/// What the floor run measured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Floor {
    /// eBPF ns per madvise call, entry and exit programs together.
    pub ns_per_call: f64,
    pub entry_ns_per_run: f64,
    pub exit_ns_per_run: f64,
    /// Runs of the entry program counted (the loop's calls and, on a shared
    /// machine, other processes' madvise calls: per-run figures do not
    /// depend on whose they were).
    pub runs: u64,
}

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel zeroes the
/// rest.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `struct perf_event_attr` up to `config1` (`PERF_ATTR_SIZE_VER0`).
#[repr(C)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// One empty program attached to one tracepoint, for as long as it lives.
struct EmptyProgram {
    program: OwnedFd,
    // Attached while the perf event is open.
    _event: OwnedFd,
}

impl EmptyProgram {
    fn attach(tracepoint: &str) -> Result<Self> {
        let program = load_empty(tracepoint)?;
        let id_path = format!("{TRACEFS}/events/syscalls/{tracepoint}/id");
        let id: u64 = fs::read_to_string(&id_path)
            .with_context(|| format!("reading {id_path} (is tracefs mounted?)"))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {id_path}"))?;
        let attr = PerfEventAttr {
            kind: PERF_TYPE_TRACEPOINT,
            size: PERF_ATTR_SIZE_VER0,
            config: id,
            sample_period: 1,
            sample_type: 0,
            read_format: 0,
            flags: 0,
            wakeup_events: 1,
            bp_type: 0,
            config1: 0,
        };
        // A tracepoint's eBPF programs run on every CPU, whichever CPU the
        // perf event that attached them is bound to.
        let (pid, cpu, group): (libc::pid_t, libc::c_int, libc::c_int) = (-1, 0, -1);
        // SAFETY: `attr` is a valid perf_event_attr of the size it states.
        let fd =
            unsafe { libc::syscall(libc::SYS_perf_event_open, &raw const attr, pid, cpu, group, PERF_FLAG_FD_CLOEXEC) };
        let event = owned_fd(fd).with_context(|| format!("perf_event_open of syscalls:{tracepoint}"))?;
        // The event is enabled from the start (`flags` 0: not `disabled`).
        // SAFETY: an ioctl of a perf event we own, with an int argument.
        if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, program.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("attaching the empty program to syscalls:{tracepoint}"));
        }
        Ok(Self { program, _event: event })
    }

    fn stats(&self) -> Result<ProgStats> {
        stats::fd_stats(std::process::id(), &self.program.as_raw_fd().to_string())
    }
}

fn owned_fd(ret: libc::c_long) -> Result<OwnedFd> {
    if ret < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let fd = libc::c_int::try_from(ret).context("file descriptor out of range")?;
    // SAFETY: a file descriptor the kernel just returned to us, owned by no
    // one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn load_empty(tracepoint: &str) -> Result<OwnedFd> {
    let license: &CStr = c"GPL";
    let mut prog_name = [0u8; 16];
    prog_name[..11].copy_from_slice(b"bench_floor");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACEPOINT,
        insn_cnt: RETURN_ZERO.len() as u32,
        insns: RETURN_ZERO.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
    };
    let size = size_of::<ProgLoadAttr>();
    // SAFETY: `attr` is a valid head of union bpf_attr for BPF_PROG_LOAD,
    // its pointers live until the call returns.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &raw const attr, size) };
    owned_fd(fd).with_context(|| format!("loading an empty tracepoint program for {tracepoint}"))
}

/// Attach the two empty programs, run `run_loop` (the small-DONTNEED loop)
/// with `bpf_stats` on, and report their time.
pub fn measure(run_loop: &mut dyn FnMut() -> Result<()>) -> Result<Floor> {
    if !Path::new(TRACEFS).join("events/syscalls").is_dir() {
        bail!("{TRACEFS}/events/syscalls is missing: mount tracefs there (the agent does at start-up)");
    }
    let programs: Vec<EmptyProgram> = TRACEPOINTS.iter().map(|t| EmptyProgram::attach(t)).collect::<Result<_>>()?;
    let _counting = StatsEnabled::enable()?;
    let before: Vec<ProgStats> = programs.iter().map(EmptyProgram::stats).collect::<Result<_>>()?;
    run_loop()?;
    let mut deltas = [ProgStats::default(); 2];
    for ((program, before), delta) in programs.iter().zip(&before).zip(&mut deltas) {
        *delta = program.stats()?.minus(*before);
        if delta.run_cnt == 0 {
            bail!("the empty programs never ran: the loop made no madvise call, or bpf_stats is not counting");
        }
    }
    let [entry, exit] = deltas.map(|d| d.run_time_ns as f64 / d.run_cnt as f64);
    Ok(Floor { ns_per_call: entry + exit, entry_ns_per_run: entry, exit_ns_per_run: exit, runs: deltas[0].run_cnt })
}
