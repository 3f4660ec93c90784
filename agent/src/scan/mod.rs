//! `ptwatch scan`: estimate, on any kernel and without eBPF, the empty PTE
//! page tables a process holds, from `/proc` alone.
//!
//! Before PT_RECLAIM (6.14) `MADV_DONTNEED` leaves a process' PTE tables in
//! place after freeing their pages; the agent can only count reclaim as it
//! happens, while this command shows what is left behind, on the kernels that
//! need it most. The kernel accounts every page-table page of a process in
//! `VmPTE`; what it needs follows from which pages are present or swapped
//! (`pagemap`); the difference is the waste ([`estimate`]).

pub mod estimate;
pub mod maps;
pub mod pagemap;
pub mod process;

use std::{fmt::Write as _, fs, io::Write as _};

use anyhow::Context as _;
use serde::Serialize;

use crate::cli::ScanArgs;
use estimate::Geometry;
pub use process::{ProcessScan, Region, ScanError};

/// One line of `scan --all`.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    pub vmpte_kib: u64,
    pub tables: u64,
    pub needed_tables: u64,
    pub empty_tables: u64,
    pub empty_bytes: u64,
    /// The mapping with the most empty spans, if any.
    pub biggest_region: Option<Region>,
}

/// `scan --all`.
#[derive(Clone, Debug, Serialize)]
pub struct AllReport {
    pub page_size: u64,
    /// Processes scanned; processes that exited or had no address space
    /// (kernel threads); processes that could not be read.
    pub scanned: u64,
    pub vanished: u64,
    pub unreadable: u64,
    /// Sums over every scanned process, not only those listed.
    pub empty_tables: u64,
    pub empty_bytes: u64,
    /// The `--top` processes with the most empty tables, most first.
    pub processes: Vec<ProcessSummary>,
}

pub fn geometry() -> Geometry {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Geometry { page_size: u64::try_from(page_size).ok().filter(|&p| p >= 4096).unwrap_or(4096) }
}

