//! `ptwatch agent`: attach the probes and serve metrics until SIGINT/SIGTERM.
//!
//! Start-up runs on the main thread, in this order, before the async runtime
//! (and so any other thread) exists:
//! 1. bind the listener: a busy port, the most common start-up failure,
//!    must not leave probes behind (connections made from here on wait in
//!    the kernel's backlog until the server runs);
//! 2. test PT_RECLAIM, load and attach the probes;
//! 3. drop the capabilities reading the maps does not need: one thread, one
//!    drop, and every thread created later inherits it;
//! 4. start the runtime: serve, harvest periodically, stop on a signal.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::{
    aggregate::{Aggregator, KernelMaps},
    config::AgentConfig,
    empty_tables::{Estimator, Latest},
    export::{
        metrics::{AgentInfo, Metrics},
        self_metrics::AgentSelf,
        server::{self, Exporter},
    },
    kernel::{btf::KernelBtf, support},
    probes::{LoadOptions, Probes},
};

pub fn run(config: AgentConfig) -> anyhow::Result<()> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    support::require_privileges()?;
    let btf = KernelBtf::load(&config.btf)?;
    // Bind before attaching anything: a busy port is the most common
    // start-up failure and must not leave probes behind.
    let bound = server::bind(config.listen, config.tls.clone(), &config.http)?;
    tracing::info!(
        listen = %config.listen,
        tls = config.tls.is_some(),
        auth = config.auth.as_ref().map_or("none", |a| a.kind()),
        config_file = config.config_file.as_ref().map(|p| p.display().to_string()),
        "port bound; attaching the probes"
    );
    if config.auth.is_some() && config.tls.is_none() {
        tracing::warn!("authentication without TLS sends credentials in clear text; set --tls-cert/--tls-key");
    }

    let options = LoadOptions { max_tracked_processes: config.max_tracked_processes, ..LoadOptions::default() };
    // The BTF is handed over: it is dropped once the programs are loaded.
    let mut probes = Probes::load_with(btf, config.probe_mode, options)?;
    let pt_reclaim_supported = probes.pt_reclaim_active();
    if pt_reclaim_supported {
        tracing::info!("PT_RECLAIM is active on this kernel: MADV_DONTNEED frees empty PTE tables");
    } else {
        tracing::warn!(
            "PT_RECLAIM is not active on this kernel (x86_64 6.14+, arm64, riscv64 and others 7.0+, with CONFIG_PT_RECLAIM): reclaim counters stay at 0; DONTNEED calls and bytes are still exported"
        );
    }
    let maps = probes.take_maps()?;
    // Loading and attaching were the privileged part: keep only what reading
    // the maps still needs (docs/install.md#privileges).
    crate::privileges::drop_after_attach().context("dropping capabilities after attaching the probes")?;
    // Parsing the kernel's BTF and loading the object left tens of MiB of
    // freed heap behind (docs/benchmarks.md#4-the-agents-own-footprint).
    release_free_heap();

    let info = AgentInfo::new(&probes, pt_reclaim_supported);
    let mode = probes.mode();
    // Shared with the self-metrics, which read the programs' run statistics
    // through a weak reference: dropping this detaches the probes.
    let probes = Arc::new(probes);
    let aggregator = Aggregator::new(KernelMaps::new(maps), config.exited_ttl).with_selection(config.selection);
    let empty_tables = Arc::new(Latest::default());
    let exporter = Arc::new(Exporter::new(&config.http));
    let metrics = Arc::new(
        Metrics::new(Box::new(aggregator), info)
            .with_self_source(Box::new(AgentSelf::new(&probes)))
            .with_empty_tables(Arc::clone(&empty_tables))
            .with_section(exporter.stats()),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let estimator = Estimator::new(config.empty_tables);
    let served = runtime.block_on(serve(&config, bound, exporter, metrics, (estimator, empty_tables), mode.as_str()));
    drop(probes);
    tracing::info!("probes detached; exiting");
    served
}

