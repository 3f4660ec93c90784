//! `cargo xtask bench`: what the attached agent costs a process that
//! DONTNEEDs memory as fast as it can.
//!
//! Runs of the loop in [`work`] alternate without and with the agent (order
//! A B B A …, so that a drift of the machine over time hits both sides
//! alike). The agent is started for each "with" run and stopped after it, so
//! "without" runs have no probes attached. The loop runs in its own process,
//! neither the agent nor this driver, like any workload the agent watches.
use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde::Serialize;

use crate::{cargo::Built, cmd};

mod agent;
mod footprint;
mod scrape;
mod stats;
mod work;

pub use work::run as run_loop;

/// Iterations of the untimed warm-up run that also calibrates the length.
const CALIBRATION_ITERATIONS: u64 = 2_000;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Pairs of runs (one without the agent, one with it).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=50))]
    pairs: u32,
    /// Iterations per run [default: calibrated to --run-secs].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,
    /// Target length of one run in seconds, when --iterations is not given.
    #[arg(long, default_value_t = 1.5)]
    run_secs: f64,
    /// Measure only the agent's own footprint (RSS, CPU, /metrics latency),
    /// not the slowdown of a DONTNEED-heavy process.
    #[arg(long)]
    footprint_only: bool,
    /// Length of each footprint CPU measurement, seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=3600))]
    footprint_secs: u64,
    /// Tracked processes of the footprint's busy phase.
    #[arg(long, default_value_t = 1000)]
    footprint_processes: usize,
    /// Series in the /metrics answer whose latency is measured.
    #[arg(long, default_value_t = 10_000)]
    footprint_series: usize,
    /// Concurrent scrapers of the last part, with that many series (0 skips it).
    #[arg(long, default_value_t = 50)]
    scrapers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Without,
    With,
}

#[derive(Debug, Serialize)]
struct Run {
    pair: u32,
    mode: Mode,
    iterations: u64,
    elapsed_ns: u64,
    ns_per_iteration: f64,
}

#[derive(Debug, Serialize)]
struct Program {
    name: String,
    run_cnt: u64,
    run_time_ns: u64,
    ns_per_run: f64,
    runs_per_iteration: f64,
}

/// What `target/bench/latest.json` holds.
#[derive(Debug, Serialize)]
struct Results {
    benchmark: &'static str,
    unix_time: u64,
    kernel: String,
    loadavg_at_start: String,
    pt_reclaim: bool,
    chunk_bytes: usize,
    area_bytes: usize,
    pairs: u32,
    iterations_per_run: u64,
    runs: Vec<Run>,
    median_ns_per_iteration_without: f64,
    median_ns_per_iteration_with: f64,
    /// The fastest runs: least disturbed by other work on a busy machine.
    min_ns_per_iteration_without: f64,
    min_ns_per_iteration_with: f64,
    /// with / without - 1, from the medians.
    slowdown_percent: f64,
    /// (max - min) / median of the "without" runs: how much runs differ
    /// when nothing changes.
    noise_percent: f64,
    /// Median over pairs of with / without - 1 within the pair.
    paired_slowdown_percent: f64,
    /// From kernel.bpf_stats_enabled over the "with" runs. System-wide: the
    /// programs run (and filter) on every process's madvise calls.
    programs: Vec<Program>,
    ebpf_ns_per_iteration: f64,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn spread_percent(values: &[f64]) -> f64 {
    let min = min(values);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max - min) / median(values) * 100.0
}

/// Run the loop in a child process (`xtask bench-loop N`).
fn run_loop_child(iterations: u64) -> Result<work::LoopReport> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut child = Command::new(exe);
    child.arg("bench-loop").arg(iterations.to_string()).stdin(Stdio::null()).stderr(Stdio::inherit());
    let stdout = cmd::stdout(&mut child)?;
    let line = stdout.lines().last().context("bench-loop printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("parsing bench-loop output {line:?}"))
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".to_owned())
}

/// Other work on the machine (a build, a test run) shows up as noise in
/// the wall-clock times; bpf_stats' per-run costs are not affected.
fn warn_if_busy(loadavg: &str) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load: f64 = loadavg.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0);
    if load > 0.5 * cpus as f64 {
        eprintln!(
            "[bench] warning: the machine is busy (load average {load:.2} on {cpus} CPUs): wall-clock numbers will be noisy, eBPF ns/run less so"
        );
    }
}

/// One "with" run: agent up, stats on, loop, stats off, agent down.
fn with_run(
    ptwatch: &Path,
    log: &Path,
    iterations: u64,
    totals: &mut BTreeMap<String, stats::ProgStats>,
) -> Result<work::LoopReport> {
    let mut agent = agent::Agent::start(ptwatch, log)?;
    let counting = stats::StatsEnabled::enable()?;
    let before = stats::snapshot(Some(agent.pid()))?;
    ensure!(
        !before.is_empty(),
        "the agent serves /metrics but bpftool shows none of its programs loaded; see {}",
        log.display()
    );
    let report = run_loop_child(iterations)?;
    let after = stats::snapshot(Some(agent.pid()))?;
    drop(counting);
    agent.stop()?;
    after.add_delta(&before, totals);
    Ok(report)
}

