//! Aggregation maps and the helpers that update them.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use ptwatch_common::{NodeCounters, ProcessCounters, MAX_TRACKED_PROCESSES};

#[map(name = "PROCESS_COUNTERS")]
static PROCESS_COUNTERS: LruHashMap<u32, ProcessCounters> = LruHashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

#[map(name = "NODE_COUNTERS")]
static NODE_COUNTERS: PerCpuArray<NodeCounters> = PerCpuArray::with_max_entries(1, 0);

use crate::atomic;

#[inline(always)]
fn node() -> Option<*mut NodeCounters> {
    NODE_COUNTERS.get_ptr_mut(0)
}

/// The counters of process `tgid`, created (with the current comm and
/// cgroup) on first use. A failed insert is counted on the node, never silent.
#[inline(always)]
fn process(tgid: u32) -> Option<*mut ProcessCounters> {
    if let Some(counters) = PROCESS_COUNTERS.get_ptr_mut(tgid) {
        return Some(counters);
    }
    // The cgroup is taken once, at creation: the process may exit before
    // the agent can read `/proc/<pid>/cgroup`. The running thread is the
    // process' own (madvise) or, for a free, usually the exiting task.
    // SAFETY: no preconditions; returns 0 without cgroup v2.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let fresh =
        ProcessCounters { comm: bpf_get_current_comm().unwrap_or_default(), cgroup_id, ..ProcessCounters::default() };
    // BPF_NOEXIST: another CPU may have created the entry meanwhile; then its
    // entry is used below.
    if PROCESS_COUNTERS.insert(tgid, fresh, u64::from(BPF_NOEXIST)).is_err()
        && PROCESS_COUNTERS.get_ptr_mut(tgid).is_none()
    {
        if let Some(node) = node() {
            // SAFETY: per-CPU value of this CPU; no other writer.
            unsafe { (*node).process_map_update_failures += 1 };
        }
        return None;
    }
    PROCESS_COUNTERS.get_ptr_mut(tgid)
}

// Per-process entries are shared by the threads of a process, which run on
// several CPUs at once: they are updated with atomic adds. Node counters are
// per-CPU and need none.

/// Record one completed DONTNEED call.
#[inline(always)]
pub fn record_dontneed_call(tgid: u32, bytes: u64) {
    if let Some(node) = node() {
        // SAFETY: per-CPU value of this CPU; no other writer.
        unsafe {
            (*node).dontneed_calls += 1;
            (*node).dontneed_bytes += bytes;
        }
    }
    if let Some(process) = process(tgid) {
        // SAFETY: pointer into a live map value.
        unsafe {
            atomic::add(&raw mut (*process).dontneed_calls, 1);
            atomic::add(&raw mut (*process).dontneed_bytes, bytes);
        }
    }
}

/// Record PTE pages reclaimed in the mm of process `tgid`.
#[inline(always)]
pub fn record_pte_pages_reclaimed(tgid: u32, pages: u64) {
    if let Some(node) = node() {
        // SAFETY: per-CPU value of this CPU; no other writer.
        unsafe { (*node).pte_pages_reclaimed += pages };
    }
    if let Some(process) = process(tgid) {
        // SAFETY: pointer into a live map value.
        unsafe { atomic::add(&raw mut (*process).pte_pages_reclaimed, pages) };
    }
}

/// Count a DONTNEED call measured through `pgtables_bytes`.
#[inline(always)]
pub fn record_approximate_call() {
    if let Some(node) = node() {
        // SAFETY: per-CPU value of this CPU; no other writer.
        unsafe { (*node).approximate_calls += 1 };
    }
}

/// Count a page-table free whose per-process entry could not be stored.
#[inline(always)]
pub fn record_free_update_failure() {
    if let Some(node) = node() {
        // SAFETY: per-CPU value of this CPU; no other writer.
        unsafe { (*node).free_map_update_failures += 1 };
    }
}

/// Count a DONTNEED call whose in-flight state could not be stored.
#[inline(always)]
pub fn record_inflight_failure() {
    if let Some(node) = node() {
        // SAFETY: per-CPU value of this CPU; no other writer.
        unsafe { (*node).inflight_update_failures += 1 };
    }
}
