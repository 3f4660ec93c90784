//! `cargo xtask bench`: what the agent costs the node it runs on.
//!
//! 1. Bystanders and DONTNEED-heavy processes (`bystanders`): agent off and
//!    on in alternating pairs, on this host (tracepoint plan: the only one
//!    it allows) and inside the newest Debian kernel under qemu (fentry and
//!    kprobe plans), each workload's median on/off ratio with a 95 %
//!    interval, the noise floor, and eBPF ns per call from bpf_stats.
//! 2. The agent's own footprint (`footprint`): RSS, CPU, /metrics latency.
//!
//! Speed is measured here, never by timed tests: `cargo xtask test` does
//! not run this.
use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::cargo::Built;

mod agent;
mod bystanders;
mod floor;
mod footprint;
mod guest;
mod report;
mod scrape;
mod stats;
mod stats_ci;
mod work;

use agent::ProbePlan;
use bystanders::{AgentArm, Session, SessionResults};
use work::Workload;

/// Where the bystander comparison runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Place {
    /// This machine (tracepoint plan only: no fentry, no kprobes here).
    Host,
    /// The newest Debian kernel under qemu (TCG: ratios only).
    Vm,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Pairs of blocks (agent off, agent on) kept per compared agent.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=500))]
    pairs: u32,
    /// Where to compare: on the host, in the VM, or both.
    #[arg(long, value_delimiter = ',', default_value = "host,vm")]
    on: Vec<Place>,
    /// Probe plans compared on the host.
    #[arg(long, value_delimiter = ',', default_value = "tracepoint")]
    host_plans: Vec<ProbePlan>,
    /// Probe plans compared in the VM.
    /// (The tracepoint plan there relates the guest's eBPF figures to the
    /// host's.)
    #[arg(long, value_delimiter = ',', default_value = "fentry,kprobe,tracepoint")]
    vm_plans: Vec<ProbePlan>,
    /// Kernel booted for the VM comparison.
    #[arg(long, default_value = guest::DEFAULT_KERNEL)]
    vm_kernel: guest::Kernel,
    /// How the VM's clocks run (icount: guest time counts instructions,
    /// unaffected by the host's load).
    #[arg(long, value_enum, default_value_t = guest::Clock::Icount)]
    vm_clock: guest::Clock,
    /// An older agent binary compared side by side, same plans, same run
    /// (e.g. one built from main before the kernel rewrite).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// How the baseline is named in the tables.
    #[arg(long, default_value = "baseline")]
    baseline_label: String,
    /// Workloads compared.
    #[arg(long, value_delimiter = ',', default_value = "getppid,small-dontneed,reclaim-2m")]
    workloads: Vec<Workload>,
    /// Timed seconds per workload in each block.
    #[arg(long, default_value_t = 0.4)]
    block_secs: f64,
    /// Timed batches per workload in each block; the block's value is their
    /// median.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=1000))]
    batches: u32,
    /// Pin the timed loops to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Keep pairs disturbed by other processes' tracing programs (and mark
    /// them) instead of waiting for those to go away and running them again.
    #[arg(long)]
    keep_disturbed: bool,
    /// Minutes a session may wait, in all, for other processes' tracing
    /// programs to go away.
    #[arg(long, default_value_t = 60)]
    max_wait: u64,
    /// Skip the footprint measurement.
    #[arg(long, conflicts_with = "footprint_only")]
    no_footprint: bool,
    /// Measure only the agent's own footprint (RSS, CPU, /metrics latency).
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
    /// Series of a second /metrics latency measurement, those of exited
    /// processes kept by a long `--exited-ttl` (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    footprint_large_series: usize,
    /// Concurrent scrapers of the last part, with that many series (0 skips it).
    #[arg(long, default_value_t = 50)]
    scrapers: usize,
    /// The agent binary whose footprint is measured (default: the one just
    /// built), e.g. a copy of an earlier build, to compare two builds in
    /// alternating runs of the same session.
    #[arg(long)]
    footprint_agent: Option<PathBuf>,
}

