//! What each kernel of the VM test matrix runs: the table of guest tests
//! and the jobs (kernel line × CPU model × plans) built from it.
//!
//! The budget (the whole `cargo xtask test` ≤ 60 minutes on 2 cores, with
//! everything emulated) decides the shape: every kernel runs its tests with
//! the fentry and kprobe plans forced, since the plan a kernel gets is the
//! point of testing many kernels; the tracepoint plan, which attaches the
//! same way everywhere, runs on one kernel per architecture; tests that do
//! not depend on the plan run once per kernel.

use std::fmt;

use crate::vm::{Arch, Cpu, KernelLine, Series};

/// A probe plan forced with `PTWATCH_TEST_PROBE_MODE` / `--probe-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How often a guest test runs in one kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Once per forced plan.
    PerPlan,
    /// Once per kernel (the test uses no probe plan).
    PerKernel,
}

/// An integration-test binary of `agent/tests/` run inside the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestTest {
    /// Cargo test target name (`agent/tests/<name>.rs`).
    pub name: &'static str,
    /// libtest name filters (none: every test of the binary).
    pub filters: &'static [&'static str],
    pub scope: Scope,
    /// Run the binary's `#[ignore]`d tests (`--ignored`): tests that change
    /// the machine (a sysctl) and only ever run in a throw-away guest.
    pub ignored: bool,
}

/// The guest tests. Adding a test binary to the VMs is one line here.
/// Of `trace`, the tests that check events against the workload's own
/// VmPTE; its other tests (filters, lost events, exit paths) do not depend
/// on the kernel and run on the host.
pub const GUEST_TESTS: &[GuestTest] = &[
    GuestTest { name: "kernels", filters: &[], scope: Scope::PerPlan, ignored: false },
    GuestTest {
        name: "trace",
        filters: &["reclaim_is_traced", "min_pages_and_cause_filters"],
        scope: Scope::PerPlan,
        ignored: false,
    },
    GuestTest { name: "scan", filters: &[], scope: Scope::PerKernel, ignored: false },
    // The agent's empty-table gauge against the tables a kernel with or
    // without PT_RECLAIM leaves (the estimator's own tests need 64 GiB
    // mappings and promtool: host only).
    GuestTest {
        name: "empty_tables",
        filters: &["the_agent_exports_the_tables_a_whole_span_dontneed_leaves"],
        scope: Scope::PerKernel,
        ignored: false,
    },
];

/// The tests of the preemptible boot ([`Boot::Preemptible`]): threads that
/// fault, DONTNEED and unmap concurrently (programs interleave on one CPU
/// only when the kernel preempts them), and pids recycled within seconds
/// (`kernel.pid_max` lowered, which only a throw-away guest may do).
pub const PREEMPTIBLE_TESTS: &[GuestTest] = &[
    GuestTest {
        name: "kernels",
        filters: &[
            "concurrent_faults_dontneed_and_munmap_are_classified_exactly",
            "concurrent_threads_are_counted_exactly",
        ],
        scope: Scope::PerPlan,
        ignored: false,
    },
    GuestTest { name: "pid_reuse", filters: &[], scope: Scope::PerKernel, ignored: true },
];

/// Every test binary some guest runs (built once per architecture).
pub fn guest_test_binaries() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = GUEST_TESTS.iter().chain(PREEMPTIBLE_TESTS).map(|t| t.name).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// How a guest boots, and so which tests it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// The kernel's defaults: [`GUEST_TESTS`], `ptwatch check` and the
    /// cost runs.
    Standard,
    /// `preempt=full` on a `PREEMPT_DYNAMIC` kernel (Debian's are; they
    /// default to voluntary or lazy preemption): [`PREEMPTIBLE_TESTS`].
    Preemptible,
}

impl Boot {
    /// Kernel command-line arguments.
    pub fn append(self) -> &'static [&'static str] {
        match self {
            Self::Standard => &[],
            Self::Preemptible => &["preempt=full"],
        }
    }

    pub fn tests(self) -> &'static [GuestTest] {
        match self {
            Self::Standard => GUEST_TESTS,
            Self::Preemptible => PREEMPTIBLE_TESTS,
        }
    }

    /// What the kernel log must say for the boot to count (the kernel
    /// ignores a `preempt=` it cannot honour, with a warning).
    pub fn console_proof(self) -> Option<&'static str> {
        match self {
            Self::Standard => None,
            Self::Preemptible => Some("Dynamic Preempt: full"),
        }
    }
}

/// One guest boot of the matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub line: KernelLine,
    pub cpu: Cpu,
    /// Plans forced in turn for the [`Scope::PerPlan`] tests and the cost
    /// run.
    pub plans: Vec<Plan>,
    /// Run the [`Scope::PerKernel`] tests.
    pub per_kernel_tests: bool,
    pub boot: Boot,
}

impl Job {
    /// `arm64/newest-7` or, for a second CPU model of a line,
    /// `arm64/newest-7@cortex-a57`.
    pub fn name(&self) -> String {
        let mut name = self.line.to_string();
        if self.cpu != self.line.arch.default_cpu() {
            name = format!("{name}@{}", self.cpu.name());
        }
        for arg in self.boot.append() {
            name = format!("{name}+{arg}");
        }
        name
    }

    /// The guest tests this job runs, each with the plan it forces (None:
    /// once per kernel), in order.
    pub fn test_runs(&self) -> Vec<(&'static GuestTest, Option<Plan>)> {
        let tests = self.boot.tests();
        let mut runs = Vec::new();
        for plan in &self.plans {
            runs.extend(tests.iter().filter(|t| t.scope == Scope::PerPlan).map(|t| (t, Some(*plan))));
        }
        if self.per_kernel_tests {
            runs.extend(tests.iter().filter(|t| t.scope == Scope::PerKernel).map(|t| (t, None)));
        }
        runs
    }

