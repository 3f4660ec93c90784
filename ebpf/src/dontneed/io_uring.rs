//! io_uring `IORING_OP_MADVISE` DONTNEED requests (tracepoint plan).
//!
//! Such a request never passes a madvise syscall: the kernel runs it later,
//! in an io-wq worker thread of the submitting process. Two io_uring
//! tracepoints bracket it: `io_uring_submit_req` (in the submitter, after
//! the request was prepared: its range and advice are in the request) and
//! `io_uring_complete` (in the thread that ran it). What was measured at
//! submission waits in `IO_REQUESTS`, keyed by the request's address.
//!
//! The fentry and kprobe plans do not need this: io_uring's handler calls
//! `do_madvise`, which they hook.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
    EbpfContext as _,
};
use ptwatch_common::{context::measured, IoRequest, MAX_THREAD_CONTEXTS};

use super::{
    finish, is_dontneed,
    measure::{self, AtEntry},
};
use crate::{
    counters::{count, Diagnostic},
    kernel::{config, current_mm, read_kernel, CurrentTask},
};

/// `IORING_OP_MADVISE` of `enum io_uring_op` (uapi; stable).
const IORING_OP_MADVISE: u8 = 25;

#[map(name = "IO_REQUESTS")]
static IO_REQUESTS: HashMap<u64, IoRequest> = HashMap::with_max_entries(MAX_THREAD_CONTEXTS, 0);

/// A field at a runtime offset of the tracepoint record (the verifier only
/// allows constant offsets for direct loads).
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u8>().add(offset as usize).cast::<T>()) }.ok()
}

#[inline(always)]
fn on_submit<const WALK: bool>(ctx: &TracePointContext) {
    let config = config();
    if field::<u8>(ctx, config.io_submit_opcode_offset()) != Some(IORING_OP_MADVISE) {
        return;
    }
    let Some(req) = field::<u64>(ctx, config.io_submit_req_offset()) else {
        return;
    };
    let advice = read_kernel::<u32>(req, config.io_madvise_advice_offset()).unwrap_or(0);
    if !is_dontneed(u64::from(advice)) || CurrentTask::observed(config).is_none() {
        return;
    }
    let (Some(start), Some(len), Some(mm)) = (
        read_kernel::<u64>(req, config.io_madvise_addr_offset()),
        read_kernel::<u64>(req, config.io_madvise_len_offset()),
        current_mm(config),
    ) else {
        count(Diagnostic::UnmeasuredRequest);
        return;
    };
    let len = len & config.io_madvise_len_mask();
    // SAFETY: no preconditions.
    let submitted_ns = unsafe { bpf_ktime_get_ns() };
    let mut request = IoRequest { start, len, submitted_ns, ..IoRequest::default() };
    if measure::can_reclaim(config, Some((start, len))) {
        let entry = measure::at_entry::<WALK>(config, mm, start, len);
        request.measured = entry.method();
        request.tables_at_entry = entry.tables;
        request.pgtables_bytes_at_entry = entry.pgtables_bytes;
    } else {
        request.measured = measured::NOTHING_TO_RECLAIM;
    }
    if IO_REQUESTS.insert(req, request, 0).is_err() {
        count(Diagnostic::UnmeasuredRequest);
    }
}

#[inline(always)]
fn on_complete<const WALK: bool>(ctx: &TracePointContext) {
    let config = config();
    let Some(req) = field::<u64>(ctx, config.io_complete_req_offset()) else {
        return;
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(request) = (unsafe { IO_REQUESTS.get(req) }).copied() else {
        return;
    };
    let _ = IO_REQUESTS.remove(req);
    let Some(task) = CurrentTask::observed(config) else {
        return;
    };
    let res = field::<i32>(ctx, config.io_complete_res_offset()).unwrap_or(-1);
    let entry = AtEntry::stored(request.measured, request.tables_at_entry, request.pgtables_bytes_at_entry);
    let reclaimed = measure::reclaimed::<WALK>(config, entry, request.start, request.len);
    finish(config, task, (request.start, request.len), reclaimed, true, (res >= 0).then_some(request.len));
}

/// With and without the page-table walk, as for the syscall programs.
/// Names match `ptwatch_common::names::IO_URING_PROGRAMS`.
#[tracepoint(category = "io_uring", name = "io_uring_submit_req")]
pub fn io_uring_submit_walk(ctx: TracePointContext) -> u32 {
    on_submit::<true>(&ctx);
    0
}

#[tracepoint(category = "io_uring", name = "io_uring_submit_req")]
pub fn io_uring_submit_plain(ctx: TracePointContext) -> u32 {
    on_submit::<false>(&ctx);
    0
}

#[tracepoint(category = "io_uring", name = "io_uring_complete")]
pub fn io_uring_complete_walk(ctx: TracePointContext) -> u32 {
    on_complete::<true>(&ctx);
    0
}

#[tracepoint(category = "io_uring", name = "io_uring_complete")]
pub fn io_uring_complete_plain(ctx: TracePointContext) -> u32 {
    on_complete::<false>(&ctx);
    0
}
