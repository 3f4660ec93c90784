//! The programs' [`KernelConfig`], resolved from the running kernel.

use ptwatch_common::{FreeSource, KernelConfig};

use crate::kernel::btf::{BtfError, KernelBtf};

/// Offsets from BTF plus the page size and the agent's own tgid. The
/// page-table walk starts disabled (`direct_map_base` 0) until calibrated,
/// and page-table frees unprobed until a plan attaches them.
pub fn kernel_config(btf: &KernelBtf) -> Result<KernelConfig, BtfError> {
    Ok(KernelConfig {
        task_mm_offset: btf.member_offset("task_struct", "mm")?,
        mm_pgtables_bytes_offset: btf.member_offset("mm_struct", "pgtables_bytes")?,
        mm_pgd_offset: btf.member_offset("mm_struct", "pgd")?,
        page_size: page_size(),
        agent_tgid: u64::from(std::process::id()),
        direct_map_base: 0,
        pgtable_levels: 4,
        reclaim_from_frees: 0,
        free_source: FreeSource::None as u64,
        // Without CONFIG_MEMCG an mm has no owner: frees are then attributed
        // to the running task.
        mm_owner_offset: btf.optional_member_offset("mm_struct", "owner")?.unwrap_or(u64::MAX),
        tlb_mm_offset: btf.member_offset("mmu_gather", "mm")?,
        task_active_mm_offset: btf.member_offset("task_struct", "active_mm")?,
        task_in_execve_bit: btf.member_bit_offset("task_struct", "in_execve").unwrap_or(u64::MAX),
        task_tgid_offset: btf.member_offset("task_struct", "tgid")?,
        task_comm_offset: btf.member_offset("task_struct", "comm")?,
        tlb_fullmm_bit: btf.member_bit_offset("mmu_gather", "fullmm")?,
        vma_vm_ops_offset: btf.member_offset("vm_area_struct", "vm_ops")?,
        // Set only by `ptwatch trace` (see `LoadOptions`).
        emit_events: 0,
        trace_tgid: 0,
        trace_cgroup_id: 0,
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}
