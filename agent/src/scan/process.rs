//! Estimating one process: the one implementation behind `ptwatch scan` and
//! the agent's `ptwatch_*_empty_pagetable_bytes`.
//!
//! 1. `status` and `stat`: `VmPTE` (every page-table page the process has),
//!    resident and swapped memory, start time (the process' identity).
//! 2. `smaps` when its predicted cost fits the budget (it walks every page
//!    table of the process), else `maps` (free): the mappings, and for each,
//!    what the counters prove ([`Kind`]): nothing resident or swapped (no
//!    table needed), everything resident (every span needs its table),
//!    hugetlb (no PTE table), or unknown.
//! 3. `pagemap` for the spans only it can settle: every one when the budget
//!    allows ([`Method::Exact`]), otherwise as many as fit and a random
//!    sample of the rest ([`Method::Sampled`]), with a 99 % interval.
//! 4. Needed tables by level, and `empty = VmPTE tables - needed`, as
//!    [`Bounds`]: exact when everything was read, otherwise an estimate
//!    with the range the truth lies in.
//!
//! Every way the process can be unreadable or vanish is one [`ScanError`].

use std::{collections::BTreeSet, fs, io};

use serde::Serialize;

use super::{
    budget::{Budget, CostModel},
    estimate::{upper_level, Bounds, Geometry, Leaf},
    maps::{self, Fill, Kind, Mapping},
    pagemap::Pagemap,
    procstat::{Stat, Status},
    read::{self, Reading},
    spans::SpanSet,
};

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("process {0} exited during the scan")]
    Exited(u32),
    #[error("process {0} has no user address space (a kernel thread or a zombie)")]
    NoAddressSpace(u32),
    #[error("permission denied reading {path}: scanning another user's process needs root")]
    PermissionDenied { path: String },
    #[error("reading {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: String,
        #[source]
        source: maps::ParseError,
    },
}

impl ScanError {
    /// The process went away or never had memory: `--all` skips these.
    pub fn is_vanished(&self) -> bool {
        matches!(self, Self::NoSuchProcess(_) | Self::Exited(_) | Self::NoAddressSpace(_))
    }

    /// Classify an I/O error on `/proc/PID/...`; `started` says whether the
    /// process was seen before (then "gone" means it exited mid-scan).
    fn io(pid: u32, path: String, source: io::Error, started: bool) -> Self {
        let gone = matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
            || source.kind() == io::ErrorKind::UnexpectedEof;
        if gone && started {
            Self::Exited(pid)
        } else if gone {
            Self::NoSuchProcess(pid)
        } else if source.kind() == io::ErrorKind::PermissionDenied {
            Self::PermissionDenied { path }
        } else {
            Self::Io { path, source }
        }
    }
}

/// How the empty tables of a process were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every span that could hold an entry was read (or proved by `smaps`).
    Exact,
    /// Some spans were estimated from a random sample: the count is an
    /// estimate inside a 99 % interval.
    Sampled,
    /// No page table was read: bounds from `status` alone (the agent, for a
    /// process its budget has not reached yet).
    Bounded,
}

impl Method {
    pub const ALL: [Self; 3] = [Self::Exact, Self::Sampled, Self::Bounded];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Sampled => "sampled",
            Self::Bounded => "bounded",
        }
    }
}

/// A mapping where empty PTE tables can be.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Region {
    /// Addresses in hex, as in `/proc/PID/maps`.
    pub start: String,
    pub end: String,
    pub perms: String,
    pub name: String,
    /// 2 MiB spans lying completely inside the mapping with nothing present
    /// or swapped. Each may hold an empty PTE table, or none (never touched,
    /// or reclaimed): this says where empty tables can be, not how many
    /// there are.
    pub empty_spans: u64,
    /// The page-table memory those spans hold if each still has its table
    /// (an upper bound: the kernel may have freed some).
    pub max_empty_table_bytes: u64,
    /// `empty_spans` is scaled from a sample of the mapping's spans.
    pub estimated: bool,
}

