//! Workloads that leave a known number of empty PTE tables behind on every
//! kernel, PT_RECLAIM or not, for the empty-table estimate (`ptwatch scan`
//! and the agent's `ptwatch_*_empty_pagetable_bytes`):
//!
//! - `halves`: what allocators do: use a range, then `MADV_DONTNEED` each
//!   2 MiB span in two 1 MiB halves. No call covers a whole span, so
//!   PT_RECLAIM frees nothing and every span keeps an empty table.
//! - `whole`: the same with one call per 2 MiB span: PT_RECLAIM frees every
//!   table, a kernel without it keeps them all, empty.
//! - `sparse`: one page in each 2 MiB span of a huge mapping (one PTE table
//!   per page, the worst case for the estimate's cost), with the page of one
//!   span in `every` DONTNEEDed again: that span keeps an empty table.
//!
//! Both keep their mapping until stdin closes, like `hold`, and report what
//! the kernel accounted (`VmPTE`) and how many tables they left empty.

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{advise, map_anonymous, vmpte_kib, Advice, Region, Report, MIB, PTE_TABLE_SPAN};

const GIB: usize = 1 << 30;
const PAGE: usize = 4096;

/// [`Report`] plus what the empty-table tests compare against.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EmptyReport {
    #[serde(flatten)]
    pub report: Report,
    /// `VmPTE` (kB) before the workload mapped anything: `vmpte_end_kib`
    /// minus this is what the kernel kept for the workload's range.
    pub vmpte_before_kib: u64,
    /// PTE tables the workload emptied: spans whose pages were all
    /// DONTNEEDed (with PT_RECLAIM, `whole` frees them, `halves` cannot).
    pub empty_tables: u64,
    /// PTE tables with a page in them when the report was printed.
    pub populated_tables: u64,
    /// The range the workload used, inside its (slightly larger) mapping,
    /// in hex as in `/proc/PID/maps`.
    pub range_start: String,
    pub range_end: String,
}

/// Print `report`, then wait for one line on stdin (the caller's go).
pub fn print_and_wait_line(report: &impl Serialize) -> Result<()> {
    crate::print_report(report)?;
    wait_on_stdin(|read| read.contains(&b'\n')).context("waiting for a line on stdin")
}

/// Print `report`, then wait until stdin is closed.
pub fn print_and_wait(report: &impl Serialize) -> Result<()> {
    crate::print_report(report)?;
    wait_on_stdin(|_| false).context("waiting for stdin to close")
}

