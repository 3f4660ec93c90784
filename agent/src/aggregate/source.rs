//! Where the kernel's counters come from: the real maps ([`ProbeMaps`]), or
//! a script in unit tests. Everything the aggregation asks of the kernel
//! goes through [`CounterSource`].

use ptwatch_common::{names, NodeCounters, ProcessCounters, ProcessKey, ThreadContext};

use super::{
    batch::{self, Scratch, TakeMethod},
    slots::DontneedSlots,
};
use crate::probes::{ProbeError, ProbeMaps};

pub trait CounterSource {
    /// Node totals, summed over CPUs.
    fn node(&self) -> Result<NodeCounters, ProbeError>;
    /// Replace `into` with every `PROCESS_COUNTERS` entry (with its
    /// process' DONTNEED slot, if it holds one).
    fn processes(&mut self, into: &mut Vec<(ProcessKey, ProcessCounters)>) -> Result<(), ProbeError>;
    /// Replace `into` with every `OVERFLOW_COUNTERS` slot (cgroup id, counts).
    fn overflow(&mut self, into: &mut Vec<(u64, ProcessCounters)>) -> Result<(), ProbeError>;
    /// Remove the entry of an exited process (and its DONTNEED slot) and
    /// return the value it had when removed (None: no entry).
    fn take(&mut self, key: &ProcessKey) -> Result<Option<ProcessCounters>, ProbeError>;
    /// Replace `into` with every `THREAD_CONTEXT` entry.
    fn threads(&mut self, into: &mut Vec<(u32, ThreadContext)>) -> Result<(), ProbeError>;
    /// Remove the context of thread `tid` (an absent one is fine).
    fn forget_thread(&mut self, tid: u32);
    /// Remove io_uring requests whose completion was missed; how many.
    fn reap_io_requests(&mut self) -> u64;
    /// Capacity of the maps, fixed when they were created.
    fn capacity(&self) -> MapCapacity;
}

/// Capacity of the maps a [`CounterSource`] reads (None if the kernel
/// cannot be asked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapCapacity {
    pub processes: Option<u32>,
    pub overflow: Option<u32>,
    pub threads: Option<u32>,
}

/// The real maps, with how this kernel lets entries be taken out and the
/// buffers their batches are read into.
pub struct KernelMaps {
    maps: ProbeMaps,
    take: TakeMethod,
    processes: Scratch<ProcessKey, ProcessCounters>,
    slots: DontneedSlots,
    overflow: Scratch<u64, ProcessCounters>,
    threads: Scratch<u32, ThreadContext>,
}

impl KernelMaps {
    pub fn new(maps: ProbeMaps) -> Self {
        Self {
            maps,
            take: TakeMethod::default(),
            processes: Scratch::default(),
            slots: DontneedSlots::default(),
            overflow: Scratch::default(),
            threads: Scratch::default(),
        }
    }
}

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl CounterSource for KernelMaps {
    fn node(&self) -> Result<NodeCounters, ProbeError> {
        let per_cpu = self.maps.node.get(&0, 0).map_err(map_error(names::NODE_COUNTERS))?;
        Ok(per_cpu.iter().fold(NodeCounters::default(), |mut sum, cpu| {
            add_node(&mut sum, cpu);
            sum
        }))
    }

    fn processes(&mut self, into: &mut Vec<(ProcessKey, ProcessCounters)>) -> Result<(), ProbeError> {
        batch::entries(&self.maps.processes, &mut self.processes, into).map_err(map_error(names::PROCESS_COUNTERS))?;
        self.slots.fold(&self.maps, into)
    }

    fn overflow(&mut self, into: &mut Vec<(u64, ProcessCounters)>) -> Result<(), ProbeError> {
        batch::entries(&self.maps.overflow, &mut self.overflow, into).map_err(map_error(names::OVERFLOW_COUNTERS))
    }

    fn take(&mut self, key: &ProcessKey) -> Result<Option<ProcessCounters>, ProbeError> {
        let entry =
            batch::take(&mut self.maps.processes, key, &mut self.take).map_err(map_error(names::PROCESS_COUNTERS))?;
        let Some(slot) = DontneedSlots::release(&mut self.maps, key)? else {
            return Ok(entry);
        };
        // A slot is claimed only by a process that has an entry; a default
        // one holds the slot's counts should that ever not hold.
        let mut entry = entry.unwrap_or_default();
        slot.add_to(&mut entry);
        Ok(Some(entry))
    }

    fn threads(&mut self, into: &mut Vec<(u32, ThreadContext)>) -> Result<(), ProbeError> {
        batch::entries(&self.maps.threads, &mut self.threads, into).map_err(map_error(names::THREAD_CONTEXT))
    }

    fn forget_thread(&mut self, tid: u32) {
        // Absent is fine: the thread's exit hook may have run meanwhile.
        let _ = self.maps.threads.remove(&tid);
    }

    fn reap_io_requests(&mut self) -> u64 {
        self.maps.reap_stale_io_requests()
    }

    fn capacity(&self) -> MapCapacity {
        use aya::maps::IterableMap as _;
        let max = |map: &aya::maps::MapData| map.info().ok().map(|info| info.max_entries());
        MapCapacity {
            processes: max(self.maps.processes.map()),
            overflow: max(self.maps.overflow.map()),
            threads: max(self.maps.threads.map()),
        }
    }
}

/// `sum += cpu`, every field: the counters and the diagnostics. The
/// destructuring makes a field added to `NodeCounters` a compile error here
/// rather than a counter silently left at zero.
pub fn add_node(sum: &mut NodeCounters, cpu: &NodeCounters) {
    let NodeCounters {
        dontneed_calls,
        dontneed_bytes,
        frees,
        process_map_overflows,
        cgroup_map_overflows,
        unowned_frees,
        lost_events,
        context_update_failures,
        context_exit_misses,
        approximate_calls,
        unmeasured_requests,
    } = cpu;
    let add = |total: &mut u64, value: &u64| *total = total.wrapping_add(*value);
    add(&mut sum.dontneed_calls, dontneed_calls);
    add(&mut sum.dontneed_bytes, dontneed_bytes);
    sum.frees.add(frees);
    add(&mut sum.process_map_overflows, process_map_overflows);
    add(&mut sum.cgroup_map_overflows, cgroup_map_overflows);
    add(&mut sum.unowned_frees, unowned_frees);
    add(&mut sum.lost_events, lost_events);
    add(&mut sum.context_update_failures, context_update_failures);
    add(&mut sum.context_exit_misses, context_exit_misses);
    add(&mut sum.approximate_calls, approximate_calls);
    add(&mut sum.unmeasured_requests, unmeasured_requests);
}
