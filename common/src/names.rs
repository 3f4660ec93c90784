//! Names of the maps and programs in the eBPF object; the agent looks them
//! up by these names, so both sides use the constants.

/// Per-process counters: `ProcessKey` → `ProcessCounters`.
pub const PROCESS_COUNTERS: &str = "PROCESS_COUNTERS";
/// Per-cgroup overflow of `PROCESS_COUNTERS`: cgroup id → `ProcessCounters`.
pub const OVERFLOW_COUNTERS: &str = "OVERFLOW_COUNTERS";
/// Direct-mapped DONTNEED counts of busy processes: slot index →
/// `DontneedSlot` (see `ptwatch_common::DONTNEED_SLOT_COUNT`).
pub const DONTNEED_SLOTS: &str = "DONTNEED_SLOTS";
/// Who owns each claimed slot of `DONTNEED_SLOTS`: slot index → `ProcessKey`.
pub const DONTNEED_SLOT_OWNERS: &str = "DONTNEED_SLOT_OWNERS";
/// Node totals (per-CPU array of one `NodeCounters`).
pub const NODE_COUNTERS: &str = "NODE_COUNTERS";
/// Per-thread context while a thread is inside a hooked call: tid →
/// `ThreadContext`.
pub const THREAD_CONTEXT: &str = "THREAD_CONTEXT";
/// io_uring DONTNEED requests in flight (tracepoint plan): request address
/// → what was measured at submission.
pub const IO_REQUESTS: &str = "IO_REQUESTS";
pub const AGENT_REQUEST: &str = "AGENT_REQUEST";
/// Global (`.rodata`) holding the `KernelConfig`.
pub const KERNEL_CONFIG: &str = "PTWATCH_KERNEL_CONFIG";
/// Ring buffer of `TraceEvent`s and its per-CPU count of events that did
/// not fit (`ptwatch trace`).
pub const TRACE_EVENTS: &str = "TRACE_EVENTS";
pub const TRACE_LOST: &str = "TRACE_LOST";

/// The DONTNEED programs, `(with page-table walk, without)`, by
/// tracepoint.
pub const MADVISE_PROGRAMS: [(&str, &str, &str); 4] = [
    ("sys_enter_madvise", "madvise_enter_walk", "madvise_enter_plain"),
    ("sys_exit_madvise", "madvise_exit_walk", "madvise_exit_plain"),
    ("sys_enter_process_madvise", "process_madvise_enter_walk", "process_madvise_enter_plain"),
    ("sys_exit_process_madvise", "process_madvise_exit_walk", "process_madvise_exit_plain"),
];
/// The io_uring programs of the tracepoint plan: `(category, tracepoint,
/// program with page-table walk, program without)`.
pub const IO_URING_PROGRAMS: [(&str, &str, &str, &str); 2] = [
    ("io_uring", "io_uring_submit_req", "io_uring_submit_walk", "io_uring_submit_plain"),
    ("io_uring", "io_uring_complete", "io_uring_complete_walk", "io_uring_complete_plain"),
];
pub const PROG_AGENT_REQUEST: &str = "agent_request";
pub const PROG_WALK_SELF_TEST: &str = "walk_self_test";
