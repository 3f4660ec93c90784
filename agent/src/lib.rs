//! ptwatch: eBPF observability for Linux page-table memory.
//!
//! The layout follows the data: `kernel` says what the running kernel offers,
//! `probes` loads and attaches the eBPF programs, `aggregate` turns kernel
//! maps into per-process records, `empty_tables` estimates the empty page
//! tables every process keeps (with `scan`'s estimator), `export` serves
//! them to Prometheus, and `cli`/`agent` are the user-facing edges.
//! `memcpy` is the static x86_64 binary's copy routine (in place of musl's).
pub mod agent;
pub mod aggregate;
pub mod check;
pub mod cli;
pub mod config;
pub mod empty_tables;
pub mod error_chain;
pub mod export;
pub mod kernel;
#[cfg(target_arch = "x86_64")]
pub mod memcpy;
pub mod privileges;
pub mod probes;
pub mod scan;
pub mod top;
pub mod trace;
