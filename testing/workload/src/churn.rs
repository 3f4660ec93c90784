//! Threads that fault, DONTNEED and munmap concurrently in one address
//! space: the frees of each cause must still be counted exactly (on a
//! preemptible kernel two programs can interleave on one CPU).

use std::{
    panic,
    sync::{Arc, Barrier, Mutex, PoisonError},
    thread,
};

use anyhow::{anyhow, Result};
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
/// - The workers are never joined: ending a thread frees memory the report
///   does not count, differently per libc (glibc DONTNEEDs the unused part
///   of its stack, musl's join unmaps the whole stack and may free its page
///   tables). They hand their counts over and park until the process
///   exits; at exit those are `exit` frees.
/// - Nothing is allocated on the heap once the first region is mapped: an
///   allocation then can land in a hole between the regions, alone in its
///   2 MiB span once they are gone, and the allocator's munmap of it
///   (musl's does) frees a PTE table. The slots for the counts are
///   allocated before the threads start, and a [`Barrier`] (no allocation)
///   tells the main thread they are all there.
pub fn churn(threads: usize, mib: usize, rounds: u32) -> Result<ChurnReport> {
    let mut report = ChurnReport { pid: std::process::id(), vmpte_start_kib: vmpte_kib()?, ..ChurnReport::default() };
    let start = Arc::new(Barrier::new(threads));
    let done = Arc::new(Barrier::new(threads + 1));
    let slots: Arc<Mutex<Vec<Result<Counts>>>> = Arc::new(Mutex::new(Vec::with_capacity(threads)));
    for _ in 0..threads {
        let (start, done, slots) = (Arc::clone(&start), Arc::clone(&done), Arc::clone(&slots));
        thread::spawn(move || {
            // A panic must still reach the barrier, or the main thread
            // would wait for ever.
            let counts = panic::catch_unwind(|| {
                start.wait();
                work(mib, rounds)
            })
            .unwrap_or_else(|_| Err(anyhow!("a worker panicked")));
            slots.lock().unwrap_or_else(PoisonError::into_inner).push(counts);
            done.wait();
            loop {
                thread::park();
            }
        });
    }
    done.wait();
    for counts in slots.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        let counts = counts.as_ref().map_err(|err| anyhow!("{err:#}"))?;
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
