//! Reading `/proc/PID/pagemap` and reducing it, span by span, to what the
//! estimate needs: whether a 2 MiB span has any page present or swapped.
//!
//! pagemap has one 8-byte entry per page of address space, mapped or not, so
//! reading it costs as much as the address space read is large, whether or
//! not page tables are there: the estimator reads only the spans `smaps`
//! cannot settle, and samples them when they are too many for its budget.

use std::{fs::File, io, os::unix::fs::FileExt as _};

use super::{estimate::Geometry, read::SpanReader};

/// Page present in memory.
pub const PM_PRESENT: u64 = 1 << 63;
/// Swap entry, including migration entries and PTE markers (uffd-wp): an
/// entry that keeps a PTE table non-empty without a page.
pub const PM_SWAP: u64 = 1 << 62;

/// Whether one span's entries hold anything that needs its table.
pub fn holds_entries(entries: &[u64]) -> bool {
    entries.iter().any(|&e| e & (PM_PRESENT | PM_SWAP) != 0)
}

/// An open pagemap.
pub struct Pagemap {
    file: File,
    geometry: Geometry,
    /// Reused across reads: raw entries of one chunk.
    bytes: Vec<u8>,
    entries: Vec<u64>,
}

impl Pagemap {
    pub fn open(pid: u32, geometry: Geometry) -> io::Result<Self> {
        let file = File::open(format!("/proc/{pid}/pagemap"))?;
        Ok(Self { file, geometry, bytes: Vec::new(), entries: Vec::new() })
    }

    /// The entries of `pages` pages from `addr` into `self.entries`. Entries
    /// the kernel does not return (beyond the user address space, or the
    /// process' memory is gone: the caller finds out from `status`) read as
    /// empty.
    fn read_entries(&mut self, addr: u64, pages: usize) -> io::Result<()> {
        self.bytes.clear();
        self.bytes.resize(pages * 8, 0);
        let offset = addr / self.geometry.page_size * 8;
        let mut done = 0;
        while done < self.bytes.len() {
            match self.file.read_at(&mut self.bytes[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.entries.clear();
        self.entries.extend(self.bytes.chunks_exact(8).map(|e| u64::from_ne_bytes(e.try_into().unwrap_or([0; 8]))));
        Ok(())
    }
}

impl SpanReader for Pagemap {
    type Error = io::Error;

    fn read(&mut self, first: u64, count: u64, out: &mut Vec<bool>) -> io::Result<()> {
        let per_span = self.geometry.entries() as usize;
        self.read_entries(first.saturating_mul(self.geometry.span()), count as usize * per_span)?;
        out.extend(self.entries.chunks(per_span).map(holds_entries));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_swapped_and_empty_entries() {
        assert!(!holds_entries(&[0; 512]));
        assert!(holds_entries(&[0, PM_PRESENT | 1234, 0]));
        assert!(holds_entries(&[PM_SWAP]));
        // Other bits (soft-dirty, exclusive, file) alone hold nothing.
        assert!(!holds_entries(&[1 << 55 | 1 << 56 | 1 << 61]));
    }

    #[test]
    fn own_pagemap_sees_own_stack_and_not_a_hole() {
        let geometry = Geometry { page_size: 4096 };
        let mut pagemap = Pagemap::open(std::process::id(), geometry).expect("open own pagemap");
        let local = 0u64;
        let span = std::hint::black_box(&local) as *const u64 as u64 / geometry.span();
        let mut out = Vec::new();
        pagemap.read(span, 1, &mut out).expect("read");
        assert_eq!(out, [true], "the span of a live stack variable holds its page");
        // Span 0 (address 0) is never mapped; above the user address space
        // reads as empty rather than failing.
        out.clear();
        pagemap.read(0, 1, &mut out).expect("read");
        pagemap.read(u64::MAX / geometry.span() - 1, 1, &mut out).expect("read beyond");
        assert_eq!(out, [false, false]);
    }
}
