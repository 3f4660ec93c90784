//! The HTTP(S) listener: `/metrics`, `/`, `/healthz` and `/readyz`
//! (`routes`), hardened against clients that abuse it (docs/http.md).
//!
//! The server starts as soon as the port is bound, before the probes are
//! attached, so that an orchestrator can tell "starting" (`/healthz` 200,
//! `/readyz` 503) from "dead". `/metrics` answers 503 until then.
//! Authentication, when configured, guards everything except the two health
//! endpoints, which carry no data and must work for probes that have no
//! credentials (`auth`).
//!
//! Whatever clients do, the listener's memory and descriptors stay bounded:
//! a cap on connections with eviction of idle and unfinished ones
//! (`listener`), a deadline for every phase of a connection, TLS handshake
//! included (`connection`), a cap on header bytes, and renders shared by
//! concurrent scrapes with a bounded number of responses in flight
//! (`render`). `limits` holds the settings, `stats` the `ptwatch_http_*`
//! metrics.

mod auth;
mod body;
mod connection;
mod limits;
mod listener;
mod render;
mod routes;
mod stats;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
};

pub use auth::Auth;
pub use limits::{HttpLimits, LimitsError, HEADER_BYTES_RANGE};
use prometheus::{Encoder as _, Histogram, HistogramOpts, Registry, TextEncoder};
pub use render::{Format, RenderError, Rendered};
use render::{RenderFn, Renders};
pub use routes::router;
use stats::HttpStats;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use super::openmetrics;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// What the handlers share with the agent: how to render the metrics once
/// the probes are attached, whether the first harvest has succeeded, the
/// renders in progress and the listener's own metrics.
pub struct Exporter {
    render: OnceLock<Arc<RenderFn>>,
    ready: AtomicBool,
    scrape_duration: Histogram,
    renders: Arc<Renders>,
    stats: Arc<HttpStats>,
}

/// Buckets of `ptwatch_scrape_duration_seconds`: 0.5 ms to 2.5 s, finest
/// around the 10 ms goal of a 10,000-series scrape (docs/benchmarks.md).
const SCRAPE_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

impl Default for Exporter {
    fn default() -> Self {
        Self::new(&HttpLimits::default())
    }
}

impl Exporter {
    pub fn new(limits: &HttpLimits) -> Self {
        let opts = HistogramOpts::new(
            "ptwatch_scrape_duration_seconds",
            "Time to build each /metrics response (read the kernel maps, harvest, encode), seconds; concurrent scrapes share one.",
        )
        .buckets(SCRAPE_BUCKETS.to_vec());
        // Fails only on an invalid name or unsorted buckets, both constants.
        let scrape_duration = Histogram::with_opts(opts).expect("valid histogram options");
        Self {
            render: OnceLock::new(),
            ready: AtomicBool::new(false),
            scrape_duration,
            renders: Renders::new(limits.max_concurrent_scrapes),
            stats: Arc::default(),
        }
    }

    /// Start serving metrics from `registry` (once; later calls are ignored),
    /// with the scrape duration histogram and the listener's metrics added
    /// to it.
    pub fn set_registry(&self, registry: Arc<Registry>) {
        if let Err(err) = registry.register(Box::new(self.scrape_duration.clone())) {
            tracing::warn!(error = %err, "cannot export ptwatch_scrape_duration_seconds");
        }
        if let Err(err) = self.stats.register(&registry) {
            tracing::warn!(error = %err, "cannot export the ptwatch_http_* metrics");
        }
        let scrape_duration = self.scrape_duration.clone();
        self.set_render(move |format| {
            let _timer = scrape_duration.start_timer();
            encode(&registry, format)
        });
    }

    /// Start serving metrics from `render` (once; later calls are ignored).
    /// It runs on a blocking thread, shared by the scrapes that arrive
    /// while it runs (`render`).
    pub fn set_render(&self, render: impl Fn(Format) -> Result<Rendered, RenderError> + Send + Sync + 'static) {
        let _ = self.render.set(Arc::new(render));
    }

