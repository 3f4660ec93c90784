//! Events for `ptwatch trace`: one [`TraceEvent`] per DONTNEED call and per
//! page-table free, sent through a ring buffer.
//!
//! Only `trace`'s own instance of the object sets `emit_events`; it is a
//! frozen global, so for the agent every function here starts with a branch
//! the verifier knows is taken and the rest is dead code it removes. The
//! agent also shrinks the ring buffer to one page (the loader overrides its
//! size), so an agent pays nothing for this module.
//!
//! In the fentry/kprobe plans PT_RECLAIM is counted per free; each free is
//! an event, and the frees classified `reclaim` are also summed per thread
//! ([`CALL_RECLAIMED`]) so that the event of the DONTNEED call that caused
//! them carries their total, as in the tracepoint plan.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_ktime_get_ns},
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use ptwatch_common::{cause, event_kind, level, InflightCall, KernelConfig, TraceEvent, COMM_LEN, MAX_INFLIGHT_CALLS};

use crate::{atomic, kernel::CurrentTask};

/// One page: the smallest ring buffer. `ptwatch trace` sets its own size at
/// load time.
#[map(name = "TRACE_EVENTS")]
static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Events that did not fit in the ring buffer (per CPU).
#[map(name = "TRACE_LOST")]
static TRACE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// PTE tables freed as `reclaim` by the DONTNEED call each thread is in
/// (fentry/kprobe plans), keyed by thread id.
#[map(name = "CALL_RECLAIMED")]
static CALL_RECLAIMED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_INFLIGHT_CALLS, 0);

/// The kernel-side filters of `--pid` and `--cgroup`; `None` when the event
/// is not wanted (or events are off). Returns the running task's cgroup.
#[inline(always)]
fn wanted(config: &KernelConfig, tgid: u32) -> Option<u64> {
    if config.emit_events == 0 {
        return None;
    }
    if config.trace_tgid != 0 && config.trace_tgid != u64::from(tgid) {
        return None;
    }
    // SAFETY: no preconditions; 0 without cgroup v2.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if config.trace_cgroup_id != 0 && config.trace_cgroup_id != cgroup_id {
        return None;
    }
    Some(cgroup_id)
}

#[inline(always)]
fn send(event: &TraceEvent) {
    if TRACE_EVENTS.output::<TraceEvent>(event, 0).is_err() {
        if let Some(lost) = TRACE_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU value of this CPU; no other writer.
            unsafe { *lost += 1 };
        }
    }
}

/// A DONTNEED call starts on thread `tid`: forget what an earlier call that
/// never reached its exit (e.g. started before trace attached) left.
#[inline(always)]
pub fn dontneed_call_started(config: &KernelConfig, tid: u32) {
    if config.emit_events == 0 || config.reclaim_from_frees == 0 {
        return;
    }
    let _ = CALL_RECLAIMED.remove(tid);
}

/// A DONTNEED call of `task` finished. `reclaimed`: PTE tables it reclaimed
/// as measured by the tracepoint plan (the fentry/kprobe plans sum their
/// classified frees instead); `bytes`: what the call advised.
#[inline(always)]
pub fn dontneed_call_done(config: &KernelConfig, task: CurrentTask, call: &InflightCall, reclaimed: u64, bytes: u64) {
    if config.emit_events == 0 {
        return;
    }
    let mut pages = reclaimed;
    if config.reclaim_from_frees != 0 {
        // SAFETY: the value is copied out before the entry is removed.
        pages = unsafe { CALL_RECLAIMED.get(task.tid) }.copied().unwrap_or(0);
        let _ = CALL_RECLAIMED.remove(task.tid);
    }
    let Some(cgroup_id) = wanted(config, task.tgid) else {
        return;
    };
    send(&TraceEvent {
        // SAFETY: no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        start: call.start,
        len: call.len,
        bytes,
        pages,
        cgroup_id,
        tgid: task.tgid,
        tid: task.tid,
        kind: event_kind::DONTNEED,
        cause: cause::RECLAIM,
        level: level::PTE,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    });
}

/// One page-table page of process `tgid` (0: no owner) freed for `why`.
#[inline(always)]
pub fn page_table_freed(config: &KernelConfig, tgid: u32, comm: [u8; COMM_LEN], why: u32, level_of_table: u32) {
    if config.emit_events == 0 {
        return;
    }
    let task = CurrentTask::get();
    if why == cause::RECLAIM {
        // Inside a DONTNEED call of this thread (that is what `reclaim`
        // means): add to the call's total.
        match CALL_RECLAIMED.get_ptr_mut(task.tid) {
            Some(total) => atomic::add(total, 1),
            None => {
                let _ = CALL_RECLAIMED.insert(task.tid, 1, 0);
            }
        }
    }
    let Some(cgroup_id) = wanted(config, tgid) else {
        return;
    };
    send(&TraceEvent {
        // SAFETY: no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        start: 0,
        len: 0,
        bytes: 0,
        pages: 1,
        cgroup_id,
        tgid,
        tid: task.tid,
        kind: event_kind::FREE,
        cause: why,
        level: level_of_table,
        _pad: 0,
        comm,
    });
}
