//! What the kernel knows about eBPF programs: each program's run count and
//! run time (`kernel.bpf_stats_enabled`), a direct measure of what the
//! probes cost per event, free of the run-to-run noise of wall-clock timing;
//! and which tracing programs other processes have attached, which would
//! disturb a comparison run on a shared machine.
//!
//! An agent's programs are found through its own file descriptors
//! (`/proc/<pid>/fd` → `anon_inode:bpf-prog`, whose `fdinfo` carries
//! `prog_id`, `run_time_ns` and `run_cnt`), so every program it holds is
//! counted, whatever its name or plan, and an older agent built from another
//! commit is measured the same way. `bpftool` only supplies the names.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::cmd;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Whether `kernel.bpf_stats_enabled` is on now (someone else may have set
/// it: it then adds its cost to the timed runs).
pub fn stats_enabled() -> Result<bool> {
    let value = fs::read_to_string(STATS_SYSCTL).with_context(|| format!("reading {STATS_SYSCTL}"))?;
    Ok(value.trim() != "0")
}

/// `kernel.bpf_stats_enabled=1` while this lives; the old value after.
/// Counting costs two clock reads per program run (~20 ns), so it is on only
/// during the untimed statistics runs.
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

/// One program's counters, or their sum over several runs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
    /// Runs the kernel skipped because another program was running on the
    /// CPU (their events were not counted).
    pub recursion_misses: u64,
}

impl ProgStats {
    /// `self` times `factor`, rounded (an estimate over a longer or shorter
    /// window).
    pub fn scaled(self, factor: f64) -> Self {
        // Rounding to whole runs and ns is all the precision there is.
        let scale = |v: u64| (v as f64 * factor).round() as u64;
        Self {
            run_time_ns: scale(self.run_time_ns),
            run_cnt: scale(self.run_cnt),
            recursion_misses: scale(self.recursion_misses),
        }
    }

    pub fn minus(self, before: Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(before.run_cnt),
            recursion_misses: self.recursion_misses.saturating_sub(before.recursion_misses),
        }
    }

    pub fn add(&mut self, other: Self) {
        self.run_time_ns += other.run_time_ns;
        self.run_cnt += other.run_cnt;
        self.recursion_misses += other.recursion_misses;
    }
}

/// A `key:\tvalue` field of an fdinfo file.
fn fdinfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
}

/// The counters of the program behind file descriptor `fd` of `pid`.
pub fn fd_stats(pid: u32, fd: &str) -> Result<ProgStats> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let info = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(ProgStats {
        run_time_ns: fdinfo_field(&info, "run_time_ns").unwrap_or(0),
        run_cnt: fdinfo_field(&info, "run_cnt").unwrap_or(0),
        recursion_misses: fdinfo_field(&info, "recursion_misses").unwrap_or(0),
    })
}

/// `(fd, prog_id)` of every eBPF program file descriptor `pid` holds.
fn program_fds(pid: u32) -> Result<Vec<(String, u32)>> {
    let dir = format!("/proc/{pid}/fd");
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry.with_context(|| format!("listing {dir}"))?;
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        if target != Path::new("anon_inode:bpf-prog") {
            continue;
        }
        let fd = entry.file_name().to_string_lossy().into_owned();
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { continue };
        if let Some(id) = fdinfo_field(&info, "prog_id").and_then(|id| u32::try_from(id).ok()) {
            found.push((fd, id));
        }
    }
    Ok(found)
}

#[derive(Debug, Deserialize)]
struct BpftoolProg {
    id: u32,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
struct BpftoolLink {
    #[serde(default)]
    prog_id: Option<u32>,
}

fn bpftool_json<T: serde::de::DeserializeOwned>(object: &str) -> Result<Vec<T>> {
    let json = cmd::stdout(Command::new("bpftool").args([object, "show", "--json"]))
        .with_context(|| format!("listing eBPF {object}s with bpftool (`cargo xtask setup` installs it)"))?;
    // bpftool prints nothing at all (not `[]`) on some versions when empty.
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&json).with_context(|| format!("parsing `bpftool {object} show --json`"))
}

/// The programs one agent process holds.
pub struct AgentPrograms {
    pid: u32,
    /// fd → program id, one fd per program.
    fds: Vec<(String, u32)>,
    names: BTreeMap<u32, String>,
}

