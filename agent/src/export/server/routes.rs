//! The endpoints: `/metrics` (Prometheus text 0.0.4, or OpenMetrics 1.0.0
//! when the scraper asks for it), `/`, and the health endpoints `/healthz`
//! and `/readyz`, which stay open when authentication guards the rest.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use super::{
    auth::{require_auth, Auth},
    body::Guarded,
    render::Format,
    Exporter,
};
use crate::export::openmetrics;

/// The routes, with `auth` in front of everything but the health endpoints.
pub fn router(exporter: Arc<Exporter>, auth: Option<Auth>) -> Router {
    let mut protected =
        Router::new().route("/metrics", get(metrics)).route("/", get(index)).with_state(Arc::clone(&exporter));
    if let Some(auth) = auth {
        protected = protected.layer(middleware::from_fn_with_state(Arc::new(auth), require_auth));
    }
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(exporter).merge(protected)
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

/// What the scraper asked for in `Accept`.
fn negotiate(headers: &HeaderMap) -> Format {
    let openmetrics =
        headers.get_all(header::ACCEPT).iter().filter_map(|value| value.to_str().ok()).any(openmetrics::preferred);
    if openmetrics {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    let Some(render) = exporter.render.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "probes are being attached\n").into_response();
    };
    let mut scrape = exporter.renders.begin(negotiate(&headers));
    match scrape.render(render).await {
        Ok(rendered) => {
            exporter.stats.metrics_request();
            // The scrape (its slot) lasts until the body is sent.
            let body = Body::new(Guarded::new(Body::from(rendered.body), scrape));
            ([(header::CONTENT_TYPE, rendered.content_type)], body).into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "rendering metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response()
        }
    }
}
