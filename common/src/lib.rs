//! Types that cross the kernel/userspace boundary.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the eBPF
//! programs (built for `bpfel-unknown-none`) and the agent (built for the host)
//! agree on every byte. Flags are `u32`/`u64`, never `bool`: a `bool` would
//! leave padding whose contents the verifier cannot reason about.
//!
//! - [`counters`]: what is counted, per process, per cgroup overflow, per node;
//! - [`context`]: per-thread state while a hooked kernel call runs;
//! - [`config`]: kernel facts the agent hands to the programs before load;
//! - [`hooks`] and [`names`]: the one table of hooked functions, maps and
//!   programs, read by both sides;
//! - [`trace`]: `ptwatch trace`'s events; [`request`]: start-up requests.
#![no_std]

pub mod config;
pub mod context;
pub mod counters;
pub mod hooks;
pub mod names;
pub mod request;
pub mod trace;

pub use config::{FreeSource, KernelConfig};
pub use context::{IoRequest, ThreadContext};
pub use counters::{
    overflow_capacity, Cause, DontneedSlot, FreeCounts, Level, NodeCounters, ProcessCounters, ProcessKey,
    DEFAULT_MAX_TRACKED_PROCESSES, DONTNEED_SLOT_CLAIM_CALLS, DONTNEED_SLOT_COUNT, UNATTRIBUTED_CGROUP,
};
pub use request::{AgentRequest, MAX_WALK_REGIONS};
pub use trace::{EventKind, TraceEvent};

/// `MADV_DONTNEED` from `<linux/mman.h>`: zap the range; since 6.14 the zap
/// may free PTE tables that became empty (PT_RECLAIM).
pub const MADV_DONTNEED: u64 = 4;
/// `MADV_DONTNEED_LOCKED`: like `MADV_DONTNEED`, also on mlocked ranges.
pub const MADV_DONTNEED_LOCKED: u64 = 24;

/// Length of `task_struct::comm`.
pub const COMM_LEN: usize = 16;

/// Most threads that can be inside a hooked call at once (entries of
/// `THREAD_CONTEXT`).
pub const MAX_THREAD_CONTEXTS: u32 = 16384;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and integer
    // arrays, with no implicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelConfig {}
    unsafe impl aya::Pod for super::ProcessKey {}
    unsafe impl aya::Pod for super::ProcessCounters {}
    unsafe impl aya::Pod for super::DontneedSlot {}
    unsafe impl aya::Pod for super::NodeCounters {}
    unsafe impl aya::Pod for super::ThreadContext {}
    unsafe impl aya::Pod for super::IoRequest {}
    unsafe impl aya::Pod for super::AgentRequest {}
    unsafe impl aya::Pod for super::TraceEvent {}
}
