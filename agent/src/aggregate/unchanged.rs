//! What the last merge applied, so that the next merge skips the entries
//! that did not change since.
//!
//! A scrape reads every `PROCESS_COUNTERS` entry, and most have not moved
//! since the last read: at 10,000 series, merging each one into its record
//! (a tree lookup and ~600 bytes of record, scattered, then the growth
//! arithmetic) cost a quarter of the render. Comparing each entry with the
//! same key's entry of the last read, which the kernel returns in the same
//! order (its hash buckets'), costs a contiguous compare.
//!
//! Skipping is exact because an entry's value changes only by the programs'
//! adds and by the agent taking it out: the programs never delete or
//! re-create an entry. So a key whose entry holds the value the last merge
//! applied, and that the agent has not taken out (nor dropped the record
//! of) since, has a record whose kernel value is that value: its growth is
//! zero. Keys taken out or dropped are [`LastRead::touch`]ed and always
//! merged.

use ptwatch_common::{ProcessCounters, ProcessKey};

/// How far ahead of the expected position a key is looked for in the last
/// read: entries that left in between (exited processes) shift the rest.
/// A key not found that near is merged the slow way, which is always right.
const LOOKAHEAD: usize = 32;

/// The entries the last merge applied, in the order they were read.
#[derive(Default)]
pub(super) struct LastRead {
    entries: Vec<(ProcessKey, ProcessCounters)>,
    /// Keys taken out of the map or whose record left since that merge.
    touched: Vec<ProcessKey>,
}

impl LastRead {
    /// The record of `key` changed outside the merge (its entry taken out,
    /// or the record dropped): its next entry is merged whatever it holds.
    pub fn touch(&mut self, key: ProcessKey) {
        self.touched.push(key);
    }

    /// Start comparing a new read, in order, with this one.
    pub fn cursor(&mut self) -> Cursor<'_> {
        self.touched.sort_unstable();
        self.touched.dedup();
        Cursor { entries: &self.entries, touched: &self.touched, at: 0 }
    }

    /// `read` was merged: it is the last read now. Its allocation is
    /// swapped with this one's, so neither buffer is allocated again.
    pub fn replace(&mut self, read: &mut Vec<(ProcessKey, ProcessCounters)>) {
        std::mem::swap(&mut self.entries, read);
        self.touched.clear();
    }
}

/// A position in the last read.
pub(super) struct Cursor<'a> {
    entries: &'a [(ProcessKey, ProcessCounters)],
    touched: &'a [ProcessKey],
    at: usize,
}

impl Cursor<'_> {
    /// Whether the entry `key` read `counters` at the last merge too, with
    /// nothing done to its record since: then it grew by nothing. Entries
    /// must be asked about in the order they were read.
    pub fn unchanged(&mut self, key: &ProcessKey, counters: &ProcessCounters) -> bool {
        let ahead = self.entries.get(self.at..).unwrap_or_default();
        let Some(offset) = ahead.iter().take(LOOKAHEAD).position(|(last, _)| last == key) else {
            // New since, or moved: the cursor stays for the next key.
            return false;
        };
        self.at += offset + 1;
        let (_, last) = &ahead[offset];
        same(last, counters) && (self.touched.is_empty() || self.touched.binary_search(key).is_err())
    }
}

/// `a == b`, every field, without early exit: a straight fold over the
/// 35 words compiles to a few vector instructions, where the derived
/// `==` calls `memcmp`, which musl (the static builds) runs a byte at a
/// time.
fn same(a: &ProcessCounters, b: &ProcessCounters) -> bool {
    let ProcessCounters { dontneed_calls, dontneed_bytes, frees, cgroup_id, comm } = a;
    let pages = frees.pages.as_flattened().iter().zip(b.frees.pages.as_flattened());
    let differ = pages.fold(0u64, |differ, (a, b)| differ | (a ^ b))
        | (dontneed_calls ^ b.dontneed_calls)
        | (dontneed_bytes ^ b.dontneed_bytes)
        | (cgroup_id ^ b.cgroup_id);
    differ == 0 && u128::from_ne_bytes(*comm) == u128::from_ne_bytes(b.comm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32) -> ProcessKey {
        ProcessKey { tgid, _pad: 0, start_time_ns: u64::from(tgid) * 10 }
    }

    fn calls(n: u64) -> ProcessCounters {
        ProcessCounters { dontneed_calls: n, ..ProcessCounters::default() }
    }

    fn remember(last: &mut LastRead, read: &[(u32, u64)]) {
        let mut entries: Vec<_> = read.iter().map(|&(tgid, n)| (key(tgid), calls(n))).collect();
        last.replace(&mut entries);
    }

    fn unchanged(last: &mut LastRead, read: &[(u32, u64)]) -> Vec<bool> {
        let mut cursor = last.cursor();
        read.iter().map(|&(tgid, n)| cursor.unchanged(&key(tgid), &calls(n))).collect()
    }

    #[test]
    fn same_compares_every_field() {
        let base = ProcessCounters { dontneed_calls: 1, cgroup_id: 7, ..ProcessCounters::default() };
        assert!(same(&base, &base));
        let mut changes = vec![
            ProcessCounters { dontneed_calls: 2, ..base },
            ProcessCounters { dontneed_bytes: 1, ..base },
            ProcessCounters { cgroup_id: 8, ..base },
        ];
        let mut comm = base;
        comm.comm[15] = b'x';
        changes.push(comm);
        for (index, _) in base.frees.pages.as_flattened().iter().enumerate() {
            let mut freed = base;
            freed.frees.pages.as_flattened_mut()[index] = 1;
            changes.push(freed);
        }
        for changed in changes {
            assert!(!same(&base, &changed) && !same(&changed, &base), "{changed:?}");
        }
    }

    #[test]
    fn only_equal_entries_of_untouched_keys_are_unchanged() {
        let mut last = LastRead::default();
        assert_eq!(unchanged(&mut last, &[(1, 1)]), [false], "nothing read before");
        remember(&mut last, &[(1, 1), (2, 5), (3, 7)]);
        assert_eq!(unchanged(&mut last, &[(1, 1), (2, 6), (3, 7)]), [true, false, true]);
        last.touch(key(3));
        assert_eq!(unchanged(&mut last, &[(1, 1), (2, 5), (3, 7)]), [true, true, false], "taken out since");
        remember(&mut last, &[(1, 1), (2, 5), (3, 7)]);
        assert_eq!(unchanged(&mut last, &[(1, 1), (2, 5), (3, 7)]), [true, true, true], "touched until the next merge");
    }

    #[test]
    fn entries_that_came_or_left_do_not_lose_the_others() {
        let mut last = LastRead::default();
        let before: Vec<(u32, u64)> = (1..=100).map(|tgid| (tgid, 1)).collect();
        remember(&mut last, &before);
        // 20 left together, two came in the middle and one at the start.
        let mut after: Vec<(u32, u64)> = vec![(500, 1)];
        after.extend(before.iter().filter(|(tgid, _)| !(30..50).contains(tgid)));
        after.insert(60, (501, 1));
        after.insert(61, (502, 1));
        let seen = unchanged(&mut last, &after);
        for (&(tgid, _), unchanged) in after.iter().zip(seen) {
            assert_eq!(unchanged, tgid < 500, "pid {tgid}");
        }
        // Out of order (a bucket's entries in another order): merged the
        // slow way, never wrongly skipped.
        let reversed: Vec<(u32, u64)> = before.iter().rev().copied().collect();
        let seen = unchanged(&mut last, &reversed);
        assert!(seen.iter().filter(|&&unchanged| unchanged).count() <= 2, "{seen:?}");
    }
}
