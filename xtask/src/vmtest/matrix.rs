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
#[derive(Debug, Clone, Copy)]
pub struct GuestTest {
    /// Cargo test target name (`agent/tests/<name>.rs`).
    pub name: &'static str,
    /// libtest name filters (none: every test of the binary).
    pub filters: &'static [&'static str],
    pub scope: Scope,
}

/// The guest tests. Adding a test binary to the VMs is one line here.
/// Of `trace`, the tests that check events against the workload's own
/// VmPTE; its other tests (filters, lost events, exit paths) do not depend
/// on the kernel and run on the host.
pub const GUEST_TESTS: &[GuestTest] = &[
    GuestTest { name: "kernels", filters: &[], scope: Scope::PerPlan },
    GuestTest { name: "trace", filters: &["reclaim_is_traced", "min_pages_and_cause_filters"], scope: Scope::PerPlan },
    GuestTest { name: "scan", filters: &[], scope: Scope::PerKernel },
];

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
}

impl Job {
    /// `arm64/newest-7` or, for a second CPU model of a line,
    /// `arm64/newest-7@cortex-a57`.
    pub fn name(&self) -> String {
        if self.cpu == self.line.arch.default_cpu() {
            self.line.to_string()
        } else {
            format!("{}@{}", self.line, self.cpu.name())
        }
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
            if runs_every_plan(line) {
                plans.push(Plan::Tracepoint);
            }
            Job { line, cpu: line.arch.default_cpu(), plans, per_kernel_tests: true }
        })
        .collect();
    if both_arm64_geometries {
        let extra: Vec<Job> = lines
            .iter()
            .filter(|l| l.arch == Arch::Arm64 && l.series == Series::Newest7)
            .map(|&line| Job { line, cpu: Cpu::Arm64CortexA57, plans: vec![Plan::Fentry], per_kernel_tests: false })
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
        assert_eq!(jobs.len(), KernelLine::MATRIX.len() + 1);
        for job in &jobs {
            assert!(job.plans.contains(&Plan::Fentry), "{job:?}");
            if job.per_kernel_tests {
                assert!(job.plans.contains(&Plan::Kprobe), "every kernel, both function plans: {job:?}");
            }
        }
        for arch in Arch::ALL {
            let every_plan = jobs.iter().filter(|j| j.line.arch == arch && j.plans.contains(&Plan::Tracepoint)).count();
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
