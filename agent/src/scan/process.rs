//! Scanning one process: `/proc/PID/status` for `VmPTE`, `smaps` for the
//! mappings, `pagemap` for what is present, turned into a [`ProcessScan`].
//! Every way the process can be unreadable or vanish is one [`ScanError`].

use std::{fs, io};

use serde::Serialize;

use super::{
    estimate::{self, Geometry, Leaf, Needed},
    maps::{self, Mapping},
    pagemap::{self, Pagemap},
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

/// A mapping where empty PTE tables can be.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Region {
    /// Addresses in hex, as in `/proc/PID/maps`.
    pub start: String,
    pub end: String,
    pub perms: String,
    pub name: String,
    /// 2 MiB spans the mapping covers completely with nothing present or
    /// swapped.
    pub empty_spans: u64,
    /// The page-table memory those spans hold if each still has its table
    /// (an upper bound: the kernel may have freed some).
    pub max_empty_table_bytes: u64,
}

/// The estimate for one process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessScan {
    pub pid: u32,
    pub comm: String,
    pub page_size: u64,
    /// `VmPTE` of `/proc/PID/status` (the smaller of the readings before and
    /// after the scan), kB.
    pub vmpte_kib: u64,
    /// Page-table pages `VmPTE` accounts for: PTE, PMD and PUD tables.
    pub tables: u64,
    /// Tables needed for what is present or swapped, by level.
    pub needed_pte_tables: u64,
    pub needed_pmd_tables: u64,
    pub needed_pud_tables: u64,
    pub needed_tables: u64,
    /// `tables - needed_tables`, at least 0: tables that map nothing.
    pub empty_tables: u64,
    pub empty_bytes: u64,
    pub present_pages: u64,
    pub swapped_pages: u64,
    /// Anonymous THPs mapped by a PMD: each keeps a deposited PTE table that
    /// `VmPTE` counts, so each is counted as needed.
    pub anon_thp_pmd_mapped: u64,
    /// File or shmem THPs mapped by a PMD: no PTE table, not counted.
    pub file_thp_pmd_mapped: u64,
    /// Mappings scanned and mappings smaps proved empty (not read).
    pub mappings: u64,
    pub mappings_not_read: u64,
    /// The mappings with the most empty spans, most first.
    pub regions: Vec<Region>,
}

/// `VmPTE` and the process name; `None` for VmPTE when there is no mm.
fn read_status(pid: u32, started: bool) -> Result<(String, Option<u64>), ScanError> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| ScanError::io(pid, path, e, started))?;
    let mut comm = String::new();
    let mut vmpte = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("Name:") {
            comm = name.trim().to_owned();
        } else if let Some(value) = line.strip_prefix("VmPTE:") {
            vmpte = value.trim().strip_suffix("kB").and_then(|v| v.trim().parse().ok());
        }
    }
    Ok((comm, vmpte))
}

/// Scan `pid`, keeping the `top` mappings with the most empty spans.
pub fn scan(pid: u32, geometry: Geometry, top: usize) -> Result<ProcessScan, ScanError> {
    let (comm, vmpte_before) = read_status(pid, false)?;
    let vmpte_before = vmpte_before.ok_or(ScanError::NoAddressSpace(pid))?;

    let smaps_path = format!("/proc/{pid}/smaps");
    let text = fs::read_to_string(&smaps_path).map_err(|e| ScanError::io(pid, smaps_path.clone(), e, true))?;
    let mappings = maps::parse_smaps(&text).map_err(|source| ScanError::Parse { path: smaps_path, source })?;
    let pagemap_path = format!("/proc/{pid}/pagemap");
    let mut pagemap = Pagemap::open(pid).map_err(|e| ScanError::io(pid, pagemap_path.clone(), e, true))?;

    let mut needed = Needed::default();
    let mut scan = ProcessScan {
        pid,
        comm,
        page_size: geometry.page_size,
        vmpte_kib: 0,
        tables: 0,
        needed_pte_tables: 0,
        needed_pmd_tables: 0,
        needed_pud_tables: 0,
        needed_tables: 0,
        empty_tables: 0,
        empty_bytes: 0,
        present_pages: 0,
        swapped_pages: 0,
        anon_thp_pmd_mapped: 0,
        file_thp_pmd_mapped: 0,
        mappings: mappings.len() as u64,
        mappings_not_read: 0,
        regions: Vec::new(),
    };
    let mut file_pmd_spans = 0;
    for mapping in &mappings {
        // The vsyscall page is outside the process' address space: pagemap
        // has no entries for it.
        if mapping.name == "[vsyscall]" {
            scan.mappings_not_read += 1;
            continue;
        }
        let hugetlb = mapping.is_hugetlb(geometry.page_size);
        let tally = if mapping.provably_empty() {
            scan.mappings_not_read += 1;
            pagemap::MappingTally {
                empty_spans: geometry.full_spans(mapping.start, mapping.end),
                ..pagemap::MappingTally::default()
            }
        } else {
            let leaf = if hugetlb {
                Leaf::for_page_size(geometry, mapping.kernel_page_size.unwrap_or(geometry.span()))
            } else {
                Leaf::Pte
            };
            pagemap::scan_mapping(geometry, mapping.start, mapping.end, leaf, &mut needed, |addr, pages, out| {
                pagemap.read(geometry, addr, pages, out)
            })
            .map_err(|e| ScanError::io(pid, pagemap_path.clone(), e, true))?
        };
        scan.present_pages += tally.present_pages;
        scan.swapped_pages += tally.swapped_pages;
        let span = geometry.span();
        scan.anon_thp_pmd_mapped += mapping.anon_huge / span;
        // File THPs mapped by a PMD are among the fully present spans of
        // their mapping, which belong to it alone: take them off the PTE
        // tables needed.
        let file_thps = (mapping.file_pmd_mapped / span).min(tally.full_present_spans);
        scan.file_thp_pmd_mapped += file_thps;
        file_pmd_spans += file_thps;
        if !hugetlb && tally.empty_spans > 0 {
            scan.regions.push(region(mapping, tally.empty_spans, geometry));
        }
    }
    needed.remove_pte(file_pmd_spans);

    // A process that exited during the scan may have read as empty.
    let (_, vmpte_after) = read_status(pid, true)?;
    let vmpte_after = vmpte_after.ok_or(ScanError::Exited(pid))?;
    // Tables freed during the scan were not needed; tables added were for
    // pages the scan may not have seen: the smaller reading errs low.
    scan.vmpte_kib = vmpte_before.min(vmpte_after);
    scan.tables = estimate::tables_from_vmpte(scan.vmpte_kib, geometry);
    scan.needed_pte_tables = needed.pte;
    scan.needed_pmd_tables = needed.pmd;
    scan.needed_pud_tables = needed.pud;
    scan.needed_tables = needed.total();
    scan.empty_tables = estimate::waste(scan.tables, scan.needed_tables);
    scan.empty_bytes = scan.empty_tables * geometry.page_size;
    sort_regions(&mut scan.regions, top);
    Ok(scan)
}

