//! What the listener allows one client and all of them together: timeouts
//! for each phase of a connection, a cap on connections, on request header
//! bytes and on `/metrics` responses in flight. The defaults bound the
//! agent's memory and descriptors whatever clients do (docs/http.md), while
//! staying far from anything an honest scraper needs.
//!
//! The connection cap must also fit the process' open-file limit: the agent
//! needs descriptors for its eBPF objects and for the `/proc` and cgroup
//! files a harvest reads, and Prometheus must still get a connection. At
//! bind time the soft `RLIMIT_NOFILE` is raised to the hard one (as the Go
//! runtime does for every Go exporter) and the cap is clamped below it.

use std::{io, time::Duration};

/// The resolved limits (flags, `PTWATCH_HTTP_*`, `[http]`, defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once, TLS handshakes included.
    pub max_connections: u32,
    /// From accept (or from the first byte of a next request on a kept-alive
    /// connection) to the end of the request headers; also the TLS handshake.
    pub header_timeout: Duration,
    /// A kept-alive connection with no request in progress.
    pub idle_timeout: Duration,
    /// From the end of the request headers to the last byte of the response.
    pub write_timeout: Duration,
    /// Request line plus headers.
    pub max_header_bytes: u32,
    /// `/metrics` requests between their headers and their last byte sent.
    pub max_concurrent_scrapes: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            // Prometheus (an HA pair), a few people, kubelet probes: tens at
            // most. About 24 KiB each when slow or idle (docs/http.md), so
            // the cap costs at most ~12 MiB; at the cap, idle and unfinished
            // connections make room for new ones.
            max_connections: 512,
            // Prometheus sends its request as soon as it connects; 10 s
            // allows a congested link. Slowloris clients are closed then.
            header_timeout: Duration::from_secs(10),
            // Longer than Prometheus' default 1-minute scrape interval, so
            // its kept-alive connection is reused from scrape to scrape.
            idle_timeout: Duration::from_secs(90),
            // Prometheus gives up after its scrape timeout (10 s by default,
            // at most the interval); a response still unsent after this is
            // a client that does not read.
            write_timeout: Duration::from_secs(30),
            // A Prometheus request is ~300 bytes, ~2 KiB with a service
            // account token; hyper's own read buffer starts at 8 KiB.
            max_header_bytes: 8192,
            // Scrapes beyond this wait (for their slot, not for a render:
            // concurrent scrapes share renders, see `render`); each one in
            // flight may hold one response body (~850 KiB at 10,000 series).
            max_concurrent_scrapes: 8,
        }
    }
}

/// Bounds of `max_header_bytes`: a request with a long bearer token must
/// fit; more than hyper's default buffer serves no scraper.
pub const HEADER_BYTES_RANGE: std::ops::RangeInclusive<u32> = 1024..=1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error(
        "max_header_bytes {0} is out of range: between {min} and {max}",
        min = HEADER_BYTES_RANGE.start(),
        max = HEADER_BYTES_RANGE.end()
    )]
    HeaderBytes(u32),
}

impl HttpLimits {
    /// What the command-line parser cannot check for the config file.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_connections == 0 {
            return Err(LimitsError::Zero { what: "max_connections (--http-max-connections, [http])" });
        }
        if self.max_concurrent_scrapes == 0 {
            return Err(LimitsError::Zero { what: "max_concurrent_scrapes (--http-max-concurrent-scrapes, [http])" });
        }
        if !HEADER_BYTES_RANGE.contains(&self.max_header_bytes) {
            return Err(LimitsError::HeaderBytes(self.max_header_bytes));
        }
        Ok(())
    }
}

/// Descriptors kept for everything but client connections. Measured on the
/// running agent (tracepoint mode, `process_open_fds` with no client): 34
/// (eBPF programs, links and maps, the runtime's epoll and eventfds, stdio);
/// a harvest opens one or two `/proc` or cgroup files at a time. The rest is
/// headroom for the fentry and kprobe plans and for the connections
/// admitted while evicted ones close (`listener::EVICTION_SLACK`, 32).
pub const RESERVED_FDS: u64 = 256;

/// The open-file limit as found and as left at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before it was raised, when it was.
    pub raised_from: Option<u64>,
}

impl FdLimit {
    /// Raise the soft `RLIMIT_NOFILE` to the hard one (no privilege needed).
    /// The agent never calls `select(2)`, the one reason to stay below 1024.
    pub fn raise() -> io::Result<Self> {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
        if soft >= hard {
            return Ok(Self { soft, hard, raised_from: None });
        }
        let raised = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            // E.g. a hard limit of RLIM_INFINITY above fs.nr_open: keep the
            // soft one, the cap is clamped below it.
            tracing::debug!(error = %io::Error::last_os_error(), soft, hard, "cannot raise RLIMIT_NOFILE");
            return Ok(Self { soft, hard, raised_from: None });
        }
        Ok(Self { soft: hard, hard, raised_from: Some(soft) })
    }

    /// The most connections that leave [`RESERVED_FDS`] descriptors free
    /// (at least one, so that the agent can still be scraped).
    pub fn connection_cap(&self, configured: u32) -> u32 {
        let available = self.soft.saturating_sub(RESERVED_FDS).max(1);
        u32::try_from(available).map_or(configured, |available| configured.min(available))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(HttpLimits::default().validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_refused() {
        let zero = HttpLimits { max_connections: 0, ..HttpLimits::default() };
        assert!(matches!(zero.validate(), Err(LimitsError::Zero { .. })));
        let zero = HttpLimits { max_concurrent_scrapes: 0, ..HttpLimits::default() };
        assert!(matches!(zero.validate(), Err(LimitsError::Zero { .. })));
        for bytes in [0, 1023, (1 << 20) + 1] {
            let limits = HttpLimits { max_header_bytes: bytes, ..HttpLimits::default() };
            assert_eq!(limits.validate(), Err(LimitsError::HeaderBytes(bytes)));
        }
        let message = LimitsError::HeaderBytes(7).to_string();
        assert!(message.contains("between 1024 and 1048576"), "{message}");
    }

    #[test]
    fn cap_leaves_reserved_descriptors() {
        let limit = |soft| FdLimit { soft, hard: soft, raised_from: None };
        assert_eq!(limit(1_048_576).connection_cap(512), 512);
        assert_eq!(limit(1024).connection_cap(512), 512);
        assert_eq!(limit(1024).connection_cap(1000), 1024 - 256);
        assert_eq!(limit(300).connection_cap(512), 44);
        assert_eq!(limit(100).connection_cap(512), 1);
        assert_eq!(limit(u64::MAX).connection_cap(u32::MAX), u32::MAX);
    }

    /// The real limit of this test process: raising is idempotent and never
    /// lowers anything.
    #[test]
    fn raising_reaches_the_hard_limit() {
        let first = FdLimit::raise().expect("getrlimit");
        let second = FdLimit::raise().expect("getrlimit");
        assert_eq!(second.soft, first.soft);
        assert_eq!(second.raised_from, None);
        assert!(first.soft <= first.hard);
    }
}
