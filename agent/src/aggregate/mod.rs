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
//!
//! Only some processes get series of their own ([`selection`]); the others,
//! and the records that expired, are summed into one `other` record per
//! harvest, so that per-process cardinality is bounded and sums stay exact.

mod batch;
pub mod cgroup;
pub mod host;
mod legacy;
pub mod selection;

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

pub use self::legacy::{FreeCounters, FreeKey, NodeCounters, NodeFrees, ProcessCounters};

pub use self::{
    cgroup::CgroupLabels,
    host::{Host, SystemHost},
    selection::{Counts, Folded, RankBy, Selection},
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
    /// The last `VmPTE` read (bytes), kept after exit to rank the record.
    pub last_pagetable_bytes: u64,
    /// The process has its own series ([`selection`]).
    pub selected: bool,
    /// Counters when it was selected: its own series count from there.
    pub baseline: Counts,
}

impl ProcessRecord {
    /// What the process' own series show: its counters since selection.
    pub fn own_pte_pages_reclaimed(&self) -> u64 {
        self.pte_pages_reclaimed.saturating_sub(self.baseline.pte_pages_reclaimed)
    }
    pub fn own_dontneed_calls(&self) -> u64 {
        self.dontneed_calls.saturating_sub(self.baseline.dontneed_calls)
    }
    pub fn own_dontneed_bytes(&self) -> u64 {
        self.dontneed_bytes.saturating_sub(self.baseline.dontneed_bytes)
    }
    pub fn own_frees(&self, key: (u32, u32), pages: u64) -> u64 {
        pages.saturating_sub(self.baseline.frees.get(&key).copied().unwrap_or(0))
    }
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
            last_pagetable_bytes: 0,
            selected: false,
            baseline: Counts::default(),
        }
    }
}

/// What the kernel maps hold for one pid at a harvest.
struct Fresh {
    comm: [u8; ptwatch_common::COMM_LEN],
    pte_pages_reclaimed: u64,
    dontneed_calls: u64,
    dontneed_bytes: u64,
    cgroup_id: u64,
    frees: BTreeMap<(u32, u32), u64>,
}

impl Fresh {
    fn new(comm: [u8; ptwatch_common::COMM_LEN]) -> Self {
        Self {
            comm,
            pte_pages_reclaimed: 0,
            dontneed_calls: 0,
            dontneed_bytes: 0,
            cgroup_id: 0,
            frees: BTreeMap::new(),
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

/// Entries and capacity of one kernel hash map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUsage {
    pub name: &'static str,
    pub entries: u64,
    pub max_entries: u64,
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
    /// The maps read at harvest: entries left once exited processes were
    /// released.
    pub maps: Vec<MapUsage>,
    /// Everything not in a selected process' own series.
    pub folded: Folded,
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
    /// Capacity of the process and free maps (fixed when they are created).
    fn max_entries(&self) -> MapCapacity;
}

/// Capacity of the maps a [`CounterSource`] reads, as the kernel reports
/// it (None if it cannot be asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapCapacity {
    pub processes: Option<u32>,
    pub frees: Option<u32>,
}

impl CounterSource for ProbeMaps {
    fn node(&self) -> Result<NodeCounters, ProbeError> {
        Ok(legacy::node_from(&self.node_v2()?).0)
    }

    fn node_frees(&self) -> Result<NodeFrees, ProbeError> {
        Ok(legacy::node_from(&self.node_v2()?).1)
    }

    fn processes(&self) -> Result<Vec<(u32, ProcessCounters)>, ProbeError> {
        let entries =
            batch::entries(&self.processes).map_err(|source| ProbeError::Map { name: "PROCESS_COUNTERS", source })?;
        Ok(entries.iter().map(|(key, value)| (key.tgid, legacy::process_from(value))).collect())
    }

    fn frees(&self) -> Result<Vec<(FreeKey, FreeCounters)>, ProbeError> {
        let entries =
            batch::entries(&self.processes).map_err(|source| ProbeError::Map { name: "PROCESS_COUNTERS", source })?;
        Ok(entries.iter().flat_map(|(key, value)| legacy::frees_from(key.tgid, value)).collect())
    }

