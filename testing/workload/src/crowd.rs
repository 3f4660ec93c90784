//! Many processes alive at once, each having reclaimed its own PTE tables:
//! enough of them to fill a small per-process map.
//!
//! The parent forks `children` processes; each maps `spans` 2 MiB spans (THP
//! off), writes one byte in each (one PTE table per span), DONTNEEDs the
//! whole mapping, reports its `VmPTE` drop through a pipe, then blocks until
//! the parent releases it. The parent prints one [`CrowdReport`] once every
//! child has reported, keeps them all alive until its stdin closes, then
//! releases and reaps them.

use std::io::{self, Read as _};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{advise, vmpte_kib, Advice, Region, PTE_TABLE_SPAN};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CrowdReport {
    pub parent_pid: u32,
    pub children: u64,
    /// Sum over children of the `VmPTE` drop (kB) across their DONTNEED call.
    pub vmpte_drop_kib: u64,
    /// PTE tables the children expect to be reclaimed if PT_RECLAIM works.
    pub expected_tables: u64,
    pub calls: u64,
    pub bytes: u64,
    pub pids: Vec<u32>,
}

/// One child's result, written in one `write` (under `PIPE_BUF`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ChildRecord {
    pid: u32,
    ok: u32,
    vmpte_drop_kib: u64,
}

const RECORD: usize = size_of::<ChildRecord>();

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
    // The region stays mapped (its tables are gone) while the child waits.
    std::mem::forget(region);
    Ok(before.saturating_sub(after))
}

/// Run in the forked child: report, wait for the release, never return.
fn child_main(spans: usize, report_fd: libc::c_int, release_fd: libc::c_int) -> ! {
    let outcome = child_work(spans);
    let record = ChildRecord {
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() } as u32,
        ok: u32::from(outcome.is_ok()),
        vmpte_drop_kib: outcome.unwrap_or(0),
    };
    // SAFETY: writing a plain struct to our pipe; then blocking on the
    // release pipe until the parent closes it (EOF), and leaving without
    // the parent's atexit handlers or buffered output.
    unsafe {
        let written = libc::write(report_fd, (&record as *const ChildRecord).cast(), RECORD);
        let mut byte = 0u8;
        while libc::read(release_fd, (&mut byte as *mut u8).cast(), 1) > 0 {}
        libc::_exit(if written == RECORD as isize && record.ok == 1 { 0 } else { 1 });
    }
}

fn pipe() -> Result<[libc::c_int; 2]> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: a two-element array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", io::Error::last_os_error());
    }
    Ok(fds)
}

/// See the module documentation. Only for a single-threaded caller.
pub fn crowd(children: usize, spans: usize) -> Result<()> {
    if children == 0 || spans == 0 {
        bail!("CHILDREN and SPANS must be at least 1");
    }
    let [report_read, report_write] = pipe()?;
    let [release_read, release_write] = pipe()?;
    for _ in 0..children {
        // SAFETY: the workload binary is single-threaded, so the child may
        // allocate freely; it leaves through _exit.
        match unsafe { libc::fork() } {
            -1 => bail!("fork: {}", io::Error::last_os_error()),
            0 => {
                // SAFETY: the child's copy of the release pipe's write end
                // must go, or it would never see EOF.
                unsafe { libc::close(release_write) };
                child_main(spans, report_write, release_read)
            }
            _ => {}
        }
    }
    // SAFETY: the parent's copies of the ends it does not use.
    unsafe {
        libc::close(report_write);
        libc::close(release_read);
    }
    let mut report = CrowdReport { parent_pid: std::process::id(), ..CrowdReport::default() };
    let mut buffer = [0u8; RECORD];
    for _ in 0..children {
        let mut filled = 0;
        while filled < RECORD {
            // SAFETY: reading into the rest of a stack buffer.
            let read = unsafe { libc::read(report_read, buffer[filled..].as_mut_ptr().cast(), RECORD - filled) };
            if read <= 0 {
                bail!("a child exited before reporting: {}", io::Error::last_os_error());
            }
            filled += read as usize;
        }
        // SAFETY: RECORD bytes written by a child as a ChildRecord.
        let record: ChildRecord = unsafe { std::ptr::read_unaligned(buffer.as_ptr().cast()) };
        if record.ok != 1 {
            bail!("child {} failed", record.pid);
        }
        report.children += 1;
        report.vmpte_drop_kib += record.vmpte_drop_kib;
        report.pids.push(record.pid);
    }
    report.calls = children as u64;
    report.bytes = (children * spans * PTE_TABLE_SPAN) as u64;
    report.expected_tables = (children * spans) as u64;
    crate::print_report(&report)?;
    let mut sink = Vec::new();
    io::stdin().read_to_end(&mut sink).context("waiting for stdin to close")?;
    // SAFETY: closing our own descriptors releases the children.
    unsafe {
        libc::close(release_write);
        libc::close(report_read);
    }
    for _ in 0..children {
        let mut status = 0;
        // SAFETY: reaping our own children.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            bail!("waitpid: {}", io::Error::last_os_error());
        }
    }
    Ok(())
}
