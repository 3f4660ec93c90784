//! `ptwatch top`: processes (or cgroups) by page-table memory, with their
//! PT_RECLAIM and MADV_DONTNEED rates, refreshed in place in a terminal or
//! printed as plain snapshots when stdout is not one.
//!
//! The rates come from top's own instance of the probes (the agent's plan,
//! separate maps, so an agent can run meanwhile); page-table memory from
//! `/proc/PID/status` (`VmPTE`) and the cgroups' `memory.stat`.

pub mod sample;
mod screen;

use std::{
    io::{IsTerminal as _, Write as _},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    cli::{TopArgs, TopSort},
    kernel::{btf::KernelBtf, support},
    probes::Probes,
    trace::record::{human_bytes, local_time, shorten},
};
use sample::{sorted, Row, Sample, Sampler};

/// Rows of a plain snapshot without `--limit`.
const PLAIN_ROWS: u64 = 20;

/// What is on screen, changed by keys.
#[derive(Clone, Copy, Debug)]
pub struct ViewState {
    pub sort: TopSort,
    pub cgroups: bool,
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    support::require_privileges()?;
    let btf = KernelBtf::load(&args.probes.btf)?;
    support::ensure_tracefs()?;
    let mut probes = Probes::load(btf, args.probes.probe_mode)?;
    let started = Instant::now();
    let maps = probes.take_maps()?;
    let mut sampler = Sampler::new(maps, started);
    tracing::info!(mode = probes.mode().as_str(), "probes attached");
    let state = ViewState { sort: args.sort, cgroups: args.cgroups };
    install_stop_signals()?;
    let result = if std::io::stdout().is_terminal() {
        screen::run(&mut sampler, &args, state, probes.mode().as_str())
    } else {
        plain(&mut sampler, &args, state)
    };
    drop(probes);
    tracing::info!("probes detached");
    result
}

/// One table per interval on stdout, until `--iterations`, SIGINT/SIGTERM
/// or a closed pipe.
fn plain(sampler: &mut Sampler, args: &TopArgs, state: ViewState) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    let limit = args.limit.unwrap_or(PLAIN_ROWS);
    let mut refreshes = 0;
    loop {
        if !sleep_unless_stopped(args.interval) {
            return Ok(());
        }
        let sample = sampler.sample()?;
        let lines = table(sampler, &sample, state, limit, args.interval);
        let mut text = lines.join("\n");
        text.push_str("\n\n");
        match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            result => result.context("writing to stdout")?,
        }
        refreshes += 1;
        if args.iterations.is_some_and(|n| refreshes >= n) {
            return Ok(());
        }
    }
}

/// The lines of one refresh: a title line, a node line, column headers and
/// at most `limit` rows.
pub fn table(sampler: &mut Sampler, sample: &Sample, state: ViewState, limit: u64, interval: Duration) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
    let sort_name = match state.sort {
        TopSort::Pagetable => "page tables",
        TopSort::Reclaim => "reclaim",
        TopSort::Dontneed => "DONTNEED",
    };
    let mut lines = vec![
        format!(
            "ptwatch top  {}  every {:.1}s  sorted by {sort_name}  [p r d: sort  c: {}  q: quit]",
            &local_time(now)[..8],
            interval.as_secs_f64(),
            if state.cgroups { "processes" } else { "cgroups" }
        ),
        format!(
            "node PageTables {}   rates over the last {:.1}s",
            sample.node_pagetable_bytes.map_or_else(|| "-".to_owned(), human_bytes),
            sample.seconds
        ),
        String::new(),
    ];
    let rows = if state.cgroups {
        sorted(sampler.cgroups(&sample.processes), state.sort)
    } else {
        sorted(sample.processes.clone(), state.sort)
    };
    if state.cgroups {
        lines.push(format!(
            "{:<40} {:>6} {:>10} {:>10} {:>9} {:>9} {:>11}",
            "CGROUP", "PROCS", "PT", "VmPTE-SUM", "RECL/s", "DN/s", "DN-B/s"
        ));
    } else {
        lines.push(format!("{:<8} {:<16} {:>10} {:>9} {:>9} {:>11}", "PID", "COMM", "PT", "RECL/s", "DN/s", "DN-B/s"));
    }
    for row in rows.iter().take(usize::try_from(limit).unwrap_or(usize::MAX)) {
        lines.push(format_row(row, state.cgroups));
    }
    lines
}

fn format_row(row: &Row, cgroups: bool) -> String {
    let pt = row.pagetable_bytes.map_or_else(|| "-".to_owned(), human_bytes);
    let rates = format!(
        "{:>9.1} {:>9.1} {:>11}",
        row.reclaim_pages_per_s,
        row.dontneed_calls_per_s,
        human_bytes(row.dontneed_bytes_per_s as u64)
    );
    if cgroups {
        format!(
            "{:<40} {:>6} {:>10} {:>10} {rates}",
            shorten(&row.name, 40),
            row.processes,
            pt,
            human_bytes(row.processes_pagetable_bytes)
        )
    } else {
        format!("{:<8} {:<16} {:>10} {rates}", row.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()), row.name, pt)
    }
}

/// Set by SIGINT, SIGTERM and SIGHUP.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Turn SIGINT, SIGTERM and SIGHUP into a flag the loops check, so that
/// they end through the normal path, which restores the terminal and
/// detaches the probes.
fn install_stop_signals() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: an all-zero sigaction is valid; the handler only stores
        // to an atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        anyhow::ensure!(rc == 0, "installing a signal handler: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sleep `duration` in short steps; false if a stop signal came.
fn sleep_unless_stopped(duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    while !stopped() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    false
}
