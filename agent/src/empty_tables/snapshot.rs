//! What one pass hands to the exporter: the empty page tables of every
//! process (those with their own series are printed one by one, the others
//! in `other`), their sums per cgroup and for the node, and what the pass
//! itself cost. Plain data: the exporter needs nothing else.

use std::{collections::BTreeMap, time::Duration};

use crate::scan::{estimate::Bounds, Method};

/// One process' empty tables.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessEmpty {
    pub pid: u32,
    /// Start time after boot, clock ticks: with the pid, the process'
    /// identity.
    pub start_time: u64,
    pub comm: String,
    /// cgroup v2 path (the agent's own for tracked processes, else from
    /// `/proc/PID/cgroup` when first seen); None without one.
    pub cgroup: Option<String>,
    /// The agent gives this process its own series.
    pub own_series: bool,
    pub method: Method,
    /// Page-table pages (`VmPTE` / page size) now.
    pub tables: u64,
    /// Empty tables: estimate and the range the truth lies in.
    pub empty: Bounds,
    /// Passes since the estimate was made (0: at this pass); None for
    /// [`Method::Bounded`].
    pub passes_old: Option<u64>,
}

/// Sums over the processes of one cgroup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sum {
    pub processes: u64,
    pub tables: u64,
    pub empty: Bounds,
    /// Processes whose estimate used each method ([`Method::ALL`] order).
    pub by_method: [u64; 3],
}

impl Sum {
    pub fn add(&mut self, p: &ProcessEmpty) {
        self.processes += 1;
        self.tables += p.tables;
        self.empty = self.empty + p.empty;
        self.by_method[method_index(p.method)] += 1;
    }

    /// The least precise method among the processes summed.
    pub fn weakest_method(&self) -> Method {
        Method::ALL
            .into_iter()
            .zip(self.by_method)
            .filter(|(_, n)| *n > 0)
            .map(|(m, _)| m)
            .max()
            .unwrap_or(Method::Exact)
    }
}

fn method_index(method: Method) -> usize {
    Method::ALL.iter().position(|&m| m == method).unwrap_or(0)
}

/// What the pass did and cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    /// Passes so far, this one included.
    pub passes: u64,
    /// CPU time of this pass (census and estimates) and its budget.
    pub cpu: Duration,
    pub budget: Duration,
    /// Processes listed, and those estimated at this pass by each method.
    pub listed: u64,
    pub estimated_exact: u64,
    pub estimated_sampled: u64,
    /// Processes due that the budget did not reach.
    pub deferred: u64,
    /// Processes whose `smaps` or `pagemap` the agent may not read (another
    /// user's, or with capabilities the agent lacks, without
    /// `CAP_SYS_PTRACE`): they stay `bounded`.
    pub denied: u64,
}

/// Everything the exporter prints about empty page tables.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub page_size: u64,
    /// Every process with an address space, in pid order.
    pub processes: Vec<ProcessEmpty>,
    /// Processes without their own series, summed (`pid="other"`).
    pub other: Sum,
    /// By cgroup path; processes without a cgroup are in none.
    pub cgroups: BTreeMap<String, Sum>,
    /// Every process of the node.
    pub node: Sum,
    pub pass: PassReport,
    /// CPU time of every pass since the agent started.
    pub cpu_total: Duration,
}

impl Snapshot {
    pub fn new(page_size: u64, processes: Vec<ProcessEmpty>, pass: PassReport, cpu_total: Duration) -> Self {
        let mut snapshot = Self { page_size, pass, cpu_total, ..Self::default() };
        for p in &processes {
            snapshot.node.add(p);
            if !p.own_series {
                snapshot.other.add(p);
            }
            if let Some(path) = &p.cgroup {
                snapshot.cgroups.entry(path.clone()).or_default().add(p);
            }
        }
        snapshot.processes = processes;
        snapshot
    }

    /// The process `pid` started at `start_time` (any start time if None).
    pub fn process(&self, pid: u32, start_time: Option<u64>) -> Option<&ProcessEmpty> {
        let i = self.processes.binary_search_by_key(&pid, |p| p.pid).ok()?;
        let p = &self.processes[i];
        start_time.is_none_or(|t| t == p.start_time).then_some(p)
    }

    pub fn bytes(&self, tables: u64) -> u64 {
        tables.saturating_mul(self.page_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, cgroup: Option<&str>, own: bool, method: Method, empty: Bounds) -> ProcessEmpty {
        ProcessEmpty {
            pid,
            start_time: u64::from(pid) * 100,
            comm: format!("p{pid}"),
            cgroup: cgroup.map(str::to_owned),
            own_series: own,
            method,
            tables: 100,
            empty,
            passes_old: Some(0),
        }
    }

    #[test]
    fn sums_cover_every_process() {
        let snapshot = Snapshot::new(
            4096,
            vec![
                process(1, Some("/a"), true, Method::Exact, Bounds::exact(10)),
                process(2, Some("/a"), false, Method::Sampled, Bounds::new(5, 20, 30)),
                process(3, None, false, Method::Bounded, Bounds::new(0, 40, 80)),
            ],
            PassReport::default(),
            Duration::ZERO,
        );
        assert_eq!(snapshot.node.empty, Bounds::new(15, 70, 120));
        assert_eq!(snapshot.node.processes, 3);
        assert_eq!(snapshot.node.by_method, [1, 1, 1]);
        assert_eq!(snapshot.node.weakest_method(), Method::Bounded);
        assert_eq!(snapshot.other.empty, Bounds::new(5, 60, 110), "2 and 3 have no series of their own");
        assert_eq!(snapshot.cgroups["/a"].empty, Bounds::new(15, 30, 40));
        assert_eq!(snapshot.cgroups["/a"].weakest_method(), Method::Sampled);
        assert_eq!(snapshot.cgroups.len(), 1);
        assert_eq!(snapshot.process(2, Some(200)).map(|p| p.pid), Some(2));
        assert!(snapshot.process(2, Some(201)).is_none(), "another process on the same pid");
        assert!(snapshot.process(4, None).is_none());
        assert_eq!(snapshot.bytes(3), 12288);
        assert_eq!(Sum::default().weakest_method(), Method::Exact);
    }
}
