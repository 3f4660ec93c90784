//! DONTNEED requests: how many, how many bytes, and the context that tells
//! PT_RECLAIM's frees from the rest.
//!
//! Three ways to see them, one per plan family:
//! - `functions`: fentry/fexit (or kprobes) on the kernel functions every
//!   request goes through (`do_madvise`, `vector_madvise`): madvise(2),
//!   process_madvise(2) and io_uring alike, at a cost only to those calls;
//! - `syscalls`: the syscall tracepoints (tracepoint plan), which every
//!   syscall on the node pays for while attached;
//! - `io_uring`: io_uring's own tracepoints (tracepoint plan), for requests
//!   that never pass a syscall of their own.
//!
//! All of them end in [`finish`].

pub mod functions;
pub mod io_uring;
pub mod measure;
pub mod syscalls;

use ptwatch_common::{MADV_DONTNEED, MADV_DONTNEED_LOCKED};

use crate::{
    counters::{record_dontneed_call, record_frees, CommSource, Owner},
    events,
    kernel::{Config, CurrentTask},
};

/// `behavior` is `MADV_DONTNEED` or `MADV_DONTNEED_LOCKED`. The kernel's
/// `int` may arrive sign-extended in 64 bits: compare the low 32.
#[inline(always)]
pub fn is_dontneed(behavior: u64) -> bool {
    let behavior = behavior & 0xffff_ffff;
    behavior == MADV_DONTNEED || behavior == MADV_DONTNEED_LOCKED
}

/// A request of the running task ended. `reclaimed`: PTE tables it
/// reclaimed when the plan measures them around the request (tracepoint
/// plan; the fentry/kprobe plans count each free as it happens and pass
/// what they saw only for the trace event); `counted_here`: whether this
/// function must add them. `bytes`: `None` when the request failed.
#[inline(always)]
pub fn finish(
    config: Config,
    task: CurrentTask,
    range: (u64, u64),
    reclaimed: u64,
    counted_here: bool,
    bytes: Option<u64>,
) {
    let owner = Owner { key: task.process_key(config), comm: CommSource::Current };
    if counted_here && reclaimed > 0 {
        record_frees(Some(&owner), ptwatch_common::Cause::Reclaim, ptwatch_common::Level::Pte, reclaimed);
    }
    if let Some(bytes) = bytes {
        record_dontneed_call(&owner, bytes);
        events::dontneed_done(config, task, range, reclaimed, bytes);
    }
}

/// madvise returns 0 on success; the bytes are the length asked for.
#[inline(always)]
pub fn madvise_bytes(ret: i64, len: u64) -> Option<u64> {
    (ret == 0).then_some(len)
}

/// process_madvise returns the bytes advised, or an error.
#[inline(always)]
pub fn vector_bytes(ret: i64) -> Option<u64> {
    u64::try_from(ret).ok()
}
