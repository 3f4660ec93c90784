//! One process as the agent tracks it, and the series it is exported as.
//!
//! A process ([`ProcessRecord`], one per kernel [`ProcessKey`]) is exported
//! under its name: a [`Series`]. When the process takes another name
//! (`execve`, `prctl(PR_SET_NAME)`), the series of the old name is closed
//! and a new one counts from the rename, so a series always carries the
//! name the process had while it counted, and both only grow.
//!
//! Whether a series has samples of its own is [`Export`]: selection
//! (`selection.rs`) moves series between its states so that every sum
//! stays exact and no exported value ever goes down.

use std::{
    cell::OnceCell,
    sync::Arc,
    time::{Duration, Instant},
};

use ptwatch_common::{ProcessCounters, ProcessKey};

use super::{cgroup::CgroupLabels, counts::Counts};
use crate::kernel::procfs;

/// Names of one process whose own series ended that are remembered (each
/// of them can never get a series again). A process renaming itself
/// through more names than this is an oddity; past it, the oldest is
/// forgotten.
const MAX_ENDED_NAMES: usize = 16;

/// Closed series of one process kept for their TTL. A process renamed more
/// often than this within a TTL folds its oldest into `other` early.
const MAX_RENAMED: usize = 8;

/// How a series is exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    /// Counted in `pid="other"` only; may get a series of its own.
    Other,
    /// A series of its own that grows with the process: `own` is what it
    /// counted since it was selected.
    Own,
    /// A series of its own that no longer grows (the process lost its
    /// place, or took another name): it keeps showing `own` for the TTL, so
    /// its last counts are scraped; what the process counts meanwhile goes
    /// to `other`. Selected again within the TTL, it grows again from there.
    Frozen { since: Instant },
    /// Had a series of its own, which ended after being frozen for the TTL:
    /// counted in `other`, and never selected again, since its series
    /// (same labels) would come back lower than it was.
    Ended,
}

/// The counts of one process under one name.
#[derive(Debug)]
pub struct Series {
    pub comm: Box<str>,
    /// Everything counted under this name.
    pub counts: Counts,
    /// What its own series shows (with [`Export::Own`] or
    /// [`Export::Frozen`]); the rest of `counts` is in `other`.
    pub own: Counts,
    pub export: Export,
    /// Created at this harvest: none of its counts were in `other` yet.
    pub(super) new: bool,
    /// The exporter's rendering of this series' labels, made when it is
    /// first exported and kept: a series' labels never change.
    pub labels: OnceCell<Box<str>>,
}

impl Series {
    pub(super) fn new(comm: Box<str>, counts: Counts, export: Export) -> Self {
        Self { comm, counts, own: Counts::default(), export, new: true, labels: OnceCell::new() }
    }

    /// What its own series shows, if it has one.
    pub fn exported(&self) -> Option<&Counts> {
        match self.export {
            Export::Own | Export::Frozen { .. } => Some(&self.own),
            Export::Other | Export::Ended => None,
        }
    }

    /// The part of its counts that is in `other`.
    pub fn in_other(&self) -> Counts {
        match self.exported() {
            Some(own) => self.counts.minus(own),
            None => self.counts,
        }
    }

    /// `sum += self.in_other()`, without a temporary.
    pub fn add_in_other_to(&self, sum: &mut Counts) {
        match self.exported() {
            Some(own) => sum.add_difference(&self.counts, own),
            None => sum.add(&self.counts),
        }
    }

    pub(super) fn count(&mut self, delta: &Counts) {
        self.counts.add(delta);
        if self.export == Export::Own {
            self.own.add(delta);
        }
    }

    /// Give it a series of its own. A new series owns all its counts; one
    /// that was only in `other` starts at zero (what it counted stays in
    /// `other`); a frozen one grows again from where it stopped. Returns
    /// what leaves `other` (a new series' counts, else nothing).
    #[must_use]
    pub(super) fn select(&mut self) -> Counts {
        let taken = match self.export {
            Export::Other if self.new => {
                self.own = self.counts;
                self.counts
            }
            Export::Other => {
                self.own = Counts::default();
                Counts::default()
            }
            Export::Frozen { .. } | Export::Own => Counts::default(),
            // Never: see [`Export::Ended`].
            Export::Ended => return Counts::default(),
        };
        self.export = Export::Own;
        taken
    }

