//! Judging one guest run: libtest results per step, `ptwatch check`'s
//! decision, the geometry the kernel ran with, and the cost run's
//! per-program statistics. Everything is read from the parsed guest log,
//! so a missing result is a problem, never a pass.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    matrix::{expected_auto, Boot, Job, Plan},
    steps::{cost_step, test_step, CHECK, GEOMETRY},
};
use crate::{
    test::Tally,
    vm::{arch::Geometry, guest::GuestLog, Arch, GuestRun, PreparedKernel},
};

/// One kernel's outcome.
#[derive(Debug, Serialize)]
pub struct KernelResult {
    pub job: String,
    pub release: String,
    pub package_version: String,
    pub cpu: String,
    pub pt_reclaim_config: bool,
    /// What the guest kernel ran with, and the most the CPU model offers.
    pub geometry: Option<Geometry>,
    pub cpu_geometry: Geometry,
    /// What `ptwatch check` chose with `--probe-mode auto`.
    pub auto_mode: Option<String>,
    pub tests: Vec<TestRun>,
    /// plan → program → (runs, ns per run)
    pub costs: BTreeMap<String, BTreeMap<String, (u64, f64)>>,
    pub problems: Vec<String>,
    pub wall_seconds: f64,
    pub boot_seconds: Option<f64>,
}

