//! The arithmetic of the estimate, apart from any I/O so that it can be
//! tested on made-up address spaces: which page-table pages a process needs
//! for what it has mapped, how many of the ones it has are therefore empty,
//! and how far off an estimate from a sample of spans can be ([`Bounds`],
//! [`wilson`]).

/// Page-table geometry from the base page size: a table is one page of
/// 8-byte entries (x86_64 and arm64 with 4 KiB pages: 512 entries, a PTE
/// table spans 2 MiB, a PMD table 1 GiB, a PUD table 512 GiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub page_size: u64,
}

impl Geometry {
    pub fn entries(self) -> u64 {
        self.page_size / 8
    }

    /// Address space one PTE table maps.
    pub fn span(self) -> u64 {
        self.page_size * self.entries()
    }

    /// Address space one PMD table maps.
    pub fn pmd_reach(self) -> u64 {
        self.span() * self.entries()
    }

    /// Address space one PUD table maps.
    pub fn pud_reach(self) -> u64 {
        self.pmd_reach() * self.entries()
    }

    /// Span indices `[first, end)` of the spans `[start, end)` touches.
    pub fn touched_spans(self, start: u64, end: u64) -> (u64, u64) {
        if end <= start {
            return (0, 0);
        }
        (start / self.span(), (end - 1) / self.span() + 1)
    }

    /// Span indices of the aligned spans lying completely inside
    /// `[start, end)`.
    pub fn inner_spans(self, start: u64, end: u64) -> (u64, u64) {
        let first = start.div_ceil(self.span());
        (first, (end / self.span()).max(first))
    }

    /// Aligned spans lying completely inside `[start, end)`.
    pub fn full_spans(self, start: u64, end: u64) -> u64 {
        let span = self.span();
        let first = start.div_ceil(span);
        let last = end / span;
        last.saturating_sub(first)
    }
}

/// The level whose entries map a mapping's pages: ordinary pages need a PTE
/// table; 2 MiB hugetlb pages sit in the PMD table, 1 GiB ones in the PUD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    Pte,
    Pmd,
    Pud,
}

impl Leaf {
    pub fn for_page_size(geometry: Geometry, kernel_page_size: u64) -> Self {
        if kernel_page_size >= geometry.pmd_reach() {
            Self::Pud
        } else if kernel_page_size >= geometry.span() {
            Self::Pmd
        } else {
            Self::Pte
        }
    }
}

/// Upper-level tables (PMD or PUD) needed: one per region holding a needed
/// span for sure (`certain`), plus, for each region whose spans were only
/// sampled (`uncertain`: region → spans in it not read), the chance that at
/// least one of them holds an entry when a share `density` of such spans do.
/// The range goes from none to all of the uncertain regions.
pub fn upper_level(
    certain: &std::collections::BTreeSet<u64>,
    uncertain: &std::collections::BTreeMap<u64, u64>,
    density: f64,
) -> Bounds {
    let open: Vec<u64> = uncertain.iter().filter(|(region, _)| !certain.contains(region)).map(|(_, &n)| n).collect();
    let certain = certain.len() as u64;
    let expected: f64 = open.iter().map(|&spans| 1.0 - (1.0 - density).powf(spans as f64)).sum();
    Bounds::new(certain, certain + expected.round() as u64, certain + open.len() as u64)
}

/// A count known to lie in `[min, max]`, with a best estimate inside. An
/// exact count has all three equal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Bounds {
    pub min: u64,
    pub estimate: u64,
    pub max: u64,
}

impl Bounds {
    pub fn exact(value: u64) -> Self {
        Self { min: value, estimate: value, max: value }
    }

    /// `estimate` clipped into `[min, max]` (`max` raised to `min` if below).
    pub fn new(min: u64, estimate: u64, max: u64) -> Self {
        let max = max.max(min);
        Self { min, estimate: estimate.clamp(min, max), max }
    }

    pub fn is_exact(&self) -> bool {
        self.min == self.max
    }

    /// The largest distance from the estimate to a bound: what the estimate
    /// can be off by.
    pub fn error(&self) -> u64 {
        (self.estimate - self.min).max(self.max - self.estimate)
    }

    /// Intersect with a range known by other means (e.g. `VmPTE`).
    pub fn within(self, min: u64, max: u64) -> Self {
        let lo = self.min.max(min).min(max);
        let hi = self.max.min(max).max(lo);
        Self::new(lo, self.estimate, hi)
    }

    /// `tables - self` for a count of needed tables: the empty ones, never
    /// below 0. The bounds swap (most needed = fewest empty).
    pub fn empty_of(self, tables: u64) -> Self {
        Self::new(
            tables.saturating_sub(self.max),
            tables.saturating_sub(self.estimate),
            tables.saturating_sub(self.min),
        )
    }
}

impl std::ops::Add for Bounds {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            min: self.min.saturating_add(other.min),
            estimate: self.estimate.saturating_add(other.estimate),
            max: self.max.saturating_add(other.max),
        }
    }
}

impl std::iter::Sum for Bounds {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, b| a + b)
    }
}

/// z for a two-sided 99 % confidence interval: the sampled estimate's error
/// bound is exceeded in about one estimate in a hundred.
pub const Z_99: f64 = 2.576;

