//! `ptwatch trace`: page-table events as they happen, and a summary.
//!
//! trace loads its own instance of the eBPF object with
//! [`LoadOptions::events`]: the same probe plan the agent would choose, plus
//! a ring buffer the programs send one [`TraceEvent`] to per DONTNEED call
//! and per page-table free. Its maps are its own, so it runs next to an
//! agent without disturbing its counts; dropping the probes at the end
//! detaches everything.

pub mod record;
pub mod summary;

use std::{
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use ptwatch_common::TraceEvent;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    aggregate::cgroup::CgroupTree,
    cli::{TraceArgs, UsageError},
    kernel::{btf::KernelBtf, procfs, support},
    probes::{EventOptions, LoadOptions, Probes},
};
use record::{Filter, Record};
use summary::{Tally, Visibility};

/// How often the lost-event count is looked at.
const LOST_CHECK: Duration = Duration::from_millis(500);

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    support::require_privileges()?;
    let mut tree = match CgroupTree::detect() {
        Ok(tree) => Some(tree),
        Err(err) => {
            tracing::warn!(error = %crate::error_chain::ErrorChain(&err), "no cgroup v2 tree: the CGROUP column stays empty");
            None
        }
    };
    let cgroup_id = match &args.cgroup {
        Some(path) => cgroup_id(tree.as_ref(), path)?,
        None => 0,
    };
    if let Some(pid) = args.pid {
        anyhow::ensure!(procfs::process_exists(pid), "no process with pid {pid}");
    }
    let btf = KernelBtf::load(&args.probes.btf)?;
    let options = LoadOptions {
        events: Some(EventOptions {
            tgid: args.pid.unwrap_or(0),
            cgroup_id,
            ring_bytes: args.buffer_kib.saturating_mul(1024),
        }),
        ..LoadOptions::default()
    };
    let mode = args.probes.probe_mode;
    let mut probes = tokio::task::spawn_blocking(move || Probes::load_with(btf, mode, options))
        .await
        .context("probe loading task failed")??;
    let maps = probes.take_events()?;
    if !probes.plan().frees_observed() {
        tracing::info!("the {} plan cannot see page-table frees: only dontneed events", probes.mode().as_str());
    }
    tracing::info!(mode = probes.mode().as_str(), "probes attached; tracing until Ctrl-C");

    let mut tracer = Tracer {
        json: args.json,
        filter: Filter::new(args.comm.as_deref(), &args.cause, args.min_pages),
        tally: Tally::default(),
        realtime_offset_ns: record::realtime_offset_ns(),
        tree: tree.take(),
        lost_map: maps.lost,
        lost_shown: 0,
        stdout: std::io::stdout(),
    };
    let visibility = Visibility::of(probes.plan());
    let started = Instant::now();
    let outcome = tracer.stream(maps.events, args.duration).await;
    // Whatever happened, the programs go first: nothing stays attached.
    drop(probes);
    tracing::info!("probes detached");
    match outcome {
        Ok(()) => {}
        Err(err) if is_broken_pipe(&err) => return Ok(()),
        Err(err) => return Err(err),
    }
    // With the programs detached nothing more can be lost: announce the
    // final count, so that the summary's and the last notice agree.
    match tracer.show_lost() {
        Err(err) if is_broken_pipe(&err) => return Ok(()),
        result => result?,
    }
    let summary = tracer.tally.summary(visibility, started.elapsed().as_secs_f64(), tracer.lost_shown);
    let text = if tracer.json {
        let mut value = serde_json::to_value(&summary)?;
        value["type"] = "summary".into();
        serde_json::to_string(&value)? + "\n"
    } else {
        summary.text()
    };
    match tracer.stdout.write_all(text.as_bytes()).and_then(|()| tracer.stdout.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}