/// What was read to reach the estimate, and what it cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Effort {
    /// `smaps` was read (its counters settled some mappings without
    /// `pagemap`); otherwise only `maps`.
    pub smaps_read: bool,
    /// Spans `pagemap` had to settle, spans read one after the other, spans
    /// left to the sample, distinct spans sampled and draws.
    pub candidate_spans: u64,
    pub spans_read: u64,
    pub spans_estimated: u64,
    pub spans_sampled: u64,
    pub samples: u64,
    /// CPU time of the estimate (user + system, this thread).
    pub cpu_seconds: f64,
}

/// The estimate for one process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessScan {
    pub pid: u32,
    pub comm: String,
    /// Start time after boot in clock ticks: with the pid, which process
    /// this is.
    pub start_time: u64,
    pub page_size: u64,
    pub method: Method,
    /// `VmPTE` of `/proc/PID/status` (the smaller of the readings before and
    /// after the scan), kB.
    pub vmpte_kib: u64,
    /// Page-table pages `VmPTE` accounts for: PTE, PMD and PUD tables.
    pub tables: u64,
    /// Tables needed for what is present or swapped, by level (estimates).
    pub needed_pte_tables: u64,
    pub needed_pmd_tables: u64,
    pub needed_pud_tables: u64,
    pub needed_tables: u64,
    /// `tables - needed_tables`, at least 0: tables that map nothing. With
    /// [`Method::Sampled`] an estimate; the truth lies in
    /// `[empty_tables_min, empty_tables_max]` (99 %).
    pub empty_tables: u64,
    pub empty_tables_min: u64,
    pub empty_tables_max: u64,
    pub empty_bytes: u64,
    /// Pages resident and swapped, from `smaps` (or `status` without it).
    pub present_pages: u64,
    pub swapped_pages: u64,
    /// Anonymous THPs mapped by a PMD: each keeps a deposited PTE table that
    /// `VmPTE` counts, so each is counted as needed.
    pub anon_thp_pmd_mapped: u64,
    /// File or shmem THPs mapped by a PMD: no PTE table, not counted.
    pub file_thp_pmd_mapped: u64,
    /// Mappings, and those `pagemap` was not needed for.
    pub mappings: u64,
    pub mappings_not_read: u64,
    pub effort: Effort,
    /// The mappings with the most empty spans, most first.
    pub regions: Vec<Region>,
}

impl ProcessScan {
    pub fn empty(&self) -> Bounds {
        Bounds::new(self.empty_tables_min, self.empty_tables, self.empty_tables_max)
    }
}

/// What to scan with.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Mappings listed in `regions`.
    pub top: usize,
    pub budget: Budget,
    /// Seeds the sample (fixed in tests).
    pub seed: u64,
}

impl Options {
    pub fn exact(top: usize) -> Self {
        Self { top, budget: Budget::unlimited(), seed: read::fresh_seed() }
    }
}

