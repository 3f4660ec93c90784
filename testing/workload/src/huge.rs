//! Workloads whose page tables are freed outside the mmu_gather: the PTE
//! table deposited with an anonymous THP (cause `thp`) and the PTE tables a
//! shmem collapse retires (cause `collapse`).

use anyhow::{bail, Context as _, Result};

use crate::{advise, vmpte_kib, Advice, Report, MIB, PTE_TABLE_SPAN};

/// `MADV_COLLAPSE` (6.1+): collapse the range into PMD-mapped THPs now.
const MADV_COLLAPSE: libc::c_int = 25;

/// A 2 MiB-aligned window of `len` bytes inside a reserved range.
struct Aligned {
    reserve: *mut u8,
    reserve_len: usize,
    start: *mut u8,
    len: usize,
}

impl Aligned {
    /// Reserve `len` + 2 MiB of address space and pick its aligned part.
    fn reserve(len: usize) -> Result<Self> {
        let reserve_len = len + PTE_TABLE_SPAN;
        // SAFETY: anonymous PROT_NONE reservation, checked below.
        let reserve = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if reserve == libc::MAP_FAILED {
            bail!("reserving {reserve_len} bytes failed: {}", std::io::Error::last_os_error());
        }
        let start = (reserve as usize).next_multiple_of(PTE_TABLE_SPAN) as *mut u8;
        Ok(Self { reserve: reserve.cast(), reserve_len, start, len })
    }

    /// Map the window over the reservation (`MAP_FIXED`).
    fn map(&self, flags: libc::c_int, fd: libc::c_int) -> Result<()> {
        // SAFETY: replaces part of our own reservation.
        let mapped = unsafe {
            libc::mmap(self.start.cast(), self.len, libc::PROT_READ | libc::PROT_WRITE, flags | libc::MAP_FIXED, fd, 0)
        };
        if mapped == libc::MAP_FAILED {
            bail!("mmap of {} bytes failed: {}", self.len, std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn madvise(&self, advice: libc::c_int, what: &str) -> Result<()> {
        // SAFETY: the window belongs to our mapping.
        if unsafe { libc::madvise(self.start.cast(), self.len, advice) } != 0 {
            bail!("{what} failed: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn touch(&self) {
        for offset in (0..self.len).step_by(4096) {
            // SAFETY: inside the mapping.
            unsafe { self.start.add(offset).write_volatile(1) };
        }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: unmapping our own reservation (and what was mapped over it).
        unsafe { libc::munmap(self.reserve.cast(), self.reserve_len) };
    }
}

/// A `kB` field of `/proc/self/smaps_rollup`, e.g. `AnonHugePages`.
fn rollup_kib(field: &str) -> Result<u64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").context("reading /proc/self/smaps_rollup")?;
    rollup
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/self/smaps_rollup"))
}

/// Map `mib` MiB of anonymous memory with `MADV_HUGEPAGE`, touch it so that
/// its 2 MiB spans are THPs (each with a deposited PTE table counted in
/// VmPTE), then DONTNEED all of it: each huge PMD zapped frees its deposited
/// table. `expected_tables` is the number of THPs the range had.
pub fn thp_dontneed(mib: usize) -> Result<Report> {
    let window = Aligned::reserve(mib * MIB)?;
    window.map(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)?;
    window.madvise(libc::MADV_HUGEPAGE, "MADV_HUGEPAGE")?;
    window.touch();
    let huge_kib = rollup_kib("AnonHugePages")?;
    let mut report = Report { pid: std::process::id(), ..Report::default() };
    report.expected_tables = huge_kib / (PTE_TABLE_SPAN as u64 / 1024);
    if report.expected_tables == 0 {
        bail!("no transparent huge page was allocated (THP disabled or memory too fragmented)");
    }
    report.vmpte_peak_kib = vmpte_kib()?;
    report.bytes = advise(window.start, window.len, Advice::Dontneed)?;
    report.calls = 1;
    report.vmpte_end_kib = vmpte_kib()?;
    report.vmpte_drop_kib = report.vmpte_peak_kib.saturating_sub(report.vmpte_end_kib);
    Ok(report)
}

/// Map `mib` MiB of a memfd (shmem) with small pages, touch every page (one
/// PTE table per 2 MiB), then `MADV_COLLAPSE` it into PMD-mapped THPs: the
/// kernel retires the now unused PTE tables (`pte_free_defer` on 6.5+).
/// `expected_tables` is the number of 2 MiB spans the call mapped by a PMD.
pub fn collapse_shmem(mib: usize) -> Result<Report> {
    let len = mib * MIB;
    // SAFETY: plain syscalls; the descriptor is closed below.
    let fd = unsafe { libc::memfd_create(c"ptwatch-collapse".as_ptr(), 0) };
    if fd < 0 {
        bail!("memfd_create failed: {}", std::io::Error::last_os_error());
    }
    let result = (|| {
        // SAFETY: sizing our own memfd.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            bail!("ftruncate failed: {}", std::io::Error::last_os_error());
        }
        let window = Aligned::reserve(len)?;
        window.map(libc::MAP_SHARED, fd)?;
        window.touch();
        let mut report = Report { pid: std::process::id(), ..Report::default() };
        // Spans a PMD maps already (a fault that found a huge folio) have no
        // PTE table to retire. Read before the first VmPTE reading: reading
        // smaps_rollup allocates, and an allocation between the two VmPTE
        // readings could map memory that needs a table of its own.
        let pmd_mapped_before = rollup_kib("ShmemPmdMapped")?;
        report.vmpte_peak_kib = vmpte_kib()?;
        window.madvise(MADV_COLLAPSE, "MADV_COLLAPSE")?;
        report.vmpte_end_kib = vmpte_kib()?;
        report.vmpte_drop_kib = report.vmpte_peak_kib.saturating_sub(report.vmpte_end_kib);
        let collapsed_kib = rollup_kib("ShmemPmdMapped")?.saturating_sub(pmd_mapped_before);
        if pmd_mapped_before > 0 {
            eprintln!("collapse: {pmd_mapped_before} kB PMD-mapped before MADV_COLLAPSE");
        }
        report.expected_tables = collapsed_kib / (PTE_TABLE_SPAN as u64 / 1024);
        Ok(report)
    })();
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    result
}
