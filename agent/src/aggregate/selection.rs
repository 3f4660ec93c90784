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
//! Counters never go down, and every sum stays exact (see
//! [`super::record::Export`] for the states of a series):
//! - a series of its own counts from when it was selected; what the
//!   process counted before stays in `other` (a process selected at the
//!   harvest that first sees it owns all its counts: none were in `other`);
//! - a process that loses its place keeps its series frozen at its last
//!   value for the TTL, and what it counts meanwhile goes to `other`;
//!   selected again within the TTL, the series grows again from there;
//!   after it, the series ends, its value joins `other`, and the process
//!   stays in `other` (a series of its own would come back lower);
//! - records that expire leave their whole count in `other`.
//!
//! So `other` = expired records + the part of each series not in its own,
//! each term of which only grows, and own + `other` is, at every harvest,
//! the sum over every process the agent ever counted.

use std::{collections::BTreeMap, time::Instant};

use ptwatch_common::ProcessKey;

use super::{
    counts::Counts,
    record::{Export, ProcessRecord},
};

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

/// What the `pid="other",comm="other"` series carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    pub counts: Counts,
    /// Page-table memory of the live processes without a growing series.
    pub pagetable_bytes: u64,
    /// Processes (live, or exited within the TTL) without a growing series
    /// of their own (a frozen one counts here).
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
        let reclaimed = self.min_reclaimed_pages.is_some_and(|min| record.total().reclaimed() >= min);
        pagetable || reclaimed
    }

    /// Ranking key: the chosen measure first, the other one to break ties.
    fn score(&self, record: &ProcessRecord) -> (u64, u64) {
        let reclaimed = record.total().reclaimed();
        match self.rank_by {
            RankBy::PagetableBytes => (record.last_pagetable_bytes, reclaimed),
            RankBy::Reclaimed => (reclaimed, record.last_pagetable_bytes),
        }
    }

    /// Update which records' series are their own, in one walk of the
    /// records (plus the changes a ranking decides). `in_other` (the sum of
    /// what every series has in `other`) loses what a new series selected
    /// at once takes with it.
    pub fn apply(&self, records: &mut BTreeMap<ProcessKey, ProcessRecord>, now: Instant, in_other: &mut Counts) {
        let mut challengers: Vec<((u64, u64), ProcessKey)> = Vec::new();
        let mut incumbents: Vec<((u64, u64), ProcessKey)> = Vec::new();
        for record in records.values_mut() {
            // One that no longer qualifies even at half the threshold would
            // not qualify as a challenger either.
            if record.series.export == Export::Own && !self.qualifies(record, true) {
                record.series.freeze(now);
            }
            if record.series.is_selectable() && self.qualifies(record, false) {
                if self.top == 0 {
                    // No limit: everyone who qualifies, nobody to challenge.
                    in_other.sub(&record.series.select());
                } else {
                    challengers.push((self.score(record), record.key));
                }
            } else if record.series.export == Export::Own && self.top != 0 {
                incumbents.push((self.score(record), record.key));
            }
        }
        if self.top == 0 {
            return;
        }
        // Strongest first; among equals the lower (usually older) pid.
        challengers.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let free = self.top.saturating_sub(incumbents.len());
        let mut challengers = challengers.into_iter().peekable();
        for (_, key) in challengers.by_ref().take(free) {
            if let Some(record) = records.get_mut(&key) {
                in_other.sub(&record.series.select());
            }
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
                record.series.freeze(now);
            }
            if let Some(record) = records.get_mut(&challenger) {
                in_other.sub(&record.series.select());
            }
        }
    }
}
