//! Part 1 of `cargo xtask bench`: what an attached agent costs the
//! processes of its node, the ones it traces and the ones it does not.
//!
//! A *session* compares "agent off" with "agent on" for each arm (a probe
//! plan of an agent binary) on each [`Workload`], in pairs of blocks run
//! back to back, order alternating (off-on, then on-off: ABBA), so that a
//! drift of the machine over time hits both sides alike. One block runs
//! every workload once, in an order that rotates from round to round. The
//! agent is started for each "on" block and stopped after it, so "off"
//! blocks have no probe attached at all.
//!
//! Each pair gives, per workload, the ratio on/off of the median batch time;
//! a session reports the median of those ratios and its distribution-free
//! 95 % interval (`stats_ci`). An A/A control arm (off both times, with the
//! pause an agent start takes) measures the same way what the machine's
//! noise alone produces: the noise floor.
//!
//! eBPF time per call comes from separate runs with `bpf_stats` on, right
//! after the timed runs of each "on" block (counting adds ~20 ns per program
//! run, so it is never on while wall-clock time is measured).
//!
//! On a shared machine someone else's tracing programs (another agent under
//! test) would tax both sides and shrink the ratio: each block checks for
//! them before and after each workload, and a disturbed pair is discarded
//! and run again.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{
    agent::{Agent, ProbePlan},
    floor::{self, Floor},
    stats::{self, AgentPrograms, ProgStats, StatsEnabled},
    stats_ci::{self, RatioSummary},
    work::{self, LoopReport, PerCall, Workload},
};
use crate::cmd;

/// Pause after the agent answers /metrics before timing: its start-up work
/// (BTF, loading, the first harvest) must not land in the first batches.
const SETTLE: Duration = Duration::from_millis(500);
/// Calibration stops when one batch takes at least this share of its target.
const CALIBRATION_MIN_SHARE: f64 = 0.25;

/// An agent to compare with "off".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentArm {
    pub label: String,
    pub binary: PathBuf,
    pub plan: ProbePlan,
    /// An older build compared side by side (`--baseline`): not held to the
    /// goals.
    pub baseline: bool,
}

/// Everything a session needs; sent as JSON to a VM guest, which runs the
/// same code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// `host`, or `vm` (TCG-emulated: ratios only).
    pub environment: String,
    pub arms: Vec<AgentArm>,
    pub workloads: Vec<Workload>,
    /// Pairs to keep per arm.
    pub pairs: u32,
    /// Timed seconds per workload per block.
    pub block_secs: f64,
    /// Timed batches per workload per block (the block's value is their
    /// median).
    pub batches: usize,
    /// Batches per workload of the bpf_stats run after each "on" block.
    pub stats_batches: usize,
    /// Pin the loops to this CPU.
    pub cpu: Option<usize>,
    /// Pairs that may be discarded (disturbed) and run again, per arm.
    pub max_redo: u32,
    /// How long a session may wait, in all, for other processes' tracing
    /// programs to go away before a pair starts.
    #[serde(default)]
    pub max_wait_secs: u64,
    /// Keep disturbed pairs (and say so) instead of running them again.
    pub keep_disturbed: bool,
    /// The agent's log.
    pub log: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Off,
    On,
}

impl Side {
    fn other(self) -> Self {
        match self {
            Self::Off => Self::On,
            Self::On => Self::Off,
        }
    }
}

/// Per-workload calls per batch, from an agent-off run at the start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub workload: Workload,
    pub calls_per_batch: u64,
    pub ns_per_call: f64,
}

/// One pair of blocks, as measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairRecord {
    /// Index into the session's arms; `None` for the A/A control.
    pub arm: Option<usize>,
    pub round: u32,
    pub first: Side,
    /// Median ns per call of the block's batches.
    pub off: BTreeMap<Workload, PerCall>,
    pub on: BTreeMap<Workload, PerCall>,
    pub agent_start_secs: Option<f64>,
    /// Why the pair does not count (foreign tracing programs, bpf_stats on
    /// during timing); empty when clean.
    pub disturbed: Vec<String>,
    pub kept: bool,
    /// bpf_stats runs of the "on" block: calls and program deltas per
    /// workload.
    pub ebpf: BTreeMap<Workload, EbpfRun>,
}

