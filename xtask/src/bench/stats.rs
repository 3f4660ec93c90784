//! Per-program run time from the kernel's BPF statistics: a direct measure
//! of what the probes cost per event, free of the run-to-run noise of
//! wall-clock timing.
use std::{collections::BTreeMap, fs, process::Command};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::cmd;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The kernel keeps at most 15 characters of a program name
/// (BPF_OBJ_NAME_LEN - 1); some bpftool builds show the full BTF name.
const KERNEL_NAME_MAX: usize = 15;

/// One of ptwatch's DONTNEED programs (with or without the page-table walk),
/// by the names the agent loads them under.
fn is_ours(name: &str) -> bool {
    ptwatch_common::names::MADVISE_PROGRAMS
        .iter()
        .flat_map(|(_, walk, plain)| [*walk, *plain])
        .any(|full| full == name || (name.len() == KERNEL_NAME_MAX && full.starts_with(name)))
}

/// `kernel.bpf_stats_enabled=1` while this lives; the old value after.
/// Counting costs two clock reads per program run, so it is on only during
/// "with" runs.
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub fn enable() -> Result<Self> {
        let previous =
            fs::read_to_string(STATS_SYSCTL).with_context(|| format!("reading {STATS_SYSCTL}"))?.trim().to_owned();
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("setting {STATS_SYSCTL} to 1"))?;
        Ok(Self { previous })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(err) = fs::write(STATS_SYSCTL, &self.previous) {
            eprintln!("[bench] warning: could not restore {STATS_SYSCTL} to {}: {err}", self.previous);
        }
    }
}

#[derive(Debug, Deserialize)]
struct BpftoolProg {
    id: u32,
    #[serde(default)]
    name: String,
    // bpftool omits both while a program has never run with stats enabled.
    #[serde(default)]
    run_time_ns: u64,
    #[serde(default)]
    run_cnt: u64,
    #[serde(default)]
    pids: Vec<BpftoolPid>,
}

#[derive(Debug, Deserialize)]
struct BpftoolPid {
    pid: u32,
}

/// One program's counters, or their sum over several runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Counters of ptwatch's loaded programs, by program id.
pub struct Snapshot(BTreeMap<u32, (String, ProgStats)>);

/// ptwatch's loaded programs, optionally only those held by process `owner`
/// (bpftool lists the holders when it can; without that list, name decides).
pub fn snapshot(owner: Option<u32>) -> Result<Snapshot> {
    let json = cmd::stdout(Command::new("bpftool").args(["prog", "show", "--json"]))
        .context("listing eBPF programs with bpftool (`cargo xtask setup` installs it)")?;
    let progs: Vec<BpftoolProg> = serde_json::from_str(&json).context("parsing `bpftool prog show --json`")?;
    Ok(Snapshot(
        progs
            .into_iter()
            .filter(|p| is_ours(&p.name))
            .filter(|p| match owner {
                Some(pid) => p.pids.is_empty() || p.pids.iter().any(|h| h.pid == pid),
                None => true,
            })
            .map(|p| {
                let stats = ProgStats { run_time_ns: p.run_time_ns, run_cnt: p.run_cnt };
                (p.id, (p.name, stats))
            })
            .collect(),
    ))
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.0.values().map(|(name, _)| name.clone()).collect()
    }

    /// Add what each program did since `before` to `totals`, by name.
    pub fn add_delta(&self, before: &Self, totals: &mut BTreeMap<String, ProgStats>) {
        for (id, (name, now)) in &self.0 {
            let then = before.0.get(id).map(|(_, s)| s.clone()).unwrap_or_default();
            let total = totals.entry(name.clone()).or_default();
            total.run_time_ns += now.run_time_ns.saturating_sub(then.run_time_ns);
            total.run_cnt += now.run_cnt.saturating_sub(then.run_cnt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_ours;

    #[test]
    fn recognises_truncated_names() {
        assert!(is_ours("madvise_enter_walk"));
        assert!(is_ours("madvise_exit_plain"));
        assert!(is_ours("process_madvise"));
        assert!(!is_ours("process_madvis"));
        assert!(!is_ours("madvise"));
        assert!(!is_ours("tlb_flush"));
    }
}
