//! Access to kernel state through offsets resolved by the agent from BTF.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel};
use ptwatch_common::KernelConfig;

/// Filled by the agent before load (`EbpfLoader::set_global`, read-only).
#[unsafe(no_mangle)]
static PTWATCH_KERNEL_CONFIG: KernelConfig = KernelConfig {
    task_mm_offset: 0,
    mm_pgtables_bytes_offset: 0,
    page_size: 4096,
    agent_tgid: 0,
};

#[inline(always)]
pub fn config() -> KernelConfig {
    // SAFETY: a plain read of a global; volatile so the compiler does not fold
    // the zero initialiser into the code (the loader rewrites it).
    unsafe { core::ptr::read_volatile(&PTWATCH_KERNEL_CONFIG) }
}

/// The current thread, split into the ids the maps use.
#[derive(Clone, Copy)]
pub struct CurrentTask {
    pub tgid: u32,
    pub tid: u32,
}

impl CurrentTask {
    /// The running task, or `None` for the agent's own threads.
    #[inline(always)]
    pub fn get(config: &KernelConfig) -> Option<Self> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        if u64::from(tgid) == config.agent_tgid {
            return None;
        }
        Some(Self {
            tgid,
            tid: pid_tgid as u32,
        })
    }
}

/// `current->mm->pgtables_bytes`: the page-table memory of the running task's
/// address space, the number behind `VmPTE` in `/proc/<pid>/status`.
///
/// `None` for kernel threads (no mm) or if a read faults.
#[inline(always)]
pub fn current_pgtables_bytes(config: &KernelConfig) -> Option<u64> {
    // SAFETY: bpf_get_current_task returns the running task_struct; the reads
    // go through bpf_probe_read_kernel, which tolerates bad addresses.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm: *const u8 =
            bpf_probe_read_kernel(task.add(config.task_mm_offset as usize).cast()).ok()?;
        if mm.is_null() {
            return None;
        }
        let bytes: i64 =
            bpf_probe_read_kernel(mm.add(config.mm_pgtables_bytes_offset as usize).cast()).ok()?;
        // atomic_long_t can transiently be observed negative by a racing
        // reader on some paths; treat that as "no reading".
        u64::try_from(bytes).ok()
    }
}
