//! What one refresh of `ptwatch top` shows: page-table memory now (from
//! `/proc` and `memory.stat`) and reclaim/DONTNEED rates over the last
//! interval (deltas of the kernel counters of top's own probes).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    time::Instant,
};

use ptwatch_common::ProcessCounters;

use crate::{
    aggregate::{
        cgroup::{memory_stat_field, v2_path_from_proc, CgroupTree},
        host::meminfo_kib,
        CounterSource,
    },
    cli::TopSort,
    kernel::procfs,
    probes::{ProbeError, ProbeMaps},
};

/// One row: a process or a cgroup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// pid, or number of processes for a cgroup.
    pub pid: Option<u32>,
    pub processes: u64,
    /// comm, or the cgroup path.
    pub name: String,
    /// VmPTE (process) or memory.stat `pagetables` (cgroup), bytes.
    pub pagetable_bytes: Option<u64>,
    /// Sum of the VmPTE of a cgroup's processes, bytes.
    pub processes_pagetable_bytes: u64,
    pub reclaim_pages_per_s: f64,
    pub dontneed_calls_per_s: f64,
    pub dontneed_bytes_per_s: f64,
}

impl Row {
    fn sort_key(&self, sort: TopSort) -> f64 {
        match sort {
            TopSort::Pagetable => self.pagetable_bytes.unwrap_or(self.processes_pagetable_bytes) as f64,
            TopSort::Reclaim => self.reclaim_pages_per_s,
            TopSort::Dontneed => self.dontneed_bytes_per_s,
        }
    }
}

/// A refresh: every process with an address space, or every cgroup.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub processes: Vec<Row>,
    /// `PageTables` of /proc/meminfo, bytes.
    pub node_pagetable_bytes: Option<u64>,
    /// Seconds the rates are over.
    pub seconds: f64,
}

/// Sorted, largest first; ties by pid/name for a stable screen.
pub fn sorted(mut rows: Vec<Row>, sort: TopSort) -> Vec<Row> {
    rows.sort_by(|a, b| {
        b.sort_key(sort).total_cmp(&a.sort_key(sort)).then_with(|| a.pid.cmp(&b.pid)).then_with(|| a.name.cmp(&b.name))
    });
    rows
}

/// A live process from /proc.
struct ProcProcess {
    comm: String,
    vmpte_bytes: u64,
}

/// Reads the kernel counters and /proc, and turns counter deltas into rates.
pub struct Sampler {
    maps: ProbeMaps,
    previous: HashMap<u32, ProcessCounters>,
    previous_at: Instant,
    tree: Option<CgroupTree>,
}

impl Sampler {
    /// `started`: when the probes were attached (the counters start at 0).
    pub fn new(maps: ProbeMaps, started: Instant) -> Self {
        let tree = CgroupTree::detect()
            .map_err(|err| tracing::warn!(error = %crate::error_chain::ErrorChain(&err), "no cgroup v2 tree: the cgroup view will be empty"))
            .ok();
        Self { maps, previous: HashMap::new(), previous_at: started, tree }
    }