/// One bpf_stats run of a workload, or their sum.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EbpfRun {
    /// The loop's calls (its set-up excluded).
    pub calls: u64,
    /// Program deltas over the loop.
    pub programs: BTreeMap<String, ProgStats>,
    /// Estimated share of other processes in `programs`: deltas over an
    /// equal window just before, with no loop running.
    pub background: BTreeMap<String, ProgStats>,
}

impl EbpfRun {
    fn add(&mut self, other: &Self) {
        self.calls += other.calls;
        for (name, stats) in &other.programs {
            self.programs.entry(name.clone()).or_default().add(*stats);
        }
        for (name, stats) in &other.background {
            self.background.entry(name.clone()).or_default().add(*stats);
        }
    }

    /// eBPF ns per call of the loop: all programs' time less the
    /// background's, signed (a burst of other processes' calls in a quiet
    /// window can make one run's estimate negative).
    fn own_ns_per_call(&self) -> f64 {
        let total = |m: &BTreeMap<String, ProgStats>| m.values().map(|s| s.run_time_ns as f64).sum::<f64>();
        (total(&self.programs) - total(&self.background)) / self.calls.max(1) as f64
    }

    /// The loop's own share: `programs` less `background`, per program.
    fn own(&self) -> BTreeMap<String, ProgStats> {
        self.programs
            .iter()
            .map(|(name, s)| (name.clone(), s.minus(self.background.get(name).copied().unwrap_or_default())))
            .collect()
    }
}

/// One program's cost per call of a workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub runs_per_call: f64,
    pub ns_per_run: f64,
    pub ns_per_call: f64,
    pub recursion_misses: u64,
}

/// eBPF time per call of a workload, over every kept pair of an arm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EbpfCost {
    pub calls: u64,
    /// Median over the kept pairs of each pair's estimate.
    pub ns_per_call: f64,
    /// All pairs' runs pooled (the sum of `programs`).
    pub pooled_ns_per_call: f64,
    /// Of an agent-off call, percent.
    pub percent_of_call: f64,
    /// Runs of other processes' calls that were subtracted, per call: large
    /// values make the figure less certain.
    pub background_runs_per_call: f64,
    /// Programs that ran, costliest first.
    pub programs: Vec<ProgramCost>,
}

/// One arm on one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmWorkload {
    pub arm: Option<usize>,
    pub label: String,
    pub plan: Option<ProbePlan>,
    pub baseline: bool,
    pub workload: Workload,
    /// Of the loop thread's CPU time per call: what the agent adds to the
    /// process, without the waits for a CPU that other work on a shared
    /// machine causes.
    pub ratio: RatioSummary,
    /// Of wall-clock time per call (includes those waits).
    pub wall_ratio: RatioSummary,
    /// Medians over the kept pairs' blocks.
    pub off: PerCall,
    pub on: PerCall,
    pub ebpf: Option<EbpfCost>,
}

/// What a session measured; `target/bench/bystanders-<environment>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionResults {
    pub session: Session,
    pub kernel: String,
    pub cpus: usize,
    pub unix_time: u64,
    /// `/proc/loadavg` before and after.
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// For a VM session, what the host knows about it.
    #[serde(default)]
    pub vm: Option<VmInfo>,
    pub pt_reclaim: Option<bool>,
    /// What two empty programs cost where the tracepoint plan attaches its
    /// madvise programs (when a tracepoint arm was measured).
    #[serde(default)]
    pub floor: Option<Floor>,
    pub calibration: Vec<Calibration>,
    pub pairs: Vec<PairRecord>,
    /// Derived from `pairs`: recomputed when results are read back, so
    /// saved raw data can be summarised again as the summary evolves.
    #[serde(skip_deserializing)]
    pub summaries: Vec<ArmWorkload>,
    pub elapsed_secs: f64,
}

/// How a VM session ran, seen from the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    /// The host's `/proc/loadavg` before and after.
    pub host_loadavg: [String; 2],
    /// What the guest's clocks measure.
    pub clock: String,
}

pub const CONTROL_LABEL: &str = "A/A control (off both times)";

pub fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".to_owned())
}