    fn forget(&mut self, pids: &HashSet<u32>, _free_keys: &[FreeKey]) {
        let keys: Vec<ptwatch_common::ProcessKey> =
            self.processes.keys().filter_map(Result::ok).filter(|k| pids.contains(&k.tgid)).collect();
        for key in keys {
            let _ = self.processes.remove(&key);
        }
    }

    fn max_entries(&self) -> MapCapacity {
        use aya::maps::IterableMap as _;
        let max = |map: &aya::maps::MapData| map.info().ok().map(|info| info.max_entries());
        MapCapacity { processes: max(self.processes.map()), frees: None }
    }
}

impl ProbeMaps {
    fn node_v2(&self) -> Result<ptwatch_common::NodeCounters, ProbeError> {
        let per_cpu = self.node.get(&0, 0).map_err(|source| ProbeError::Map { name: "NODE_COUNTERS", source })?;
        Ok(per_cpu.iter().fold(ptwatch_common::NodeCounters::default(), |mut sum, cpu| {
            sum.dontneed_calls += cpu.dontneed_calls;
            sum.dontneed_bytes += cpu.dontneed_bytes;
            sum.frees.add(&cpu.frees);
            sum.process_map_overflows += cpu.process_map_overflows;
            sum.context_update_failures += cpu.context_update_failures;
            sum.approximate_calls += cpu.approximate_calls;
            sum.unowned_frees += cpu.unowned_frees;
            sum
        }))
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
    capacity: MapCapacity,
    selection: Selection,
    /// Whole counts of records that are gone (expired, or pid recycled).
    folded_retired: Counts,
    /// `memory.stat` pagetables by cgroup path, as the last full harvest
    /// (or, for a cgroup new since, the first harvest that had it) read it.
    cgroup_pagetable_bytes: BTreeMap<String, Option<u64>>,
}

/// What a harvest asks the host (`/proc`, cgroupfs) about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostReads {
    /// Every record and cgroup.
    All,
    /// Records seen for the first time, cgroups not read before.
    NewRecords,
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
        let capacity = source.max_entries();
        Self {
            source,
            liveness,
            host,
            exited_ttl,
            processes: BTreeMap::new(),
            retired: BTreeMap::new(),
            capacity,
            selection: Selection::default(),
            folded_retired: Counts::default(),
            cgroup_pagetable_bytes: BTreeMap::new(),
        }
    }

