//! DONTNEED requests through the kernel functions every one of them passes
//! (fentry and kprobe plans): nothing is attached to syscalls, so processes
//! that make no such request pay nothing.
//!
//! `do_madvise(mm, start, len_in, behavior)` serves madvise(2) and io_uring
//! `IORING_OP_MADVISE` (in the io-wq worker thread of the submitting
//! process) on every kernel, and process_madvise(2) before 6.15, one call
//! per iovec; `vector_madvise(mm, iter, behavior)` serves process_madvise(2)
//! since 6.15 and returns the bytes advised.
//!
//! The context that classifies frees as `reclaim` is needed only while a
//! request can reclaim: PT_RECLAIM works on this kernel and the range covers
//! a whole 2 MiB span (`measure::can_reclaim`, the test every plan uses),
//! and only where the frees cannot be told by elimination
//! (`frees::classify`) or `ptwatch trace` wants each request's total. An
//! fexit program sees the arguments again, so the fentry plan stores
//! nothing at all for smaller requests, and usually attaches no entry
//! program at all: an allocator's 4 KiB purges then cost one trampoline
//! and a counter. A kretprobe does not see them; but where the request is
//! the madvise(2) syscall's own (5.15+ with BTF: the syscall number in the
//! saved user registers), both kprobe programs read the arguments from
//! those registers, and one that cannot reclaim stores no context either
//! (only a mark in an array slot, which tells a missed kretprobe).
//! Other requests in the kprobe plan (io_uring's, process_madvise's, older
//! kernels') keep their range in the context, in a single map insert.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};

use ptwatch_common::{context::CANNOT_RECLAIM, ThreadContext};

use super::{finish, is_dontneed, madvise_bytes, measure, vector_bytes};
use crate::{
    context,
    kernel::{config, madvise_syscall_readable, Config, CurrentTask},
};

/// Start of a request on `mm`; `range` is `None` when the kernel does not
/// pass it (several iovecs). `keep_every_range`: a context even for a
/// request that cannot reclaim (a kretprobe does not see the arguments
/// again).
#[inline(always)]
fn begin(mm: u64, range: Option<(u64, u64)>, keep_every_range: bool) {
    let config = config();
    // Decided before anything is read: most requests (an allocator's)
    // cannot reclaim, and cost nothing more here.
    if !(keep_every_range || measure::can_reclaim(config, range)) {
        return;
    }
    if let Some(task) = CurrentTask::observed(config) {
        store(config, task, mm, range);
    }
}

/// The context of a request of `task` on `mm` (see [`begin`]).
#[inline(always)]
fn store(config: Config, task: CurrentTask, mm: u64, range: Option<(u64, u64)>) {
    let can_reclaim = measure::can_reclaim(config, range);
    let (start, len) = range.unwrap_or((0, 0));
    // Only a request that can reclaim names its address space: frees in
    // its zap are `reclaim`.
    let mm = if can_reclaim { mm } else { CANNOT_RECLAIM };
    context::begin_dontneed(task, ThreadContext::dontneed(task.tgid, mm, start, len));
}

/// End of a request: the context, if `begin` stored one, gives what the
/// trace event reports. `bytes`: what the request advised, `None` if it
/// failed.
#[inline(always)]
fn end(range: Option<(u64, u64)>, bytes: Option<u64>) {
    let config = config();
    let Some(task) = CurrentTask::observed(config) else {
        return;
    };
    let stored = context::end_dontneed(task.tid);
    let reclaimed = stored.map_or(0, |c| c.call_reclaimed);
    let range = range.or(stored.map(|c| (c.start, c.len))).unwrap_or((0, 0));
    finish(config, task, range, reclaimed, false, bytes);
}

