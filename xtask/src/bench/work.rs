//! The timed loops of the benchmark, each run in a child process of its own
//! (`xtask bench-child loop …`): neither the agent nor the driver, like any
//! process on a node the agent watches.
//!
//! Three patterns, from what the agent costs nothing to what it exists for:
//! - `getppid`: a bystander that never DONTNEEDs. Any syscall tracepoint
//!   attached anywhere puts every thread's syscalls on the slow path, so
//!   this is the node-wide tax a plan levies on processes it does not trace.
//! - `small-dontneed`: an allocator purging one page: touch one 4 KiB page,
//!   `MADV_DONTNEED` it. Such a range can never reclaim a PTE table, and
//!   allocators issue it at high rates.
//! - `reclaim-2m`: the pattern of PT_RECLAIM's authors: touch 2 MiB (one PTE
//!   table), `MADV_DONTNEED` the 2 MiB (PT_RECLAIM frees the table), walking
//!   through a 1 GiB area.
//!
//! A run times several batches and reports each: the driver takes the
//! median, which a preemption by other work on the machine does not move.
use std::{
    io::{self, Write as _},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use ptwatch_workload::{vmpte_kib, Region, PTE_TABLE_SPAN};
use serde::{Deserialize, Serialize};

use super::stats_ci;

/// The 2 MiB pattern's area: reserved, never populated beyond one span at a
/// time (MAP_NORESERVE).
const AREA: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// (a) `getppid()` in a loop: a bystander the agent does not trace.
    Getppid,
    /// (b) touch one 4 KiB page, `MADV_DONTNEED` it: an allocator's purge.
    SmallDontneed,
    /// (c) touch 2 MiB, `MADV_DONTNEED` 2 MiB: PT_RECLAIM frees the table.
    #[serde(rename = "reclaim-2m")]
    #[value(name = "reclaim-2m")]
    Reclaim2m,
}

impl Workload {
    /// Name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Getppid => "getppid",
            Self::SmallDontneed => "small-dontneed",
            Self::Reclaim2m => "reclaim-2m",
        }
    }

    /// What one call of the loop is, for the printed tables.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Getppid => "(a) getppid() bystander",
            Self::SmallDontneed => "(b) touch 4 KiB + DONTNEED 4 KiB",
            Self::Reclaim2m => "(c) touch 2 MiB + DONTNEED 2 MiB",
        }
    }
}

/// What a loop child prints, as one JSON line on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopReport {
    pub pid: u32,
    pub workload: Workload,
    pub calls_per_batch: u64,
    /// Wall-clock ns of each timed batch.
    pub batch_ns: Vec<u64>,
    /// CPU time of the loop's thread in each batch (user + system,
    /// `CLOCK_THREAD_CPUTIME_ID`): the batch's wall time less the time the
    /// thread waited for a CPU other work was using.
    pub batch_cpu_ns: Vec<u64>,
    /// Every call made, the untimed warm-up batch included.
    pub total_calls: u64,
    /// The CPU the loop was pinned to, if any.
    pub cpu: Option<usize>,
    /// `reclaim-2m` only: whether one untimed DONTNEED freed a PTE table
    /// (`VmPTE` dropped). If not, the kernel lacks PT_RECLAIM and the
    /// pattern measures less than it should.
    pub pt_reclaim: Option<bool>,
}

/// Per-call figures of one run: medians over its batches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PerCall {
    pub wall_ns: f64,
    pub cpu_ns: f64,
}

impl LoopReport {
    fn per_call(&self, batches: &[u64]) -> Vec<f64> {
        let calls = self.calls_per_batch.max(1) as f64;
        batches.iter().map(|&ns| ns as f64 / calls).collect()
    }

    /// Median ns per call over the batches, by wall clock and by CPU time.
    pub fn median_per_call(&self) -> PerCall {
        PerCall {
            wall_ns: stats_ci::median(&self.per_call(&self.batch_ns)),
            cpu_ns: stats_ci::median(&self.per_call(&self.batch_cpu_ns)),
        }
    }
}

/// One call of a loop, with whatever memory it needs.
trait Call {
    fn call(&mut self) -> Result<()>;
}

struct Getppid;

impl Call for Getppid {
    #[inline]
    fn call(&mut self) -> Result<()> {
        // The raw syscall: a libc wrapper could cache the answer.
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
        Ok(())
    }
}

/// One page, touched and purged over and over (THP off, so the page never
/// belongs to a huge page and the PTE table stays).
struct SmallDontneed {
    region: Region,
    page: usize,
}

impl Call for SmallDontneed {
    #[inline]
    fn call(&mut self) -> Result<()> {
        // SAFETY: the first page of our mapping.
        unsafe { self.region.start.write_volatile(1) };
        dontneed(self.region.start, self.page)
    }
}

