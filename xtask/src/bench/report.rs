//! Printing a session's results, and holding them to the goals of issue 10.
use super::{
    agent::ProbePlan,
    bystanders::{ArmWorkload, SessionResults},
    floor::Floor,
    stats_ci,
    work::Workload,
};

/// What a goal limits.
#[derive(Debug, Clone, Copy)]
enum Measure {
    /// Median wall-clock ratio on/off (its 95 % interval says whether the
    /// run resolved it).
    WallRatio,
    /// eBPF ns per call (bpf_stats).
    EbpfNs,
    /// eBPF time per call, percent of an agent-off call.
    EbpfPercent,
}

struct Goal {
    plans: &'static [ProbePlan],
    workload: Workload,
    measure: Measure,
    limit: f64,
}

/// Issue 10, items 3 and 5.
const GOALS: [Goal; 4] = [
    Goal {
        plans: &[ProbePlan::Fentry, ProbePlan::Kprobe],
        workload: Workload::Getppid,
        measure: Measure::WallRatio,
        limit: 1.01,
    },
    Goal { plans: &[ProbePlan::Fentry], workload: Workload::SmallDontneed, measure: Measure::WallRatio, limit: 1.03 },
    Goal { plans: &[ProbePlan::Tracepoint], workload: Workload::SmallDontneed, measure: Measure::EbpfNs, limit: 100.0 },
    Goal {
        plans: &[ProbePlan::Tracepoint, ProbePlan::Fentry, ProbePlan::Kprobe],
        workload: Workload::Reclaim2m,
        measure: Measure::EbpfPercent,
        limit: 0.5,
    },
];

fn verdict(goal: &Goal, row: &ArmWorkload, floor: Option<&Floor>) -> (String, &'static str) {
    match goal.measure {
        Measure::WallRatio => {
            let r = &row.ratio;
            let text =
                format!("CPU-time ratio {} ≤ {:.2} (wall {})", r.display(), goal.limit, row.wall_ratio.display());
            let status = match r.interval {
                _ if r.median > goal.limit => "NOT MET",
                Some((_, hi)) if hi <= goal.limit => "met",
                _ => "met by the median; the interval reaches past the goal (not resolved)",
            };
            (text, status)
        }
        Measure::EbpfNs | Measure::EbpfPercent => {
            let Some(ebpf) = &row.ebpf else { return ("no bpf_stats".to_owned(), "NOT MEASURED") };
            let (value, unit) = match goal.measure {
                Measure::EbpfNs => (ebpf.ns_per_call, " ns"),
                _ => (ebpf.percent_of_call, " %"),
            };
            let mut text = format!("eBPF {value:.1}{unit} per call ≤ {}{unit}", goal.limit);
            // The tracepoint plan's ns cannot go below what two programs
            // that do nothing cost there.
            if let (Measure::EbpfNs, Some(floor), Some(ProbePlan::Tracepoint)) = (goal.measure, floor, row.plan) {
                text.push_str(&format!(
                    " (floor here: {:.1} ns for two empty programs on the same tracepoints; {:.1} ns above it)",
                    floor.ns_per_call,
                    value - floor.ns_per_call
                ));
            }
            (text, if value <= goal.limit { "met" } else { "NOT MET" })
        }
    }
}

/// The goals that apply to the arms measured here.
pub fn print_goals(results: &[&SessionResults]) {
    println!();
    println!(
        "goals of issue 10 (ratio goals: median of per-pair ratios of the loop thread's CPU time, {:.0} % order-statistic interval)",
        stats_ci::CONFIDENCE * 100.0
    );
    for results in results {
        for goal in &GOALS {
            for row in results.summaries.iter().filter(|r| {
                !r.baseline && r.workload == goal.workload && r.plan.is_some_and(|p| goal.plans.contains(&p))
            }) {
                let (text, status) = verdict(goal, row, results.floor.as_ref());
                println!(
                    "  {:<5} {:<11} {:<16} {text}: {status}",
                    results.session.environment,
                    row.plan.map_or("", ProbePlan::name),
                    goal.workload.name()
                );
            }
        }
    }
}

