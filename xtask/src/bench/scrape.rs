//! `cargo xtask bench`, last part: many honest scrapers at once (issue 15).
//! Fifty scrapers asking an agent that exports 10,000 series at the same
//! moment must not cost fifty renders: concurrent scrapes share renders
//! (docs/http.md#concurrent-scrapes).
//!
//! The same number of requests is sent twice, one at a time and by all the
//! scrapers at once (each sending its next request as soon as it has read
//! the previous answer). Measured: the agent's CPU time (`/proc/<pid>/stat`)
//! per request, the latency of each request as its client sees it, the
//! agent's peak RSS, and how many renders the agent did for those requests
//! (its own `ptwatch_scrape_duration_seconds_count`).
use std::{
    fs,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Barrier,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    agent::Agent,
    footprint::{self, Fleet},
};

/// Requests each scraper sends in the concurrent run.
const ROUNDS: usize = 4;

#[derive(Debug, Serialize)]
pub struct Load {
    pub name: String,
    pub scrapers: usize,
    pub requests: usize,
    /// Renders the agent did for those requests.
    pub renders: f64,
    pub seconds: f64,
    pub agent_cpu_seconds: f64,
    pub agent_cpu_ms_per_request: f64,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub series: usize,
    pub body_bytes: usize,
    pub loads: Vec<Load>,
}

/// Run it against an agent with `series` series and write
/// `dir/scrape.json`.
pub fn run(ptwatch: &Path, workload: &Path, log: &Path, dir: &Path, scrapers: usize, series: usize) -> Result<()> {
    eprintln!("[bench] scrapers: {scrapers} at once, ~{series} series");
    let agent = Agent::start_with(ptwatch, log, &["--top-processes", "0"])?;
    let mut fleet = Fleet::new();
    footprint::grow_to_series(&agent, &mut fleet, workload, series)?;
    let body = agent.scrape()?;
    let requests = scrapers * ROUNDS;
    let loads = vec![
        measure(&agent, "one at a time", 1, requests)?,
        measure(&agent, &format!("{scrapers} at once"), scrapers, ROUNDS)?,
    ];
    drop(fleet);
    let results = Results { series: footprint::count_series(&body), body_bytes: body.len(), loads };
    print(&results);
    let path = dir.join("scrape.json");
    let json = serde_json::to_string_pretty(&results).context("serialising results")?;
    fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}

/// The agent's render and request counters, from a scrape.
fn counters(agent: &Agent) -> Result<(f64, f64)> {
    let text = agent.scrape()?;
    let value = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    };
    Ok((value("ptwatch_scrape_duration_seconds_count")?, value("ptwatch_http_metrics_requests_total")?))
}

/// `scrapers` clients, each sending `rounds` requests in a row, all
/// starting together.
fn measure(agent: &Agent, name: &str, scrapers: usize, rounds: usize) -> Result<Load> {
    let pid = agent.pid();
    let (renders_before, requests_before) = counters(agent)?;
    let sampling = AtomicBool::new(true);
    let start_barrier = Barrier::new(scrapers);
    let ticks = footprint::cpu_ticks(pid)?;
    let start = Instant::now();
    let (latencies, peak_rss) = thread::scope(|scope| -> Result<(Vec<f64>, f64)> {
        let sampler = scope.spawn(|| {
            let mut peak: f64 = 0.0;
            while sampling.load(Ordering::SeqCst) {
                peak = peak.max(footprint::resident(pid).map_or(0.0, |r| r.rss));
                thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        let clients: Vec<_> = (0..scrapers)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<f64>> {
                    start_barrier.wait();
                    (0..rounds)
                        .map(|_| {
                            let sent = Instant::now();
                            agent.scrape()?;
                            Ok(sent.elapsed().as_secs_f64() * 1e3)
                        })
                        .collect()
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for client in clients {
            latencies.extend(client.join().map_err(|_| anyhow::anyhow!("a scraper thread panicked"))??);
        }
        sampling.store(false, Ordering::SeqCst);
        let peak = sampler.join().map_err(|_| anyhow::anyhow!("the RSS sampler panicked"))?;
        Ok((latencies, peak))
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu = (footprint::cpu_ticks(pid)? - ticks) as f64 / footprint::ticks_per_second();
    let (renders_after, requests_after) = counters(agent)?;
    // The `before` scrape's own render and request are counted after it.
    let renders = renders_after - renders_before - 1.0;
    let served = requests_after - requests_before - 1.0;
    let requests = latencies.len();
    anyhow::ensure!(served as usize == requests, "the agent counted {served} requests, the scrapers sent {requests}");
    let mut sorted = latencies;
    sorted.sort_by(f64::total_cmp);
    let load = Load {
        name: name.to_owned(),
        scrapers,
        requests,
        renders,
        seconds,
        agent_cpu_seconds: cpu,
        agent_cpu_ms_per_request: cpu * 1e3 / requests.max(1) as f64,
        median_ms: footprint::percentile(&sorted, 0.5),
        p90_ms: footprint::percentile(&sorted, 0.9),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        peak_rss_mib: peak_rss,
    };
    eprintln!(
        "[bench] {name}: {requests} requests, {renders} renders, agent CPU {:.2} s ({:.2} ms/request), latency median {:.1} ms, max {:.1} ms",
        load.agent_cpu_seconds, load.agent_cpu_ms_per_request, load.median_ms, load.max_ms
    );
    Ok(load)
}

fn print(results: &Results) {
    println!();
    println!(
        "ptwatch scrapers: /metrics with {} series ({} KiB); CPU is the agent's, latency the client's",
        results.series,
        results.body_bytes / 1024
    );
    println!(
        "{:<16} {:>8} {:>8} {:>10} {:>12} {:>10} {:>8} {:>8} {:>10}",
        "", "requests", "renders", "agent CPU", "CPU/request", "median", "p90", "max", "peak RSS"
    );
    for l in &results.loads {
        println!(
            "{:<16} {:>8} {:>8} {:>8.2} s {:>9.2} ms {:>7.1} ms {:>5.1} ms {:>5.1} ms {:>6.1} MiB",
            l.name,
            l.requests,
            l.renders,
            l.agent_cpu_seconds,
            l.agent_cpu_ms_per_request,
            l.median_ms,
            l.p90_ms,
            l.max_ms,
            l.peak_rss_mib
        );
    }
}
