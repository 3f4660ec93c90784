//! What a working plan cannot see on this kernel: `ptwatch check` prints
//! each as one of the plan's "misses", the agent logs them at start-up, and
//! `ptwatch trace` lists them in its summary. Tests match the variants;
//! users read the text (also what the JSON outputs carry).

use std::fmt;

use super::plan::Registry;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limitation {
    /// Tracepoint plan: no tracepoint reports page-table frees.
    FreesUnseen,
    /// Tracepoint plan: io_uring's tracepoints, or what the programs need
    /// to read a request from them, are missing.
    IoUringUnseen,
    /// Tracepoint plan: the kernel runs 32-bit programs, and x86_64, arm64
    /// and riscv64 never report compat syscalls through `syscalls:*`
    /// (`ARCH_TRACE_IGNORE_COMPAT_SYSCALLS`).
    CompatSyscallsUnseen,
    /// Function plans, 6.15+: process_madvise(2) passes `vector_madvise`,
    /// not `do_madvise`, and `vector_madvise` cannot be hooked.
    ProcessMadviseUnseen { registry: Registry },
    /// Function plans before 6.5: collapse retires tables without
    /// `pte_free_defer`.
    CollapseUnseen { registry: Registry },
    /// Function plans: 5-level paging's P4D frees have no hook.
    P4dFreesUncounted { function: &'static str, registry: Registry },
    /// Every level is freed through `tlb_remove_table`, which does not say
    /// which.
    FreeLevelUnknown,
    /// An optional hook the kernel refused to load or attach.
    ProgramRefused { function: String, reason: String },
}

impl fmt::Display for Limitation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FreesUnseen => f.write_str("page-table frees are not seen: no tracepoint reports them"),
            Self::IoUringUnseen => f.write_str(
                "io_uring DONTNEED requests are not seen: needs the io_uring_submit_req and io_uring_complete tracepoints with their `req` field and struct io_madvise in BTF",
            ),
            Self::CompatSyscallsUnseen => f.write_str(
                "DONTNEED requests of 32-bit programs (compat madvise and process_madvise syscalls) are not seen: the kernel's syscall tracepoints skip compat syscalls; their io_uring requests are seen",
            ),
            Self::ProcessMadviseUnseen { registry } => write!(
                f,
                "process_madvise(2) DONTNEED requests are not seen: vector_madvise is not in {}",
                registry.as_str()
            ),
            Self::CollapseUnseen { registry } => {
                write!(f, "collapse frees are not seen: pte_free_defer is not in {} (6.5+)", registry.as_str())
            }
            Self::P4dFreesUncounted { function, registry } => write!(
                f,
                "P4D table frees (5-level paging only) are not counted: {function} is not in {}",
                registry.as_str()
            ),
            Self::FreeLevelUnknown => f.write_str(
                "the level of unmap, exit and other frees is unknown: this architecture frees every level through tlb_remove_table",
            ),
            Self::ProgramRefused { function, reason } => {
                write!(f, "{function}: the kernel refused the program ({reason})")
            }
        }
    }
}

/// As its text: what `check --json` and `trace --json` have always carried.
impl serde::Serialize for Limitation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
