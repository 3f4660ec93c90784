//! Anonymous memory the agent maps for its own start-up experiments (the
//! PT_RECLAIM behaviour test, the page-table walk's calibration and
//! self-test): 2 MiB-aligned, without transparent huge pages, so that each
//! touched 2 MiB span has exactly one PTE table.

use std::io;

/// The span one PTE table maps with 4 KiB pages.
pub const PTE_TABLE_SPAN: usize = 2 << 20;

/// An anonymous private mapping, unmapped on drop.
pub struct AnonMapping {
    base: *mut u8,
    len: usize,
}

impl AnonMapping {
    /// Map `len` bytes (THP disabled on the whole range).
    pub fn new(len: usize) -> io::Result<Self> {
        // SAFETY: anonymous private mapping, checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapping = Self { base: base.cast(), len };
        // THP would map whole spans with a PMD and no PTE table at all.
        // SAFETY: the whole range is our mapping.
        if unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(mapping)
    }

    /// Map room for `spans` whole, aligned 2 MiB spans.
    pub fn spans(spans: usize) -> io::Result<Self> {
        Self::new((spans + 1) * PTE_TABLE_SPAN)
    }

    /// Start of the mapping.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// First 2 MiB boundary inside the mapping.
    pub fn aligned_start(&self) -> *mut u8 {
        (self.base as usize).next_multiple_of(PTE_TABLE_SPAN) as *mut u8
    }

    /// Write one byte per page of `[offset, offset + len)` from the aligned
    /// start, so that those pages and their PTE tables exist.
    pub fn touch(&self, offset: usize, len: usize) {
        for at in (offset..offset + len).step_by(4096) {
            // SAFETY: callers stay inside the mapping (checked in debug).
            debug_assert!(self.aligned_start() as usize + at < self.base as usize + self.len);
            unsafe { self.aligned_start().add(at).write_volatile(1) };
        }
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