/// The 2 MiB pattern, walking through its area one span per call.
struct Reclaim2m {
    region: Region,
    page: usize,
    next: usize,
}

impl Reclaim2m {
    fn span(&mut self) -> *mut u8 {
        let spans = AREA / PTE_TABLE_SPAN;
        self.next = (self.next + 1) % spans;
        // SAFETY: the offset stays inside the aligned part of the mapping.
        unsafe { self.region.start.add(self.next * PTE_TABLE_SPAN) }
    }
}

impl Call for Reclaim2m {
    #[inline]
    fn call(&mut self) -> Result<()> {
        let span = self.span();
        let mut offset = 0;
        while offset < PTE_TABLE_SPAN {
            // SAFETY: inside a span of our mapping.
            unsafe { span.add(offset).write_volatile(1) };
            offset += self.page;
        }
        dontneed(span, PTE_TABLE_SPAN)
    }
}

fn dontneed(start: *mut u8, len: usize) -> Result<()> {
    // SAFETY: a range of our own mapping.
    if unsafe { libc::madvise(start.cast(), len, libc::MADV_DONTNEED) } != 0 {
        bail!("madvise(MADV_DONTNEED) failed: {}", io::Error::last_os_error());
    }
    Ok(())
}

fn page_size() -> Result<usize> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|&p| p > 0 && PTE_TABLE_SPAN.is_multiple_of(p))
        .with_context(|| format!("unexpected page size {page}"))
}

/// Pin the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET indexes into
    // it and the kernel reads it for the size given.
    let failed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0
    };
    if failed {
        bail!("pinning the loop to CPU {cpu}: {}", io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time consumed by the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; this clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Wall and CPU ns of each timed batch.
struct Timed {
    wall: Vec<u64>,
    cpu: Vec<u64>,
}

/// One untimed batch (faults in the upper page-table levels, warms caches),
/// then `batches` timed ones.
fn time_batches<C: Call>(call: &mut C, calls: u64, batches: usize) -> Result<Timed> {
    for _ in 0..calls {
        call.call()?;
    }
    let mut timed = Timed { wall: Vec::with_capacity(batches), cpu: Vec::with_capacity(batches) };
    for _ in 0..batches {
        let cpu = thread_cpu_ns();
        let start = Instant::now();
        let mut left = calls;
        while left > 0 {
            call.call()?;
            left -= 1;
        }
        timed.wall.push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        timed.cpu.push(thread_cpu_ns().saturating_sub(cpu));
    }
    Ok(timed)
}

/// Tell the driver the set-up is done (mapping, THP advice, the PT_RECLAIM
/// probe: madvise calls of their own) and wait for its go, so that what it
/// reads around the run covers the loop's calls only.
fn handshake() -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{READY}").and_then(|()| out.flush()).context("telling the driver the loop is ready")?;
    let mut line = String::new();
    io::stdin().read_line(&mut line).context("waiting for the driver's go")?;
    Ok(())
}

/// The line a loop child prints once set up.
pub const READY: &str = "ready";

fn go<C: Call>(mut call: C, calls: u64, batches: usize) -> Result<Timed> {
    handshake()?;
    time_batches(&mut call, calls, batches)
}

/// Run `workload` and print a [`LoopReport`] (the `bench-child loop` command).
pub fn run(workload: Workload, calls: u64, batches: usize, cpu: Option<usize>) -> Result<()> {
    if let Some(cpu) = cpu {
        pin(cpu)?;
    }
    let page = page_size()?;
    let mut pt_reclaim = None;
    let timed = match workload {
        Workload::Getppid => go(Getppid, calls, batches)?,
        Workload::SmallDontneed => go(SmallDontneed { region: Region::new(PTE_TABLE_SPAN, 0)?, page }, calls, batches)?,
        Workload::Reclaim2m => {
            let call = Reclaim2m { region: Region::new(AREA, 0)?, page, next: 0 };
            // Does a DONTNEED free the table? (Untimed.)
            let span = call.region.start;
            // SAFETY: the first span of our mapping.
            unsafe { span.write_volatile(1) };
            let before = vmpte_kib()?;
            dontneed(span, PTE_TABLE_SPAN)?;
            pt_reclaim = Some(vmpte_kib()? < before);
            go(call, calls, batches)?
        }
    };
    let report = LoopReport {
        pid: std::process::id(),
        workload,
        calls_per_batch: calls,
        batch_ns: timed.wall,
        batch_cpu_ns: timed.cpu,
        total_calls: calls * (batches as u64 + 1),
        cpu,
        pt_reclaim,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::Workload;

    #[test]
    fn one_name_on_the_command_line_and_in_json() {
        for workload in Workload::value_variants() {
            assert_eq!(Workload::from_str(workload.name(), false).ok(), Some(*workload));
            assert_eq!(serde_json::to_string(workload).ok(), Some(format!("\"{}\"", workload.name())));
        }
    }
}
