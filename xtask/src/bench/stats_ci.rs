//! Statistics of paired ratios: a median and a distribution-free 95 %
//! interval for it.
//!
//! On a shared 2-vCPU machine run times drift and jump with other people's
//! builds, so a comparison is made of pairs (agent off and on, run back to
//! back) and summarised by the median of the per-pair ratios. Its interval
//! is the exact order-statistic (sign-test) interval: if the pairs are
//! independent, [r₍ₖ₎, r₍ₙ₊₁₋ₖ₎] of the sorted ratios contains the true
//! median with probability `1 - 2·P(Binomial(n, ½) < k)`, whatever the
//! distribution of the ratios (no normality, no resampling). `k` is chosen
//! as large as possible with that probability still ≥ 95 %.
use serde::{Deserialize, Serialize};

/// Confidence the interval is built for.
pub const CONFIDENCE: f64 = 0.95;

/// Median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    median_of_sorted(&sorted)
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

/// `P(X ≤ k)` for `X ~ Binomial(n, ½)`, exactly enough for any n a bench
/// runs (terms are built by multiplication, no factorials).
fn binomial_half_cdf(n: usize, k: usize) -> f64 {
    // C(n, i) / 2^n, computed incrementally from C(n, 0) / 2^n in log space
    // so that n in the thousands does not underflow.
    let mut log_term = -(n as f64) * std::f64::consts::LN_2;
    let mut sum = 0.0;
    for i in 0..=k.min(n) {
        if i > 0 {
            log_term += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        sum += log_term.exp();
    }
    sum.min(1.0)
}

/// The 1-based rank `k` of the interval's lower end and the interval's exact
/// coverage, or `None` when `n` is too small for any interval to reach 95 %
/// (n < 6).
pub fn order_statistic_rank(n: usize) -> Option<(usize, f64)> {
    let mut best = None;
    for k in 1..=n / 2 {
        let coverage = 1.0 - 2.0 * binomial_half_cdf(n, k - 1);
        if coverage >= CONFIDENCE {
            best = Some((k, coverage));
        } else {
            break;
        }
    }
    best
}

/// Median of paired ratios with its distribution-free interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatioSummary {
    pub pairs: usize,
    pub median: f64,
    /// `[r₍ₖ₎, r₍ₙ₊₁₋ₖ₎]`; `None` with fewer than 6 pairs.
    pub interval: Option<(f64, f64)>,
    /// Exact coverage of `interval` (≥ 0.95).
    pub coverage: Option<f64>,
    /// (max - min) / median of the ratios.
    pub spread: f64,
}

impl RatioSummary {
    pub fn of(ratios: &[f64]) -> Self {
        let mut sorted: Vec<f64> = ratios.iter().copied().filter(|r| r.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = median_of_sorted(&sorted);
        let ci = order_statistic_rank(n);
        let spread = match (sorted.first(), sorted.last()) {
            (Some(lo), Some(hi)) => (hi - lo) / median,
            _ => f64::NAN,
        };
        Self {
            pairs: n,
            median,
            interval: ci.map(|(k, _)| (sorted[k - 1], sorted[n - k])),
            coverage: ci.map(|(_, c)| c),
            spread,
        }
    }

    /// `1.043 [1.021, 1.062]`, or `1.043 [n<6]`.
    pub fn display(&self) -> String {
        match self.interval {
            Some((lo, hi)) => format!("{:.3} [{lo:.3}, {hi:.3}]", self.median),
            None => format!("{:.3} [n<6]", self.median),
        }
    }

    /// Half the interval's width relative to 1, in percent: the smallest
    /// effect such a comparison resolves.
    pub fn half_width_percent(&self) -> Option<f64> {
        self.interval.map(|(lo, hi)| (hi - lo) / 2.0 * 100.0)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::{binomial_half_cdf, median, order_statistic_rank, RatioSummary};

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn binomial_cdf_matches_hand_values() {
        // n = 15: P(X ≤ 3) = (1 + 15 + 105 + 455) / 32768.
        assert!((binomial_half_cdf(15, 3) - 576.0 / 32768.0).abs() < 1e-12);
        assert!((binomial_half_cdf(4, 4) - 1.0).abs() < 1e-12);
        // Large n does not underflow to 0 or overflow.
        let mid = binomial_half_cdf(2000, 1000);
        assert!(mid > 0.5 && mid < 0.52, "{mid}");
    }

    #[test]
    fn ranks_of_the_sign_test_interval() {
        // Published tables of the distribution-free median interval.
        assert_eq!(order_statistic_rank(5), None);
        assert_eq!(order_statistic_rank(6).map(|r| r.0), Some(1));
        assert_eq!(order_statistic_rank(15).map(|r| r.0), Some(4));
        assert_eq!(order_statistic_rank(20).map(|r| r.0), Some(6));
        assert_eq!(order_statistic_rank(30).map(|r| r.0), Some(10));
        let (_, coverage) = order_statistic_rank(15).unwrap();
        assert!((coverage - (1.0 - 2.0 * 576.0 / 32768.0)).abs() < 1e-12);
    }

    #[test]
    fn summary_of_fifteen_ratios() {
        let ratios: Vec<f64> = (1..=15).map(|i| 1.0 + f64::from(i) / 100.0).collect();
        let s = RatioSummary::of(&ratios);
        assert_eq!(s.pairs, 15);
        assert!((s.median - 1.08).abs() < 1e-12);
        let (lo, hi) = s.interval.unwrap();
        assert!((lo - 1.04).abs() < 1e-12 && (hi - 1.12).abs() < 1e-12);
        assert_eq!(s.display(), "1.080 [1.040, 1.120]");
    }

    #[test]
    fn too_few_pairs_give_no_interval() {
        let s = RatioSummary::of(&[1.0, 1.1, 1.2]);
        assert!(s.interval.is_none());
        assert_eq!(s.display(), "1.100 [n<6]");
    }
}
