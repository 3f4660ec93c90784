//! PT_RECLAIM through the syscall tracepoints (every kernel with syscall
//! tracepoints; the only method this project's CI host can attach).
//!
//! PT_RECLAIM runs only inside `MADV_DONTNEED`/`MADV_DONTNEED_LOCKED` zaps.
//! Each call is measured on its own: the PTE tables under the range at entry
//! minus those left at exit (see `pagetable.rs`). That count is immune to
//! other threads of the process faulting in or zapping other ranges at the
//! same time. Where the walk is unavailable the drop of
//! `mm->pgtables_bytes` across the call is used instead (exact only when no
//! other thread changes the page tables meanwhile).

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use ptwatch_common::{InflightCall, KernelConfig, MADV_DONTNEED, MADV_DONTNEED_LOCKED, MAX_INFLIGHT_CALLS};

use crate::{
    counters::{record_approximate_call, record_dontneed_call, record_inflight_failure, record_pte_pages_reclaimed},
    events,
    kernel::{config, current_mm, pgtables_bytes, CurrentTask},
    pagetable::count_pte_tables,
};

#[map(name = "INFLIGHT")]
static INFLIGHT: LruHashMap<u32, InflightCall> = LruHashMap::with_max_entries(MAX_INFLIGHT_CALLS, 0);

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
const MADVISE_START: usize = 16;
const MADVISE_LEN: usize = 24;
const MADVISE_BEHAVIOR: usize = 32;
const PROCESS_MADVISE_VEC: usize = 24;
const PROCESS_MADVISE_VLEN: usize = 32;
const PROCESS_MADVISE_BEHAVIOR: usize = 40;
const SYS_EXIT_RET: usize = 16;

/// Whether thread `tid` is inside a DONTNEED call (the PT_RECLAIM context
/// for the free classification).
#[inline(always)]
pub fn in_dontneed(tid: u32) -> bool {
    // SAFETY: presence test only.
    unsafe { INFLIGHT.get(tid) }.is_some()
}

#[inline(always)]
fn is_dontneed(behavior: u64) -> bool {
    // The tracepoint stores an `int` in 8 bytes; compare the low 32 bits.
    let behavior = behavior & 0xffff_ffff;
    behavior == MADV_DONTNEED || behavior == MADV_DONTNEED_LOCKED
}

/// `walk` is false when the range is not known exactly (several iovecs).
#[inline(always)]
fn on_enter<const WALK: bool>(start: u64, len: u64, walk: bool) {
    let config = config();
    let Some(task) = CurrentTask::observed(&config) else {
        return;
    };
    let Some(mm) = current_mm(&config) else {
        return;
    };
    let mut call = InflightCall {
        start,
        len,
        pgtables_bytes_at_entry: pgtables_bytes(&config, mm).unwrap_or(0),
        ..InflightCall::default()
    };
    // With page-table frees probed, reclaim is counted where tables are
    // freed; the call only provides the DONTNEED context.
    if WALK && walk && config.direct_map_base != 0 && config.reclaim_from_frees == 0 {
        if let Some(count) = count_pte_tables(&config, mm, start, start.wrapping_add(len)) {
            if count.complete {
                call.tables_at_entry = count.tables;
                call.walked = 1;
            }
        }
    }
    events::dontneed_call_started(&config, task.tid);
    if INFLIGHT.insert(task.tid, call, 0).is_err() {
        record_inflight_failure();
    }
}

/// `bytes_from_ret`: `process_madvise` returns the number of bytes advised,
/// `madvise` returns 0 and the length comes from the entry.
#[inline(always)]
fn on_exit<const WALK: bool>(ret: i64, bytes_from_ret: bool) {
    let config = config();
    let Some(task) = CurrentTask::observed(&config) else {
        return;
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { INFLIGHT.get(task.tid) }).copied() else {
        return;
    };
    let _ = INFLIGHT.remove(task.tid);
    let mut reclaimed = 0;
    if config.reclaim_from_frees == 0 {
        let Some(mm) = current_mm(&config) else {
            return;
        };
        if let Some(pages) = reclaimed_pages::<WALK>(&config, mm, &call) {
            reclaimed = pages;
            if pages > 0 {
                record_pte_pages_reclaimed(task.tgid, pages);
            }
        }
    }
    if ret >= 0 {
        let bytes = if bytes_from_ret { ret as u64 } else { call.len };
        record_dontneed_call(task.tgid, bytes);
        events::dontneed_call_done(&config, task, &call, reclaimed, bytes);
    }
}

