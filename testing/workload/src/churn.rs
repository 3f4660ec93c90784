//! Threads that fault, DONTNEED and munmap concurrently in one address
//! space: the frees of each cause must still be counted exactly (on a
//! preemptible kernel two programs can interleave on one CPU).

use std::{
    sync::{Arc, Barrier},
    thread,
};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{advise, vmpte_kib, Advice, Region, MIB};

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
    /// `VmPTE` (kB) before the threads started and when they were done: the
    /// same when every table they made was freed again.
    pub vmpte_start_kib: u64,
    pub vmpte_end_kib: u64,
}

/// `threads` threads, each `rounds` times: map `mib` MiB, touch it,
/// DONTNEED it, touch it again, unmap it. No synchronisation between
/// rounds, so one thread's faults overlap another's DONTNEED and munmap.
pub fn churn(threads: usize, mib: usize, rounds: u32) -> Result<ChurnReport> {
    let mut report = ChurnReport { pid: std::process::id(), vmpte_start_kib: vmpte_kib()?, ..ChurnReport::default() };
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let start = Arc::clone(&start);
            thread::spawn(move || -> Result<(u64, u64, u64)> {
                start.wait();
                let (mut calls, mut reclaimable, mut unmapped) = (0, 0, 0);
                for _ in 0..rounds {
                    let region = Region::new(mib * MIB, 0)?;
                    region.touch();
                    advise(region.start, region.len, Advice::Dontneed)?;
                    calls += 1;
                    reclaimable += region.covered_spans(0, region.len);
                    region.touch();
                    unmapped += region.covered_spans(0, region.len);
                    drop(region);
                }
                Ok((calls, reclaimable, unmapped))
            })
        })
        .collect();
    for handle in handles {
        let (calls, reclaimable, unmapped) = handle.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        report.dontneed_calls += calls;
        report.reclaimable_tables += reclaimable;
        report.unmapped_tables += unmapped;
    }
    report.vmpte_end_kib = vmpte_kib()?;
    Ok(report)
}
