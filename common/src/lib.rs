//! Types that cross the kernel/userspace boundary.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the eBPF
//! programs (built for `bpfel-unknown-none`) and the agent (built for the host)
//! agree on every byte. Flags are `u32`/`u64`, never `bool`: a `bool` would
//! leave padding whose contents the verifier cannot reason about.
#![no_std]

/// `MADV_DONTNEED` from `<linux/mman.h>`: zap the range; since 6.14 the zap
/// may free PTE tables that became empty (PT_RECLAIM).
pub const MADV_DONTNEED: u64 = 4;
/// `MADV_DONTNEED_LOCKED`: like `MADV_DONTNEED`, also on mlocked ranges.
pub const MADV_DONTNEED_LOCKED: u64 = 24;

/// Length of `task_struct::comm`.
pub const COMM_LEN: usize = 16;

/// Upper bound of processes tracked at once in the kernel maps. The maps are
/// LRU maps, so a busier node evicts the least recently active processes
/// instead of failing updates; the node totals are kept separately and stay
/// exact.
pub const MAX_TRACKED_PROCESSES: u32 = 16384;
/// Upper bound of threads that can be inside a DONTNEED call at once.
pub const MAX_INFLIGHT_CALLS: u32 = 16384;

/// Names of the maps and programs in the eBPF object; the agent looks them up
/// by these names, so both sides use the constants.
pub mod names {
    pub const PROCESS_COUNTERS: &str = "PROCESS_COUNTERS";
    pub const NODE_COUNTERS: &str = "NODE_COUNTERS";
    pub const INFLIGHT: &str = "INFLIGHT";
    pub const AGENT_REQUEST: &str = "AGENT_REQUEST";
    pub const PAGETABLE_FREES: &str = "PAGETABLE_FREES";
    pub const NODE_FREES: &str = "NODE_FREES";
    /// Global (`.rodata`) holding the [`super::KernelConfig`].
    pub const KERNEL_CONFIG: &str = "PTWATCH_KERNEL_CONFIG";
    /// Ring buffer of [`super::TraceEvent`]s and its per-CPU count of events
    /// that did not fit (`ptwatch trace`).
    pub const TRACE_EVENTS: &str = "TRACE_EVENTS";
    pub const TRACE_LOST: &str = "TRACE_LOST";

    /// The DONTNEED programs, `(with page-table walk, without)`, by
    /// tracepoint.
    pub const MADVISE_PROGRAMS: [(&str, &str, &str); 4] = [
        ("sys_enter_madvise", "madvise_enter_walk", "madvise_enter_plain"),
        ("sys_exit_madvise", "madvise_exit_walk", "madvise_exit_plain"),
        ("sys_enter_process_madvise", "process_madvise_enter_walk", "process_madvise_enter_plain"),
        ("sys_exit_process_madvise", "process_madvise_exit_walk", "process_madvise_exit_plain"),
    ];
    pub const PROG_AGENT_REQUEST: &str = "agent_request";
    pub const PROG_WALK_SELF_TEST: &str = "walk_self_test";
}