/// Run one loop in a child process (`xtask bench-child loop …`); `at_go`
/// runs once the child is set up, right before it starts its calls.
fn loop_child(
    workload: Workload,
    calls: u64,
    batches: usize,
    cpu: Option<usize>,
    at_go: &mut dyn FnMut() -> Result<()>,
) -> Result<LoopReport> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut command = Command::new(exe);
    command
        .args(["bench-child", "loop", workload.name(), "--calls", &calls.to_string(), "--batches"])
        .arg(batches.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(cpu) = cpu {
        command.args(["--cpu", &cpu.to_string()]);
    }
    let what = cmd::display(&command);
    let mut child = command.spawn().with_context(|| format!("starting `{what}`"))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("`{what}`: no pipes");
    };
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().transpose().with_context(|| format!("reading from `{what}`"))?;
    if first.as_deref() != Some(work::READY) {
        let status = child.wait().with_context(|| format!("waiting for `{what}`"))?;
        bail!("`{what}` failed before its loop ({status}; printed {first:?})");
    }
    at_go()?;
    stdin.write_all(b"go\n").with_context(|| format!("starting the loop of `{what}`"))?;
    drop(stdin);
    let rest: Vec<String> = lines.collect::<Result<_, _>>().with_context(|| format!("reading from `{what}`"))?;
    let status = child.wait().with_context(|| format!("waiting for `{what}`"))?;
    ensure!(status.success(), "`{what}` failed ({status})");
    let line = rest.last().with_context(|| format!("`{what}` printed no report"))?;
    serde_json::from_str(line).with_context(|| format!("parsing the report of `{what}`: {line:?}"))
}

/// [`loop_child`] with nothing to do at the go.
fn timed_loop(workload: Workload, calls: u64, batches: usize, cpu: Option<usize>) -> Result<LoopReport> {
    loop_child(workload, calls, batches, cpu, &mut || Ok(()))
}

/// Calls per batch so that a block of `batches` batches lasts `block_secs`.
fn calibrate(session: &Session, workload: Workload) -> Result<(Calibration, Option<bool>)> {
    let target_ns = session.block_secs * 1e9 / session.batches as f64;
    let mut calls = 1u64;
    loop {
        let report = timed_loop(workload, calls, 3, session.cpu)?;
        let batch_ns = report.median_per_call().wall_ns * calls as f64;
        if batch_ns >= target_ns * CALIBRATION_MIN_SHARE || calls >= 1 << 32 {
            let ns_per_call = batch_ns / calls as f64;
            // Truncation is fine: only the order of magnitude matters.
            let calls_per_batch = ((target_ns / ns_per_call) as u64).max(1);
            return Ok((Calibration { workload, calls_per_batch, ns_per_call }, report.pt_reclaim));
        }
        calls *= 8;
    }
}

/// Program runs while no loop runs: other processes' calls.
#[derive(Default)]
struct Quiet {
    runs: BTreeMap<String, ProgStats>,
    length: Duration,
}

impl Quiet {
    fn window(&mut self, programs: &AgentPrograms, length: Duration) -> Result<()> {
        let (before, start) = (programs.counters()?, Instant::now());
        thread::sleep(length);
        for (name, stats) in stats::delta(&programs.counters()?, &before) {
            self.runs.entry(name).or_default().add(stats);
        }
        self.length += start.elapsed();
        Ok(())
    }

    /// The same rate over `length`.
    fn over(self, length: Duration) -> BTreeMap<String, ProgStats> {
        let scale = length.as_secs_f64() / self.length.as_secs_f64().max(1e-9);
        self.runs.into_iter().map(|(name, stats)| (name, stats.scaled(scale))).collect()
    }
}

/// What the driver of a session keeps across pairs.
struct Driver<'a> {
    session: &'a Session,
    calibration: BTreeMap<Workload, Calibration>,
    /// How long the last agent start took: the A/A control pauses as long.
    agent_start: Duration,
}

