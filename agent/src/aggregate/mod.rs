//! From kernel maps to a consistent picture of processes.
//!
//! The kernel keeps cumulative counters per live tgid. [`Aggregator::harvest`]
//! reads them, notices processes that have exited, keeps their final counts
//! for a configurable time (so a short-lived process is still scraped at
//! least once) and then forgets them, deleting their kernel map entries so
//! the maps stay small and a recycled pid starts from zero.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use ptwatch_common::{FreeCounters, FreeKey, NodeCounters, NodeFrees, ProcessCounters};

use crate::{
    kernel::procfs,
    probes::{ProbeError, ProbeMaps},
};

/// The counters of one process, as exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pid: u32,
    pub comm: String,
    pub pte_pages_reclaimed: u64,
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    /// Page-table pages freed, by `(cause, level)` (fentry/kprobe plans).
    pub frees: BTreeMap<(u32, u32), u64>,
    /// When the agent noticed the process was gone.
    pub exited_at: Option<Instant>,
}

impl ProcessRecord {
    fn new(pid: u32, comm: &[u8]) -> Self {
        Self {
            pid,
            comm: procfs::comm_to_string(comm),
            pte_pages_reclaimed: 0,
            dontneed_calls: 0,
            dontneed_bytes: 0,
            frees: BTreeMap::new(),
            exited_at: None,
        }
    }
}

/// Everything a scrape exports about the kernel side.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub node: NodeCounters,
    pub node_frees: NodeFrees,
    pub processes: Vec<ProcessRecord>,
}

/// Anything that can tell whether a pid is still running; real code asks
/// `/proc`, unit tests script it.
pub trait Liveness {
    fn is_alive(&self, pid: u32) -> bool;
}

/// Liveness from `/proc/<pid>`.
pub struct ProcLiveness;

impl Liveness for ProcLiveness {
    fn is_alive(&self, pid: u32) -> bool {
        procfs::process_exists(pid)
    }
}

/// Where kernel counters come from: the real maps, or a script in tests.
pub trait CounterSource {
    fn node(&self) -> Result<NodeCounters, ProbeError>;
    fn node_frees(&self) -> Result<NodeFrees, ProbeError>;
    fn processes(&self) -> Result<Vec<(u32, ProcessCounters)>, ProbeError>;
    fn frees(&self) -> Result<Vec<(FreeKey, FreeCounters)>, ProbeError>;
    /// Forget processes in the kernel maps; `free_keys` are their keys in
    /// the free counters.
    fn forget(&mut self, pids: &HashSet<u32>, free_keys: &[FreeKey]);
}

impl CounterSource for ProbeMaps {
    fn node(&self) -> Result<NodeCounters, ProbeError> {
        let per_cpu = self.node.get(&0, 0).map_err(|source| ProbeError::Map { name: "NODE_COUNTERS", source })?;
        Ok(per_cpu.iter().fold(NodeCounters::default(), |mut sum, cpu| {
            sum.pte_pages_reclaimed += cpu.pte_pages_reclaimed;
            sum.dontneed_calls += cpu.dontneed_calls;
            sum.dontneed_bytes += cpu.dontneed_bytes;
            sum.process_map_update_failures += cpu.process_map_update_failures;
            sum.inflight_update_failures += cpu.inflight_update_failures;
            sum.approximate_calls += cpu.approximate_calls;
            sum.free_map_update_failures += cpu.free_map_update_failures;
            sum
        }))
    }

    fn node_frees(&self) -> Result<NodeFrees, ProbeError> {
        let per_cpu = self.node_frees.get(&0, 0).map_err(|source| ProbeError::Map { name: "NODE_FREES", source })?;
        Ok(per_cpu.iter().fold(NodeFrees::default(), |mut sum, cpu| {
            for (total, row) in sum.pages.iter_mut().zip(cpu.pages) {
                for (total, pages) in total.iter_mut().zip(row) {
                    *total += pages;
                }
            }
            sum
        }))
    }

    fn processes(&self) -> Result<Vec<(u32, ProcessCounters)>, ProbeError> {
        self.processes
            .iter()
            .map(|entry| entry.map_err(|source| ProbeError::Map { name: "PROCESS_COUNTERS", source }))
            .collect()
    }

    fn frees(&self) -> Result<Vec<(FreeKey, FreeCounters)>, ProbeError> {
        self.frees
            .iter()
            .map(|entry| entry.map_err(|source| ProbeError::Map { name: "PAGETABLE_FREES", source }))
            .collect()
    }

    fn forget(&mut self, pids: &HashSet<u32>, free_keys: &[FreeKey]) {
        // An absent key is fine: another harvest may have removed it.
        for pid in pids {
            let _ = self.processes.remove(pid);
        }
        for key in free_keys {
            let _ = self.frees.remove(key);
        }
    }
}

/// Keeps per-process records across harvests.
pub struct Aggregator<S, L = ProcLiveness> {
    source: S,
    liveness: L,
    exited_ttl: Duration,
    processes: BTreeMap<u32, ProcessRecord>,
}