    /// Probes attached and kernel maps read once: `/readyz` turns 200.
    pub fn set_ready(&self) {
        if !self.ready.swap(true, Ordering::SeqCst) {
            tracing::info!("ready: probes attached and the first harvest succeeded");
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// A bound listener, with the limits it will serve under.
pub struct Bound {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    /// `limits.max_connections`, lowered to fit the open-file limit.
    max_connections: u32,
}

/// Bind first, separately, so that "address in use" is reported before any
/// probe is attached; raise the open-file limit and fit the connection cap
/// under it.
pub async fn bind(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: &HttpLimits,
) -> Result<Bound, ServerError> {
    let listener = listen(addr).map_err(|source| ServerError::Bind { addr, source })?;
    let max_connections = match limits::FdLimit::raise() {
        Ok(fds) => {
            if let Some(before) = fds.raised_from {
                tracing::debug!(before, after = fds.soft, "raised the soft RLIMIT_NOFILE to the hard limit");
            }
            let cap = fds.connection_cap(limits.max_connections);
            if cap < limits.max_connections {
                tracing::warn!(
                    configured = limits.max_connections,
                    open_files = fds.soft,
                    kept_for_the_agent = limits::RESERVED_FDS,
                    max_connections = cap,
                    "--http-max-connections does not fit the open-file limit (RLIMIT_NOFILE): serving fewer connections at once; raise the limit (LimitNOFILE=, ulimit -n) to serve more"
                );
            }
            cap
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read RLIMIT_NOFILE; the connection cap is not checked against it");
            limits.max_connections
        }
    };
    tracing::debug!(?limits, max_connections, "HTTP limits");
    Ok(Bound { listener, tls: tls.map(TlsAcceptor::from), limits: *limits, max_connections })
}

/// Connections the kernel completes and queues before the agent accepts
/// them. tokio's default is 1024; Go servers (node_exporter and the other
/// Go exporters) ask for `net.core.somaxconn`, 4096 by default, which this
/// matches (the kernel caps it at somaxconn): a flood of connections fills
/// a short queue faster, and then the kernel drops the SYNs of honest
/// clients, who retry only after a second.
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket with [`LISTEN_BACKLOG`], bound like
/// `TcpListener::bind` (with `SO_REUSEADDR`, so a restart can bind while old
/// connections are in `TIME_WAIT`).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serve the routes, with `auth` in front of the protected ones, until
/// `shutdown` completes; requests in progress then get a few seconds to
/// finish.
pub async fn serve(
    bound: Bound,
    exporter: Arc<Exporter>,
    auth: Option<Auth>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let stats = Arc::clone(&exporter.stats);
    let app = router(exporter, auth);
    let shared = Arc::new(connection::Shared::new(app, bound.tls, &bound.limits, stats));
    listener::run(bound.listener, shared, bound.max_connections, shutdown).await;
    Ok(())
}

/// The Prometheus text format; the crate's `TEXT_FORMAT` leaves out the
/// charset, which client_golang states.
const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything in `registry`, in `format`.
fn encode(registry: &Registry, format: Format) -> Result<Rendered, RenderError> {
    let families = registry.gather();
    let (text, content_type) = match format {
        Format::OpenMetrics => (openmetrics::encode(&families), openmetrics::CONTENT_TYPE),
        Format::Text => {
            let mut buffer = Vec::new();
            TextEncoder::new().encode(&families, &mut buffer).map_err(|e| RenderError::Encode(e.to_string()))?;
            let text = String::from_utf8(buffer).map_err(|e| RenderError::Encode(e.to_string()))?;
            (text, TEXT_CONTENT_TYPE)
        }
    };
    Ok(Rendered { body: text.into(), content_type })
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    /// One request on its own connection: the status code.
    async fn get(addr: SocketAddr, path: &str) -> u16 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code")
    }

    /// The real listener on a loopback port; stops when the sender drops.
    async fn start(exporter: &Arc<Exporter>, auth: Option<Auth>) -> (SocketAddr, oneshot::Sender<()>) {
        let bound = bind("127.0.0.1:0".parse().expect("addr"), None, &HttpLimits::default()).await.expect("bind");
        let addr = bound.listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(bound, Arc::clone(exporter), auth, async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// Before the probes are attached: up, not ready, no metrics; then ready.
    #[tokio::test]
    async fn readiness_follows_the_exporter() {
        let exporter = Arc::new(Exporter::default());
        let (addr, _stop) = start(&exporter, Some(Auth::Bearer { token: b"t".to_vec() })).await;
        assert_eq!(get(addr, "/healthz").await, 200);
        assert_eq!(get(addr, "/readyz").await, 503);
        // Auth is checked first, even while not ready.
        assert_eq!(get(addr, "/metrics").await, 401);
        exporter.set_registry(Arc::new(Registry::new()));
        assert_eq!(get(addr, "/readyz").await, 503);
        exporter.set_ready();
        assert_eq!(get(addr, "/readyz").await, 200);
        assert_eq!(get(addr, "/healthz").await, 200);
    }

    #[tokio::test]
    async fn metrics_wait_for_the_registry() {
        let exporter = Arc::new(Exporter::default());
        let (addr, _stop) = start(&exporter, None).await;
        assert_eq!(get(addr, "/metrics").await, 503);
        exporter.set_registry(Arc::new(Registry::new()));
        assert_eq!(get(addr, "/metrics").await, 200);
        assert_eq!(exporter.stats.dropped_count(stats::DropReason::Limit), 0);
    }

    /// Shutdown refuses new connections and returns.
    #[tokio::test]
    async fn shutdown_stops_the_listener() {
        let exporter = Arc::new(Exporter::default());
        let bound = bind("127.0.0.1:0".parse().expect("addr"), None, &HttpLimits::default()).await.expect("bind");
        let addr = bound.listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(bound, exporter, None, async move {
            let _ = stopped.await;
        }));
        assert_eq!(get(addr, "/healthz").await, 200);
        drop(stop);
        let finished = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
        assert!(finished.is_ok_and(|joined| joined.is_ok_and(|served| served.is_ok())));
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    }
}