pub fn run(built: &Built, args: &BenchArgs) -> Result<()> {
    let dir = built.workspace.target.join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("agent.log");
    fs::write(&log, "").with_context(|| format!("truncating {}", log.display()))?;
    if !args.footprint_only {
        slowdown(built, args, &dir, &log)?;
    }
    let options = footprint::Options {
        window: std::time::Duration::from_secs(args.footprint_secs),
        processes: args.footprint_processes,
        series: args.footprint_series,
    };
    eprintln!("[bench] footprint: idle, {} tracked processes, ~{} series", options.processes, options.series);
    let results = footprint::run(&built.ptwatch, &built.workload, &log, &options)?;
    footprint::print(&results);
    let path = dir.join("footprint.json");
    let json = serde_json::to_string_pretty(&results).context("serialising results")?;
    fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    println!("results written to {}", path.display());
    if args.scrapers > 0 {
        scrape::run(&built.ptwatch, &built.workload, &log, &dir, args.scrapers, args.footprint_series)?;
    }
    Ok(())
}

/// Part 1: a DONTNEED-heavy loop with and without the agent.
fn slowdown(built: &Built, args: &BenchArgs, dir: &Path, log: &Path) -> Result<()> {
    ensure!(args.run_secs > 0.0 && args.run_secs <= 10.0, "--run-secs must be in (0, 10]");

    // A resident agent would make the "without" runs "with" runs too.
    let already = stats::snapshot(None)?;
    if !already.is_empty() {
        bail!(
            "eBPF programs named like ptwatch's are already loaded ({}): stop the running ptwatch agent first",
            already.names().join(", ")
        );
    }

    let loadavg = read_trimmed("/proc/loadavg");
    warn_if_busy(&loadavg);
    eprintln!("[bench] warm-up and calibration: {CALIBRATION_ITERATIONS} iterations");
    let warm = run_loop_child(CALIBRATION_ITERATIONS)?;
    let per_iteration = warm.elapsed_ns as f64 / warm.iterations as f64;
    let iterations = args.iterations.unwrap_or_else(|| {
        // Truncation is fine: only the order of magnitude matters.
        ((args.run_secs * 1e9 / per_iteration) as u64).clamp(100, 10_000_000)
    });
    if !warm.pt_reclaim {
        eprintln!(
            "[bench] warning: DONTNEED did not free a PTE table: this kernel lacks PT_RECLAIM, so the reclaim path is not measured"
        );
    }
    eprintln!(
        "[bench] {} pairs of runs of {iterations} iterations (~{:.1} s each)",
        args.pairs,
        iterations as f64 * per_iteration / 1e9
    );

    let mut runs = Vec::new();
    let mut totals = BTreeMap::new();
    let mut with_iterations = 0;
    for pair in 0..args.pairs {
        let order = if pair % 2 == 0 { [Mode::Without, Mode::With] } else { [Mode::With, Mode::Without] };
        for mode in order {
            let report = match mode {
                Mode::Without => run_loop_child(iterations)?,
                Mode::With => with_run(&built.ptwatch, log, iterations, &mut totals)?,
            };
            if mode == Mode::With {
                with_iterations += report.iterations;
            }
            let ns = report.elapsed_ns as f64 / report.iterations as f64;
            eprintln!(
                "[bench] pair {}/{} {:<7} {:>9.2} µs/iteration",
                pair + 1,
                args.pairs,
                format!("{mode:?}").to_lowercase(),
                ns / 1e3
            );
            runs.push(Run {
                pair,
                mode,
                iterations: report.iterations,
                elapsed_ns: report.elapsed_ns,
                ns_per_iteration: ns,
            });
        }
    }

    let results = summarise(
        runs,
        &totals,
        with_iterations,
        SummaryContext {
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            loadavg,
            pt_reclaim: warm.pt_reclaim,
            pairs: args.pairs,
            iterations,
        },
    );
    print_results(&results);
    let path = dir.join("latest.json");
    let json = serde_json::to_string_pretty(&results).context("serialising results")?;
    fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}

struct SummaryContext {
    kernel: String,
    loadavg: String,
    pt_reclaim: bool,
    pairs: u32,
    iterations: u64,
}

