//! DONTNEED requests through the syscall tracepoints (tracepoint plan: the
//! only hooks some hosts allow, this project's CI host among them).
//!
//! While any `syscalls:*` tracepoint is attached, every syscall of every
//! process on the node takes the kernel's slow path (SYSCALL_WORK): that
//! cost is the plan's, measured in docs/benchmarks.md and stated by
//! `ptwatch check`. What the programs themselves do is kept small: a madvise
//! request that cannot reclaim (its range covers no whole 2 MiB span, or the
//! kernel has no PT_RECLAIM), an allocator's, stores nothing: its exit reads
//! the call's arguments back from the saved user registers (5.15+ with BTF)
//! and counts it there. Where the kernel cannot, and for process_madvise
//! (whose range is in user memory), such a request stores its range in one
//! map insert. The others are measured around the call (`measure`).

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext, EbpfContext as _};
use ptwatch_common::{context::CANNOT_RECLAIM, ThreadContext};

use super::{
    finish, is_dontneed, madvise_bytes,
    measure::{self, AtEntry},
    vector_bytes,
};
use crate::{
    context,
    kernel::{config, current_mm, syscall_args_readable_at_exit, CurrentTask},
};

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

/// A field of the tracepoint record, loaded directly (the record is the
/// program's context: no helper call needed).
#[inline(always)]
fn field(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: every offset above is inside the record of its tracepoint and
    // 8-byte aligned; the verifier checks context accesses.
    unsafe { ctx.as_ptr().cast::<u8>().add(offset).cast::<u64>().read() }
}

/// Start of a DONTNEED request of the running task. `range`: `None` when it
/// is not known exactly (process_madvise with several iovecs).
#[inline(always)]
fn on_enter<const WALK: bool>(range: Option<(u64, u64)>) {
    let config = config();
    let Some(task) = CurrentTask::observed(config) else {
        return;
    };
    let (start, len) = range.unwrap_or((0, 0));
    let mut request = ThreadContext::dontneed(task.tgid, CANNOT_RECLAIM, start, len);
    // Most requests (an allocator's) cannot reclaim: only their range is
    // kept, for the exit, and their address space is not even read.
    if measure::can_reclaim(config, range) {
        let Some(mm) = current_mm(config) else {
            return;
        };
        let entry = match range {
            Some(_) => measure::at_entry::<WALK>(config, mm, start, len),
            // Unknown ranges are measured through pgtables_bytes.
            None => measure::at_entry::<false>(config, mm, 0, 0),
        };
        request.dontneed_mm = mm;
        request.measured = entry.method();
        request.tables_at_entry = entry.tables;
        request.pgtables_bytes_at_entry = entry.pgtables_bytes;
    }
    context::begin_dontneed(task, request);
}

/// End of the request. `bytes_from_ret`: process_madvise returns the bytes
/// advised; madvise returns 0 and the length is the one asked for.
#[inline(always)]
fn on_exit<const WALK: bool>(task: CurrentTask, ret: i64, bytes_from_ret: bool) {
    let config = config();
    let Some(stored) = context::end_dontneed(task.tid) else {
        return;
    };
    let entry = AtEntry::stored(stored.measured, stored.tables_at_entry, stored.pgtables_bytes_at_entry);
    let reclaimed = measure::reclaimed::<WALK>(config, entry, stored.start, stored.len);
    let bytes = if bytes_from_ret { vector_bytes(ret) } else { madvise_bytes(ret, stored.len) };
    finish(config, task, (stored.start, stored.len), reclaimed, true, bytes);
}

fn madvise_enter<const WALK: bool>(ctx: &TracePointContext) {
    if !is_dontneed(field(ctx, MADVISE_BEHAVIOR)) {
        return;
    }
    let range = (field(ctx, MADVISE_START), field(ctx, MADVISE_LEN));
    // The exit tells such a request by the same arguments, from the
    // registers (`madvise_exit`).
    if syscall_args_readable_at_exit(config()) && !measure::can_reclaim(config(), Some(range)) {
        return;
    }
    on_enter::<WALK>(Some(range));
}

fn madvise_exit<const WALK: bool>(ctx: &TracePointContext) {
    let ret = field(ctx, SYS_EXIT_RET) as i64;
    let config = config();
    let Some(task) = CurrentTask::observed(config) else {
        return;
    };
    if let Some([start, len, behavior]) = task.syscall_args_at_exit(config) {
        if !is_dontneed(behavior) {
            return;
        }
        // A request that cannot reclaim stored no context (`madvise_enter`).
        if !measure::can_reclaim(config, Some((start, len))) {
            finish(config, task, (start, len), 0, false, madvise_bytes(ret, len));
            return;
        }
    }
    on_exit::<WALK>(task, ret, false);
}

fn process_madvise_enter<const WALK: bool>(ctx: &TracePointContext) {
    if !is_dontneed(field(ctx, PROCESS_MADVISE_BEHAVIOR)) {
        return;
    }
    // DONTNEED through process_madvise is only allowed on the caller's own
    // mm (6.13+), so `current->mm` is the mm being zapped. One iovec gives
    // an exact range.
    let (vec, vlen) = (field(ctx, PROCESS_MADVISE_VEC), field(ctx, PROCESS_MADVISE_VLEN));
    // SAFETY: bpf_probe_read_user tolerates bad user pointers.
    let iovec = unsafe { bpf_probe_read_user(vec as *const [u64; 2]) }.ok();
    match iovec {
        Some([base, len]) if vlen == 1 => on_enter::<WALK>(Some((base, len))),
        _ => on_enter::<WALK>(None),
    }
}

fn process_madvise_exit<const WALK: bool>(ctx: &TracePointContext) {
    if let Some(task) = CurrentTask::observed(config()) {
        on_exit::<WALK>(task, field(ctx, SYS_EXIT_RET) as i64, true);
    }
}

/// Each handler becomes two programs: with the page-table walk, and without
/// it (kernels whose verifier rejects the walk: 6.1 gives up on its
/// bpf_loop callbacks; the walk code is then not even loaded). Names match
/// `ptwatch_common::names::MADVISE_PROGRAMS`.
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
