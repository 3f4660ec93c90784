//! From kernel maps to a consistent picture of processes.
//!
//! The kernel keeps cumulative counters per live tgid. [`Aggregator::harvest`]
//! reads them, notices processes that have exited, keeps their final counts
//! for a configurable time (so a short-lived process is still scraped at
//! least once) and then forgets them, deleting their kernel map entries so
//! the maps stay small and a recycled pid starts from zero.
//!
//! Each record also carries its cgroup (resolved from the id the kernel
//! captured at the first event, see [`cgroup`]), and the per-cgroup totals
//! sum the records of each cgroup plus those already dropped, so that a
//! cgroup's counters never fall when its processes exit and expire.

pub mod cgroup;
pub mod host;

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use ptwatch_common::{FreeCounters, FreeKey, NodeCounters, NodeFrees, ProcessCounters};

pub use self::{
    cgroup::CgroupLabels,
    host::{Host, SystemHost},
};
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
    /// cgroup v2 id the kernel captured at the process' first counted event
    /// (0: none, e.g. a process seen only through page-table frees).
    pub cgroup_id: u64,
    /// The process' cgroup, container and pod; empty until resolved.
    pub cgroup: CgroupLabels,
    /// `VmPTE` in bytes while the process lives; None once it exited.
    pub pagetable_bytes: Option<u64>,
}

impl ProcessRecord {
    pub fn new(pid: u32, comm: &[u8]) -> Self {
        Self {
            pid,
            comm: procfs::comm_to_string(comm),
            pte_pages_reclaimed: 0,
            dontneed_calls: 0,
            dontneed_bytes: 0,
            frees: BTreeMap::new(),
            exited_at: None,
            cgroup_id: 0,
            cgroup: CgroupLabels::default(),
            pagetable_bytes: None,
        }
    }
}

/// The counters of one cgroup: every process ever recorded in it, including
/// those whose records expired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupRecord {
    pub labels: CgroupLabels,
    pub pte_pages_reclaimed: u64,
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    pub frees: BTreeMap<(u32, u32), u64>,
    /// `pagetables` of the cgroup's `memory.stat` (bytes), when it has
    /// tracked processes and the v2 memory controller.
    pub pagetable_bytes: Option<u64>,
}

impl CgroupRecord {
    fn add(&mut self, process: &ProcessRecord) {
        self.pte_pages_reclaimed += process.pte_pages_reclaimed;
        self.dontneed_calls += process.dontneed_calls;
        self.dontneed_bytes += process.dontneed_bytes;
        for (key, pages) in &process.frees {
            *self.frees.entry(*key).or_default() += pages;
        }
    }
}

/// Counts of expired records of one cgroup.
struct Retired {
    totals: CgroupRecord,
    /// Last harvest at which the cgroup existed or had records: the totals
    /// of a removed cgroup go after the TTL, like a process' series.
    last_seen: Instant,
}

/// Everything a scrape exports about the kernel side.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub node: NodeCounters,
    pub node_frees: NodeFrees,
    pub processes: Vec<ProcessRecord>,
    /// Per-cgroup totals, for every known cgroup of a record (live or
    /// expired); processes without a cgroup are in none.
    pub cgroups: Vec<CgroupRecord>,
    /// `PageTables` of `/proc/meminfo`, bytes.
    pub node_pagetable_bytes: Option<u64>,
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
pub struct Aggregator<S, L = ProcLiveness, H = SystemHost> {
    source: S,
    liveness: L,
    host: H,
    exited_ttl: Duration,
    processes: BTreeMap<u32, ProcessRecord>,
    /// Counts of expired records, by cgroup path.
    retired: BTreeMap<String, Retired>,
}

impl<S: CounterSource> Aggregator<S> {
    pub fn new(source: S, exited_ttl: Duration) -> Self {
        Self::with_liveness(source, ProcLiveness, exited_ttl)
    }
}

impl<S: CounterSource, L: Liveness> Aggregator<S, L> {
    pub fn with_liveness(source: S, liveness: L, exited_ttl: Duration) -> Self {
        Self::with_host(source, liveness, SystemHost::detect(), exited_ttl)
    }
}

impl<S: CounterSource, L: Liveness, H: Host> Aggregator<S, L, H> {
    pub fn with_host(source: S, liveness: L, host: H, exited_ttl: Duration) -> Self {
        Self { source, liveness, host, exited_ttl, processes: BTreeMap::new(), retired: BTreeMap::new() }
    }

