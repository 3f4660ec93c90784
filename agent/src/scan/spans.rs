//! Sets of 2 MiB spans (span index = address / span size), kept as sorted,
//! disjoint ranges: the estimate works on the union of the spans the
//! mappings touch, in which a span shared by two small mappings is one span,
//! and its memory grows with the number of ranges, not of spans (a 10 TiB
//! mapping is one range).

use std::collections::BTreeMap;

/// Disjoint, ascending, non-empty half-open ranges of span indices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpanSet {
    ranges: Vec<(u64, u64)>,
    /// Spans in the ranges before each one, to find the n-th span.
    before: Vec<u64>,
    len: u64,
}

impl SpanSet {
    /// The union of `ranges` (in any order, overlapping or empty).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut ranges: Vec<(u64, u64)> = ranges.into_iter().filter(|(start, end)| start < end).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Self::from_merged(merged)
    }

    fn from_merged(ranges: Vec<(u64, u64)>) -> Self {
        let mut before = Vec::with_capacity(ranges.len());
        let mut len = 0u64;
        for (start, end) in &ranges {
            before.push(len);
            len += end - start;
        }
        Self { ranges, before, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The `n`-th span of the set in ascending order (`n < len`).
    pub fn nth(&self, n: u64) -> Option<u64> {
        if n >= self.len {
            return None;
        }
        let i = self.before.partition_point(|&b| b <= n) - 1;
        Some(self.ranges[i].0 + (n - self.before[i]))
    }

    pub fn contains(&self, span: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, end)| end <= span);
        self.ranges.get(i).is_some_and(|&(start, _)| start <= span)
    }

    /// Spans of this set not in `other`.
    pub fn minus(&self, other: &SpanSet) -> SpanSet {
        let mut out = Vec::new();
        let mut j = 0;
        for &(start, end) in &self.ranges {
            let mut at = start;
            while j < other.ranges.len() && other.ranges[j].1 <= at {
                j += 1;
            }
            let mut k = j;
            while at < end {
                match other.ranges.get(k) {
                    Some(&(o_start, o_end)) if o_start < end => {
                        if o_start > at {
                            out.push((at, o_start));
                        }
                        at = at.max(o_end);
                        k += 1;
                    }
                    _ => {
                        out.push((at, end));
                        at = end;
                    }
                }
            }
        }
        Self::from_merged(out)
    }

    /// Spans of this set that are also in `other`.
    pub fn intersect(&self, other: &SpanSet) -> SpanSet {
        self.minus(&self.minus(other))
    }

    /// The spans below `span`, and those at or above it.
    pub fn split_at(&self, span: u64) -> (SpanSet, SpanSet) {
        let below = self.ranges.iter().filter(|r| r.0 < span).map(|&(s, e)| (s, e.min(span)));
        let above = self.ranges.iter().filter(|r| r.1 > span).map(|&(s, e)| (s.max(span), e));
        (Self::from_merged(below.collect()), Self::from_merged(above.collect()))
    }

    /// How many spans of the set lie in each region of `1 << shift` spans
    /// (shift 9: the 1 GiB a PMD table maps; 18: the 512 GiB of a PUD table).
    pub fn per_region(&self, shift: u32) -> BTreeMap<u64, u64> {
        let mut regions = BTreeMap::new();
        for &(start, end) in &self.ranges {
            let mut at = start;
            while at < end {
                let region = at >> shift;
                let region_end = ((region + 1) << shift).min(end);
                *regions.entry(region).or_insert(0) += region_end - at;
                at = region_end;
            }
        }
        regions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(u64, u64)]) -> SpanSet {
        SpanSet::from_ranges(ranges.iter().copied())
    }

    #[test]
    fn union_merges_and_drops_empty_ranges() {
        let s = set(&[(10, 20), (0, 5), (5, 7), (15, 25), (30, 30)]);
        assert_eq!(s.ranges(), &[(0, 7), (10, 25)]);
        assert_eq!(s.len(), 22);
        assert!(s.contains(0) && s.contains(6) && !s.contains(7) && s.contains(24) && !s.contains(25));
        assert_eq!((s.nth(0), s.nth(6), s.nth(7), s.nth(21), s.nth(22)), (Some(0), Some(6), Some(10), Some(24), None));
        assert!(SpanSet::default().is_empty());
    }

    #[test]
    fn difference_intersection_and_split() {
        let s = set(&[(0, 10), (20, 30)]);
        let holes = set(&[(2, 4), (8, 22), (29, 40)]);
        assert_eq!(s.minus(&holes).ranges(), &[(0, 2), (4, 8), (22, 29)]);
        assert_eq!(s.intersect(&holes).ranges(), &[(2, 4), (8, 10), (20, 22), (29, 30)]);
        assert_eq!(s.minus(&SpanSet::default()), s);
        assert!(s.minus(&s).is_empty());
        let (below, above) = s.split_at(25);
        assert_eq!((below.ranges(), above.ranges()), (&[(0, 10), (20, 25)][..], &[(25, 30)][..]));
        let (below, above) = s.split_at(0);
        assert!(below.is_empty());
        assert_eq!(above, s);
    }

    #[test]
    fn regions_count_their_spans() {
        // 512 spans per 1 GiB region: a range across a boundary splits.
        let s = set(&[(500, 520), (1024, 1025)]);
        let regions: Vec<_> = s.per_region(9).into_iter().collect();
        assert_eq!(regions, [(0, 12), (1, 8), (2, 1)]);
    }
}