    /// Processes, with rates since the previous call.
    pub fn sample(&mut self) -> Result<Sample, ProbeError> {
        let now = Instant::now();
        let seconds = now.duration_since(self.previous_at).as_secs_f64().max(1e-3);
        let counters: HashMap<u32, ProcessCounters> = self.maps.processes()?.into_iter().collect();
        let live = proc_processes();
        let mut rows = Vec::new();
        let rate = |pid: u32, field: fn(&ProcessCounters) -> u64| -> f64 {
            let now = counters.get(&pid).map_or(0, field);
            let before = self.previous.get(&pid).map_or(0, field);
            now.saturating_sub(before) as f64 / seconds
        };
        for (pid, process) in &live {
            rows.push(Row {
                pid: Some(*pid),
                processes: 1,
                name: process.comm.clone(),
                pagetable_bytes: Some(process.vmpte_bytes),
                processes_pagetable_bytes: process.vmpte_bytes,
                reclaim_pages_per_s: rate(*pid, |c| c.pte_pages_reclaimed),
                dontneed_calls_per_s: rate(*pid, |c| c.dontneed_calls),
                dontneed_bytes_per_s: rate(*pid, |c| c.dontneed_bytes),
            });
        }
        // Processes that exited since the last refresh still had their
        // share of the rates.
        let mut gone = HashSet::new();
        for (pid, c) in &counters {
            if live.contains_key(pid) {
                continue;
            }
            gone.insert(*pid);
            let row = Row {
                pid: Some(*pid),
                processes: 1,
                name: procfs::comm_to_string(&c.comm),
                pagetable_bytes: None,
                processes_pagetable_bytes: 0,
                reclaim_pages_per_s: rate(*pid, |c| c.pte_pages_reclaimed),
                dontneed_calls_per_s: rate(*pid, |c| c.dontneed_calls),
                dontneed_bytes_per_s: rate(*pid, |c| c.dontneed_bytes),
            };
            if row.reclaim_pages_per_s > 0.0 || row.dontneed_calls_per_s > 0.0 {
                rows.push(row);
            }
        }
        // Their kernel entries go: a recycled pid starts from zero.
        self.maps.forget(&gone, &[]);
        self.previous = counters.into_iter().filter(|(pid, _)| !gone.contains(pid)).collect();
        self.previous_at = now;
        Ok(Sample {
            processes: rows,
            node_pagetable_bytes: fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| meminfo_kib(&m, "PageTables"))
                .map(|kib| kib * 1024),
            seconds,
        })
    }

    /// The process rows grouped by cgroup v2 path, with each cgroup's
    /// `memory.stat` `pagetables`.
    pub fn cgroups(&mut self, processes: &[Row]) -> Vec<Row> {
        let mut by_path: BTreeMap<String, Row> = BTreeMap::new();
        for process in processes {
            let Some(pid) = process.pid else { continue };
            let Some(path) = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().and_then(|t| v2_path_from_proc(&t))
            else {
                continue;
            };
            let row = by_path.entry(path.clone()).or_insert_with(|| Row { name: path, ..Row::default() });
            row.processes += 1;
            row.processes_pagetable_bytes += process.processes_pagetable_bytes;
            row.reclaim_pages_per_s += process.reclaim_pages_per_s;
            row.dontneed_calls_per_s += process.dontneed_calls_per_s;
            row.dontneed_bytes_per_s += process.dontneed_bytes_per_s;
        }
        if let Some(tree) = &self.tree {
            for row in by_path.values_mut() {
                row.pagetable_bytes = fs::read_to_string(tree.dir(&row.name).join("memory.stat"))
                    .ok()
                    .and_then(|stat| memory_stat_field(&stat, "pagetables"));
            }
        }
        by_path.into_values().collect()
    }
}

/// Every process with an address space (kernel threads have no VmPTE).
fn proc_processes() -> BTreeMap<u32, ProcProcess> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        // Gone meanwhile, or not readable: skipped.
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let vmpte_kib = procfs::kib_field(&status, "VmPTE")?;
        let comm = status.lines().find_map(|l| l.strip_prefix("Name:")).map(|n| n.trim().to_owned())?;
        Some((pid, ProcProcess { comm, vmpte_bytes: vmpte_kib * 1024 }))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: u32, pt: u64, reclaim: f64, dontneed: f64) -> Row {
        Row {
            pid: Some(pid),
            processes: 1,
            name: format!("p{pid}"),
            pagetable_bytes: Some(pt),
            processes_pagetable_bytes: pt,
            reclaim_pages_per_s: reclaim,
            dontneed_calls_per_s: 1.0,
            dontneed_bytes_per_s: dontneed,
        }
    }

    #[test]
    fn sorts_by_each_key() {
        let rows = vec![row(1, 10, 0.0, 5.0), row(2, 30, 1.0, 0.0), row(3, 20, 2.0, 9.0)];
        let pids = |sort| sorted(rows.clone(), sort).iter().map(|r| r.pid.unwrap_or(0)).collect::<Vec<_>>();
        assert_eq!(pids(TopSort::Pagetable), [2, 3, 1]);
        assert_eq!(pids(TopSort::Reclaim), [3, 2, 1]);
        assert_eq!(pids(TopSort::Dontneed), [3, 1, 2]);
    }

    #[test]
    fn sees_this_process() {
        let live = proc_processes();
        let me = live.get(&std::process::id()).expect("own pid in /proc");
        assert!(me.vmpte_bytes > 0);
    }
}