impl Driver<'_> {
    fn calls(&self, workload: Workload) -> u64 {
        self.calibration.get(&workload).map_or(1, |c| c.calls_per_batch)
    }

    fn ns_per_call(&self, workload: Workload) -> f64 {
        self.calibration.get(&workload).map_or(0.0, |c| c.ns_per_call)
    }

    /// Someone else's probes or bpf_stats, now.
    fn disturbances(&self, mine: &BTreeSet<u32>, disturbed: &mut Vec<String>) -> Result<()> {
        for found in stats::foreign_tracing(mine)? {
            if !disturbed.contains(&found) {
                disturbed.push(found);
            }
        }
        if stats::stats_enabled()? {
            let why = "kernel.bpf_stats_enabled was 1 during a timed run (set by someone else)".to_owned();
            if !disturbed.contains(&why) {
                disturbed.push(why);
            }
        }
        Ok(())
    }

    /// Every workload once, timed: median ns per call of each.
    fn timed_block(
        &self,
        order: &[Workload],
        mine: &BTreeSet<u32>,
        disturbed: &mut Vec<String>,
    ) -> Result<BTreeMap<Workload, PerCall>> {
        let mut out = BTreeMap::new();
        for &workload in order {
            self.disturbances(mine, disturbed)?;
            let report = timed_loop(workload, self.calls(workload), self.session.batches, self.session.cpu)?;
            out.insert(workload, report.median_per_call());
        }
        self.disturbances(mine, disturbed)?;
        Ok(out)
    }

    /// Every workload once with bpf_stats on: what the agent's programs did
    /// during the loop's calls, less what other processes made them do
    /// meanwhile (the counters are system-wide, and on a shared machine
    /// other processes DONTNEED too), estimated from two windows with no
    /// loop running, just before and just after, half as long each.
    fn stats_block(&self, order: &[Workload], programs: &AgentPrograms) -> Result<BTreeMap<Workload, EbpfRun>> {
        let _counting = StatsEnabled::enable()?;
        let mut out = BTreeMap::new();
        for &workload in order {
            let calls = self.calls(workload);
            let batches = self.session.stats_batches;
            let expected = self.ns_per_call(workload) * (calls * (batches as u64 + 1)) as f64;
            let half = Duration::from_secs_f64(expected / 2e9);
            let mut quiet = Quiet::default();
            quiet.window(programs, half)?;
            let mut at_go = None;
            let report = loop_child(workload, calls, batches, self.session.cpu, &mut || {
                at_go = Some((programs.counters()?, Instant::now()));
                Ok(())
            })?;
            let after = programs.counters()?;
            let (before, started) = at_go.context("the loop child never started")?;
            let ran = started.elapsed();
            quiet.window(programs, half)?;
            let nonzero = |m: BTreeMap<String, ProgStats>| m.into_iter().filter(|(_, s)| s.run_cnt > 0).collect();
            out.insert(
                workload,
                EbpfRun {
                    calls: report.total_calls,
                    programs: nonzero(stats::delta(&after, &before)),
                    background: nonzero(quiet.over(ran)),
                },
            );
        }
        Ok(out)
    }

    /// The "on" block of an agent arm.
    fn agent_block(
        &mut self,
        arm: &AgentArm,
        order: &[Workload],
        record: &mut PairRecord,
    ) -> Result<BTreeMap<Workload, PerCall>> {
        let started = Instant::now();
        let mut agent = Agent::start_plan(&arm.binary, &self.session.log, arm.plan)
            .with_context(|| format!("starting the {} agent", arm.label))?;
        self.agent_start = started.elapsed();
        record.agent_start_secs = Some(self.agent_start.as_secs_f64());
        thread::sleep(SETTLE);
        let programs = AgentPrograms::of(agent.pid())?;
        ensure!(
            !programs.is_empty(),
            "the {} agent serves /metrics but holds no eBPF program; see {}",
            arm.label,
            self.session.log.display()
        );
        let timed = self.timed_block(order, &programs.ids(), &mut record.disturbed)?;
        record.ebpf = self.stats_block(order, &programs)?;
        agent.stop()?;
        Ok(timed)
    }

    fn pair(&mut self, arm: Option<&AgentArm>, index: Option<usize>, round: u32, first: Side) -> Result<PairRecord> {
        let mut order = self.session.workloads.clone();
        let len = order.len().max(1);
        order.rotate_left(round as usize % len);
        let mut record = PairRecord {
            arm: index,
            round,
            first,
            off: BTreeMap::new(),
            on: BTreeMap::new(),
            agent_start_secs: None,
            disturbed: Vec::new(),
            kept: false,
            ebpf: BTreeMap::new(),
        };
        for side in [first, first.other()] {
            match (side, arm) {
                (Side::Off, _) => record.off = self.timed_block(&order, &BTreeSet::new(), &mut record.disturbed)?,
                (Side::On, None) => {
                    thread::sleep(self.agent_start + SETTLE);
                    record.on = self.timed_block(&order, &BTreeSet::new(), &mut record.disturbed)?;
                }
                (Side::On, Some(arm)) => record.on = self.agent_block(arm, &order, &mut record)?,
            }
        }
        Ok(record)
    }
}

