//! `cargo xtask vm-test`: ptwatch's probe plans proven in real Debian
//! kernels of every architecture PT_RECLAIM reaches, booted under qemu.
//!
//! - `matrix`: which kernels, CPU models and plans (one table of guest
//!   tests);
//! - `binaries`: what each architecture's guests run;
//! - `steps`: the guest runner's steps for one job;
//! - `report`: judging a guest's log (libtest results, `ptwatch check`,
//!   geometry, costs).
//!
//! Guests run side by side (two by default on two cores, one vCPU each):
//! each guest runs its tests one at a time and measures only itself, so
//! results stay exact, and the emulated CPUs keep both host cores busy.
//! A kernel that cannot be fetched or booted, a guest that dies, a missing
//! result or a failed test fails the run; nothing is skipped.

mod binaries;
mod matrix;
mod report;
mod steps;

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use self::{
    binaries::GuestBinaries,
    matrix::Job,
    report::KernelResult,
    steps::{GuestPaths, GuestTestExe},
};
use crate::{
    cargo::Built,
    vm::{self, Arch, BootMethod, KernelLine, VmOptions, GUEST_FILES_DIR},
};

#[derive(Debug, clap::Args)]
pub struct VmTestArgs {
    /// Kernel lines to test, `<arch>/<series>` (default: the whole matrix,
    /// see docs/vm-testing.md).
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<KernelLine>,
    /// Guests run at once (default `PTWATCH_VM_JOBS`, else 2 when the host
    /// has 2 or more CPUs). Host CPUs are split between them.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Also boot the arm64 7.x kernel on a 48-bit, 4-level CPU
    /// (cortex-a57) next to the default 52-bit, 5-level one (`max`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub both_arm64_geometries: bool,
}

impl Default for VmTestArgs {
    fn default() -> Self {
        Self { kernels: Vec::new(), jobs: None, both_arm64_geometries: true }
    }
}

/// Whole boot + tests of one guest.
const GUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// One job's outcome: judged, or why it could not run.
struct Outcome {
    job: Job,
    result: Result<KernelResult, String>,
    took: Duration,
}

/// Each architecture's guest executables, or why they could not be built.
pub type Binaries = BTreeMap<Arch, Result<GuestBinaries, String>>;

/// The architectures of `args`' jobs.
fn arches_of(args: &VmTestArgs) -> Vec<Arch> {
    let mut arches: Vec<Arch> =
        matrix::jobs(&args.kernels, args.both_arm64_geometries).iter().map(|j| j.line.arch).collect();
    arches.sort();
    arches.dedup();
    arches
}

/// Build the guest executables of the architectures this host does not
/// run natively in the background, at the lowest CPU priority: `cargo xtask
/// test` overlaps them with its host tests, which mostly wait (on agents'
/// intervals, on systemd and podman, on the kernel). They build in the
/// release profile's directories, so they never wait for the host tests'
/// build lock (`release-tests`). [`run`] builds whatever is missing.
pub fn prebuild(args: &VmTestArgs) -> std::thread::JoinHandle<Binaries> {
    let foreign: Vec<_> =
        arches_of(args).into_iter().filter_map(|arch| binaries::cross_target(arch).map(|t| (arch, t))).collect();
    std::thread::spawn(move || {
        lowest_cpu_priority();
        let started = Instant::now();
        let built: Binaries = foreign
            .iter()
            .map(|&(arch, target)| (arch, binaries::cross(target).map_err(|e| format!("{e:#}"))))
            .collect();
        eprintln!(
            "[vm-test] foreign guests' executables built in the background in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        built
    })
}

/// Nice 19 for the calling thread and the processes it starts (Linux keeps
/// a nice value per thread; children inherit their creator's).
fn lowest_cpu_priority() {
    // SAFETY: gettid and setpriority take no pointers; PRIO_PROCESS with a
    // thread id changes that thread only.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if set != 0 {
        eprintln!("[vm-test] could not lower the background build's priority: {}", std::io::Error::last_os_error());
    }
}

