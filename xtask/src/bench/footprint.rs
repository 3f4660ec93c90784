//! `cargo xtask bench --footprint-only` (and the second part of `cargo xtask
//! bench`): what the agent itself costs, against the goals of issue 4:
//! resident memory and CPU while idle and while 1,000 processes are tracked,
//! and the time to answer `/metrics` with about 10,000 series.
//!
//! The tracked processes are real: `ptwatch-workload hold 2` processes that
//! each touch 2 MiB, DONTNEED it (one PTE table reclaimed) and stay alive
//! until their stdin closes. RSS and CPU time come from `/proc/<agent>/`,
//! scrape latency is measured by the client (request sent to body read).
use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::agent::Agent;

/// Goals of issue 4 item 7.
const GOAL_RSS_MIB: f64 = 20.0;
const GOAL_IDLE_CPU_PERCENT: f64 = 0.1;
const GOAL_SCRAPE_MS: f64 = 10.0;

/// Prometheus' default scrape interval.
const SCRAPE_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub tracked_processes: usize,
    pub seconds: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// The agent's own memory (heap, stacks): `RssAnon`.
    pub rss_anon_mib: f64,
    /// Mapped files (mostly the binary's own text): `RssFile`.
    pub rss_file_mib: f64,
    /// Of one core, over the phase.
    pub cpu_percent: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub series: usize,
    pub body_bytes: usize,
    pub scrapes: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
    /// The agent's own mean time per render over the timed scrapes
    /// (`ptwatch_scrape_duration_seconds`: harvest and encoding, without
    /// the HTTP exchange); None if the agent does not export it.
    pub render_ms: Option<f64>,
    pub rss_mib: f64,
    pub rss_anon_mib: f64,
    pub rss_file_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct Footprint {
    pub phases: Vec<Phase>,
    pub latency: Latency,
    /// The same with `--footprint-large-series` series (None: skipped).
    pub large_latency: Option<Latency>,
}

/// Options of the footprint part.
pub struct Options {
    /// Length of each CPU measurement.
    pub window: Duration,
    /// Tracked processes of the second phase.
    pub processes: usize,
    /// Series wanted for the latency measurement.
    pub series: usize,
    /// Series wanted for the second latency measurement (0: skip it).
    pub large_series: usize,
}

/// A fleet of `ptwatch-workload hold` processes, alive until dropped.
pub(super) struct Fleet {
    children: Vec<(Child, Option<ChildStdin>)>,
}

impl Fleet {
    pub(super) fn new() -> Self {
        Self { children: Vec::new() }
    }

    /// Start processes until there are `count`, each having done its DONTNEED.
    pub(super) fn grow(&mut self, workload: &Path, count: usize) -> Result<()> {
        while self.children.len() < count {
            let mut child = Command::new(workload)
                .args(["hold", "2"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", workload.display()))?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take().context("workload stdout")?;
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).context("reading the workload's report")?;
            if line.is_empty() {
                bail!("a hold workload exited before reporting: {:?}", child.wait());
            }
            self.children.push((child, stdin));
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.children.len()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, stdin) in &mut self.children {
            drop(stdin.take());
        }
        for (child, _) in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// CPU ticks (user + system) and the clock tick rate.
pub(super) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).context("reading the agent's stat")?;
    let rest = &stat[stat.rfind(')').context("stat format")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> { fields.get(n - 3).context("stat field")?.parse().context("stat field") };
    Ok(field(14)? + field(15)?)
}

pub(super) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Resident memory of the agent, MiB, from `/proc/<pid>/status`.
pub(super) struct Resident {
    /// `VmRSS`: anonymous + file-backed + shared memory.
    pub(super) rss: f64,
    /// `VmHWM`.
    peak: f64,
    anon: f64,
    file: f64,
}

pub(super) fn resident(pid: u32) -> Result<Resident> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).context("reading the agent's status")?;
    let kib = |field: &str| -> Result<f64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    };
    Ok(Resident {
        rss: kib("VmRSS")? / 1024.0,
        peak: kib("VmHWM")? / 1024.0,
        anon: kib("RssAnon")? / 1024.0,
        file: kib("RssFile")? / 1024.0,
    })
}

/// Let the agent run for `window`, scraped every [`SCRAPE_EVERY`] as
/// Prometheus would, and measure its CPU use and memory.
fn phase(agent: &Agent, name: &str, tracked: usize, window: Duration) -> Result<Phase> {
    let pid = agent.pid();
    let start = Instant::now();
    let before = cpu_ticks(pid)?;
    let mut next_scrape = start;
    while start.elapsed() < window {
        if Instant::now() >= next_scrape {
            agent.scrape()?;
            next_scrape += SCRAPE_EVERY;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid)? - before) as f64 / ticks_per_second();
    let memory = resident(pid)?;
    let phase = Phase {
        name: name.to_owned(),
        tracked_processes: tracked,
        seconds,
        rss_mib: memory.rss,
        peak_rss_mib: memory.peak,
        rss_anon_mib: memory.anon,
        rss_file_mib: memory.file,
        cpu_percent: cpu / seconds * 100.0,
    };
    eprintln!(
        "[bench] {name}: {:.2} MiB RSS (anon {:.2}, file {:.2}; peak {:.2}), {:.3} % of a core over {seconds:.0} s",
        phase.rss_mib, phase.rss_anon_mib, phase.rss_file_mib, phase.peak_rss_mib, phase.cpu_percent
    );
    Ok(phase)
}