    /// Which processes get their own series (default: [`Selection::default`]).
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// Keep the counts of a record that is going away in `other` and in its
    /// cgroup's total.
    fn retire(&mut self, record: &ProcessRecord, now: Instant) {
        self.folded_retired.add_record(record);
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

    /// Read the kernel maps and bring the records up to date, asking the
    /// host about every record: liveness, `VmPTE`, cgroup `memory.stat`.
    pub fn harvest(&mut self, now: Instant) -> Result<Snapshot, ProbeError> {
        self.harvest_with(now, HostReads::All)
    }

    /// Read the kernel maps and bring the counters up to date, asking the
    /// host only about records seen for the first time. What the host says
    /// about known records (liveness, `VmPTE`, `memory.stat`) stays as the
    /// last [`Self::harvest`] found it: a scrape reads only the kernel maps,
    /// whose cost is one lookup per process, while the `/proc` reads, which
    /// cost an order of magnitude more, stay on the periodic harvest.
    /// Counters (and so every sum with `other`) are as exact as with
    /// [`Self::harvest`]; an exit is noticed at the next full harvest.
    pub fn harvest_counters(&mut self, now: Instant) -> Result<Snapshot, ProbeError> {
        self.harvest_with(now, HostReads::NewRecords)
    }

    fn harvest_with(&mut self, now: Instant, reads: HostReads) -> Result<Snapshot, ProbeError> {
        let full = reads == HostReads::All;
        let node = self.source.node()?;
        let node_frees = self.source.node_frees()?;
        let counters = self.source.processes()?;
        let frees = self.source.frees()?;

        // Everything the kernel knows now, per pid. A record is built only
        // for a pid seen for the first time: a scrape of thousands of known
        // processes then allocates nothing per process.
        let mut current: BTreeMap<u32, Fresh> = BTreeMap::new();
        for (pid, c) in &counters {
            let fresh = current.entry(*pid).or_insert_with(|| Fresh::new(c.comm));
            fresh.pte_pages_reclaimed = c.pte_pages_reclaimed;
            fresh.dontneed_calls = c.dontneed_calls;
            fresh.dontneed_bytes = c.dontneed_bytes;
            fresh.cgroup_id = c.cgroup_id;
        }
        for (key, value) in &frees {
            let fresh = current.entry(key.tgid).or_insert_with(|| Fresh::new(value.comm));
            fresh.frees.insert((key.cause, key.level), value.pages);
        }

        let mut gone = HashSet::new();
        let mut released_free_keys = 0;
        let mut new = HashSet::new();
        for (pid, fresh) in current {
            // A known live record is still alive until a full harvest says
            // otherwise; new and exited ones are always checked, since a
            // recycled pid must not add to the old process' record.
            let known_alive = self.processes.get(&pid).is_some_and(|r| r.exited_at.is_none());
            let alive = (known_alive && !full) || self.liveness.is_alive(pid);
            if self.processes.get(&pid).is_some_and(|old| old.exited_at.is_some()) {
                // The old process' kernel entries were released when its
                // exit was noticed, so these counts are a new process' on
                // a recycled pid (alive or already gone too); the old
                // one's counts stay in `other` and its cgroup's total.
                if let Some(old) = self.processes.remove(&pid) {
                    self.retire(&old, now);
                }
            }
            let record = self.processes.entry(pid).or_insert_with(|| {
                new.insert(pid);
                ProcessRecord::new(pid, &fresh.comm)
            });
            // comm and cgroup are what the process had when first seen; the
            // counters are the kernel's now, the rest is the aggregator's own.
            record.pte_pages_reclaimed = fresh.pte_pages_reclaimed;
            record.dontneed_calls = fresh.dontneed_calls;
            record.dontneed_bytes = fresh.dontneed_bytes;
            record.cgroup_id = fresh.cgroup_id;
            record.frees = fresh.frees;
            if !alive {
                record.exited_at.get_or_insert(now);
                gone.insert(pid);
            }
        }
        if !gone.is_empty() {
            let keys: Vec<FreeKey> = frees.iter().map(|(k, _)| *k).filter(|k| gone.contains(&k.tgid)).collect();
            released_free_keys = keys.len();
            self.source.forget(&gone, &keys);
        }
        // Records whose kernel entries are gone (released at an earlier
        // harvest, or evicted): check they are still alive.
        let in_kernel: HashSet<u32> =
            counters.iter().map(|(pid, _)| *pid).chain(frees.iter().map(|(k, _)| k.tgid)).collect();
        if full {
            for record in self.processes.values_mut() {
                if record.exited_at.is_none() && !in_kernel.contains(&record.pid) && !self.liveness.is_alive(record.pid)
                {
                    record.exited_at = Some(now);
                }
            }
        }
        self.attribute(now, if full { None } else { Some(&new) });
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
        self.selection.apply(&mut self.processes, &new);
        let folded = selection::folded(&self.folded_retired, self.processes.values());
        let cgroups = self.cgroup_totals(now, full);
        let process_entries = counters.iter().filter(|(pid, _)| !gone.contains(pid)).count();
        let maps = [
            (ptwatch_common::names::PROCESS_COUNTERS, process_entries, self.capacity.processes),
            (ptwatch_common::names::OVERFLOW_COUNTERS, frees.len() - released_free_keys, self.capacity.frees),
        ]
        .into_iter()
        .filter_map(|(name, entries, max)| {
            Some(MapUsage { name, entries: entries as u64, max_entries: u64::from(max?) })
        })
        .collect();
        Ok(Snapshot {
            node,
            node_frees,
            processes: self.processes.values().cloned().collect(),
            cgroups,
            node_pagetable_bytes: self.host.node_pagetable_bytes(),
            maps,
            folded,
        })
    }

    /// Resolve the cgroup of records that have none yet, and read the
    /// page-table memory of the live ones (of those in `only`, if given).
    fn attribute(&mut self, now: Instant, only: Option<&HashSet<u32>>) {
        for record in self.processes.values_mut() {
            if only.is_some_and(|only| !only.contains(&record.pid)) {
                continue;
            }
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
            if let Some(bytes) = record.pagetable_bytes {
                record.last_pagetable_bytes = bytes;
            }
        }
    }

    /// Per-cgroup totals: expired records plus current ones. Totals of a
    /// cgroup with no records left stay while its directory exists, and for
    /// the TTL after it was removed. With `full` false, `memory.stat` is
    /// read only for cgroups new since the last full harvest, and removed
    /// cgroups are expired only by full harvests.
    fn cgroup_totals(&mut self, now: Instant, full: bool) -> Vec<CgroupRecord> {
        // Keyed by borrowed paths: labels are cloned once per cgroup, not
        // once per process.
        let mut totals: BTreeMap<&str, CgroupRecord> = BTreeMap::new();
        for record in self.processes.values().filter(|r| r.cgroup.is_known()) {
            totals
                .entry(record.cgroup.path.as_str())
                .or_insert_with(|| CgroupRecord { labels: record.cgroup.clone(), ..CgroupRecord::default() })
                .add(record);
        }
        // memory.stat only for cgroups with tracked processes: a removed
        // cgroup has none, and reading every old one would cost a file each.
        if full {
            self.cgroup_pagetable_bytes.clear();
        }
        for total in totals.values_mut() {
            let path = &total.labels.path;
            total.pagetable_bytes = match self.cgroup_pagetable_bytes.get(path) {
                Some(bytes) => *bytes,
                None => {
                    let bytes = self.host.cgroup_pagetable_bytes(path);
                    self.cgroup_pagetable_bytes.insert(path.clone(), bytes);
                    bytes
                }
            };
        }
        if full {
            let ttl = self.exited_ttl;
            let host = &self.host;
            self.retired.retain(|path, retired| {
                if totals.contains_key(path.as_str()) || host.cgroup_exists(path) {
                    retired.last_seen = now;
                }
                now.saturating_duration_since(retired.last_seen) < ttl
            });
        }
        for (path, retired) in &self.retired {
            let total = totals
                .entry(path.as_str())
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
        fn max_entries(&self) -> MapCapacity {
            MapCapacity { processes: Some(16384), frees: Some(65536) }
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

    // ---- per-process series selection (`selection`) ----

    fn selected_with(
        source: Shared,
        alive: Alive,
        host: FakeHost,
        ttl: Duration,
        selection: Selection,
    ) -> Aggregator<Shared, Alive, FakeHost> {
        Aggregator::with_host(source, alive, host, ttl).with_selection(selection)
    }

    fn top(top: usize, rank_by: RankBy) -> Selection {
        Selection { top, rank_by, ..Selection::default() }
    }

    /// Own series of the selected records plus `other`, for each counter.
    fn exported_sum(snap: &Snapshot) -> Counts {
        let mut sum = snap.folded.counts.clone();
        for record in snap.processes.iter().filter(|r| r.selected) {
            sum.pte_pages_reclaimed += record.own_pte_pages_reclaimed();
            sum.dontneed_calls += record.own_dontneed_calls();
            sum.dontneed_bytes += record.own_dontneed_bytes();
            for (key, pages) in &record.frees {
                *sum.frees.entry(*key).or_default() += record.own_frees(*key, *pages);
            }
        }
        sum
    }

    #[test]
    fn top_one_keeps_the_biggest_and_folds_the_rest() {
        let (source, alive, host) = (Shared::default(), Alive::default(), FakeHost::default());
        alive.0.borrow_mut().extend([1, 2]);
        source.0.borrow_mut().processes.insert(1, counters(512, b"big"));
        source.0.borrow_mut().processes.insert(2, counters(8, b"small"));
        let mut agg = selected_with(source.clone(), alive, host, Duration::from_secs(60), top(1, RankBy::Reclaimed));
        let snap = agg.harvest(Instant::now()).unwrap();
        let big = snap.processes.iter().find(|r| r.pid == 1).unwrap();
        assert!(big.selected);
        // Selected at the harvest that first saw it: all its counts are its own.
        assert_eq!(big.own_pte_pages_reclaimed(), 512);
        assert!(!snap.processes.iter().find(|r| r.pid == 2).unwrap().selected);
        assert_eq!(snap.folded.counts.pte_pages_reclaimed, 8);
        assert_eq!(snap.folded.processes, 1);
        assert_eq!(exported_sum(&snap).pte_pages_reclaimed, 520);
        assert_eq!(exported_sum(&snap).dontneed_calls, 2);
    }

    #[test]
    fn a_process_selected_later_counts_from_its_selection() {
        let (source, alive, host) = (Shared::default(), Alive::default(), FakeHost::default());
        alive.0.borrow_mut().insert(5);
        source.0.borrow_mut().processes.insert(5, counters(4, b"late"));
        let selection = Selection { min_reclaimed_pages: Some(10), ..Selection::default() };
        let mut agg = selected_with(source.clone(), alive, host, Duration::from_secs(60), selection);
        let t0 = Instant::now();
        let snap = agg.harvest(t0).unwrap();
        assert!(!snap.processes[0].selected, "below the threshold");
        assert_eq!(snap.folded.counts.pte_pages_reclaimed, 4);
        source.0.borrow_mut().processes.get_mut(&5).unwrap().pte_pages_reclaimed = 12;
        let snap = agg.harvest(t0 + Duration::from_secs(1)).unwrap();
        let record = &snap.processes[0];
        assert!(record.selected);
        // The 12 it had were exported in `other` (4) or are now (8): its own
        // series starts at 0 and `other` keeps them.
        assert_eq!(record.own_pte_pages_reclaimed(), 0);
        assert_eq!(snap.folded.counts.pte_pages_reclaimed, 12);
        source.0.borrow_mut().processes.get_mut(&5).unwrap().pte_pages_reclaimed = 20;
        let snap = agg.harvest(t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(snap.processes[0].own_pte_pages_reclaimed(), 8);
        assert_eq!(snap.folded.counts.pte_pages_reclaimed, 12);
    }

    #[test]
    fn a_challenger_must_beat_the_weakest_by_a_quarter() {
        let (source, alive, host) = (Shared::default(), Alive::default(), FakeHost::default());
        alive.0.borrow_mut().extend([1, 2]);
        host.0.borrow_mut().vmpte.insert(1, 100 << 10);
        source.0.borrow_mut().processes.insert(1, counters(0, b"a"));
        let mut agg =
            selected_with(source.clone(), alive, host.clone(), Duration::from_secs(60), top(1, RankBy::PagetableBytes));
        let t0 = Instant::now();
        agg.harvest(t0).unwrap();
        let selected =
            |snap: &Snapshot| snap.processes.iter().filter(|r| r.selected).map(|r| r.pid).collect::<Vec<_>>();
        // 120 KiB does not beat 100 KiB by more than a quarter.
        host.0.borrow_mut().vmpte.insert(2, 120 << 10);
        source.0.borrow_mut().processes.insert(2, counters(0, b"b"));
        assert_eq!(selected(&agg.harvest(t0 + Duration::from_secs(1)).unwrap()), vec![1]);
        // 130 KiB does.
        host.0.borrow_mut().vmpte.insert(2, 130 << 10);
        assert_eq!(selected(&agg.harvest(t0 + Duration::from_secs(2)).unwrap()), vec![2]);
        // And the first needs more than 162.5 KiB to come back.
        host.0.borrow_mut().vmpte.insert(1, 150 << 10);
        assert_eq!(selected(&agg.harvest(t0 + Duration::from_secs(3)).unwrap()), vec![2]);
        host.0.borrow_mut().vmpte.insert(1, 170 << 10);
        let snap = agg.harvest(t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(selected(&snap), vec![1]);
        // Gauges fold by plain sum: the live unselected process' VmPTE.
        assert_eq!(snap.folded.pagetable_bytes, 130 << 10);
    }

    /// Many harvests of processes that start, grow, exit, expire and have
    /// their pids reused: every `other` counter and every own series (while
    /// it lasts) only grows, at most `top` processes have series, and own +
    /// `other` equals what the kernel counted in total at every harvest.
    #[test]
    fn sums_stay_exact_and_counters_monotonic_through_churn() {
        let (source, alive, host) = (Shared::default(), Alive::default(), FakeHost::default());
        for rank_by in [RankBy::PagetableBytes, RankBy::Reclaimed] {
            let selection = top(5, rank_by);
            let mut agg =
                selected_with(source.clone(), alive.clone(), host.clone(), Duration::from_secs(20), selection);
            source.0.borrow_mut().processes.clear();
            source.0.borrow_mut().frees.clear();
            alive.0.borrow_mut().clear();
            // Everything the kernel counted, also for processes already gone.
            let mut truth = Counts::default();
            let mut rng = 0x2545_f491_4f6c_dd1d_u64;
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let t0 = Instant::now();
            let mut last_other = Counts::default();
            let mut last_own: BTreeMap<u32, u64> = BTreeMap::new();
            for step in 0..400u64 {
                // A few pids from a small range, so they get reused.
                for _ in 0..next(3) {
                    let pid = 100 + next(40) as u32;
                    if !alive.0.borrow().contains(&pid) && !source.0.borrow().processes.contains_key(&pid) {
                        alive.0.borrow_mut().insert(pid);
                        // A new process on a reused pid starts a new series.
                        last_own.remove(&pid);
                        source.0.borrow_mut().processes.insert(pid, counters(0, b"churn"));
                        source.0.borrow_mut().processes.get_mut(&pid).unwrap().dontneed_calls = 0;
                        source.0.borrow_mut().processes.get_mut(&pid).unwrap().dontneed_bytes = 0;
                    }
                }
                let live: Vec<u32> = alive.0.borrow().iter().copied().collect();
                for pid in live {
                    let (pages, calls) = (next(64), next(3));
                    let freed = next(4);
                    if let Some(c) = source.0.borrow_mut().processes.get_mut(&pid) {
                        c.pte_pages_reclaimed += pages;
                        c.dontneed_calls += calls;
                        c.dontneed_bytes += calls * 4096;
                        truth.pte_pages_reclaimed += pages;
                        truth.dontneed_calls += calls;
                        truth.dontneed_bytes += calls * 4096;
                    }
                    *source.0.borrow_mut().frees.entry((pid, 2, 0)).or_default() += freed;
                    *truth.frees.entry((2, 0)).or_default() += freed;
                    host.0.borrow_mut().vmpte.insert(pid, next(1 << 20));
                    if next(10) == 0 {
                        alive.0.borrow_mut().remove(&pid);
                    }
                }
                truth.frees.retain(|_, pages| *pages > 0);
                let snap = agg.harvest(t0 + Duration::from_secs(step)).unwrap();
                let mut sum = exported_sum(&snap);
                sum.frees.retain(|_, pages| *pages > 0);
                assert_eq!(sum, truth, "step {step} ({rank_by:?})");
                let other = &snap.folded.counts;
                assert!(other.pte_pages_reclaimed >= last_other.pte_pages_reclaimed, "step {step}");
                assert!(other.dontneed_calls >= last_other.dontneed_calls, "step {step}");
                assert!(other.dontneed_bytes >= last_other.dontneed_bytes, "step {step}");
                for (key, pages) in &last_other.frees {
                    assert!(other.frees.get(key).copied().unwrap_or(0) >= *pages, "step {step}");
                }
                last_other = other.clone();
                let selected: Vec<&ProcessRecord> = snap.processes.iter().filter(|r| r.selected).collect();
                assert!(selected.len() <= 5, "step {step}: {} selected", selected.len());
                let own: BTreeMap<u32, u64> = selected.iter().map(|r| (r.pid, r.own_pte_pages_reclaimed())).collect();
                for (pid, value) in &own {
                    if let Some(before) = last_own.get(pid) {
                        assert!(value >= before, "step {step}: own series of {pid} fell from {before} to {value}");
                    }
                }
                last_own = own;
                assert_eq!(snap.folded.processes as usize, snap.processes.len() - selected.len());
            }
        }
    }
}
