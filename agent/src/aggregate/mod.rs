//! From kernel maps to a consistent picture of processes, cgroups and the
//! node, whose counters never go down and always add up.
//!
//! The kernel counts each event once per level of detail
//! (`ptwatch_common::counters`): in the process' own entry of
//! `PROCESS_COUNTERS` (keyed by pid and start time, never evicted; a busy
//! process' DONTNEED requests in its slot of `DONTNEED_SLOTS`, which
//! [`slots`] reads as part of the entry) or, when that map is full, in the
//! cgroup's slot of `OVERFLOW_COUNTERS`; and always in the node totals. A harvest brings the agent's picture up to date in
//! steps, one job each:
//!
//! 1. [`read`](Aggregator::read) the maps (every entry, a few system calls);
//! 2. [`merge`](Aggregator::merge) what each entry grew by into its
//!    [`ProcessRecord`] (new keys are new processes: a recycled pid is a new
//!    key) and each overflow slot; an entry that holds what the last merge
//!    applied is skipped ([`unchanged`]);
//! 3. [`reap`](Aggregator::reap): ask `/proc` which processes exited
//!    (their entries are taken out with their final counts) or took another
//!    name (`execve`: a new series counts from there), new ones at every
//!    harvest, known ones at full harvests; and (full harvests) remove
//!    per-thread contexts of threads that are gone;
//! 4. [`attribute`](Aggregator::attribute): cgroup and `VmPTE` of new
//!    processes (of every live one at full harvests);
//! 5. [`expire`](Aggregator::expire): records exited for `--exited-ttl` and
//!    series frozen for as long leave, their counts kept in `other` and in
//!    their cgroup's total;
//! 6. [`select`](Aggregator::select) which series are exported on their own
//!    ([`selection`]);
//! 7. [`summarize`](Aggregator::summarize): `other`, cgroup totals, map fill.
//!
//! A scrape runs every step for new records only: it costs one read of the
//! maps; the `/proc` and cgroup files of known processes are read by the
//! periodic full harvest.
//!
//! What `other` and the cgroup totals carry is kept up to date at each
//! change (a count merged, a record attributed, selected, renamed or
//! leaving), not summed again at each harvest, and step 5 walks the records
//! only when something is due to expire: at 10,000 series, each walk of the
//! records (~1 KB each) costs a scrape more in cache misses than its
//! arithmetic.
//!
//! Per-process series + `pid="other"` = Σ records + Σ retired + Σ overflow
//! slots = the node totals, for every counter.

mod batch;
pub mod cgroup;
pub mod counts;
pub mod host;
pub mod identity;
pub mod record;
pub mod selection;
pub mod slots;
pub mod source;
pub mod totals;
mod unchanged;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use ptwatch_common::{names, NodeCounters, ProcessCounters, ProcessKey, ThreadContext, UNATTRIBUTED_CGROUP};

use self::unchanged::LastRead;
pub use self::{
    cgroup::CgroupLabels,
    counts::Counts,
    host::{Host, SystemHost},
    identity::{BootClock, Liveness, Presence, ProcLiveness},
    record::{Export, Lifetime, ProcessRecord, Series},
    selection::{Folded, RankBy, Selection},
    source::{CounterSource, KernelMaps, MapCapacity},
    totals::{CgroupTotals, Cgroups},
};
use crate::probes::ProbeError;

/// Entries and capacity of one kernel hash map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUsage {
    pub name: &'static str,
    pub entries: u64,
    pub max_entries: u64,
}

/// One `OVERFLOW_COUNTERS` slot: what the processes of one cgroup counted
/// while `PROCESS_COUNTERS` was full.
#[derive(Debug)]
pub struct OverflowSlot {
    pub cgroup_id: u64,
    /// Last value read (slots are never removed; a smaller value would mean
    /// the slot was re-created, and is all new).
    kernel: Counts,
    pub counts: Counts,
    /// None until the id is resolved; always None for
    /// [`UNATTRIBUTED_CGROUP`].
    pub cgroup: Option<Arc<CgroupLabels>>,
}

