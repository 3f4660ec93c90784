//! STOP-GAP (branch `kernel` only): the pre-v2 shapes of the kernel
//! counters, converted from the v2 maps so that the old aggregation keeps
//! compiling while it is rewritten on branch `agg`. Replaced on merge.

use ptwatch_common::{Cause, Level, COMM_LEN};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounters {
    pub pte_pages_reclaimed: u64,
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    pub comm: [u8; COMM_LEN],
    pub cgroup_id: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub pte_pages_reclaimed: u64,
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    pub process_map_update_failures: u64,
    pub inflight_update_failures: u64,
    pub approximate_calls: u64,
    pub free_map_update_failures: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FreeKey {
    pub tgid: u32,
    pub cause: u32,
    pub level: u32,
    pub _pad: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreeCounters {
    pub pages: u64,
    pub comm: [u8; COMM_LEN],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeFrees {
    pub pages: [[u64; Level::COUNT]; Cause::COUNT],
}

impl Default for NodeFrees {
    fn default() -> Self {
        Self { pages: [[0; Level::COUNT]; Cause::COUNT] }
    }
}

pub fn node_from(v2: &ptwatch_common::NodeCounters) -> (NodeCounters, NodeFrees) {
    (
        NodeCounters {
            pte_pages_reclaimed: v2.frees.reclaimed(),
            dontneed_calls: v2.dontneed_calls,
            dontneed_bytes: v2.dontneed_bytes,
            process_map_update_failures: v2.process_map_overflows,
            inflight_update_failures: v2.context_update_failures,
            approximate_calls: v2.approximate_calls,
            free_map_update_failures: v2.unowned_frees,
        },
        NodeFrees { pages: v2.frees.pages },
    )
}

pub fn process_from(v2: &ptwatch_common::ProcessCounters) -> ProcessCounters {
    ProcessCounters {
        pte_pages_reclaimed: v2.frees.reclaimed(),
        dontneed_calls: v2.dontneed_calls,
        dontneed_bytes: v2.dontneed_bytes,
        comm: v2.comm,
        cgroup_id: v2.cgroup_id,
    }
}

pub fn frees_from(tgid: u32, v2: &ptwatch_common::ProcessCounters) -> Vec<(FreeKey, FreeCounters)> {
    let mut out = Vec::new();
    for (cause, row) in v2.frees.pages.iter().enumerate() {
        for (level, &pages) in row.iter().enumerate() {
            if pages > 0 {
                let key = FreeKey { tgid, cause: cause as u32, level: level as u32, _pad: 0 };
                out.push((key, FreeCounters { pages, comm: v2.comm }));
            }
        }
    }
    out
}
