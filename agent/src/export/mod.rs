//! Prometheus export: metric families built at scrape time (`metrics`), the
//! empty-page-table estimates (`empty_tables`), the agent's own metrics
//! (`self_metrics`), their OpenMetrics encoding
//! (`openmetrics`), and the HTTP(S) listener that serves them (`server`,
//! `tls`).
mod empty_tables;
pub mod metrics;
pub mod openmetrics;
pub mod self_metrics;
pub mod server;
pub mod tls;
