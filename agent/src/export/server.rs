//! The HTTP(S) listener: `/metrics` (Prometheus text 0.0.4, or OpenMetrics
//! 1.0.0 when the scraper asks for it), `/healthz` and `/readyz`.
//!
//! The server starts as soon as the port is bound, before the probes are
//! attached, so that an orchestrator can tell "starting" (`/healthz` 200,
//! `/readyz` 503) from "dead". `/metrics` answers 503 until then.
//! Authentication, when configured, guards everything except the two health
//! endpoints, which carry no data and must work for probes that have no
//! credentials.

use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use base64::Engine as _;
use prometheus::{Encoder as _, Histogram, HistogramOpts, Registry, TextEncoder};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;

use super::{openmetrics, tls::TlsListener};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("HTTP server failed")]
    Serve(#[source] io::Error),
}

/// Credentials the scraper must present on `/metrics`.
#[derive(Clone)]
pub enum Auth {
    Basic { user: String, password: Vec<u8> },
    Bearer { token: Vec<u8> },
}

impl fmt::Debug for Auth {
    // Never print the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { user, .. } => f.debug_struct("Basic").field("user", user).finish_non_exhaustive(),
            Self::Bearer { .. } => f.debug_struct("Bearer").finish_non_exhaustive(),
        }
    }
}

impl Auth {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Basic { .. } => "basic",
            Self::Bearer { .. } => "bearer",
        }
    }

    /// Whether an `Authorization` header value carries these credentials.
    /// Secrets are compared in constant time (only their length can leak).
    fn accepts(&self, authorization: &str) -> bool {
        let Some((scheme, credentials)) = authorization.trim().split_once(' ') else {
            return false;
        };
        let credentials = credentials.trim();
        match self {
            Self::Bearer { token } => {
                scheme.eq_ignore_ascii_case("bearer") && bool::from(credentials.as_bytes().ct_eq(token))
            }
            Self::Basic { user, password } => {
                if !scheme.eq_ignore_ascii_case("basic") {
                    return false;
                }
                let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
                    return false;
                };
                // RFC 7617: the user id cannot contain a colon; the password can.
                let Some(colon) = decoded.iter().position(|b| *b == b':') else {
                    return false;
                };
                let (given_user, given_password) = (&decoded[..colon], &decoded[colon + 1..]);
                // `&`, not `&&`: do not reveal which half was wrong by timing.
                bool::from(given_user.ct_eq(user.as_bytes()) & given_password.ct_eq(password))
            }
        }
    }

    fn challenge(&self) -> &'static str {
        match self {
            Self::Basic { .. } => r#"Basic realm="ptwatch", charset="UTF-8""#,
            Self::Bearer { .. } => r#"Bearer realm="ptwatch""#,
        }
    }
}

/// What the handlers share with the agent: the registry once the probes are
/// attached, whether the first harvest has succeeded, and how long building
/// each response takes.
pub struct Exporter {
    registry: OnceLock<Arc<Registry>>,
    ready: AtomicBool,
    scrape_duration: Histogram,
}

/// Buckets of `ptwatch_scrape_duration_seconds`: 0.5 ms to 2.5 s, finest
/// around the 10 ms goal of a 10,000-series scrape (docs/benchmarks.md).
const SCRAPE_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

impl Default for Exporter {
    fn default() -> Self {
        let opts = HistogramOpts::new(
            "ptwatch_scrape_duration_seconds",
            "Time to build each /metrics response (read the kernel maps, harvest, encode), seconds.",
        )
        .buckets(SCRAPE_BUCKETS.to_vec());
        // Fails only on an invalid name or unsorted buckets, both constants.
        let scrape_duration = Histogram::with_opts(opts).expect("valid histogram options");
        Self { registry: OnceLock::new(), ready: AtomicBool::new(false), scrape_duration }
    }
}

