//! Which processes a pass reads, in which order, and how much each may
//! take. Pure, so that the policy is tested on made-up nodes.
//!
//! A pass cannot read every process of a big node, nor every span of a
//! process with tens of GiB of page tables, within its budget; so:
//!
//! - only processes that are *due* are read: never estimated, changed since
//!   their estimate (their [`super::census::Fingerprint`] moved), or
//!   estimated [`REFRESH_AFTER_PASSES`] passes ago or a few more (what the
//!   counters cannot see; spread by pid, so that processes estimated
//!   together are not all due again at one pass). An idle process costs
//!   only its census;
//! - never-estimated processes come first (the node sum covers them only
//!   with loose bounds until then), then changed ones, then stale ones;
//!   within each, processes with their own series first, then the biggest
//!   page tables (the most waste can hide there);
//! - one process may take at most [`MAX_SHARE`] of the pass, so that one
//!   huge process is sampled rather than starving the rest; what is left
//!   over goes to the next in line. The ones not reached keep their last
//!   estimate (or their bounds) until a later pass.

/// Every estimate is refreshed at least this often, changed or not.
pub const REFRESH_AFTER_PASSES: u64 = 10;

/// The largest part of a pass' budget one process may use.
pub const MAX_SHARE: f64 = 0.5;

/// Why a process is read at this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Due {
    /// Never estimated (new, or never reached).
    New,
    /// Its fingerprint moved since its estimate.
    Changed,
    /// Its estimate is [`REFRESH_AFTER_PASSES`] passes old.
    Stale,
}

/// What the schedule knows about one process.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub pid: u32,
    pub tables: u64,
    pub own_series: bool,
    /// None when not due.
    pub due: Option<Due>,
}

/// Whether process `pid` is due, from its estimate's pass number (None:
/// never estimated) and whether its fingerprint still matches.
pub fn due(pid: u32, estimated_at_pass: Option<u64>, unchanged: bool, pass: u64) -> Option<Due> {
    let refresh_after = REFRESH_AFTER_PASSES + u64::from(pid) % (REFRESH_AFTER_PASSES / 2);
    match estimated_at_pass {
        None => Some(Due::New),
        Some(_) if !unchanged => Some(Due::Changed),
        Some(at) if pass.saturating_sub(at) >= refresh_after => Some(Due::Stale),
        Some(_) => None,
    }
}

/// The pids to read, in order.
pub fn order(candidates: &[Candidate]) -> Vec<u32> {
    let mut due: Vec<(Due, bool, u64, u32)> =
        candidates.iter().filter_map(|c| Some((c.due?, !c.own_series, u64::MAX - c.tables, c.pid))).collect();
    due.sort_unstable();
    due.into_iter().map(|(_, _, _, pid)| pid).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(pid: u32, tables: u64, own_series: bool, due: Option<Due>) -> Candidate {
        Candidate { pid, tables, own_series, due }
    }

    #[test]
    fn due_follows_age_and_change() {
        assert_eq!(due(10, None, true, 5), Some(Due::New));
        assert_eq!(due(10, Some(4), false, 5), Some(Due::Changed));
        assert_eq!(due(10, Some(4), true, 5), None);
        assert_eq!(due(10, Some(4), true, 4 + REFRESH_AFTER_PASSES), Some(Due::Stale));
        // Spread by pid over half as many passes again.
        assert_eq!(due(13, Some(4), true, 4 + REFRESH_AFTER_PASSES), None);
        assert_eq!(due(13, Some(4), true, 7 + REFRESH_AFTER_PASSES), Some(Due::Stale));
        let all_due_by: Vec<u64> =
            (0..100).map(|pid| (0..).find(|&p| due(pid, Some(0), true, p).is_some()).unwrap_or(0)).collect();
        assert_eq!(all_due_by.iter().min(), Some(&REFRESH_AFTER_PASSES));
        assert_eq!(all_due_by.iter().max(), Some(&(REFRESH_AFTER_PASSES * 3 / 2 - 1)));
    }

    #[test]
    fn new_then_changed_then_stale_own_series_and_big_first() {
        let order = order(&[
            candidate(1, 10, false, Some(Due::Stale)),
            candidate(2, 99_999, false, None),
            candidate(3, 5, false, Some(Due::New)),
            candidate(4, 500, false, Some(Due::New)),
            candidate(5, 1, true, Some(Due::New)),
            candidate(6, 50_000, false, Some(Due::Changed)),
            candidate(7, 20, true, Some(Due::Changed)),
        ]);
        assert_eq!(order, [5, 4, 3, 7, 6, 1], "not due: 2 is left out");
    }
}