impl<S: CounterSource> Aggregator<S> {
    pub fn new(source: S, exited_ttl: Duration) -> Self {
        Self::with_liveness(source, ProcLiveness, exited_ttl)
    }
}

impl<S: CounterSource, L: Liveness> Aggregator<S, L> {
    pub fn with_liveness(source: S, liveness: L, exited_ttl: Duration) -> Self {
        Self { source, liveness, exited_ttl, processes: BTreeMap::new() }
    }

    /// Read the kernel maps and bring the records up to date.
    pub fn harvest(&mut self, now: Instant) -> Result<Snapshot, ProbeError> {
        let node = self.source.node()?;
        let node_frees = self.source.node_frees()?;
        let counters = self.source.processes()?;
        let frees = self.source.frees()?;

        // Everything the kernel knows now, per pid.
        let mut current: BTreeMap<u32, ProcessRecord> = BTreeMap::new();
        for (pid, c) in &counters {
            let record = current.entry(*pid).or_insert_with(|| ProcessRecord::new(*pid, &c.comm));
            record.pte_pages_reclaimed = c.pte_pages_reclaimed;
            record.dontneed_calls = c.dontneed_calls;
            record.dontneed_bytes = c.dontneed_bytes;
        }
        for (key, value) in &frees {
            let record = current.entry(key.tgid).or_insert_with(|| ProcessRecord::new(key.tgid, &value.comm));
            record.frees.insert((key.cause, key.level), value.pages);
        }

        let mut gone = HashSet::new();
        for (pid, fresh) in current {
            let alive = self.liveness.is_alive(pid);
            let record = self.processes.entry(pid).or_insert_with(|| fresh.clone());
            if record.exited_at.is_some() && alive {
                // The pid was recycled after we saw the old process exit:
                // this is a new process.
                *record = fresh.clone();
            }
            let exited_at = record.exited_at;
            *record = ProcessRecord { exited_at, comm: std::mem::take(&mut record.comm), ..fresh };
            if !alive {
                record.exited_at.get_or_insert(now);
                gone.insert(pid);
            }
        }
        if !gone.is_empty() {
            let keys: Vec<FreeKey> = frees.iter().map(|(k, _)| *k).filter(|k| gone.contains(&k.tgid)).collect();
            self.source.forget(&gone, &keys);
        }
        // Records whose kernel entries are gone (released at an earlier
        // harvest, or evicted): check they are still alive.
        let in_kernel: HashSet<u32> =
            counters.iter().map(|(pid, _)| *pid).chain(frees.iter().map(|(k, _)| k.tgid)).collect();
        for record in self.processes.values_mut() {
            if record.exited_at.is_none() && !in_kernel.contains(&record.pid) && !self.liveness.is_alive(record.pid) {
                record.exited_at = Some(now);
            }
        }
        let ttl = self.exited_ttl;
        self.processes.retain(|_, record| record.exited_at.is_none_or(|at| now.saturating_duration_since(at) < ttl));
        Ok(Snapshot { node, node_frees, processes: self.processes.values().cloned().collect() })
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    #[derive(Default)]
    struct Script {
        node: NodeCounters,
        processes: BTreeMap<u32, ProcessCounters>,
        frees: BTreeMap<(u32, u32, u32), u64>,
        forgotten: Vec<u32>,
    }

    #[derive(Clone, Default)]
    struct Shared(Rc<RefCell<Script>>);

    impl CounterSource for Shared {
        fn node(&self) -> Result<NodeCounters, ProbeError> {
            Ok(self.0.borrow().node)
        }
        fn node_frees(&self) -> Result<NodeFrees, ProbeError> {
            Ok(NodeFrees::default())
        }
        fn processes(&self) -> Result<Vec<(u32, ProcessCounters)>, ProbeError> {
            Ok(self.0.borrow().processes.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn frees(&self) -> Result<Vec<(FreeKey, FreeCounters)>, ProbeError> {
            let script = self.0.borrow();
            Ok(script
                .frees
                .iter()
                .map(|((tgid, cause, level), pages)| {
                    let key = FreeKey { tgid: *tgid, cause: *cause, level: *level, _pad: 0 };
                    let mut comm = [0; 16];
                    comm[..4].copy_from_slice(b"free");
                    (key, FreeCounters { pages: *pages, comm })
                })
                .collect())
        }
        fn forget(&mut self, pids: &HashSet<u32>, free_keys: &[FreeKey]) {
            let mut script = self.0.borrow_mut();
            for pid in pids {
                script.processes.remove(pid);
                script.forgotten.push(*pid);
            }
            for key in free_keys {
                script.frees.remove(&(key.tgid, key.cause, key.level));
            }
        }
    }

    #[derive(Clone, Default)]
    struct Alive(Rc<RefCell<HashSet<u32>>>);

    impl Liveness for Alive {
        fn is_alive(&self, pid: u32) -> bool {
            self.0.borrow().contains(&pid)
        }
    }

    fn counters(reclaimed: u64, comm: &[u8]) -> ProcessCounters {
        let mut c = ProcessCounters {
            pte_pages_reclaimed: reclaimed,
            dontneed_calls: 1,
            dontneed_bytes: 4096,
            ..Default::default()
        };
        c.comm[..comm.len()].copy_from_slice(comm);
        c
    }

    #[test]
    fn live_processes_are_reported_with_kernel_counts() {
        let source = Shared::default();
        let alive = Alive::default();
        alive.0.borrow_mut().insert(10);
        source.0.borrow_mut().processes.insert(10, counters(512, b"worker"));
        source.0.borrow_mut().node.pte_pages_reclaimed = 600;
        let mut agg = Aggregator::with_liveness(source.clone(), alive, Duration::from_secs(60));
        let snap = agg.harvest(Instant::now()).unwrap();
        assert_eq!(snap.node.pte_pages_reclaimed, 600);
        assert_eq!(snap.processes.len(), 1);
        assert_eq!(snap.processes[0].pte_pages_reclaimed, 512);
        assert_eq!(snap.processes[0].comm, "worker");
        assert!(source.0.borrow().forgotten.is_empty());
    }

    #[test]
    fn exited_processes_stay_for_the_ttl_then_go() {
        let source = Shared::default();
        let alive = Alive::default();
        source.0.borrow_mut().processes.insert(20, counters(7, b"short"));
        let mut agg = Aggregator::with_liveness(source.clone(), alive, Duration::from_secs(30));
        let t0 = Instant::now();
        let snap = agg.harvest(t0).unwrap();
        // Exited before the first harvest: still exported with its counts,
        // and its kernel entry is released at once.
        assert_eq!(snap.processes[0].pte_pages_reclaimed, 7);
        assert!(snap.processes[0].exited_at.is_some());
        assert_eq!(source.0.borrow().forgotten, vec![20]);
        let snap = agg.harvest(t0 + Duration::from_secs(29)).unwrap();
        assert_eq!(snap.processes.len(), 1, "kept within the TTL");
        let snap = agg.harvest(t0 + Duration::from_secs(31)).unwrap();
        assert!(snap.processes.is_empty(), "dropped after the TTL");
    }

    #[test]
    fn a_recycled_pid_starts_a_new_record() {
        let source = Shared::default();
        let alive = Alive::default();
        source.0.borrow_mut().processes.insert(30, counters(100, b"old"));
        let mut agg = Aggregator::with_liveness(source.clone(), alive.clone(), Duration::from_secs(300));
        let t0 = Instant::now();
        agg.harvest(t0).unwrap();
        // A new process gets pid 30 and reclaims 3 pages.
        alive.0.borrow_mut().insert(30);
        source.0.borrow_mut().processes.insert(30, counters(3, b"new"));
        let snap = agg.harvest(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(snap.processes.len(), 1);
        assert_eq!(snap.processes[0].comm, "new");
        assert_eq!(snap.processes[0].pte_pages_reclaimed, 3);
        assert!(snap.processes[0].exited_at.is_none());
    }

    #[test]
    fn frees_join_the_process_record_and_are_released_with_it() {
        let source = Shared::default();
        let alive = Alive::default();
        alive.0.borrow_mut().insert(50);
        source.0.borrow_mut().processes.insert(50, counters(2, b"both"));
        source.0.borrow_mut().frees.insert((50, 0, 0), 2);
        source.0.borrow_mut().frees.insert((50, 2, 1), 5);
        // A process that only freed tables (e.g. it exited) gets a record too.
        source.0.borrow_mut().frees.insert((51, 2, 0), 9);
        let mut agg = Aggregator::with_liveness(source.clone(), alive, Duration::from_secs(10));
        let snap = agg.harvest(Instant::now()).unwrap();
        assert_eq!(snap.processes.len(), 2);
        assert_eq!(snap.processes[0].comm, "both");
        assert_eq!(snap.processes[0].frees.get(&(2, 1)), Some(&5));
        assert_eq!(snap.processes[1].comm, "free");
        assert_eq!(snap.processes[1].frees.get(&(2, 0)), Some(&9));
        assert!(snap.processes[1].exited_at.is_some());
        // 51 exited: its free entries were released.
        assert!(source.0.borrow().frees.keys().all(|(tgid, _, _)| *tgid == 50));
    }

    #[test]
    fn a_process_that_exits_later_is_noticed() {
        let source = Shared::default();
        let alive = Alive::default();
        alive.0.borrow_mut().insert(40);
        source.0.borrow_mut().processes.insert(40, counters(9, b"later"));
        let mut agg = Aggregator::with_liveness(source.clone(), alive.clone(), Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(agg.harvest(t0).unwrap().processes[0].exited_at.is_none());
        alive.0.borrow_mut().remove(&40);
        let snap = agg.harvest(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(snap.processes[0].pte_pages_reclaimed, 9);
        assert!(snap.processes[0].exited_at.is_some());
        assert_eq!(source.0.borrow().forgotten, vec![40]);
    }
}