/// What the last harvest found, besides the records and cgroups.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub node: NodeCounters,
    /// `PageTables` of `/proc/meminfo`, bytes.
    pub node_pagetable_bytes: Option<u64>,
    /// Everything not in a series of its own.
    pub folded: Folded,
    /// Processes whose current series grows on its own (at most
    /// `--top-processes`); the others are [`Folded::processes`].
    pub own_series: u64,
    /// The maps: entries left once exited processes were taken out.
    pub maps: Vec<MapUsage>,
    /// `THREAD_CONTEXT` entries of threads that no longer exist, removed
    /// (left by a missed exit hook), since the agent started.
    pub reaped_thread_contexts: u64,
    /// `IO_REQUESTS` entries whose completion was missed, removed since the
    /// agent started.
    pub reaped_io_requests: u64,
}

/// Everything a harvest leaves for the exporter, borrowed from the
/// aggregator: nothing is copied per scrape.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub snapshot: &'a Snapshot,
    records: &'a BTreeMap<ProcessKey, ProcessRecord>,
    cgroups: &'a Cgroups,
}

impl<'a> View<'a> {
    /// Every record: live, and exited within the TTL; in pid order.
    pub fn records(&self) -> impl Iterator<Item = &'a ProcessRecord> {
        self.records.values()
    }

    /// Every exported cgroup total.
    pub fn cgroups(&self) -> impl Iterator<Item = &'a CgroupTotals> {
        self.cgroups.exported()
    }
}

/// The reading buffers, kept from one harvest to the next so a scrape
/// allocates nothing per process.
#[derive(Default)]
struct Buffers {
    processes: Vec<(ProcessKey, ProcessCounters)>,
    /// The entries the last merge applied: the next merges only what
    /// changed since.
    last_read: LastRead,
    overflow: Vec<(u64, ProcessCounters)>,
    threads: Vec<(u32, ThreadContext)>,
    /// Keys of exited processes whose entry a late event re-created.
    late: Vec<ProcessKey>,
    /// Keys of the records created since the last summary: the records a
    /// scrape asks the host about, without walking every record to find
    /// them (at 10,000 series a walk costs more in cache misses than the
    /// map reads).
    new_keys: Vec<ProcessKey>,
    /// The keys a step visits (reused).
    visit: Vec<ProcessKey>,
}

/// What a harvest asks the host (`/proc`, cgroupfs) about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostReads {
    /// Every record and cgroup: liveness, names, `VmPTE`, `memory.stat`.
    All,
    /// Records and cgroups seen for the first time.
    NewRecords,
}

/// Keeps per-process records across harvests.
pub struct Aggregator<S, L = ProcLiveness, H = SystemHost> {
    source: S,
    liveness: L,
    host: H,
    exited_ttl: Duration,
    selection: Selection,
    records: BTreeMap<ProcessKey, ProcessRecord>,
    overflow: BTreeMap<u64, OverflowSlot>,
    cgroups: Cgroups,
    /// Whole counts of records and series that are gone.
    retired: Counts,
    /// What the records' series have in `other` ([`Series::in_other`],
    /// summed over every series of every record) plus the overflow slots:
    /// with `retired`, all of `other`. Kept up to date at each change.
    in_other: Counts,
    /// No record or series expires before this (None: none is due).
    next_expiry: Option<Instant>,
    buffers: Buffers,
    capacity: MapCapacity,
    /// `THREAD_CONTEXT` entries left by the last full harvest.
    thread_entries: usize,
    snapshot: Snapshot,
}

impl<S: CounterSource> Aggregator<S> {
    pub fn new(source: S, exited_ttl: Duration) -> Self {
        Self::with_liveness(source, ProcLiveness::default(), exited_ttl)
    }
}

impl<S: CounterSource, L: Liveness> Aggregator<S, L> {
    pub fn with_liveness(source: S, liveness: L, exited_ttl: Duration) -> Self {
        Self::with_host(source, liveness, SystemHost::detect(), exited_ttl)
    }
}

