//! `cargo xtask vm-test`: the probe plans this host cannot attach (fentry,
//! kprobe), proven in real Debian kernels booted under qemu.
//!
//! For each kernel (6.1 without PT_RECLAIM, newest 6.x and 7.x with it) one
//! boot runs, inside the guest:
//! - the cross-kernel integration tests (`agent/tests/kernels.rs`) with each
//!   plan forced in turn (fentry, kprobe, tracepoint), told by the kernel's
//!   own config whether PT_RECLAIM must work;
//! - `ptwatch check --json`, to confirm what `auto` chooses;
//! - a short cost run per plan with `kernel.bpf_stats_enabled=1`, giving each
//!   program's ns/run (TCG-emulated, so only ratios between plans mean
//!   anything).
//!
//! A kernel that cannot be fetched or booted fails the run; nothing is
//! skipped.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    cargo::Built,
    cmd,
    test::Tally,
    vm::{self, DebianKernel, VmOptions},
};

/// Integration-test binaries run in every guest, once per plan, with the
/// libtest name filters to apply (none: every test). Of `trace`, the tests
/// that check events against the workload's own VmPTE; its other tests
/// (filters, lost events, exit paths) do not depend on the plan and run on
/// the host, which keeps three plans under TCG emulation affordable.
const GUEST_TESTS: &[(&str, &[&str])] =
    &[("kernels", &[]), ("trace", &["reclaim_is_traced", "min_pages_and_cause_filters"])];
/// Integration-test binaries run once per guest (they use no probe plan).
const GUEST_TESTS_ONCE: &[&str] = &["scan"];
/// Plans forced in turn.
const MODES: &[&str] = &["fentry", "kprobe", "tracepoint"];

#[derive(Debug, clap::Args)]
pub struct VmTestArgs {
    /// Kernels to test (default: bookworm-6.1, trixie-backports-6, sid-7).
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<DebianKernel>,
}

/// One kernel's outcome.
#[derive(Debug, Serialize)]
struct KernelResult {
    kernel: String,
    release: String,
    pt_reclaim_config: bool,
    auto_mode: String,
    tests: String,
    failures: Vec<String>,
    /// mode → program → (runs, ns per run)
    costs: BTreeMap<String, BTreeMap<String, (u64, f64)>>,
    problems: Vec<String>,
}

#[derive(Deserialize)]
struct BpftoolProg {
    name: Option<String>,
    run_time_ns: Option<u64>,
    run_cnt: Option<u64>,
}

#[derive(Deserialize)]
struct Check {
    probe_mode: String,
    pt_reclaim_active: bool,
}

/// Test executables built by `cargo test --no-run`, by target name.
fn test_executables(built: &Built) -> Result<BTreeMap<String, PathBuf>> {
    let json = cmd::stdout(built.workspace.cargo().args([
        "test",
        "--release",
        "-p",
        "ptwatch",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]))?;
    let mut found = BTreeMap::new();
    for line in json.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(exe), Some(name)) = (message["executable"].as_str(), message["target"]["name"].as_str()) else {
            continue;
        };
        if message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test")) {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    for name in GUEST_TESTS.iter().map(|(name, _)| name).chain(GUEST_TESTS_ONCE) {
        anyhow::ensure!(found.contains_key(*name), "cargo built no test binary `{name}`");
    }
    Ok(found)
}

/// The shell script the guest runs. Everything it writes goes to `out`.
fn guest_script(built: &Built, tests: &BTreeMap<String, PathBuf>, out: &Path, pt_reclaim: bool) -> String {
    let ptwatch = built.ptwatch.display();
    let workload = built.workload.display();
    let out = out.display();
    let mut script = format!(
        "set -u\nexport PTWATCH_BIN={ptwatch} PTWATCH_WORKLOAD_BIN={workload} PTWATCH_EXPECT_PT_RECLAIM={}\n",
        u8::from(pt_reclaim)
    );
    for mode in MODES {
        for (name, filters) in GUEST_TESTS {
            let exe = tests[*name].display();
            let filters = filters.join(" ");
            script.push_str(&format!(
                "echo '=== {name} mode={mode}'\nPTWATCH_TEST_PROBE_MODE={mode} {exe} --test-threads=1 {filters} 2>&1\n"
            ));
        }
    }
    for name in GUEST_TESTS_ONCE {
        let exe = tests[*name].display();
        script.push_str(&format!("echo '=== {name}'\n{exe} --test-threads=1 2>&1\n"));
    }
    script.push_str(&format!("{ptwatch} check --json > {out}/check.json 2> {out}/check.err; echo \"check exit $?\"\n"));
    for mode in MODES {
        script.push_str(&format!(
            "{ptwatch} agent --probe-mode {mode} --listen 127.0.0.1:9977 2> {out}/agent-{mode}.log &\n\
             agent=$!\n\
             for i in $(seq 100); do grep -q 'serving /metrics' {out}/agent-{mode}.log && break; sleep 0.2; done\n\
             sysctl -qw kernel.bpf_stats_enabled=1\n\
             {workload} cuts 128 0 2048 4 dontneed > /dev/null\n\
             {workload} unmap 128 > /dev/null\n\
             {workload} thp 16 > /dev/null\n\
             {workload} collapse 16 > /dev/null\n\
             bpftool prog show --json > {out}/cost-{mode}.json\n\
             sysctl -qw kernel.bpf_stats_enabled=0\n\
             kill -TERM $agent; wait $agent; echo \"agent {mode} exit $?\"\n"
        ));
    }
    script
}

