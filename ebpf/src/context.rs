//! Per-thread context: what a thread is inside of (a DONTNEED request, a
//! `free_pgtables` call, a level announced for the next free), kept in one
//! plain hash map so that an entry is never evicted while its call runs.
//!
//! A DONTNEED request and a `free_pgtables` call never nest, so a thread
//! starting one while marked as inside the other (or inside an earlier one)
//! missed an exit hook: the stale mark is counted and dropped, never
//! trusted. An entry is deleted when nothing is pending in it.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap},
};
use ptwatch_common::{context::NONE, ThreadContext, MAX_THREAD_CONTEXTS};

use crate::{
    counters::{count, Diagnostic},
    kernel::CurrentTask,
};

/// `errno` for "the key exists" (asm-generic/errno-base.h, the same on every
/// architecture): what an insert with `BPF_NOEXIST` returns, negated.
const EEXIST: i32 = 17;

#[map(name = "THREAD_CONTEXT")]
static THREAD_CONTEXT: HashMap<u32, ThreadContext> = HashMap::with_max_entries(MAX_THREAD_CONTEXTS, 0);

/// Slots of [`SMALL_MADVISE_MARKS`]: a power of two, as many as
/// `THREAD_CONTEXT` holds threads.
const SMALL_MADVISE_MARK_SLOTS: u32 = MAX_THREAD_CONTEXTS;
const _: () = assert!(SMALL_MADVISE_MARK_SLOTS.is_power_of_two(), "slots are found by masking the tid");

/// Which thread is inside a small madvise(2) request that the kprobe plan
/// counts from the registers (`dontneed::functions`), by tid modulo the
/// slots: no context is stored for such a request, but a kretprobe the
/// kernel skips (more threads asleep in `do_madvise` than it has instances)
/// must still be seen. A slot still holding a thread's own tid when that
/// thread starts another such request means its last return was missed.
/// Two threads sharing a slot can only hide a miss, never invent one: only
/// a thread writes its own tid, and its return clears only its own tid.
#[map(name = "SMALL_MADVISE_MARKS")]
static SMALL_MADVISE_MARKS: Array<u32> = Array::with_max_entries(SMALL_MADVISE_MARK_SLOTS, 0);

/// Thread `tid` enters a small madvise(2) request (kprobe plan).
#[inline(always)]
pub fn mark_small_madvise(tid: u32) {
    if let Some(slot) = mark_slot(tid) {
        // SAFETY: a pointer into a live array value. A racing write by a
        // thread sharing the slot shows either tid; only this thread ever
        // writes this thread's.
        unsafe {
            if core::ptr::read_volatile(slot) == tid {
                count(Diagnostic::ContextExitMiss);
            }
            core::ptr::write_volatile(slot, tid);
        }
    }
}

/// Thread `tid`'s small madvise(2) request returns (kprobe plan): its own
/// mark is cleared, another thread's left.
#[inline(always)]
pub fn unmark_small_madvise(tid: u32) {
    // SAFETY: as in mark_small_madvise.
    if let Some(slot) = mark_slot(tid).filter(|&slot| unsafe { core::ptr::read_volatile(slot) } == tid) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(slot, 0) };
    }
}

/// Thread `tid`'s slot in [`SMALL_MADVISE_MARKS`].
#[inline(always)]
fn mark_slot(tid: u32) -> Option<*mut u32> {
    SMALL_MADVISE_MARKS.get_ptr_mut(tid & (SMALL_MADVISE_MARK_SLOTS - 1))
}

/// The context of thread `tid`, if it has one.
#[inline(always)]
pub fn get(tid: u32) -> Option<*mut ThreadContext> {
    THREAD_CONTEXT.get_ptr_mut(tid)
}

/// The context of `task`, created empty if it has none (`None`: map full,
/// counted).
#[inline(always)]
fn get_or_create(task: CurrentTask) -> Option<*mut ThreadContext> {
    if let Some(context) = get(task.tid) {
        return Some(context);
    }
    let fresh = ThreadContext { tgid: task.tgid, ..ThreadContext::default() };
    if THREAD_CONTEXT.insert(task.tid, fresh, 0).is_err() {
        count(Diagnostic::ContextUpdateFailure);
        return None;
    }
    get(task.tid)
}

/// Delete `task`'s entry if nothing is pending in it any more.
#[inline(always)]
fn release_if_idle(tid: u32, context: &ThreadContext) {
    if context.dontneed_mm == NONE
        && context.free_pgtables_tlb == NONE
        && context.pending_level == NONE
        && context.huge_zap_mm == NONE
    {
        let _ = THREAD_CONTEXT.remove(tid);
    }
}

