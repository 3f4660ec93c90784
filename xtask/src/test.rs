//! `cargo xtask test`: the whole suite as CI runs it: formatting, lints,
//! then every test against the release binaries just built.
//!
//! Every stage runs even after an earlier one failed, so one run reports all
//! problems; the final line sums them up.
use std::{
    fmt,
    io::{BufRead as _, BufReader},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{cargo::Built, cmd, dist::Dist};

/// Totals of libtest's `test result:` lines, and the tests that failed.
#[derive(Debug, Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub binaries: u64,
    pub failures: Vec<String>,
}

impl Tally {
    /// Feed one line of libtest output.
    pub fn line(&mut self, line: &str) {
        if let Some(result) = line.strip_prefix("test result: ") {
            self.binaries += 1;
            // `ok. 3 passed; 0 failed; 1 ignored; 0 measured; ...`
            for part in result.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(label), Some(count)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(count) = count.parse::<u64>() else {
                    continue;
                };
                match label {
                    "passed" => self.passed += count,
                    "failed" => self.failed += count,
                    "ignored" => self.ignored += count,
                    _ => {}
                }
            }
        } else if let Some(name) = line.strip_prefix("test ").and_then(|rest| rest.strip_suffix(" ... FAILED")) {
            self.failures.push(name.to_owned());
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} ignored in {} test binaries",
            self.passed, self.failed, self.ignored, self.binaries
        )
    }
}

struct Stage {
    name: &'static str,
    ok: bool,
    took: Duration,
    detail: String,
}

/// Run `command` with inherited stdio as one stage.
fn stage(name: &'static str, mut command: Command) -> Stage {
    eprintln!("[test] {name}: {}", cmd::display(&command));
    let start = Instant::now();
    let result = cmd::run(&mut command);
    Stage {
        name,
        ok: result.is_ok(),
        took: start.elapsed(),
        detail: result.err().map(|err| format!("{err:#}")).unwrap_or_default(),
    }
}

/// `cargo test`, with its stdout copied through and tallied.
fn tests(mut command: Command) -> Result<(Stage, Tally)> {
    eprintln!("[test] tests: {}", cmd::display(&command));
    let start = Instant::now();
    let mut child =
        command.stdout(Stdio::piped()).spawn().with_context(|| format!("starting `{}`", cmd::display(&command)))?;
    let stdout = child.stdout.take().context("test stdout not captured")?;
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
        tally.line(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    let ok = status.success() && tally.failed == 0;
    let mut detail = tally.to_string();
    if !status.success() && tally.failed == 0 {
        // A build error or a crashed test binary leaves no `test result`.
        detail.push_str(&format!("; cargo test failed ({status})"));
    }
    Ok((Stage { name: "tests", ok, took: start.elapsed(), detail }, tally))
}

pub fn run(built: &Built, dist: &Dist, test_args: &[String]) -> Result<ExitCode> {
    let ws = &built.workspace;
    let mut stages = Vec::new();
    // Kernel downloads overlap the host stages.
    let vm_args = crate::vmtest::VmTestArgs::default();
    let prefetch = crate::vmtest::prefetch(&vm_args);

    let mut fmt = ws.cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    stages.push(stage("fmt", fmt));

    let mut clippy = ws.cargo();
    clippy.args(["clippy", "--workspace", "--exclude", "ptwatch-ebpf", "--all-targets", "--", "-D", "warnings"]);
    stages.push(stage("clippy", clippy));

    let mut test = ws.cargo();
    test.args(["test", "--profile", crate::cargo::TEST_PROFILE])
        .args(crate::cargo::TEST_PACKAGES)
        .args([
            // Report every failing test binary, not just the first.
            "--no-fail-fast",
            "--",
            // Integration tests load eBPF and measure system-wide state: two
            // at once would see each other's page-table activity.
            "--test-threads=1",
        ])
        .args(test_args)
        .env("PTWATCH_BIN", &built.ptwatch)
        .env("PTWATCH_WORKLOAD_BIN", &built.workload)
        .env("PTWATCH_DIST_DIR", &dist.dir);
    // The other architectures' guest executables build meanwhile, at the
    // lowest priority: the host tests mostly wait.
    let prebuild = crate::vmtest::prebuild(&vm_args);
    let (tests_stage, tally) = tests(test)?;
    stages.push(tests_stage);

    // The plans this host cannot attach, in real kernels.
    eprintln!("[test] vm-test: fentry and kprobe plans in Debian kernels of x86_64, arm64 and riscv64 under qemu");
    let start = Instant::now();
    let _ = prefetch.join();
    let prebuilt = prebuild.join().unwrap_or_default();
    let vm = crate::vmtest::run(built, &vm_args, prebuilt);
    stages.push(Stage {
        name: "vm-test",
        ok: matches!(vm, Ok(true)),
        took: start.elapsed(),
        detail: match vm {
            Ok(true) => "every kernel passed".to_owned(),
            Ok(false) => "some kernel failed (see [vm-test] lines above)".to_owned(),
            Err(err) => format!("{err:#}"),
        },
    });

    let all_ok = stages.iter().all(|s| s.ok);
    eprintln!();
    for stage in &stages {
        eprintln!(
            "[test] {:<6} {:<4} {:>6.1}s  {}",
            stage.name,
            if stage.ok { "ok" } else { "FAIL" },
            stage.took.as_secs_f64(),
            stage.detail
        );
    }
    for name in &tally.failures {
        eprintln!("[test]   failed: {name}");
    }
    let failed: Vec<_> = stages.iter().filter(|s| !s.ok).map(|s| s.name).collect();
    if all_ok {
        println!("xtask test: PASSED (fmt, clippy, {tally})");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("xtask test: FAILED ({} failed; tests: {tally})", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tallies_libtest_output() {
        let mut tally = Tally::default();
        for line in [
            "test cli::tests::durations ... ok",
            "test metrics::exports ... FAILED",
            "test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out; finished in 1.00s",
        ] {
            tally.line(line);
        }
        assert_eq!((tally.passed, tally.failed, tally.ignored, tally.binaries), (7, 1, 2, 2));
        assert_eq!(tally.failures, ["metrics::exports"]);
    }
}
