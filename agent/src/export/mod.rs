//! Prometheus export: the table of metric families (`families`), the
//! writer of both exposition formats (`exposition`, content negotiation in
//! `openmetrics`), the scrape-time rendering of the harvested records
//! (`metrics`), of the empty-page-table estimates (`empty_tables`) and of
//! the agent's own metrics (`self_metrics`), and the
//! HTTP(S) listener that serves them (`server`, `tls`).
pub mod empty_tables;
pub mod exposition;
pub mod families;
pub mod metrics;
pub mod openmetrics;
pub mod self_metrics;
pub mod server;
pub mod tls;
