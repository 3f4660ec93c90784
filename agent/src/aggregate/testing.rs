//! A scripted kernel, `/proc` and host for unit tests of the aggregation
//! and of the exporter.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    rc::Rc,
    time::{Duration, Instant},
};

use ptwatch_common::{Cause, Level, NodeCounters, ProcessCounters, ProcessKey, ThreadContext, UNATTRIBUTED_CGROUP};

use super::*;

/// A small model of the kernel side: per-process entries up to a capacity,
/// then the cgroup's overflow slot; node totals always.
#[derive(Default)]
pub struct Kernel {
    pub capacity: usize,
    pub node: NodeCounters,
    pub processes: BTreeMap<ProcessKey, ProcessCounters>,
    pub overflow: BTreeMap<u64, ProcessCounters>,
    pub threads: BTreeMap<u32, ThreadContext>,
    pub taken: Vec<ProcessKey>,
}

impl Kernel {
    /// Count `delta` for the process `key` named `comm` in `cgroup`.
    pub fn count(&mut self, key: ProcessKey, comm: &[u8], cgroup: u64, delta: &Counts) {
        let entry = if self.processes.contains_key(&key) || self.processes.len() < self.capacity {
            self.processes.entry(key).or_insert_with(|| {
                let mut c = ProcessCounters { cgroup_id: cgroup, ..ProcessCounters::default() };
                c.comm[..comm.len()].copy_from_slice(comm);
                c
            })
        } else {
            self.node.process_map_overflows += 1;
            self.overflow.entry(cgroup).or_insert(ProcessCounters { cgroup_id: cgroup, ..ProcessCounters::default() })
        };
        add(entry, delta);
        self.node.dontneed_calls += delta.dontneed_calls;
        self.node.dontneed_bytes += delta.dontneed_bytes;
        self.node.frees.add(&delta.frees);
    }
}

fn add(entry: &mut ProcessCounters, delta: &Counts) {
    entry.dontneed_calls += delta.dontneed_calls;
    entry.dontneed_bytes += delta.dontneed_bytes;
    entry.frees.add(&delta.frees);
}

#[derive(Clone, Default)]
pub struct Shared(pub Rc<RefCell<Kernel>>);

impl Shared {
    pub fn with_capacity(capacity: usize) -> Self {
        let shared = Self::default();
        shared.0.borrow_mut().capacity = capacity;
        shared.0.borrow_mut().overflow.insert(UNATTRIBUTED_CGROUP, ProcessCounters::default());
        shared
    }
}

impl CounterSource for Shared {
    fn node(&self) -> Result<NodeCounters, ProbeError> {
        Ok(self.0.borrow().node)
    }
    fn processes(&mut self, into: &mut Vec<(ProcessKey, ProcessCounters)>) -> Result<(), ProbeError> {
        into.clear();
        into.extend(self.0.borrow().processes.iter().map(|(k, v)| (*k, *v)));
        Ok(())
    }
    fn overflow(&mut self, into: &mut Vec<(u64, ProcessCounters)>) -> Result<(), ProbeError> {
        into.clear();
        into.extend(self.0.borrow().overflow.iter().map(|(k, v)| (*k, *v)));
        Ok(())
    }
    fn take(&mut self, key: &ProcessKey) -> Result<Option<ProcessCounters>, ProbeError> {
        let mut kernel = self.0.borrow_mut();
        kernel.taken.push(*key);
        Ok(kernel.processes.remove(key))
    }
    fn threads(&mut self, into: &mut Vec<(u32, ThreadContext)>) -> Result<(), ProbeError> {
        into.clear();
        into.extend(self.0.borrow().threads.iter().map(|(k, v)| (*k, *v)));
        Ok(())
    }
    fn forget_thread(&mut self, tid: u32) {
        self.0.borrow_mut().threads.remove(&tid);
    }
    fn reap_io_requests(&mut self) -> u64 {
        0
    }
    fn capacity(&self) -> MapCapacity {
        let capacity = self.0.borrow().capacity as u32;
        MapCapacity { processes: Some(capacity), overflow: Some(256), threads: Some(16384) }
    }
}

