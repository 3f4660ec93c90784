//! The executables a guest runs, per architecture: `ptwatch`,
//! `ptwatch-workload` and the integration tests of
//! [`super::matrix::guest_test_binaries`].
//!
//! x86_64 guests share the host's root file system, so they run the
//! host's own static build and the test executables the host tests ran.
//! arm64 and riscv64 guests run static builds for their target
//! (`cargo::build_for`, `cargo::Workspace::cargo_for`) and one test
//! executable holding every guest test as a module ([`COMBINED_TEST`]).

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, Result};

use super::matrix::guest_test_binaries;
use crate::{
    cargo::{self, Built},
    cmd, setup,
    target::Target,
    vm::Arch,
};

/// What one architecture's guests run.
#[derive(Debug, Clone)]
pub struct GuestBinaries {
    pub ptwatch: PathBuf,
    pub workload: PathBuf,
    /// Guest test name → where its tests are.
    pub tests: BTreeMap<String, TestExe>,
}

/// The executable a guest test runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestExe {
    pub path: PathBuf,
    /// `Some(name)`: the test's file is module `name` of the combined
    /// [`COMBINED_TEST`] executable, whose test names carry `name::`.
    pub module: Option<String>,
}

impl TestExe {
    /// Its file name: its name in an initramfs guest.
    pub fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// libtest name filters that select `filters` of one guest test (none: all
/// of its tests) in an executable where the test is `module` (`None`: the
/// test's own executable).
pub fn name_filters(module: Option<&str>, filters: &[&str]) -> Vec<String> {
    match module {
        None => filters.iter().map(|f| (*f).to_owned()).collect(),
        Some(module) if filters.is_empty() => vec![format!("{module}::")],
        Some(module) => filters.iter().map(|f| format!("{module}::{f}")).collect(),
    }
}

/// The cargo test target that holds every guest test's file as a module
/// (`agent/tests/guest/main.rs`): what the cross builds make, one link
/// with thin LTO instead of one per test (54 s instead of 129 s of a
/// 2-core machine per architecture).
pub const COMBINED_TEST: &str = "guest";

impl GuestBinaries {
    /// Every file, as (name in an initramfs guest, host path).
    pub fn files(&self) -> Vec<(String, PathBuf)> {
        let mut files =
            vec![("ptwatch".to_owned(), self.ptwatch.clone()), ("ptwatch-workload".to_owned(), self.workload.clone())];
        for exe in self.tests.values() {
            let name = exe.file_name();
            if !files.iter().any(|(n, _)| *n == name) {
                files.push((name, exe.path.clone()));
            }
        }
        files
    }
}

/// The release target whose static build `arch`'s guests run; `None`: the
/// x86_64 guests, which share the host's root file system and run its own
/// build.
pub fn cross_target(arch: Arch) -> Option<Target> {
    match arch {
        Arch::X86_64 => None,
        Arch::Arm64 => Some(Target::Aarch64),
        Arch::Riscv64 => Some(Target::Riscv64),
    }
}

/// The binaries for `arch`'s guests.
pub fn for_arch(arch: Arch, built: &Built) -> Result<GuestBinaries> {
    match cross_target(arch) {
        None => host(built),
        Some(target) => cross(target),
    }
}

/// The host's release build and the guest tests' executables (`cargo test
/// --no-run` in the host tests' profile, which builds them when needed:
/// after the host stage of `cargo xtask test` they are up to date): each
/// test its own executable, as the host tests ran them.
fn host(built: &Built) -> Result<GuestBinaries> {
    let mut cargo = built.workspace.cargo();
    cargo.arg("test").args(["--profile", cargo::TEST_PROFILE]).args(cargo::TEST_PACKAGES);
    for test in guest_test_binaries() {
        cargo.args(["--test", test]);
    }
    let mut executables = test_executables(&no_run(&mut cargo)?)?;
    let mut tests = BTreeMap::new();
    for test in guest_test_binaries() {
        let path = executables.remove(test).with_context(|| format!("cargo built no test binary `{test}`"))?;
        tests.insert(test.to_owned(), TestExe { path, module: None });
    }
    Ok(GuestBinaries { ptwatch: built.ptwatch.clone(), workload: built.workload.clone(), tests })
}

/// Static builds for `target`: its tools, `ptwatch` and the workload, then
/// the guest tests' combined executable ([`COMBINED_TEST`]). These are
/// built in the release profile: its directories are the release build's,
/// never the host tests' (`release-tests`), so this can run while the host
/// tests hold theirs (`super::prebuild`).
pub fn cross(target: Target) -> Result<GuestBinaries> {
    setup::cross(target)?;
    let built = cargo::build_for(target)?;
    let mut cargo = built.workspace.cargo_for(target, "test");
    cargo.args(["--profile", "release", "-p", "ptwatch", "--test", COMBINED_TEST]);
    let path = test_executables(&no_run(&mut cargo)?)?
        .remove(COMBINED_TEST)
        .with_context(|| format!("cargo built no test binary `{COMBINED_TEST}`"))?;
    let tests = guest_test_binaries()
        .into_iter()
        .map(|test| (test.to_owned(), TestExe { path: path.clone(), module: Some(test.to_owned()) }))
        .collect();
    Ok(GuestBinaries { ptwatch: built.ptwatch, workload: built.workload, tests })
}

/// Run `cargo test … --no-run`, returning cargo's JSON messages.
fn no_run(cargo: &mut std::process::Command) -> Result<String> {
    cargo.args(["--no-run", "--message-format=json-render-diagnostics"]);
    cmd::stdout(cargo)
}

/// Test target name → executable, from cargo's JSON messages.
pub fn test_executables(cargo_json: &str) -> Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    for line in cargo_json.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(exe), Some(name)) = (message["executable"].as_str(), message["target"]["name"].as_str()) else {
            continue;
        };
        if message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test")) {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_tests_are_selected_by_module() {
        assert_eq!(name_filters(None, &[]), Vec::<String>::new());
        assert_eq!(name_filters(None, &["reclaim_is_traced"]), ["reclaim_is_traced"]);
        assert_eq!(name_filters(Some("trace"), &[]), ["trace::"]);
        assert_eq!(
            name_filters(Some("trace"), &["reclaim_is_traced", "min_pages"]),
            ["trace::reclaim_is_traced", "trace::min_pages"]
        );
    }

    /// A guest test missing from the combined executable would select no
    /// test in the arm64 and riscv64 guests: a step that passes empty.
    #[test]
    fn the_combined_executable_holds_every_guest_test() {
        let main = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/guest/main.rs");
        let source = std::fs::read_to_string(&main).unwrap_or_else(|err| panic!("{}: {err}", main.display()));
        for test in guest_test_binaries() {
            assert!(
                source.contains(&format!("#[path = \"../{test}.rs\"]\nmod {test};")),
                "{} lacks the module `{test}`",
                main.display()
            );
        }
    }

    #[test]
    fn one_file_for_the_combined_executable() {
        let path = PathBuf::from("/t/guest-1");
        let tests = ["kernels", "trace"]
            .into_iter()
            .map(|t| (t.to_owned(), TestExe { path: path.clone(), module: Some(t.to_owned()) }))
            .collect();
        let bins = GuestBinaries { ptwatch: "/p".into(), workload: "/w".into(), tests };
        let names: Vec<String> = bins.files().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["ptwatch", "ptwatch-workload", "guest-1"]);
    }
}
