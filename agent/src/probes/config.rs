//! The programs' [`KernelConfig`], resolved from the running kernel.

use std::path::Path;

use ptwatch_common::KernelConfig;

use crate::kernel::btf::{BtfError, KernelBtf};

/// Offsets from BTF plus the page size and the agent's own tgid. The
/// page-table walk starts disabled (`direct_map_base` 0) until calibrated.
pub fn kernel_config(btf_path: &Path) -> Result<KernelConfig, BtfError> {
    let btf = KernelBtf::load(btf_path)?;
    Ok(KernelConfig {
        task_mm_offset: btf.member_offset("task_struct", "mm")?,
        mm_pgtables_bytes_offset: btf.member_offset("mm_struct", "pgtables_bytes")?,
        mm_pgd_offset: btf.member_offset("mm_struct", "pgd")?,
        page_size: page_size(),
        agent_tgid: u64::from(std::process::id()),
        direct_map_base: 0,
        pgtable_levels: 4,
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}
