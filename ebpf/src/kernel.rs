//! Access to kernel state through offsets resolved by the agent from BTF.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
};
use ptwatch_common::{KernelConfig, ProcessKey};

/// The configuration the agent writes before load
/// (`EbpfLoader::override_global` on `PTWATCH_KERNEL_CONFIG`), and one
/// getter per field on [`Config`]. One list makes both: a field added to
/// `KernelConfig` must be given its default here, and can then be read.
macro_rules! kernel_config {
    ($($field:ident: $default:expr,)*) => {
        /// Filled by the agent before load.
        #[unsafe(no_mangle)]
        static PTWATCH_KERNEL_CONFIG: KernelConfig = KernelConfig { $($field: $default,)* };

        impl Config {
            $(
                #[inline(always)]
                pub fn $field(self) -> u64 {
                    // SAFETY: a plain read of one field of the global;
                    // volatile so that the compiler does not fold the
                    // initialiser into the code (the loader rewrites it).
                    unsafe { core::ptr::read_volatile(&raw const PTWATCH_KERNEL_CONFIG.$field) }
                }
            )*
        }
    };
}

/// The agent's configuration, read one field at a time where it is used:
/// copying all of `KernelConfig` (29 loads) at the start of every program
/// was a tenth of what an allocator's small DONTNEED cost. The values live
/// in the object's frozen `.rodata`, so the verifier knows them as
/// constants: branches on them are pruned at load time, which is what lets
/// one program carry code for helpers an older kernel does not have.
#[derive(Clone, Copy)]
pub struct Config;

kernel_config! {
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
    task_pid_offset: 0,
    task_comm_offset: 0,
    task_group_leader_offset: 0,
    task_start_boottime_offset: 0,
    current_task_btf: 0,
    syscall_arg0_offset: u64::MAX,
    syscall_arg1_offset: u64::MAX,
    syscall_arg2_offset: u64::MAX,
    syscall_nr_offset: u64::MAX,
    madvise_syscall_nr: u64::MAX,
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
    pt_reclaim: 1,
    emit_events: 0,
    trace_tgid: 0,
    trace_cgroup_id: 0,
}

/// The configuration (see [`Config`]).
#[inline(always)]
pub fn config() -> Config {
    Config
}

/// The current thread, split into the ids the maps use.
#[derive(Clone, Copy)]
pub struct CurrentTask {
    pub tgid: u32,
    pub tid: u32,
    /// The running `task_struct` as a BTF-typed pointer, where the kernel
    /// has `bpf_get_current_task_btf` (else 0): fetched once per program
    /// run, its fields are then plain loads, where each helper call costs
    /// ~15 ns (measured on an AMD EPYC CI machine: docs/benchmarks.md).
    btf: u64,
}

