//! The counters of one process, cgroup or of the node, as one `Copy` value:
//! what a per-process entry, an overflow slot and the node's per-CPU slots
//! all count, so that every sum the exporter promises is one `add` away.

use ptwatch_common::{Cause, FreeCounts, Level, NodeCounters, ProcessCounters};

/// DONTNEED requests, their bytes, and page-table pages freed by cause and
/// level (PT_RECLAIM's count is [`Counts::reclaimed`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub dontneed_calls: u64,
    pub dontneed_bytes: u64,
    pub frees: FreeCounts,
}

impl Counts {
    /// The counters of a `PROCESS_COUNTERS` entry or an overflow slot.
    pub fn of_process(counters: &ProcessCounters) -> Self {
        Self { dontneed_calls: counters.dontneed_calls, dontneed_bytes: counters.dontneed_bytes, frees: counters.frees }
    }

    /// The counters of one CPU's `NODE_COUNTERS` slot.
    pub fn of_node(counters: &NodeCounters) -> Self {
        Self { dontneed_calls: counters.dontneed_calls, dontneed_bytes: counters.dontneed_bytes, frees: counters.frees }
    }

    /// PTE pages PT_RECLAIM freed.
    pub fn reclaimed(&self) -> u64 {
        self.frees.reclaimed()
    }

    /// Pages freed for `cause` at `level`.
    pub fn freed(&self, cause: Cause, level: Level) -> u64 {
        self.frees.get(cause, level)
    }

    /// `self += other`.
    #[inline]
    pub fn add(&mut self, other: &Self) {
        self.zip_mut(other, |mine, theirs| *mine = mine.wrapping_add(theirs));
    }

    /// `self -= other`, wrapping: undoes an earlier [`Self::add`] of
    /// `other`, so a sum kept by adding and taking out parts stays exact.
    #[inline]
    pub fn sub(&mut self, other: &Self) {
        self.zip_mut(other, |mine, theirs| *mine = mine.wrapping_sub(theirs));
    }

    /// Whether every field is 0.
    #[inline]
    pub fn is_zero(&self) -> bool {
        let pages = self.frees.pages.as_flattened().iter().fold(0u64, |any, pages| any | pages);
        (pages | self.dontneed_calls | self.dontneed_bytes) == 0
    }

    /// `self - other`, each field at least 0. Used where `other` is known to
    /// be a part of `self` (a series' own count within its whole count).
    #[inline]
    pub fn minus(&self, other: &Self) -> Self {
        let mut out = *self;
        out.zip_mut(other, |mine, theirs| *mine = mine.saturating_sub(theirs));
        out
    }

    /// `self += whole.minus(part)`, in one pass and without a temporary
    /// (a scrape does it for every series).
    #[inline]
    pub fn add_difference(&mut self, whole: &Self, part: &Self) {
        let add = |sum: &mut u64, whole: u64, part: u64| *sum = sum.wrapping_add(whole.saturating_sub(part));
        add(&mut self.dontneed_calls, whole.dontneed_calls, part.dontneed_calls);
        add(&mut self.dontneed_bytes, whole.dontneed_bytes, part.dontneed_bytes);
        let fields = whole.frees.pages.as_flattened().iter().zip(part.frees.pages.as_flattened());
        for (sum, (whole, part)) in self.frees.pages.as_flattened_mut().iter_mut().zip(fields) {
            add(sum, *whole, *part);
        }
    }

    /// What was counted between reading `before` and reading `self` from
    /// the same kernel entry. An entry whose fields only grow grew by the
    /// difference; one with any field lower can only have been re-created
    /// from zero meanwhile, and all of its value is new. So a total built
    /// from these deltas never goes down, whatever the kernel entry does.
    pub fn growth_since(&self, before: &Self) -> Self {
        if self.covers(before) {
            self.minus(before)
        } else {
            *self
        }
    }

    /// Whether no field is below `other`'s.
    pub fn covers(&self, other: &Self) -> bool {
        // Without early exit: a straight loop over 32 fields vectorises.
        let pages = self.frees.pages.as_flattened().iter().zip(other.frees.pages.as_flattened());
        let below = pages.fold(0u64, |below, (mine, theirs)| below | u64::from(mine < theirs));
        below == 0 && self.dontneed_calls >= other.dontneed_calls && self.dontneed_bytes >= other.dontneed_bytes
    }

    /// Apply `f` to each field of `self` with the same field of `other`.
    #[inline]
    fn zip_mut(&mut self, other: &Self, f: impl Fn(&mut u64, u64)) {
        f(&mut self.dontneed_calls, other.dontneed_calls);
        f(&mut self.dontneed_bytes, other.dontneed_bytes);
        for (pages, other_pages) in self.frees.pages.as_flattened_mut().iter_mut().zip(other.frees.pages.as_flattened())
        {
            f(pages, *other_pages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(calls: u64, reclaimed: u64, unmapped: u64) -> Counts {
        let mut c = Counts { dontneed_calls: calls, dontneed_bytes: calls * 4096, ..Counts::default() };
        c.frees.pages[Cause::Reclaim.index()][Level::Pte.index()] = reclaimed;
        c.frees.pages[Cause::Unmap.index()][Level::Pmd.index()] = unmapped;
        c
    }

    #[test]
    fn add_minus_and_reclaimed() {
        let mut sum = counts(1, 2, 3);
        sum.add(&counts(10, 20, 30));
        assert_eq!(sum, counts(11, 22, 33));
        assert_eq!(sum.reclaimed(), 22);
        assert_eq!(sum.freed(Cause::Unmap, Level::Pmd), 33);
        assert_eq!(sum.minus(&counts(1, 2, 3)), counts(10, 20, 30));
        assert_eq!(counts(1, 1, 1).minus(&counts(2, 2, 2)), Counts::default(), "never below zero");
        let mut undone = counts(5, 6, 7);
        undone.sub(&counts(9, 9, 9));
        undone.add(&counts(9, 9, 9));
        assert_eq!(undone, counts(5, 6, 7), "sub undoes add, through wrapping");
        assert!(Counts::default().is_zero() && !counts(0, 0, 1).is_zero() && !counts(1, 0, 0).is_zero());
        let mut total = counts(1, 2, 3);
        total.add_difference(&counts(10, 20, 30), &counts(4, 5, 40));
        assert_eq!(total, counts(7, 17, 3), "a field of the part above the whole adds nothing");
    }

    #[test]
    fn growth_of_a_re_created_entry_counts_from_zero() {
        // Normal growth.
        assert_eq!(counts(5, 8, 0).growth_since(&counts(3, 8, 0)), counts(2, 0, 0));
        // A field went down: the entry was re-created, and everything in it
        // is new, also the fields that happen to be higher than before.
        assert_eq!(counts(1, 2, 0).growth_since(&counts(3, 8, 0)), counts(1, 2, 0));
        assert_eq!(counts(1, 20, 0).growth_since(&counts(1, 8, 4)), counts(1, 20, 0));
        assert!(counts(3, 8, 1).covers(&counts(3, 8, 0)));
        assert!(!counts(3, 7, 1).covers(&counts(3, 8, 0)));
    }
}
