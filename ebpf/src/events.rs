//! Events for `ptwatch trace`: one [`TraceEvent`] per DONTNEED request and
//! per page-table free, sent through a ring buffer.
//!
//! Only `trace`'s own instance of the object sets `emit_events`; it is a
//! frozen global, so for the agent every function here starts with a branch
//! the verifier knows is taken and the rest is dead code it removes. The
//! agent also shrinks the ring buffer to one page (the loader overrides its
//! size), so an agent pays nothing for this module.
//!
//! In the fentry/kprobe plans PT_RECLAIM is counted per free; each free is
//! an event, and the frees classified `reclaim` are also summed in the
//! thread's context so that the event of the request that caused them
//! carries their total, as in the tracepoint plan.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use ptwatch_common::{Cause, EventKind, Level, TraceEvent};

use crate::{
    atomic, context,
    counters::{CommSource, Owner},
    kernel::{Config, CurrentTask},
};

/// One page: the smallest ring buffer. `ptwatch trace` sets its own size at
/// load time.
#[map(name = "TRACE_EVENTS")]
static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Events that did not fit in the ring buffer (per CPU).
#[map(name = "TRACE_LOST")]
static TRACE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The kernel-side filters of `--pid` and `--cgroup`; `None` when the event
/// is not wanted (or events are off). Returns the running task's cgroup.
#[inline(always)]
fn wanted(config: Config, tgid: u32) -> Option<u64> {
    if config.emit_events() == 0 {
        return None;
    }
    if config.trace_tgid() != 0 && config.trace_tgid() != u64::from(tgid) {
        return None;
    }
    // SAFETY: no preconditions; 0 without cgroup v2.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if config.trace_cgroup_id() != 0 && config.trace_cgroup_id() != cgroup_id {
        return None;
    }
    Some(cgroup_id)
}

#[inline(always)]
fn send(event: &TraceEvent) {
    if TRACE_EVENTS.output::<TraceEvent>(event, 0).is_err() {
        if let Some(lost) = TRACE_LOST.get_ptr_mut(0) {
            atomic::add(lost, 1);
        }
    }
}

/// A PTE table was reclaimed inside the request thread `tid` is in.
#[inline(always)]
pub fn reclaimed_in_call(tid: u32) {
    context::count_reclaimed_in_call(tid);
}

/// A DONTNEED request of `task` over `range` finished, having reclaimed
/// `reclaimed` PTE tables and advised `bytes`.
#[inline(always)]
pub fn dontneed_done(config: Config, task: CurrentTask, range: (u64, u64), reclaimed: u64, bytes: u64) {
    let Some(cgroup_id) = wanted(config, task.tgid) else {
        return;
    };
    send(&TraceEvent {
        // SAFETY: no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        start: range.0,
        len: range.1,
        bytes,
        pages: reclaimed,
        cgroup_id,
        tgid: task.tgid,
        tid: task.tid,
        kind: EventKind::Dontneed as u32,
        cause: Cause::Reclaim as u32,
        level: Level::Pte as u32,
        _pad: 0,
        comm: CommSource::Current.read(config),
    });
}

/// One page-table page of `owner` (`None`: no owner) freed for `cause`.
#[inline(always)]
pub fn page_table_freed(config: Config, owner: Option<&Owner>, cause: Cause, level: Level) {
    let tgid = owner.map_or(0, |o| o.key.tgid);
    let Some(cgroup_id) = wanted(config, tgid) else {
        return;
    };
    let comm = owner.map_or([0; ptwatch_common::COMM_LEN], |o| o.comm.read(config));
    send(&TraceEvent {
        // SAFETY: no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        start: 0,
        len: 0,
        bytes: 0,
        pages: 1,
        cgroup_id,
        tgid,
        tid: CurrentTask::get().tid,
        kind: EventKind::Free as u32,
        cause: cause as u32,
        level: level as u32,
        _pad: 0,
        comm,
    });
}