    /// Keep the counts of a record that is going away in its cgroup's total.
    fn retire(&mut self, record: &ProcessRecord, now: Instant) {
        if !record.cgroup.is_known() {
            return;
        }
        let retired = self.retired.entry(record.cgroup.path.clone()).or_insert_with(|| Retired {
            totals: CgroupRecord { labels: record.cgroup.clone(), ..CgroupRecord::default() },
            last_seen: now,
        });
        retired.totals.add(record);
        retired.last_seen = now;
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
            record.cgroup_id = c.cgroup_id;
        }
        for (key, value) in &frees {
            let record = current.entry(key.tgid).or_insert_with(|| ProcessRecord::new(key.tgid, &value.comm));
            record.frees.insert((key.cause, key.level), value.pages);
        }

        let mut gone = HashSet::new();
        for (pid, fresh) in current {
            let alive = self.liveness.is_alive(pid);
            if alive {
                if let Some(old) = self.processes.remove(&pid) {
                    if old.exited_at.is_some() {
                        // The pid was recycled after we saw the old process
                        // exit: this is a new process; the old one's counts
                        // stay in its cgroup's total.
                        self.retire(&old, now);
                    } else {
                        self.processes.insert(pid, old);
                    }
                }
            }
            let record = self.processes.entry(pid).or_insert_with(|| fresh.clone());
            let exited_at = record.exited_at;
            // comm and cgroup are what the process had when first seen.
            let cgroup = std::mem::take(&mut record.cgroup);
            *record = ProcessRecord { exited_at, comm: std::mem::take(&mut record.comm), cgroup, ..fresh };
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
        self.attribute(now);
        let ttl = self.exited_ttl;
        let expired: Vec<u32> = self
            .processes
            .values()
            .filter(|record| record.exited_at.is_some_and(|at| now.saturating_duration_since(at) >= ttl))
            .map(|record| record.pid)
            .collect();
        for pid in expired {
            if let Some(record) = self.processes.remove(&pid) {
                self.retire(&record, now);
            }
        }
        let cgroups = self.cgroup_totals(now);
        Ok(Snapshot {
            node,
            node_frees,
            processes: self.processes.values().cloned().collect(),
            cgroups,
            node_pagetable_bytes: self.host.node_pagetable_bytes(),
        })
    }

    /// Resolve the cgroup of records that have none yet, and read the
    /// page-table memory of the live ones.
    fn attribute(&mut self, now: Instant) {
        for record in self.processes.values_mut() {
            let alive = record.exited_at.is_none();
            if !record.cgroup.is_known() {
                // The id captured in the kernel is right even after the
                // process is gone; /proc only helps while it lives.
                let path = match record.cgroup_id {
                    0 if alive => self.host.cgroup_of_pid(record.pid),
                    0 => None,
                    id => self.host.cgroup_path(id, now).or_else(|| {
                        if alive {
                            self.host.cgroup_of_pid(record.pid)
                        } else {
                            None
                        }
                    }),
                };
                if let Some(path) = path {
                    record.cgroup = CgroupLabels::from_path(&path);
                }
            }
            record.pagetable_bytes = if alive { self.host.process_pagetable_bytes(record.pid) } else { None };
        }
    }

