//! Many short-lived processes, each reclaiming its own PTE tables.
//!
//! The parent forks `children` processes, at most `concurrency` at a time.
//! Each child maps `spans` 2 MiB spans (THP off), writes one byte in each
//! (one PTE table per span), DONTNEEDs the whole mapping, measures its own
//! `VmPTE` around the call, writes that to a pipe and exits. Forking (no
//! exec) keeps each child to a fraction of a millisecond, so tens of
//! thousands of processes fit in a test.

use std::io;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::{advise, vmpte_kib, Advice, Region, PTE_TABLE_SPAN};

/// What the children of one run observed, summed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetReport {
    pub parent_pid: u32,
    pub children: u64,
    /// Sum over children of the `VmPTE` drop (kB) across their DONTNEED call.
    pub vmpte_drop_kib: u64,
    /// PTE tables the children expect to be reclaimed if PT_RECLAIM works.
    pub expected_tables: u64,
    pub calls: u64,
    pub bytes: u64,
    /// Every child's pid, in the order they reported.
    pub pids: Vec<u32>,
}

/// One child's result, written to the pipe in one `write` (well under
/// `PIPE_BUF`, so records never interleave).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ChildRecord {
    pid: u32,
    /// 1 if the child's work succeeded.
    ok: u32,
    vmpte_drop_kib: u64,
}

const RECORD: usize = size_of::<ChildRecord>();

/// The child's work: returns its `VmPTE` drop in kB.
fn child_work(spans: usize) -> Result<u64> {
    let len = spans * PTE_TABLE_SPAN;
    let region = Region::new(len, 0)?;
    for span in 0..spans {
        // SAFETY: inside the region; one byte per span makes its PTE table.
        unsafe { region.start.add(span * PTE_TABLE_SPAN).write_volatile(1) };
    }
    let before = vmpte_kib()?;
    advise(region.start, len, Advice::Dontneed)?;
    let after = vmpte_kib()?;
    Ok(before.saturating_sub(after))
}

/// Run in the forked child: never returns.
fn child_main(spans: usize, write_fd: libc::c_int) -> ! {
    let outcome = child_work(spans);
    let record = ChildRecord {
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() } as u32,
        ok: u32::from(outcome.is_ok()),
        vmpte_drop_kib: outcome.unwrap_or(0),
    };
    // SAFETY: writing a plain struct to our pipe, then leaving without the
    // parent's atexit handlers or buffered output.
    unsafe {
        let written = libc::write(write_fd, (&record as *const ChildRecord).cast(), RECORD);
        libc::_exit(if written == RECORD as isize && record.ok == 1 { 0 } else { 1 });
    }
}

/// Fork `children` processes (at most `concurrency` alive at once), each
/// reclaiming `spans` PTE tables; see the module documentation. Only for a
/// single-threaded caller.
pub fn fleet(children: u64, spans: usize, concurrency: usize) -> Result<FleetReport> {
    if spans == 0 || concurrency == 0 {
        bail!("SPANS and CONCURRENCY must be at least 1");
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: a two-element array for pipe2; the read end is non-blocking so
    // the parent can drain it between forks.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", io::Error::last_os_error());
    }
    let [read_fd, write_fd] = fds;
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(read_fd, libc::F_SETFL, libc::O_NONBLOCK) };

    let mut report = FleetReport { parent_pid: std::process::id(), ..FleetReport::default() };
    let (mut launched, mut running, mut failed) = (0u64, 0usize, 0u64);
    let mut buffer = Vec::with_capacity(RECORD * 64);
    while launched < children || running > 0 {
        if launched < children && running < concurrency {
            // SAFETY: call this only from a single-threaded process (the
            // workload binary is): the child may then allocate freely. It
            // leaves through _exit.
            match unsafe { libc::fork() } {
                -1 => bail!("fork: {}", io::Error::last_os_error()),
                0 => child_main(spans, write_fd),
                _ => {
                    launched += 1;
                    running += 1;
                }
            }
            continue;
        }
        let mut status = 0;
        // SAFETY: reaping our own children.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            bail!("waitpid: {}", io::Error::last_os_error());
        }
        running -= 1;
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failed += 1;
        }
        drain(read_fd, &mut buffer, &mut report);
    }
    drain(read_fd, &mut buffer, &mut report);
    // SAFETY: closing our own descriptors.
    unsafe {
        libc::close(read_fd);
        libc::close(write_fd);
    }
    if failed > 0 || report.children != children {
        bail!("{failed} of {children} children failed; {} reported", report.children);
    }
    report.calls = children;
    report.bytes = children * (spans * PTE_TABLE_SPAN) as u64;
    report.expected_tables = children * spans as u64;
    Ok(report)
}

/// Read every complete record available in the pipe.
fn drain(read_fd: libc::c_int, buffer: &mut Vec<u8>, report: &mut FleetReport) {
    let mut chunk = [0u8; RECORD * 64];
    loop {
        // SAFETY: reading into a stack buffer of the given size.
        let read = unsafe { libc::read(read_fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if read <= 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read as usize]);
    }
    let whole = buffer.len() / RECORD * RECORD;
    for bytes in buffer[..whole].chunks_exact(RECORD) {
        // SAFETY: RECORD bytes written by a child as a ChildRecord.
        let record: ChildRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        if record.ok == 1 {
            report.children += 1;
            report.vmpte_drop_kib += record.vmpte_drop_kib;
            report.pids.push(record.pid);
        }
    }
    buffer.drain(..whole);
}