/// The cgroup v2 id (directory inode) of `--cgroup`.
fn cgroup_id(tree: Option<&CgroupTree>, path: &Path) -> Result<u64, UsageError> {
    let tree = tree.ok_or_else(|| UsageError("--cgroup needs a cgroup v2 tree, and none is mounted".into()))?;
    let dir = if path.starts_with(tree.root()) { path.to_path_buf() } else { tree.dir(&path.to_string_lossy()) };
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => Ok(meta.ino()),
        Ok(_) => Err(UsageError(format!("--cgroup {}: {} is not a directory", path.display(), dir.display()))),
        Err(err) => Err(UsageError(format!("--cgroup {}: no cgroup at {} ({err})", path.display(), dir.display()))),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

struct Tracer {
    json: bool,
    filter: Filter,
    tally: Tally,
    realtime_offset_ns: i128,
    tree: Option<CgroupTree>,
    lost_map: PerCpuArray<MapData, u64>,
    /// The lost count last shown.
    lost_shown: u64,
    stdout: std::io::Stdout,
}

impl Tracer {
    /// Print events until SIGINT, SIGTERM or `duration`; the events still in
    /// the ring buffer then are printed too.
    async fn stream(&mut self, ring: RingBuf<MapData>, duration: Option<Duration>) -> anyhow::Result<()> {
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let deadline = async {
            match duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        // SAFETY: the ring buffer owns its map's fd, which stays open and the
        // same until the AsyncFd (which owns the ring buffer) is dropped.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("polling the ring buffer")?;
        let mut lost_check = tokio::time::interval(LOST_CHECK);
        if !self.json {
            writeln!(self.stdout, "{}", record::HEADER)?;
        }
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                () = &mut deadline => break,
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("polling the ring buffer")?;
                    self.drain(guard.get_inner_mut())?;
                    guard.clear_ready();
                }
                _ = lost_check.tick() => self.show_lost()?,
            }
        }
        self.drain(ring.get_mut())?;
        self.show_lost()?;
        Ok(())
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        while let Some(item) = ring.next() {
            let Some(event) = decode(&item) else {
                tracing::warn!(len = item.len(), "ring buffer record of unexpected size");
                continue;
            };
            let cgroup = match (&mut self.tree, event.cgroup_id) {
                (Some(tree), id) if id != 0 => tree.path_of(id, Instant::now()),
                _ => None,
            };
            let record = Record::new(&event, self.realtime_offset_ns, cgroup);
            if !self.filter.accepts(&record) {
                continue;
            }
            self.tally.add(&record);
            if self.json {
                let mut value = serde_json::to_value(&record)?;
                value["type"] = "event".into();
                writeln!(self.stdout, "{value}")?;
            } else {
                writeln!(self.stdout, "{}", record::text_row(&record))?;
            }
        }
        self.stdout.flush()?;
        Ok(())
    }

    /// Events the kernel dropped because the ring buffer was full, over
    /// every CPU.
    fn lost(&self) -> u64 {
        match self.lost_map.get(&0, 0) {
            Ok(per_cpu) => per_cpu.iter().sum(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the lost-event count");
                self.lost_shown
            }
        }
    }

    /// Tell the user when the lost count changed: a JSON line, or a line on
    /// stderr next to the table.
    fn show_lost(&mut self) -> anyhow::Result<()> {
        let lost = self.lost();
        if lost == self.lost_shown {
            return Ok(());
        }
        self.lost_shown = lost;
        if self.json {
            writeln!(self.stdout, "{}", serde_json::json!({"type": "lost", "lost": lost}))?;
            self.stdout.flush()?;
        } else {
            eprintln!("ptwatch: {lost} events lost so far (the ring buffer was full; try a larger --buffer-kib)");
        }
        Ok(())
    }
}

/// A ring buffer record as a [`TraceEvent`] (records are 8-byte aligned).
fn decode(bytes: &[u8]) -> Option<TraceEvent> {
    if bytes.len() != size_of::<TraceEvent>() {
        return None;
    }
    // SAFETY: the size matches and TraceEvent is plain old data (any bit
    // pattern is valid); read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TraceEvent>()) })
}