/// Run the VM tests; `Ok(true)` when every kernel passed. `prebuilt`:
/// guest executables [`prebuild`] made (empty: build them all here).
pub fn run(built: &Built, args: &VmTestArgs, mut prebuilt: Binaries) -> Result<bool> {
    let started = Instant::now();
    let jobs = matrix::jobs(&args.kernels, args.both_arm64_geometries);
    let arches = arches_of(args);
    vm::ensure_vm_tools(&arches).context("installing the VM tools")?;
    let binaries: Binaries = arches
        .iter()
        .map(|&arch| {
            let bins =
                prebuilt.remove(&arch).unwrap_or_else(|| binaries::for_arch(arch, built).map_err(|e| format!("{e:#}")));
            (arch, bins)
        })
        .collect();
    eprintln!("[vm-test] binaries ready after {:.0}s", started.elapsed().as_secs_f64());

    let host_cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let workers = args
        .jobs
        .or_else(|| std::env::var("PTWATCH_VM_JOBS").ok().and_then(|v| v.parse().ok()))
        .unwrap_or(if host_cpus >= 2 { 2 } else { 1 })
        .clamp(1, jobs.len().max(1));
    let guest_cpus = (host_cpus / workers).max(1) as u32;
    eprintln!(
        "[vm-test] {} guests: {}; {workers} at a time, {guest_cpus} vCPU each",
        jobs.len(),
        jobs.iter().map(Job::name).collect::<Vec<_>>().join(", ")
    );

    // Longest first, so the last guest to finish is a short one.
    let mut queue = jobs.clone();
    queue.sort_by_key(|j| std::cmp::Reverse(j.weight()));
    let queue = Mutex::new(queue);
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let next = || queue.lock().ok().and_then(|mut q| (!q.is_empty()).then(|| q.remove(0)));
                while let Some(job) = next() {
                    let t = Instant::now();
                    let result = match &binaries[&job.line.arch] {
                        Ok(bins) => test_job(built, &job, bins, guest_cpus).map_err(|e| format!("{e:#}")),
                        Err(e) => Err(e.clone()),
                    };
                    let outcome = Outcome { job, result, took: t.elapsed() };
                    print_outcome(&outcome);
                    if let Ok(mut all) = outcomes.lock() {
                        all.push(outcome);
                    }
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap_or_default();
    let order: Vec<String> = jobs.iter().map(Job::name).collect();
    outcomes.sort_by_key(|o| order.iter().position(|n| *n == o.job.name()));

    print_summary(&outcomes, started.elapsed());
    let results: Vec<&KernelResult> = outcomes.iter().filter_map(|o| o.result.as_ref().ok()).collect();
    print_costs(&results);
    let json = built.workspace.target.join("bench").join("vm-costs.json");
    if let Some(dir) = json.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&json, serde_json::to_string_pretty(&results)?).with_context(|| format!("writing {}", json.display()))?;
    let ok = outcomes.iter().all(|o| o.result.as_ref().is_ok_and(|r| r.problems.is_empty()));
    if ok {
        eprintln!("[vm-test] all kernels passed; results and per-program costs in {}", json.display());
    }
    Ok(ok)
}

/// Fetch the kernels of `args` in the background (downloads and module
/// decompression take about a minute per kernel), so that `cargo xtask
/// test` overlaps them with its host stages. Errors are left for the
/// vm-test stage, which fetches again (cached kernels cost nothing) and
/// fails on them.
pub fn prefetch(args: &VmTestArgs) -> std::thread::JoinHandle<()> {
    let mut lines: Vec<KernelLine> = matrix::jobs(&args.kernels, false).into_iter().map(|j| j.line).collect();
    lines.dedup();
    std::thread::spawn(move || {
        let cache = vm::default_cache_dir();
        for line in lines {
            let t = Instant::now();
            match vm::fetch_kernel(line, &cache) {
                Ok(k) => eprintln!("[vm-test] prefetched {line}: {} in {:.0}s", k.release, t.elapsed().as_secs_f64()),
                Err(e) => eprintln!("[vm-test] prefetching {line} failed (vm-test will retry): {e:#}"),
            }
        }
    })
}

