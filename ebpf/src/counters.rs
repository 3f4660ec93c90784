//! The aggregation maps and the only code that updates them.
//!
//! Every event is added to the node totals and to exactly one of: the
//! process' own entry (or, for a busy process' DONTNEED requests, its slot
//! in `DONTNEED_SLOTS`, which the agent reads as part of that entry), its
//! cgroup's overflow slot (process map full), or the unattributed slot (no
//! owner, or overflow map full too). See
//! `ptwatch_common::counters` for why that keeps every total exact.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_cgroup_id,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use ptwatch_common::{
    overflow_capacity, Cause, DontneedSlot, Level, NodeCounters, ProcessCounters, ProcessKey, COMM_LEN,
    DEFAULT_MAX_TRACKED_PROCESSES, DONTNEED_SLOT_CLAIM_CALLS, DONTNEED_SLOT_COUNT, UNATTRIBUTED_CGROUP,
};

use crate::{
    atomic,
    kernel::{config, current_task, read_kernel, Config},
};

/// A plain hash map: an entry is never evicted, the agent removes it once
/// the process is gone. Resized by the agent at load time.
#[map(name = "PROCESS_COUNTERS")]
static PROCESS_COUNTERS: HashMap<ProcessKey, ProcessCounters> =
    HashMap::with_max_entries(DEFAULT_MAX_TRACKED_PROCESSES, 0);

#[map(name = "OVERFLOW_COUNTERS")]
static OVERFLOW_COUNTERS: HashMap<u64, ProcessCounters> =
    HashMap::with_max_entries(overflow_capacity(DEFAULT_MAX_TRACKED_PROCESSES), 0);

/// DONTNEED counts of busy processes, found without hashing; the protocol
/// is at `ptwatch_common::DONTNEED_SLOT_COUNT`.
#[map(name = "DONTNEED_SLOTS")]
static DONTNEED_SLOTS: Array<DontneedSlot> = Array::with_max_entries(DONTNEED_SLOT_COUNT, 0);

/// Who claimed each slot: the insert is the atomic claim.
#[map(name = "DONTNEED_SLOT_OWNERS")]
static DONTNEED_SLOT_OWNERS: HashMap<u32, ProcessKey> = HashMap::with_max_entries(DONTNEED_SLOT_COUNT, 0);

#[map(name = "NODE_COUNTERS")]
static NODE_COUNTERS: PerCpuArray<NodeCounters> = PerCpuArray::with_max_entries(1, 0);

/// Where a new entry is put together before it is inserted: at 280 bytes
/// it would take more than half of the 512-byte BPF stack.
#[map(name = "NEW_ENTRY")]
static NEW_ENTRY: PerCpuArray<ProcessCounters> = PerCpuArray::with_max_entries(1, 0);

/// A zeroed entry in this CPU's scratch slot, with `cgroup_id` and `comm`.
#[inline(always)]
fn fresh_entry(cgroup_id: u64, comm: [u8; COMM_LEN]) -> Option<&'static ProcessCounters> {
    let slot = NEW_ENTRY.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch value; programs do not migrate while they
    // run, and the value is copied into the map right after.
    unsafe {
        core::ptr::write_bytes(slot, 0, 1);
        (*slot).cgroup_id = cgroup_id;
        (*slot).comm = comm;
        Some(&*slot)
    }
}

/// Where a process' name for a new entry comes from: its thread-group
/// leader's `comm`, which is what `/proc/<pid>/comm` shows (a worker thread
/// such as io_uring's `iou-wrk-*` has its own).
#[derive(Clone, Copy)]
pub enum CommSource {
    /// The running task's process.
    Current,
    /// The process of the `task_struct` at this address.
    Task(u64),
}

impl CommSource {
    #[inline(always)]
    pub fn read(self, config: Config) -> [u8; COMM_LEN] {
        let task = match self {
            Self::Current => current_task(),
            Self::Task(task) => task,
        };
        read_kernel::<u64>(task, config.task_group_leader_offset())
            .and_then(|leader| read_kernel(leader, config.task_comm_offset()))
            .unwrap_or_default()
    }
}

/// The process an event belongs to, and how to name it if it is new.
#[derive(Clone, Copy)]
pub struct Owner {
    pub key: ProcessKey,
    pub comm: CommSource,
}