/// Wilson score interval of a proportion seen `hits` times in `samples`
/// independent draws, as `(low, high)`. Unlike the normal approximation it
/// stays honest at 0 or `samples` hits (a sample with no empty span does not
/// prove there is none).
pub fn wilson(hits: u64, samples: u64, z: f64) -> (f64, f64) {
    if samples == 0 {
        return (0.0, 1.0);
    }
    let n = samples as f64;
    let p = hits as f64 / n;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At the edges the formula gives 0 and 1 up to rounding: make them exact.
    let low = if hits == 0 { 0.0 } else { (center - half).max(0.0) };
    let high = if hits >= samples { 1.0 } else { (center + half).min(1.0) };
    (low, high)
}

/// Page-table pages `VmPTE` accounts for.
pub fn tables_from_vmpte(vmpte_kib: u64, geometry: Geometry) -> u64 {
    vmpte_kib.saturating_mul(1024) / geometry.page_size
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry { page_size: 4096 };
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn x86_64_geometry() {
        assert_eq!(GEO.span(), 2 * MIB);
        assert_eq!(GEO.pmd_reach(), GIB);
        assert_eq!(GEO.pud_reach(), 512 * GIB);
        assert_eq!(GEO.full_spans(0, 2 * MIB), 1);
        assert_eq!(GEO.full_spans(4096, 4 * MIB), 1);
        assert_eq!(GEO.full_spans(4096, 4 * MIB - 4096), 0);
        assert_eq!(GEO.full_spans(4 * MIB, 4096), 0, "empty or reversed range");
        assert_eq!(GEO.touched_spans(4096, 4 * MIB + 1), (0, 3));
        assert_eq!(GEO.touched_spans(2 * MIB, 4 * MIB), (1, 2));
        assert_eq!(GEO.touched_spans(5, 5), (0, 0));
        assert_eq!(GEO.inner_spans(4096, 6 * MIB), (1, 3));
        assert_eq!(GEO.inner_spans(4096, 8192), (1, 1));
        assert_eq!(Leaf::for_page_size(GEO, 4096), Leaf::Pte);
        assert_eq!(Leaf::for_page_size(GEO, 2 * MIB), Leaf::Pmd);
        assert_eq!(Leaf::for_page_size(GEO, GIB), Leaf::Pud);
    }

    #[test]
    fn upper_levels_count_certain_and_likely_regions() {
        use std::collections::{BTreeMap, BTreeSet};
        let certain: BTreeSet<u64> = [0, 1].into_iter().collect();
        // Region 1 is certain already; 2 has 512 sampled-only spans, 3 one.
        let uncertain: BTreeMap<u64, u64> = [(1, 10), (2, 512), (3, 1)].into_iter().collect();
        // Half the spans hold entries: region 2 surely does, 3 half the time.
        let b = upper_level(&certain, &uncertain, 0.5);
        assert_eq!((b.min, b.max), (2, 4));
        assert!(b.estimate == 3 || b.estimate == 4, "{b:?}");
        assert_eq!(upper_level(&certain, &uncertain, 0.0), Bounds::new(2, 2, 4));
        assert_eq!(upper_level(&certain, &BTreeMap::new(), 0.3), Bounds::exact(2));
    }

    #[test]
    fn bounds_clip_swap_and_add() {
        let b = Bounds::new(10, 50, 30);
        assert_eq!(b, Bounds { min: 10, estimate: 30, max: 30 });
        assert_eq!(b.error(), 20);
        assert!(Bounds::exact(7).is_exact());
        assert_eq!(Bounds::exact(7).error(), 0);
        // 100 tables, 60..80 needed (70 likely): 20..40 empty (30 likely).
        let needed = Bounds::new(60, 70, 80);
        assert_eq!(needed.empty_of(100), Bounds::new(20, 30, 40));
        assert_eq!(needed.empty_of(65), Bounds::new(0, 0, 5), "more needed than tables: none empty");
        assert_eq!(needed.within(0, 75), Bounds::new(60, 70, 75));
        assert_eq!(needed.within(90, 95), Bounds::exact(90), "disjoint: the known range wins");
        let sum: Bounds = [Bounds::exact(1), Bounds::new(0, 2, 4)].into_iter().sum();
        assert_eq!(sum, Bounds::new(1, 3, 5));
    }

    #[test]
    fn wilson_interval_covers_the_truth_and_edges() {
        let (lo, hi) = wilson(50, 100, Z_99);
        assert!(lo < 0.5 && hi > 0.5 && hi - lo < 0.27 && hi - lo > 0.24, "{lo} {hi}");
        // All hits: the interval still allows a few misses (about z²/n).
        let (lo, hi) = wilson(2000, 2000, Z_99);
        assert_eq!(hi, 1.0);
        assert!(lo < 1.0 && lo > 0.99, "{lo}");
        let (lo, hi) = wilson(0, 2000, Z_99);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.0 && hi < 0.01, "{hi}");
        assert_eq!(wilson(0, 0, Z_99), (0.0, 1.0));
    }

    #[test]
    fn waste_is_vmpte_minus_needed_never_negative() {
        // The workload of the tests on a kernel without PT_RECLAIM: 128 empty
        // tables plus 1 PMD table next to a process needing 10 tables.
        let tables = tables_from_vmpte((128 + 1 + 10) * 4, GEO);
        assert_eq!(tables, 139);
        assert_eq!(Bounds::exact(10).empty_of(tables), Bounds::exact(129));
        assert_eq!(Bounds::exact(10).empty_of(3), Bounds::exact(0), "a process growing during the scan");
        assert_eq!(tables_from_vmpte(u64::MAX, GEO), u64::MAX / 4096);
    }
}