fn summarise(
    runs: Vec<Run>,
    totals: &BTreeMap<String, stats::ProgStats>,
    with_iterations: u64,
    ctx: SummaryContext,
) -> Results {
    let of = |mode| runs.iter().filter(|r| r.mode == mode).map(|r| r.ns_per_iteration).collect::<Vec<_>>();
    let (without, with) = (of(Mode::Without), of(Mode::With));
    let paired: Vec<f64> = (0..ctx.pairs)
        .filter_map(|pair| {
            let get = |mode| runs.iter().find(|r| r.pair == pair && r.mode == mode).map(|r| r.ns_per_iteration);
            Some((get(Mode::With)? / get(Mode::Without)? - 1.0) * 100.0)
        })
        .collect();
    let programs: Vec<Program> = totals
        .iter()
        .map(|(name, s)| Program {
            name: name.clone(),
            run_cnt: s.run_cnt,
            run_time_ns: s.run_time_ns,
            ns_per_run: if s.run_cnt == 0 { 0.0 } else { s.run_time_ns as f64 / s.run_cnt as f64 },
            runs_per_iteration: s.run_cnt as f64 / with_iterations.max(1) as f64,
        })
        .collect();
    let ebpf_ns = programs.iter().map(|p| p.run_time_ns).sum::<u64>() as f64 / with_iterations.max(1) as f64;
    let (median_without, median_with) = (median(&without), median(&with));
    Results {
        benchmark: "touch 2 MiB + MADV_DONTNEED 2 MiB, walking a 1 GiB area",
        unix_time: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        kernel: ctx.kernel,
        loadavg_at_start: ctx.loadavg,
        pt_reclaim: ctx.pt_reclaim,
        chunk_bytes: work::CHUNK,
        area_bytes: work::AREA,
        pairs: ctx.pairs,
        iterations_per_run: ctx.iterations,
        runs,
        median_ns_per_iteration_without: median_without,
        median_ns_per_iteration_with: median_with,
        min_ns_per_iteration_without: min(&without),
        min_ns_per_iteration_with: min(&with),
        slowdown_percent: (median_with / median_without - 1.0) * 100.0,
        noise_percent: spread_percent(&without),
        paired_slowdown_percent: median(&paired),
        programs,
        ebpf_ns_per_iteration: ebpf_ns,
    }
}

fn print_results(r: &Results) {
    println!();
    println!("ptwatch bench: {}", r.benchmark);
    println!(
        "kernel {}, PT_RECLAIM {}, load average at start {}",
        r.kernel,
        if r.pt_reclaim { "active" } else { "NOT active" },
        r.loadavg_at_start
    );
    println!(
        "{} pairs x {} iterations; \"with\" = agent attached and kernel.bpf_stats_enabled=1",
        r.pairs, r.iterations_per_run
    );
    println!();
    println!("pair  without µs/iter  with µs/iter  with/without-1");
    for pair in 0..r.pairs {
        let get = |mode| {
            r.runs.iter().find(|run| run.pair == pair && run.mode == mode).map_or(f64::NAN, |run| run.ns_per_iteration)
        };
        let (without, with) = (get(Mode::Without), get(Mode::With));
        println!(
            "{:>4}  {:>15.2}  {:>12.2}  {:>+13.2}%",
            pair + 1,
            without / 1e3,
            with / 1e3,
            (with / without - 1.0) * 100.0
        );
    }
    println!(
        "median{:>15.2}  {:>12.2}  {:>+13.2}%",
        r.median_ns_per_iteration_without / 1e3,
        r.median_ns_per_iteration_with / 1e3,
        r.slowdown_percent
    );
    println!(
        "min   {:>15.2}  {:>12.2}  {:>+13.2}%",
        r.min_ns_per_iteration_without / 1e3,
        r.min_ns_per_iteration_with / 1e3,
        (r.min_ns_per_iteration_with / r.min_ns_per_iteration_without - 1.0) * 100.0
    );
    println!();
    let verdict =
        if r.slowdown_percent.abs() <= r.noise_percent { "within the noise" } else { "larger than the noise" };
    println!(
        "slowdown (median with / median without - 1): {:+.2}% ({verdict}); median of per-pair slowdowns {:+.2}%",
        r.slowdown_percent, r.paired_slowdown_percent
    );
    println!("noise: \"without\" runs spread (max - min) / median = {:.2}%", r.noise_percent);
    println!();
    println!("eBPF program (bpf_stats, over the \"with\" runs)  runs      runs/iter  ns/run");
    for p in &r.programs {
        println!("{:<46}  {:>9}  {:>9.3}  {:>6.0}", p.name, p.run_cnt, p.runs_per_iteration, p.ns_per_run);
    }
    println!(
        "eBPF time per iteration: {:.0} ns = {:.3}% of a \"without\" iteration",
        r.ebpf_ns_per_iteration,
        r.ebpf_ns_per_iteration / r.median_ns_per_iteration_without * 100.0
    );
}

#[cfg(test)]
mod tests {
    use super::{median, spread_percent};

    #[test]
    fn medians_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(spread_percent(&[90.0, 100.0, 110.0]), 20.0);
    }
}