impl<S: CounterSource, L: Liveness, H: Host> Aggregator<S, L, H> {
    pub fn with_host(source: S, liveness: L, host: H, exited_ttl: Duration) -> Self {
        let capacity = source.capacity();
        Self {
            source,
            liveness,
            host,
            exited_ttl,
            selection: Selection::default(),
            records: BTreeMap::new(),
            overflow: BTreeMap::new(),
            cgroups: Cgroups::default(),
            retired: Counts::default(),
            in_other: Counts::default(),
            next_expiry: None,
            buffers: Buffers::default(),
            capacity,
            thread_entries: 0,
            snapshot: Snapshot::default(),
        }
    }

    /// Which processes get their own series (default: [`Selection::default`]).
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// Read the kernel maps and bring everything up to date, asking the
    /// host about every record: liveness and name, `VmPTE`, `memory.stat`.
    pub fn harvest(&mut self, now: Instant) -> Result<&Snapshot, ProbeError> {
        self.harvest_with(now, HostReads::All)
    }

    /// Read the kernel maps and bring the counters up to date, asking the
    /// host only about records seen for the first time. Liveness, names,
    /// `VmPTE` and `memory.stat` of known records stay as the last
    /// [`Self::harvest`] found them: a scrape reads only the kernel maps,
    /// while the `/proc` reads, which cost an order of magnitude more, stay
    /// on the periodic harvest. Counters (and so every sum with `other`) are
    /// as exact as with [`Self::harvest`]; an exit or a rename is noticed at
    /// the next full harvest.
    pub fn harvest_counters(&mut self, now: Instant) -> Result<&Snapshot, ProbeError> {
        self.harvest_with(now, HostReads::NewRecords)
    }

    fn harvest_with(&mut self, now: Instant, reads: HostReads) -> Result<&Snapshot, ProbeError> {
        let node = self.read()?;
        self.merge();
        self.reap(now, reads)?;
        self.attribute(now, reads);
        self.expire(now, reads);
        self.select(now);
        self.summarize(node, reads);
        Ok(&self.snapshot)
    }

    /// What the last harvest found.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Every record: live, and exited within the TTL; in pid order.
    pub fn records(&self) -> impl Iterator<Item = &ProcessRecord> {
        self.records.values()
    }

    /// The records of `pid` (several when the pid was recycled within the
    /// TTL).
    pub fn records_of(&self, pid: u32) -> impl Iterator<Item = &ProcessRecord> {
        let from = ProcessKey { tgid: pid, _pad: 0, start_time_ns: 0 };
        self.records.range(from..).take_while(move |(key, _)| key.tgid == pid).map(|(_, record)| record)
    }

