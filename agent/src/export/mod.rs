//! Prometheus export: metric families built at scrape time (`metrics`), the
//! agent's own metrics (`self_metrics`), their OpenMetrics encoding
//! (`openmetrics`), and the HTTP(S) listener that serves them (`server`,
//! `tls`).
pub mod metrics;
pub mod openmetrics;
pub mod self_metrics;
pub mod server;
pub mod tls;