fn region(mapping: &Mapping, empty_spans: u64, geometry: Geometry) -> Region {
    Region {
        start: format!("{:x}", mapping.start),
        end: format!("{:x}", mapping.end),
        perms: mapping.perms.clone(),
        name: mapping.label().to_owned(),
        empty_spans,
        max_empty_table_bytes: empty_spans * geometry.page_size,
    }
}

/// Most empty spans first (address order among equals, as in maps); `top`.
pub fn sort_regions(regions: &mut Vec<Region>, top: usize) {
    // Stable: equal counts keep their address order.
    regions.sort_by_key(|r| std::cmp::Reverse(r.empty_spans));
    regions.truncate(top);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_scans_with_little_waste() {
        let geometry = Geometry { page_size: 4096 };
        let scan = scan(std::process::id(), geometry, 3).expect("scan self");
        assert!(scan.tables > 0 && scan.needed_tables > 0, "{scan:?}");
        assert!(scan.present_pages > 0);
        assert!(scan.regions.len() <= 3);
        assert!(scan.regions.windows(2).all(|w| w[0].empty_spans >= w[1].empty_spans));
    }

    #[test]
    fn missing_and_kernel_processes_are_one_error_each() {
        // pid_max is at most 2^22.
        let err = scan(u32::MAX, Geometry { page_size: 4096 }, 1).expect_err("no such pid");
        assert!(matches!(err, ScanError::NoSuchProcess(_)), "{err}");
        assert!(err.is_vanished());
        // kthreadd (pid 2) has no mm when the test sees the host's pids.
        if fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            let err = scan(2, Geometry { page_size: 4096 }, 1).expect_err("kernel thread");
            assert!(matches!(err, ScanError::NoAddressSpace(2)), "{err}");
        }
    }

    #[test]
    fn io_errors_are_classified() {
        let enoent = || io::Error::from_raw_os_error(libc::ENOENT);
        assert!(matches!(ScanError::io(7, "p".into(), enoent(), false), ScanError::NoSuchProcess(7)));
        assert!(matches!(ScanError::io(7, "p".into(), enoent(), true), ScanError::Exited(7)));
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(matches!(ScanError::io(7, "p".into(), eof, true), ScanError::Exited(7)));
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        assert!(matches!(ScanError::io(7, "p".into(), eacces, true), ScanError::PermissionDenied { .. }));
        let eio = io::Error::from_raw_os_error(libc::EIO);
        assert!(matches!(ScanError::io(7, "p".into(), eio, true), ScanError::Io { .. }));
    }

    #[test]
    fn regions_sort_by_empty_spans_and_truncate() {
        let r = |name: &str, spans| Region {
            start: "0".into(),
            end: "0".into(),
            perms: "rw-p".into(),
            name: name.into(),
            empty_spans: spans,
            max_empty_table_bytes: spans * 4096,
        };
        let mut regions = vec![r("a", 1), r("b", 5), r("c", 5), r("d", 3)];
        sort_regions(&mut regions, 3);
        let names: Vec<_> = regions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"]);
    }
}
