//! `ptwatch top`: processes (or cgroups) by page-table memory, with their
//! PT_RECLAIM and MADV_DONTNEED rates, refreshed in place in a terminal, or
//! printed as snapshots when stdout is not one (tab-separated, `output.rs`)
//! or with `--json`.
//!
//! The rates come from top's own instance of the probes (the agent's plan,
//! separate maps, so an agent can run meanwhile); page-table memory from
//! `/proc/PID/status` (`VmPTE`) and the cgroups' `memory.stat`.

pub mod output;
pub mod sample;
mod screen;

use std::{
    io::{IsTerminal as _, Write as _},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    aggregate::KernelMaps,
    cli::{TopArgs, TopSort},
    kernel::{btf::KernelBtf, support},
    probes::Probes,
};
use output::Layout;
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
    let mut probes = Probes::load(btf, args.probes.probe_mode)?;
    let started = Instant::now();
    let maps = probes.take_maps()?;
    let mut sampler = Sampler::new(KernelMaps::new(maps), started);
    tracing::info!(mode = probes.mode().as_str(), "probes attached");
    let state = ViewState { sort: args.sort, cgroups: args.cgroups };
    install_stop_signals()?;
    let result = if args.json {
        snapshots(&mut sampler, &args, state, Layout::Json)
    } else if std::io::stdout().is_terminal() {
        screen::run(&mut sampler, &args, state, probes.mode().as_str())
    } else {
        snapshots(&mut sampler, &args, state, Layout::Plain)
    };
    drop(probes);
    tracing::info!("probes detached");
    result
}

/// One snapshot per interval on stdout (a tab-separated table, or a JSON
/// line), until `--iterations`, SIGINT/SIGTERM or a closed pipe.
fn snapshots(sampler: &mut Sampler, args: &TopArgs, state: ViewState, layout: Layout) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    let limit = args.limit.unwrap_or(PLAIN_ROWS);
    let mut refreshes = 0;
    loop {
        if !sleep_unless_stopped(args.interval) {
            return Ok(());
        }
        let sample = sampler.sample()?;
        let rows = rows(sampler, &sample, state);
        let text = output::render(layout, &sample, state, &rows, limit, args.interval)?;
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

/// The rows of one refresh, sorted.
pub fn rows(sampler: &mut Sampler, sample: &Sample, state: ViewState) -> Vec<Row> {
    if state.cgroups {
        sorted(sampler.cgroups(&sample.processes), state.sort)
    } else {
        sorted(sample.processes.clone(), state.sort)
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