    /// Relative wall time, to start the longest first when guests run
    /// side by side (emulating another ISA costs more than x86 on x86).
    pub fn weight(&self) -> u32 {
        let per_plan = match self.line.arch {
            Arch::X86_64 => 2,
            Arch::Riscv64 => 4,
            Arch::Arm64 => 5,
        };
        per_plan * self.plans.len() as u32 + u32::from(self.per_kernel_tests)
    }
}

/// The kernel of each architecture that also runs the tracepoint plan: the
/// newest line (the one most users will move to).
fn runs_every_plan(line: KernelLine) -> bool {
    matches!(
        (line.arch, line.series),
        (Arch::X86_64, Series::Sid7) | (Arch::Arm64, Series::Newest7) | (Arch::Riscv64, Series::Sid7)
    )
}

/// The plan `--probe-mode auto` must choose on `line`: fentry, but on 5.10,
/// where madvise(2) does not call the out-of-line `do_madvise` (the function
/// plans refuse the kernel, docs/kernel-support.md), the tracepoint plan.
pub fn expected_auto(line: KernelLine) -> Plan {
    if line.series == Series::Bullseye510 {
        Plan::Tracepoint
    } else {
        Plan::Fentry
    }
}

/// The jobs for `lines` (the matrix when empty). `both_arm64_geometries`
/// adds a boot of the arm64 7.x kernel on a 48-bit, 4-level CPU
/// (cortex-a57) with the fentry plan, next to the default 52-bit, 5-level
/// one.
pub fn jobs(lines: &[KernelLine], both_arm64_geometries: bool) -> Vec<Job> {
    let lines = if lines.is_empty() { KernelLine::MATRIX.to_vec() } else { lines.to_vec() };
    let mut jobs: Vec<Job> = lines
        .iter()
        .map(|&line| {
            let mut plans = vec![Plan::Fentry, Plan::Kprobe];
            if expected_auto(line) == Plan::Tracepoint {
                // The plan the kernel gets, and a positive control that the
                // function plans refuse it (the_requested_plan_… fails
                // otherwise) is in `kernels.rs`.
                plans = vec![Plan::Tracepoint];
            } else if runs_every_plan(line) {
                plans.push(Plan::Tracepoint);
            }
            Job { line, cpu: line.arch.default_cpu(), plans, per_kernel_tests: true, boot: Boot::Standard }
        })
        .collect();
    // The preemptible boot: the newest x86_64 kernel (the cheapest to
    // emulate), both function plans (the tracepoint plan's programs do not
    // nest the same way).
    let preemptible: Vec<Job> = lines
        .iter()
        .filter(|l| l.arch == Arch::X86_64 && l.series == Series::Sid7)
        .map(|&line| Job {
            line,
            cpu: line.arch.default_cpu(),
            plans: vec![Plan::Fentry, Plan::Kprobe],
            per_kernel_tests: true,
            boot: Boot::Preemptible,
        })
        .collect();
    jobs.extend(preemptible);
    if both_arm64_geometries {
        let extra: Vec<Job> = lines
            .iter()
            .filter(|l| l.arch == Arch::Arm64 && l.series == Series::Newest7)
            .map(|&line| Job {
                line,
                cpu: Cpu::Arm64CortexA57,
                plans: vec![Plan::Fentry],
                per_kernel_tests: false,
                boot: Boot::Standard,
            })
            .collect();
        jobs.extend(extra);
    }
    jobs
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails with the error it unwraps")]
mod tests {
    use super::*;

    #[test]
    fn the_matrix() {
        let jobs = jobs(&[], true);
        assert_eq!(jobs.len(), KernelLine::MATRIX.len() + 2);
        for job in &jobs {
            if expected_auto(job.line) == Plan::Tracepoint {
                assert_eq!(job.plans, [Plan::Tracepoint], "{job:?}");
                continue;
            }
            assert!(job.plans.contains(&Plan::Fentry), "{job:?}");
            if job.per_kernel_tests {
                assert!(job.plans.contains(&Plan::Kprobe), "every kernel, both function plans: {job:?}");
            }
        }
        let preemptible: Vec<&Job> = jobs.iter().filter(|j| j.boot == Boot::Preemptible).collect();
        assert_eq!(preemptible.len(), 1, "{jobs:?}");
        assert_eq!(preemptible[0].name(), "x86_64/sid-7+preempt=full");
        let runs: Vec<(&str, Option<Plan>)> = preemptible[0].test_runs().iter().map(|(t, p)| (t.name, *p)).collect();
        assert_eq!(
            runs,
            [("kernels", Some(Plan::Fentry)), ("kernels", Some(Plan::Kprobe)), ("pid_reuse", None)],
            "{runs:?}"
        );
        for arch in Arch::ALL {
            let every_plan = jobs
                .iter()
                .filter(|j| {
                    j.boot == Boot::Standard
                        && j.line.arch == arch
                        && j.plans.contains(&Plan::Tracepoint)
                        && expected_auto(j.line) == Plan::Fentry
                })
                .count();
            assert_eq!(every_plan, 1, "the tracepoint plan once per architecture ({arch})");
        }
        let names: Vec<String> = jobs.iter().map(Job::name).collect();
        assert!(names.contains(&"arm64/newest-7@cortex-a57".to_owned()), "{names:?}");
        assert!(names.contains(&"riscv64/sid-7".to_owned()), "{names:?}");
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn named_lines_only() {
        let jobs = jobs(&[KernelLine::new(Arch::X86_64, Series::Bookworm61)], true);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].plans, [Plan::Fentry, Plan::Kprobe]);
    }
}