/// One test binary's run in one plan.
#[derive(Debug, Serialize)]
pub struct TestRun {
    pub step: String,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Failed tests with the first lines of their panic message.
    pub failures: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Check {
    probe_mode: String,
    pt_reclaim_active: bool,
    plan: CheckPlans,
}

#[derive(Debug, Deserialize)]
struct CheckPlans {
    plans: Vec<CheckPlan>,
}

/// One plan of `ptwatch check --json`: `usable` is null, or why not.
#[derive(Debug, Deserialize)]
struct CheckPlan {
    attach: String,
    usable: Option<serde_json::Value>,
}

/// Judge `run` of `job` on `kernel`.
pub fn evaluate(job: &Job, kernel: &PreparedKernel, run: &GuestRun, pt_reclaim: bool) -> KernelResult {
    let log = &run.log;
    let mut problems = Vec::new();
    if let Some(failure) = run.failure() {
        problems.push(failure);
    }
    let mut tests = Vec::new();
    let expected_steps: Vec<String> = job.test_runs().iter().map(|(t, plan)| test_step(t.name, *plan)).collect();
    if let (Some(proof), Some(geometry)) = (job.boot.console_proof(), log.step(GEOMETRY)) {
        if !geometry.output.contains(proof) {
            problems.push(format!("the kernel did not boot as asked: no `{proof}` in its log"));
        }
    }
    for name in &expected_steps {
        let Some(step) = log.step(name) else {
            problems.push(format!("{name}: no result (the guest never ran it)"));
            continue;
        };
        let mut tally = Tally::default();
        for line in step.output.lines() {
            tally.line(line);
        }
        if tally.binaries != 1 {
            problems.push(format!("{name}: no libtest summary (exit status {:?})", step.status));
        } else if tally.failed > 0 {
            problems.push(format!("{name}: {} failed: {}", tally.failed, tally.failures.join(", ")));
        } else if !step.succeeded() {
            problems.push(format!("{name}: exit status {:?} with no failed test", step.status));
        }
        let failures = tally.failures.iter().map(|f| (f.clone(), panic_message(&step.output, f))).collect();
        tests.push(TestRun {
            step: name.clone(),
            passed: tally.passed,
            failed: tally.failed,
            ignored: tally.ignored,
            failures,
        });
    }

    let auto_mode = if job.per_kernel_tests && job.boot == Boot::Standard {
        judge_check(log, pt_reclaim, expected_auto(job.line), &mut problems)
    } else {
        None
    };
    let arch = kernel.line.arch;
    let geometry = log.step(GEOMETRY).map(|s| {
        // The right emulator booted the right kernel.
        if !s.output.contains(&format!("machine {}", arch.uname_machine())) {
            problems.push(format!("the guest is not {}: {}", arch.uname_machine(), s.output.trim()));
        }
        observe_geometry(arch, kernel.config_value("CONFIG_PGTABLE_LEVELS"), &s.output)
    });
    if geometry.is_none() {
        problems.push("geometry: no result".to_owned());
    }

    let mut costs = BTreeMap::new();
    let cost_plans: &[Plan] = if job.boot == Boot::Standard { &job.plans } else { &[] };
    for plan in cost_plans {
        let name = cost_step(*plan);
        match log.step(&name) {
            Some(step) => {
                let programs = program_costs(&step.output);
                if programs.is_empty() {
                    problems.push(format!(
                        "{name}: no program of the {plan} plan ran (status {:?}); agent log:\n{}",
                        step.status,
                        crate::vm::process::tail(&step.stderr, 10)
                    ));
                } else {
                    costs.insert(plan.to_string(), programs);
                }
            }
            None => problems.push(format!("{name}: no result")),
        }
    }
    KernelResult {
        job: job.name(),
        release: kernel.release.clone(),
        package_version: kernel.package_version.clone(),
        cpu: job.cpu.qemu_arg().to_owned(),
        pt_reclaim_config: pt_reclaim,
        geometry,
        cpu_geometry: job.cpu.geometry(),
        auto_mode,
        tests,
        costs,
        problems,
        wall_seconds: run.elapsed.as_secs_f64(),
        boot_seconds: run.boot_time.map(|d| d.as_secs_f64()),
    }
}

/// `ptwatch check --json`: PT_RECLAIM as the config says, and `auto`
/// choosing fentry (every Debian kernel here allows it).
fn judge_check(log: &GuestLog, pt_reclaim: bool, expected: Plan, problems: &mut Vec<String>) -> Option<String> {
    let Some(step) = log.step(CHECK) else {
        problems.push("ptwatch check: no result".to_owned());
        return None;
    };
    let check: Check = match serde_json::from_str(&step.output) {
        Ok(check) => check,
        Err(err) => {
            problems.push(format!(
                "ptwatch check --json (status {:?}) printed no report ({err}); stderr: {}",
                step.status,
                step.stderr.trim()
            ));
            return None;
        }
    };
    if check.pt_reclaim_active != pt_reclaim {
        problems.push(format!(
            "ptwatch check says PT_RECLAIM active={}, the kernel config says {pt_reclaim}",
            check.pt_reclaim_active
        ));
    }
    if check.probe_mode != expected.as_str() {
        problems.push(format!("auto chose {} instead of {expected}", check.probe_mode));
    }
    // Where the function plans are refused, `check` must say exactly why.
    if expected == Plan::Tracepoint {
        for plan in check.plan.plans.iter().filter(|p| p.attach != Plan::Tracepoint.as_str()) {
            let reason = plan.usable.as_ref().map(ToString::to_string).unwrap_or_default();
            if !reason.contains("inlined into the syscall") {
                problems.push(format!(
                    "check: the {} plan is not refused for the inlined do_madvise: {reason:?}",
                    plan.attach
                ));
            }
        }
    }
    Some(check.probe_mode)
}

/// The first lines of a failed test's panic message in libtest's output.
pub fn panic_message(output: &str, test: &str) -> String {
    let header = format!("---- {test} stdout ----");
    let Some(start) = output.find(&header) else { return String::new() };
    output[start + header.len()..]
        .lines()
        .map(str::trim_end)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.starts_with("---- ") && *l != "failures:" && !l.starts_with("note: run with"))
        .filter(|l| !l.is_empty())
        .take(6)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The geometry from what the guest printed (`mmu`, `la57`, the arm64
/// 52-bit VA notice) and the kernel's compiled-in levels: a kernel built
/// for five levels folds one away at boot when the CPU lacks LA57, LPA2
/// or sv57.
pub fn observe_geometry(arch: Arch, config_levels: Option<String>, probe: &str) -> Geometry {
    let compiled: u32 = config_levels.and_then(|l| l.parse().ok()).unwrap_or(4);
    let lower = probe.to_ascii_lowercase();
    match arch {
        Arch::X86_64 => {
            let levels = if compiled >= 5 && lower.contains("la57") { 5 } else { 4 };
            Geometry { va_bits: if levels == 5 { 57 } else { 48 }, levels }
        }
        Arch::Arm64 => {
            let lva = lower.contains("52-bit");
            let levels = if compiled >= 5 && !lva { 4 } else { compiled };
            let va_bits = match levels {
                5 => 52,
                4 => 48,
                3 => 39,
                _ => 0,
            };
            Geometry { va_bits, levels }
        }
        Arch::Riscv64 => {
            let (va_bits, levels) = if lower.contains("sv57") {
                (57, 5)
            } else if lower.contains("sv48") {
                (48, 4)
            } else {
                (39, 3)
            };
            Geometry { va_bits, levels }
        }
    }
}

/// `ptwatch_bpf_program_runs_total` and `…_run_seconds_total` → program →
/// (runs, ns per run), programs that ran only.
pub fn program_costs(exposition: &str) -> BTreeMap<String, (u64, f64)> {
    let mut runs: BTreeMap<String, f64> = BTreeMap::new();
    let mut seconds: BTreeMap<String, f64> = BTreeMap::new();
    for line in exposition.lines() {
        let (family, into) = if line.starts_with("ptwatch_bpf_program_runs_total{") {
            ("ptwatch_bpf_program_runs_total", &mut runs)
        } else if line.starts_with("ptwatch_bpf_program_run_seconds_total{") {
            ("ptwatch_bpf_program_run_seconds_total", &mut seconds)
        } else {
            continue;
        };
        let rest = &line[family.len()..];
        let Some(program) = rest.split("program=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let Some(value) = rest.rsplit('}').next().and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) else {
            continue;
        };
        into.insert(program.to_owned(), value);
    }
    runs.into_iter()
        .filter(|(_, n)| *n > 0.0)
        .map(|(program, n)| {
            let ns = seconds.get(&program).copied().unwrap_or(0.0) * 1e9 / n;
            (program, (n as u64, ns))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails with the error it unwraps")]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        let x86 = observe_geometry(Arch::X86_64, Some("5".into()), "machine x86_64\ncpu-flag la57\n");
        assert_eq!(x86, Geometry { va_bits: 57, levels: 5 });
        assert_eq!(observe_geometry(Arch::X86_64, Some("5".into()), "machine x86_64\n").levels, 4);
        assert_eq!(observe_geometry(Arch::X86_64, Some("4".into()), "cpu-flag la57").levels, 4);
        let lpa2 = "machine aarch64\n[    0.000000] CPU features: detected: 52-bit Virtual Addressing (LPA2)\n";
        assert_eq!(observe_geometry(Arch::Arm64, Some("5".into()), lpa2), Geometry { va_bits: 52, levels: 5 });
        assert_eq!(observe_geometry(Arch::Arm64, Some("5".into()), "machine aarch64\n").levels, 4);
        assert_eq!(observe_geometry(Arch::Arm64, Some("4".into()), "").va_bits, 48);
        let rv = "machine riscv64\nmmu\t\t: sv57\n";
        assert_eq!(observe_geometry(Arch::Riscv64, None, rv), Geometry { va_bits: 57, levels: 5 });
        assert_eq!(observe_geometry(Arch::Riscv64, None, "mmu : sv39").levels, 3);
    }

    #[test]
    fn costs_from_the_agents_metrics() {
        let text = "# HELP ptwatch_bpf_program_runs_total Runs\n\
            ptwatch_bpf_program_runs_total{program=\"tlb_remove_table_fentry\"} 512\n\
            ptwatch_bpf_program_run_seconds_total{program=\"tlb_remove_table_fentry\"} 0.001024\n\
            ptwatch_bpf_program_runs_total{program=\"zap_huge_pmd_fentry\"} 0\n\
            ptwatch_bpf_program_run_seconds_total{program=\"zap_huge_pmd_fentry\"} 0\n\
            ptwatch_pte_pages_reclaimed_total{pid=\"1\"} 3\n";
        let costs = program_costs(text);
        assert_eq!(costs.len(), 1, "programs that never ran are left out: {costs:?}");
        let (runs, ns) = costs["tlb_remove_table_fentry"];
        assert_eq!(runs, 512);
        assert!((ns - 2000.0).abs() < 1e-6, "{ns}");
    }

    #[test]
    fn panic_messages() {
        let output = "running 2 tests\ntest a ... ok\ntest thp_frees ... FAILED\n\nfailures:\n\n\
            ---- thp_frees stdout ----\n\nthread 'thp_frees' panicked at agent/tests/kernels.rs:150:5:\n\
            assertion `left == right` failed: thp frees\n  left: 0\n right: 8\n\
            note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n\n\
            failures:\n    thp_frees\n\ntest result: FAILED. 1 passed; 1 failed; 0 ignored\n";
        assert_eq!(
            panic_message(output, "thp_frees"),
            "thread 'thp_frees' panicked at agent/tests/kernels.rs:150:5: | assertion `left == right` failed: thp frees |   left: 0 |  right: 8"
        );
        assert_eq!(panic_message(output, "a"), "");
    }
}
