//! The programs' [`KernelConfig`], resolved from the running kernel.

use std::path::Path;

use ptwatch_common::{FreeSource, KernelConfig};

use crate::kernel::{
    btf::{BtfError, KernelBtf},
    tracefs,
};

/// Offsets from BTF (and tracefs, for the io_uring records) plus the page
/// size, the agent's own tgid and whether PT_RECLAIM works
/// (`support::pt_reclaim_works`). The page-table walk starts disabled
/// (`direct_map_base` 0) until calibrated, and page-table frees unprobed
/// until a plan attaches them.
pub fn kernel_config(btf: &KernelBtf, tracefs_root: Option<&Path>, pt_reclaim: bool) -> Result<KernelConfig, BtfError> {
    let io_madvise = IoMadvise::resolve(btf)?;
    let current_task_btf = btf.has_enum_value("bpf_func_id", "BPF_FUNC_get_current_task_btf");
    let [syscall_arg0_offset, syscall_arg1_offset, syscall_arg2_offset] =
        syscall_arg_offsets(btf, current_task_btf)?.unwrap_or([u64::MAX; 3]);
    let (syscall_nr_offset, madvise_syscall_nr) = match syscall_arg0_offset {
        u64::MAX => None,
        _ => syscall_nr_offset(btf)?,
    }
    .unwrap_or((u64::MAX, u64::MAX));
    let io_field = |event: &str, field: &str| {
        tracefs_root.and_then(|root| tracefs::field_offset(root, "io_uring", event, field)).unwrap_or(u64::MAX)
    };
    Ok(KernelConfig {
        task_mm_offset: btf.member_offset("task_struct", "mm")?,
        mm_pgtables_bytes_offset: btf.member_offset("mm_struct", "pgtables_bytes")?,
        mm_pgd_offset: btf.member_offset("mm_struct", "pgd")?,
        page_size: page_size(),
        agent_tgid: u64::from(std::process::id()),
        direct_map_base: 0,
        pgtable_levels: 4,
        free_source: FreeSource::None as u64,
        // Without CONFIG_MEMCG an mm has no owner: frees are then attributed
        // to the running task.
        mm_owner_offset: btf.optional_member_offset("mm_struct", "owner")?.unwrap_or(u64::MAX),
        tlb_mm_offset: btf.member_offset("mmu_gather", "mm")?,
        task_active_mm_offset: btf.member_offset("task_struct", "active_mm")?,
        task_in_execve_bit: btf.member_bit_offset("task_struct", "in_execve").unwrap_or(u64::MAX),
        task_tgid_offset: btf.member_offset("task_struct", "tgid")?,
        task_pid_offset: btf.member_offset("task_struct", "pid")?,
        task_comm_offset: btf.member_offset("task_struct", "comm")?,
        task_group_leader_offset: btf.member_offset("task_struct", "group_leader")?,
        task_start_boottime_offset: btf.member_offset("task_struct", "start_boottime")?,
        current_task_btf: u64::from(current_task_btf),
        syscall_arg0_offset,
        syscall_arg1_offset,
        syscall_arg2_offset,
        syscall_nr_offset,
        madvise_syscall_nr,
        tlb_fullmm_bit: btf.member_bit_offset("mmu_gather", "fullmm")?,
        vma_vm_ops_offset: btf.member_offset("vm_area_struct", "vm_ops")?,
        io_madvise_addr_offset: io_madvise.addr,
        io_madvise_len_offset: io_madvise.len,
        io_madvise_advice_offset: io_madvise.advice,
        io_madvise_len_mask: io_madvise.len_mask,
        io_submit_req_offset: io_field("io_uring_submit_req", "req"),
        io_submit_opcode_offset: io_field("io_uring_submit_req", "opcode"),
        io_complete_req_offset: io_field("io_uring_complete", "req"),
        io_complete_res_offset: io_field("io_uring_complete", "res"),
        pt_reclaim: u64::from(pt_reclaim),
        // Set only by `ptwatch trace` (see `LoadOptions`).
        emit_events: 0,
        trace_tgid: 0,
        trace_cgroup_id: 0,
    })
}

/// Where `struct pt_regs` holds a syscall's first three arguments when the
/// syscall returns (see `KernelConfig::syscall_arg0_offset`): `None` where
/// the programs cannot read them (no `bpf_task_pt_regs`, 5.15+, or no
/// `bpf_get_current_task_btf`), or the kernel's BTF lacks the members.
fn syscall_arg_offsets(btf: &KernelBtf, current_task_btf: bool) -> Result<Option<[u64; 3]>, BtfError> {
    if !current_task_btf || !btf.has_enum_value("bpf_func_id", "BPF_FUNC_task_pt_regs") {
        return Ok(None);
    }
    let member = |name: &str| btf.optional_member_offset("pt_regs", name);
    // The first argument's register takes the return value on arm64 and
    // riscv64: its value at entry is kept in `orig_*`. x86_64 returns in
    // `ax` and leaves the argument registers as they were.
    #[cfg(target_arch = "x86_64")]
    let offsets = [member("di")?, member("si")?, member("dx")?];
    #[cfg(target_arch = "aarch64")]
    let offsets = {
        let regs = member("regs")?;
        [member("orig_x0")?, regs.map(|regs| regs + 8), regs.map(|regs| regs + 16)]
    };
    #[cfg(target_arch = "riscv64")]
    let offsets = [member("orig_a0")?, member("a1")?, member("a2")?];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
    let offsets: [Option<u64>; 3] = [None; 3];
    Ok(match offsets {
        [Some(first), Some(second), Some(third)] => Some([first, second, third]),
        _ => None,
    })
}

