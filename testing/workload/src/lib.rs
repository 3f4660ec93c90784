//! Workloads with known page-table behaviour.
//!
//! Each one runs in its own process (so ptwatch attributes it to its own pid)
//! and reports what the kernel itself accounted: `VmPTE` from
//! `/proc/self/status` around every DONTNEED call. Tests compare ptwatch's
//! counts against these numbers.

use std::{
    fs,
    sync::{Arc, Barrier},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

pub mod churn;
pub mod crowd;
pub mod exec_step;
pub mod fleet;
pub mod huge;
pub mod parked;
pub mod phases;
pub mod sparse;
pub mod uring;

pub const MIB: usize = 1 << 20;
/// Span of one PTE table on x86_64 and arm64 with 4 KiB pages.
pub const PTE_TABLE_SPAN: usize = 2 * MIB;

/// A private anonymous read-write mapping of `len` bytes, `NORESERVE` so
/// that address space costs nothing until touched. The caller unmaps it.
pub fn map_anonymous(len: usize) -> Result<*mut u8> {
    map_anonymous_with(len, 0)
}

/// [`map_anonymous`] with extra `mmap` flags.
fn map_anonymous_with(len: usize, flags: libc::c_int) -> Result<*mut u8> {
    // SAFETY: a fresh anonymous mapping; the result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | flags,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        bail!("mmap of {len} bytes failed: {}", std::io::Error::last_os_error());
    }
    Ok(base.cast())
}

/// How the range is advised away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Advice {
    Dontneed,
    DontneedLocked,
    /// `process_madvise(2)` on the caller's own pidfd with `MADV_DONTNEED`.
    ProcessMadvise,
    /// `MADV_FREE`: never reclaims page tables (a negative control).
    Free,
    /// `MADV_DONTNEED` through x86_64's 32-bit syscall entry (`int 0x80`),
    /// as a 32-bit program issues it: a compat syscall, which the kernel's
    /// syscall tracepoints do not report. The range must lie below 4 GiB.
    Compat,
}

impl Advice {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "dontneed" => Self::Dontneed,
            "dontneed-locked" => Self::DontneedLocked,
            "process-madvise" => Self::ProcessMadvise,
            "free" => Self::Free,
            "compat" if cfg!(target_arch = "x86_64") => Self::Compat,
            "compat" => bail!("compat: a 32-bit madvise is only issued on x86_64 (int 0x80)"),
            other => bail!("unknown advice {other:?}"),
        })
    }
}

/// What the workload observed through the kernel's own accounting.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub pid: u32,
    /// Sum over DONTNEED calls of the `VmPTE` drop (kB) across the call.
    /// Only meaningful for single-threaded runs.
    pub vmpte_drop_kib: u64,
    /// `VmPTE` (kB) when the touched memory was all mapped, and at the end.
    pub vmpte_peak_kib: u64,
    pub vmpte_end_kib: u64,
    /// Successful advice calls and the bytes they covered.
    pub calls: u64,
    pub bytes: u64,
    /// PTE tables the workload expects to be reclaimed if PT_RECLAIM works:
    /// fully covered, fully populated 2 MiB spans, summed over rounds.
    pub expected_tables: u64,
    /// How the workload's final munmap of its region went, where it times
    /// it.
    #[serde(default)]
    pub region_unmap: Option<UnmapWindow>,
}

/// A munmap inside a quiet window of its own.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct UnmapWindow {
    /// Wall-clock time (ns since the epoch, the clock `ptwatch trace`
    /// stamps its events with) 10 ms before and 10 ms after the munmap.
    /// The process does nothing else in between, so whatever it freed in
    /// this window the munmap freed.
    pub start_ns: u64,
    pub end_ns: u64,
    /// `VmPTE` drop (kB) across the munmap: its page tables of every level.
    pub vmpte_drop_kib: u64,
}

/// `VmPTE` of this process, in kB.
///
/// Read into a stack buffer: a heap allocation here could grow the heap by
/// a page that needs a new PTE table, between the two readings around a
/// call, and the measurement would disturb what it measures.
pub fn vmpte_kib() -> Result<u64> {
    use std::io::Read as _;
    let mut buffer = [0u8; 8192];
    let mut file = fs::File::open("/proc/self/status").context("opening /proc/self/status")?;
    let mut filled = 0;
    loop {
        let read = file.read(&mut buffer[filled..]).context("reading /proc/self/status")?;
        if read == 0 || filled + read == buffer.len() {
            filled += read;
            break;
        }
        filled += read;
    }
    std::str::from_utf8(&buffer[..filled])
        .ok()
        .and_then(|status| status.lines().find_map(|line| line.strip_prefix("VmPTE:")))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmPTE in /proc/self/status")
}