#[inline(always)]
fn reclaimed_pages<const WALK: bool>(config: &KernelConfig, mm: u64, call: &InflightCall) -> Option<u64> {
    if WALK && call.walked == 1 {
        if let Some(count) = count_pte_tables(config, mm, call.start, call.start.wrapping_add(call.len)) {
            if count.complete {
                return Some(call.tables_at_entry.saturating_sub(count.tables));
            }
        }
    }
    record_approximate_call();
    let now = pgtables_bytes(config, mm)?;
    // checked_div: a division the compiler cannot prove safe would leave a
    // panic path, which the verifier rejects.
    call.pgtables_bytes_at_entry.saturating_sub(now).checked_div(config.page_size)
}

fn madvise_enter<const WALK: bool>(ctx: &TracePointContext) {
    // SAFETY: offsets from the tracepoint's format (above).
    let behavior = unsafe { ctx.read_at::<u64>(MADVISE_BEHAVIOR) }.unwrap_or(0);
    if is_dontneed(behavior) {
        // SAFETY: as above.
        let (start, len) =
            unsafe { (ctx.read_at::<u64>(MADVISE_START).unwrap_or(0), ctx.read_at::<u64>(MADVISE_LEN).unwrap_or(0)) };
        on_enter::<WALK>(start, len, true);
    }
}

fn madvise_exit<const WALK: bool>(ctx: &TracePointContext) {
    // SAFETY: offset from the tracepoint's format (above).
    let ret = unsafe { ctx.read_at::<i64>(SYS_EXIT_RET) }.unwrap_or(-1);
    on_exit::<WALK>(ret, false);
}

fn process_madvise_enter<const WALK: bool>(ctx: &TracePointContext) {
    // SAFETY: offsets from the tracepoint's format (above).
    let behavior = unsafe { ctx.read_at::<u64>(PROCESS_MADVISE_BEHAVIOR) }.unwrap_or(0);
    if !is_dontneed(behavior) {
        return;
    }
    // DONTNEED through process_madvise is only allowed on the caller's own mm
    // (6.13+), so `current->mm` is the mm being zapped. One iovec gives an
    // exact range; several fall back to `pgtables_bytes`.
    // SAFETY: as above.
    let (vec, vlen) = unsafe {
        (ctx.read_at::<u64>(PROCESS_MADVISE_VEC).unwrap_or(0), ctx.read_at::<u64>(PROCESS_MADVISE_VLEN).unwrap_or(0))
    };
    // SAFETY: bpf_probe_read_user tolerates bad user pointers.
    let iovec = unsafe { bpf_probe_read_user(vec as *const [u64; 2]) }.ok();
    match iovec {
        Some([base, len]) if vlen == 1 => on_enter::<WALK>(base, len, true),
        _ => on_enter::<WALK>(0, 0, false),
    }
}

fn process_madvise_exit<const WALK: bool>(ctx: &TracePointContext) {
    // SAFETY: offset from the tracepoint's format (above).
    let ret = unsafe { ctx.read_at::<i64>(SYS_EXIT_RET) }.unwrap_or(-1);
    on_exit::<WALK>(ret, true);
}

/// Each handler becomes two programs: with the page-table walk, and without
/// it. The plain ones serve the fentry/kprobe plans and kernels whose
/// verifier rejects the walk (6.1 gives up on its bpf_loop callbacks); the
/// walk code is then not even loaded. Names match `ptwatch_common::names`.
macro_rules! with_and_without_walk {
    ($($event:literal => $plain:ident, $walk:ident, $handler:ident;)*) => {$(
        #[tracepoint(category = "syscalls", name = $event)]
        pub fn $plain(ctx: TracePointContext) -> u32 {
            $handler::<false>(&ctx);
            0
        }

        #[tracepoint(category = "syscalls", name = $event)]
        pub fn $walk(ctx: TracePointContext) -> u32 {
            $handler::<true>(&ctx);
            0
        }
    )*};
}

with_and_without_walk! {
    "sys_enter_madvise" => madvise_enter_plain, madvise_enter_walk, madvise_enter;
    "sys_exit_madvise" => madvise_exit_plain, madvise_exit_walk, madvise_exit;
    "sys_enter_process_madvise" => process_madvise_enter_plain, process_madvise_enter_walk, process_madvise_enter;
    "sys_exit_process_madvise" => process_madvise_exit_plain, process_madvise_exit_walk, process_madvise_exit;
}