/// Kernel functions the fentry and kprobe plans hook, with the names of the
/// program of each flavour. One table for the kernel side (which defines the
/// programs through a macro) and the agent (which plans and attaches them).
pub mod hooks {
    /// One hooked kernel function.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Hook {
        pub function: &'static str,
        /// Program names: fentry/fexit flavour and kprobe/kretprobe flavour.
        pub fentry: &'static str,
        pub kprobe: &'static str,
        /// Attached at return (fexit/kretprobe) rather than entry.
        pub at_return: bool,
    }

    pub const TLB_REMOVE_TABLE: Hook = Hook {
        function: "tlb_remove_table",
        fentry: "tlb_remove_table_fentry",
        kprobe: "tlb_remove_table_kprobe",
        at_return: false,
    };
    pub const FREE_PGTABLES_ENTRY: Hook = Hook {
        function: "free_pgtables",
        fentry: "free_pgtables_fentry",
        kprobe: "free_pgtables_kprobe",
        at_return: false,
    };
    pub const FREE_PGTABLES_EXIT: Hook = Hook {
        function: "free_pgtables",
        fentry: "free_pgtables_fexit",
        kprobe: "free_pgtables_kretprobe",
        at_return: true,
    };
    pub const PTE_FREE_TLB: Hook = Hook {
        function: "___pte_free_tlb",
        fentry: "pte_free_tlb_fentry",
        kprobe: "pte_free_tlb_kprobe",
        at_return: false,
    };
    pub const PMD_FREE_TLB: Hook = Hook {
        function: "___pmd_free_tlb",
        fentry: "pmd_free_tlb_fentry",
        kprobe: "pmd_free_tlb_kprobe",
        at_return: false,
    };
    pub const PUD_FREE_TLB: Hook = Hook {
        function: "___pud_free_tlb",
        fentry: "pud_free_tlb_fentry",
        kprobe: "pud_free_tlb_kprobe",
        at_return: false,
    };
    pub const P4D_FREE_TLB: Hook = Hook {
        function: "___p4d_free_tlb",
        fentry: "p4d_free_tlb_fentry",
        kprobe: "p4d_free_tlb_kprobe",
        at_return: false,
    };

    pub const PTE_FREE_DEFER: Hook = Hook {
        function: "pte_free_defer",
        fentry: "pte_free_defer_fentry",
        kprobe: "pte_free_defer_kprobe",
        at_return: false,
    };
    pub const ZAP_HUGE_PMD: Hook = Hook {
        function: "zap_huge_pmd",
        fentry: "zap_huge_pmd_fentry",
        kprobe: "zap_huge_pmd_kprobe",
        at_return: false,
    };

    /// The per-level functions, in [`super::level`] order.
    pub const LEVEL_FUNCTIONS: [Hook; 4] = [PTE_FREE_TLB, PMD_FREE_TLB, PUD_FREE_TLB, P4D_FREE_TLB];
    /// Context hooks every free plan needs, to tell `unmap` from the rest.
    pub const CONTEXT: [Hook; 2] = [FREE_PGTABLES_ENTRY, FREE_PGTABLES_EXIT];
    /// Page-table frees outside the mmu_gather, each with its own cause,
    /// hooked when the kernel has the function: `collapse` (6.5+) and `thp`.
    pub const OUTSIDE_MMU_GATHER: [Hook; 2] = [PTE_FREE_DEFER, ZAP_HUGE_PMD];
}