    /// What the exporter reads, borrowed.
    pub fn view(&self) -> View<'_> {
        View { snapshot: &self.snapshot, records: &self.records, cgroups: &self.cgroups }
    }

    /// Every exported cgroup total.
    pub fn cgroups(&self) -> impl Iterator<Item = &CgroupTotals> {
        self.cgroups.exported()
    }

    /// The overflow slots.
    pub fn overflow(&self) -> impl Iterator<Item = &OverflowSlot> {
        self.overflow.values()
    }

    /// 1. Read every map entry, then the node totals: an event that lands
    ///    between the reads shows in the node first, never the reverse.
    fn read(&mut self) -> Result<NodeCounters, ProbeError> {
        self.source.processes(&mut self.buffers.processes)?;
        self.source.overflow(&mut self.buffers.overflow)?;
        self.source.node()
    }

    /// 2. Count what each entry grew by; a key seen for the first time is a
    ///    new process. Entries unchanged since the last merge grew by
    ///    nothing and are skipped without looking their record up.
    fn merge(&mut self) {
        self.buffers.late.clear();
        let mut last_read = self.buffers.last_read.cursor();
        for (key, counters) in &self.buffers.processes {
            if last_read.unchanged(key, counters) {
                continue;
            }
            match self.records.get_mut(key) {
                Some(record) => {
                    let delta = record.observe(counters);
                    count_growth(&mut self.in_other, &mut self.cgroups, record, &delta);
                    // An exited process' entry is back only when a late event
                    // (a free of its address space after it was seen gone)
                    // re-created it.
                    if !record.is_live() {
                        self.buffers.late.push(*key);
                    }
                }
                None => {
                    let record = ProcessRecord::new(*key, counters);
                    record.series.add_in_other_to(&mut self.in_other);
                    self.records.insert(*key, record);
                    self.buffers.new_keys.push(*key);
                }
            }
        }
        for (cgroup_id, counters) in &self.buffers.overflow {
            let counts = Counts::of_process(counters);
            let slot = self.overflow.entry(*cgroup_id).or_insert_with(|| OverflowSlot {
                cgroup_id: *cgroup_id,
                kernel: Counts::default(),
                counts: Counts::default(),
                cgroup: None,
            });
            let delta = counts.growth_since(&slot.kernel);
            slot.counts.add(&delta);
            slot.kernel = counts;
            self.in_other.add(&delta);
            if let Some(cgroup) = &slot.cgroup {
                self.cgroups.grow(cgroup, &delta);
            }
        }
        self.buffers.last_read.replace(&mut self.buffers.processes);
    }

    /// 3. Check processes against `/proc`: new ones at every harvest (one
    ///    that already exited is taken out at once; a live one is named as
    ///    `/proc` names it), the others at full harvests. An exited process'
    ///    entry is taken out with its final counts (and again when a late
    ///    event re-created it); a process that took another name gets a
    ///    series under it. At full harvests, remove the contexts of threads
    ///    that are gone.
    fn reap(&mut self, now: Instant, reads: HostReads) -> Result<(), ProbeError> {
        for key in &self.buffers.late {
            self.buffers.last_read.touch(*key);
            if let Some(last) = self.source.take(key)? {
                if let Some(record) = self.records.get_mut(key) {
                    let delta = record.observe_final(&last);
                    count_growth(&mut self.in_other, &mut self.cgroups, record, &delta);
                }
            }
        }
        let visit = self.records_to_visit(reads);
        for key in &visit {
            let Some(record) = self.records.get_mut(key) else { continue };
            let new = record.series.new;
            if !record.is_live() {
                continue;
            }
            match self.liveness.presence(record.key) {
                Presence::Gone => {
                    self.buffers.last_read.touch(record.key);
                    if let Some(last) = self.source.take(&record.key)? {
                        let delta = record.observe_final(&last);
                        count_growth(&mut self.in_other, &mut self.cgroups, record, &delta);
                    }
                    record.lifetime = Lifetime::Exited { at: now };
                    record.pagetable_bytes = None;
                    self.next_expiry = earliest(self.next_expiry, now.checked_add(self.exited_ttl));
                }
                // The kernel named the entry after the thread that created
                // it; a series carries the process' name.
                Presence::Alive { comm } if new => record.series.comm = comm.into(),
                Presence::Alive { comm } => {
                    if *record.series.comm != *comm {
                        let sums = (&mut self.retired, &mut self.in_other, &mut self.cgroups);
                        if let Some(closed) = record.rename(&comm, now) {
                            retire(sums, record.cgroup.as_deref(), &closed);
                        }
                        // The old name's series may be frozen from now.
                        self.next_expiry = earliest(self.next_expiry, now.checked_add(self.exited_ttl));
                    }
                }
            }
        }
        self.buffers.visit = visit;
        if reads == HostReads::All {
            self.source.threads(&mut self.buffers.threads)?;
            let mut entries = self.buffers.threads.len();
            for (tid, _) in &self.buffers.threads {
                // Checked by thread id alone: if any thread has this id, it
                // may be inside a hooked call right now (the entry's tgid may
                // be that of an earlier thread with the same id).
                if !self.liveness.thread_exists(*tid) {
                    self.source.forget_thread(*tid);
                    self.snapshot.reaped_thread_contexts += 1;
                    entries -= 1;
                }
            }
            self.thread_entries = entries;
            self.snapshot.reaped_io_requests += self.source.reap_io_requests();
        }
        Ok(())
    }

    /// 4. Resolve the cgroup of records that have none yet, read the
    ///    page-table memory of live ones (only new ones on a scrape), and
    ///    the cgroup of overflow slots.
    fn attribute(&mut self, now: Instant, reads: HostReads) {
        let visit = self.records_to_visit(reads);
        for key in &visit {
            let Some(record) = self.records.get_mut(key) else { continue };
            let alive = record.is_live();
            if record.cgroup.is_none() {
                // The id captured in the kernel is right even after the
                // process is gone; /proc only helps while it lives.
                let path = match record.cgroup_id {
                    0 if alive => self.host.cgroup_of_pid(record.pid()),
                    0 => None,
                    id => self.host.cgroup_path(id, now).or_else(|| {
                        if alive {
                            self.host.cgroup_of_pid(record.pid())
                        } else {
                            None
                        }
                    }),
                };
                record.cgroup = path.map(|path| self.cgroups.intern(&path, now));
                if let Some(cgroup) = &record.cgroup {
                    self.cgroups.join(cgroup, &record.total());
                }
            }
            record.pagetable_bytes = if alive { self.host.process_pagetable_bytes(record.pid()) } else { None };
            if let Some(bytes) = record.pagetable_bytes {
                record.last_pagetable_bytes = bytes;
            }
        }
        self.buffers.visit = visit;
        for slot in self.overflow.values_mut() {
            if slot.cgroup.is_none() && slot.cgroup_id != UNATTRIBUTED_CGROUP {
                slot.cgroup = self.host.cgroup_path(slot.cgroup_id, now).map(|path| self.cgroups.intern(&path, now));
                if let Some(cgroup) = &slot.cgroup {
                    self.cgroups.join(cgroup, &slot.counts);
                }
            }
        }
    }

    /// The records steps 3 and 4 visit (in key order): every one at a full
    /// harvest, the new ones otherwise. The buffer goes back to
    /// `buffers.visit` after use.
    fn records_to_visit(&mut self, reads: HostReads) -> Vec<ProcessKey> {
        let mut keys = std::mem::take(&mut self.buffers.visit);
        keys.clear();
        match reads {
            HostReads::All => keys.extend(self.records.keys().copied()),
            HostReads::NewRecords => {
                keys.extend_from_slice(&self.buffers.new_keys);
                keys.sort_unstable();
                // A harvest that failed before its summary left its keys.
                keys.dedup();
            }
        }
        keys
    }

    /// 5. Records exited for the TTL leave; series frozen for the TTL end.
    ///    Their counts stay in `other` and in their cgroup's total. The
    ///    records are walked only when one is due.
    fn expire(&mut self, now: Instant, reads: HostReads) {
        let ttl = self.exited_ttl;
        // Cgroups first: one whose last records leave now is in use until
        // this harvest.
        if reads == HostReads::All {
            let host = &self.host;
            self.cgroups.expire(now, ttl, |path| host.cgroup_exists(path));
        }
        if self.next_expiry.is_some_and(|due| due <= now) {
            let (retired, in_other, cgroups) = (&mut self.retired, &mut self.in_other, &mut self.cgroups);
            let last_read = &mut self.buffers.last_read;
            self.records.retain(|_, record| {
                let expired =
                    matches!(record.lifetime, Lifetime::Exited { at } if now.saturating_duration_since(at) >= ttl);
                if expired {
                    for series in record.all_series() {
                        retire((&mut *retired, &mut *in_other, &mut *cgroups), record.cgroup.as_deref(), series);
                    }
                    if let Some(cgroup) = &record.cgroup {
                        cgroups.leave(cgroup);
                    }
                    last_read.touch(record.key);
                    return false;
                }
                // The current series may end (frozen → ended): all of it
                // is in `other` from now.
                in_other.sub(&record.series.in_other());
                let ended = record.end_frozen(now, ttl);
                record.series.add_in_other_to(in_other);
                for series in ended {
                    retire((&mut *retired, &mut *in_other, &mut *cgroups), record.cgroup.as_deref(), &series);
                }
                true
            });
            // Summarize finds the next one.
            self.next_expiry = None;
        }
    }

    /// 6. Which series are exported on their own.
    fn select(&mut self, now: Instant) {
        self.selection.apply(&mut self.records, now, &mut self.in_other);
    }

    /// 7. `other`, `memory.stat`, the maps' fill, what expires next.
    fn summarize(&mut self, node: NodeCounters, reads: HostReads) {
        let mut folded = Folded { counts: self.retired, ..Folded::default() };
        folded.counts.add(&self.in_other);
        let (mut own_series, mut live_entries) = (0, 0);
        let ttl = self.exited_ttl;
        let mut next_expiry = None;
        for record in self.records.values_mut() {
            live_entries += usize::from(record.is_live());
            if record.series.export == Export::Own {
                own_series += 1;
            } else {
                folded.pagetable_bytes += record.pagetable_bytes.unwrap_or(0);
                folded.processes += 1;
            }
            next_expiry = earliest(next_expiry, record.next_expiry(ttl));
            record.series.new = false;
        }
        self.next_expiry = next_expiry;
        self.buffers.new_keys.clear();
        #[cfg(test)]
        self.check_sums();
        // memory.stat only for cgroups with tracked processes: a removed
        // cgroup has none, and reading every old one would cost a file each.
        for (path, totals) in self.cgroups.in_use_mut() {
            if reads == HostReads::All || !totals.pagetable_read {
                totals.pagetable_bytes = self.host.cgroup_pagetable_bytes(path);
                totals.pagetable_read = true;
            }
        }
        let maps = [
            (names::PROCESS_COUNTERS, live_entries, self.capacity.processes),
            (names::OVERFLOW_COUNTERS, self.overflow.len(), self.capacity.overflow),
            (names::THREAD_CONTEXT, self.thread_entries, self.capacity.threads),
        ];
        self.snapshot.maps.clear();
        self.snapshot.maps.extend(maps.into_iter().filter_map(|(name, entries, max)| {
            Some(MapUsage { name, entries: entries as u64, max_entries: u64::from(max?) })
        }));
        self.snapshot.node = node;
        self.snapshot.node_pagetable_bytes = self.host.node_pagetable_bytes();
        self.snapshot.folded = folded;
        self.snapshot.own_series = own_series;
    }
}

