//! Prometheus export: metric families built at scrape time (`metrics`), their
//! OpenMetrics encoding (`openmetrics`), and the HTTP(S) listener that serves
//! them (`server`, `tls`).
pub mod metrics;
pub mod openmetrics;
pub mod server;
pub mod tls;
