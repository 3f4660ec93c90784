//! `ptwatch agent`: attach the probes and serve metrics until SIGINT/SIGTERM.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use prometheus::Registry;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    aggregate::Aggregator,
    cli::AgentArgs,
    export::{
        metrics::{AgentInfo, PtwatchCollector},
        server,
    },
    kernel::{btf::KernelBtf, support},
    probes::Probes,
};

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    support::require_privileges()?;
    let btf = KernelBtf::load(&args.probes.btf)?;
    // Bind before attaching anything: a busy port is the most common
    // start-up failure and must not leave probes behind.
    let listener = server::bind(args.listen).await?;

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

    let mode = args.probes.probe_mode;
    let mut probes =
        tokio::task::spawn_blocking(move || Probes::load(&btf, mode)).await.context("probe loading task failed")??;
    let maps = probes.take_maps()?;
    let info = AgentInfo::new(&probes, pt_reclaim_supported);
    let collector = Arc::new(PtwatchCollector::new(Box::new(Aggregator::new(maps, args.exited_ttl)), info));
    let registry = Arc::new(Registry::new());
    registry.register(Box::new(SharedCollector(Arc::clone(&collector)))).context("registering metrics")?;

    let harvester = tokio::spawn(harvest_periodically(Arc::clone(&collector), args.harvest_interval));
    tracing::info!(listen = %args.listen, mode = probes.mode().as_str(), "serving /metrics");
    server::serve(listener, registry, shutdown_signal()?).await?;
    harvester.abort();
    drop(probes);
    tracing::info!("probes detached; exiting");
    Ok(())
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

async fn harvest_periodically(collector: Arc<PtwatchCollector>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let collector = Arc::clone(&collector);
        if tokio::task::spawn_blocking(move || collector.refresh()).await.is_err() {
            tracing::warn!("harvest task failed");
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
