//! Finding out which spans of a set hold a page or swap entry: every span
//! when the budget allows (exact), otherwise a uniform random sample of the
//! spans left, from which the rest is estimated with a 99 % confidence
//! interval ([`Reading::rest_needed`]).
//!
//! Spans are read whole (512 `pagemap` entries): entries of addresses that
//! no mapping covers read as empty, so a span shared by two mappings is
//! classified once, from all of its entries.

use std::{collections::BTreeMap, time::Duration};

use super::{
    budget::{Budget, CostModel},
    estimate::{wilson, Bounds, Z_99},
    spans::SpanSet,
};

/// Spans read per `pread` when reading in order (128 MiB of address space,
/// 256 KiB of entries).
pub const CHUNK_SPANS: u64 = 64;

/// Samples drawn whatever the budget says, so that a process reached with
/// its budget spent still gets an estimate rather than none (about 0.1 ms).
pub const MIN_SAMPLES: u64 = 32;

/// Samples between two looks at the clock (which is itself a system call).
const SAMPLES_PER_CHECK: u64 = 16;

/// Classifies spans: for `count` spans from `first`, push whether each holds
/// an entry.
pub trait SpanReader {
    type Error;
    fn read(&mut self, first: u64, count: u64, out: &mut Vec<bool>) -> Result<(), Self::Error>;
}

/// What was found about a set of spans.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// Spans read in order, every one of them.
    pub read: SpanSet,
    /// Those of them with nothing present or swapped.
    pub read_empty: SpanSet,
    /// Spans not read in order (the budget ran out): estimated from samples.
    pub rest: SpanSet,
    /// Each span of `rest` drawn, with whether it holds an entry; `draws`
    /// counts repeated draws of one span (sampling is with replacement).
    pub sampled: BTreeMap<u64, bool>,
    pub draws: u64,
    pub draw_hits: u64,
}

impl Reading {
    pub fn is_exact(&self) -> bool {
        self.rest.is_empty()
    }

    /// Spans read in order that hold an entry.
    pub fn read_needed(&self) -> SpanSet {
        self.read.minus(&self.read_empty)
    }

    /// Spans of `rest` seen to hold an entry.
    pub fn sampled_needed(&self) -> SpanSet {
        SpanSet::from_ranges(self.sampled.iter().filter(|(_, &needed)| needed).map(|(&s, _)| (s, s + 1)))
    }

    /// The share of `rest` holding an entry, as sampled (0 without samples).
    pub fn rest_density(&self) -> f64 {
        if self.draws == 0 {
            0.0
        } else {
            self.draw_hits as f64 / self.draws as f64
        }
    }

    /// Spans of `rest` holding an entry: the sampled share scaled to `rest`,
    /// within the 99 % interval and what the sample proves (spans seen with
    /// an entry, and without one), and at most `at_most` (e.g. from `Rss`).
    pub fn rest_needed(&self, at_most: u64) -> Bounds {
        let n = self.rest.len();
        if n == 0 {
            return Bounds::default();
        }
        let seen_needed = self.sampled.values().filter(|&&needed| needed).count() as u64;
        let seen_empty = self.sampled.len() as u64 - seen_needed;
        let (low, high) = wilson(self.draw_hits, self.draws, Z_99);
        let nf = n as f64;
        let estimate = (nf * self.rest_density()).round() as u64;
        let interval = Bounds::new((nf * low).ceil() as u64, estimate, (nf * high).floor() as u64);
        // What is proved (spans seen either way, the counters' limit) wins
        // over what is likely.
        interval.within(seen_needed, (n - seen_empty).min(at_most.max(seen_needed)))
    }
}