/// Kernel facts the programs need but cannot learn by themselves: Rust eBPF
/// has no CO-RE field relocations, so the agent resolves struct member
/// offsets from the running kernel's BTF at start-up and writes them into a
/// read-only global before the programs are loaded. A frozen global is a
/// plain load for the programs (no map lookup per event), and the verifier
/// sees the values as constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// Byte offset of `task_struct::mm`.
    pub task_mm_offset: u64,
    /// Byte offset of `mm_struct::pgtables_bytes` (an `atomic_long_t`).
    pub mm_pgtables_bytes_offset: u64,
    /// Byte offset of `mm_struct::pgd`.
    pub mm_pgd_offset: u64,
    /// Page size in bytes (a PTE table occupies one page).
    pub page_size: u64,
    /// tgid of the agent itself: its own activity is never counted.
    pub agent_tgid: u64,
    /// Kernel virtual address of physical address 0 in the direct map
    /// (x86_64 `page_offset_base`, randomised at boot). 0 disables the
    /// page-table walk: reclaim is then measured through `pgtables_bytes`.
    pub direct_map_base: u64,
    /// Levels of the page-table tree: 4 or 5 (x86_64 LA57).
    pub pgtable_levels: u64,
    /// Non-zero when page-table frees are probed (fentry or kprobe plans):
    /// reclaim is then counted from the frees classified as `reclaim`, and
    /// the madvise programs only keep the DONTNEED context and call counts.
    pub reclaim_from_frees: u64,
    /// How frees are counted (see [`free_source`]).
    pub free_source: u64,
    /// Byte offset of `mm_struct::owner` (CONFIG_MEMCG), or `u64::MAX` when
    /// the kernel has none: frees are then attributed to the running task.
    pub mm_owner_offset: u64,
    /// Byte offset of `mmu_gather::mm`.
    pub tlb_mm_offset: u64,
    /// Byte offset of `task_struct::active_mm`: an exiting task keeps its
    /// mm there after `exit_mm()` cleared `mm` and the mm's owner.
    pub task_active_mm_offset: u64,
    /// Bit offset of the `task_struct::in_execve` bitfield (`u64::MAX` if
    /// absent): a task replacing its mm in execve owns the old one.
    pub task_in_execve_bit: u64,
    /// Byte offsets of `task_struct::tgid` and `task_struct::comm`.
    pub task_tgid_offset: u64,
    pub task_comm_offset: u64,
    /// Bit offset of `mmu_gather::fullmm` (a bitfield): set when the whole
    /// address space is torn down (exit, execve).
    pub tlb_fullmm_bit: u64,
    /// Byte offset of `vm_area_struct::vm_ops` (NULL for anonymous memory,
    /// whose THPs carry a deposited PTE table).
    pub vma_vm_ops_offset: u64,
    /// Non-zero only in `ptwatch trace`'s own instance of the object: send a
    /// [`TraceEvent`] per DONTNEED call and per page-table free to the
    /// `TRACE_EVENTS` ring buffer. The agent leaves it 0, and the verifier,
    /// seeing a constant, drops the emission code from its programs.
    pub emit_events: u64,
    /// With `emit_events`: only events of this tgid (0: every process) ...
    pub trace_tgid: u64,
    /// ... and of tasks in this cgroup v2 id (0: every cgroup). Filtering
    /// here keeps unrelated events out of the ring buffer.
    pub trace_cgroup_id: u64,
}

/// Where page-table frees are counted.
pub mod free_source {
    /// Not probed (tracepoint plan).
    pub const NONE: u64 = 0;
    /// At the per-level x86 functions `___pte_free_tlb` .. `___p4d_free_tlb`
    /// that can be hooked (every kernel version; on 6.1 native x86 the tables
    /// do not go through `tlb_remove_table`).
    pub const LEVEL_FUNCTIONS: u64 = 1;
    /// At `tlb_remove_table` (x86 6.15+, and the generic path of the other
    /// architectures); the PMD/PUD/P4D functions, when hooked, only name the
    /// level, and a table freed without them is a PTE table.
    pub const TLB_REMOVE_TABLE: u64 = 2;
    /// Like `TLB_REMOVE_TABLE`, without level hooks: level `unknown`.
    pub const TLB_REMOVE_TABLE_NO_LEVEL: u64 = 3;
}

/// Why a page-table page was freed.
pub mod cause {
    /// PT_RECLAIM: a PTE table freed inside a DONTNEED zap.
    pub const RECLAIM: u32 = 0;
    /// munmap, mremap's old range, mmap error paths (`free_pgtables`).
    pub const UNMAP: u32 = 1;
    /// The whole mm torn down (`exit_mmap`; `mmu_gather::fullmm`).
    pub const EXIT: u32 = 2;
    /// Anything else (exec stack move, ...).
    pub const OTHER: u32 = 3;
    /// A PTE table retired by collapsing its range into a PMD-mapped file
    /// or shmem THP (`pte_free_defer`, 6.5+: khugepaged, `MADV_COLLAPSE`).
    pub const COLLAPSE: u32 = 4;
    /// The PTE table deposited with an anonymous THP (kept to split the
    /// huge PMD later), freed when the huge PMD is zapped: DONTNEED, munmap
    /// or exit of a THP-backed range (`zap_huge_pmd`).
    pub const THP: u32 = 5;
    pub const COUNT: usize = 6;
    pub const NAMES: [&str; COUNT] = ["reclaim", "unmap", "exit", "other", "collapse", "thp"];
}

