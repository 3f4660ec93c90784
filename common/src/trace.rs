//! Events of `ptwatch trace`, sent through a ring buffer.

use crate::COMM_LEN;

/// What a [`TraceEvent`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// A DONTNEED request finished (madvise, process_madvise or io_uring):
    /// its range, and the PTE tables it reclaimed.
    Dontneed = 0,
    /// One page-table page freed (fentry and kprobe plans only).
    Free = 1,
}

impl EventKind {
    pub const COUNT: usize = 2;
    pub const ALL: [Self; Self::COUNT] = [Self::Dontneed, Self::Free];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Dontneed => "dontneed",
            Self::Free => "free",
        }
    }

    pub const fn from_index(index: usize) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index])
        } else {
            None
        }
    }
}

/// One event of `ptwatch trace`, sent through the `TRACE_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub time_ns: u64,
    /// Range of a DONTNEED call; `len` 0 when unknown (frees, and
    /// process_madvise with several iovecs).
    pub start: u64,
    pub len: u64,
    /// Bytes a DONTNEED call advised (0 for frees).
    pub bytes: u64,
    /// Page-table pages: reclaimed by the call, or 1 for a free.
    pub pages: u64,
    /// cgroup v2 id of the running task (0 without cgroup v2).
    pub cgroup_id: u64,
    /// Process the pages belong to (0: a free whose mm has no owner left)
    /// and the running thread.
    pub tgid: u32,
    pub tid: u32,
    /// [`EventKind`], [`crate::Cause`] and [`crate::Level`] values.
    pub kind: u32,
    pub cause: u32,
    pub level: u32,
    pub _pad: u32,
    /// `comm` of the process (the mm's owner for frees).
    pub comm: [u8; COMM_LEN],
}
