//! Reading `/proc/PID/pagemap` and reducing it, span by span, to what the
//! estimate needs: whether a 2 MiB span has any page present or swapped.
//!
//! pagemap has one 8-byte entry per page of address space, mapped or not, so
//! a sparse process costs as much to read as its mappings are large: entries
//! are read with one `pread` per 64 spans (128 MiB, 256 KiB of entries), and
//! mappings smaps proves empty are not read at all.

use std::{fs::File, io, os::unix::fs::FileExt as _};

use super::estimate::{Geometry, Leaf, Needed};

/// Page present in memory.
pub const PM_PRESENT: u64 = 1 << 63;
/// Swap entry, including migration entries and PTE markers (uffd-wp, guard
/// regions): anything that keeps a PTE table non-empty without a page.
pub const PM_SWAP: u64 = 1 << 62;

/// Spans read per `pread`.
const CHUNK_SPANS: u64 = 64;

/// What the pagemap entries of one mapping hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingTally {
    pub present_pages: u64,
    pub swapped_pages: u64,
    /// Spans inside the mapping whose every page is present (a PMD-mapped
    /// THP is one of these).
    pub full_present_spans: u64,
    /// Spans inside the mapping with nothing present or swapped: where an
    /// empty PTE table can be.
    pub empty_spans: u64,
}

/// An open pagemap; reads fail with `UnexpectedEof` once the process' address
/// space is gone (pagemap then reads as empty).
pub struct Pagemap {
    file: File,
    /// Reused across reads: one chunk of raw entries.
    bytes: Vec<u8>,
}

impl Pagemap {
    pub fn open(pid: u32) -> io::Result<Self> {
        Ok(Self { file: File::open(format!("/proc/{pid}/pagemap"))?, bytes: Vec::new() })
    }

    /// The entries of `pages` pages from `addr` into `out`.
    pub fn read(&mut self, geometry: Geometry, addr: u64, pages: usize, out: &mut Vec<u64>) -> io::Result<()> {
        let bytes = &mut self.bytes;
        bytes.resize(pages * 8, 0);
        let offset = addr / geometry.page_size * 8;
        let mut done = 0;
        while done < bytes.len() {
            match self.file.read_at(&mut bytes[done..], offset + done as u64) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        out.clear();
        out.extend(bytes.chunks_exact(8).map(|entry| u64::from_ne_bytes(entry.try_into().unwrap_or([0; 8]))));
        Ok(())
    }
}

/// Go through `[start, end)` span by span, reading entries with `read(addr,
/// pages, out)`; every span with a present or swapped page is added to
/// `needed` at `leaf`.
pub fn scan_mapping<E>(
    geometry: Geometry,
    start: u64,
    end: u64,
    leaf: Leaf,
    needed: &mut Needed,
    mut read: impl FnMut(u64, usize, &mut Vec<u64>) -> Result<(), E>,
) -> Result<MappingTally, E> {
    let span = geometry.span();
    let mut tally = MappingTally::default();
    let mut entries = Vec::new();
    let mut addr = start;
    while addr < end {
        // Chunks end on a span boundary, so no span is split between reads.
        let chunk_end = (addr / span * span).saturating_add(CHUNK_SPANS * span).min(end);
        let pages = ((chunk_end - addr) / geometry.page_size) as usize;
        read(addr, pages, &mut entries)?;
        let mut at = addr;
        let mut index = 0;
        while at < chunk_end && index < entries.len() {
            let span_start = at / span * span;
            let span_end = span_start.saturating_add(span).min(chunk_end);
            let count = (((span_end - at) / geometry.page_size) as usize).min(entries.len() - index);
            let slice = &entries[index..index + count];
            let present = slice.iter().filter(|&&e| e & PM_PRESENT != 0).count() as u64;
            let swapped = slice.iter().filter(|&&e| e & PM_PRESENT == 0 && e & PM_SWAP != 0).count() as u64;
            tally.present_pages += present;
            tally.swapped_pages += swapped;
            if present + swapped > 0 {
                needed.add(geometry, span_start, leaf);
            }
            if span_start >= start && span_start + span <= end {
                if present == geometry.entries() {
                    tally.full_present_spans += 1;
                } else if present + swapped == 0 {
                    tally.empty_spans += 1;
                }
            }
            index += count;
            at = span_end;
        }
        addr = chunk_end;
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry { page_size: 4096 };
    const SPAN: u64 = 2 << 20;

    /// A made-up pagemap: `f(addr)` is the entry of the page at `addr`;
    /// also counts the reads.
    fn scan(start: u64, end: u64, f: impl Fn(u64) -> u64) -> (MappingTally, Needed, usize) {
        let mut needed = Needed::default();
        let mut reads = 0;
        let tally = scan_mapping::<()>(GEO, start, end, Leaf::Pte, &mut needed, |addr, pages, out| {
            reads += 1;
            out.clear();
            out.extend((0..pages as u64).map(|i| f(addr + i * 4096)));
            Ok(())
        })
        .expect("no error");
        (tally, needed, reads)
    }

    #[test]
    fn empty_present_and_swapped_spans() {
        // Spans 0..8 of a mapping at 16 MiB: span 1 fully present, span 3
        // one swapped page, span 5 one present page, the rest empty.
        let base = 8 * SPAN;
        let (tally, needed, _) = scan(base, base + 8 * SPAN, |addr| match (addr - base) / SPAN {
            1 => PM_PRESENT | 1234,
            3 if addr % SPAN == 0 => PM_SWAP,
            5 if addr % SPAN == 4096 => PM_PRESENT,
            _ => 0,
        });
        assert_eq!(tally.present_pages, 513);
        assert_eq!(tally.swapped_pages, 1);
        assert_eq!(tally.full_present_spans, 1);
        assert_eq!(tally.empty_spans, 5);
        assert_eq!((needed.pte, needed.pmd, needed.pud), (3, 1, 1));
    }

    #[test]
    fn partial_spans_at_the_edges_are_not_counted_empty() {
        // From 1 MiB to 7 MiB: spans 0 and 3 are partial, 1 and 2 inside.
        let (tally, needed, _) = scan(SPAN / 2, 3 * SPAN + SPAN / 2, |_| 0);
        assert_eq!(tally.empty_spans, 2);
        assert_eq!(needed.total(), 0);
        // A page present in a partial span still needs its table.
        let (tally, needed, _) =
            scan(SPAN / 2, 3 * SPAN + SPAN / 2, |addr| if addr == SPAN / 2 { PM_PRESENT } else { 0 });
        assert_eq!(tally.empty_spans, 2);
        assert_eq!(needed.pte, 1);
    }

    #[test]
    fn reads_are_chunked_on_span_boundaries() {
        // 1 GiB + 1 MiB, starting mid-span: 513 spans touched, 9 reads
        // (the first ends at the 64-span boundary).
        let start = SPAN / 2;
        let (tally, _, reads) = scan(start, start + (1 << 30) + (1 << 20), |_| PM_PRESENT);
        assert_eq!(reads, 9);
        assert_eq!(tally.present_pages, ((1 << 30) + (1 << 20)) / 4096);
        assert_eq!(tally.full_present_spans, 512);
    }

    #[test]
    fn read_errors_stop_the_scan() {
        let mut needed = Needed::default();
        let result = scan_mapping(GEO, 0, SPAN, Leaf::Pte, &mut needed, |_, _, _| Err("gone"));
        assert_eq!(result, Err("gone"));
    }
}