/// A call that never nests, in itself or in the other (a DONTNEED request,
/// a `free_pgtables` call), starts on `task`: its context becomes `fresh`.
///
/// A thread usually has no entry, so this tries the insert first: one map
/// access where a lookup first would take three (lookup, insert, lookup).
/// A thread that has an entry is either between a level announcement and
/// its free, or still marked by a call whose exit was missed: the stale
/// mark is counted and replaced, never trusted.
#[inline(always)]
fn begin_call(task: CurrentTask, fresh: ThreadContext) {
    match THREAD_CONTEXT.insert(task.tid, fresh, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        Err(err) if err == -EEXIST => match get(task.tid) {
            Some(pointer) => {
                // SAFETY: a pointer into a live map value of this thread's
                // key; only this thread's programs touch it.
                let context = unsafe { &mut *pointer };
                if context.dontneed_mm != NONE || context.free_pgtables_tlb != NONE {
                    count(Diagnostic::ContextExitMiss);
                }
                *context = fresh;
            }
            // Removed in between (only the agent's reaper removes another
            // thread's entry, and only a dead thread's).
            None => count(Diagnostic::ContextUpdateFailure),
        },
        Err(_) => count(Diagnostic::ContextUpdateFailure),
    }
}

/// A DONTNEED request starts on `task`: `request` holds its address space
/// (`CANNOT_RECLAIM` when it cannot reclaim), its range and what the
/// tracepoint plan measured at entry.
#[inline(always)]
pub fn begin_dontneed(task: CurrentTask, request: ThreadContext) {
    begin_call(task, request);
}

/// The DONTNEED request of thread `tid` ends: its context, if it had one.
#[inline(always)]
pub fn end_dontneed(tid: u32) -> Option<ThreadContext> {
    let pointer = get(tid)?;
    // SAFETY: as in begin_call.
    let context = unsafe { &mut *pointer };
    if context.dontneed_mm == NONE {
        return None;
    }
    let ended = *context;
    context.dontneed_mm = NONE;
    context.call_reclaimed = 0;
    release_if_idle(tid, context);
    Some(ended)
}

/// `free_pgtables(tlb, …)` starts on `task`.
#[inline(always)]
pub fn begin_free_pgtables(task: CurrentTask, tlb: u64) {
    begin_call(task, ThreadContext::free_pgtables(task.tgid, tlb));
}

/// `free_pgtables` returns on thread `tid`.
#[inline(always)]
pub fn end_free_pgtables(tid: u32) {
    let Some(pointer) = get(tid) else {
        return;
    };
    // SAFETY: as in begin_call.
    let context = unsafe { &mut *pointer };
    context.free_pgtables_tlb = NONE;
    release_if_idle(tid, context);
}

/// Count a PTE table reclaimed inside the request `tid` is in (for the
/// request's `ptwatch trace` event).
#[inline(always)]
pub fn count_reclaimed_in_call(tid: u32) {
    if let Some(pointer) = get(tid) {
        // SAFETY: as in begin_call.
        unsafe { (*pointer).call_reclaimed += 1 };
    }
}

/// A `___p?d_free_tlb` call names `level` for the `tlb_remove_table` call
/// it makes next on this thread.
#[inline(always)]
pub fn announce_level(task: CurrentTask, level: u32) {
    if let Some(pointer) = get_or_create(task) {
        // SAFETY: as in begin_call.
        unsafe { (*pointer).pending_level = u64::from(level) + 1 };
    }
}

/// The level announced for this free, if any (consumed).
#[inline(always)]
pub fn take_level(tid: u32, context: Option<*mut ThreadContext>) -> Option<u32> {
    let pointer = context?;
    // SAFETY: as in begin_call.
    let context = unsafe { &mut *pointer };
    if context.pending_level == NONE {
        return None;
    }
    let level = (context.pending_level - 1) as u32;
    context.pending_level = NONE;
    release_if_idle(tid, context);
    Some(level)
}

/// kprobe plan: `zap_huge_pmd` starts, on an anonymous VMA of `mm`
/// (`Some`) or on another VMA (`None`: only clear a stale mark).
#[inline(always)]
pub fn begin_huge_zap(task: CurrentTask, mm: Option<u64>) {
    let pointer = match mm {
        Some(_) => get_or_create(task),
        None => get(task.tid),
    };
    if let Some(pointer) = pointer {
        // SAFETY: as in begin_call.
        let context = unsafe { &mut *pointer };
        context.huge_zap_mm = mm.unwrap_or(NONE);
        release_if_idle(task.tid, context);
    }
}

/// kprobe plan: `zap_huge_pmd` returns; the address space noted at entry.
#[inline(always)]
pub fn end_huge_zap(tid: u32) -> Option<u64> {
    let pointer = get(tid)?;
    // SAFETY: as in begin_call.
    let context = unsafe { &mut *pointer };
    let mm = context.huge_zap_mm;
    context.huge_zap_mm = NONE;
    release_if_idle(tid, context);
    (mm != NONE).then_some(mm)
}