/// Which level of the page-table tree a freed page belonged to.
pub mod level {
    pub const PTE: u32 = 0;
    pub const PMD: u32 = 1;
    pub const PUD: u32 = 2;
    pub const P4D: u32 = 3;
    /// The architecture's free path does not tell (e.g. arm64).
    pub const UNKNOWN: u32 = 4;
    pub const COUNT: usize = 5;
    pub const NAMES: [&str; COUNT] = ["pte", "pmd", "pud", "p4d", "unknown"];
}

/// What a [`TraceEvent`] reports.
pub mod event_kind {
    /// A `MADV_DONTNEED`/`MADV_DONTNEED_LOCKED` call finished (madvise or
    /// process_madvise): its range, and the PTE tables it reclaimed.
    pub const DONTNEED: u32 = 0;
    /// One page-table page freed (fentry and kprobe plans only).
    pub const FREE: u32 = 1;
    pub const COUNT: usize = 2;
    pub const NAMES: [&str; COUNT] = ["dontneed", "free"];
}

/// One event of `ptwatch trace`, sent through the `TRACE_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub time_ns: u64,
    /// Range of a DONTNEED call; `len` 0 when unknown (frees, and
    /// process_madvise with several iovecs).
    pub start: u64,
    pub len: u64,
    /// Bytes a DONTNEED call advised (0 for frees).
    pub bytes: u64,
    /// Page-table pages: reclaimed by the call, or 1 for a free.
    pub pages: u64,
    /// cgroup v2 id of the running task (0 without cgroup v2).
    pub cgroup_id: u64,
    /// Process the pages belong to (0: a free whose mm has no owner left)
    /// and the running thread.
    pub tgid: u32,
    pub tid: u32,
    /// [`event_kind`], [`cause`] and [`level`] values.
    pub kind: u32,
    pub cause: u32,
    pub level: u32,
    pub _pad: u32,
    /// `comm` of the process (the mm's owner for frees).
    pub comm: [u8; COMM_LEN],
}

/// Key of the per-process page-table free counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FreeKey {
    /// tgid owning the mm the table belonged to.
    pub tgid: u32,
    /// [`cause`] value.
    pub cause: u32,
    /// [`level`] value.
    pub level: u32,
    pub _pad: u32,
}

/// Value of the per-process page-table free counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreeCounters {
    pub pages: u64,
    /// `comm` of the mm's owner when the entry was created.
    pub comm: [u8; COMM_LEN],
}

/// Node-wide page-table frees by cause and level (per-CPU array of one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeFrees {
    pub pages: [[u64; level::COUNT]; cause::COUNT],
}

impl Default for NodeFrees {
    fn default() -> Self {
        Self { pages: [[0; level::COUNT]; cause::COUNT] }
    }
}

/// Largest number of steps of one page-table walk: each step covers a
/// populated 1 GiB region or skips an empty 512 GiB block, so this bounds the
/// run time of a DONTNEED over a huge, densely mapped range (4 TiB). A range
/// beyond it is measured through `pgtables_bytes` instead and counted in
/// [`NodeCounters::approximate_calls`].
pub const MAX_WALK_REGIONS: u32 = 4096;