/// Samples in a Prometheus text exposition.
pub(super) fn count_series(text: &str) -> usize {
    text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')).count()
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn latency(agent: &Agent, scrapes: usize) -> Result<Latency> {
    // One untimed scrape: the first harvest of new processes resolves
    // their cgroups, later ones only read.
    let body = agent.scrape()?;
    let mut times = Vec::with_capacity(scrapes);
    let mut last = String::new();
    for _ in 0..scrapes {
        let start = Instant::now();
        last = agent.scrape()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    // A response shows the renders before its own.
    let render_ms = match (render_seconds(&body), render_seconds(&last)) {
        (Some((sum0, count0)), Some((sum1, count1))) if count1 > count0 => {
            Some((sum1 - sum0) / (count1 - count0) * 1e3)
        }
        _ => None,
    };
    times.sort_by(f64::total_cmp);
    let memory = resident(agent.pid())?;
    Ok(Latency {
        series: count_series(&body),
        body_bytes: body.len(),
        scrapes,
        median_ms: percentile(&times, 0.5),
        p90_ms: percentile(&times, 0.9),
        max_ms: times.last().copied().unwrap_or(f64::NAN),
        render_ms,
        rss_mib: memory.rss,
        rss_anon_mib: memory.anon,
        rss_file_mib: memory.file,
    })
}

pub fn run(ptwatch: &Path, workload: &Path, log: &Path, options: &Options) -> Result<Footprint> {
    // Every process gets its own series, the worst case for the agent.
    let agent = Agent::start_with(ptwatch, log, &["--top-processes", "0"])?;
    // Let start-up work (BTF, calibration, first harvest) settle.
    thread::sleep(Duration::from_secs(2));
    let mut phases = vec![phase(&agent, "idle", 0, options.window)?];

    let mut fleet = Fleet::new();
    eprintln!("[bench] starting {} processes that DONTNEED 2 MiB and stay alive", options.processes);
    fleet.grow(workload, options.processes)?;
    agent.scrape()?;
    phases.push(phase(&agent, "tracking", fleet.len(), options.window)?);

    grow_to_series(&agent, &mut fleet, workload, options.series)?;
    let latency = latency(&agent, 50)?;
    print_latency(&latency);
    drop(fleet);
    drop(agent);
    let large_latency = match options.large_series {
        0 => None,
        series => Some(large_latency(ptwatch, workload, log, series)?),
    };
    Ok(Footprint { phases, latency, large_latency })
}

/// `ptwatch_scrape_duration_seconds` `_sum` and `_count` in an exposition.
fn render_seconds(text: &str) -> Option<(f64, f64)> {
    let value = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    Some((value("ptwatch_scrape_duration_seconds_sum")?, value("ptwatch_scrape_duration_seconds_count")?))
}

fn print_latency(latency: &Latency) {
    let render = latency.render_ms.map_or_else(|| "?".to_owned(), |ms| format!("{ms:.2} ms"));
    eprintln!(
        "[bench] /metrics with {} series ({} KiB): median {:.2} ms, p90 {:.2} ms, max {:.2} ms; agent's render {render} (mean)",
        latency.series,
        latency.body_bytes / 1024,
        latency.median_ms,
        latency.p90_ms,
        latency.max_ms
    );
}

/// Scrapes timed in the large measurement (each takes tens of ms).
const LARGE_SCRAPES: usize = 20;

/// Forked children per `ptwatch-workload fleet` round of the large measurement.
const FLEET_ROUND: usize = 5_000;

/// `/metrics` latency with about `series` series. Live processes cost too
/// much memory at 100,000 series (pids run out too), so the series are
/// those of short-lived processes (`ptwatch-workload fleet`: fork, reclaim
/// one table, exit), kept by an agent whose `--exited-ttl` outlasts the
/// measurement: three counter series per process instead of four.
fn large_latency(ptwatch: &Path, workload: &Path, log: &Path, series: usize) -> Result<Latency> {
    eprintln!("[bench] /metrics with ~{series} series of exited processes");
    let agent = Agent::start_with(ptwatch, log, &["--top-processes", "0", "--exited-ttl", "1h"])?;
    for _ in 0..100 {
        let exported = count_series(&agent.scrape()?);
        if exported >= series {
            break;
        }
        // Three series per exited process.
        let children = (series - exported).div_ceil(3).clamp(1, FLEET_ROUND);
        eprintln!("[bench] {exported} series: forking {children} more short-lived processes");
        let status = Command::new(workload)
            .args(["fleet", &children.to_string(), "1", "8"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("starting {}", workload.display()))?;
        if !status.success() {
            bail!("ptwatch-workload fleet failed: {status}");
        }
    }
    let latency = latency(&agent, LARGE_SCRAPES)?;
    print_latency(&latency);
    Ok(latency)
}

/// Grow `fleet` until `agent` exports at least `series` series. Series per
/// tracked process are measured to size the fleet; other processes of the
/// node skew the estimate, so grow again until the target is reached (a few
/// rounds at most).
pub(super) fn grow_to_series(agent: &Agent, fleet: &mut Fleet, workload: &Path, series: usize) -> Result<()> {
    for _ in 0..4 {
        let text = agent.scrape()?;
        let exported = count_series(&text);
        if exported >= series {
            break;
        }
        let per_process = text.lines().filter(|l| l.contains("pid=\"") && !l.contains("pid=\"other\"")).count() as f64
            / fleet.len().max(1) as f64;
        let wanted = ((series - exported) as f64 / per_process.max(1.0)).ceil().max(1.0);
        let target = fleet.len() + wanted as usize;
        eprintln!("[bench] {exported} series, {per_process:.1} per process: growing to {target} processes");
        fleet.grow(workload, target)?;
    }
    Ok(())
}

pub fn print(footprint: &Footprint) {
    println!();
    println!("ptwatch agent footprint (scraped every {} s; every process with its own series)", SCRAPE_EVERY.as_secs());
    println!("{:<44} {:>12} {:>10} {:>6}", "measure", "measured", "goal", "");
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    for phase in &footprint.phases {
        let label = format!("RSS, {} ({} processes)", phase.name, phase.tracked_processes);
        println!(
            "{label:<44} {:>8.2} MiB {:>6.0} MiB {:>6}",
            phase.rss_mib,
            GOAL_RSS_MIB,
            verdict(phase.rss_mib <= GOAL_RSS_MIB)
        );
        println!(
            "{:<44} {:>8.2} MiB / {:.2} MiB",
            "  of which anonymous (heap) / file-backed", phase.rss_anon_mib, phase.rss_file_mib
        );
        let label = format!("CPU, {} ({} processes)", phase.name, phase.tracked_processes);
        if phase.tracked_processes == 0 {
            let ok = phase.cpu_percent <= GOAL_IDLE_CPU_PERCENT;
            println!("{label:<44} {:>10.3} % {:>8.1} % {:>6}", phase.cpu_percent, GOAL_IDLE_CPU_PERCENT, verdict(ok));
        } else {
            println!("{label:<44} {:>10.3} % {:>10} {:>6}", phase.cpu_percent, "-", "");
        }
    }
    let l = &footprint.latency;
    let label = format!("/metrics, {} series (median of {})", l.series, l.scrapes);
    println!(
        "{label:<44} {:>9.2} ms {:>7.0} ms {:>6}",
        l.median_ms,
        GOAL_SCRAPE_MS,
        verdict(l.median_ms <= GOAL_SCRAPE_MS)
    );
    println!("{:<44} {:>9.2} ms", "/metrics, p90", l.p90_ms);
    println!("{:<44} {:>9.2} ms", "/metrics, max", l.max_ms);
    if let Some(ms) = l.render_ms {
        println!("{:<44} {:>9.2} ms", "  agent's own render (mean)", ms);
    }
    println!(
        "{:<44} {:>8.2} MiB {:>6.0} MiB {:>6}",
        "RSS with those series",
        l.rss_mib,
        GOAL_RSS_MIB,
        verdict(l.rss_mib <= GOAL_RSS_MIB)
    );
    println!(
        "{:<44} {:>8.2} MiB / {:.2} MiB",
        "  of which anonymous (heap) / file-backed", l.rss_anon_mib, l.rss_file_mib
    );
    if let Some(l) = &footprint.large_latency {
        let label = format!("/metrics, {} series (median of {})", l.series, l.scrapes);
        println!("{label:<44} {:>9.2} ms", l.median_ms);
        println!("{:<44} {:>9.2} ms", "/metrics, p90", l.p90_ms);
        println!("{:<44} {:>9.2} ms", "/metrics, max", l.max_ms);
        if let Some(ms) = l.render_ms {
            println!("{:<44} {:>9.2} ms", "  agent's own render (mean)", ms);
        }
        println!("{:<44} {:>8.2} MiB", "RSS with those series", l.rss_mib);
    }
}

#[cfg(test)]
mod tests {
    use super::{count_series, percentile, render_seconds};

    #[test]
    fn series_are_the_sample_lines() {
        assert_eq!(count_series("# HELP a x\n# TYPE a counter\na{b=\"1\"} 1\na{b=\"2\"} 2\n\nc 3\n"), 3);
    }

    #[test]
    fn render_time_from_the_agents_histogram() {
        let text = "# TYPE ptwatch_scrape_duration_seconds histogram\nptwatch_scrape_duration_seconds_bucket{le=\"+Inf\"} 4\nptwatch_scrape_duration_seconds_sum 0.004\nptwatch_scrape_duration_seconds_count 4\n";
        assert_eq!(render_seconds(text), Some((0.004, 4.0)));
        assert_eq!(render_seconds("a 1\n"), None);
    }

    #[test]
    fn percentiles_of_sorted_values() {
        let values = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&values, 0.5), 3.0);
        assert_eq!(percentile(&values, 0.9), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
