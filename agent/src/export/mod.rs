//! Prometheus export: metric families built at scrape time (`metrics`) and
//! the HTTP listener that serves them (`server`).
pub mod metrics;
pub mod server;