/// Read `set` in order while the budget allows it (all of it when
/// unlimited), then sample what is left until the budget is spent (at least
/// [`MIN_SAMPLES`] draws). `cost` predicts the reads and learns their real
/// cost; `seed` makes the sample reproducible in tests.
pub fn read_spans<R: SpanReader>(
    set: &SpanSet,
    reader: &mut R,
    budget: &Budget,
    cost: &mut CostModel,
    seed: u64,
) -> Result<Reading, R::Error> {
    let mut reading = Reading::default();
    // Read in order only what is predicted to fit: a set too big for the
    // budget is sampled from the start, so that the sample covers all of it.
    // A set no bigger than the minimum sample is read whole in any case.
    let in_order = budget.allows(cost.pagemap(set.len())) || set.len() <= MIN_SAMPLES;
    let mut out = Vec::new();
    let mut empty = Vec::new();
    let mut stopped_at = None;
    if in_order {
        let started = budget.used();
        let mut left = set.len();
        'ranges: for &(start, end) in set.ranges() {
            let mut at = start;
            while at < end {
                if left > MIN_SAMPLES && budget.is_exhausted() {
                    stopped_at = Some(at);
                    break 'ranges;
                }
                let count = (end - at).min(CHUNK_SPANS - at % CHUNK_SPANS);
                out.clear();
                reader.read(at, count, &mut out)?;
                for (i, &needed) in out.iter().enumerate() {
                    if !needed {
                        let span = at + i as u64;
                        match empty.last_mut() {
                            Some((_, last_end)) if *last_end == span => *last_end = span + 1,
                            _ => empty.push((span, span + 1)),
                        }
                    }
                }
                at += count;
                left -= count;
            }
        }
        let (read, _) = set.split_at(stopped_at.unwrap_or(u64::MAX));
        cost.learn_pagemap(cost.pagemap(read.len()), budget.used().saturating_sub(started));
        reading.read = read;
        reading.read_empty = SpanSet::from_ranges(empty);
        reading.rest = stopped_at.map(|at| set.split_at(at).1).unwrap_or_default();
    } else {
        reading.rest = set.clone();
    }
    if !reading.rest.is_empty() {
        sample(&mut reading, reader, budget, cost, seed)?;
    }
    Ok(reading)
}

fn sample<R: SpanReader>(
    reading: &mut Reading,
    reader: &mut R,
    budget: &Budget,
    cost: &mut CostModel,
    seed: u64,
) -> Result<(), R::Error> {
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(1);
    let started = budget.used();
    let n = reading.rest.len();
    loop {
        if reading.draws >= MIN_SAMPLES
            && reading.draws.is_multiple_of(SAMPLES_PER_CHECK)
            && !budget.allows(cost.sample())
        {
            break;
        }
        // Every span drawn (the set is small enough to read whole, in
        // effect): the sample is the set, nothing left to estimate.
        if reading.sampled.len() as u64 == n {
            break;
        }
        let span = reading.rest.nth(rng.below(n)).unwrap_or(0);
        let needed = match reading.sampled.get(&span) {
            Some(&needed) => needed,
            None => {
                out.clear();
                reader.read(span, 1, &mut out)?;
                let needed = out.first().copied().unwrap_or(false);
                reading.sampled.insert(span, needed);
                needed
            }
        };
        reading.draws += 1;
        reading.draw_hits += u64::from(needed);
    }
    let spent = budget.used().saturating_sub(started);
    cost.learn_pagemap(cost.sample().saturating_mul(reading.sampled.len() as u32), spent);
    if reading.sampled.len() as u64 == n {
        // The sample saw every span: fold it into the exact part.
        let needed = reading.sampled_needed();
        reading.read = SpanSet::from_ranges(reading.read.ranges().iter().chain(reading.rest.ranges()).copied());
        let empty = reading.rest.minus(&needed);
        reading.read_empty = SpanSet::from_ranges(reading.read_empty.ranges().iter().chain(empty.ranges()).copied());
        reading.rest = SpanSet::default();
        reading.sampled.clear();
        reading.draws = 0;
        reading.draw_hits = 0;
    }
    Ok(())
}

/// A small, fast generator for picking spans (SplitMix64): the sample must
/// be uniform, not unpredictable.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias worth noticing: the
    /// 128-bit product takes the high bits.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// A seed that differs between calls, for the agent and `scan`.