pub fn run(args: ScanArgs) -> anyhow::Result<()> {
    let geometry = geometry();
    let output = match (args.pid, args.all) {
        (Some(pid), false) => {
            let scan = process::scan(pid, geometry, args.top)?;
            if args.json {
                serde_json::to_string_pretty(&scan)? + "\n"
            } else {
                text_one(&scan, args.top)
            }
        }
        (None, true) => {
            let report = scan_all(geometry, args.top)?;
            if args.json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                text_all(&report)
            }
        }
        // clap makes PID and --all exclusive and one of them required.
        _ => anyhow::bail!("give a PID or --all"),
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(output.as_bytes()).and_then(|()| stdout.flush()) {
        // `ptwatch scan --all | head` is not an error.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}

/// Every process with an address space, most empty tables first.
pub fn scan_all(geometry: Geometry, top: usize) -> anyhow::Result<AllReport> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .context("listing /proc")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut report = AllReport {
        page_size: geometry.page_size,
        scanned: 0,
        vanished: 0,
        unreadable: 0,
        empty_tables: 0,
        empty_bytes: 0,
        processes: Vec::new(),
    };
    for pid in pids {
        match process::scan(pid, geometry, 1) {
            Ok(scan) => {
                report.scanned += 1;
                report.empty_tables += scan.empty_tables;
                report.empty_bytes += scan.empty_bytes;
                report.processes.push(summary(scan));
            }
            Err(err) if err.is_vanished() => report.vanished += 1,
            Err(err) => {
                tracing::debug!("skipping pid {pid}: {}", crate::error_chain::ErrorChain(&err));
                report.unreadable += 1;
            }
        }
    }
    report.processes.sort_by(|a, b| b.empty_tables.cmp(&a.empty_tables).then(a.pid.cmp(&b.pid)));
    report.processes.truncate(top);
    Ok(report)
}

fn summary(scan: ProcessScan) -> ProcessSummary {
    ProcessSummary {
        pid: scan.pid,
        comm: scan.comm,
        vmpte_kib: scan.vmpte_kib,
        tables: scan.tables,
        needed_tables: scan.needed_tables,
        empty_tables: scan.empty_tables,
        empty_bytes: scan.empty_bytes,
        biggest_region: scan.regions.into_iter().next(),
    }
}

/// `1.5 MiB`-style sizes for the text output.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn text_one(s: &ProcessScan, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pid {} ({})", s.pid, s.comm);
    let _ = writeln!(
        out,
        "page tables  {:>8}  VmPTE {} kB: PTE, PMD and PUD tables of {} bytes",
        s.tables, s.vmpte_kib, s.page_size
    );
    let _ = writeln!(
        out,
        "needed       {:>8}  {} PTE (2 MiB spans with a page present or swapped), {} PMD (1 GiB), {} PUD (512 GiB)",
        s.needed_tables, s.needed_pte_tables, s.needed_pmd_tables, s.needed_pud_tables
    );
    let _ = writeln!(
        out,
        "empty        {:>8}  {} of page tables that map nothing (page tables - needed)",
        s.empty_tables,
        human(s.empty_bytes)
    );
    let _ = writeln!(
        out,
        "pages        {} present, {} swapped; THPs mapped by a PMD: {} anonymous (deposited table counted as needed), {} file",
        s.present_pages, s.swapped_pages, s.anon_thp_pmd_mapped, s.file_thp_pmd_mapped
    );
    let _ = writeln!(out, "mappings     {} ({} proved empty by smaps, not read)", s.mappings, s.mappings_not_read);
    let _ = writeln!(out);
    if s.regions.is_empty() {
        let _ = writeln!(out, "No mapping covers a 2 MiB span with nothing present or swapped.");
        return out;
    }
    let _ = writeln!(
        out,
        "Where empty PTE tables can be: 2 MiB spans a mapping covers with nothing present or swapped (top {top})."
    );
    if s.empty_tables == 0 {
        let _ = writeln!(out, "The estimate finds no empty tables: these spans have none (never used, or reclaimed).");
    } else {
        let _ =
            writeln!(out, "Each may or may not still have a table; the empty total above is the kernel's own count.");
    }
    let _ = writeln!(out, "{:>11}  {:>10}  {:<33}  {:<5}  MAPPING", "EMPTY SPANS", "AT MOST", "ADDRESSES", "PERMS");
    for r in &s.regions {
        let _ = writeln!(
            out,
            "{:>11}  {:>10}  {:<33}  {:<5}  {}",
            r.empty_spans,
            human(r.max_empty_table_bytes),
            format!("{}-{}", r.start, r.end),
            r.perms,
            r.name
        );
    }
    out
}

fn text_all(report: &AllReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8}  {:<16}  {:>8}  {:>8}  {:>8}  {:>10}  BIGGEST EMPTY REGION",
        "PID", "COMM", "TABLES", "NEEDED", "EMPTY", "EMPTY SIZE"
    );
    for p in &report.processes {
        let region = p
            .biggest_region
            .as_ref()
            .map_or_else(|| "-".to_owned(), |r| format!("{} ({} empty 2 MiB spans)", r.name, r.empty_spans));
        let _ = writeln!(
            out,
            "{:>8}  {:<16}  {:>8}  {:>8}  {:>8}  {:>10}  {region}",
            p.pid,
            p.comm,
            p.tables,
            p.needed_tables,
            p.empty_tables,
            human(p.empty_bytes)
        );
    }
    let _ = writeln!(
        out,
        "{} processes scanned ({} exited or had no address space, {} unreadable); empty page tables in all: {} ({})",
        report.scanned,
        report.vanished,
        report.unreadable,
        report.empty_tables,
        human(report.empty_bytes)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(4096), "4.0 KiB");
        assert_eq!(human(516 * 1024), "516.0 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn all_finds_this_process() {
        let report = scan_all(geometry(), usize::MAX).expect("scan all");
        assert!(report.processes.iter().any(|p| p.pid == std::process::id()));
        assert!(report.processes.windows(2).all(|w| w[0].empty_tables >= w[1].empty_tables));
        assert_eq!(report.empty_tables, report.processes.iter().map(|p| p.empty_tables).sum::<u64>());
    }
}