/// Print `report` as one JSON line and flush it (callers inspect this
/// process while it lives). It never touches the heap: serialized through
/// a stack buffer to a duplicate of fd 1, not through std's stdout, whose
/// buffer is allocated on first use and freed at exit. A freed heap page is
/// one the allocator may unmap (musl's does), and that munmap could free a
/// page table the report does not count.
pub fn print_report(report: &impl Serialize) -> Result<()> {
    use std::io::Write as _;
    // SAFETY: fd 1 stays open for the whole life of the process; the
    // duplicate is closed when the writer drops.
    let stdout = unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::STDOUT_FILENO) };
    let mut out = StackWriter::new(fs::File::from(stdout.try_clone_to_owned().context("duplicating stdout")?));
    serde_json::to_writer(&mut out, report).context("writing the report to stdout")?;
    out.write_all(b"\n").and_then(|()| out.flush()).context("writing the report to stdout")
}

/// A buffered writer whose buffer is on the stack (see [`print_report`]).
struct StackWriter {
    out: fs::File,
    buffer: [u8; 4096],
    filled: usize,
}

impl StackWriter {
    fn new(out: fs::File) -> Self {
        Self { out, buffer: [0; 4096], filled: 0 }
    }
}

impl std::io::Write for StackWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.filled == self.buffer.len() {
            self.flush()?;
        }
        let taken = data.len().min(self.buffer.len() - self.filled);
        self.buffer[self.filled..self.filled + taken].copy_from_slice(&data[..taken]);
        self.filled += taken;
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.write_all(&self.buffer[..self.filled])?;
        self.filled = 0;
        Ok(())
    }
}

/// An anonymous mapping whose usable part starts `offset` bytes after a
/// 2 MiB boundary, with transparent huge pages disabled so that every touched
/// 2 MiB span gets a PTE table.
pub struct Region {
    base: *mut u8,
    map_len: usize,
    pub start: *mut u8,
    pub len: usize,
}

// SAFETY: the region is plain anonymous memory; threads use disjoint regions.
unsafe impl Send for Region {}

impl Region {
    pub fn new(len: usize, offset: usize) -> Result<Self> {
        Self::mapped_with(len, offset, 0)
    }

