//! Threads that fault, DONTNEED and munmap concurrently in one address
//! space: the frees of each cause must still be counted exactly (on a
//! preemptible kernel two programs can interleave on one CPU).

use std::sync::{Arc, Barrier};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{advise, parked::run_parked, vmpte_kib, Advice, Region, MIB};

/// What the threads did, summed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChurnReport {
    pub pid: u32,
    /// DONTNEED requests and the PTE tables they can reclaim (fully covered,
    /// touched spans).
    pub dontneed_calls: u64,
    pub reclaimable_tables: u64,
    /// PTE tables the munmaps free (touched spans of unmapped regions).
    pub unmapped_tables: u64,
    /// `VmPTE` (kB) before the threads started and when they were done
    /// (their stacks still mapped until the process exits).
    pub vmpte_start_kib: u64,
    pub vmpte_end_kib: u64,
}

/// `threads` threads, each `rounds` times: map `mib` MiB, touch it,
/// DONTNEED it, touch it again, unmap it. No synchronisation between
/// rounds, so one thread's faults overlap another's DONTNEED and munmap.
///
/// Every page table this process frees before it exits must be one the
/// report counts, whatever libc it is linked with:
/// - The workers never end ([`run_parked`]): ending a thread frees memory
///   the report does not count, differently per libc.
/// - Nothing is allocated on the heap once the first region is mapped: an
///   allocation then can land in a hole between the regions, alone in its
///   2 MiB span once they are gone, and the allocator's munmap of it
///   (musl's does) frees a PTE table. [`run_parked`] allocates its slots
///   before the threads start.
pub fn churn(threads: usize, mib: usize, rounds: u32) -> Result<ChurnReport> {
    let mut report = ChurnReport { pid: std::process::id(), vmpte_start_kib: vmpte_kib()?, ..ChurnReport::default() };
    let start = Arc::new(Barrier::new(threads));
    let results = run_parked(threads, move || {
        start.wait();
        work(mib, rounds)
    });
    for counts in results {
        let counts = counts?;
        report.dontneed_calls += counts.calls;
        report.reclaimable_tables += counts.reclaimable;
        report.unmapped_tables += counts.unmapped;
    }
    report.vmpte_end_kib = vmpte_kib()?;
    Ok(report)
}

/// One worker's counts.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    calls: u64,
    reclaimable: u64,
    unmapped: u64,
}

/// One worker's rounds.
fn work(mib: usize, rounds: u32) -> Result<Counts> {
    let mut counts = Counts::default();
    for _ in 0..rounds {
        let region = Region::new(mib * MIB, 0)?;
        region.touch();
        advise(region.start, region.len, Advice::Dontneed)?;
        counts.calls += 1;
        counts.reclaimable += region.covered_spans(0, region.len);
        region.touch();
        counts.unmapped += region.covered_spans(0, region.len);
        drop(region);
    }
    Ok(counts)
}
