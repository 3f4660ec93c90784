//! Start-up requests from the agent to the kernel side (calibration and
//! self-test of the page-table walk), and the walk's bounds.

/// Largest number of steps of one page-table walk: each step covers a
/// populated 1 GiB region or skips an empty 512 GiB block, so this bounds the
/// run time of a DONTNEED over a huge, densely mapped range (4 TiB). A range
/// beyond it is measured through `pgtables_bytes` instead and counted in
/// [`crate::NodeCounters::approximate_calls`].
pub const MAX_WALK_REGIONS: u32 = 4096;

/// What [`AgentRequest::op`] asks the `agent_request` program to do.
pub mod op {
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
