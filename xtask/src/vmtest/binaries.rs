//! The executables a guest runs, per architecture: `ptwatch`,
//! `ptwatch-workload` and the integration-test binaries of
//! [`super::matrix::guest_test_binaries`].
//!
//! x86_64 guests share the host's root file system, so they run the host's
//! own release build. arm64 and riscv64 guests need static builds for
//! their target, made by the project's one cross-build (`cross:` commits,
//! `cargo::Workspace::cargo_for`); until that is merged here, a directory
//! of such binaries is taken from `PTWATCH_VM_BINARIES_<ARCH>` and a
//! missing one fails that architecture's kernels with a message.

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
    /// Test target name → executable.
    pub tests: BTreeMap<String, PathBuf>,
}

impl GuestBinaries {
    /// Every file, as (name in an initramfs guest, host path).
    pub fn files(&self) -> Vec<(String, PathBuf)> {
        let mut files =
            vec![("ptwatch".to_owned(), self.ptwatch.clone()), ("ptwatch-workload".to_owned(), self.workload.clone())];
        files.extend(self.tests.iter().map(|(name, path)| (name.clone(), path.clone())));
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
/// after the host stage of `cargo xtask test` they are up to date).
fn host(built: &Built) -> Result<GuestBinaries> {
    let tests = guest_tests(built.workspace.cargo().arg("test"), cargo::TEST_PROFILE, &cargo::TEST_PACKAGES)?;
    Ok(GuestBinaries { ptwatch: built.ptwatch.clone(), workload: built.workload.clone(), tests })
}

/// Static builds for `target`: its tools, `ptwatch` and the workload, then
/// the guest tests' executables. These are built in the release profile:
/// its directories are the release build's, never the host tests'
/// (`release-tests`), so this can run while the host tests hold theirs
/// (`super::prebuild`). It costs the same as `release-tests` would (the
/// tests' dev-dependencies rebuild tokio and what uses it either way:
/// 300 s per target on 2 cores).
pub fn cross(target: Target) -> Result<GuestBinaries> {
    setup::cross(target)?;
    let built = cargo::build_for(target)?;
    let tests = guest_tests(&mut built.workspace.cargo_for(target, "test"), "release", &["-p", "ptwatch"])?;
    Ok(GuestBinaries { ptwatch: built.ptwatch, workload: built.workload, tests })
}

/// `cargo test --profile <profile> <packages> --no-run --test <each guest
/// test>` → test name → executable.
fn guest_tests(
    cargo: &mut std::process::Command,
    profile: &str,
    packages: &[&str],
) -> Result<BTreeMap<String, PathBuf>> {
    cargo.args(["--profile", profile]).args(packages);
    cargo.args(["--no-run", "--message-format=json-render-diagnostics"]);
    for test in guest_test_binaries() {
        cargo.args(["--test", test]);
    }
    test_executables(&cmd::stdout(cargo)?)
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
    let mut wanted = BTreeMap::new();
    for test in guest_test_binaries() {
        let exe = found.remove(test).with_context(|| format!("cargo built no test binary `{test}`"))?;
        wanted.insert(test.to_owned(), exe);
    }
    Ok(wanted)
}
