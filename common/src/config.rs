//! Kernel facts the programs cannot learn by themselves, written by the agent
//! into a frozen global before load.

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
    /// How frees are counted: a [`FreeSource`] value.
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
    /// Byte offsets of `task_struct::tgid`, `task_struct::pid` and
    /// `task_struct::comm`.
    pub task_tgid_offset: u64,
    pub task_pid_offset: u64,
    pub task_comm_offset: u64,
    /// Byte offsets of `task_struct::group_leader` and
    /// `task_struct::start_boottime`: a process' identity is its tgid and its
    /// leader's start time (`ProcessKey`).
    pub task_group_leader_offset: u64,
    pub task_start_boottime_offset: u64,
    /// 1 when the kernel has `bpf_get_current_task_btf` (5.11+): the
    /// running task's fields are then read with plain loads through its
    /// BTF-typed pointer instead of `bpf_probe_read_kernel` calls, which is
    /// most of what counting a small DONTNEED costs. 0 keeps the helper
    /// calls (the verifier drops the branch that would call the missing
    /// helper: this field is a load-time constant).
    pub current_task_btf: u64,
    /// Byte offsets in `struct pt_regs` of a syscall's first three
    /// arguments as the saved user registers hold them when the syscall
    /// returns (x86_64 `di`, `si`, `dx`; arm64 `orig_x0`, `regs[1]`,
    /// `regs[2]`; riscv64 `orig_a0`, `a1`, `a2`: the first argument's
    /// register carries the return value by then), read through
    /// `bpf_task_pt_regs` (5.15+). With them the tracepoint plan's exit
    /// program knows a madvise call's range and advice without a context
    /// stored at entry, which is what makes an allocator's small DONTNEED
    /// cheap. `u64::MAX` (all three) where the kernel lacks the helpers or
    /// the members.
    pub syscall_arg0_offset: u64,
    pub syscall_arg1_offset: u64,
    pub syscall_arg2_offset: u64,
    /// Byte offset in `struct pt_regs` of the number of the syscall the
    /// task is in (x86_64 `orig_ax`, arm64 `syscallno`, riscv64 `a7`; read
    /// as 32 bits), and that number for a native `madvise(2)`. With them
    /// the kprobe plan tells a `do_madvise` call made by the madvise
    /// syscall itself, whose arguments are the saved registers, from
    /// io_uring's and process_madvise's: the kretprobe then counts such a
    /// request from the registers, without a context stored at entry.
    /// `u64::MAX` where the argument offsets are (no `bpf_task_pt_regs`).
    pub syscall_nr_offset: u64,
    pub madvise_syscall_nr: u64,
    /// Bit offset of `mmu_gather::fullmm` (a bitfield): set when the whole
    /// address space is torn down (exit, execve).
    pub tlb_fullmm_bit: u64,
    /// Byte offset of `vm_area_struct::vm_ops` (NULL for anonymous memory,
    /// whose THPs carry a deposited PTE table).
    pub vma_vm_ops_offset: u64,
    /// Byte offsets of `io_madvise::addr`, `::len` and `::advice` inside an
    /// io_uring request (`struct io_kiocb` starts with its per-opcode data),
    /// for the tracepoint plan's io_uring programs; `u64::MAX` when the
    /// kernel has no `struct io_madvise`.
    pub io_madvise_addr_offset: u64,
    pub io_madvise_len_offset: u64,
    pub io_madvise_advice_offset: u64,
    /// `io_madvise::len` is a `u32` on older kernels, a `u64` on newer:
    /// the mask of its width.
    pub io_madvise_len_mask: u64,
    /// Offsets of the `req` and `opcode` fields of the
    /// `io_uring:io_uring_submit_req` record and of `req` and `res` of
    /// `io_uring:io_uring_complete`, read from their tracefs `format` at
    /// start-up (these records are not a stable ABI).
    pub io_submit_req_offset: u64,
    pub io_submit_opcode_offset: u64,
    pub io_complete_req_offset: u64,
    pub io_complete_res_offset: u64,
    /// 1 when PT_RECLAIM works on this kernel (the agent's behavioural
    /// check). 0: a DONTNEED cannot reclaim a PTE table, so the tracepoint
    /// plan measures no request at all; a drop it saw would be another
    /// thread's munmap, not reclaim.
    pub pt_reclaim: u64,
    /// Non-zero only in `ptwatch trace`'s own instance of the object: send a
    /// [`crate::TraceEvent`] per DONTNEED call and per page-table free to the
    /// `TRACE_EVENTS` ring buffer. The agent leaves it 0, and the verifier,
    /// seeing a constant, drops the emission code from its programs.
    pub emit_events: u64,
    /// With `emit_events`: only events of this tgid (0: every process) ...
    pub trace_tgid: u64,
    /// ... and of tasks in this cgroup v2 id (0: every cgroup). Filtering
    /// here keeps unrelated events out of the ring buffer.
    pub trace_cgroup_id: u64,
}

/// Where page-table frees are counted ([`KernelConfig::free_source`]).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeSource {
    /// Not probed (tracepoint plan).
    None = 0,
    /// At the per-level x86 functions `___pte_free_tlb` .. `___p4d_free_tlb`
    /// that can be hooked (every kernel version; on 6.1 native x86 the tables
    /// do not go through `tlb_remove_table`).
    LevelFunctions = 1,
    /// At `tlb_remove_table` (x86 6.15+, and the generic path of the other
    /// architectures); the PMD/PUD/P4D functions, when hooked, only name the
    /// level, and a table freed without them is a PTE table.
    TlbRemoveTable = 2,
    /// Like `TlbRemoveTable`, without level hooks: level `unknown`.
    TlbRemoveTableNoLevel = 3,
}