/// Scan `pid`.
pub fn scan(pid: u32, geometry: Geometry, options: Options, cost: &mut CostModel) -> Result<ProcessScan, ScanError> {
    let budget = options.budget;
    let status_path = || format!("/proc/{pid}/status");
    let stat = Stat::read(pid).map_err(|e| ScanError::io(pid, format!("/proc/{pid}/stat"), e, false))?;
    let before = Status::read(pid).map_err(|e| ScanError::io(pid, status_path(), e, false))?;
    let tables_before = before.tables(geometry).ok_or(ScanError::NoAddressSpace(pid))?;

    let (mappings, smaps_read) = read_mappings(pid, &before, tables_before, geometry, &budget, cost)?;
    let layout = Layout::new(&mappings, geometry);
    let pagemap_path = format!("/proc/{pid}/pagemap");
    let mut pagemap = Pagemap::open(pid, geometry).map_err(|e| ScanError::io(pid, pagemap_path.clone(), e, true))?;
    let reading = read::read_spans(&layout.candidates, &mut pagemap, &budget, cost, options.seed)
        .map_err(|e| ScanError::io(pid, pagemap_path, e, true))?;

    // A process that exited (or whose pid was reused) during the scan may
    // have read as empty.
    let after = Status::read(pid).map_err(|e| ScanError::io(pid, status_path(), e, true))?;
    let tables_after = after.tables(geometry).ok_or(ScanError::Exited(pid))?;
    if Stat::read(pid).map_err(|e| ScanError::io(pid, format!("/proc/{pid}/stat"), e, true))?.start_time
        != stat.start_time
    {
        return Err(ScanError::Exited(pid));
    }
    // Tables freed during the scan were not needed; tables added were for
    // pages the scan may not have seen: the smaller reading errs low.
    let vmpte_kib = before.pagetable_bytes.min(after.pagetable_bytes).unwrap_or(0) / 1024;
    let tables = tables_before.min(tables_after);

    let needed = layout.needed(&reading, &before, smaps_read, geometry);
    let empty = (needed.pte + needed.pmd + needed.pud).empty_of(tables);
    let method = if reading.is_exact() { Method::Exact } else { Method::Sampled };
    let span = geometry.span();
    let (present, swapped) = if smaps_read {
        (mappings.iter().filter_map(|m| m.rss).sum::<u64>(), mappings.iter().filter_map(|m| m.swap).sum::<u64>())
    } else {
        (before.rss_bytes, before.swap_bytes)
    };
    // The agent asks for none: attributing spans to mappings costs more
    // than the rest of a small process' estimate.
    let mut regions = if options.top > 0 { layout.regions(&mappings, &reading, geometry) } else { Vec::new() };
    sort_regions(&mut regions, options.top);
    Ok(ProcessScan {
        pid,
        comm: before.comm,
        start_time: stat.start_time,
        page_size: geometry.page_size,
        method,
        vmpte_kib,
        tables,
        needed_pte_tables: needed.pte.estimate,
        needed_pmd_tables: needed.pmd.estimate,
        needed_pud_tables: needed.pud.estimate,
        needed_tables: needed.pte.estimate + needed.pmd.estimate + needed.pud.estimate,
        empty_tables: empty.estimate,
        empty_tables_min: empty.min,
        empty_tables_max: empty.max,
        empty_bytes: empty.estimate * geometry.page_size,
        present_pages: present / geometry.page_size,
        swapped_pages: swapped / geometry.page_size,
        anon_thp_pmd_mapped: mappings.iter().map(|m| m.anon_huge / span).sum(),
        file_thp_pmd_mapped: layout.file_pmd_spans,
        mappings: mappings.len() as u64,
        mappings_not_read: layout.settled_mappings,
        effort: Effort {
            smaps_read,
            candidate_spans: layout.candidates.len(),
            spans_read: reading.read.len(),
            spans_estimated: reading.rest.len(),
            spans_sampled: reading.sampled.len() as u64,
            samples: reading.draws,
            cpu_seconds: budget.used().as_secs_f64(),
        },
        regions,
    })
}

/// The mappings, from `smaps` if its predicted cost fits in half of what is
/// left of the budget (the other half is for `pagemap`), else from `maps`.
fn read_mappings(
    pid: u32,
    status: &Status,
    tables: u64,
    geometry: Geometry,
    budget: &Budget,
    cost: &mut CostModel,
) -> Result<(Vec<Mapping>, bool), ScanError> {
    let read = |name: &str| -> Result<Vec<Mapping>, ScanError> {
        let path = format!("/proc/{pid}/{name}");
        let text = fs::read_to_string(&path).map_err(|e| ScanError::io(pid, path.clone(), e, true))?;
        maps::parse_smaps(&text).map_err(|source| ScanError::Parse { path, source })
    };
    let Some(left) = budget.remaining() else { return Ok((read("smaps")?, true)) };
    let listed = read("maps")?;
    let predicted = cost.smaps(listed.len() as u64, tables, status.rss_bytes / geometry.page_size);
    if predicted > left / 2 {
        return Ok((listed, false));
    }
    let started = budget.used();
    let mappings = read("smaps")?;
    cost.learn_smaps(predicted, budget.used().saturating_sub(started));
    Ok((mappings, true))
}

/// Which spans the counters settle and which `pagemap` must.
struct Layout {
    /// Spans touched by entirely resident mappings: all needed.
    resident: SpanSet,
    /// Spans only `pagemap` can settle (touched by an unknown mapping and
    /// not already resident).
    candidates: SpanSet,
    /// At most this many candidate spans hold an entry (`Rss` + `Swap` of
    /// the unknown mappings, or of the process without smaps).
    candidates_at_most: u64,
    /// Upper-level regions hugetlb pages need (PMD leaf: 1 GiB regions;
    /// both leaves: 512 GiB regions), assuming each mapping with pages is
    /// full; `hugetlb_slack_*` is how many of those may be wrong.
    hugetlb_pmd: BTreeSet<u64>,
    hugetlb_pud: BTreeSet<u64>,
    hugetlb_slack_pmd: u64,
    hugetlb_slack_pud: u64,
    /// Spans mapped by a PMD file THP: present, but with no PTE table.
    file_pmd_spans: u64,
    /// Mappings settled without `pagemap`.
    settled_mappings: u64,
}