    /// A region a 32-bit program could address: below 2 GiB
    /// (`MAP_32BIT`, x86_64).
    pub fn below_4gib(len: usize, offset: usize) -> Result<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            Self::mapped_with(len, offset, libc::MAP_32BIT)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            bail!("a mapping below 4 GiB for a 32-bit syscall ({len} bytes at {offset}) is only made on x86_64")
        }
    }

    fn mapped_with(len: usize, offset: usize, flags: libc::c_int) -> Result<Self> {
        let map_len = len + offset + 2 * PTE_TABLE_SPAN;
        let base = map_anonymous_with(map_len, flags)?;
        let aligned = (base as usize).next_multiple_of(PTE_TABLE_SPAN);
        let start = (aligned + offset) as *mut u8;
        // SAFETY: the whole mapping belongs to us.
        if unsafe { libc::madvise(base.cast(), map_len, libc::MADV_NOHUGEPAGE) } != 0 {
            bail!("MADV_NOHUGEPAGE failed: {}", std::io::Error::last_os_error());
        }
        Ok(Self { base, map_len, start, len })
    }

    /// Write one byte in every page, so every page and every PTE table of the
    /// range exists. The concurrent modes need it: their point is faults
    /// racing other threads' zaps.
    pub fn touch(&self) {
        let mut offset = 0;
        while offset < self.len {
            // SAFETY: inside the mapping.
            unsafe { self.start.add(offset).write_volatile(1) };
            offset += 4096;
        }
    }

    /// Write one byte in each 2 MiB span the range overlaps, so every PTE
    /// table of the range exists, with one page in it. The page tables, the
    /// `VmPTE` a test compares with and what a DONTNEED reclaims are those
    /// of [`Self::touch`] (a zap empties a table however many pages it
    /// held); the faults are 512 times fewer. Under an emulated CPU the
    /// faults were most of a test's time: 12.6 s for 1 GiB in an x86_64
    /// guest, against 0.17 s.
    pub fn touch_tables(&self) {
        let start = self.start as usize;
        let mut at = start;
        while at < start + self.len {
            // SAFETY: inside the mapping.
            unsafe { (at as *mut u8).write_volatile(1) };
            at = (at + 1).next_multiple_of(PTE_TABLE_SPAN);
        }
    }

    /// Number of PTE tables a reclaiming DONTNEED of `[start + from, +len)` frees:
    /// the 2 MiB spans it covers completely.
    pub fn covered_spans(&self, from: usize, len: usize) -> u64 {
        let begin = (self.start as usize + from).next_multiple_of(PTE_TABLE_SPAN);
        let end = (self.start as usize + from + len) / PTE_TABLE_SPAN * PTE_TABLE_SPAN;
        if end > begin {
            ((end - begin) / PTE_TABLE_SPAN) as u64
        } else {
            0
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

/// Apply `advice` to `[addr, addr + len)`; returns the bytes the kernel says
/// it advised.
pub fn advise(addr: *mut u8, len: usize, advice: Advice) -> Result<u64> {
    match advice {
        Advice::ProcessMadvise => {
            // SAFETY: plain syscalls on our own pid; the iovec lives across the call.
            unsafe {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0);
                if pidfd < 0 {
                    bail!("pidfd_open failed: {}", std::io::Error::last_os_error());
                }
                let iov = libc::iovec { iov_base: addr.cast(), iov_len: len };
                let ret = libc::syscall(
                    libc::SYS_process_madvise,
                    pidfd as libc::c_int,
                    &iov as *const libc::iovec,
                    1usize,
                    libc::MADV_DONTNEED,
                    0u32,
                );
                let err = std::io::Error::last_os_error();
                libc::close(pidfd as libc::c_int);
                if ret < 0 {
                    bail!("process_madvise failed: {err}");
                }
                Ok(ret as u64)
            }
        }
        Advice::Compat => compat_dontneed(addr, len),
        _ => {
            let behaviour = match advice {
                Advice::Dontneed => libc::MADV_DONTNEED,
                Advice::DontneedLocked => 24, // MADV_DONTNEED_LOCKED (5.18+)
                Advice::Free => libc::MADV_FREE,
                Advice::ProcessMadvise | Advice::Compat => unreachable!("handled above"),
            };
            // SAFETY: the range belongs to a mapping of ours.
            if unsafe { libc::madvise(addr.cast(), len, behaviour) } != 0 {
                bail!("madvise failed: {}", std::io::Error::last_os_error());
            }
            Ok(len as u64)
        }
    }
}

/// `madvise(addr, len, MADV_DONTNEED)` through the 32-bit syscall entry
/// (`int 0x80` from 64-bit code enters the kernel exactly as a 32-bit
/// program's call does: ia32 syscall numbers, arguments in ebx, ecx, edx).
#[cfg(target_arch = "x86_64")]
fn compat_dontneed(addr: *mut u8, len: usize) -> Result<u64> {
    /// `__NR_madvise` in the ia32 syscall table.
    const IA32_MADVISE: i32 = 219;
    let start = u32::try_from(addr as usize).context("a 32-bit madvise needs its range below 4 GiB")?;
    let len32 = u32::try_from(len).context("a 32-bit madvise covers less than 4 GiB")?;
    let ret: i32;
    // SAFETY: the range is a mapping of ours. LLVM reserves rbx, so the
    // first argument is swapped into it around the call (as a 64-bit
    // register, so rbx comes back whole); the kernel zeroes r8–r11 on
    // return from this entry.
    unsafe {
        core::arch::asm!(
            "xchg {start}, rbx",
            "int 0x80",
            "xchg {start}, rbx",
            start = inout(reg) u64::from(start) => _,
            inlateout("eax") IA32_MADVISE => ret,
            in("ecx") len32,
            in("edx") libc::MADV_DONTNEED,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        );
    }
    if ret < 0 {
        bail!("32-bit madvise failed: {}", std::io::Error::from_raw_os_error(-ret));
    }
    Ok(len as u64)
}

#[cfg(not(target_arch = "x86_64"))]
fn compat_dontneed(_addr: *mut u8, _len: usize) -> Result<u64> {
    bail!("a 32-bit madvise is only issued on x86_64")
}

/// Single-threaded: map and touch `mib` MiB starting `offset_kib` after a
/// 2 MiB boundary, then advise it away in consecutive cuts of `cut_kib`,
/// measuring `VmPTE` around each call; repeat `rounds` times.
pub fn cuts(mib: usize, offset_kib: usize, cut_kib: usize, rounds: u32, advice: Advice) -> Result<Report> {
    let len = mib * MIB;
    let cut = (cut_kib * 1024).max(4096);
    let region = match advice {
        Advice::Compat => Region::below_4gib(len, offset_kib * 1024)?,
        _ => Region::new(len, offset_kib * 1024)?,
    };
    let mut report = Report { pid: std::process::id(), ..Report::default() };
    for _ in 0..rounds {
        region.touch_tables();
        report.vmpte_peak_kib = report.vmpte_peak_kib.max(vmpte_kib()?);
        let mut from = 0;
        while from < len {
            let this = cut.min(len - from);
            let before = vmpte_kib()?;
            // SAFETY: inside the region.
            report.bytes += advise(unsafe { region.start.add(from) }, this, advice)?;
            let after = vmpte_kib()?;
            report.vmpte_drop_kib += before.saturating_sub(after);
            report.calls += 1;
            report.expected_tables += region.covered_spans(from, this);
            from += this;
        }
    }
    report.vmpte_end_kib = vmpte_kib()?;
    report.region_unmap = Some(unmap_in_window(region)?);
    Ok(report)
}

/// Unmap `region` inside a quiet window of its own: 10 ms of doing nothing
/// on each side, which the clock conversion of a trace's timestamps cannot
/// blur. The process's other unmaps (the runtime's, at exit) fall outside.
fn unmap_in_window(region: Region) -> Result<UnmapWindow> {
    const QUIET: std::time::Duration = std::time::Duration::from_millis(10);
    let start_ns = wall_clock_ns();
    std::thread::sleep(QUIET);
    let before = vmpte_kib()?;
    drop(region);
    let after = vmpte_kib()?;
    std::thread::sleep(QUIET);
    Ok(UnmapWindow { start_ns, end_ns: wall_clock_ns(), vmpte_drop_kib: before.saturating_sub(after) })
}

/// Nanoseconds since the epoch (CLOCK_REALTIME), the clock `ptwatch trace`
/// stamps its events with: tests that compare a window with those stamps
/// take both ends from here.
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

/// DONTNEED requests the kernel refuses, between ones it accepts: for each
/// 2 MiB span of `mib` MiB, a one-page and a whole-span request starting one
/// byte into the span (`EINVAL`: nothing is zapped), then one page at the
/// span's start (accepted). Only the accepted ones are reported, and no
/// table can be reclaimed.
pub fn refused(mib: usize) -> Result<Report> {
    let len = mib * MIB;
    let region = Region::new(len, 0)?;
    region.touch_tables();
    let mut report = Report { pid: std::process::id(), ..Report::default() };
    for span in (0..len).step_by(PTE_TABLE_SPAN) {
        // SAFETY: inside the region.
        let start = unsafe { region.start.add(span) };
        for refused_len in [4096, PTE_TABLE_SPAN] {
            // SAFETY: an unaligned start: the kernel refuses before it
            // touches anything.
            let ret = unsafe { libc::madvise(start.wrapping_add(1).cast(), refused_len, libc::MADV_DONTNEED) };
            let err = std::io::Error::last_os_error();
            if ret != -1 || err.raw_os_error() != Some(libc::EINVAL) {
                bail!("an unaligned DONTNEED of {refused_len} bytes was not refused with EINVAL ({ret}, {err})");
            }
        }
        report.bytes += advise(start, 4096, Advice::Dontneed)?;
        report.calls += 1;
    }
    report.vmpte_end_kib = vmpte_kib()?;
    Ok(report)
}

/// Multi-threaded: `threads` threads, each with its own `mib` MiB region,
/// each looping `rounds` times over {touch; DONTNEED whole region}, all at
/// once and without any synchronisation between rounds, so faults of some
/// threads overlap DONTNEED calls of others.
pub fn threads(threads: usize, mib: usize, rounds: u32) -> Result<Report> {
    let len = mib * MIB;
    let start = Arc::new(Barrier::new(threads));
    // The workers park when done (`parked`): a thread's end would add the
    // C library's own calls (glibc DONTNEEDs the stack) to the process's.
    let results = parked::run_parked(threads, move || -> Result<(u64, u64, u64, Region)> {
        // Every worker reaches the barrier, even one whose mapping failed:
        // the others would wait for it for ever.
        let region = Region::new(len, 0);
        start.wait();
        let region = region?;
        let (mut calls, mut bytes, mut tables) = (0, 0, 0);
        for _ in 0..rounds {
            region.touch();
            bytes += advise(region.start, region.len, Advice::Dontneed)?;
            calls += 1;
            tables += region.covered_spans(0, region.len);
        }
        // Handed back, not unmapped here: a thread done early would
        // otherwise free its tables while the others still DONTNEED, which
        // the approximate measure (pgtables_bytes) would take for their
        // reclaim.
        Ok((calls, bytes, tables, region))
    });
    let mut report = Report { pid: std::process::id(), ..Report::default() };
    let mut regions = Vec::new();
    for result in results {
        let (calls, bytes, tables, region) = result?;
        report.calls += calls;
        report.bytes += bytes;
        report.expected_tables += tables;
        regions.push(region);
    }
    drop(regions);
    report.vmpte_end_kib = vmpte_kib()?;
    Ok(report)
}

/// Map and touch `mib` MiB, then unmap it: its PTE tables are freed by
/// `free_pgtables` (cause `unmap`). `before_unmap` gets the report so far
/// (expected tables) right before the munmap: the paced variant hands over
/// to its caller there, which can then read the process' counters around
/// the munmap alone.
///
/// The peak is read after `before_unmap`, right before the munmap: what it
/// does (print, wait for a line) may fault in a page of a fresh allocation
/// and so a PTE table (the static builds' allocators, musl's and glibc's,
/// map or grow into new 2 MiB spans), which would take one table off the
/// munmap's drop.
pub fn unmap(mib: usize, before_unmap: impl FnOnce(&Report) -> Result<()>) -> Result<Report> {
    let region = Region::new(mib * MIB, 0)?;
    region.touch_tables();
    let mut report = Report { pid: std::process::id(), ..Report::default() };
    report.expected_tables = region.covered_spans(0, region.len);
    before_unmap(&report)?;
    report.vmpte_peak_kib = vmpte_kib()?;
    drop(region);
    report.vmpte_end_kib = vmpte_kib()?;
    report.vmpte_drop_kib = report.vmpte_peak_kib.saturating_sub(report.vmpte_end_kib);
    Ok(report)
}

/// Map and touch `mib` MiB and return without unmapping: the caller exits,
/// so the tables are freed by the exit teardown (cause `exit`).
pub fn exit_with_tables(mib: usize) -> Result<Report> {
    let region = Region::new(mib * MIB, 0)?;
    region.touch_tables();
    let report = Report {
        pid: std::process::id(),
        vmpte_peak_kib: vmpte_kib()?,
        expected_tables: region.covered_spans(0, region.len),
        ..Report::default()
    };
    // Leave the mapping for exit_mmap.
    std::mem::forget(region);
    Ok(report)
}

/// Map and touch `mib` MiB (2 MiB aligned, no THP), DONTNEED all of it and
/// return the still-mapped region with the report: without PT_RECLAIM its
/// `expected_tables` PTE tables stay behind, empty, for as long as the caller
/// keeps the region (what `ptwatch scan` is tested against).
pub fn hold_dontneeded(mib: usize) -> Result<(Report, Region)> {
    let region = Region::new(mib * MIB, 0)?;
    region.touch_tables();
    let mut report = Report { pid: std::process::id(), ..Report::default() };
    report.vmpte_peak_kib = vmpte_kib()?;
    report.bytes = advise(region.start, region.len, Advice::Dontneed)?;
    report.calls = 1;
    report.expected_tables = region.covered_spans(0, region.len);
    report.vmpte_end_kib = vmpte_kib()?;
    report.vmpte_drop_kib = report.vmpte_peak_kib.saturating_sub(report.vmpte_end_kib);
    Ok((report, region))
}