pub fn fresh_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    (now.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans whose index satisfies `needed` hold an entry.
    struct Fake<F: Fn(u64) -> bool> {
        needed: F,
        reads: u64,
        spans_read: u64,
    }

    impl<F: Fn(u64) -> bool> SpanReader for Fake<F> {
        type Error = ();
        fn read(&mut self, first: u64, count: u64, out: &mut Vec<bool>) -> Result<(), ()> {
            self.reads += 1;
            self.spans_read += count;
            out.extend((first..first + count).map(&self.needed));
            Ok(())
        }
    }

    fn fake(needed: impl Fn(u64) -> bool) -> Fake<impl Fn(u64) -> bool> {
        Fake { needed, reads: 0, spans_read: 0 }
    }

    #[test]
    fn unlimited_reads_everything_in_chunks() {
        let set = SpanSet::from_ranges([(10, 200), (1000, 1001)]);
        let mut reader = fake(|s| s % 3 == 0);
        let reading = read_spans(&set, &mut reader, &Budget::unlimited(), &mut CostModel::default(), 1).expect("read");
        assert!(reading.is_exact());
        assert_eq!(reader.spans_read, 191);
        // 10..64, 64..128, 128..192, 192..200, 1000..1001.
        assert_eq!(reader.reads, 5);
        let needed = reading.read_needed();
        assert_eq!(needed.len(), (10..200).filter(|s| s % 3 == 0).count() as u64);
        assert!(!needed.contains(1000));
        assert_eq!(reading.rest_needed(u64::MAX), Bounds::default());
    }

    #[test]
    fn a_set_too_big_for_the_budget_is_sampled_within_the_bound() {
        // 1,000,000 spans, 30 % holding entries, a budget for a few
        // thousand samples: the truth lies in the interval.
        let set = SpanSet::from_ranges([(0, 1_000_000)]);
        let truth = (0..1_000_000u64).filter(|s| s.wrapping_mul(0x9E37_79B9) % 10 < 3).count() as u64;
        let mut misses = 0;
        for seed in 0..100 {
            let mut reader = fake(|s: u64| s.wrapping_mul(0x9E37_79B9) % 10 < 3);
            let budget = Budget::cpu(Duration::from_millis(3));
            let reading = read_spans(&set, &mut reader, &budget, &mut CostModel::default(), seed).expect("read");
            assert!(!reading.is_exact());
            assert!(reading.read.is_empty(), "predicted too expensive to read in order");
            assert!(reading.draws >= MIN_SAMPLES);
            let bounds = reading.rest_needed(u64::MAX);
            assert!(bounds.min <= bounds.estimate && bounds.estimate <= bounds.max);
            assert!(bounds.error() < 1_000_000 / 10, "{bounds:?} after {} draws", reading.draws);
            if truth < bounds.min || truth > bounds.max {
                misses += 1;
            }
        }
        // 99 % intervals: about one miss in 100 runs; 7 or more has a
        // chance of 1e-4 (a one-run assertion would fail one time in 100).
        assert!(misses <= 6, "{misses} of 100 intervals missed {truth}");
    }

    #[test]
    fn what_the_sample_proves_and_rss_narrow_the_interval() {
        // Every span holds an entry, and Rss says at most 5,000 can.
        let set = SpanSet::from_ranges([(0, 100_000)]);
        let mut reader = fake(|_| true);
        let budget = Budget::cpu(Duration::ZERO);
        let reading = read_spans(&set, &mut reader, &budget, &mut CostModel::default(), 7).expect("read");
        assert_eq!(reading.draws, MIN_SAMPLES, "an exhausted budget still draws the minimum");
        let bounds = reading.rest_needed(5_000);
        assert_eq!(bounds.max, 5_000);
        assert_eq!(bounds.estimate, 5_000, "clipped into the interval");
        assert!(bounds.min >= 1, "{bounds:?}");
    }

    #[test]
    fn a_small_set_is_read_whole_whatever_the_budget() {
        let set = SpanSet::from_ranges([(0, 20)]);
        let mut reader = fake(|s| s < 5);
        let budget = Budget::cpu(Duration::ZERO);
        let reading = read_spans(&set, &mut reader, &budget, &mut CostModel::default(), 3).expect("read");
        assert!(reading.is_exact(), "no bigger than the minimum sample");
        assert_eq!(reading.read_needed().len(), 5);
        assert_eq!(reading.read_empty.len(), 15);
    }

    #[test]
    fn spans_are_drawn_uniformly() {
        let mut rng = SplitMix64(42);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[rng.below(10) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
    }
}