/// Fetch, boot, run and judge one job; Err when the kernel cannot be
/// fetched or booted.
fn test_job(built: &Built, job: &Job, bins: &GuestBinaries, guest_cpus: u32) -> Result<KernelResult> {
    let name = job.name();
    let kernel = vm::fetch_kernel(job.line, &vm::default_cache_dir())
        .with_context(|| format!("fetching the {} kernel", job.line))?;
    let pt_reclaim = kernel.config_value("CONFIG_PT_RECLAIM").as_deref() == Some("y");
    let out = built.workspace.target.join("vm-test").join(name.replace(['/', '@'], "_"));
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let mut options = VmOptions::new(GUEST_TIMEOUT);
    options.cpus = guest_cpus;
    options.cpu = Some(job.cpu);
    options.append = job.boot.append().iter().map(|a| (*a).to_owned()).collect();
    let paths = match job.line.arch.boot_method() {
        BootMethod::Virtme => {
            options.cwd = Some(built.workspace.root.clone());
            let s = |p: &Path| p.display().to_string();
            GuestPaths {
                ptwatch: s(&bins.ptwatch),
                workload: s(&bins.workload),
                tests: bins
                    .tests
                    .iter()
                    .map(|(n, exe)| (n.clone(), GuestTestExe { path: s(&exe.path), module: exe.module.clone() }))
                    .collect(),
            }
        }
        BootMethod::Initramfs => {
            options.files = bins.files();
            let g = |n: &str| format!("{GUEST_FILES_DIR}/{n}");
            GuestPaths {
                ptwatch: g("ptwatch"),
                workload: g("ptwatch-workload"),
                tests: bins
                    .tests
                    .iter()
                    .map(|(n, exe)| (n.clone(), GuestTestExe { path: g(&exe.file_name()), module: exe.module.clone() }))
                    .collect(),
            }
        }
    };
    eprintln!(
        "[vm-test] {name}: booting {} (PT_RECLAIM {}, -cpu {}, plans {})",
        kernel.release,
        if pt_reclaim { "y" } else { "n" },
        job.cpu.qemu_arg(),
        job.plans.iter().map(ToString::to_string).collect::<Vec<_>>().join("+")
    );
    let steps = steps::steps(job, &paths, pt_reclaim);
    let run = vm::run_steps(&kernel, &steps, &options).with_context(|| format!("running the tests in {name}"))?;
    fs::write(out.join("guest.log"), &run.stream).context("saving the guest log")?;
    fs::write(out.join("console.log"), &run.console).context("saving the console log")?;
    Ok(report::evaluate(job, &kernel, &run, pt_reclaim))
}

fn print_outcome(o: &Outcome) {
    let name = o.job.name();
    match &o.result {
        Err(err) => eprintln!("[vm-test] {name}: FAILED to run after {:.0}s: {err}", o.took.as_secs_f64()),
        Ok(r) => {
            let (passed, failed) = r.tests.iter().fold((0, 0), |(p, f), t| (p + t.passed, f + t.failed));
            eprintln!(
                "[vm-test] {name}: {passed} passed, {failed} failed in {} test runs ({}); {}; auto → {}; {:.0}s (boot {:.0}s){}",
                r.tests.len(),
                r.release,
                r.geometry.map(|g| format!("{}-bit VA, {} levels", g.va_bits, g.levels)).unwrap_or_else(|| "geometry ?".into()),
                r.auto_mode.as_deref().unwrap_or("-"),
                o.took.as_secs_f64(),
                r.boot_seconds.unwrap_or(0.0),
                if r.problems.is_empty() { String::new() } else { format!("; PROBLEMS:\n  {}", r.problems.join("\n  ")) }
            );
            for t in &r.tests {
                for (test, message) in &t.failures {
                    eprintln!("[vm-test]   {name} {}: {test}: {message}", t.step);
                }
            }
        }
    }
}

fn print_summary(outcomes: &[Outcome], total: Duration) {
    eprintln!("[vm-test] {:<28} {:<6} {:>6}  release", "kernel", "result", "wall");
    for o in outcomes {
        let (status, release) = match &o.result {
            Ok(r) if r.problems.is_empty() => ("ok", r.release.as_str()),
            Ok(r) => ("FAIL", r.release.as_str()),
            Err(_) => ("ERROR", "-"),
        };
        eprintln!("[vm-test] {:<28} {status:<6} {:>5.0}s  {release}", o.job.name(), o.took.as_secs_f64());
    }
    eprintln!("[vm-test] total {:.0}s", total.as_secs_f64());
}

fn print_costs(results: &[&KernelResult]) {
    eprintln!("[vm-test] eBPF cost per run under TCG emulation (compare plans as ratios, not absolute ns):");
    eprintln!("[vm-test]   {:<28} {:<11} {:<32} {:>8} {:>10}", "kernel", "plan", "program", "runs", "ns/run");
    for result in results {
        for (plan, programs) in &result.costs {
            for (program, (runs, ns)) in programs {
                eprintln!("[vm-test]   {:<28} {plan:<11} {program:<32} {runs:>8} {ns:>10.0}", result.job);
            }
        }
    }
}