/// Keep the counts of a series that is going away in `other` and in its
/// cgroup's total: `retired` takes all of them; the sum of what the
/// remaining series have in `other` loses its part.
fn retire(
    (retired, in_other, cgroups): (&mut Counts, &mut Counts, &mut Cgroups),
    cgroup: Option<&CgroupLabels>,
    series: &Series,
) {
    retired.add(&series.counts);
    in_other.sub(&series.in_other());
    if let Some(cgroup) = cgroup {
        cgroups.retire(cgroup, &series.counts);
    }
}

/// A record's current series counted `delta` more
/// ([`ProcessRecord::observe`]): what is in `other` grows unless the series
/// grows on its own, and so does the record's cgroup total.
fn count_growth(in_other: &mut Counts, cgroups: &mut Cgroups, record: &ProcessRecord, delta: &Counts) {
    if delta.is_zero() {
        return;
    }
    if record.series.export != Export::Own {
        in_other.add(delta);
    }
    if let Some(cgroup) = &record.cgroup {
        cgroups.grow(cgroup, delta);
    }
}

/// The earlier of two optional times.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
impl<S, L, H> Aggregator<S, L, H> {
    /// What is kept incrementally equals a sum over every record and slot.
    fn check_sums(&self) {
        let mut in_other = Counts::default();
        let mut cgroups: BTreeMap<String, (Counts, usize)> = BTreeMap::new();
        for record in self.records.values() {
            for series in record.all_series() {
                series.add_in_other_to(&mut in_other);
            }
            if let Some(cgroup) = &record.cgroup {
                let entry = cgroups.entry(cgroup.path.clone()).or_default();
                entry.0.add(&record.total());
                entry.1 += 1;
            }
        }
        for slot in self.overflow.values() {
            in_other.add(&slot.counts);
            if let Some(cgroup) = &slot.cgroup {
                let entry = cgroups.entry(cgroup.path.clone()).or_default();
                entry.0.add(&slot.counts);
                entry.1 += 1;
            }
        }
        assert_eq!(self.in_other, in_other, "what is in other, kept incrementally, equals its sum");
        assert_eq!(self.cgroups.live(), cgroups, "cgroup totals kept incrementally equal their sums");
        let due = self.records.values().filter_map(|record| record.next_expiry(self.exited_ttl)).min();
        assert_eq!(self.next_expiry, due, "the next expiry is the earliest");
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
