//! The HTTP listener: `/metrics` in the Prometheus text format.

use std::{future::Future, io, net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus::Registry;
use tokio::net::TcpListener;

use super::metrics::encode_text;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(#[source] io::Error),
}

/// Bind first, separately, so that "address in use" is reported before any
/// probe is attached.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
}

/// Serve until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let app = Router::new().route("/metrics", get(metrics)).route("/", get(index)).with_state(registry);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(ServerError::Serve)
}

async fn index() -> &'static str {
    "ptwatch: page-table memory metrics at /metrics\n"
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    // Reading kernel maps is a series of syscalls: keep it off the reactor.
    let encoded = tokio::task::spawn_blocking(move || encode_text(&registry)).await;
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
