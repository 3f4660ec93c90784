//! Removing io_uring madvise requests whose completion was never seen
//! (the completion tracepoint missed, e.g. by recursion protection): they
//! cannot be mistaken for live requests (see `ptwatch_common::context`), but
//! they take room in a fixed-size map. Per-thread contexts of threads that
//! are gone are removed by the aggregator, which checks `/proc` anyway.

use std::time::Duration;

use ptwatch_common::IoRequest;

use super::ProbeMaps;

/// An io_uring madvise request older than this has completed unseen.
pub const STALE_REQUEST_AGE: Duration = Duration::from_secs(600);

impl ProbeMaps {
    /// Remove io_uring requests older than [`STALE_REQUEST_AGE`] and return
    /// how many. Call from the periodic harvest.
    pub fn reap_stale_io_requests(&mut self) -> u64 {
        let now = monotonic_ns();
        let stale: Vec<u64> = self
            .io_requests
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, request): &(u64, IoRequest)| {
                now.saturating_sub(request.submitted_ns) > STALE_REQUEST_AGE.as_nanos() as u64
            })
            .map(|(req, _)| req)
            .collect();
        let mut reaped = 0;
        for req in stale {
            // Absent already: it completed meanwhile.
            if self.io_requests.remove(&req).is_ok() {
                reaped += 1;
            }
        }
        if reaped > 0 {
            tracing::debug!(reaped, "removed io_uring requests whose completion was missed");
        }
        reaped
    }
}
/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}