/// `/proc` as the tests script it: running processes by pid, with their
/// start time and name, and running threads.
#[derive(Clone, Default)]
pub struct Proc(pub Rc<RefCell<ProcTable>>);

/// Running processes (pid → start time, name) and other running threads.
pub type ProcTable = (BTreeMap<u32, (u64, String)>, BTreeSet<u32>);

impl Proc {
    pub fn start(&self, key: ProcessKey, comm: &str) {
        self.0.borrow_mut().0.insert(key.tgid, (key.start_time_ns, comm.into()));
    }
    pub fn exit(&self, pid: u32) {
        self.0.borrow_mut().0.remove(&pid);
    }
    pub fn rename(&self, pid: u32, comm: &str) {
        if let Some(entry) = self.0.borrow_mut().0.get_mut(&pid) {
            entry.1 = comm.into();
        }
    }
}

impl Liveness for Proc {
    fn presence(&self, key: ProcessKey) -> Presence {
        match self.0.borrow().0.get(&key.tgid) {
            Some((start, comm)) if *start == key.start_time_ns => Presence::Alive { comm: comm.clone() },
            _ => Presence::Gone,
        }
    }
    fn thread_exists(&self, tid: u32) -> bool {
        self.0.borrow().1.contains(&tid) || self.0.borrow().0.contains_key(&tid)
    }
}

/// The host as the tests script it.
#[derive(Default)]
pub struct Machine {
    /// cgroup id → path (directories that exist).
    pub ids: BTreeMap<u64, String>,
    /// Live pid → cgroup path (`/proc/<pid>/cgroup`).
    pub pids: BTreeMap<u32, String>,
    pub vmpte: BTreeMap<u32, u64>,
    pub memory_stat: BTreeMap<String, u64>,
    pub node: Option<u64>,
}

#[derive(Clone, Default)]
pub struct FakeHost(pub Rc<RefCell<Machine>>);

impl Host for FakeHost {
    fn cgroup_path(&mut self, id: u64, _now: Instant) -> Option<String> {
        self.0.borrow().ids.get(&id).cloned()
    }
    fn cgroup_of_pid(&self, pid: u32) -> Option<String> {
        self.0.borrow().pids.get(&pid).cloned()
    }
    fn cgroup_exists(&self, path: &str) -> bool {
        self.0.borrow().ids.values().any(|p| p == path)
    }
    fn cgroup_pagetable_bytes(&self, path: &str) -> Option<u64> {
        self.0.borrow().memory_stat.get(path).copied()
    }
    fn process_pagetable_bytes(&self, pid: u32) -> Option<u64> {
        self.0.borrow().vmpte.get(&pid).copied()
    }
    fn node_pagetable_bytes(&self) -> Option<u64> {
        self.0.borrow().node
    }
}

/// Kernel, `/proc` and host of one test.
pub struct World {
    pub kernel: Shared,
    pub proc: Proc,
    pub host: FakeHost,
}

impl World {
    pub fn new(capacity: usize) -> Self {
        Self { kernel: Shared::with_capacity(capacity), proc: Proc::default(), host: FakeHost::default() }
    }

    pub fn aggregator(&self, ttl: Duration, selection: Selection) -> Aggregator<Shared, Proc, FakeHost> {
        Aggregator::with_host(self.kernel.clone(), self.proc.clone(), self.host.clone(), ttl).with_selection(selection)
    }

    /// A running process `pid` (started at `start`) named `comm`.
    pub fn start(&self, pid: u32, start: u64, comm: &str) -> ProcessKey {
        let key = ProcessKey { tgid: pid, _pad: 0, start_time_ns: start };
        self.proc.start(key, comm);
        key
    }

    pub fn reclaim(&self, key: ProcessKey, comm: &str, cgroup: u64, pages: u64) {
        self.kernel.0.borrow_mut().count(key, comm.as_bytes(), cgroup, &reclaimed(pages));
    }
}

/// One DONTNEED call of 4 KiB that reclaimed `pages` PTE tables.
pub fn reclaimed(pages: u64) -> Counts {
    let mut counts = Counts { dontneed_calls: 1, dontneed_bytes: 4096, ..Counts::default() };
    counts.frees.pages[Cause::Reclaim.index()][Level::Pte.index()] = pages;
    counts
}
