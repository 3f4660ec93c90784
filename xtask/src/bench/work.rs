//! The timed loop of the benchmark: the access pattern PT_RECLAIM's authors
//! used to show the reclaim working. Map a large area, then over and over
//! touch one 2 MiB span (one PTE table) and MADV_DONTNEED it again, walking
//! through the area. With PT_RECLAIM every DONTNEED frees the emptied PTE
//! table and the next touch allocates one, so each iteration exercises the
//! whole path ptwatch observes: two syscall tracepoints and a table free.
use std::{io, time::Instant};

use anyhow::{bail, Context as _, Result};
use ptwatch_workload::{vmpte_kib, Region};
use serde::{Deserialize, Serialize};

/// The span one PTE table maps (x86_64 and arm64 with 4 KiB pages).
pub const CHUNK: usize = 2 << 20;
/// Reserved, never populated beyond one chunk at a time (MAP_NORESERVE).
pub const AREA: usize = 1 << 30;

/// What a `bench-loop` child prints, as one JSON line on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopReport {
    pub pid: u32,
    pub iterations: u64,
    pub elapsed_ns: u64,
    /// Whether one untimed DONTNEED freed a PTE table (`VmPTE` dropped): if
    /// not, the kernel lacks PT_RECLAIM and the bench measures less.
    pub pt_reclaim: bool,
}

/// The area, 2 MiB-aligned and without THP (see `ptwatch_workload::Region`),
/// so that every chunk is exactly one PTE table.
struct Area(Region);

impl Area {
    fn map() -> Result<Self> {
        Ok(Self(Region::new(AREA, 0)?))
    }

    /// Start of chunk `index` (modulo the area).
    fn chunk(&self, index: u64) -> *mut u8 {
        let chunks = (AREA / CHUNK) as u64;
        // SAFETY: the offset stays inside the aligned part of the mapping.
        unsafe { self.0.start.add((index % chunks) as usize * CHUNK) }
    }
}

/// Write one byte per page so that every page, and the PTE table, exists.
fn touch(chunk: *mut u8, page: usize) {
    let mut offset = 0;
    while offset < CHUNK {
        // SAFETY: inside a chunk of our mapping.
        unsafe { chunk.add(offset).write_volatile(1) };
        offset += page;
    }
}

fn dontneed(chunk: *mut u8) -> Result<()> {
    // SAFETY: a whole chunk of our mapping.
    if unsafe { libc::madvise(chunk.cast(), CHUNK, libc::MADV_DONTNEED) } != 0 {
        bail!("madvise(MADV_DONTNEED) failed: {}", io::Error::last_os_error());
    }
    Ok(())
}

fn page_size() -> Result<usize> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|&p| p > 0 && CHUNK.is_multiple_of(p))
        .with_context(|| format!("unexpected page size {page}"))
}

/// Run `iterations` touch-and-DONTNEED iterations and print a [`LoopReport`].
pub fn run(iterations: u64) -> Result<()> {
    let area = Area::map()?;
    let page = page_size()?;

    // Untimed: does a DONTNEED free the table? Also faults in the upper
    // page-table levels, which the timed loop then reuses.
    touch(area.chunk(0), page);
    let before = vmpte_kib()?;
    dontneed(area.chunk(0))?;
    let pt_reclaim = vmpte_kib()? < before;

    let start = Instant::now();
    for index in 1..=iterations {
        let chunk = area.chunk(index);
        touch(chunk, page);
        dontneed(chunk)?;
    }
    let elapsed = start.elapsed();

    let report = LoopReport {
        pid: std::process::id(),
        iterations,
        elapsed_ns: u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        pt_reclaim,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