/// The hidden child commands: what runs in a process of its own.
#[derive(Debug, clap::Subcommand)]
pub enum Child {
    /// One timed loop; prints a JSON report on stdout.
    Loop {
        workload: Workload,
        #[arg(long)]
        calls: u64,
        #[arg(long)]
        batches: usize,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// A whole bystander session described by a JSON file (inside a VM).
    Session { config: PathBuf, results: PathBuf },
    /// Print saved session results (`target/bench/bystanders-*.json`) again.
    Report { results: Vec<PathBuf> },
}

pub fn run_child(child: &Child) -> Result<()> {
    match child {
        Child::Loop { workload, calls, batches, cpu } => work::run(*workload, *calls, *batches, *cpu),
        Child::Session { config, results } => {
            let text = fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
            let session: Session =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
            let measured = bystanders::run(&session)?;
            bystanders::save(&measured, results)
        }
        Child::Report { results } => {
            let all = results.iter().map(|path| bystanders::load(path)).collect::<Result<Vec<_>>>()?;
            all.iter().for_each(report::print);
            let all: Vec<&SessionResults> = all.iter().collect();
            report::print_goals(&all);
            report::print_estimates(&all);
            Ok(())
        }
    }
}

pub fn run(built: &Built, args: &BenchArgs) -> Result<()> {
    let dir = built.workspace.target.join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("agent.log");
    fs::write(&log, "").with_context(|| format!("truncating {}", log.display()))?;
    if !args.footprint_only {
        slowdown(built, args, &dir, &log)?;
    }
    if !args.no_footprint {
        footprint(built, args, &dir, &log)?;
    }
    Ok(())
}

/// The arms of one place: each plan of the built agent, then the baseline's.
fn arms(built: &Built, args: &BenchArgs, plans: &[ProbePlan]) -> Vec<AgentArm> {
    let ours = plans.iter().map(|&plan| AgentArm {
        label: plan.name().to_owned(),
        binary: built.ptwatch.clone(),
        plan,
        baseline: false,
    });
    let baseline = args.baseline.iter().flat_map(|binary| {
        plans.iter().map(|&plan| AgentArm {
            label: format!("{} ({})", plan.name(), args.baseline_label),
            binary: binary.clone(),
            plan,
            baseline: true,
        })
    });
    ours.chain(baseline).collect()
}

/// Part 1: bystanders and DONTNEED loops, agent off and on.
fn slowdown(built: &Built, args: &BenchArgs, dir: &std::path::Path, log: &std::path::Path) -> Result<()> {
    if let Some(baseline) = &args.baseline {
        anyhow::ensure!(baseline.is_file(), "--baseline {} is not a file", baseline.display());
    }
    let session = |environment: &str, plans: &[ProbePlan]| Session {
        environment: environment.to_owned(),
        arms: arms(built, args, plans),
        workloads: args.workloads.clone(),
        pairs: args.pairs,
        block_secs: args.block_secs,
        batches: args.batches as usize,
        stats_batches: args.batches as usize,
        cpu: args.cpu,
        max_redo: args.pairs,
        max_wait_secs: args.max_wait * 60,
        keep_disturbed: args.keep_disturbed,
        log: log.to_path_buf(),
    };
    let mut all: Vec<SessionResults> = Vec::new();
    if args.on.contains(&Place::Host) {
        let results = bystanders::run(&session("host", &args.host_plans))?;
        bystanders::save(&results, &dir.join("bystanders-host.json"))?;
        report::print(&results);
        all.push(results);
    }
    if args.on.contains(&Place::Vm) {
        let results = guest::run(
            args.vm_kernel,
            args.vm_clock,
            &session("vm", &args.vm_plans),
            &dir.join("vm"),
            &built.workspace.root,
        )?;
        bystanders::save(&results, &dir.join("bystanders-vm.json"))?;
        report::print(&results);
        all.push(results);
    }
    let all: Vec<&SessionResults> = all.iter().collect();
    report::print_goals(&all);
    report::print_estimates(&all);
    println!("results written to {}/bystanders-*.json", dir.display());
    Ok(())
}

/// Part 2: the agent's own footprint.
fn footprint(built: &Built, args: &BenchArgs, dir: &std::path::Path, log: &std::path::Path) -> Result<()> {
    let options = footprint::Options {
        window: std::time::Duration::from_secs(args.footprint_secs),
        processes: args.footprint_processes,
        series: args.footprint_series,
        large_series: args.footprint_large_series,
    };
    let agent = args.footprint_agent.as_ref().unwrap_or(&built.ptwatch);
    anyhow::ensure!(agent.is_file(), "--footprint-agent {} is not a file", agent.display());
    eprintln!(
        "[bench] footprint of {}: idle, {} tracked processes, ~{} series",
        agent.display(),
        options.processes,
        options.series
    );
    let results = footprint::run(agent, &built.workload, log, &options)?;
    footprint::print(&results);
    let path = dir.join("footprint.json");
    let json = serde_json::to_string_pretty(&results).context("serialising results")?;
    fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    println!("results written to {}", path.display());
    if args.scrapers > 0 {
        scrape::run(agent, &built.workload, log, dir, args.scrapers, args.footprint_series)?;
    }
    Ok(())
}