/// Node-wide counters of this CPU. Updated with atomic adds: a program can
/// be preempted by another on the same CPU (fentry programs run with
/// migration, not preemption, disabled).
#[inline(always)]
pub fn node() -> Option<*mut NodeCounters> {
    NODE_COUNTERS.get_ptr_mut(0)
}

/// The node's diagnostic counters (see `NodeCounters`).
#[derive(Clone, Copy)]
pub enum Diagnostic {
    ProcessMapOverflow,
    CgroupMapOverflow,
    UnownedFree,
    LostEvent,
    ContextUpdateFailure,
    ContextExitMiss,
    ApproximateCall,
    UnmeasuredRequest,
}

/// Count one occurrence of `what` on the node.
#[inline(always)]
pub fn count(what: Diagnostic) {
    let Some(node) = node() else {
        return;
    };
    // SAFETY: pointers into this CPU's live map value.
    let field = unsafe {
        match what {
            Diagnostic::ProcessMapOverflow => &raw mut (*node).process_map_overflows,
            Diagnostic::CgroupMapOverflow => &raw mut (*node).cgroup_map_overflows,
            Diagnostic::UnownedFree => &raw mut (*node).unowned_frees,
            Diagnostic::LostEvent => &raw mut (*node).lost_events,
            Diagnostic::ContextUpdateFailure => &raw mut (*node).context_update_failures,
            Diagnostic::ContextExitMiss => &raw mut (*node).context_exit_misses,
            Diagnostic::ApproximateCall => &raw mut (*node).approximate_calls,
            Diagnostic::UnmeasuredRequest => &raw mut (*node).unmeasured_requests,
        }
    };
    atomic::add(field, 1);
}

/// The process' own entry, created on first use (with the current cgroup:
/// a short-lived process is gone before the agent could look it up).
#[inline(always)]
fn process_entry(owner: &Owner) -> Option<*mut ProcessCounters> {
    if let Some(counters) = PROCESS_COUNTERS.get_ptr_mut(owner.key) {
        return Some(counters);
    }
    // SAFETY: no preconditions; 0 without cgroup v2.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let fresh = fresh_entry(cgroup_id, owner.comm.read(config()))?;
    // BPF_NOEXIST: another CPU may have created it meanwhile; then its entry
    // is used. A full map fails here, and the caller overflows.
    let _ = PROCESS_COUNTERS.insert(owner.key, fresh, u64::from(BPF_NOEXIST));
    PROCESS_COUNTERS.get_ptr_mut(owner.key)
}

/// The overflow slot of the running task's cgroup, else the unattributed one.
#[inline(always)]
fn overflow_entry() -> Option<*mut ProcessCounters> {
    // SAFETY: no preconditions; 0 without cgroup v2.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if let Some(slot) = OVERFLOW_COUNTERS.get_ptr_mut(cgroup_id) {
        return Some(slot);
    }
    if let Some(fresh) = fresh_entry(cgroup_id, [0; COMM_LEN]) {
        let _ = OVERFLOW_COUNTERS.insert(cgroup_id, fresh, u64::from(BPF_NOEXIST));
    }
    if let Some(slot) = OVERFLOW_COUNTERS.get_ptr_mut(cgroup_id) {
        return Some(slot);
    }
    count(Diagnostic::CgroupMapOverflow);
    unattributed_entry()
}

/// The slot the agent created before attaching; never absent in practice.
#[inline(always)]
fn unattributed_entry() -> Option<*mut ProcessCounters> {
    let slot = OVERFLOW_COUNTERS.get_ptr_mut(UNATTRIBUTED_CGROUP);
    if slot.is_none() {
        count(Diagnostic::LostEvent);
    }
    slot
}

/// Where an event is counted: the process' own entry, or an entry it
/// shares (its cgroup's overflow slot, the unattributed slot).
#[derive(Clone, Copy)]
enum Entry {
    Own(*mut ProcessCounters),
    Shared(*mut ProcessCounters),
}

impl Entry {
    #[inline(always)]
    fn counters(self) -> *mut ProcessCounters {
        match self {
            Self::Own(counters) | Self::Shared(counters) => counters,
        }
    }
}