/// One session's tables.
pub fn print(results: &SessionResults) {
    let s = &results.session;
    println!();
    println!(
        "== {}: kernel {}, {} CPUs, load average {} (start) / {} (end), {:.0} s",
        s.environment, results.kernel, results.cpus, results.loadavg_start, results.loadavg_end, results.elapsed_secs
    );
    let pinned = s.cpu.map_or_else(|| "not pinned".to_owned(), |c| format!("pinned to CPU {c}"));
    println!(
        "   {} kept pairs per arm, agent off/on alternating (ABBA); {} batches x {:.2} s per workload per block, block value = median batch; loops {pinned}; PT_RECLAIM {}",
        s.pairs,
        s.batches,
        s.block_secs / s.batches as f64,
        match results.pt_reclaim {
            Some(true) => "active",
            Some(false) => "NOT active",
            None => "not tested",
        }
    );
    if let Some(vm) = &results.vm {
        println!(
            "   TCG-emulated guest, host load average {} / {}; clock: {}",
            vm.host_loadavg[0], vm.host_loadavg[1], vm.clock
        );
    }
    let discarded = results.pairs.iter().filter(|p| !p.kept).count();
    let disturbed_kept = results.pairs.iter().filter(|p| p.kept && !p.disturbed.is_empty()).count();
    if discarded > 0 || disturbed_kept > 0 {
        println!(
            "   {discarded} pairs discarded and run again, {disturbed_kept} disturbed pairs kept (other tracing programs attached, see the JSON)"
        );
    }
    println!();
    println!(
        "   {:<34} {:<30} {:>9} {:>9}  {:<24} {:<24} {:>8} {:>7}",
        "workload", "arm", "off ns", "on ns", "on/off CPU [95% CI]", "on/off wall [95% CI]", "eBPF ns", "eBPF %"
    );
    for &workload in &s.workloads {
        for row in results.summaries.iter().filter(|r| r.workload == workload) {
            let (ebpf_ns, ebpf_pct) = row.ebpf.as_ref().map_or_else(
                || ("-".to_owned(), "-".to_owned()),
                |e| (format!("{:.1}", e.ns_per_call), format!("{:.3}", e.percent_of_call)),
            );
            println!(
                "   {:<34} {:<30} {:>9.1} {:>9.1}  {:<24} {:<24} {:>8} {:>7}",
                workload.describe(),
                row.label,
                row.off.cpu_ns,
                row.on.cpu_ns,
                row.ratio.display(),
                row.wall_ratio.display(),
                ebpf_ns,
                ebpf_pct
            );
        }
    }
    println!("   (ns per call: CPU time of the loop's thread, median over the kept pairs' blocks; ratios: median of per-pair ratios)");
    println!();
    println!("   noise floor (A/A control: the same comparison with the agent off both times)");
    for row in results.summaries.iter().filter(|r| r.arm.is_none()) {
        let half = row.ratio.half_width_percent().map_or_else(|| "n/a".to_owned(), |h| format!("±{h:.1} %"));
        println!(
            "   {:<34} median {:.3}, interval half-width {half}, spread of ratios {:.1} %",
            row.workload.describe(),
            row.ratio.median,
            row.ratio.spread * 100.0
        );
    }
    println!();
    println!(
        "   eBPF programs per workload call (bpf_stats, in separate runs right after each \"on\" block's timed runs; per program: all pairs pooled)"
    );
    for row in results.summaries.iter().filter(|r| r.arm.is_some()) {
        let Some(ebpf) = &row.ebpf else { continue };
        println!(
            "   {} / {}: {:.1} ns per call (median over pairs; pooled {:.1}) over {} calls, {:.3} runs per call of other processes subtracted",
            row.label,
            row.workload.name(),
            ebpf.ns_per_call,
            ebpf.pooled_ns_per_call,
            ebpf.calls,
            ebpf.background_runs_per_call
        );
        for p in &ebpf.programs {
            println!(
                "     {:<32} runs/call {:>8.3}  ns/run {:>8.0}  ns/call {:>8.1}{}",
                p.name,
                p.runs_per_call,
                p.ns_per_run,
                p.ns_per_call,
                if p.recursion_misses > 0 {
                    format!("  recursion misses {}", p.recursion_misses)
                } else {
                    String::new()
                }
            );
        }
    }
}

/// The eBPF ns per call of `plan` (the built agent, not a baseline) on
/// `workload`, and that workload's agent-off CPU ns per call.
fn ebpf_of(results: &SessionResults, plan: ProbePlan, workload: Workload) -> Option<(f64, f64)> {
    let row = results.summaries.iter().find(|r| !r.baseline && r.plan == Some(plan) && r.workload == workload)?;
    Some((row.ebpf.as_ref()?.ns_per_call, row.off.cpu_ns))
}

/// The guest's eBPF figures are emulated; the tracepoint plan runs in both
/// places, so its host/guest ratio carries the other plans' figures over to
/// this host's CPU. An estimate: the programs differ, and the fentry and
/// kprobe attachment overhead (trampoline, int3) is not in bpf_stats.
pub fn print_estimates(all: &[&SessionResults]) {
    let (Some(host), Some(vm)) = (all.iter().find(|r| r.vm.is_none()), all.iter().find(|r| r.vm.is_some())) else {
        return;
    };
    let workload = Workload::SmallDontneed;
    let (Some((host_tp, host_off)), Some((vm_tp, _))) =
        (ebpf_of(host, ProbePlan::Tracepoint, workload), ebpf_of(vm, ProbePlan::Tracepoint, workload))
    else {
        return;
    };
    if vm_tp <= 0.0 {
        return;
    }
    let scale = host_tp / vm_tp;
    println!();
    println!(
        "estimated on this host's CPU ({}: guest eBPF ns x {scale:.3}, the host/guest ratio of the tracepoint plan's eBPF ns):",
        workload.name()
    );
    for plan in [ProbePlan::Fentry, ProbePlan::Kprobe] {
        if let Some((ns, _)) = ebpf_of(vm, plan, workload) {
            println!(
                "  {:<11} eBPF ≈ {:.0} ns per call = {:.1} % of the host's {:.0} ns call (attachment overhead not included)",
                plan.name(),
                ns * scale,
                ns * scale / host_off * 100.0,
                host_off
            );
        }
    }
}