#[fentry(function = "do_madvise")]
pub fn do_madvise_fentry(ctx: FEntryContext) -> u32 {
    let (mm, start, len, behavior): (u64, u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    if is_dontneed(behavior) {
        begin(mm, Some((start, len)), false);
    }
    0
}

#[fexit(function = "do_madvise")]
pub fn do_madvise_fexit(ctx: FExitContext) -> u32 {
    let (start, len, behavior): (u64, u64, u64) = (ctx.arg(1), ctx.arg(2), ctx.arg(3));
    if !is_dontneed(behavior) {
        return 0;
    }
    // `int do_madvise(...)`: the return value follows the four arguments.
    let ret: i64 = i64::from(ctx.arg::<i32>(4));
    // The same test as at entry: whether a context was stored.
    if measure::can_reclaim(config(), Some((start, len))) {
        end(Some((start, len)), madvise_bytes(ret, len));
    } else {
        // Nothing stored at entry: count the request without a map lookup.
        let config = config();
        if let Some(task) = CurrentTask::observed(config) {
            finish(config, task, (start, len), 0, false, madvise_bytes(ret, len));
        }
    }
    0
}

/// The range of a DONTNEED that cannot reclaim, made by the madvise(2)
/// syscall `task` is in, from its saved user registers: the kprobe stores
/// nothing for it and the kretprobe counts it. Both decide from the same
/// registers, which do not change while the syscall runs.
#[inline(always)]
fn small_madvise_syscall(config: Config, task: CurrentTask) -> Option<(u64, u64)> {
    let [start, len, behavior] = task.madvise_syscall_args(config)?;
    (is_dontneed(behavior) && !measure::can_reclaim(config, Some((start, len)))).then_some((start, len))
}

#[kprobe]
pub fn do_madvise_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(mm), Some(start), Some(len), Some(behavior)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2), ctx.arg::<u64>(3))
    else {
        return 0;
    };
    if !is_dontneed(behavior) {
        return 0;
    }
    let config = config();
    if madvise_syscall_readable(config) {
        if let Some(task) = CurrentTask::observed(config) {
            match small_madvise_syscall(config, task) {
                // No context, but a mark that tells a missed return.
                Some(_) => context::mark_small_madvise(task.tid),
                None => store(config, task, mm, Some((start, len))),
            }
        }
    } else {
        begin(mm, Some((start, len)), true);
    }
    0
}

#[kretprobe]
pub fn do_madvise_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret = i64::from(ctx.ret::<i32>());
    let config = config();
    let Some(task) = CurrentTask::observed(config) else {
        return 0;
    };
    if let Some((start, len)) = small_madvise_syscall(config, task) {
        context::unmark_small_madvise(task.tid);
        finish(config, task, (start, len), 0, false, madvise_bytes(ret, len));
        return 0;
    }
    // Only DONTNEED requests stored a context; the length comes from it.
    let Some(stored) = context::end_dontneed(task.tid) else {
        return 0;
    };
    finish(config, task, (stored.start, stored.len), stored.call_reclaimed, false, madvise_bytes(ret, stored.len));
    0
}

#[fentry(function = "vector_madvise")]
pub fn vector_madvise_fentry(ctx: FEntryContext) -> u32 {
    let (mm, behavior): (u64, u64) = (ctx.arg(0), ctx.arg(2));
    if is_dontneed(behavior) {
        begin(mm, None, true);
    }
    0
}

#[fexit(function = "vector_madvise")]
pub fn vector_madvise_fexit(ctx: FExitContext) -> u32 {
    let behavior: u64 = ctx.arg(2);
    if is_dontneed(behavior) {
        // `ssize_t vector_madvise(...)`: the result follows three arguments.
        let ret: i64 = ctx.arg(3);
        end(None, vector_bytes(ret));
    }
    0
}

#[kprobe]
pub fn vector_madvise_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(mm), Some(behavior)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(2)) else {
        return 0;
    };
    if is_dontneed(behavior) {
        begin(mm, None, true);
    }
    0
}

#[kretprobe]
pub fn vector_madvise_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret::<i64>();
    let config = config();
    let Some(task) = CurrentTask::observed(config) else {
        return 0;
    };
    let Some(stored) = context::end_dontneed(task.tid) else {
        return 0;
    };
    finish(config, task, (stored.start, stored.len), stored.call_reclaimed, false, vector_bytes(ret));
    0
}
