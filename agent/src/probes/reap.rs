//! Removing what the kernel programs leave behind only when an exit hook
//! or a completion was missed: per-thread contexts of threads that are
//! gone, and io_uring requests that never completed. Neither can be
//! mistaken for live state (see `ptwatch_common::context`), but they take
//! room in fixed-size maps.

use std::{path::Path, time::Duration};

use ptwatch_common::{IoRequest, ThreadContext};

use super::ProbeMaps;

/// An io_uring madvise request older than this has completed unseen.
pub const STALE_REQUEST_AGE: Duration = Duration::from_secs(600);

/// What one reap removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    pub thread_contexts: u64,
    pub io_requests: u64,
}

impl ProbeMaps {
    /// Remove contexts of threads that no longer exist and io_uring requests
    /// older than [`STALE_REQUEST_AGE`]. Call from the periodic harvest.
    pub fn reap_stale(&mut self) -> Reaped {
        let mut reaped = Reaped::default();
        let dead: Vec<u32> = self
            .threads
            .iter()
            .filter_map(Result::ok)
            .filter(|(tid, context): &(u32, ThreadContext)| !thread_exists(context.tgid, *tid))
            .map(|(tid, _)| tid)
            .collect();
        for tid in dead {
            // Absent already: its thread finished the call meanwhile.
            if self.threads.remove(&tid).is_ok() {
                reaped.thread_contexts += 1;
            }
        }
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
        for req in stale {
            if self.io_requests.remove(&req).is_ok() {
                reaped.io_requests += 1;
            }
        }
        if reaped != Reaped::default() {
            tracing::debug!(?reaped, "removed entries left by missed exit hooks");
        }
        reaped
    }
}

fn thread_exists(tgid: u32, tid: u32) -> bool {
    Path::new(&format!("/proc/{tgid}/task/{tid}")).exists()
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}
