//! What the kernel programs count, and how the agent names it.
//!
//! Counters are cumulative and only ever grow. They live in three places:
//! - per process, keyed by [`ProcessKey`] (tgid and start time, so a
//!   recycled pid is a new key), in `PROCESS_COUNTERS`, a plain (not LRU)
//!   hash map sized by the agent (`--max-tracked-processes`): an entry is
//!   never evicted behind the agent's back, it is removed only by the agent
//!   once it has seen the process exit and kept its final counts. A busy
//!   process' DONTNEED requests go to its slot of `DONTNEED_SLOTS` instead
//!   (found without hashing, see [`DONTNEED_SLOT_COUNT`]), which the agent
//!   reads and takes as part of the entry;
//! - per cgroup, in `OVERFLOW_COUNTERS`, keyed by cgroup v2 id: what a
//!   process could not count in its own entry because `PROCESS_COUNTERS` was
//!   full. Key [`UNATTRIBUTED_CGROUP`] (0) is created by the agent before
//!   the programs attach and always exists: it takes frees of address spaces
//!   with no owner left, and what a full `OVERFLOW_COUNTERS` could not take;
//! - per node, in `NODE_COUNTERS` (per-CPU): everything, whatever the maps
//!   above could store.
//!
//! So every event is counted exactly once per level of detail: node totals
//! are always exact, Σ processes + Σ overflow slots = node totals, and a
//! cgroup's total is exact as long as its overflow slot could be stored.

use crate::COMM_LEN;

/// Why a page-table page was freed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// PT_RECLAIM: a PTE table freed inside a DONTNEED zap.
    Reclaim = 0,
    /// munmap, mremap's old range, mmap error paths (`free_pgtables`).
    Unmap = 1,
    /// The whole mm torn down (`exit_mmap`; `mmu_gather::fullmm`).
    Exit = 2,
    /// Anything else (exec stack move, ...).
    Other = 3,
    /// A PTE table retired by collapsing its range into a PMD-mapped file or
    /// shmem THP (`pte_free_defer`, 6.5+: khugepaged, `MADV_COLLAPSE`).
    Collapse = 4,
    /// The PTE table deposited with an anonymous THP (kept to split the huge
    /// PMD later), freed when the huge PMD is zapped: DONTNEED, munmap or
    /// exit of a THP-backed range (`zap_huge_pmd`).
    Thp = 5,
}

impl Cause {
    pub const COUNT: usize = 6;
    /// Every cause, in index order.
    pub const ALL: [Self; Self::COUNT] =
        [Self::Reclaim, Self::Unmap, Self::Exit, Self::Other, Self::Collapse, Self::Thp];

    /// The `cause` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Reclaim => "reclaim",
            Self::Unmap => "unmap",
            Self::Exit => "exit",
            Self::Other => "other",
            Self::Collapse => "collapse",
            Self::Thp => "thp",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn from_index(index: usize) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index])
        } else {
            None
        }
    }
}

/// Which level of the page-table tree a freed page belonged to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Pte = 0,
    Pmd = 1,
    Pud = 2,
    P4d = 3,
    /// The architecture's free path does not tell.
    Unknown = 4,
}

impl Level {
    pub const COUNT: usize = 5;
    /// Every level, in index order.
    pub const ALL: [Self; Self::COUNT] = [Self::Pte, Self::Pmd, Self::Pud, Self::P4d, Self::Unknown];

    /// The `level` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pte => "pte",
            Self::Pmd => "pmd",
            Self::Pud => "pud",
            Self::P4d => "p4d",
            Self::Unknown => "unknown",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn from_index(index: usize) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index])
        } else {
            None
        }
    }
}

/// Page-table pages freed, by cause (outer) and level (inner).
///
/// PT_RECLAIM's count is the [`Cause::Reclaim`] row: in the fentry and
/// kprobe plans each reclaimed table is a classified free; in the tracepoint
/// plan, which cannot see frees, the DONTNEED programs measure the tables a
/// call reclaimed and add them to `[Reclaim][Pte]` (the only row that plan
/// fills). One counter, so reclaim is never counted twice.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeCounts {
    pub pages: [[u64; Level::COUNT]; Cause::COUNT],
}

impl Default for FreeCounts {
    fn default() -> Self {
        Self { pages: [[0; Level::COUNT]; Cause::COUNT] }
    }
}

impl FreeCounts {
    /// Pages freed for `cause` at `level`.
    pub const fn get(&self, cause: Cause, level: Level) -> u64 {
        self.pages[cause.index()][level.index()]
    }