impl CurrentTask {
    #[inline(always)]
    pub fn get() -> Self {
        let config = config();
        if config.current_task_btf() != 0 {
            // SAFETY: no preconditions; only reached where the kernel has
            // the helper (the verifier drops this branch elsewhere).
            let task = unsafe { bpf_get_current_task_btf() } as u64;
            // SAFETY: `task` is the running task_struct, typed by BTF;
            // `pid` and `tgid` are its `pid_t` members (offsets from the
            // kernel's BTF): the ids bpf_get_current_pid_tgid returns.
            let (tid, tgid) = unsafe {
                (btf_load::<u32>(task, config.task_pid_offset()), btf_load::<u32>(task, config.task_tgid_offset()))
            };
            return Self { tgid, tid, btf: task };
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        Self { tgid: (pid_tgid >> 32) as u32, tid: pid_tgid as u32, btf: 0 }
    }

    /// The running task, or `None` for the agent's own threads.
    #[inline(always)]
    pub fn observed(config: Config) -> Option<Self> {
        let task = Self::get();
        (u64::from(task.tgid) != config.agent_tgid()).then_some(task)
    }

    /// The identity of the running task's process.
    #[inline(always)]
    pub fn process_key(self, config: Config) -> ProcessKey {
        let start_time_ns = if config.current_task_btf() != 0 {
            // SAFETY: `self.btf` is the running task_struct, typed by BTF
            // (`get`, in this program run); `group_leader` is a task_struct
            // pointer member of it and `start_boottime` a u64 member
            // (offsets from the kernel's BTF).
            unsafe {
                btf_load::<u64>(
                    btf_load::<u64>(self.btf, config.task_group_leader_offset()),
                    config.task_start_boottime_offset(),
                )
            }
        } else {
            leader_start_time(config, current_task())
        };
        ProcessKey { tgid: self.tgid, _pad: 0, start_time_ns }
    }

    /// The first three arguments of the syscall this task is returning
    /// from, read back from its saved user registers (`None` where the
    /// kernel cannot tell: no `bpf_task_pt_regs` or BTF, see
    /// `KernelConfig::syscall_arg0_offset`). Exact: between the syscall
    /// tracepoints nothing rewrites these registers (ptrace and seccomp act
    /// before the entry tracepoint and after the exit one, and the register
    /// of the first argument, which takes the return value, is read from
    /// its saved copy on the architectures where it is shared).
    #[inline(always)]
    pub fn syscall_args_at_exit(self, config: Config) -> Option<[u64; 3]> {
        if !syscall_args_readable_at_exit(config) {
            return None;
        }
        Some(syscall_args_in(config, self.user_regs()))
    }

    /// The arguments of the native `madvise(2)` this task is in, from its
    /// saved user registers: `None` in any other syscall (io_uring_enter,
    /// process_madvise, a 32-bit program's madvise), in an io_uring worker
    /// (its registers are zeroed), or where the kernel cannot tell (see
    /// `KernelConfig::syscall_nr_offset`). They are the `do_madvise` call's
    /// own, and do not change while the syscall runs: an entry and a
    /// return program that both decide from them decide alike.
    #[inline(always)]
    pub fn madvise_syscall_args(self, config: Config) -> Option<[u64; 3]> {
        if !madvise_syscall_readable(config) {
            return None;
        }
        let regs = self.user_regs();
        // SAFETY: `regs` is the task's `struct pt_regs`, typed by BTF; the
        // number is read as its low 32 bits (arm64's `syscallno` is an s32;
        // x86_64's and riscv64's members are longs, little-endian).
        let nr = unsafe { btf_load::<u32>(regs, config.syscall_nr_offset()) };
        (u64::from(nr) == config.madvise_syscall_nr()).then(|| syscall_args_in(config, regs))
    }

    /// The task's saved user registers (`struct pt_regs`, BTF-typed).
    #[inline(always)]
    fn user_regs(self) -> u64 {
        // SAFETY: `self.btf` is the running task, typed by BTF; callers
        // reach this only where the kernel has the helper (the verifier
        // drops the code elsewhere: the offsets are load-time constants).
        unsafe { bpf_task_pt_regs(self.btf as *mut _) as u64 }
    }
}

/// The first three syscall arguments in the saved user registers `regs`.
#[inline(always)]
fn syscall_args_in(config: Config, regs: u64) -> [u64; 3] {
    // SAFETY: `regs` is a task's `struct pt_regs`, typed by BTF, and the
    // offsets are of u64 members of it (from the kernel's BTF).
    unsafe {
        [
            btf_load::<u64>(regs, config.syscall_arg0_offset()),
            btf_load::<u64>(regs, config.syscall_arg1_offset()),
            btf_load::<u64>(regs, config.syscall_arg2_offset()),
        ]
    }
}

/// Whether [`CurrentTask::madvise_syscall_args`] can tell on this kernel (a
/// load-time constant).
#[inline(always)]
pub fn madvise_syscall_readable(config: Config) -> bool {
    syscall_args_readable_at_exit(config) && config.syscall_nr_offset() != u64::MAX
}

/// Whether [`CurrentTask::syscall_args_at_exit`] can read them on this
/// kernel (a load-time constant).
#[inline(always)]
pub fn syscall_args_readable_at_exit(config: Config) -> bool {
    config.syscall_arg0_offset() != u64::MAX && config.current_task_btf() != 0
}

/// A load of the `T` at `base + offset`, where `base` is a kernel pointer
/// the verifier knows the BTF type of: a plain instruction, checked against
/// the type at load time and guarded against faults at run time, where a
/// `bpf_probe_read_kernel` is a helper call.
///
/// # Safety
/// `base` must be a BTF-typed pointer (`bpf_get_current_task_btf`, or a
/// pointer member loaded through one) and `offset` the offset of a member
/// of its type of `T`'s size, from the kernel's BTF; the verifier rejects
/// the program otherwise.
#[inline(always)]
unsafe fn btf_load<T: Copy>(base: u64, offset: u64) -> T {
    // SAFETY: see the contract above.
    unsafe { (base.wrapping_add(offset) as *const T).read_volatile() }
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
pub fn current_mm(config: Config) -> Option<u64> {
    let mm: u64 = read_kernel(current_task(), config.task_mm_offset())?;
    (mm != 0).then_some(mm)
}

/// `mm->pgtables_bytes`: the page-table memory of an address space, the
/// number behind `VmPTE` in `/proc/<pid>/status`.
#[inline(always)]
pub fn pgtables_bytes(config: Config, mm: u64) -> Option<u64> {
    let bytes: i64 = read_kernel(mm, config.mm_pgtables_bytes_offset())?;
    u64::try_from(bytes).ok()
}

/// `task->group_leader->start_boottime`: the start time that, with the
/// tgid, identifies a process (0 if unreadable: the key then still names
/// the tgid).
#[inline(always)]
pub fn leader_start_time(config: Config, task: u64) -> u64 {
    read_kernel::<u64>(task, config.task_group_leader_offset())
        .and_then(|leader| read_kernel::<u64>(leader, config.task_start_boottime_offset()))
        .unwrap_or(0)
}
