//! Per-cgroup totals: the cgroup's processes (live, exited within the TTL,
//! and those already gone), plus what its processes counted in the
//! cgroup's overflow slot when the per-process map was full. A total only
//! grows: a process leaving moves its counts from `live` to `retired`.
//!
//! The totals are kept up to date at each change (a record or slot
//! joining the cgroup, growing, a series leaving), not summed again at
//! each harvest: a scrape at 10,000 series would otherwise visit every
//! record for them.
//!
//! Each cgroup path is interned once: records share its labels, and the
//! exporter renders them once.

use std::{
    cell::OnceCell,
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{cgroup::CgroupLabels, counts::Counts};

/// Totals of removed cgroups remembered after their series went (so a
/// cgroup re-created at the same path, as a restarted systemd service's,
/// continues from its old total instead of coming back lower). Past this,
/// the longest gone are forgotten.
const MAX_DORMANT: usize = 4096;

#[derive(Debug)]
pub struct CgroupTotals {
    pub labels: Arc<CgroupLabels>,
    /// Processes (records, every series) and overflow slots of the cgroup.
    live: Counts,
    /// Processes (and renamed series) that went.
    retired: Counts,
    /// `pagetables` of the cgroup's `memory.stat` (bytes), read while it
    /// has tracked processes and the v2 memory controller.
    pub pagetable_bytes: Option<u64>,
    /// Whether `pagetable_bytes` was read since the last full harvest.
    pub(super) pagetable_read: bool,
    /// Records and overflow slots of the cgroup now.
    members: usize,
    /// Last harvest at which the cgroup existed, or had records or slots.
    last_seen: Instant,
    /// Its series are exported: in use, its directory exists, or gone for
    /// less than the TTL.
    pub exported: bool,
    /// The exporter's rendering of its labels, made once.
    pub label_text: OnceCell<Box<str>>,
}

impl CgroupTotals {
    /// Has records (live, or exited within the TTL) or overflow slots.
    pub(super) fn in_use(&self) -> bool {
        self.members > 0
    }

    /// What its series show.
    pub fn counts(&self) -> Counts {
        let mut counts = self.live;
        counts.add(&self.retired);
        counts
    }
}

#[derive(Debug, Default)]
pub struct Cgroups {
    by_path: BTreeMap<Arc<str>, CgroupTotals>,
}

impl Cgroups {
    /// The shared labels of the cgroup at `path`.
    pub fn intern(&mut self, path: &str, now: Instant) -> Arc<CgroupLabels> {
        if let Some(totals) = self.by_path.get(path) {
            return Arc::clone(&totals.labels);
        }
        let labels = Arc::new(CgroupLabels::from_path(path));
        self.by_path.insert(
            Arc::from(path),
            CgroupTotals {
                labels: Arc::clone(&labels),
                live: Counts::default(),
                retired: Counts::default(),
                pagetable_bytes: None,
                pagetable_read: false,
                members: 0,
                last_seen: now,
                exported: true,
                label_text: OnceCell::new(),
            },
        );
        labels
    }

    /// A record or overflow slot that counted `counts` so far is now known
    /// to be of the cgroup.
    pub fn join(&mut self, labels: &CgroupLabels, counts: &Counts) {
        if let Some(totals) = self.by_path.get_mut(labels.path.as_str()) {
            totals.live.add(counts);
            totals.members += 1;
        }
    }

    /// A record or slot of the cgroup counted `delta` more.
    pub fn grow(&mut self, labels: &CgroupLabels, delta: &Counts) {
        if let Some(totals) = self.by_path.get_mut(labels.path.as_str()) {
            totals.live.add(delta);
        }
    }

    /// A series of a record of the cgroup (the record's only one when it
    /// goes, or a renamed one) went with `counts`: they stay in the total.
    pub fn retire(&mut self, labels: &CgroupLabels, counts: &Counts) {
        if let Some(totals) = self.by_path.get_mut(labels.path.as_str()) {
            totals.live.sub(counts);
            totals.retired.add(counts);
        }
    }

    /// A record of the cgroup went (its series retired first).
    pub fn leave(&mut self, labels: &CgroupLabels) {
        if let Some(totals) = self.by_path.get_mut(labels.path.as_str()) {
            totals.members = totals.members.saturating_sub(1);
        }
    }

    /// Decide which cgroups are exported: in use or existing (`exists`),
    /// else for `ttl` after they were last seen. Only full harvests ask
    /// whether directories exist.
    pub fn expire(&mut self, now: Instant, ttl: Duration, exists: impl Fn(&str) -> bool) {
        for (path, totals) in &mut self.by_path {
            if totals.in_use() || exists(path) {
                totals.last_seen = now;
            }
            totals.exported = now.saturating_duration_since(totals.last_seen) < ttl;
        }
        // One with members (possible only with a TTL of 0) stays: they
        // count in it.
        let forgettable = |t: &CgroupTotals| !t.exported && !t.in_use();
        let dormant = self.by_path.values().filter(|t| forgettable(t)).count();
        if dormant > MAX_DORMANT {
            let mut oldest: Vec<(Instant, Arc<str>)> = self
                .by_path
                .iter()
                .filter(|(_, t)| forgettable(t))
                .map(|(path, t)| (t.last_seen, Arc::clone(path)))
                .collect();
            oldest.sort();
            for (_, path) in oldest.into_iter().take(dormant - MAX_DORMANT) {
                self.by_path.remove(&path);
            }
        }
    }

    /// Cgroups in use, for their `memory.stat`.
    pub fn in_use_mut(&mut self) -> impl Iterator<Item = (&str, &mut CgroupTotals)> {
        self.by_path.iter_mut().filter(|(_, t)| t.in_use()).map(|(path, t)| (&**path, t))
    }

    /// Every exported cgroup.
    pub fn exported(&self) -> impl Iterator<Item = &CgroupTotals> {
        self.by_path.values().filter(|t| t.exported)
    }

    pub fn get(&self, path: &str) -> Option<&CgroupTotals> {
        self.by_path.get(path)
    }

    /// Every cgroup with its records' and slots' counts and how many there
    /// are (what the incremental bookkeeping must equal).
    #[cfg(test)]
    pub(super) fn live(&self) -> BTreeMap<String, (Counts, usize)> {
        self.by_path
            .iter()
            .filter(|(_, t)| t.members > 0 || !t.live.is_zero())
            .map(|(path, t)| (path.to_string(), (t.live, t.members)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(n: u64) -> Counts {
        Counts { dontneed_calls: n, ..Counts::default() }
    }

    #[test]
    fn live_and_retired_add_up_and_survive_removal_and_re_creation() {
        let mut cgroups = Cgroups::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let labels = cgroups.intern("/svc", t0);
        cgroups.join(&labels, &calls(2));
        cgroups.grow(&labels, &calls(3));
        cgroups.expire(t0, ttl, |_| true);
        assert_eq!(cgroups.get("/svc").map(|t| t.counts().dontneed_calls), Some(5));
        // The process goes: its counts move to retired.
        cgroups.retire(&labels, &calls(5));
        cgroups.leave(&labels);
        assert_eq!(cgroups.get("/svc").map(|t| (t.live, t.in_use())), Some((Counts::default(), false)));
        // The directory is removed: exported for the TTL, then not.
        cgroups.expire(t0 + Duration::from_secs(1), ttl, |_| false);
        assert_eq!(cgroups.exported().map(|t| t.counts().dontneed_calls).collect::<Vec<_>>(), [5]);
        cgroups.expire(t0 + ttl, ttl, |_| false);
        assert_eq!(cgroups.exported().count(), 0);
        // Re-created at the same path (a restarted service): it continues
        // from its total, never lower.
        let again = cgroups.intern("/svc", t0 + ttl * 2);
        cgroups.join(&again, &calls(1));
        cgroups.expire(t0 + ttl * 2, ttl, |_| true);
        assert_eq!(cgroups.exported().map(|t| t.counts().dontneed_calls).collect::<Vec<_>>(), [6]);
    }
}
