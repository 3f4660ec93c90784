//! The HTTP(S) listener: `/metrics`, `/`, `/healthz` and `/readyz`
//! (`routes`), hardened against clients that abuse it (docs/http.md).
//!
//! The port is bound before the probes are attached (a busy port must not
//! leave probes behind), on the main thread; the server runs once the
//! runtime starts, and connections made meanwhile wait in the kernel's
//! backlog. `/readyz` answers 503 until the first harvest succeeded.
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
    os::fd::{AsRawFd as _, FromRawFd as _, IntoRawFd as _},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
};

pub use auth::Auth;
pub use limits::{HttpLimits, LimitsError, HEADER_BYTES_RANGE};
pub use render::{RenderError, Rendered};
use render::{RenderFn, Renders};
pub use routes::router;
pub use stats::HttpStats;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use super::{exposition::Format, metrics::Render};

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
    renders: Arc<Renders>,
    stats: Arc<HttpStats>,
}

impl Default for Exporter {
    fn default() -> Self {
        Self::new(&HttpLimits::default())
    }
}

impl Exporter {
    pub fn new(limits: &HttpLimits) -> Self {
        Self {
            render: OnceLock::new(),
            ready: AtomicBool::new(false),
            renders: Renders::new(limits.max_concurrent_scrapes),
            stats: Arc::default(),
        }
    }

    /// The listener's own metrics, for the exposition to include.
    pub fn stats(&self) -> Arc<HttpStats> {
        Arc::clone(&self.stats)
    }

    /// Start serving `metrics` (once; later calls are ignored).
    pub fn set_metrics(&self, metrics: Arc<dyn Render>) {
        self.set_render(move |format| {
            Ok(Rendered { body: metrics.render_body(format), content_type: format.content_type() })
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
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    /// `limits.max_connections`, lowered to fit the open-file limit.
    max_connections: u32,
}

/// Bind first, on the main thread before the runtime and the probes exist,
/// so that "address in use" is reported before any probe is attached; raise
/// the open-file limit and fit the connection cap under it.
pub fn bind(
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

impl Bound {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
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
/// connections are in `TIME_WAIT`). It listens without a runtime (tokio's
/// `listen` registers with one), so start-up can stay single-threaded.
fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // SAFETY: the descriptor comes from `into_raw_fd`, owned by nothing else.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(socket.into_raw_fd()) };
    // SAFETY: listen(2) on a socket this function owns.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG as libc::c_int) } != 0 {
        return Err(io::Error::last_os_error());
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
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
    let addr =
        bound.listener.local_addr().map_err(|source| ServerError::Bind { addr: ([0, 0, 0, 0], 0).into(), source })?;
    let listener = TcpListener::from_std(bound.listener).map_err(|source| ServerError::Bind { addr, source })?;
    let stats = Arc::clone(&exporter.stats);
    let app = router(exporter, auth);
    let shared = Arc::new(connection::Shared::new(app, bound.tls, &bound.limits, stats));
    listener::run(listener, shared, bound.max_connections, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    /// An empty exposition.
    struct Nothing;
    impl Render for Nothing {
        fn render(&self, _format: Format) -> String {
            String::new()
        }
    }

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
        let bound = bind("127.0.0.1:0".parse().expect("addr"), None, &HttpLimits::default()).expect("bind");
        let addr = bound.local_addr().expect("addr");
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
        exporter.set_metrics(Arc::new(Nothing));
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
        exporter.set_metrics(Arc::new(Nothing));
        assert_eq!(get(addr, "/metrics").await, 200);
        assert_eq!(exporter.stats.dropped_count(stats::DropReason::Limit), 0);
    }

    /// Shutdown refuses new connections and returns.
    #[tokio::test]
    async fn shutdown_stops_the_listener() {
        let exporter = Arc::new(Exporter::default());
        let bound = bind("127.0.0.1:0".parse().expect("addr"), None, &HttpLimits::default()).expect("bind");
        let addr = bound.local_addr().expect("addr");
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
