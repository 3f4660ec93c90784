//! Access to kernel state through offsets resolved by the agent from BTF.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel};
use ptwatch_common::{KernelConfig, ProcessKey};

/// Filled by the agent before load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static PTWATCH_KERNEL_CONFIG: KernelConfig = KernelConfig {
    task_mm_offset: 0,
    mm_pgtables_bytes_offset: 0,
    mm_pgd_offset: 0,
    page_size: 4096,
    agent_tgid: 0,
    direct_map_base: 0,
    pgtable_levels: 4,
    free_source: 0,
    mm_owner_offset: u64::MAX,
    tlb_mm_offset: 0,
    task_active_mm_offset: 0,
    task_in_execve_bit: u64::MAX,
    task_tgid_offset: 0,
    task_comm_offset: 0,
    task_group_leader_offset: 0,
    task_start_boottime_offset: 0,
    tlb_fullmm_bit: 0,
    vma_vm_ops_offset: 0,
    io_madvise_addr_offset: u64::MAX,
    io_madvise_len_offset: u64::MAX,
    io_madvise_advice_offset: u64::MAX,
    io_madvise_len_mask: u64::MAX,
    io_submit_req_offset: 0,
    io_submit_opcode_offset: 0,
    io_complete_req_offset: 0,
    io_complete_res_offset: 0,
    emit_events: 0,
    trace_tgid: 0,
    trace_cgroup_id: 0,
};

#[inline(always)]
pub fn config() -> KernelConfig {
    // SAFETY: a plain read of a global; volatile so the compiler does not fold
    // the initialiser into the code (the loader rewrites it).
    unsafe { core::ptr::read_volatile(&PTWATCH_KERNEL_CONFIG) }
}

/// The current thread, split into the ids the maps use.
#[derive(Clone, Copy)]
pub struct CurrentTask {
    pub tgid: u32,
    pub tid: u32,
}

impl CurrentTask {
    #[inline(always)]
    pub fn get() -> Self {
        let pid_tgid = bpf_get_current_pid_tgid();
        Self { tgid: (pid_tgid >> 32) as u32, tid: pid_tgid as u32 }
    }

    /// The running task, or `None` for the agent's own threads.
    #[inline(always)]
    pub fn observed(config: &KernelConfig) -> Option<Self> {
        let task = Self::get();
        (u64::from(task.tgid) != config.agent_tgid).then_some(task)
    }

    /// The identity of the running task's process.
    #[inline(always)]
    pub fn process_key(self, config: &KernelConfig) -> ProcessKey {
        ProcessKey { tgid: self.tgid, _pad: 0, start_time_ns: leader_start_time(config, current_task()) }
    }
}

/// The running `task_struct`.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: returns the running task_struct's address; no preconditions.
    unsafe { bpf_get_current_task() }
}

/// Read a `T` at `base + offset` of kernel memory.
#[inline(always)]
pub fn read_kernel<T>(base: u64, offset: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel((base.wrapping_add(offset)) as *const T).ok() }
}

/// `current->mm`, or `None` for kernel threads.
#[inline(always)]
pub fn current_mm(config: &KernelConfig) -> Option<u64> {
    let mm: u64 = read_kernel(current_task(), config.task_mm_offset)?;
    (mm != 0).then_some(mm)
}

/// `mm->pgtables_bytes`: the page-table memory of an address space, the
/// number behind `VmPTE` in `/proc/<pid>/status`.
#[inline(always)]
pub fn pgtables_bytes(config: &KernelConfig, mm: u64) -> Option<u64> {
    let bytes: i64 = read_kernel(mm, config.mm_pgtables_bytes_offset)?;
    u64::try_from(bytes).ok()
}

/// `task->group_leader->start_boottime`: the start time that, with the
/// tgid, identifies a process (0 if unreadable: the key then still names
/// the tgid).
#[inline(always)]
pub fn leader_start_time(config: &KernelConfig, task: u64) -> u64 {
    read_kernel::<u64>(task, config.task_group_leader_offset)
        .and_then(|leader| read_kernel::<u64>(leader, config.task_start_boottime_offset))
        .unwrap_or(0)
}
