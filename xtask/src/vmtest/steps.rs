//! The guest runner's steps for one job: geometry probe, the guest tests
//! per plan and per kernel, `ptwatch check --json`, and a cost run per plan
//! that scrapes the agent's own per-program run statistics.

use super::{
    binaries,
    matrix::{Boot, Job, Plan},
};
use crate::vm::Step;

/// Where the executables are inside the guest.
#[derive(Debug, Clone)]
pub struct GuestPaths {
    pub ptwatch: String,
    pub workload: String,
    /// Guest test name → its executable in the guest.
    pub tests: std::collections::BTreeMap<String, GuestTestExe>,
}

/// A guest test's executable inside the guest ([`binaries::TestExe`]
/// there).
#[derive(Debug, Clone)]
pub struct GuestTestExe {
    pub path: String,
    /// The test's module in a combined executable.
    pub module: Option<String>,
}

/// Step names, shared by the steps and the report that reads them.
pub fn test_step(test: &str, plan: Option<Plan>) -> String {
    match plan {
        Some(plan) => format!("test.{test}.{plan}"),
        None => format!("test.{test}"),
    }
}
pub const GEOMETRY: &str = "geometry";
pub const CHECK: &str = "check";
pub fn cost_step(plan: Plan) -> String {
    format!("cost.{plan}")
}
/// Loopback port of the cost run's agent (the guest has nothing else).
const COST_LISTEN: &str = "127.0.0.1:9977";

/// The steps of `job`. `pt_reclaim` comes from the kernel's config and
/// tells the tests what to expect.
pub fn steps(job: &Job, paths: &GuestPaths, pt_reclaim: bool) -> Vec<Step> {
    let mut steps = vec![Step::new(
        GEOMETRY,
        "echo \"machine $(uname -m)\"; grep -m1 '^mmu' /proc/cpuinfo; \
         grep -qw la57 /proc/cpuinfo && echo 'cpu-flag la57'; \
         dmesg | grep -iE '52-bit|LPA2|5-level|sv(39|48|57)' | head -5; \
         dmesg | grep -i 'Dynamic Preempt' | head -1; true",
    )];
    let test = |name: &str, filters: &[&str], ignored: bool, plan: Option<Plan>| {
        let exe = &paths.tests[name];
        let ignored = if ignored { " --ignored" } else { "" };
        let filters = binaries::name_filters(exe.module.as_deref(), filters).join(" ");
        let mut step = Step::new(test_step(name, plan), format!("{} --test-threads=1{ignored} {filters}", exe.path))
            .env("PTWATCH_BIN", paths.ptwatch.clone())
            .env("PTWATCH_WORKLOAD_BIN", paths.workload.clone())
            .env("PTWATCH_EXPECT_PT_RECLAIM", if pt_reclaim { "1" } else { "0" });
        if let Some(plan) = plan {
            step = step.env("PTWATCH_TEST_PROBE_MODE", plan.as_str());
        }
        step
    };
    for (t, plan) in job.test_runs() {
        steps.push(test(t.name, t.filters, t.ignored, plan));
    }
    // `ptwatch check` and the costs are the standard boot's business.
    if job.boot == Boot::Standard {
        if job.per_kernel_tests {
            steps.push(Step::new(CHECK, format!("{} check --json", paths.ptwatch)).separate_stderr());
        }
        for plan in &job.plans {
            steps.push(cost(paths, *plan));
        }
    }
    steps
}

/// A fixed workload under the agent with `kernel.bpf_stats_enabled=1`;
/// stdout is the agent's metrics, whose `ptwatch_bpf_program_*` families
/// carry each program's run count and time.
fn cost(paths: &GuestPaths, plan: Plan) -> Step {
    let (ptwatch, workload) = (&paths.ptwatch, &paths.workload);
    let log = format!("/tmp/agent-{plan}.log");
    Step::new(
        cost_step(plan),
        format!(
            "{ptwatch} agent --probe-mode {plan} --listen {COST_LISTEN} 2> {log} &\n\
             agent=$!\n\
             for i in $(seq 1500); do grep -q 'serving /metrics' {log} && break; kill -0 $agent 2>/dev/null || break; sleep 0.2; done\n\
             sysctl -w kernel.bpf_stats_enabled=1 > /dev/null\n\
             {workload} cuts 128 0 2048 4 dontneed > /dev/null\n\
             {workload} unmap 128 > /dev/null\n\
             {workload} thp 16 > /dev/null\n\
             {workload} collapse 16 > /dev/null\n\
             busybox wget -q -O - http://{COST_LISTEN}/metrics || {{ echo 'the agent did not serve within 300 s' >&2; false; }}\n\
             st=$?\n\
             sysctl -w kernel.bpf_stats_enabled=0 > /dev/null\n\
             kill -TERM $agent; wait $agent; echo \"agent exit $?\" >&2\n\
             cat {log} >&2\n\
             exit $st"
        ),
    )
    .separate_stderr()
}
