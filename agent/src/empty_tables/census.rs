//! The cheap read of every process at every pass: `/proc/PID/stat` and
//! `status` (about 20 µs per process). It lists what the node sum must
//! cover, tells the processes apart across pid reuse (start time), shows
//! which ones changed since they were last estimated ([`Fingerprint`]), and
//! bounds those the budget does not reach.

use std::fs;

use crate::scan::procstat::{Stat, Status};

/// A process with an address space, as seen at this pass.
#[derive(Clone, Debug)]
pub struct Seen {
    pub pid: u32,
    pub stat: Stat,
    pub status: Status,
}

impl Seen {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            faults: self.stat.faults,
            pagetable_bytes: self.status.pagetable_bytes.unwrap_or(0),
            rss_bytes: self.status.rss_bytes,
            swap_bytes: self.status.swap_bytes,
        }
    }
}

/// What changes when the estimate of a process may have changed: a page
/// mapped (faults), unmapped, swapped out or in (resident and swapped
/// memory), a page table allocated or freed (`VmPTE`). Equal fingerprints
/// leave only moves the counters cannot see (e.g. one page freed and
/// another faulted in a different span, which counts a fault): the agent
/// re-reads such processes anyway after a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub faults: u64,
    pub pagetable_bytes: u64,
    pub rss_bytes: u64,
    pub swap_bytes: u64,
}

/// Every process with an address space now (kernel threads, zombies and
/// processes that exit meanwhile are left out), in pid order.
pub fn census() -> std::io::Result<Vec<Seen>> {
    let mut pids: Vec<u32> =
        fs::read_dir("/proc")?.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    Ok(pids
        .into_iter()
        .filter_map(|pid| {
            let stat = Stat::read(pid).ok()?;
            let status = Status::read(pid).ok()?;
            status.pagetable_bytes?;
            Some(Seen { pid, stat, status })
        })
        .collect())
}

/// The cgroup v2 path of a live process, relative to the v2 mount; None
/// without a v2 hierarchy or once the process is gone.
pub fn cgroup_of(pid: u32) -> Option<String> {
    crate::aggregate::cgroup::v2_path_from_proc(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_census_sees_this_process_and_no_kernel_thread() {
        let seen = census().expect("census");
        let own = seen.iter().find(|s| s.pid == std::process::id()).expect("own process listed");
        assert!(own.status.pagetable_bytes.is_some_and(|b| b > 0));
        assert!(own.fingerprint().faults > 0);
        assert!(seen.windows(2).all(|w| w[0].pid < w[1].pid));
        // kthreadd (pid 2, when the host's pids are visible) has no mm.
        if fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            assert!(!seen.iter().any(|s| s.pid == 2));
        }
        assert!(cgroup_of(std::process::id()).is_some_and(|path| path.starts_with('/')));
    }
}