    /// PTE pages reclaimed by PT_RECLAIM (every level of the reclaim row:
    /// where the architecture does not name the level, it is `unknown`).
    pub fn reclaimed(&self) -> u64 {
        let mut sum = 0u64;
        for pages in self.pages[Cause::Reclaim.index()] {
            sum = sum.wrapping_add(pages);
        }
        sum
    }

    /// `self += other`, element-wise.
    pub fn add(&mut self, other: &Self) {
        for (row, other_row) in self.pages.iter_mut().zip(other.pages.iter()) {
            for (pages, other_pages) in row.iter_mut().zip(other_row.iter()) {
                *pages = pages.wrapping_add(*other_pages);
            }
        }
    }
}

/// Identity of a process: a pid recycled by the kernel is a new key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessKey {
    /// Thread-group id (the pid userspace sees).
    pub tgid: u32,
    pub _pad: u32,
    /// `task_struct::start_boottime` of the thread-group leader: nanoseconds
    /// since boot, suspend included. `/proc/<pid>/stat` field 22 shows the
    /// same instant in clock ticks (`start_time_ns / (10^9 / CLK_TCK)`). It
    /// does not change across `execve`.
    pub start_time_ns: u64,
}

/// What the programs count for one process (value of `PROCESS_COUNTERS`),
/// or for the processes of one cgroup that found `PROCESS_COUNTERS` full
/// (value of `OVERFLOW_COUNTERS`). Updated with atomic adds: threads of a
/// process run on several CPUs at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounters {
    /// Successful `MADV_DONTNEED`/`MADV_DONTNEED_LOCKED` requests: a
    /// `madvise(2)` call, a `process_madvise(2)` call, or an io_uring
    /// `IORING_OP_MADVISE` request.
    pub dontneed_calls: u64,
    /// Bytes those requests advised.
    pub dontneed_bytes: u64,
    /// Page-table pages freed in the process' address space; PT_RECLAIM's
    /// count is [`FreeCounts::reclaimed`].
    pub frees: FreeCounts,
    /// cgroup v2 id (inode of the cgroup's directory) of the thread that
    /// created the entry, captured in the kernel because a short-lived
    /// process is gone, with its `/proc/<pid>/cgroup`, before the agent
    /// looks. 0 when unknown. In `OVERFLOW_COUNTERS`, the key.
    pub cgroup_id: u64,
    /// `comm` of the process when the entry was created (the agent refreshes
    /// the name of live processes from `/proc`). Zero in overflow slots.
    pub comm: [u8; COMM_LEN],
}

impl ProcessCounters {
    /// `self += other` for every counter (identity fields untouched).
    pub fn add_counts(&mut self, other: &Self) {
        self.dontneed_calls = self.dontneed_calls.wrapping_add(other.dontneed_calls);
        self.dontneed_bytes = self.dontneed_bytes.wrapping_add(other.dontneed_bytes);
        self.frees.add(&other.frees);
    }
}

/// Entries of `DONTNEED_SLOTS`: a direct-mapped cache of the DONTNEED
/// counts of processes that make many requests (an allocator purging 4 KiB
/// at a time), indexed by `tgid % DONTNEED_SLOT_COUNT`. A slot is found
/// without hashing, so such a request costs one array index and two atomic
/// adds instead of a hash lookup; a process whose slot is taken by another
/// uses its `PROCESS_COUNTERS` entry, as every process does for frees.
///
/// The protocol (kernel 5.10 has no compare-and-swap, so a slot is claimed
/// through a hash map insert, which is atomic):
/// - a process claims the free slot (key tgid 0) of its index once its
///   `PROCESS_COUNTERS` entry has counted [`DONTNEED_SLOT_CLAIM_CALLS`]
///   requests, by inserting its key at that index of `DONTNEED_SLOT_OWNERS`
///   with `BPF_NOEXIST` (one claimant wins), then writing its key into the
///   slot. Only the running process' own requests use the slot;
/// - requests whose key equals the slot's add there; the others (and a
///   key half written) do not match and use the hash entry;
/// - the agent counts a process' slot (while `DONTNEED_SLOT_OWNERS` names it)
///   with its hash entry. Once the process is gone (no thread left to
///   match), the agent takes its counts, zeroes the slot and only then
///   removes the owner, so a slot's counts always belong to the owner
///   named at that index.
pub const DONTNEED_SLOT_COUNT: u32 = 4096;

/// Requests a process makes in its hash entry before it claims a slot: a
/// process that purges once or twice does not take one.
pub const DONTNEED_SLOT_CLAIM_CALLS: u64 = 8;

