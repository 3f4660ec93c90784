//! Where the tracepoint plan finds a madvise(2)'s arguments at syscall
//! exit, so that a request that cannot reclaim needs no per-thread state.
//!
//! A DONTNEED whose range covers no whole 2 MiB span (an allocator's 4 KiB
//! trim) is most of the calls on a busy node. Storing its range at entry in
//! `THREAD_CONTEXT` and deleting it at exit (a hash insert and delete) was
//! most of the programs' cost. Where the exit program can read the task's
//! saved user registers (`bpf_task_pt_regs`, 5.15+), which still hold the
//! arguments when the syscall returns, the entry program skips such a
//! request and the exit program counts it alone. This module decides,
//! from BTF, whether that is possible and where the registers are.

use ptwatch_common::KernelConfig;
use serde::Serialize;

use crate::kernel::btf::KernelBtf;

/// How the tracepoint plan sees madvise(2) DONTNEEDs that cannot reclaim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum SmallRequests {
    /// Counted at syscall exit from the saved user registers: byte offsets
    /// in `struct pt_regs` of `start`, `len_in` and `behavior`.
    SavedRegisters { start: u64, len: u64, behavior: u64 },
    /// Their range stored at entry in the per-thread context, like every
    /// other request; `why` the registers are not used.
    ThreadContext { why: String },
}

/// The helpers the exit program calls to reach the registers.
const HELPERS: [&str; 2] = ["BPF_FUNC_get_current_task_btf", "BPF_FUNC_task_pt_regs"];

/// `struct pt_regs` members holding madvise's three arguments at syscall
/// exit, plus a byte offset into the member (an array element): the first
/// argument register holds the return value by then, so its saved copy
/// (`orig_*`) is read where the architecture keeps one.
#[cfg(target_arch = "x86_64")]
const ARGUMENT_REGISTERS: Option<[(&str, u64); 3]> = Some([("di", 0), ("si", 0), ("dx", 0)]);
#[cfg(target_arch = "aarch64")]
const ARGUMENT_REGISTERS: Option<[(&str, u64); 3]> = Some([("orig_x0", 0), ("regs", 8), ("regs", 16)]);
#[cfg(target_arch = "riscv64")]
const ARGUMENT_REGISTERS: Option<[(&str, u64); 3]> = Some([("orig_a0", 0), ("a1", 0), ("a2", 0)]);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
const ARGUMENT_REGISTERS: Option<[(&str, u64); 3]> = None;

impl SmallRequests {
    /// The method this kernel allows.
    pub fn resolve(btf: &KernelBtf) -> Self {
        let context = |why: String| Self::ThreadContext { why };
        if let Some(missing) = HELPERS.iter().find(|helper| !btf.has_enum_value("bpf_func_id", helper)) {
            return context(format!("the kernel has no {missing} (5.15+)"));
        }
        let Some(registers) = ARGUMENT_REGISTERS else {
            return context(format!("syscall argument registers unknown on {}", std::env::consts::ARCH));
        };
        let mut offsets = [0; 3];
        for (offset, (member, extra)) in offsets.iter_mut().zip(registers) {
            match btf.member_offset("pt_regs", member) {
                Ok(at) => *offset = at + extra,
                Err(err) => return context(err.to_string()),
            }
        }
        let [start, len, behavior] = offsets;
        Self::SavedRegisters { start, len, behavior }
    }

    /// Write the method into the programs' configuration.
    pub fn apply(&self, config: &mut KernelConfig) {
        let [start, len, behavior] = match self {
            Self::SavedRegisters { start, len, behavior } => [*start, *len, *behavior],
            Self::ThreadContext { .. } => [u64::MAX; 3],
        };
        config.syscall_start_reg_offset = start;
        config.syscall_len_reg_offset = len;
        config.syscall_behavior_reg_offset = behavior;
    }

    pub fn uses_registers(&self) -> bool {
        matches!(self, Self::SavedRegisters { .. })
    }

    /// One line for `ptwatch check` and the logs.
    pub fn describe(&self) -> String {
        match self {
            Self::SavedRegisters { .. } => {
                "counted at syscall exit from the saved registers (bpf_task_pt_regs), nothing stored at entry".into()
            }
            Self::ThreadContext { why } => format!("range kept in the per-thread context ({why})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::kernel::btf::VMLINUX_BTF;

    #[test]
    fn this_kernel_reads_the_registers() {
        let btf = KernelBtf::load(Path::new(VMLINUX_BTF)).expect("these tests need kernel BTF");
        let small = SmallRequests::resolve(&btf);
        // x86_64 pt_regs: ... dx (96), si (104), di (112) ...
        assert_eq!(small, SmallRequests::SavedRegisters { start: 112, len: 104, behavior: 96 });
        let mut config = KernelConfig::default();
        small.apply(&mut config);
        assert_eq!(config.syscall_behavior_reg_offset, 96);
        SmallRequests::ThreadContext { why: String::new() }.apply(&mut config);
        assert_eq!(config.syscall_start_reg_offset, u64::MAX);
    }
}