impl Exporter {
    /// Start serving metrics from `registry` (once; later calls are ignored),
    /// with the scrape duration histogram added to it.
    pub fn set_registry(&self, registry: Arc<Registry>) {
        if let Err(err) = registry.register(Box::new(self.scrape_duration.clone())) {
            tracing::warn!(error = %err, "cannot export ptwatch_scrape_duration_seconds");
        }
        let _ = self.registry.set(registry);
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

/// A bound listener, plain or TLS.
pub enum Bound {
    Plain(TcpListener),
    Tls(TlsListener),
}

/// Bind first, separately, so that "address in use" is reported before any
/// probe is attached.
pub async fn bind(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Result<Bound, ServerError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
    Ok(match tls {
        None => Bound::Plain(listener),
        Some(config) => {
            Bound::Tls(TlsListener::new(listener, config).map_err(|source| ServerError::Bind { addr, source })?)
        }
    })
}

/// The routes, with `auth` in front of everything but the health endpoints.
pub fn router(exporter: Arc<Exporter>, auth: Option<Auth>) -> Router {
    let mut protected =
        Router::new().route("/metrics", get(metrics)).route("/", get(index)).with_state(Arc::clone(&exporter));
    if let Some(auth) = auth {
        protected = protected.layer(middleware::from_fn_with_state(Arc::new(auth), require_auth));
    }
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(exporter).merge(protected)
}

/// Serve until `shutdown` completes.
pub async fn serve(
    bound: Bound,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    match bound {
        Bound::Plain(listener) => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        Bound::Tls(listener) => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
    }
    .map_err(ServerError::Serve)
}

async fn require_auth(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| auth.accepts(value));
    if authorized {
        return next.run(request).await;
    }
    tracing::debug!(path = %request.uri().path(), "request without valid credentials");
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, auth.challenge())], "unauthorized\n").into_response()
}

async fn index() -> &'static str {
    "ptwatch: page-table memory metrics at /metrics; health at /healthz and /readyz\n"
}

/// The process is up and serving.
async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(exporter): State<Arc<Exporter>>) -> Response {
    if exporter.is_ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: probes not attached or kernel maps not read yet\n")
            .into_response()
    }
}

async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    let Some(registry) = exporter.registry.get().cloned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "probes are being attached\n").into_response();
    };
    let openmetrics =
        headers.get_all(header::ACCEPT).iter().filter_map(|value| value.to_str().ok()).any(openmetrics::preferred);
    let scrape_duration = exporter.scrape_duration.clone();
    // Reading kernel maps is a series of syscalls: keep it off the reactor.
    // The time is that of this work; it shows in the next scrape.
    let encoded = tokio::task::spawn_blocking(move || {
        let _timer = scrape_duration.start_timer();
        encode(&registry, openmetrics)
    })
    .await;
    match encoded {
        Ok(Ok((body, content_type))) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Ok(Err(err)) => {
            tracing::error!(error = %err, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {err}\n")).into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "metrics task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics task failed\n").into_response()
        }
    }
}

/// The Prometheus text format; the crate's `TEXT_FORMAT` leaves out the
/// charset, which client_golang states.
const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The body and its content type.
fn encode(registry: &Registry, openmetrics: bool) -> Result<(String, &'static str), prometheus::Error> {
    let families = registry.gather();
    if openmetrics {
        return Ok((openmetrics::encode(&families), openmetrics::CONTENT_TYPE));
    }
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&families, &mut buffer)?;
    let text = String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
    Ok((text, TEXT_CONTENT_TYPE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    #[test]
    fn basic_auth() {
        let auth = Auth::Basic { user: "prom".into(), password: b"s3:cret".to_vec() };
        assert!(auth.accepts(&basic("prom", "s3:cret")));
        assert!(auth.accepts(&basic("prom", "s3:cret").replace("Basic", "basic")));
        assert!(!auth.accepts(&basic("prom", "s3:cre")));
        assert!(!auth.accepts(&basic("pro", "s3:cret")));
        assert!(!auth.accepts("Basic !!!"));
        assert!(!auth.accepts("Bearer s3:cret"));
        assert!(!auth.accepts(""));
    }

    #[test]
    fn bearer_auth() {
        let auth = Auth::Bearer { token: b"tok".to_vec() };
        assert!(auth.accepts("Bearer tok"));
        assert!(auth.accepts("bearer  tok "));
        assert!(!auth.accepts("Bearer to"));
        assert!(!auth.accepts("Bearer tokk"));
        assert!(!auth.accepts(&basic("x", "tok")));
    }

    async fn get(addr: SocketAddr, path: &str) -> u16 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code")
    }

    /// Before the probes are attached: up, not ready, no metrics; then ready.
    #[tokio::test]
    async fn readiness_follows_the_exporter() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let exporter = Arc::new(Exporter::default());
        let app = router(Arc::clone(&exporter), Some(Auth::Bearer { token: b"t".to_vec() }));
        tokio::spawn(async move { axum::serve(listener, app).await });
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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let exporter = Arc::new(Exporter::default());
        let app = router(Arc::clone(&exporter), None);
        tokio::spawn(async move { axum::serve(listener, app).await });
        assert_eq!(get(addr, "/metrics").await, 503);
        exporter.set_registry(Arc::new(Registry::new()));
        assert_eq!(get(addr, "/metrics").await, 200);
    }

    #[test]
    fn debug_hides_secrets() {
        let auth = Auth::Basic { user: "prom".into(), password: b"hunter2".to_vec() };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
