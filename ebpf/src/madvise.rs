//! PT_RECLAIM through the syscall tracepoints (works on every kernel with
//! syscall tracepoints; the only method this project's CI host can attach).
//!
//! PT_RECLAIM runs only inside `MADV_DONTNEED`/`MADV_DONTNEED_LOCKED` zaps
//! and lowers `mm->pgtables_bytes` at once (`mm_dec_nr_ptes`). So a drop of
//! `pgtables_bytes` while a DONTNEED call is running in that mm is reclaim.
//! The window logic in [`boundary`] makes this exact for single-threaded
//! processes and keeps concurrent calls of one process from counting a drop
//! twice (see `MmWindow`).

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use ptwatch_common::{
    InflightCall, KernelConfig, MmWindow, MADV_DONTNEED, MADV_DONTNEED_LOCKED, MAX_INFLIGHT_CALLS,
    MAX_TRACKED_PROCESSES,
};

use crate::{
    atomic,
    counters::{record_dontneed_call, record_inflight_failure, record_pte_pages_reclaimed},
    kernel::{config, current_pgtables_bytes, CurrentTask},
};

#[map(name = "INFLIGHT")]
static INFLIGHT: LruHashMap<u32, InflightCall> =
    LruHashMap::with_max_entries(MAX_INFLIGHT_CALLS, 0);

#[map(name = "MM_WINDOWS")]
static MM_WINDOWS: LruHashMap<u32, MmWindow> =
    LruHashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

// Syscall tracepoint records are stable ABI: after the 8-byte common header
// and `int __syscall_nr` (padded to 8), each argument takes 8 bytes.
//
// name: sys_enter_madvise
//   field:unsigned long start;  offset:16; size:8;
//   field:size_t len_in;        offset:24; size:8;
//   field:int behavior;         offset:32; size:8;
// name: sys_enter_process_madvise
//   field:int pidfd;            offset:16; size:8;
//   field:const struct iovec * vec; offset:24; size:8;
//   field:size_t vlen;          offset:32; size:8;
//   field:int behavior;         offset:40; size:8;
// name: sys_exit_madvise, sys_exit_process_madvise
//   field:long ret;             offset:16; size:8;
const MADVISE_LEN: usize = 24;
const MADVISE_BEHAVIOR: usize = 32;
const PROCESS_MADVISE_BEHAVIOR: usize = 40;
const SYS_EXIT_RET: usize = 16;

fn is_dontneed(behavior: u64) -> bool {
    // The tracepoint stores `int` in 8 bytes; compare the low 32 bits.
    let behavior = behavior & 0xffff_ffff;
    behavior == MADV_DONTNEED || behavior == MADV_DONTNEED_LOCKED
}

/// A DONTNEED entry or exit in process `tgid`: close the interval since the
/// previous boundary of this mm, counting its `pgtables_bytes` drop as
/// reclaim when some DONTNEED call was running during it.
#[inline(always)]
fn boundary(config: &KernelConfig, tgid: u32, entering: bool) {
    let Some(now) = current_pgtables_bytes(config) else {
        return;
    };
    let window = match MM_WINDOWS.get_ptr_mut(tgid) {
        Some(window) => window,
        None => {
            let fresh = MmWindow {
                last_pgtables_bytes: now,
                active: 0,
            };
            // Losing the race to another CPU is fine: its entry is used.
            let _ = MM_WINDOWS.insert(tgid, fresh, 0);
            match MM_WINDOWS.get_ptr_mut(tgid) {
                Some(window) => window,
                None => return,
            }
        }
    };
    // SAFETY: field pointers of a live map value; no reference is formed.
    let (last, active) = unsafe {
        (
            &raw mut (*window).last_pgtables_bytes,
            &raw mut (*window).active,
        )
    };
    let previous = atomic::swap(last, now);
    let active_before = if entering {
        atomic::fetch_add(active, 1)
    } else {
        atomic::fetch_sub(active, 1)
    };
    if active_before > 0 && previous > now {
        // checked_div: a division the compiler cannot prove safe would
        // leave a panic path, which the verifier rejects.
        record_pte_pages_reclaimed(
            tgid,
            (previous - now).checked_div(config.page_size).unwrap_or(0),
        );
    }
}

#[inline(always)]
fn on_enter(behavior: u64, len: u64) {
    if !is_dontneed(behavior) {
        return;
    }
    let config = config();
    let Some(task) = CurrentTask::get(&config) else {
        return;
    };
    if INFLIGHT.insert(task.tid, InflightCall { len }, 0).is_err() {
        // Without the in-flight entry the exit cannot be paired: skip the
        // window too, so `active` stays balanced.
        record_inflight_failure();
        return;
    }
    boundary(&config, task.tgid, true);
}

/// `bytes_from_ret`: `process_madvise` returns the number of bytes advised,
/// `madvise` returns 0 and the length comes from the entry.
#[inline(always)]
fn on_exit(ret: i64, bytes_from_ret: bool) {
    let config = config();
    let Some(task) = CurrentTask::get(&config) else {
        return;
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { INFLIGHT.get(task.tid) }).copied() else {
        return;
    };
    let _ = INFLIGHT.remove(task.tid);
    boundary(&config, task.tgid, false);
    if ret >= 0 {
        let bytes = if bytes_from_ret { ret as u64 } else { call.len };
        record_dontneed_call(task.tgid, bytes);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_madvise")]
pub fn madvise_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format (above).
    let (behavior, len) = unsafe {
        (
            ctx.read_at::<u64>(MADVISE_BEHAVIOR).unwrap_or(0),
            ctx.read_at::<u64>(MADVISE_LEN).unwrap_or(0),
        )
    };
    on_enter(behavior, len);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_madvise")]
pub fn madvise_exit(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's format (above).
    let ret = unsafe { ctx.read_at::<i64>(SYS_EXIT_RET) }.unwrap_or(-1);
    on_exit(ret, false);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_process_madvise")]
pub fn process_madvise_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's format (above).
    let behavior = unsafe { ctx.read_at::<u64>(PROCESS_MADVISE_BEHAVIOR) }.unwrap_or(0);
    // DONTNEED through process_madvise is only allowed on the caller's own
    // mm (6.13+), so `current->mm` is the mm being zapped.
    on_enter(behavior, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_process_madvise")]
pub fn process_madvise_exit(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's format (above).
    let ret = unsafe { ctx.read_at::<i64>(SYS_EXIT_RET) }.unwrap_or(-1);
    on_exit(ret, true);
    0
}