fn costs(out: &Path, mode: &str) -> Result<BTreeMap<String, (u64, f64)>> {
    let path = out.join(format!("cost-{mode}.json"));
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let progs: Vec<BpftoolProg> = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    // Program names as bpftool shows them (cut at 15 characters).
    let ours =
        ["madvise", "free_tlb", "tlb_remove_table", "free_pgtables", "pte_free_defer", "zap_huge_pmd", "agent_request"];
    Ok(progs
        .into_iter()
        .filter_map(|p| {
            let name = p.name?;
            let runs = p.run_cnt.unwrap_or(0);
            (ours.iter().any(|o| name.contains(o)) && runs > 0)
                .then(|| (name, (runs, p.run_time_ns.unwrap_or(0) as f64 / runs as f64)))
        })
        .collect())
}

fn test_kernel(built: &Built, tests: &BTreeMap<String, PathBuf>, which: DebianKernel) -> Result<KernelResult> {
    let kernel =
        vm::fetch_kernel(which, &vm::default_cache_dir()).with_context(|| format!("fetching the {which} kernel"))?;
    let pt_reclaim = kernel.config_value("CONFIG_PT_RECLAIM").as_deref() == Some("y");
    let out = built.workspace.target.join("vm-test").join(which.name());
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!("[vm-test] {which}: booting {} (PT_RECLAIM {})", kernel.release, if pt_reclaim { "y" } else { "n" });
    let mut options = VmOptions::new(Duration::from_secs(900));
    options.rw_dirs.push(out.clone());
    options.cwd = Some(built.workspace.root.clone());
    let output = vm::run_in_vm_with(&kernel, &guest_script(built, tests, &out, pt_reclaim), &options)
        .with_context(|| format!("running the tests in the {which} kernel"))?;
    fs::write(out.join("guest.log"), &output.stdout).context("saving the guest log")?;

    let mut tally = Tally::default();
    for line in output.stdout.lines() {
        tally.line(line);
    }
    let mut problems = Vec::new();
    let expected_binaries = (MODES.len() * GUEST_TESTS.len() + GUEST_TESTS_ONCE.len()) as u64;
    if tally.binaries != expected_binaries {
        problems.push(format!(
            "{} of {expected_binaries} test runs reported a result (see {})",
            tally.binaries,
            out.join("guest.log").display()
        ));
    }
    let check: Option<Check> =
        fs::read_to_string(out.join("check.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    let auto_mode = match &check {
        Some(check) => {
            if check.pt_reclaim_active != pt_reclaim {
                problems.push(format!(
                    "ptwatch check says PT_RECLAIM active={}, the kernel config says {pt_reclaim}",
                    check.pt_reclaim_active
                ));
            }
            // Every Debian kernel here allows fentry: auto must pick it.
            if check.probe_mode != "fentry" {
                problems.push(format!("auto chose {} instead of fentry", check.probe_mode));
            }
            check.probe_mode.clone()
        }
        None => {
            problems.push(format!("ptwatch check produced no JSON (see {})", out.join("check.err").display()));
            String::new()
        }
    };
    let mut all_costs = BTreeMap::new();
    for mode in MODES {
        match costs(&out, mode) {
            Ok(costs) if !costs.is_empty() => {
                all_costs.insert((*mode).to_owned(), costs);
            }
            Ok(_) => problems.push(format!("no program of the {mode} plan ran during the cost run")),
            Err(err) => problems.push(format!("{err:#}")),
        }
    }
    Ok(KernelResult {
        kernel: which.name().to_owned(),
        release: kernel.release.clone(),
        pt_reclaim_config: pt_reclaim,
        auto_mode,
        tests: tally.to_string(),
        failures: tally.failures.clone(),
        costs: all_costs,
        problems: if tally.failed > 0 {
            [vec![format!("{} tests failed", tally.failed)], problems].concat()
        } else {
            problems
        },
    })
}

/// Run the VM tests; `Ok(true)` when every kernel passed.
pub fn run(built: &Built, args: &VmTestArgs) -> Result<bool> {
    vm::ensure_vm_tools().context("installing the VM tools (qemu, virtme-ng, virtiofsd)")?;
    let tests = test_executables(built)?;
    let kernels = if args.kernels.is_empty() { DebianKernel::ALL.to_vec() } else { args.kernels.clone() };
    let mut results = Vec::new();
    for which in kernels {
        let result = test_kernel(built, &tests, which)?;
        eprintln!(
            "[vm-test] {}: {} ({}); auto → {}{}",
            result.kernel,
            result.tests,
            result.release,
            result.auto_mode,
            if result.problems.is_empty() {
                String::new()
            } else {
                format!("; PROBLEMS: {}", result.problems.join("; "))
            }
        );
        for failure in &result.failures {
            eprintln!("[vm-test]   failed: {failure}");
        }
        results.push(result);
    }
    print_costs(&results);
    let json = built.workspace.target.join("bench").join("vm-costs.json");
    if let Some(dir) = json.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&json, serde_json::to_string_pretty(&results)?).with_context(|| format!("writing {}", json.display()))?;
    let ok = results.iter().all(|r| r.problems.is_empty());
    if ok {
        eprintln!("[vm-test] all kernels passed; per-program costs in {}", json.display());
    }
    Ok(ok)
}

fn print_costs(results: &[KernelResult]) {
    eprintln!("[vm-test] eBPF cost per run under TCG emulation (compare plans as ratios, not absolute ns):");
    eprintln!("[vm-test]   {:<20} {:<11} {:<28} {:>8} {:>10}", "kernel", "plan", "program", "runs", "ns/run");
    for result in results {
        for (mode, programs) in &result.costs {
            for (program, (runs, ns)) in programs {
                eprintln!("[vm-test]   {:<20} {:<11} {:<28} {runs:>8} {ns:>10.0}", result.kernel, mode, program);
            }
        }
    }
}