/// The entry an event of `owner` is counted in (see the module docs).
#[inline(always)]
fn entry_of(owner: Option<&Owner>) -> Option<Entry> {
    match owner {
        Some(owner) => match process_entry(owner) {
            Some(entry) => Some(Entry::Own(entry)),
            None => {
                count(Diagnostic::ProcessMapOverflow);
                overflow_entry().map(Entry::Shared)
            }
        },
        None => {
            count(Diagnostic::UnownedFree);
            unattributed_entry().map(Entry::Shared)
        }
    }
}

/// One successful DONTNEED request of `owner` (the running task's process)
/// that advised `bytes`: in the owner's slot when it holds one, else in its
/// hash entry, which may then claim the slot.
#[inline(always)]
pub fn record_dontneed_call(owner: &Owner, bytes: u64) {
    if let Some(node) = node() {
        // SAFETY: pointers into this CPU's live map value.
        unsafe { add_dontneed(&raw mut (*node).dontneed_calls, &raw mut (*node).dontneed_bytes, bytes) };
    }
    let index = DontneedSlot::index(&owner.key);
    let slot = DONTNEED_SLOTS.get_ptr_mut(index);
    if let Some(slot) = slot {
        // SAFETY: a pointer into a live map value. The key is read field by
        // field while a claimant may be writing it: a half-written key
        // matches no process, and the request goes to the hash entry.
        let (tgid, start_time_ns) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*slot).key.tgid),
                core::ptr::read_volatile(&raw const (*slot).key.start_time_ns),
            )
        };
        if tgid == owner.key.tgid && start_time_ns == owner.key.start_time_ns {
            // SAFETY: pointers into a live map value.
            unsafe { add_dontneed(&raw mut (*slot).dontneed_calls, &raw mut (*slot).dontneed_bytes, bytes) };
            return;
        }
    }
    let Some(entry) = entry_of(Some(owner)) else {
        return;
    };
    let counters = entry.counters();
    // SAFETY: pointers into a live map value.
    unsafe { add_dontneed(&raw mut (*counters).dontneed_calls, &raw mut (*counters).dontneed_bytes, bytes) };
    if let (Entry::Own(own), Some(slot)) = (entry, slot) {
        claim_if_busy(index, slot, own, &owner.key);
    }
}

/// One request of `bytes` into a pair of counters of a live map value.
#[inline(always)]
fn add_dontneed(calls: *mut u64, advised: *mut u64, bytes: u64) {
    atomic::add(calls, 1);
    atomic::add(advised, bytes);
}

/// Claim slot `index` for `key` if it is free and the process' hash entry
/// has counted enough requests to be worth a slot.
#[inline(always)]
fn claim_if_busy(index: u32, slot: *mut DontneedSlot, entry: *const ProcessCounters, key: &ProcessKey) {
    // SAFETY: pointers into live map values; a racing update shows either
    // value, and either decision is safe.
    let (free, calls) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*slot).key.tgid) == 0,
            core::ptr::read_volatile(&raw const (*entry).dontneed_calls),
        )
    };
    if !free || calls < DONTNEED_SLOT_CLAIM_CALLS {
        return;
    }
    // The atomic claim: fails while another process (or one the agent has
    // not released yet) owns the index.
    if DONTNEED_SLOT_OWNERS.insert(index, key, u64::from(BPF_NOEXIST)).is_err() {
        return;
    }
    // SAFETY: a pointer into a live map value that only this claimant
    // writes now (the agent zeroed it before it released the index). The
    // tgid last: until it is written the key matches nobody.
    unsafe {
        core::ptr::write_volatile(&raw mut (*slot).key.start_time_ns, key.start_time_ns);
        core::ptr::write_volatile(&raw mut (*slot).key.tgid, key.tgid);
    }
}

/// `pages` page-table pages of `owner`'s address space (`None`: an address
/// space with no owner left) freed for `cause` at `level`.
#[inline(always)]
pub fn record_frees(owner: Option<&Owner>, cause: Cause, level: Level, pages: u64) {
    let (c, l) = (cause.index(), level.index());
    if c >= Cause::COUNT || l >= Level::COUNT {
        return;
    }
    if let Some(node) = node() {
        // SAFETY: a pointer into this CPU's live map value; indices checked.
        unsafe { atomic::add(&raw mut (*node).frees.pages[c][l], pages) };
    }
    if let Some(entry) = entry_of(owner) {
        // SAFETY: a pointer into a live map value; indices checked.
        unsafe { atomic::add(&raw mut (*entry.counters()).frees.pages[c][l], pages) };
    }
}