/// Value of `DONTNEED_SLOTS` (see [`DONTNEED_SLOT_COUNT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DontneedSlot {
    /// The owner; tgid 0 while the slot is free.
    pub key: ProcessKey,
    /// Counted like `ProcessCounters::dontneed_calls` and `dontneed_bytes`,
    /// since the owner claimed the slot.
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
}

impl DontneedSlot {
    /// The slot index of a process.
    pub const fn index(key: &ProcessKey) -> u32 {
        key.tgid % DONTNEED_SLOT_COUNT
    }
}

/// Key of `OVERFLOW_COUNTERS` that the agent creates before attaching, so
/// it always exists: frees of address spaces whose owner is gone, and what
/// a full `OVERFLOW_COUNTERS` could not store under its own cgroup.
pub const UNATTRIBUTED_CGROUP: u64 = 0;

/// Node-wide counters (per-CPU array of one; each CPU's slot is updated
/// with atomic adds, because on a preemptible kernel two programs can
/// interleave on one CPU). They count everything, so they stay exact
/// whatever the per-process and per-cgroup maps could store.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    pub frees: FreeCounts,
    /// Events counted in a process' cgroup overflow slot because
    /// `PROCESS_COUNTERS` was full (or its insert failed).
    pub process_map_overflows: u64,
    /// Events counted in the [`UNATTRIBUTED_CGROUP`] slot because
    /// `OVERFLOW_COUNTERS` was full too.
    pub cgroup_map_overflows: u64,
    /// Page-table frees of an address space with no owner left (its last
    /// user was an unrelated task), counted in the unattributed slot.
    pub unowned_frees: u64,
    /// Events lost even there (the unattributed slot missing: never expected).
    pub lost_events: u64,
    /// A thread's context (DONTNEED in progress, `free_pgtables` in
    /// progress) could not be stored: `THREAD_CONTEXT` full. Frees in that
    /// call are then classified `other`.
    pub context_update_failures: u64,
    /// A context hook found its thread still marked as inside an earlier
    /// call: that call's exit was missed (kretprobe out of instances, or a
    /// program skipped by the kernel's recursion protection). The stale mark
    /// is replaced, never trusted.
    pub context_exit_misses: u64,
    /// DONTNEED calls measured through the `pgtables_bytes` drop rather than
    /// an exact page-table walk (tracepoint plan without the walk, a range
    /// too large to walk, or several iovecs): exact only for a
    /// single-threaded process.
    pub approximate_calls: u64,
    /// io_uring DONTNEED requests whose reclaim the plan could not measure
    /// (tracepoint plan on kernels whose io_uring tracepoints do not carry
    /// the request): counted here, never a silent zero.
    pub unmeasured_requests: u64,
}

impl NodeCounters {
    /// `self += other`, field by field (summing the per-CPU copies).
    pub fn add(&mut self, other: &Self) {
        let Self {
            dontneed_calls,
            dontneed_bytes,
            frees,
            process_map_overflows,
            cgroup_map_overflows,
            unowned_frees,
            lost_events,
            context_update_failures,
            context_exit_misses,
            approximate_calls,
            unmeasured_requests,
        } = other;
        self.dontneed_calls = self.dontneed_calls.wrapping_add(*dontneed_calls);
        self.dontneed_bytes = self.dontneed_bytes.wrapping_add(*dontneed_bytes);
        self.frees.add(frees);
        self.process_map_overflows = self.process_map_overflows.wrapping_add(*process_map_overflows);
        self.cgroup_map_overflows = self.cgroup_map_overflows.wrapping_add(*cgroup_map_overflows);
        self.unowned_frees = self.unowned_frees.wrapping_add(*unowned_frees);
        self.lost_events = self.lost_events.wrapping_add(*lost_events);
        self.context_update_failures = self.context_update_failures.wrapping_add(*context_update_failures);
        self.context_exit_misses = self.context_exit_misses.wrapping_add(*context_exit_misses);
        self.approximate_calls = self.approximate_calls.wrapping_add(*approximate_calls);
        self.unmeasured_requests = self.unmeasured_requests.wrapping_add(*unmeasured_requests);
    }
}

/// Default of `--max-tracked-processes`: entries of `PROCESS_COUNTERS`.
/// Each costs about 350 bytes of kernel memory, preallocated.
pub const DEFAULT_MAX_TRACKED_PROCESSES: u32 = 16384;

/// Entries of `OVERFLOW_COUNTERS` for `max_tracked_processes` processes: a
/// cgroup holds at least one process, so a quarter of the processes is
/// plenty, with a floor for small settings.
pub const fn overflow_capacity(max_tracked_processes: u32) -> u32 {
    let quarter = max_tracked_processes / 4;
    if quarter < 256 {
        256
    } else {
        quarter
    }
}