/// Read stdin into a stack buffer until it closes or `done` says so of what
/// one read returned. Nothing is allocated: a heap growing across a 2 MiB
/// boundary would add a PTE table after the report, and the tests compare
/// the report's `VmPTE` with the kernel's while the workload waits here.
fn wait_on_stdin(done: impl Fn(&[u8]) -> bool) -> std::io::Result<()> {
    let mut buffer = [0u8; 256];
    loop {
        // SAFETY: reading into a buffer of the length given.
        let read = unsafe { libc::read(libc::STDIN_FILENO, buffer.as_mut_ptr().cast(), buffer.len()) };
        match usize::try_from(read) {
            Ok(0) => return Ok(()),
            Ok(read) if done(&buffer[..read]) => return Ok(()),
            Ok(_) => {}
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// `halves MIB` (`pieces` 2) and `whole MIB` (`pieces` 1): map `mib` MiB
/// (2 MiB aligned, no THP) with a page in each 2 MiB span, so that each has
/// its PTE table, then DONTNEED each span in `pieces` calls. Whether a call
/// can reclaim depends on what it covers, not on how many pages the table
/// held. Returns the still-mapped region.
pub fn split_spans(mib: usize, pieces: usize) -> Result<(EmptyReport, Region)> {
    if mib == 0 || !mib.is_multiple_of(2) {
        bail!("MIB must be a positive multiple of 2, not {mib}");
    }
    let vmpte_before_kib = vmpte_kib()?;
    let region = Region::new(mib * MIB, 0)?;
    region.touch_tables();
    let mut report = Report { pid: std::process::id(), ..Report::default() };
    report.vmpte_peak_kib = vmpte_kib()?;
    let piece = PTE_TABLE_SPAN / pieces;
    let mut from = 0;
    while from < region.len {
        for i in 0..pieces {
            // SAFETY: every piece lies inside the region.
            report.bytes += advise(unsafe { region.start.add(from + i * piece) }, piece, Advice::Dontneed)?;
            report.calls += 1;
        }
        if pieces == 1 {
            report.expected_tables += 1;
        }
        from += PTE_TABLE_SPAN;
    }
    report.vmpte_end_kib = vmpte_kib()?;
    report.vmpte_drop_kib = report.vmpte_peak_kib.saturating_sub(report.vmpte_end_kib);
    let empty = (region.len / PTE_TABLE_SPAN) as u64;
    let (start, end) = (region.start as usize, region.start as usize + region.len);
    let out = EmptyReport {
        report,
        vmpte_before_kib,
        empty_tables: empty,
        populated_tables: 0,
        range_start: hex(start),
        range_end: hex(end),
    };
    Ok((out, region))
}

/// An aligned anonymous mapping of address space, no THP, nothing touched.
pub struct Sparse {
    base: *mut u8,
    map_len: usize,
}

impl Drop for Sparse {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

/// `sparse GIB EVERY`: map `gib` GiB, write one page at the start of every
/// 2 MiB span, then DONTNEED that page again in every `every`-th span (0:
/// none). Memory used: 8 KiB per span (the page and its PTE table), 256 MiB
/// for 64 GiB.
pub fn sparse(gib: usize, every: usize) -> Result<(EmptyReport, Sparse)> {
    if gib == 0 {
        bail!("GIB must be positive");
    }
    let vmpte_before_kib = vmpte_kib()?;
    let len = gib * GIB;
    let map_len = len + PTE_TABLE_SPAN;
    let base = map_anonymous(map_len)?;
    let start = (base as usize).next_multiple_of(PTE_TABLE_SPAN) as *mut u8;
    let sparse = Sparse { base, map_len };
    // SAFETY: the whole mapping belongs to us.
    if unsafe { libc::madvise(base.cast(), map_len, libc::MADV_NOHUGEPAGE) } != 0 {
        bail!("MADV_NOHUGEPAGE failed: {}", std::io::Error::last_os_error());
    }
    let spans = len / PTE_TABLE_SPAN;
    let mut report = Report { pid: std::process::id(), ..Report::default() };
    for span in 0..spans {
        // SAFETY: inside the mapping.
        unsafe { start.add(span * PTE_TABLE_SPAN).write_volatile(1) };
    }
    report.vmpte_peak_kib = vmpte_kib()?;
    let mut empty = 0;
    if every > 0 {
        for span in (0..spans).step_by(every) {
            // SAFETY: one page inside the mapping; the call covers 4 KiB of
            // the span, so PT_RECLAIM leaves its (now empty) table.
            report.bytes += advise(unsafe { start.add(span * PTE_TABLE_SPAN) }, PAGE, Advice::Dontneed)?;
            report.calls += 1;
            empty += 1;
        }
    }
    report.vmpte_end_kib = vmpte_kib()?;
    report.vmpte_drop_kib = report.vmpte_peak_kib.saturating_sub(report.vmpte_end_kib);
    let (from, to) = (start as usize, start as usize + len);
    let out = EmptyReport {
        report,
        vmpte_before_kib,
        empty_tables: empty,
        populated_tables: spans as u64 - empty,
        range_start: hex(from),
        range_end: hex(to),
    };
    Ok((out, sparse))
}

fn hex(addr: usize) -> String {
    format!("{addr:x}")
}