    /// Stop it growing: it keeps its last value for the TTL.
    pub(super) fn freeze(&mut self, now: Instant) {
        if self.export == Export::Own {
            self.export = Export::Frozen { since: now };
        }
    }

    pub fn is_selectable(&self) -> bool {
        matches!(self.export, Export::Other | Export::Frozen { .. })
    }

    /// When it was frozen, if it is.
    fn frozen_since(&self) -> Option<Instant> {
        match self.export {
            Export::Frozen { since } => Some(since),
            _ => None,
        }
    }

    /// Frozen for at least `ttl`.
    fn frozen_out(&self, now: Instant, ttl: Duration) -> bool {
        matches!(self.export, Export::Frozen { since } if now.saturating_duration_since(since) >= ttl)
    }
}

/// Whether the process still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    Live,
    /// Seen gone at a full harvest; its final counts are in.
    Exited {
        at: Instant,
    },
}

/// One process: its kernel identity, counts and labels.
#[derive(Debug)]
pub struct ProcessRecord {
    pub key: ProcessKey,
    /// Last value read from its kernel entry: what grew since is counted.
    /// Zero once the entry was taken out (a late event re-creates it from
    /// zero).
    pub(super) kernel: Counts,
    pub lifetime: Lifetime,
    /// cgroup v2 id the kernel captured when it created the entry (0: none).
    pub cgroup_id: u64,
    /// The process' cgroup, container and pod; None until resolved.
    pub cgroup: Option<Arc<CgroupLabels>>,
    /// `VmPTE` in bytes while the process lives; None once it exited.
    pub pagetable_bytes: Option<u64>,
    /// The last `VmPTE` read (bytes), kept after exit to rank the record.
    pub last_pagetable_bytes: u64,
    /// Under the name it has now.
    pub series: Series,
    /// Its earlier names' frozen series, each with when it was closed.
    pub renamed: Vec<(Series, Instant)>,
    /// Names whose own series ended ([`Export::Ended`]).
    ended_names: Vec<Box<str>>,
}

