//! `ptwatch scan`: estimate, on any kernel and without eBPF, the empty PTE
//! page tables a process holds, from `/proc` alone.
//!
//! Before PT_RECLAIM (6.14) `MADV_DONTNEED` leaves a process' PTE tables in
//! place after freeing their pages; the agent can only count reclaim as it
//! happens, while this command shows what is left behind, on the kernels that
//! need it most. The kernel accounts every page-table page of a process in
//! `VmPTE`; what it needs follows from which pages are present or swapped
//! (`pagemap`); the difference is the waste ([`estimate`]).
//!
//! The same estimator ([`process::scan`]) runs in the agent, under a CPU
//! budget: it then reads only what fits and samples the rest, and says so
//! ([`Method`]). `scan` reads everything unless given `--budget`.

pub mod budget;
pub mod estimate;
pub mod maps;
pub mod pagemap;
pub mod process;
pub mod procstat;
pub mod read;
pub mod spans;

use std::{fmt::Write as _, fs, io::Write as _};

use anyhow::Context as _;
use serde::Serialize;

use crate::cli::ScanArgs;
use budget::{Budget, CostModel};
use estimate::Geometry;
pub use process::{Method, Options, ProcessScan, Region, ScanError};

/// One line of `scan --all`.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    pub method: Method,
    pub vmpte_kib: u64,
    pub tables: u64,
    pub needed_tables: u64,
    pub empty_tables: u64,
    pub empty_tables_min: u64,
    pub empty_tables_max: u64,
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
    /// Sums over every scanned process, not only those listed (estimates
    /// and the range of the sum).
    pub empty_tables: u64,
    pub empty_tables_min: u64,
    pub empty_tables_max: u64,
    pub empty_bytes: u64,
    /// Processes estimated by each method.
    pub exact: u64,
    pub sampled: u64,
    /// CPU time of the whole scan.
    pub cpu_seconds: f64,
    /// The `--top` processes with the most empty tables, most first.
    pub processes: Vec<ProcessSummary>,
}

pub fn geometry() -> Geometry {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Geometry { page_size: u64::try_from(page_size).ok().filter(|&p| p >= 4096).unwrap_or(4096) }
}

/// What `--budget` means: CPU time for each process, or none.
fn options(args: &ScanArgs, top: usize) -> Options {
    let budget = args.budget.map_or_else(Budget::unlimited, Budget::cpu);
    Options { top, budget, seed: read::fresh_seed() }
}