/// Serve until SIGINT/SIGTERM, harvesting every `--harvest-interval`.
async fn serve(
    config: &AgentConfig,
    bound: server::Bound,
    exporter: Arc<Exporter>,
    metrics: Arc<Metrics>,
    (estimator, empty_tables): (Estimator, Arc<Latest>),
    mode: &str,
) -> anyhow::Result<()> {
    // One shutdown signal, fanned out to the server and to this task.
    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = shutdown_signal()?;
    tokio::spawn(async move {
        signals.await;
        let _ = stop_tx.send(true);
    });
    exporter.set_metrics(Arc::clone(&metrics) as Arc<dyn crate::export::metrics::Render>);
    let server = tokio::spawn(server::serve(bound, Arc::clone(&exporter), config.auth.clone(), stopped(stop_rx)));
    let harvester = tokio::spawn(harvest_periodically(Arc::clone(&metrics), config.harvest_interval, exporter));
    let estimating = tokio::spawn(estimate_periodically(estimator, metrics, empty_tables));
    // Scripts wait for this line (xtask's VM tests): keep "serving /metrics".
    tracing::info!(listen = %config.listen, mode, "probes attached; serving /metrics");
    let served = server.await;
    harvester.abort();
    estimating.abort();
    served.context("HTTP server task failed")??;
    Ok(())
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Harvest every `every` (the first tick is immediate); the first success
/// makes the agent ready.
async fn harvest_periodically(metrics: Arc<Metrics>, every: Duration, exporter: Arc<Exporter>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let metrics = Arc::clone(&metrics);
        let harvested = tokio::task::spawn_blocking(move || {
            let ready = metrics.refresh();
            release_free_heap();
            ready
        });
        match harvested.await {
            Ok(true) => exporter.set_ready(),
            Ok(false) => {}
            Err(_) => tracing::warn!("harvest task failed"),
        }
    }
}

/// Estimate the empty page tables of every process every interval (the
/// first pass at once), on a blocking thread: a pass takes up to its CPU
/// budget, and the census and reads of `/proc` block.
async fn estimate_periodically(mut estimator: Estimator, metrics: Arc<Metrics>, latest: Arc<Latest>) {
    let mut ticker = tokio::time::interval(estimator.settings().interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned_denied = false;
    loop {
        ticker.tick().await;
        let metrics = Arc::clone(&metrics);
        let pass = tokio::task::spawn_blocking(move || {
            let snapshot = estimator.pass(&metrics.tracked());
            release_free_heap();
            (estimator, snapshot)
        });
        let Ok((back, snapshot)) = pass.await else {
            tracing::warn!("the empty-page-table estimate failed; ptwatch_*_empty_pagetable_bytes stop updating");
            return;
        };
        tracing::debug!(
            cpu_ms = snapshot.pass.cpu.as_secs_f64() * 1e3,
            processes = snapshot.pass.listed,
            exact = snapshot.pass.estimated_exact,
            sampled = snapshot.pass.estimated_sampled,
            deferred = snapshot.pass.deferred,
            "empty page tables estimated"
        );
        if snapshot.pass.denied > 0 && !warned_denied {
            warned_denied = true;
            tracing::warn!(
                processes = snapshot.pass.denied,
                "the agent may not read the smaps and pagemap of some processes (it needs CAP_SYS_PTRACE for other users' processes and for those with capabilities it lacks): their empty page tables are exported as bounds (method=\"bounded\")"
            );
        }
        estimator = back;
        latest.set(snapshot);
    }
}

/// Completes on the first SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

/// Heap settings of the agent, set before any thread starts: one malloc arena
/// (a handful of threads allocate rarely, so arena contention does not
/// matter, but each extra arena keeps its own freed memory: 25 MiB of a
/// blocking thread's arena stayed resident after start-up), and a fixed
/// mmap threshold, so that the large, short-lived buffers of a scrape (the
/// response body) go back to the kernel when freed instead of raising
/// glibc's dynamic threshold and staying in the heap.
pub fn configure_heap() {
    #[cfg(target_env = "gnu")]
    {
        /// glibc's default threshold, made fixed by setting it.
        const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
        // SAFETY: mallopt only changes allocator parameters; called before
        // any other thread exists.
        let set = unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1) == 1 && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        };
        if !set {
            tracing::debug!("mallopt refused the agent's heap settings; memory use may be higher");
        }
    }
}

/// Give freed heap pages back to the kernel (glibc keeps them otherwise).
fn release_free_heap() {
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
