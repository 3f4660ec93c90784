//! How much CPU time an estimate may take, and what its reads are expected
//! to cost.
//!
//! The budget is CPU time of the calling thread (user and system), not wall
//! time: reading `/proc` is almost all kernel work done on the reader's
//! behalf, and a busy machine must not make the agent look expensive (or let
//! it read less) because it waited for a CPU. A [`Budget`] must be used on
//! the thread that created it.
//!
//! [`CostModel`] predicts what reading `smaps` or a range of `pagemap` will
//! cost before doing it, so that the estimator picks the reads that fit: a
//! read already started cannot be interrupted (one `smaps` entry walks a
//! whole mapping's page tables). Its unit costs were measured on the
//! project's CI machine and are corrected by what each read really costs.

use std::time::Duration;

/// CPU time (user + system) used by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Linux kernel supports.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

/// A CPU-time allowance that started when it was created.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    started: Duration,
    /// None: unlimited (`ptwatch scan` without `--budget`).
    limit: Option<Duration>,
}

impl Budget {
    pub fn unlimited() -> Self {
        Self { started: thread_cpu_time(), limit: None }
    }

    /// `limit` of this thread's CPU time from now.
    pub fn cpu(limit: Duration) -> Self {
        Self { started: thread_cpu_time(), limit: Some(limit) }
    }

    pub fn is_limited(&self) -> bool {
        self.limit.is_some()
    }

    /// CPU time used since the budget started.
    pub fn used(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.started)
    }

    /// What is left; None when unlimited.
    pub fn remaining(&self) -> Option<Duration> {
        self.limit.map(|limit| limit.saturating_sub(self.used()))
    }

    pub fn is_exhausted(&self) -> bool {
        self.remaining().is_some_and(|left| left.is_zero())
    }

    /// Whether a read expected to cost `cost` fits in what is left.
    pub fn allows(&self, cost: Duration) -> bool {
        self.remaining().is_none_or(|left| cost <= left)
    }

    /// A budget of at most `at_most` from now, within this one.
    pub fn share(&self, at_most: Duration) -> Self {
        let limit = self.remaining().map_or(at_most, |left| left.min(at_most));
        Self::cpu(limit)
    }
}

/// Unit costs measured on the CI machine (2 vCPU VM, 6.18): `smaps` walks
/// every PTE table of the process (about 1.8 µs per table with one page in
/// each) and looks at every present page; `pagemap` costs about 2–3 µs per
/// 2 MiB span read in 64-span chunks, 3–4 µs for one span read alone.
const SMAPS_PER_MAPPING: Duration = Duration::from_micros(4);
const SMAPS_PER_TABLE: Duration = Duration::from_nanos(2_000);
const SMAPS_PER_PAGE: Duration = Duration::from_nanos(40);
const PAGEMAP_PER_SPAN: Duration = Duration::from_nanos(3_000);
const SAMPLE_PER_SPAN: Duration = Duration::from_nanos(4_000);

/// Predicted costs, scaled by how far the last predictions were off.
#[derive(Clone, Debug)]
pub struct CostModel {
    smaps_scale: f64,
    pagemap_scale: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        Self { smaps_scale: 1.0, pagemap_scale: 1.0 }
    }
}

impl CostModel {
    /// Reading `smaps` of a process with these counts.
    pub fn smaps(&self, mappings: u64, tables: u64, resident_pages: u64) -> Duration {
        let base = SMAPS_PER_MAPPING.saturating_mul(clamp_u32(mappings))
            + SMAPS_PER_TABLE.saturating_mul(clamp_u32(tables))
            + SMAPS_PER_PAGE.saturating_mul(clamp_u32(resident_pages));
        base.mul_f64(self.smaps_scale)
    }

    /// Reading `spans` spans of `pagemap` in chunks.
    pub fn pagemap(&self, spans: u64) -> Duration {
        PAGEMAP_PER_SPAN.saturating_mul(clamp_u32(spans)).mul_f64(self.pagemap_scale)
    }

    /// Reading one span at a random place.
    pub fn sample(&self) -> Duration {
        SAMPLE_PER_SPAN.mul_f64(self.pagemap_scale)
    }

    pub fn learn_smaps(&mut self, predicted: Duration, actual: Duration) {
        self.smaps_scale = learn(self.smaps_scale, predicted, actual);
    }

    pub fn learn_pagemap(&mut self, predicted: Duration, actual: Duration) {
        self.pagemap_scale = learn(self.pagemap_scale, predicted, actual);
    }
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Move `scale` a quarter of the way towards what would have predicted
/// `actual`, within 0.1–20× the measured unit costs. Reads too short for the
/// thread clock to time (under 200 µs) teach nothing.
fn learn(scale: f64, predicted: Duration, actual: Duration) -> f64 {
    if predicted < Duration::from_micros(200) || actual < Duration::from_micros(200) {
        return scale;
    }
    let observed = scale * actual.as_secs_f64() / predicted.as_secs_f64();
    (scale * 0.75 + observed * 0.25).clamp(0.1, 20.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_clock_moves_with_work() {
        let budget = Budget::cpu(Duration::from_secs(3600));
        let mut x = 0u64;
        while budget.used() < Duration::from_millis(5) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(!budget.is_exhausted());
        assert!(budget.allows(Duration::from_secs(60)));
        let small = budget.share(Duration::from_millis(1));
        assert!(small.remaining().is_some_and(|left| left <= Duration::from_millis(1)));
        assert!(Budget::unlimited().allows(Duration::MAX));
        assert_eq!(Budget::unlimited().remaining(), None);
    }

    #[test]
    fn an_exhausted_budget_says_so() {
        let budget = Budget::cpu(Duration::ZERO);
        assert!(budget.is_exhausted());
        assert!(!budget.allows(Duration::from_nanos(1)));
        assert!(budget.allows(Duration::ZERO));
    }

    #[test]
    fn the_model_learns_from_what_reads_cost() {
        let mut model = CostModel::default();
        let predicted = model.pagemap(1000);
        assert_eq!(predicted, Duration::from_millis(3));
        // Reads cost twice the prediction: the scale moves a quarter of the way.
        model.learn_pagemap(predicted, predicted * 2);
        assert!((model.pagemap(1000).as_secs_f64() / 0.003 - 1.25).abs() < 1e-9);
        // Too short to time: ignored.
        model.learn_pagemap(Duration::from_micros(10), Duration::from_secs(1));
        assert!((model.pagemap_scale - 1.25).abs() < 1e-9);
        assert_eq!(model.smaps(0, 0, 0), Duration::ZERO);
        assert!(model.smaps(10, 32_768, 16_384) > Duration::from_millis(60));
    }
}