pub fn run(args: ScanArgs) -> anyhow::Result<()> {
    let geometry = geometry();
    let output = match (args.pid, args.all) {
        (Some(pid), false) => {
            let scan = process::scan(pid, geometry, options(&args, args.top), &mut CostModel::default())?;
            if args.json {
                serde_json::to_string_pretty(&scan)? + "\n"
            } else {
                text_one(&ScanReport { scan, top: args.top })
            }
        }
        (None, true) => {
            let report = scan_all(geometry, args.top, |top| options(&args, top))?;
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

/// Every process with an address space, most empty tables first; each is
/// scanned with `options(1)` (its biggest region only).
pub fn scan_all(geometry: Geometry, top: usize, options: impl Fn(usize) -> Options) -> anyhow::Result<AllReport> {
    let whole = Budget::unlimited();
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
        empty_tables_min: 0,
        empty_tables_max: 0,
        empty_bytes: 0,
        exact: 0,
        sampled: 0,
        cpu_seconds: 0.0,
        processes: Vec::new(),
    };
    let mut cost = CostModel::default();
    for pid in pids {
        match process::scan(pid, geometry, options(1), &mut cost) {
            Ok(scan) => {
                report.scanned += 1;
                report.empty_tables += scan.empty_tables;
                report.empty_tables_min += scan.empty_tables_min;
                report.empty_tables_max += scan.empty_tables_max;
                report.empty_bytes += scan.empty_bytes;
                match scan.method {
                    Method::Exact => report.exact += 1,
                    Method::Sampled | Method::Bounded => report.sampled += 1,
                }
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
    report.cpu_seconds = whole.used().as_secs_f64();
    Ok(report)
}

fn summary(scan: ProcessScan) -> ProcessSummary {
    ProcessSummary {
        pid: scan.pid,
        comm: scan.comm,
        method: scan.method,
        vmpte_kib: scan.vmpte_kib,
        tables: scan.tables,
        needed_tables: scan.needed_tables,
        empty_tables: scan.empty_tables,
        empty_tables_min: scan.empty_tables_min,
        empty_tables_max: scan.empty_tables_max,
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

/// `12,345`-style counts for the text output.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line saying how the estimate was reached.
fn method_line(s: &ProcessScan) -> String {
    let e = &s.effort;
    let settled = if e.smaps_read {
        format!("{} of {} mappings settled by their smaps counters", s.mappings_not_read, s.mappings)
    } else {
        format!("smaps not read (over budget), so none of the {} mappings settled without pagemap", s.mappings)
    };
    match s.method {
        Method::Exact => format!(
            "exact: pagemap read for all {} spans the counters could not settle; {settled}",
            count(e.spans_read)
        ),
        Method::Sampled => format!(
            "sampled: {} spans read, {} estimated from {} drawn at random ({} samples); {settled}",
            count(e.spans_read),
            count(e.spans_estimated),
            count(e.spans_sampled),
            count(e.samples)
        ),
        Method::Bounded => "bounded: no page table read, bounds from /proc/PID/status".to_owned(),
    }
}

fn text_one(s: &ScanReport) -> String {
    let ScanReport { scan: s, top } = s;
    let mut out = String::new();
    let _ = writeln!(out, "pid {} ({})", s.pid, s.comm);
    let _ = writeln!(out, "method       {}", method_line(s));
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
    let range = if s.empty_tables_min == s.empty_tables_max {
        String::new()
    } else {
        format!("; between {} and {} (99 % interval)", s.empty_tables_min, s.empty_tables_max)
    };
    let _ = writeln!(
        out,
        "empty        {:>8}  {} of page tables that map nothing (page tables - needed){range}",
        s.empty_tables,
        human(s.empty_bytes)
    );
    let _ = writeln!(
        out,
        "pages        {} present, {} swapped; THPs mapped by a PMD: {} anonymous (deposited table counted as needed), {} file",
        s.present_pages, s.swapped_pages, s.anon_thp_pmd_mapped, s.file_thp_pmd_mapped
    );
    let _ = writeln!(out, "cost         {:.1} ms of CPU", s.effort.cpu_seconds * 1e3);
    let _ = writeln!(out);
    if s.regions.is_empty() {
        let _ = writeln!(out, "No mapping covers a 2 MiB span with nothing present or swapped.");
        return out;
    }
    let _ = writeln!(out, "Where empty tables can be: the mappings with the most empty 2 MiB spans (top {top}).");
    let _ = writeln!(
        out,
        "A span is an aligned 2 MiB of address space, what one PTE table maps; an empty span has no page present"
    );
    let _ = writeln!(
        out,
        "or swapped. It holds either an empty table (waste) or no table at all (never touched, or freed by"
    );
    let _ = writeln!(
        out,
        "PT_RECLAIM or munmap): pagemap cannot tell which. So these counts say where to look and are an upper"
    );
    let _ = writeln!(out, "bound per mapping; the 'empty' total above is how many empty tables exist.");
    if s.empty_tables == 0 {
        let _ = writeln!(out, "Here there are none: these spans have no table (never used, or reclaimed).");
    }
    let _ = writeln!(out, "{:>11}  {:>10}  {:<33}  {:<5}  MAPPING", "EMPTY SPANS", "AT MOST", "ADDRESSES", "PERMS");
    for r in &s.regions {
        let _ = writeln!(
            out,
            "{:>11}  {:>10}  {:<33}  {:<5}  {}{}",
            format!("{}{}", if r.estimated { "~" } else { "" }, r.empty_spans),
            human(r.max_empty_table_bytes),
            format!("{}-{}", r.start, r.end),
            r.perms,
            r.name,
            if r.estimated { " (estimated from the sample)" } else { "" }
        );
    }
    out
}

/// `scan PID` with the number of regions asked for.
struct ScanReport {
    scan: ProcessScan,
    top: usize,
}

fn text_all(report: &AllReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8}  {:<16}  {:>8}  {:>8}  {:>8}  {:>10}  {:<7}  BIGGEST EMPTY REGION",
        "PID", "COMM", "TABLES", "NEEDED", "EMPTY", "EMPTY SIZE", "METHOD"
    );
    for p in &report.processes {
        let region = p
            .biggest_region
            .as_ref()
            .map_or_else(|| "-".to_owned(), |r| format!("{} ({} empty 2 MiB spans)", r.name, r.empty_spans));
        let _ = writeln!(
            out,
            "{:>8}  {:<16}  {:>8}  {:>8}  {:>8}  {:>10}  {:<7}  {region}",
            p.pid,
            p.comm,
            p.tables,
            p.needed_tables,
            p.empty_tables,
            human(p.empty_bytes),
            p.method.as_str()
        );
    }
    let range = if report.empty_tables_min == report.empty_tables_max {
        String::new()
    } else {
        format!(", between {} and {}", report.empty_tables_min, report.empty_tables_max)
    };
    let _ = writeln!(
        out,
        "{} processes scanned ({} exactly, {} sampled; {} exited or had no address space, {} unreadable) in {:.0} ms of CPU; empty page tables in all: {} ({}){range}",
        report.scanned,
        report.exact,
        report.sampled,
        report.vanished,
        report.unreadable,
        report.cpu_seconds * 1e3,
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
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(32_768), "32,768");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn all_finds_this_process() {
        let report = scan_all(geometry(), usize::MAX, Options::exact).expect("scan all");
        assert!(report.processes.iter().any(|p| p.pid == std::process::id()));
        assert!(report.processes.windows(2).all(|w| w[0].empty_tables >= w[1].empty_tables));
        assert_eq!(report.empty_tables, report.processes.iter().map(|p| p.empty_tables).sum::<u64>());
    }
}