impl AgentPrograms {
    pub fn of(pid: u32) -> Result<Self> {
        let mut fds = program_fds(pid)?;
        let mut seen = BTreeSet::new();
        fds.retain(|(_, id)| seen.insert(*id));
        let names = bpftool_json::<BpftoolProg>("prog")?
            .into_iter()
            .filter(|p| seen.contains(&p.id))
            .map(|p| (p.id, p.name))
            .collect();
        Ok(Self { pid, fds, names })
    }

    pub fn ids(&self) -> BTreeSet<u32> {
        self.fds.iter().map(|(_, id)| *id).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Each program's counters now, by name.
    pub fn counters(&self) -> Result<BTreeMap<String, ProgStats>> {
        let mut out = BTreeMap::new();
        for (fd, id) in &self.fds {
            let stats = fd_stats(self.pid, fd)?;
            let name = self.names.get(id).cloned().unwrap_or_else(|| format!("prog#{id}"));
            out.entry(name).or_insert_with(ProgStats::default).add(stats);
        }
        Ok(out)
    }
}

/// What each program did between two [`AgentPrograms::counters`] readings.
pub fn delta(after: &BTreeMap<String, ProgStats>, before: &BTreeMap<String, ProgStats>) -> BTreeMap<String, ProgStats> {
    after.iter().map(|(name, now)| (name.clone(), now.minus(before.get(name).copied().unwrap_or_default()))).collect()
}

/// Program types whose attachment can slow other processes down (syscall
/// tracepoints put every syscall on the slow path; any tracing program runs
/// on someone's events).
const TRACING_TYPES: &[&str] = &["tracepoint", "raw_tracepoint", "raw_tracepoint_writable", "tracing", "kprobe"];

/// ptwatch's syscall programs, by name, also when attached without a BPF
/// link (the kernel keeps 15 characters of a name; bpftool may show the
/// full one).
fn is_ptwatch_syscall_program(name: &str) -> bool {
    ptwatch_common::names::MADVISE_PROGRAMS
        .iter()
        .flat_map(|(_, walk, plain)| [*walk, *plain])
        .any(|full| full == name || (name.len() == 15 && full.starts_with(name)))
}

/// Tracing programs attached by someone other than the agents in `mine`,
/// and syscall events enabled through ftrace: anything that would make a
/// run with the agent off pay for probes too.
pub fn foreign_tracing(mine: &BTreeSet<u32>) -> Result<Vec<String>> {
    let linked: BTreeSet<u32> = bpftool_json::<BpftoolLink>("link")?.into_iter().filter_map(|l| l.prog_id).collect();
    let mut found: Vec<String> = bpftool_json::<BpftoolProg>("prog")?
        .into_iter()
        .filter(|p| !mine.contains(&p.id) && TRACING_TYPES.contains(&p.kind.as_str()))
        .filter(|p| linked.contains(&p.id) || is_ptwatch_syscall_program(&p.name))
        .map(|p| format!("{} {} (id {})", p.kind, p.name, p.id))
        .collect();
    // Syscall events enabled by hand (`echo 1 > …/enable`) have the same
    // node-wide effect; tracefs may not be mounted, which means none are.
    if let Ok(events) = fs::read_to_string("/sys/kernel/tracing/set_event") {
        found.extend(
            events
                .lines()
                .filter(|e| e.starts_with("syscalls:") || e.starts_with("raw_syscalls:"))
                .map(|e| format!("ftrace event {e}")),
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::{fdinfo_field, is_ptwatch_syscall_program};

    #[test]
    fn reads_fdinfo_fields() {
        let info = "prog_type:\t5\nprog_jited:\t1\nprog_id:\t1896\nrun_time_ns:\t123456\nrun_cnt:\t42\n";
        assert_eq!(fdinfo_field(info, "prog_id"), Some(1896));
        assert_eq!(fdinfo_field(info, "run_time_ns"), Some(123_456));
        assert_eq!(fdinfo_field(info, "run_cnt"), Some(42));
        assert_eq!(fdinfo_field(info, "recursion_misses"), None);
        // A prefix of another key is not that key.
        assert_eq!(fdinfo_field(info, "prog"), None);
    }

    #[test]
    fn recognises_truncated_names() {
        assert!(is_ptwatch_syscall_program("madvise_enter_walk"));
        assert!(is_ptwatch_syscall_program("process_madvise"));
        assert!(!is_ptwatch_syscall_program("process_madvis"));
        assert!(!is_ptwatch_syscall_program("tlb_flush"));
    }
}