/// Poll interval while other tracing programs are attached.
const WAIT_POLL: Duration = Duration::from_secs(5);

/// Wait, at most `budget_secs`, until no other process has tracing programs
/// attached: a pair started then would only be discarded. Returns the
/// seconds waited.
fn wait_until_clean(session: &Session, budget_secs: u64) -> Result<u64> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let found = stats::foreign_tracing(&BTreeSet::new())?;
        if found.is_empty() || session.keep_disturbed {
            return Ok(start.elapsed().as_secs());
        }
        if start.elapsed().as_secs() >= budget_secs {
            bail!(
                "other processes kept tracing programs attached ({}) past the --max-wait of the session; run when the machine is quieter, or pass --keep-disturbed",
                found.join("; ")
            );
        }
        if !told {
            eprintln!(
                "[bench] {}: waiting for other tracing programs to go away: {}",
                session.environment,
                found.join("; ")
            );
            told = true;
        }
        thread::sleep(WAIT_POLL);
    }
}

fn print_pair(session: &Session, record: &PairRecord, kept: u32) {
    let label = record.arm.map_or(CONTROL_LABEL, |i| session.arms[i].label.as_str());
    let ratios: Vec<String> = session
        .workloads
        .iter()
        .map(|w| match (record.off.get(w), record.on.get(w)) {
            (Some(off), Some(on)) => format!("{} {:.3}", w.name(), on.cpu_ns / off.cpu_ns),
            _ => format!("{} -", w.name()),
        })
        .collect();
    let status = if record.disturbed.is_empty() {
        format!("pair {kept}/{}", session.pairs)
    } else if record.kept {
        format!("pair {kept}/{} DISTURBED, kept", session.pairs)
    } else {
        "discarded".to_owned()
    };
    eprintln!("[bench] {}: {label} ({status}): on/off (CPU time) {}", session.environment, ratios.join(", "));
    if !record.disturbed.is_empty() {
        eprintln!("[bench]   disturbed by: {}", record.disturbed.join("; "));
    }
}