/// Needed tables by level.
struct Needed {
    pte: Bounds,
    pmd: Bounds,
    pud: Bounds,
}

impl Layout {
    fn new(mappings: &[Mapping], geometry: Geometry) -> Self {
        let mut resident = Vec::new();
        let mut unknown = Vec::new();
        let mut at_most = 0u64;
        let mut layout = Self {
            resident: SpanSet::default(),
            candidates: SpanSet::default(),
            candidates_at_most: 0,
            hugetlb_pmd: BTreeSet::new(),
            hugetlb_pud: BTreeSet::new(),
            hugetlb_slack_pmd: 0,
            hugetlb_slack_pud: 0,
            file_pmd_spans: 0,
            settled_mappings: 0,
        };
        let (pmd_shift, pud_shift) = region_shifts(geometry);
        for mapping in mappings {
            let touched = geometry.touched_spans(mapping.start, mapping.end);
            let kind = mapping.kind(geometry);
            if !matches!(kind, Kind::Unknown) {
                layout.settled_mappings += 1;
            }
            match kind {
                Kind::Outside | Kind::Empty => {}
                Kind::Resident => {
                    resident.push(touched);
                    layout.file_pmd_spans += mapping.file_pmd_mapped / geometry.span();
                }
                Kind::Unknown => {
                    unknown.push(touched);
                    let spans = touched.1 - touched.0;
                    at_most =
                        at_most.saturating_add(mapping.max_spans_with_entries(geometry).unwrap_or(spans).min(spans));
                    layout.file_pmd_spans += mapping.file_pmd_mapped / geometry.span();
                }
                Kind::Hugetlb { fill: Fill::Empty, .. } => {}
                Kind::Hugetlb { leaf, fill } => {
                    let pmd: BTreeSet<u64> = (touched.0 >> pmd_shift..=(touched.1 - 1) >> pmd_shift).collect();
                    let pud: BTreeSet<u64> = (touched.0 >> pud_shift..=(touched.1 - 1) >> pud_shift).collect();
                    if fill == Fill::Partial {
                        if leaf == Leaf::Pmd {
                            layout.hugetlb_slack_pmd += pmd.len() as u64 - 1;
                        }
                        layout.hugetlb_slack_pud += pud.len() as u64 - 1;
                    }
                    if leaf == Leaf::Pmd {
                        layout.hugetlb_pmd.extend(pmd);
                    }
                    layout.hugetlb_pud.extend(pud);
                }
            }
        }
        layout.resident = SpanSet::from_ranges(resident);
        layout.candidates = SpanSet::from_ranges(unknown).minus(&layout.resident);
        layout.candidates_at_most = at_most;
        layout
    }