    /// Per-cgroup totals: expired records plus current ones. Totals of a
    /// cgroup with no records left stay while its directory exists, and for
    /// the TTL after it was removed.
    fn cgroup_totals(&mut self, now: Instant) -> Vec<CgroupRecord> {
        let mut totals: BTreeMap<String, CgroupRecord> = BTreeMap::new();
        for record in self.processes.values().filter(|r| r.cgroup.is_known()) {
            totals
                .entry(record.cgroup.path.clone())
                .or_insert_with(|| CgroupRecord { labels: record.cgroup.clone(), ..CgroupRecord::default() })
                .add(record);
        }
        // memory.stat only for cgroups with tracked processes: a removed
        // cgroup has none, and reading every old one would cost a file each.
        for total in totals.values_mut() {
            total.pagetable_bytes = self.host.cgroup_pagetable_bytes(&total.labels.path);
        }
        let ttl = self.exited_ttl;
        let host = &self.host;
        self.retired.retain(|path, retired| {
            if totals.contains_key(path) || host.cgroup_exists(path) {
                retired.last_seen = now;
            }
            now.saturating_duration_since(retired.last_seen) < ttl
        });
        for (path, retired) in &self.retired {
            let total = totals
                .entry(path.clone())
                .or_insert_with(|| CgroupRecord { labels: retired.totals.labels.clone(), ..CgroupRecord::default() });
            total.pte_pages_reclaimed += retired.totals.pte_pages_reclaimed;
            total.dontneed_calls += retired.totals.dontneed_calls;
            total.dontneed_bytes += retired.totals.dontneed_bytes;
            for (key, pages) in &retired.totals.frees {
                *total.frees.entry(*key).or_default() += pages;
            }
        }
        totals.into_values().collect()
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

    /// The host as the tests script it.
    #[derive(Default)]
    struct Machine {
        /// cgroup id → path (directories that exist).
        ids: BTreeMap<u64, String>,
        /// Live pid → cgroup path (`/proc/<pid>/cgroup`).
        pids: BTreeMap<u32, String>,
        vmpte: BTreeMap<u32, u64>,
        memory_stat: BTreeMap<String, u64>,
        node: Option<u64>,
    }

    #[derive(Clone, Default)]
    struct FakeHost(Rc<RefCell<Machine>>);

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

    fn aggregator(source: Shared, alive: Alive, ttl: Duration) -> Aggregator<Shared, Alive, FakeHost> {
        Aggregator::with_host(source, alive, FakeHost::default(), ttl)
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
        let mut agg = aggregator(source.clone(), alive, Duration::from_secs(60));
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
        let mut agg = aggregator(source.clone(), alive, Duration::from_secs(30));
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
        let mut agg = aggregator(source.clone(), alive.clone(), Duration::from_secs(300));
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
        let mut agg = aggregator(source.clone(), alive, Duration::from_secs(10));
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
        let mut agg = aggregator(source.clone(), alive.clone(), Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(agg.harvest(t0).unwrap().processes[0].exited_at.is_none());
        alive.0.borrow_mut().remove(&40);
        let snap = agg.harvest(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(snap.processes[0].pte_pages_reclaimed, 9);
        assert!(snap.processes[0].exited_at.is_some());
        assert_eq!(source.0.borrow().forgotten, vec![40]);
    }

    const POD: &str =
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8d2f3c1e_5b7a_4e0f_9a61_2c3d4e5f6a7b.slice";
    const CONTAINER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn in_cgroup(reclaimed: u64, comm: &[u8], cgroup_id: u64) -> ProcessCounters {
        ProcessCounters { cgroup_id, ..counters(reclaimed, comm) }
    }

    fn container_path() -> String {
        format!("{POD}/cri-containerd-{CONTAINER}.scope")
    }

    #[test]
    fn the_cgroup_captured_in_the_kernel_labels_an_exited_process() {
        let (source, alive, host) = (Shared::default(), Alive::default(), FakeHost::default());
        host.0.borrow_mut().ids.insert(77, container_path());
        source.0.borrow_mut().processes.insert(60, in_cgroup(4, b"short", 77));
        let mut agg = Aggregator::with_host(source, alive, host, Duration::from_secs(60));
        let snap = agg.harvest(Instant::now()).unwrap();
        let record = &snap.processes[0];
        assert!(record.exited_at.is_some());
        assert_eq!(record.cgroup_id, 77);
        assert_eq!(record.cgroup.path, container_path());
        assert_eq!(record.cgroup.container_id, CONTAINER);
        assert_eq!(record.cgroup.pod_uid, "8d2f3c1e-5b7a-4e0f-9a61-2c3d4e5f6a7b");
        assert_eq!(record.pagetable_bytes, None, "no VmPTE for an exited process");
    }

    #[test]
    fn without_a_kernel_id_the_cgroup_comes_from_proc_while_the_process_lives() {
        let (source, alive, host) = (Shared::default(), Alive::default(), FakeHost::default());
        alive.0.borrow_mut().insert(70);
        host.0.borrow_mut().pids.insert(70, "/system.slice/cron.service".into());
        host.0.borrow_mut().vmpte.insert(70, 81920);
        // Seen through frees only: no kernel cgroup id.
        source.0.borrow_mut().frees.insert((70, 1, 0), 3);
        source.0.borrow_mut().frees.insert((71, 2, 0), 5);
        let mut agg = Aggregator::with_host(source, alive, host, Duration::from_secs(60));
        let snap = agg.harvest(Instant::now()).unwrap();
        assert_eq!(snap.processes[0].cgroup.path, "/system.slice/cron.service");
        assert_eq!(snap.processes[0].cgroup.container_id, "");
        assert_eq!(snap.processes[0].pagetable_bytes, Some(81920));
        // 71 had exited: nothing to ask, no label.
        assert!(!snap.processes[1].cgroup.is_known());
        assert_eq!(snap.cgroups.len(), 1, "unknown cgroups have no totals");
        assert_eq!(snap.cgroups[0].frees.get(&(1, 0)), Some(&3));
    }

    #[test]
    fn an_id_resolved_later_still_labels_the_record() {
        let (source, alive, host) = (Shared::default(), Alive::default(), FakeHost::default());
        alive.0.borrow_mut().insert(72);
        source.0.borrow_mut().processes.insert(72, in_cgroup(1, b"late", 5));
        let mut agg = Aggregator::with_host(source, alive, host.clone(), Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(!agg.harvest(t0).unwrap().processes[0].cgroup.is_known());
        host.0.borrow_mut().ids.insert(5, "/system.slice/late.service".into());
        let snap = agg.harvest(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(snap.processes[0].cgroup.path, "/system.slice/late.service");
    }

    #[test]
    fn cgroup_totals_sum_processes_and_survive_their_exit_and_ttl() {
        let (source, alive, host) = (Shared::default(), Alive::default(), FakeHost::default());
        host.0.borrow_mut().ids.insert(9, container_path());
        host.0.borrow_mut().ids.insert(10, "/other".into());
        host.0.borrow_mut().memory_stat.insert(container_path(), 123 * 4096);
        host.0.borrow_mut().node = Some(999 * 4096);
        alive.0.borrow_mut().extend([80, 81]);
        source.0.borrow_mut().processes.insert(80, in_cgroup(32, b"a", 9));
        source.0.borrow_mut().processes.insert(81, in_cgroup(16, b"b", 9));
        source.0.borrow_mut().processes.insert(82, in_cgroup(100, b"c", 10));
        source.0.borrow_mut().frees.insert((80, 0, 0), 32);
        source.0.borrow_mut().frees.insert((81, 0, 0), 16);
        let mut agg = Aggregator::with_host(source.clone(), alive.clone(), host.clone(), Duration::from_secs(30));
        let t0 = Instant::now();
        let snap = agg.harvest(t0).unwrap();
        assert_eq!(snap.node_pagetable_bytes, Some(999 * 4096));
        let total = snap.cgroups.iter().find(|c| c.labels.path == container_path()).unwrap();
        assert_eq!((total.pte_pages_reclaimed, total.dontneed_calls, total.dontneed_bytes), (48, 2, 8192));
        assert_eq!(total.frees.get(&(0, 0)), Some(&48));
        assert_eq!(total.labels.container_id, CONTAINER);
        assert_eq!(total.pagetable_bytes, Some(123 * 4096));
        let other = snap.cgroups.iter().find(|c| c.labels.path == "/other").unwrap();
        assert_eq!(other.pte_pages_reclaimed, 100);
        assert_eq!(other.pagetable_bytes, None, "no memory.stat: no value");

        // Both exit; after the TTL their records go, the totals stay.
        alive.0.borrow_mut().clear();
        agg.harvest(t0 + Duration::from_secs(1)).unwrap();
        let snap = agg.harvest(t0 + Duration::from_secs(40)).unwrap();
        assert!(snap.processes.is_empty());
        let total = snap.cgroups.iter().find(|c| c.labels.path == container_path()).unwrap();
        assert_eq!((total.pte_pages_reclaimed, total.dontneed_calls), (48, 2));
        assert_eq!(total.frees.get(&(0, 0)), Some(&48));
        assert_eq!(total.pagetable_bytes, None, "no tracked process left: no memory.stat");

        // A new process in the same cgroup adds to the total.
        alive.0.borrow_mut().insert(83);
        source.0.borrow_mut().processes.insert(83, in_cgroup(2, b"d", 9));
        let snap = agg.harvest(t0 + Duration::from_secs(41)).unwrap();
        let total = snap.cgroups.iter().find(|c| c.labels.path == container_path()).unwrap();
        assert_eq!(total.pte_pages_reclaimed, 50);

        // The cgroup is removed: its totals go one TTL after its last record
        // expired (83's, at the harvest of t0 + 100 s).
        alive.0.borrow_mut().clear();
        host.0.borrow_mut().ids.clear();
        agg.harvest(t0 + Duration::from_secs(42)).unwrap();
        let snap = agg.harvest(t0 + Duration::from_secs(100)).unwrap();
        assert!(snap.processes.is_empty());
        assert_eq!(snap.cgroups.len(), 1, "/other went a TTL after its removal: {:?}", snap.cgroups);
        assert_eq!(snap.cgroups[0].pte_pages_reclaimed, 50);
        let snap = agg.harvest(t0 + Duration::from_secs(131)).unwrap();
        assert!(snap.cgroups.is_empty(), "{:?}", snap.cgroups);
    }

    #[test]
    fn a_recycled_pid_keeps_the_old_process_in_its_cgroup_total() {
        let (source, alive, host) = (Shared::default(), Alive::default(), FakeHost::default());
        host.0.borrow_mut().ids.insert(3, "/a".into());
        source.0.borrow_mut().processes.insert(90, in_cgroup(10, b"old", 3));
        let mut agg = Aggregator::with_host(source.clone(), alive.clone(), host, Duration::from_secs(300));
        let t0 = Instant::now();
        agg.harvest(t0).unwrap();
        alive.0.borrow_mut().insert(90);
        source.0.borrow_mut().processes.insert(90, in_cgroup(1, b"new", 3));
        let snap = agg.harvest(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(snap.processes.len(), 1);
        assert_eq!(snap.processes[0].pte_pages_reclaimed, 1);
        assert_eq!(snap.processes[0].cgroup.path, "/a");
        assert_eq!(snap.cgroups[0].pte_pages_reclaimed, 11);
    }
}
