//! What the host says about processes and cgroups at harvest time: cgroup
//! paths, and page-table memory in use now (`VmPTE`, `memory.stat`,
//! `/proc/meminfo`). Behind a trait so that the aggregation logic is
//! unit-tested with a script.

use std::{fs, time::Instant};

use super::cgroup::{memory_stat_field, v2_path_from_proc, CgroupTree};
use crate::kernel::procfs;

pub trait Host {
    /// Path of cgroup v2 `id`, relative to the v2 mount.
    fn cgroup_path(&mut self, id: u64, now: Instant) -> Option<String>;
    /// cgroup v2 path of a live process.
    fn cgroup_of_pid(&self, pid: u32) -> Option<String>;
    fn cgroup_exists(&self, path: &str) -> bool;
    /// `pagetables` of the cgroup's `memory.stat` (v2 with the memory
    /// controller only), bytes.
    fn cgroup_pagetable_bytes(&self, path: &str) -> Option<u64>;
    /// `VmPTE` of a live process, bytes.
    fn process_pagetable_bytes(&self, pid: u32) -> Option<u64>;
    /// `PageTables` of `/proc/meminfo`, bytes.
    fn node_pagetable_bytes(&self) -> Option<u64>;
}

/// The real host: `/proc` and the cgroup v2 tree.
pub struct SystemHost {
    /// None without a v2 tree (pure v1 hosts): then no cgroup labels.
    tree: Option<CgroupTree>,
}

impl SystemHost {
    pub fn detect() -> Self {
        let tree = match CgroupTree::detect() {
            Ok(tree) => Some(tree),
            Err(err) => {
                tracing::warn!(error = %crate::error_chain::ErrorChain(&err), "no cgroup v2 tree: processes get no cgroup, container or pod labels");
                None
            }
        };
        Self { tree }
    }
}

impl Host for SystemHost {
    fn cgroup_path(&mut self, id: u64, now: Instant) -> Option<String> {
        self.tree.as_mut()?.path_of(id, now)
    }

    fn cgroup_of_pid(&self, pid: u32) -> Option<String> {
        self.tree.as_ref()?;
        v2_path_from_proc(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
    }

    fn cgroup_exists(&self, path: &str) -> bool {
        self.tree.as_ref().is_some_and(|tree| tree.dir(path).is_dir())
    }

    fn cgroup_pagetable_bytes(&self, path: &str) -> Option<u64> {
        let stat = fs::read_to_string(self.tree.as_ref()?.dir(path).join("memory.stat")).ok()?;
        memory_stat_field(&stat, "pagetables")
    }

    fn process_pagetable_bytes(&self, pid: u32) -> Option<u64> {
        // Kernel threads have no VmPTE line: no value.
        procfs::status_kib(pid, "VmPTE").ok().flatten().map(|kib| kib * 1024)
    }

    fn node_pagetable_bytes(&self) -> Option<u64> {
        meminfo_kib(&fs::read_to_string("/proc/meminfo").ok()?, "PageTables").map(|kib| kib * 1024)
    }
}

/// A `kB` field of `/proc/meminfo`.
pub fn meminfo_kib(meminfo: &str, field: &str) -> Option<u64> {
    procfs::kib_field(meminfo, field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_page_tables() {
        let meminfo = "MemTotal:        8135548 kB\nPageTables:        11240 kB\nSecPageTables:         0 kB\n";
        assert_eq!(meminfo_kib(meminfo, "PageTables"), Some(11240));
        assert_eq!(meminfo_kib(meminfo, "SecPageTables"), Some(0));
        assert_eq!(meminfo_kib(meminfo, "Page"), None);
    }

    #[test]
    fn the_real_host_reports_page_table_memory() {
        let host = SystemHost::detect();
        assert!(host.node_pagetable_bytes().is_some_and(|b| b > 0));
        assert!(host.process_pagetable_bytes(std::process::id()).is_some_and(|b| b > 0));
        let own = host.cgroup_of_pid(std::process::id()).expect("own cgroup");
        assert!(host.cgroup_exists(&own), "{own}");
    }
}
