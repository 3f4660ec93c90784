//! Types that cross the kernel/userspace boundary.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the eBPF
//! programs (built for `bpfel-unknown-none`) and the agent (built for the host)
//! agree on every byte. Flags are `u32`/`u64`, never `bool`: a `bool` would
//! leave padding whose contents the verifier cannot reason about.
#![no_std]

/// `MADV_DONTNEED` from `<linux/mman.h>`: zap the range; since 6.14 the zap
/// may free PTE tables that became empty (PT_RECLAIM).
pub const MADV_DONTNEED: u64 = 4;
/// `MADV_DONTNEED_LOCKED`: like `MADV_DONTNEED`, also on mlocked ranges.
pub const MADV_DONTNEED_LOCKED: u64 = 24;

/// Length of `task_struct::comm`.
pub const COMM_LEN: usize = 16;

/// Upper bound of processes tracked at once in the kernel maps. The maps are
/// LRU maps, so a busier node evicts the least recently active processes
/// instead of failing updates; the node totals are kept separately and stay
/// exact.
pub const MAX_TRACKED_PROCESSES: u32 = 16384;
/// Upper bound of threads that can be inside a DONTNEED call at once.
pub const MAX_INFLIGHT_CALLS: u32 = 16384;

/// Names of the maps and programs in the eBPF object; the agent looks them up
/// by these names, so both sides use the constants.
pub mod names {
    pub const PROCESS_COUNTERS: &str = "PROCESS_COUNTERS";
    pub const NODE_COUNTERS: &str = "NODE_COUNTERS";
    pub const INFLIGHT: &str = "INFLIGHT";
    pub const MM_WINDOWS: &str = "MM_WINDOWS";
    /// Global (`.rodata`) holding the [`super::KernelConfig`].
    pub const KERNEL_CONFIG: &str = "PTWATCH_KERNEL_CONFIG";

    pub const PROG_MADVISE_ENTER: &str = "madvise_enter";
    pub const PROG_MADVISE_EXIT: &str = "madvise_exit";
    pub const PROG_PROCESS_MADVISE_ENTER: &str = "process_madvise_enter";
    pub const PROG_PROCESS_MADVISE_EXIT: &str = "process_madvise_exit";
}

/// Kernel facts the programs need but cannot learn by themselves: Rust eBPF
/// has no CO-RE field relocations, so the agent resolves struct member
/// offsets from the running kernel's BTF at start-up and writes them into a
/// read-only global before the programs are loaded. A frozen global is a
/// plain load for the programs (no map lookup per event), and the verifier
/// sees the values as constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// Byte offset of `task_struct::mm`.
    pub task_mm_offset: u64,
    /// Byte offset of `mm_struct::pgtables_bytes` (an `atomic_long_t`).
    pub mm_pgtables_bytes_offset: u64,
    /// Page size in bytes (a PTE table occupies one page).
    pub page_size: u64,
    /// tgid of the agent itself: its own activity is never counted.
    pub agent_tgid: u64,
}

/// Per-process counters, keyed by tgid.
///
/// Updated with atomic adds because threads of one process run on several
/// CPUs at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounters {
    /// PTE page-table pages freed by PT_RECLAIM in this process' mm.
    pub pte_pages_reclaimed: u64,
    /// Successful `MADV_DONTNEED`/`MADV_DONTNEED_LOCKED` calls.
    pub dontneed_calls: u64,
    /// Bytes covered by those calls.
    pub dontneed_bytes: u64,
    /// `comm` of the thread that first touched this entry.
    pub comm: [u8; COMM_LEN],
}

/// Node-wide counters (single-entry array). They are never reset, so they
/// keep counting processes that exited or were evicted from the LRU maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub pte_pages_reclaimed: u64,
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    /// Updates of a per-process map that failed (map full and not LRU, or
    /// allocation failure). Never silent: exported as a metric.
    pub process_map_update_failures: u64,
    /// DONTNEED calls whose in-flight entry could not be stored.
    pub inflight_update_failures: u64,
}

/// A DONTNEED call in progress on one thread, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightCall {
    /// Length the caller asked for (`madvise`); 0 for `process_madvise`,
    /// whose return value says how many bytes were advised.
    pub len: u64,
}

/// Reclaim window state of one mm (keyed by tgid: all threads of a process
/// share its mm).
///
/// Every DONTNEED entry and exit on any thread of the process is a boundary.
/// At a boundary the program reads `mm->pgtables_bytes`, swaps it into
/// `last_pgtables_bytes`, and when at least one DONTNEED call was running
/// during the interval since the previous boundary (`active` > 0 before the
/// boundary) it counts the drop over that interval as reclaim. Intervals are
/// disjoint, so two threads in DONTNEED at once never count one drop twice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmWindow {
    pub last_pgtables_bytes: u64,
    pub active: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and integer
    // arrays, with no implicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelConfig {}
    unsafe impl aya::Pod for super::ProcessCounters {}
    unsafe impl aya::Pod for super::NodeCounters {}
    unsafe impl aya::Pod for super::InflightCall {}
    unsafe impl aya::Pod for super::MmWindow {}
}