/// Where `struct pt_regs` keeps the number of the syscall in progress, and
/// the native `madvise(2)`'s number (see
/// `KernelConfig::syscall_nr_offset`). A 32-bit program's madvise has
/// another number on x86_64 (ia32 219, x32 28 with bit 30) and arm64
/// (AArch32 220), so it is not taken for the native one; riscv64's RV32
/// shares number and registers.
fn syscall_nr_offset(btf: &KernelBtf) -> Result<Option<(u64, u64)>, BtfError> {
    let member = |name: &str| btf.optional_member_offset("pt_regs", name);
    #[cfg(target_arch = "x86_64")]
    let found = member("orig_ax")?.map(|offset| (offset, 28));
    // asm-generic/unistd.h
    #[cfg(target_arch = "aarch64")]
    let found = member("syscallno")?.map(|offset| (offset, 233));
    #[cfg(target_arch = "riscv64")]
    let found = member("a7")?.map(|offset| (offset, 233));
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
    let found = {
        let _ = member;
        None
    };
    Ok(found)
}

/// Where an io_uring madvise request keeps its range and advice: `struct
/// io_madvise` at the start of the request (`struct io_kiocb` begins with
/// the union of per-opcode data on every kernel with io_uring).
struct IoMadvise {
    addr: u64,
    len: u64,
    advice: u64,
    len_mask: u64,
}

impl IoMadvise {
    fn resolve(btf: &KernelBtf) -> Result<Self, BtfError> {
        let absent = Self { addr: u64::MAX, len: u64::MAX, advice: u64::MAX, len_mask: 0 };
        let (Some(addr), Some(len), Some(advice)) = (
            btf.optional_member_offset("io_madvise", "addr")?,
            btf.optional_member_offset("io_madvise", "len")?,
            btf.optional_member_offset("io_madvise", "advice")?,
        ) else {
            return Ok(absent);
        };
        // The request data must sit at the start of the request.
        if btf.optional_member_offset("io_kiocb", "file")? != Some(0) {
            return Ok(absent);
        }
        let len_mask = match btf.member_size("io_madvise", "len")? {
            4 => u64::from(u32::MAX),
            _ => u64::MAX,
        };
        Ok(Self { addr, len, advice, len_mask })
    }

    /// Whether the tracepoint plan can read io_uring madvise requests.
    pub fn readable(config: &KernelConfig) -> bool {
        config.io_madvise_advice_offset != u64::MAX
            && config.io_submit_req_offset != u64::MAX
            && config.io_submit_opcode_offset != u64::MAX
            && config.io_complete_req_offset != u64::MAX
            && config.io_complete_res_offset != u64::MAX
    }
}

/// Whether the tracepoint plan can measure io_uring DONTNEED requests with
/// this configuration (`struct io_madvise` in BTF, and the io_uring
/// tracepoints carrying the request).
pub fn io_uring_readable(config: &KernelConfig) -> bool {
    IoMadvise::readable(config)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;
    use crate::kernel::btf::VMLINUX_BTF;

    #[test]
    fn this_kernel_resolves_every_offset_and_io_uring() {
        crate::kernel::support::ensure_tracefs().unwrap();
        let btf = KernelBtf::load(Path::new(VMLINUX_BTF)).unwrap();
        let config = kernel_config(&btf, Some(Path::new("/sys/kernel/tracing")), true).unwrap();
        assert_eq!(config.tlb_mm_offset, 0);
        assert!(config.task_start_boottime_offset > 0 && config.task_group_leader_offset > 0);
        // 6.18: struct io_madvise { file; u64 addr; u64 len; u32 advice; }.
        assert_eq!((config.io_madvise_addr_offset, config.io_madvise_len_offset), (8, 16));
        assert_eq!(config.io_madvise_advice_offset, 24);
        assert_eq!(config.io_madvise_len_mask, u64::MAX);
        assert!(io_uring_readable(&config));
        assert_eq!((config.io_submit_req_offset, config.io_complete_req_offset), (16, 16));
        // x86_64 pt_regs: di, si, dx (arch/x86/include/asm/ptrace.h).
        let args = [config.syscall_arg0_offset, config.syscall_arg1_offset, config.syscall_arg2_offset];
        assert_eq!(args, [112, 104, 96]);
        // orig_ax; __NR_madvise (arch/x86/entry/syscalls/syscall_64.tbl).
        assert_eq!((config.syscall_nr_offset, config.madvise_syscall_nr), (120, 28));
    }
}
