//! Which processes get series of their own, and the `other` series that
//! carries everything else, so that per-process cardinality stays bounded
//! on a node with thousands of processes while every sum stays exact.
//!
//! At each harvest the processes that meet the thresholds are ranked (by
//! page-table memory or by reclaimed pages) and at most `top` of them keep or
//! get their own series. Selection is sticky: a selected process keeps its
//! place until a challenger beats it by more than a quarter
//! ([`CHALLENGE_MARGIN_DIVISOR`]), or until it falls below half of the page-table
//! threshold, so series do not flap between processes of similar size.
//!
//! Counters stay monotonic in Prometheus' sense:
//! - a process' own series counts from when it was selected: its counters
//!   minus a baseline, their values at selection. What it did before stays in
//!   `other` (a process selected at the harvest that first sees it has a
//!   baseline of zero: none of its counts was in `other` yet);
//! - a process that loses its place takes its whole count to `other`, and its
//!   own series ends; selected again later, the series restarts from zero
//!   (a counter reset to Prometheus, which is what happened to the series);
//! - records that expire or whose pid is recycled leave their whole count in
//!   `other`.
//!
//! So `other` = expired records + unselected records + baselines of selected
//! ones, each term of which only grows, and own + `other` is, at every
//! harvest, the sum over every process the agent ever counted.

use std::collections::{BTreeMap, HashSet};

use super::ProcessRecord;

/// A challenger must exceed the weakest selected process' score by more than
/// 1/this (a quarter) to take its place.
pub const CHALLENGE_MARGIN_DIVISOR: u64 = 4;

/// What `--top-processes` ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RankBy {
    /// Page-table memory now (`VmPTE`; an exited process keeps its last value until it expires).
    PagetableBytes,
    /// PTE pages reclaimed since the agent started.
    Reclaimed,
}

/// The per-process series policy (docs/configuration.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    /// At most this many processes have their own series; 0: no limit.
    pub top: usize,
    pub rank_by: RankBy,
    /// Thresholds; a process qualifies if it meets any that is set (all
    /// qualify when none is).
    pub min_pagetable_bytes: Option<u64>,
    pub min_reclaimed_pages: Option<u64>,
}

impl Default for Selection {
    fn default() -> Self {
        // 100 processes keep a node's exposition around a thousand series
        // (plus 20 free series each in the fentry and kprobe modes) however
        // many processes it runs; the rest is still in the sums (`other`)
        // and in the per-cgroup series, which are not limited.
        Self { top: 100, rank_by: RankBy::PagetableBytes, min_pagetable_bytes: None, min_reclaimed_pages: None }
    }
}

/// Counters of a process, or sums of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub pte_pages_reclaimed: u64,
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    /// Page-table pages freed, by `(cause, level)`.
    pub frees: BTreeMap<(u32, u32), u64>,
}

impl Counts {
    /// The counters of `record`.
    pub fn of(record: &ProcessRecord) -> Self {
        Self {
            pte_pages_reclaimed: record.pte_pages_reclaimed,
            dontneed_calls: record.dontneed_calls,
            dontneed_bytes: record.dontneed_bytes,
            frees: record.frees.clone(),
        }
    }

    pub fn add(&mut self, other: &Self) {
        self.pte_pages_reclaimed += other.pte_pages_reclaimed;
        self.dontneed_calls += other.dontneed_calls;
        self.dontneed_bytes += other.dontneed_bytes;
        for (key, pages) in &other.frees {
            *self.frees.entry(*key).or_default() += pages;
        }
    }

    /// Add the counters of `record`.
    pub fn add_record(&mut self, record: &ProcessRecord) {
        self.pte_pages_reclaimed += record.pte_pages_reclaimed;
        self.dontneed_calls += record.dontneed_calls;
        self.dontneed_bytes += record.dontneed_bytes;
        for (key, pages) in &record.frees {
            *self.frees.entry(*key).or_default() += pages;
        }
    }
}