    fn needed(&self, reading: &Reading, status: &Status, smaps_read: bool, geometry: Geometry) -> Needed {
        let read_needed = reading.read_needed();
        let sampled_needed = reading.sampled_needed();
        // Without smaps, hugetlb mappings are not recognised: their spans
        // read as present and count as needing a PTE table they do not have.
        let hugetlb_unseen = if smaps_read { 0 } else { status.hugetlb_bytes / geometry.span() };
        let at_most = if smaps_read {
            self.candidates_at_most
        } else {
            (status.rss_bytes + status.swap_bytes).div_ceil(geometry.page_size) + hugetlb_unseen
        };
        let rest = reading.rest_needed(at_most.saturating_sub(read_needed.len()));
        let known = self.resident.len() + read_needed.len();
        let pte = Bounds::exact(known) + rest;
        // File THPs mapped by a PMD and unseen hugetlb pages counted as
        // needed PTE tables do not have one.
        let pte = Bounds::new(
            pte.min.saturating_sub(self.file_pmd_spans + hugetlb_unseen),
            pte.estimate.saturating_sub(self.file_pmd_spans),
            pte.max.saturating_sub(self.file_pmd_spans),
        );

        let (pmd_shift, pud_shift) = region_shifts(geometry);
        let density = reading.rest_density();
        let certain_spans = [&self.resident, &read_needed, &sampled_needed];
        let regions = |shift: u32| -> BTreeSet<u64> {
            certain_spans.iter().flat_map(|set| set.per_region(shift).into_keys()).collect()
        };
        let mut pmd_certain = regions(pmd_shift);
        pmd_certain.extend(&self.hugetlb_pmd);
        let mut pud_certain = regions(pud_shift);
        pud_certain.extend(&self.hugetlb_pud);
        let pmd = upper_level(&pmd_certain, &reading.rest.per_region(pmd_shift), density);
        let pud = upper_level(&pud_certain, &reading.rest.per_region(pud_shift), density);
        let slack = |b: Bounds, slack: u64| Bounds::new(b.min.saturating_sub(slack), b.estimate, b.max);
        Needed { pte, pmd: slack(pmd, self.hugetlb_slack_pmd), pud: slack(pud, self.hugetlb_slack_pud) }
    }

    /// Empty spans per mapping (not hugetlb): counted where `pagemap` was
    /// read or smaps proved the mapping empty, scaled from the sample where
    /// it was sampled.
    fn regions(&self, mappings: &[Mapping], reading: &Reading, geometry: Geometry) -> Vec<Region> {
        let mut regions = Vec::new();
        let density = reading.rest_density();
        for mapping in mappings {
            let inner = geometry.inner_spans(mapping.start, mapping.end);
            let inner_set = SpanSet::from_ranges([inner]);
            let (empty, estimated) = match mapping.kind(geometry) {
                Kind::Empty => (inner_set.len(), false),
                Kind::Unknown => {
                    let counted = inner_set.intersect(&reading.read_empty).len();
                    let rest = inner_set.intersect(&reading.rest).len();
                    let mine: Vec<bool> = reading.sampled.range(inner.0..inner.1).map(|(_, &needed)| needed).collect();
                    // The mapping's own sample when it has one, the whole
                    // sample's otherwise.
                    let share_empty = if mine.is_empty() {
                        1.0 - density
                    } else {
                        mine.iter().filter(|&&needed| !needed).count() as f64 / mine.len() as f64
                    };
                    (counted + (rest as f64 * share_empty).round() as u64, rest > 0)
                }
                Kind::Outside | Kind::Resident | Kind::Hugetlb { .. } => (0, false),
            };
            if empty > 0 {
                regions.push(Region {
                    start: format!("{:x}", mapping.start),
                    end: format!("{:x}", mapping.end),
                    perms: mapping.perms.clone(),
                    name: mapping.label().to_owned(),
                    empty_spans: empty,
                    max_empty_table_bytes: empty * geometry.page_size,
                    estimated,
                });
            }
        }
        regions
    }
}

/// Shifts from a span index to its PMD and PUD region index (9 and 18 with
/// 4 KiB pages).
fn region_shifts(geometry: Geometry) -> (u32, u32) {
    let bits = geometry.entries().trailing_zeros();
    (bits, 2 * bits)
}

