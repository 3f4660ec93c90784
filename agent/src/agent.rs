//! `ptwatch agent`: attach the probes and serve metrics until SIGINT/SIGTERM.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use prometheus::Registry;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::{
    aggregate::Aggregator,
    config::AgentConfig,
    export::{
        metrics::{AgentInfo, PtwatchCollector},
        self_metrics::AgentSelf,
        server::{self, Exporter},
    },
    kernel::{btf::KernelBtf, support},
    probes::Probes,
};

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    support::require_privileges()?;
    let btf = KernelBtf::load(&config.btf)?;
    // Bind before attaching anything: a busy port is the most common
    // start-up failure and must not leave probes behind.
    let listener = server::bind(config.listen, config.tls.clone(), &config.http).await?;

    // One shutdown signal, fanned out to the server and to this task.
    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = shutdown_signal()?;
    tokio::spawn(async move {
        signals.await;
        let _ = stop_tx.send(true);
    });

    // Serve /healthz (and a 503 /readyz) while the probes are loaded.
    let exporter = Arc::new(Exporter::new(&config.http));
    let server = tokio::spawn(server::serve(listener, Arc::clone(&exporter), config.auth.clone(), stopped(stop_rx)));
    tracing::info!(
        listen = %config.listen,
        tls = config.tls.is_some(),
        auth = config.auth.as_ref().map_or("none", |a| a.kind()),
        config_file = config.config_file.as_ref().map(|p| p.display().to_string()),
        "listening; /healthz is up, /readyz and /metrics wait for the probes"
    );
    if config.auth.is_some() && config.tls.is_none() {
        tracing::warn!("authentication without TLS sends credentials in clear text; set --tls-cert/--tls-key");
    }

    // Test PT_RECLAIM before the probes exist; the agent's own tgid is
    // filtered in the programs anyway.
    let pt_reclaim_supported = support::pt_reclaim_works().context("testing PT_RECLAIM support")?;
    if pt_reclaim_supported {
        tracing::info!("PT_RECLAIM is active on this kernel: MADV_DONTNEED frees empty PTE tables");
    } else {
        tracing::warn!(
            "PT_RECLAIM is not active on this kernel (needs 6.14+ with CONFIG_PT_RECLAIM): reclaim counters will stay at 0; DONTNEED calls and bytes are still exported"
        );
    }
    support::ensure_tracefs()?;

    let mode = config.probe_mode;
    let mut probes =
        tokio::task::spawn_blocking(move || Probes::load(&btf, mode)).await.context("probe loading task failed")??;
    let maps = probes.take_maps()?;
    // Loading and attaching were the privileged part: keep only what reading
    // the maps still needs (docs/install.md#privileges).
    crate::privileges::drop_after_attach().context("dropping capabilities after attaching the probes")?;
    // Parsing the kernel's BTF and loading the object left tens of MiB of
    // freed heap behind (docs/benchmarks.md#3-the-agents-own-footprint).
    release_free_heap();
    let info = AgentInfo::new(&probes, pt_reclaim_supported);
    // Shared with the self-metrics, which read the programs' run statistics
    // through a weak reference: dropping this detaches the probes.
    let probes = Arc::new(probes);
    let collector = Arc::new(
        PtwatchCollector::new(
            Box::new(Aggregator::new(maps, config.exited_ttl).with_selection(config.selection)),
            info,
        )
        .with_self_source(Box::new(AgentSelf::new(&probes))),
    );
    let registry = Arc::new(Registry::new());
    registry.register(Box::new(SharedCollector(Arc::clone(&collector)))).context("registering metrics")?;
    exporter.set_registry(registry);

    let harvester =
        tokio::spawn(harvest_periodically(Arc::clone(&collector), config.harvest_interval, Arc::clone(&exporter)));
    // Scripts wait for this line (xtask's VM tests): keep "serving /metrics".
    tracing::info!(listen = %config.listen, mode = probes.mode().as_str(), "probes attached; serving /metrics");
    let served = server.await;
    harvester.abort();
    drop(probes);
    tracing::info!("probes detached; exiting");
    served.context("HTTP server task failed")??;
    Ok(())
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Registry wants an owned collector; the harvest task shares it.
struct SharedCollector(Arc<PtwatchCollector>);

impl prometheus::core::Collector for SharedCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

/// Harvest every `every` (the first tick is immediate); the first success
/// makes the agent ready.
async fn harvest_periodically(collector: Arc<PtwatchCollector>, every: Duration, exporter: Arc<Exporter>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let collector = Arc::clone(&collector);
        let harvested = tokio::task::spawn_blocking(move || {
            let ready = collector.refresh();
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
        // the runtime's threads exist.
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