/// What [`AgentRequest::op`] asks the `agent_request` program to do.
pub mod request {
    /// Nothing pending.
    pub const IDLE: u64 = 0;
    /// Find the direct-map base: for `count` candidates `args[3] + i *
    /// args[4]`, read 16 bytes at candidate + `args[0]` (a physical address)
    /// and compare with `args[1..3]`; `result` = matching candidate or 0.
    pub const FIND_DIRECT_MAP: u64 = 1;
    /// Count PTE tables under `[args[0], args[0] + args[1])` of the agent's
    /// own mm with the same walk the madvise programs use; `result` = tables,
    /// `status` = 1 if the walk covered the whole range.
    pub const COUNT_PTE_TABLES: u64 = 2;
    /// First present entry of the agent's top-level page table at or after
    /// index `args[0]`: where the kernel's direct map starts (it is the
    /// lowest randomised kernel region). `result` = index, `status` = 1 if
    /// one was found.
    pub const FIRST_KERNEL_SLOT: u64 = 3;
}

/// A request from the agent to the kernel side, answered synchronously: the
/// agent fills it, makes the trigger syscall, and reads the answer. Used only
/// at start-up (calibration and self-test).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentRequest {
    pub op: u64,
    pub args: [u64; 6],
    pub result: u64,
    pub status: u64,
}

/// Per-process counters, keyed by tgid.
///
/// Updated with atomic adds because threads of one process run on several
/// CPUs at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounters {
    /// PTE page-table pages freed by PT_RECLAIM in this process' mm.
    pub pte_pages_reclaimed: u64,
    /// Successful `MADV_DONTNEED`/`MADV_DONTNEED_LOCKED` calls.
    pub dontneed_calls: u64,
    /// Bytes covered by those calls.
    pub dontneed_bytes: u64,
    /// `comm` of the thread that first touched this entry.
    pub comm: [u8; COMM_LEN],
    /// cgroup v2 id (the inode of the cgroup's directory in the v2 tree) of
    /// the thread that created this entry. Captured in the kernel because a
    /// short-lived process is gone, with its `/proc/<pid>/cgroup`, before
    /// the agent's next harvest. 0 when unknown. Placed after `comm` (24 +
    /// 16 bytes) so it is 8-byte aligned without padding.
    pub cgroup_id: u64,
}

/// Node-wide counters (single-entry array). They are never reset, so they
/// keep counting processes that exited or were evicted from the LRU maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub pte_pages_reclaimed: u64,
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    /// Updates of a per-process map that failed (map full and not LRU, or
    /// allocation failure). Never silent: exported as a metric.
    pub process_map_update_failures: u64,
    /// DONTNEED calls whose in-flight entry could not be stored.
    pub inflight_update_failures: u64,
    /// DONTNEED calls measured through the `pgtables_bytes` drop rather than
    /// an exact page-table walk (walk unavailable, range too large, or
    /// several iovecs): exact for single-threaded processes only.
    pub approximate_calls: u64,
    /// Page-table frees whose per-process entry could not be stored.
    pub free_map_update_failures: u64,
}

/// A DONTNEED call in progress on one thread, keyed by thread id.
///
/// Reclaim is measured per call: PTE tables present under the range's fully
/// covered 2 MiB spans at entry minus those present at exit. Other threads
/// faulting or zapping elsewhere in the same mm cannot disturb that count
/// (they do disturb `mm->pgtables_bytes`, which is the fallback).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightCall {
    /// Range the caller asked for.
    pub start: u64,
    pub len: u64,
    /// PTE tables under the range at entry, valid if `walked` is 1.
    pub tables_at_entry: u64,
    pub walked: u64,
    /// `mm->pgtables_bytes` at entry, for the fallback.
    pub pgtables_bytes_at_entry: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and integer
    // arrays, with no implicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelConfig {}
    unsafe impl aya::Pod for super::ProcessCounters {}
    unsafe impl aya::Pod for super::NodeCounters {}
    unsafe impl aya::Pod for super::InflightCall {}
    unsafe impl aya::Pod for super::AgentRequest {}
    unsafe impl aya::Pod for super::FreeKey {}
    unsafe impl aya::Pod for super::FreeCounters {}
    unsafe impl aya::Pod for super::NodeFrees {}
    unsafe impl aya::Pod for super::TraceEvent {}
}