/// Most empty spans first (address order among equals, as in maps); `top`.
pub fn sort_regions(regions: &mut Vec<Region>, top: usize) {
    // Stable: equal counts keep their address order.
    regions.sort_by_key(|r| std::cmp::Reverse(r.empty_spans));
    regions.truncate(top);
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;

    const GEO: Geometry = Geometry { page_size: 4096 };
    const SPAN: u64 = 2 << 20;

    fn mapping(start: u64, end: u64, rss: Option<u64>) -> Mapping {
        Mapping {
            start,
            end,
            perms: "rw-p".into(),
            rss,
            swap: rss.map(|_| 0),
            kernel_page_size: Some(4096),
            ..Mapping::default()
        }
    }

    #[test]
    fn own_process_scans_exactly_with_little_waste() {
        let scan = scan(std::process::id(), GEO, Options::exact(3), &mut CostModel::default()).expect("scan self");
        assert_eq!(scan.method, Method::Exact);
        assert!(scan.effort.smaps_read);
        assert_eq!(scan.effort.spans_estimated, 0);
        assert!(scan.tables > 0 && scan.needed_tables > 0, "{scan:?}");
        assert_eq!(scan.empty_tables_min, scan.empty_tables_max, "exact: no range");
        assert!(scan.present_pages > 0);
        assert!(scan.regions.len() <= 3);
        assert!(scan.regions.windows(2).all(|w| w[0].empty_spans >= w[1].empty_spans));
        assert!(scan.start_time > 0);
    }

    #[test]
    fn own_process_scans_within_a_tiny_budget() {
        let options = Options { top: 3, budget: Budget::cpu(Duration::ZERO), seed: 1 };
        let scan = scan(std::process::id(), GEO, options, &mut CostModel::default()).expect("scan self");
        assert!(!scan.effort.smaps_read, "smaps does not fit in a zero budget");
        assert!(scan.empty_tables_min <= scan.empty_tables && scan.empty_tables <= scan.empty_tables_max);
    }

    #[test]
    fn layout_settles_what_smaps_proves() {
        // 0-8 MiB unknown; 8-10 MiB fully resident; 1 GiB.. empty; a 2 MiB
        // hugetlb mapping at 2 GiB, full.
        let mut huge = mapping(2 << 30, (2 << 30) + SPAN, Some(0));
        huge.kernel_page_size = Some(SPAN);
        huge.flags = maps::VmFlags::parse("rd sh ht");
        huge.hugetlb = SPAN;
        let maps = [
            mapping(0, 4 * SPAN, Some(8192)),
            mapping(4 * SPAN, 5 * SPAN, Some(SPAN)),
            mapping(1 << 30, (1 << 30) + 100 * SPAN, Some(0)),
            huge,
        ];
        let layout = Layout::new(&maps, GEO);
        assert_eq!(layout.resident.ranges(), &[(4, 5)]);
        assert_eq!(layout.candidates.ranges(), &[(0, 4)]);
        assert_eq!(layout.candidates_at_most, 2, "8 kB resident: at most 2 spans");
        assert_eq!(layout.settled_mappings, 3);
        assert_eq!(layout.hugetlb_pmd.iter().copied().collect::<Vec<_>>(), [2]);

        // pagemap finds span 1 needed, the others empty.
        let reading = Reading {
            read: SpanSet::from_ranges([(0, 4)]),
            read_empty: SpanSet::from_ranges([(0, 1), (2, 4)]),
            ..Reading::default()
        };
        let needed = layout.needed(&reading, &Status::default(), true, GEO);
        assert_eq!(needed.pte, Bounds::exact(2), "span 1 and the resident span 4");
        assert_eq!(needed.pmd, Bounds::exact(2), "GiB 0, and GiB 2 for the hugetlb page");
        assert_eq!(needed.pud, Bounds::exact(1));
        let regions = layout.regions(&maps, &reading, GEO);
        let counts: Vec<u64> = regions.iter().map(|r| r.empty_spans).collect();
        assert_eq!(counts, [3, 100], "3 read empty; 100 proved empty by smaps");
    }

    #[test]
    fn sampled_spans_give_a_range() {
        // 1,000 candidate spans over two GiB regions; 100 sampled, half of
        // them needed.
        let layout = Layout::new(&[mapping(0, 1000 * SPAN, None)], GEO);
        assert_eq!(layout.candidates.len(), 1000);
        let sampled: BTreeMap<u64, bool> = (0..100).map(|i| (i * 10, i % 2 == 0)).collect();
        let reading =
            Reading { rest: layout.candidates.clone(), sampled, draws: 100, draw_hits: 50, ..Reading::default() };
        let status = Status { rss_bytes: 600 * 4096, ..Status::default() };
        let needed = layout.needed(&reading, &status, false, GEO);
        assert_eq!(needed.pte.estimate, 500);
        assert!(needed.pte.min < 500 && needed.pte.max > 500 && needed.pte.max <= 600, "{:?}", needed.pte);
        assert_eq!(needed.pmd, Bounds::exact(2), "both GiB regions hold a sampled needed span");
        let regions = layout.regions(&[mapping(0, 1000 * SPAN, None)], &reading, GEO);
        assert_eq!((regions[0].empty_spans, regions[0].estimated), (500, true));
    }
}
