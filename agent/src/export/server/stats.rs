//! The listener's own metrics (`ptwatch_http_*`, docs/metrics.md) and its
//! logging of abuse: every connection the agent closes on its own is
//! counted by reason, and summarised in at most one log line a minute, so a
//! client that opens thousands of connections cannot flood the log.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::{Duration, Instant},
};

use crate::export::{
    exposition::{Exposition, Section},
    families as f,
};

/// Why the agent closed a connection (or never served it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Refused at the cap: every connection was busy with a request.
    Limit,
    /// Closed at the cap to make room for a new one: the oldest that was
    /// idle, still sending its headers or in its TLS handshake.
    Evicted,
    HandshakeTimeout,
    HandshakeFailed,
    HeaderTimeout,
    /// Answered 431.
    HeaderTooLarge,
    /// Answered 400 (not HTTP/1.x).
    BadRequest,
    IdleTimeout,
    WriteTimeout,
}

impl DropReason {
    pub const ALL: [Self; 9] = [
        Self::Limit,
        Self::Evicted,
        Self::HandshakeTimeout,
        Self::HandshakeFailed,
        Self::HeaderTimeout,
        Self::HeaderTooLarge,
        Self::BadRequest,
        Self::IdleTimeout,
        Self::WriteTimeout,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::Evicted => "evicted",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HandshakeFailed => "handshake_failed",
            Self::HeaderTimeout => "header_timeout",
            Self::HeaderTooLarge => "header_too_large",
            Self::BadRequest => "bad_request",
            Self::IdleTimeout => "idle_timeout",
            Self::WriteTimeout => "write_timeout",
        }
    }

    /// Closing a kept-alive connection nobody uses is housekeeping, not
    /// something to tell the operator about.
    fn is_routine(self) -> bool {
        self == Self::IdleTimeout
    }

    /// Closed with a reset rather than a FIN: nothing useful is left to send,
    /// and the agent's side skips `TIME_WAIT` (a flood leaves no trail).
    pub fn resets(self) -> bool {
        !self.is_routine()
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// How often abuse may be logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct HttpStats {
    open: AtomicU64,
    max: AtomicU64,
    accepted: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    accept_errors: AtomicU64,
    metrics_requests: AtomicU64,
    drops_log: Mutex<Throttle<[u64; DropReason::ALL.len()]>>,
    accept_errors_log: Mutex<Throttle<u64>>,
}

/// Counts gathered since the last log line, and when that was.
#[derive(Default)]
struct Throttle<T> {
    last: Option<Instant>,
    pending: T,
}

impl<T: Default> Throttle<T> {
    /// Add with `add`; when a line is due, return what was gathered.
    fn note(&mut self, add: impl FnOnce(&mut T)) -> Option<T> {
        add(&mut self.pending);
        let due = self.last.is_none_or(|last| last.elapsed() >= LOG_EVERY);
        if !due {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.pending))
    }
}

impl Section for HttpStats {
    fn write(&self, out: &mut Exposition) {
        out.family(&f::HTTP_METRICS_REQUESTS).sample("", "", self.metrics_requests.load(Relaxed));
        out.family(&f::HTTP_CONNECTIONS_OPEN).sample("", "", self.open.load(Relaxed));
        out.family(&f::HTTP_MAX_CONNECTIONS).sample("", "", self.max.load(Relaxed));
        out.family(&f::HTTP_CONNECTIONS_ACCEPTED).sample("", "", self.accepted.load(Relaxed));
        // Every reason from the start: a rate over a series that appears
        // with its first increment misses that increment.
        let mut dropped = out.family(&f::HTTP_CONNECTIONS_DROPPED);
        for (reason, count) in DropReason::ALL.iter().zip(&self.dropped) {
            dropped.values(&[reason.label()], count.load(Relaxed));
        }
        out.family(&f::HTTP_ACCEPT_ERRORS).sample("", "", self.accept_errors.load(Relaxed));
    }
}

impl HttpStats {
    pub fn set_max_connections(&self, max: u32) {
        self.max.store(u64::from(max), Relaxed);
    }

    pub fn opened(&self) {
        self.accepted.fetch_add(1, Relaxed);
        self.open.fetch_add(1, Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Relaxed);
    }

    pub fn metrics_request(&self) {
        self.metrics_requests.fetch_add(1, Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason.index()].fetch_add(1, Relaxed);
        if reason.is_routine() {
            return;
        }
        let due = lock(&self.drops_log).note(|pending| pending[reason.index()] += 1);
        if let Some(counts) = due {
            let summary: Vec<String> = DropReason::ALL
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(reason, n)| format!("{}={n}", reason.label()))
                .collect();
            tracing::warn!(
                by_reason = %summary.join(" "),
                "HTTP clients misbehaving or too many connections: closed connections since the last such line (at most one a minute; ptwatch_http_connections_dropped_total counts them all)"
            );
        }
    }

    pub fn accept_error(&self, error: &std::io::Error) {
        self.accept_errors.fetch_add(1, Relaxed);
        if let Some(count) = lock(&self.accept_errors_log).note(|pending| *pending += 1) {
            tracing::warn!(%error, count, "accepting connections failed; backing off (at most one such line a minute)");
        }
    }

    /// For tests: the count of one reason.
    #[cfg(test)]
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_exported_from_the_start() {
        let stats = HttpStats::default();
        stats.dropped(DropReason::Evicted);
        let mut out = Exposition::new(crate::export::exposition::Format::Text, 0);
        stats.write(&mut out);
        let text = out.finish();
        let dropped = text.lines().filter(|l| l.starts_with("ptwatch_http_connections_dropped_total{")).count();
        assert_eq!(dropped, DropReason::ALL.len(), "{text}");
        assert!(text.contains("ptwatch_http_connections_dropped_total{reason=\"evicted\"} 1\n"), "{text}");
        assert_eq!(stats.dropped_count(DropReason::Evicted), 1);
        assert_eq!(stats.dropped_count(DropReason::Limit), 0);
        let labels: std::collections::HashSet<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), DropReason::ALL.len(), "labels are distinct");
    }

    #[test]
    fn throttle_logs_the_first_then_at_most_once_a_minute() {
        let mut throttle = Throttle::<u64>::default();
        assert_eq!(throttle.note(|n| *n += 1), Some(1));
        for _ in 0..1000 {
            assert_eq!(throttle.note(|n| *n += 1), None);
        }
        throttle.last = Instant::now().checked_sub(LOG_EVERY);
        assert_eq!(throttle.note(|n| *n += 1), Some(1001), "the next line carries everything since the last");
    }
}