/// Run a whole session (on this machine: the host, or inside a guest).
pub fn run(session: &Session) -> Result<SessionResults> {
    ensure!(session.pairs >= 1, "at least one pair is needed");
    ensure!(session.batches >= 1 && session.stats_batches >= 1, "at least one batch per run is needed");
    ensure!(session.block_secs > 0.0 && session.block_secs <= 10.0, "--block-secs must be in (0, 10]");
    let begun = Instant::now();
    let loadavg_start = read_trimmed("/proc/loadavg");
    let already = stats::foreign_tracing(&BTreeSet::new())?;
    if !already.is_empty() {
        eprintln!(
            "[bench] {}: other tracing programs are attached now ({}): pairs they overlap are run again",
            session.environment,
            already.join(", ")
        );
    }

    let mut calibration = Vec::new();
    let mut pt_reclaim = None;
    for &workload in &session.workloads {
        let (c, reclaim) = calibrate(session, workload)?;
        eprintln!(
            "[bench] {}: {} ~{:.0} ns/call, {} calls per batch",
            session.environment,
            workload.name(),
            c.ns_per_call,
            c.calls_per_batch
        );
        pt_reclaim = pt_reclaim.or(reclaim);
        calibration.push(c);
    }
    if pt_reclaim == Some(false) {
        eprintln!(
            "[bench] {}: warning: a 2 MiB DONTNEED did not free its PTE table: no PT_RECLAIM here, so reclaim-2m measures less",
            session.environment
        );
    }

    let mut driver = Driver {
        session,
        calibration: calibration.iter().map(|c| (c.workload, c.clone())).collect(),
        agent_start: Duration::from_secs(1),
    };
    // The control arm first, then the agents.
    let arms: Vec<Option<usize>> = std::iter::once(None).chain((0..session.arms.len()).map(Some)).collect();
    let mut kept = vec![0u32; arms.len()];
    let mut redone = vec![0u32; arms.len()];
    let mut pairs = Vec::new();
    let mut round = 0u32;
    let mut waited = 0u64;
    while kept.iter().any(|&k| k < session.pairs) {
        for (slot, &index) in arms.iter().enumerate() {
            if kept[slot] >= session.pairs {
                continue;
            }
            waited += wait_until_clean(session, session.max_wait_secs.saturating_sub(waited))?;
            let first = if (round as usize + slot).is_multiple_of(2) { Side::Off } else { Side::On };
            let arm = index.map(|i| &session.arms[i]);
            let mut record = driver.pair(arm, index, round, first)?;
            record.kept = record.disturbed.is_empty() || session.keep_disturbed;
            if record.kept {
                kept[slot] += 1;
            } else {
                redone[slot] += 1;
                if redone[slot] > session.max_redo {
                    bail!(
                        "{} pairs of {} were disturbed by other processes' tracing programs ({}); run when the machine is quieter, or pass --keep-disturbed",
                        redone[slot],
                        arm.map_or(CONTROL_LABEL, |a| a.label.as_str()),
                        record.disturbed.join("; ")
                    );
                }
            }
            print_pair(session, &record, kept[slot]);
            pairs.push(record);
        }
        round += 1;
    }

    let floor = measure_floor(session, &driver);
    let summaries = summarise(session, &pairs, &calibration);
    Ok(SessionResults {
        floor,
        session: session.clone(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        cpus: thread::available_parallelism().map_or(1, |n| n.get()),
        unix_time: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        loadavg_start,
        loadavg_end: read_trimmed("/proc/loadavg"),
        vm: None,
        pt_reclaim,
        calibration,
        pairs,
        summaries,
        elapsed_secs: begun.elapsed().as_secs_f64(),
    })
}

/// The floor under the tracepoint plan's eBPF figure, on the same loop (b),
/// when the session measured that plan and loop. The session's pairs are
/// measured already: a floor that cannot be measured is said, and the
/// results are kept without it.
fn measure_floor(session: &Session, driver: &Driver) -> Option<Floor> {
    let workload = Workload::SmallDontneed;
    if !session.arms.iter().any(|arm| arm.plan == ProbePlan::Tracepoint) || !session.workloads.contains(&workload) {
        return None;
    }
    let calls = driver.calls(workload);
    let run_loop = &mut || loop_child(workload, calls, session.stats_batches, session.cpu, &mut || Ok(())).map(drop);
    match floor::measure(run_loop) {
        Ok(floor) => {
            eprintln!(
                "[bench] {}: floor: two empty programs on the madvise syscall tracepoints: {:.1} ns per call ({:.1} + {:.1})",
                session.environment, floor.ns_per_call, floor.entry_ns_per_run, floor.exit_ns_per_run
            );
            Some(floor)
        }
        Err(err) => {
            eprintln!("[bench] {}: warning: the floor was not measured: {err:#}", session.environment);
            None
        }
    }
}

/// Per-pair runs are summarised by the median of their estimates (robust
/// to bursts of other processes' calls in one window), per-program figures
/// over all runs pooled.
fn ebpf_cost(runs: &[&EbpfRun], off_ns_per_call: f64) -> EbpfCost {
    let mut total = EbpfRun::default();
    for run in runs {
        total.add(run);
    }
    let per_pair: Vec<f64> = runs.iter().map(|r| r.own_ns_per_call()).collect();
    let calls = total.calls.max(1) as f64;
    let background_runs: u64 = total.background.values().map(|s| s.run_cnt).sum();
    let mut programs: Vec<ProgramCost> = total
        .own()
        .iter()
        .map(|(name, s)| ProgramCost {
            name: name.clone(),
            runs: s.run_cnt,
            runs_per_call: s.run_cnt as f64 / calls,
            ns_per_run: if s.run_cnt == 0 { 0.0 } else { s.run_time_ns as f64 / s.run_cnt as f64 },
            ns_per_call: s.run_time_ns as f64 / calls,
            recursion_misses: s.recursion_misses,
        })
        .collect();
    programs.sort_by(|a, b| b.ns_per_call.total_cmp(&a.ns_per_call));
    let ns_per_call = stats_ci::median(&per_pair);
    EbpfCost {
        calls: total.calls,
        ns_per_call,
        pooled_ns_per_call: programs.iter().map(|p| p.ns_per_call).sum::<f64>(),
        percent_of_call: ns_per_call / off_ns_per_call * 100.0,
        background_runs_per_call: background_runs as f64 / calls,
        programs,
    }
}

fn summarise(session: &Session, pairs: &[PairRecord], calibration: &[Calibration]) -> Vec<ArmWorkload> {
    let arms = std::iter::once(None).chain((0..session.arms.len()).map(Some));
    let mut out = Vec::new();
    for index in arms {
        let arm = index.map(|i| &session.arms[i]);
        let kept: Vec<&PairRecord> = pairs.iter().filter(|p| p.kept && p.arm == index).collect();
        for &workload in &session.workloads {
            let both: Vec<(PerCall, PerCall)> =
                kept.iter().filter_map(|p| Some((*p.off.get(&workload)?, *p.on.get(&workload)?))).collect();
            let of = |f: fn(&(PerCall, PerCall)) -> f64| both.iter().map(f).collect::<Vec<f64>>();
            let off = PerCall {
                cpu_ns: stats_ci::median(&of(|b| b.0.cpu_ns)),
                wall_ns: stats_ci::median(&of(|b| b.0.wall_ns)),
            };
            let on = PerCall {
                cpu_ns: stats_ci::median(&of(|b| b.1.cpu_ns)),
                wall_ns: stats_ci::median(&of(|b| b.1.wall_ns)),
            };
            let off_for_share = if both.is_empty() {
                calibration.iter().find(|c| c.workload == workload).map_or(f64::NAN, |c| c.ns_per_call)
            } else {
                off.cpu_ns
            };
            let ebpf = arm.map(|_| {
                let runs: Vec<&EbpfRun> = kept.iter().filter_map(|p| p.ebpf.get(&workload)).collect();
                ebpf_cost(&runs, off_for_share)
            });
            out.push(ArmWorkload {
                arm: index,
                label: arm.map_or_else(|| CONTROL_LABEL.to_owned(), |a| a.label.clone()),
                plan: arm.map(|a| a.plan),
                baseline: arm.is_some_and(|a| a.baseline),
                workload,
                ratio: RatioSummary::of(&of(|b| b.1.cpu_ns / b.0.cpu_ns)),
                wall_ratio: RatioSummary::of(&of(|b| b.1.wall_ns / b.0.wall_ns)),
                off,
                on,
                ebpf,
            });
        }
    }
    out
}

/// Write `results` as JSON to `path`.
pub fn save(results: &SessionResults, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(results).context("serialising results")?;
    fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Read results a guest wrote.
pub fn load(path: &Path) -> Result<SessionResults> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut results: SessionResults =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    results.summaries = summarise(&results.session, &results.pairs, &results.calibration);
    Ok(results)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]

    use std::collections::BTreeMap;

    use super::{ebpf_cost, EbpfRun, ProgStats};

    #[test]
    fn ebpf_cost_is_per_call_and_sorted() {
        let mut programs = BTreeMap::new();
        programs.insert("enter".to_owned(), ProgStats { run_time_ns: 1_000, run_cnt: 10, recursion_misses: 0 });
        programs.insert("exit".to_owned(), ProgStats { run_time_ns: 3_000, run_cnt: 10, recursion_misses: 1 });
        let mut background = BTreeMap::new();
        background.insert("exit".to_owned(), ProgStats { run_time_ns: 1_000, run_cnt: 5, recursion_misses: 0 });
        programs.get_mut("exit").unwrap().add(ProgStats { run_time_ns: 1_000, run_cnt: 5, recursion_misses: 0 });
        let cost = ebpf_cost(&[&EbpfRun { calls: 10, programs, background }], 1_000.0);
        assert!((cost.background_runs_per_call - 0.5).abs() < 1e-9);
        assert_eq!(cost.programs[0].name, "exit");
        assert!((cost.ns_per_call - 400.0).abs() < 1e-9);
        assert!((cost.percent_of_call - 40.0).abs() < 1e-9);
        assert!((cost.programs[1].ns_per_run - 100.0).abs() < 1e-9);
        assert!((cost.programs[0].runs_per_call - 1.0).abs() < 1e-9);
    }
}