/// What the `pid="other",comm="other"` series carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    pub counts: Counts,
    /// Page-table memory of the live processes without their own series.
    pub pagetable_bytes: u64,
    /// Processes (live, or exited within the TTL) without their own series.
    pub processes: u64,
}

impl Selection {
    fn qualifies(&self, record: &ProcessRecord, selected: bool) -> bool {
        if self.min_pagetable_bytes.is_none() && self.min_reclaimed_pages.is_none() {
            return true;
        }
        // A selected process keeps its place down to half the threshold, so
        // that page-table memory moving around it does not flap the series.
        let pagetable = self.min_pagetable_bytes.is_some_and(|min| {
            let min = if selected { min / 2 } else { min };
            record.last_pagetable_bytes >= min
        });
        // Reclaimed pages only grow: no hysteresis needed.
        let reclaimed = self.min_reclaimed_pages.is_some_and(|min| record.pte_pages_reclaimed >= min);
        pagetable || reclaimed
    }

    /// Ranking key: the chosen measure first, the other one to break ties.
    fn score(&self, record: &ProcessRecord) -> (u64, u64) {
        match self.rank_by {
            RankBy::PagetableBytes => (record.last_pagetable_bytes, record.pte_pages_reclaimed),
            RankBy::Reclaimed => (record.pte_pages_reclaimed, record.last_pagetable_bytes),
        }
    }

    /// Update which records are selected. `new` are the pids first seen at
    /// this harvest (their counts were never in `other`).
    pub fn apply(&self, records: &mut BTreeMap<u32, ProcessRecord>, new: &HashSet<u32>) {
        for record in records.values_mut() {
            if record.selected && !self.qualifies(record, true) {
                demote(record);
            }
        }
        let mut challengers: Vec<((u64, u64), u32)> = records
            .values()
            .filter(|r| !r.selected && self.qualifies(r, false))
            .map(|r| (self.score(r), r.pid))
            .collect();
        // Strongest first; among equals the lower (usually older) pid.
        challengers.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut incumbents: Vec<((u64, u64), u32)> =
            records.values().filter(|r| r.selected).map(|r| (self.score(r), r.pid)).collect();
        let free = if self.top == 0 { usize::MAX } else { self.top.saturating_sub(incumbents.len()) };
        let mut challengers = challengers.into_iter().peekable();
        for (_, pid) in challengers.by_ref().take(free) {
            select(records, pid, new);
        }
        // The weakest incumbents face the strongest remaining challengers;
        // once one holds, every later pairing would too.
        incumbents.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        for (weakest, incumbent) in incumbents {
            let Some(&(score, challenger)) = challengers.peek() else { break };
            if score.0 <= weakest.0.saturating_add(weakest.0 / CHALLENGE_MARGIN_DIVISOR) {
                break;
            }
            challengers.next();
            if let Some(record) = records.get_mut(&incumbent) {
                demote(record);
            }
            select(records, challenger, new);
        }
    }
}

fn select(records: &mut BTreeMap<u32, ProcessRecord>, pid: u32, new: &HashSet<u32>) {
    if let Some(record) = records.get_mut(&pid) {
        record.selected = true;
        record.baseline = if new.contains(&pid) { Counts::default() } else { Counts::of(record) };
    }
}

fn demote(record: &mut ProcessRecord) {
    record.selected = false;
    record.baseline = Counts::default();
}

/// The `other` series: `retired` (records gone) plus, for each record, its
/// whole count if unselected or its baseline if selected.
pub fn folded<'a>(retired: &Counts, records: impl IntoIterator<Item = &'a ProcessRecord>) -> Folded {
    let mut folded = Folded { counts: retired.clone(), ..Folded::default() };
    for record in records {
        if record.selected {
            folded.counts.add(&record.baseline);
        } else {
            folded.counts.add_record(record);
            folded.pagetable_bytes += record.pagetable_bytes.unwrap_or(0);
            folded.processes += 1;
        }
    }
    folded
}