impl ProcessRecord {
    /// A process seen for the first time, with its kernel entry's value.
    pub fn new(key: ProcessKey, counters: &ProcessCounters) -> Self {
        let counts = Counts::of_process(counters);
        Self {
            key,
            kernel: counts,
            lifetime: Lifetime::Live,
            cgroup_id: counters.cgroup_id,
            cgroup: None,
            pagetable_bytes: None,
            last_pagetable_bytes: 0,
            series: Series::new(procfs::comm_to_string(&counters.comm).into(), counts, Export::Other),
            renamed: Vec::new(),
            ended_names: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.key.tgid
    }

    pub fn is_live(&self) -> bool {
        self.lifetime == Lifetime::Live
    }

    /// Everything counted for the process, under every name.
    pub fn total(&self) -> Counts {
        let mut total = self.series.counts;
        for (series, _) in &self.renamed {
            total.add(&series.counts);
        }
        total
    }

    /// Every series of the process: its name now, then earlier ones.
    pub fn all_series(&self) -> impl Iterator<Item = &Series> {
        std::iter::once(&self.series).chain(self.renamed.iter().map(|(series, _)| series))
    }

    /// Its kernel entry read `counters` now. Returns what the process
    /// counted since the last reading (in its current series).
    pub(super) fn observe(&mut self, counters: &ProcessCounters) -> Counts {
        let now = Counts::of_process(counters);
        let delta = now.growth_since(&self.kernel);
        self.kernel = now;
        self.series.count(&delta);
        if self.cgroup_id == 0 {
            self.cgroup_id = counters.cgroup_id;
        }
        delta
    }

    /// Its kernel entry was taken out with `counters` as its last value.
    pub(super) fn observe_final(&mut self, counters: &ProcessCounters) -> Counts {
        let delta = self.observe(counters);
        self.kernel = Counts::default();
        delta
    }

    /// The process now runs as `comm`: close the series of the old name
    /// (frozen for the TTL if it had its own, else its counts simply stay
    /// in `other`) and count from here under the new one. A name used
    /// earlier and still frozen comes back; one whose series ended stays
    /// in `other`. Returns the closed series to retire at once, if any.
    pub(super) fn rename(&mut self, comm: &str, now: Instant) -> Option<Series> {
        let revived = self.renamed.iter().position(|(series, _)| &*series.comm == comm);
        let mut next = match revived {
            Some(index) => self.renamed.remove(index).0,
            None => {
                let ended = self.ended_names.iter().any(|name| &**name == comm);
                Series::new(comm.into(), Counts::default(), if ended { Export::Ended } else { Export::Other })
            }
        };
        // The process keeps its place among those with series (nothing
        // leaves `other`: the next series is either a frozen one or new
        // and empty).
        if self.series.export == Export::Own {
            let taken = next.select();
            debug_assert!(taken.is_zero());
        }
        let mut old = std::mem::replace(&mut self.series, next);
        old.freeze(now);
        if matches!(old.export, Export::Frozen { .. }) {
            self.renamed.push((old, now));
            if self.renamed.len() > MAX_RENAMED {
                let (oldest, _) = self.renamed.remove(0);
                self.end_name(&oldest);
                return Some(oldest);
            }
            None
        } else {
            self.end_name(&old);
            Some(old)
        }
    }

    /// The earliest time something of the record expires (see
    /// [`Self::end_frozen`] and the records' TTL), if anything does.
    pub(super) fn next_expiry(&self, ttl: Duration) -> Option<Instant> {
        let exited = match self.lifetime {
            Lifetime::Exited { at } => Some(at),
            Lifetime::Live => None,
        };
        let frozen = self.all_series().filter_map(Series::frozen_since);
        exited.into_iter().chain(frozen).filter_map(|at| at.checked_add(ttl)).min()
    }

    /// Series frozen for `ttl` end: the current one stays counted (in
    /// `other`), closed ones are returned to be retired.
    pub(super) fn end_frozen(&mut self, now: Instant, ttl: Duration) -> Vec<Series> {
        if self.series.frozen_out(now, ttl) {
            self.series.export = Export::Ended;
            let name = self.series.comm.clone();
            self.remember_ended(name);
        }
        let mut ended = Vec::new();
        let mut index = 0;
        while index < self.renamed.len() {
            if self.renamed[index].0.frozen_out(now, ttl) {
                let (series, _) = self.renamed.remove(index);
                self.end_name(&series);
                ended.push(series);
            } else {
                index += 1;
            }
        }
        ended
    }

    /// Remember the name of a series leaving the record if it was ever
    /// exported.
    fn end_name(&mut self, series: &Series) {
        if series.export != Export::Other {
            self.remember_ended(series.comm.clone());
        }
    }

    fn remember_ended(&mut self, name: Box<str>) {
        if !self.ended_names.contains(&name) {
            if self.ended_names.len() >= MAX_ENDED_NAMES {
                self.ended_names.remove(0);
            }
            self.ended_names.push(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use ptwatch_common::{Cause, Level};

    use super::*;

    fn counters(comm: &[u8], calls: u64) -> ProcessCounters {
        let mut c = ProcessCounters { dontneed_calls: calls, ..ProcessCounters::default() };
        c.frees.pages[Cause::Reclaim.index()][Level::Pte.index()] = calls * 2;
        c.comm[..comm.len()].copy_from_slice(comm);
        c
    }

    fn key(tgid: u32) -> ProcessKey {
        ProcessKey { tgid, _pad: 0, start_time_ns: 1 }
    }

    #[test]
    fn a_selected_series_grows_and_a_frozen_one_keeps_its_value() {
        let mut record = ProcessRecord::new(key(1), &counters(b"a", 3));
        let _ = record.series.select();
        assert_eq!(record.series.exported().map(|c| c.dontneed_calls), Some(3), "new: all its counts");
        record.series.new = false;
        record.observe(&counters(b"a", 5));
        assert_eq!(record.series.own.dontneed_calls, 5);
        let t0 = Instant::now();
        record.series.freeze(t0);
        record.observe(&counters(b"a", 9));
        assert_eq!(record.series.exported().map(|c| c.dontneed_calls), Some(5), "frozen");
        assert_eq!(record.series.in_other().dontneed_calls, 4);
        // Selected again within the TTL: it grows from where it stopped.
        let _ = record.series.select();
        record.observe(&counters(b"a", 10));
        assert_eq!(record.series.own.dontneed_calls, 6);
        assert_eq!(record.series.in_other().dontneed_calls, 4);
    }

    #[test]
    fn a_frozen_series_ends_after_the_ttl_and_is_never_selected_again() {
        let mut record = ProcessRecord::new(key(1), &counters(b"a", 3));
        let _ = record.series.select();
        let t0 = Instant::now();
        record.series.freeze(t0);
        let ttl = Duration::from_secs(10);
        assert!(record.end_frozen(t0 + Duration::from_secs(9), ttl).is_empty());
        assert!(matches!(record.series.export, Export::Frozen { .. }));
        assert!(record.end_frozen(t0 + ttl, ttl).is_empty(), "the current series stays, counted in other");
        assert_eq!(record.series.export, Export::Ended);
        assert_eq!(record.series.in_other().dontneed_calls, 3);
        let _ = record.series.select();
        assert_eq!(record.series.export, Export::Ended, "its series would come back lower");
    }

    #[test]
    fn a_rename_closes_the_old_names_series_and_counts_from_there() {
        let mut record = ProcessRecord::new(key(7), &counters(b"before", 4));
        let _ = record.series.select();
        record.series.new = false;
        let t0 = Instant::now();
        assert!(record.rename("after", t0).is_none(), "the old series is kept, frozen");
        assert_eq!(&*record.series.comm, "after");
        assert_eq!(record.series.export, Export::Own, "the process keeps its place");
        record.observe(&counters(b"before", 6));
        assert_eq!((record.series.counts.dontneed_calls, record.series.own.dontneed_calls), (2, 2));
        let (old, _) = &record.renamed[0];
        assert_eq!((&*old.comm, old.own.dontneed_calls, old.counts.dontneed_calls), ("before", 4, 4));
        assert_eq!(record.total().dontneed_calls, 6);
        // Renamed back while the old series is frozen: it grows again from
        // where it stopped, and "after" is the frozen one.
        assert!(record.rename("before", t0).is_none());
        assert_eq!((&*record.series.comm, record.series.export), ("before", Export::Own));
        record.observe(&counters(b"before", 7));
        assert_eq!(record.series.own.dontneed_calls, 5);
        assert_eq!(record.renamed.iter().map(|(s, _)| &*s.comm).collect::<Vec<_>>(), ["after"]);
        assert_eq!(record.total().dontneed_calls, 7);
    }

    #[test]
    fn a_name_whose_series_ended_never_gets_one_again() {
        let mut record = ProcessRecord::new(key(7), &counters(b"a", 1));
        let _ = record.series.select();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        assert!(record.rename("b", t0).is_none());
        let ended = record.end_frozen(t0 + ttl, ttl);
        assert_eq!(ended.iter().map(|s| &*s.comm).collect::<Vec<_>>(), ["a"]);
        // Back to "a": its series ended, so this one stays in `other`.
        let closed = record.rename("a", t0 + ttl);
        assert!(closed.is_none(), "b was Own: frozen and kept");
        assert_eq!(record.series.export, Export::Ended);
    }

    #[test]
    fn an_unselected_rename_retires_the_old_name_at_once() {
        let mut record = ProcessRecord::new(key(7), &counters(b"before", 4));
        let closed = record.rename("after", Instant::now()).expect("closed at once");
        assert_eq!((&*closed.comm, closed.counts.dontneed_calls), ("before", 4));
        assert!(record.renamed.is_empty());
        assert_eq!(record.series.export, Export::Other);
    }
}
