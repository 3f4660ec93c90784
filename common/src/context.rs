//! Per-thread context: what a thread is doing while it is inside a hooked
//! kernel call, so that a page-table free it makes can be classified.
//!
//! One map (`THREAD_CONTEXT`, a plain hash map keyed by thread id: an entry
//! is never evicted while its call runs) holds every kind of context. An
//! entry hook that finds its thread still marked as inside an earlier call
//! knows that call's exit was missed: it counts the miss and starts afresh,
//! so a stale mark can never classify a later free. Entries left by missed
//! exits of threads that have since exited are removed by the agent.

/// Nothing in progress in this slot.
pub const NONE: u64 = 0;

/// `dontneed_mm` of a request that cannot reclaim (its range covers no whole
/// 2 MiB span, or the kernel has no PT_RECLAIM): never a real `mm_struct`
/// address, so it matches no free, and the tracepoint plan need not even
/// read the request's address space.
pub const CANNOT_RECLAIM: u64 = u64::MAX;

/// How the tracepoint plan measures what a DONTNEED request reclaimed.
pub mod measured {
    /// Not measured: the range covers no whole 2 MiB span, so nothing can
    /// be reclaimed.
    pub const NOTHING_TO_RECLAIM: u64 = 0;
    /// Through the drop of `mm->pgtables_bytes` (approximate).
    pub const PGTABLES_BYTES: u64 = 1;
    /// By walking the page tables under the range at entry and exit.
    pub const WALK: u64 = 2;
}

/// Value of `THREAD_CONTEXT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadContext {
    /// Thread-group id of the thread (lets the agent find entries of
    /// threads that are gone).
    pub tgid: u32,
    pub _pad: u32,
    /// Address space of the DONTNEED request in progress ([`NONE`]: none;
    /// [`CANNOT_RECLAIM`]: one that cannot reclaim).
    pub dontneed_mm: u64,
    /// Its range.
    pub start: u64,
    pub len: u64,
    /// Tracepoint plan: how the request is measured (a [`measured`] value),
    /// the PTE tables under the range at entry (with the walk) and
    /// `mm->pgtables_bytes` at entry (the fallback).
    pub measured: u64,
    pub tables_at_entry: u64,
    pub pgtables_bytes_at_entry: u64,
    /// PTE tables classified `reclaim` during this request (`ptwatch trace`
    /// reports them with the request).
    pub call_reclaimed: u64,
    /// The `mmu_gather` of the `free_pgtables` call in progress ([`NONE`]:
    /// none): frees through it are `unmap`.
    pub free_pgtables_tlb: u64,
    /// The level a `___p?d_free_tlb` call named, plus one, for the
    /// `tlb_remove_table` call it makes next on this thread ([`NONE`]: none).
    pub pending_level: u64,
    /// kprobe plan: the address space of the `zap_huge_pmd` call in
    /// progress when its VMA is anonymous ([`NONE`]: none or not anonymous),
    /// for the kretprobe that learns whether a huge PMD was zapped.
    pub huge_zap_mm: u64,
}

impl ThreadContext {
    /// A thread of process `tgid` starting a DONTNEED request on address
    /// space `mm` (or [`CANNOT_RECLAIM`]) over `[start, start + len)`;
    /// nothing measured yet.
    #[inline(always)]
    pub fn dontneed(tgid: u32, mm: u64, start: u64, len: u64) -> Self {
        Self { tgid, dontneed_mm: mm, start, len, ..Self::default() }
    }

    /// A thread of process `tgid` starting a `free_pgtables` call through
    /// the `mmu_gather` at `tlb`.
    #[inline(always)]
    pub fn free_pgtables(tgid: u32, tlb: u64) -> Self {
        Self { tgid, free_pgtables_tlb: tlb, ..Self::default() }
    }
}

/// An io_uring DONTNEED request between submission and completion
/// (tracepoint plan; value of `IO_REQUESTS`, keyed by the request's kernel
/// address). A completion the programs never see (none is expected) leaves
/// an entry behind: the agent removes entries older than a few minutes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoRequest {
    pub start: u64,
    pub len: u64,
    /// A [`measured`] value, and what was measured at submission.
    pub measured: u64,
    pub tables_at_entry: u64,
    pub pgtables_bytes_at_entry: u64,
    /// `CLOCK_MONOTONIC` nanoseconds at submission.
    pub submitted_ns: u64,
}
