//! What the kernel's counters say about a process before any page table is
//! read: `/proc/PID/status` (`VmPTE`, resident and swapped memory) and
//! `/proc/PID/stat` (start time, fault counts). Cheap (tens of microseconds),
//! so the agent reads them for every process at every pass: they identify a
//! process across pid reuse, tell whether its memory changed since it was
//! last estimated, and bound its empty tables without reading anything else
//! ([`status_bounds`]).

use std::{fs, io};

use super::estimate::{Bounds, Geometry};

/// The fields of `/proc/PID/status` the estimate uses, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub comm: String,
    /// `VmPTE`; `None` without an address space (kernel thread, zombie).
    pub pagetable_bytes: Option<u64>,
    /// `VmRSS`: pages mapped by the process (anonymous, file, shmem).
    pub rss_bytes: u64,
    /// `RssAnon`: anonymous pages, including anonymous THPs.
    pub rss_anon_bytes: u64,
    /// `VmSwap`: swap entries in the page tables.
    pub swap_bytes: u64,
    /// `HugetlbPages` (4.4+): hugetlb pages, which need no PTE table.
    pub hugetlb_bytes: u64,
}

impl Status {
    pub fn parse(text: &str) -> Self {
        let mut status = Self::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let kib = || value.trim().strip_suffix("kB").and_then(|v| v.trim().parse::<u64>().ok()).map(|k| k * 1024);
            match key {
                "Name" => status.comm = value.trim().to_owned(),
                "VmPTE" => status.pagetable_bytes = kib(),
                "VmRSS" => status.rss_bytes = kib().unwrap_or(0),
                "RssAnon" => status.rss_anon_bytes = kib().unwrap_or(0),
                "VmSwap" => status.swap_bytes = kib().unwrap_or(0),
                "HugetlbPages" => status.hugetlb_bytes = kib().unwrap_or(0),
                _ => {}
            }
        }
        status
    }

    pub fn read(pid: u32) -> io::Result<Self> {
        fs::read_to_string(format!("/proc/{pid}/status")).map(|text| Self::parse(&text))
    }

    /// Page-table pages `VmPTE` accounts for.
    pub fn tables(&self, geometry: Geometry) -> Option<u64> {
        self.pagetable_bytes.map(|bytes| bytes / geometry.page_size)
    }
}

/// The fields of `/proc/PID/stat` the agent uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// Start time after boot, in clock ticks: with the pid, the identity of
    /// a process (a reused pid has a later start time).
    pub start_time: u64,
    /// Minor and major faults of every thread, living or exited: any page
    /// newly mapped (a fault, `MAP_POPULATE`, a swap-in) moves them.
    pub faults: u64,
}

impl Stat {
    /// Parse the text after the `(comm)` field, which may hold spaces and
    /// parentheses itself.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = &text[text.rfind(')')? + 1..];
        // Fields from 3 (state) on; minflt is 10, majflt 12, starttime 22.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self { start_time: field(22)?, faults: field(10)?.saturating_add(field(12)?) })
    }

    pub fn read(pid: u32) -> io::Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Self::parse(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat"))
    }
}

/// Bounds on the empty tables of a process from `status` alone, for a
/// process whose page tables were not read (yet).
///
/// Every table may be empty except those the counters prove needed: each
/// PTE table maps at most `entries` pages, so the anonymous pages and swap
/// entries need at least that many PTE tables (an anonymous THP keeps a
/// deposited table, so it counts too), and anything mapped needs one PMD
/// and one PUD table. File pages are left out: a file THP mapped by a PMD
/// has no PTE table. The estimate is the middle of the range.
pub fn status_bounds(status: &Status, geometry: Geometry) -> Bounds {
    let Some(tables) = status.tables(geometry) else { return Bounds::default() };
    let entries = geometry.entries();
    let pages = (status.rss_anon_bytes + status.swap_bytes) / geometry.page_size;
    let pte = pages.div_ceil(entries);
    let mapped = status.rss_bytes.max(status.rss_anon_bytes) + status.swap_bytes + status.hugetlb_bytes > 0;
    let upper = if mapped { pte.div_ceil(entries).max(1) + 1 } else { 0 };
    let needed = pte + upper;
    let max = tables.saturating_sub(needed);
    Bounds::new(0, max / 2, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry { page_size: 4096 };

    #[test]
    fn status_fields() {
        let status = Status::parse(
            "Name:\tmy prog\nVmRSS:\t  1024 kB\nRssAnon:\t   512 kB\nVmPTE:\t    40 kB\nVmSwap:\t 8 kB\nHugetlbPages:\t 0 kB\n",
        );
        assert_eq!(status.comm, "my prog");
        assert_eq!(status.pagetable_bytes, Some(40 * 1024));
        assert_eq!((status.rss_bytes, status.rss_anon_bytes, status.swap_bytes), (1 << 20, 512 << 10, 8 << 10));
        assert_eq!(status.tables(GEO), Some(10));
        assert_eq!(Status::parse("Name:\tkthreadd\n").tables(GEO), None);
    }

    #[test]
    fn stat_fields_survive_odd_names() {
        // comm "a) b (c" with spaces and parentheses.
        let text = "42 (a) b (c) S 1 42 42 0 -1 4194560 1500 0 7 0 10 5 0 0 20 0 1 0 123456 1000 100 ...";
        assert_eq!(Stat::parse(text), Some(Stat { start_time: 123456, faults: 1507 }));
        assert_eq!(Stat::parse("garbage"), None);
        let own = Stat::read(std::process::id()).expect("own stat");
        assert!(own.start_time > 0 && own.faults > 0);
    }

    #[test]
    fn status_alone_bounds_the_waste() {
        // 268 tables, 4 KiB of anonymous memory: up to 265 empty.
        let status =
            Status { pagetable_bytes: Some(268 * 4096), rss_bytes: 8192, rss_anon_bytes: 4096, ..Status::default() };
        assert_eq!(status_bounds(&status, GEO), Bounds::new(0, 132, 265));
        // 1 GiB of anonymous memory needs 512 PTE tables, 1 PMD, 1 PUD.
        let dense = Status { pagetable_bytes: Some(514 * 4096), rss_anon_bytes: 1 << 30, ..Status::default() };
        assert_eq!(status_bounds(&dense, GEO), Bounds::exact(0));
        assert_eq!(status_bounds(&Status::default(), GEO), Bounds::default());
    }
}
