//! Per-cgroup totals: the cgroup's processes (live, exited within the TTL,
//! and those already gone), plus what its processes counted in the
//! cgroup's overflow slot when the per-process map was full. A total only
//! grows: a process leaving moves its counts from `live` to `retired`.
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
    /// Processes and overflow slots of the cgroup, summed at the last harvest.
    live: Counts,
    /// Processes (and renamed series) that went.
    retired: Counts,
    /// `pagetables` of the cgroup's `memory.stat` (bytes), read while it
    /// has tracked processes and the v2 memory controller.
    pub pagetable_bytes: Option<u64>,
    /// Whether `pagetable_bytes` was read since the last full harvest.
    pub(super) pagetable_read: bool,
    /// Has live records or slots now.
    pub(super) in_use: bool,
    /// Last harvest at which the cgroup existed, or had records or slots.
    last_seen: Instant,
    /// Its series are exported: in use, its directory exists, or gone for
    /// less than the TTL.
    pub exported: bool,
    /// The exporter's rendering of its labels, made once.
    pub label_text: OnceCell<Box<str>>,
}

impl CgroupTotals {
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
                in_use: false,
                last_seen: now,
                exported: true,
                label_text: OnceCell::new(),
            },
        );
        labels
    }

    /// A process of the cgroup (or its renamed series) went with `counts`.
    pub fn retire(&mut self, labels: &CgroupLabels, counts: &Counts) {
        if let Some(totals) = self.by_path.get_mut(labels.path.as_str()) {
            totals.retired.add(counts);
        }
    }

    /// Start summing a harvest: nothing live yet.
    pub fn clear_live(&mut self) {
        for totals in self.by_path.values_mut() {
            totals.live = Counts::default();
            totals.in_use = false;
        }
    }

    /// Add `counts` of a live record or slot of the cgroup.
    pub fn add_live(&mut self, labels: &CgroupLabels, counts: &Counts) {
        if let Some(totals) = self.by_path.get_mut(labels.path.as_str()) {
            totals.live.add(counts);
            totals.in_use = true;
        }
    }

    /// Decide which cgroups are exported: in use or existing (`exists`),
    /// else for `ttl` after they were last seen. Only full harvests ask
    /// whether directories exist.
    pub fn expire(&mut self, now: Instant, ttl: Duration, exists: impl Fn(&str) -> bool) {
        for (path, totals) in &mut self.by_path {
            if totals.in_use || exists(path) {
                totals.last_seen = now;
            }
            totals.exported = now.saturating_duration_since(totals.last_seen) < ttl;
        }
        let dormant = self.by_path.values().filter(|t| !t.exported).count();
        if dormant > MAX_DORMANT {
            let mut oldest: Vec<(Instant, Arc<str>)> = self
                .by_path
                .iter()
                .filter(|(_, t)| !t.exported)
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
        self.by_path.iter_mut().filter(|(_, t)| t.in_use).map(|(path, t)| (&**path, t))
    }

    /// Every exported cgroup.
    pub fn exported(&self) -> impl Iterator<Item = &CgroupTotals> {
        self.by_path.values().filter(|t| t.exported)
    }

    pub fn get(&self, path: &str) -> Option<&CgroupTotals> {
        self.by_path.get(path)
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
        cgroups.clear_live();
        cgroups.add_live(&labels, &calls(5));
        cgroups.expire(t0, ttl, |_| true);
        assert_eq!(cgroups.get("/svc").map(|t| t.counts().dontneed_calls), Some(5));
        // The process goes: its counts move to retired.
        cgroups.retire(&labels, &calls(5));
        cgroups.clear_live();
        // The directory is removed: exported for the TTL, then not.
        cgroups.expire(t0 + Duration::from_secs(1), ttl, |_| false);
        assert_eq!(cgroups.exported().map(|t| t.counts().dontneed_calls).collect::<Vec<_>>(), [5]);
        cgroups.expire(t0 + ttl, ttl, |_| false);
        assert_eq!(cgroups.exported().count(), 0);
        // Re-created at the same path (a restarted service): it continues
        // from its total, never lower.
        let again = cgroups.intern("/svc", t0 + ttl * 2);
        cgroups.clear_live();
        cgroups.add_live(&again, &calls(1));
        cgroups.expire(t0 + ttl * 2, ttl, |_| true);
        assert_eq!(cgroups.exported().map(|t| t.counts().dontneed_calls).collect::<Vec<_>>(), [6]);
    }
}
