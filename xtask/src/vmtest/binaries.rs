//! The executables a guest runs, per architecture: `ptwatch`,
//! `ptwatch-workload` and the integration-test binaries of
//! [`super::matrix::GUEST_TESTS`].
//!
//! x86_64 guests share the host's root file system, so they run the host's
//! own release build. arm64 and riscv64 guests need static builds for
//! their target, made by the project's one cross-build (`cross:` commits,
//! `cargo::Workspace::cargo_for`); until that is merged here, a directory
//! of such binaries is taken from `PTWATCH_VM_BINARIES_<ARCH>` and a
//! missing one fails that architecture's kernels with a message.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::matrix::GUEST_TESTS;
use crate::{cargo::Built, cmd, vm::Arch};

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

/// The binaries for `arch`'s guests.
pub fn for_arch(arch: Arch, built: &Built) -> Result<GuestBinaries> {
    match arch {
        Arch::X86_64 => host(built),
        Arch::Arm64 | Arch::Riscv64 => prebuilt(arch),
    }
}

/// The host's release build and the guest tests' executables (`cargo test
/// --no-run`, which builds them when needed: after the host stage of
/// `cargo xtask test` they are up to date).
fn host(built: &Built) -> Result<GuestBinaries> {
    let mut cargo = built.workspace.cargo();
    cargo.args(["test", "--release", "-p", "ptwatch", "--no-run", "--message-format=json-render-diagnostics"]);
    for test in GUEST_TESTS {
        cargo.args(["--test", test.name]);
    }
    let json = cmd::stdout(&mut cargo)?;
    let tests = test_executables(&json)?;
    Ok(GuestBinaries { ptwatch: built.ptwatch.clone(), workload: built.workload.clone(), tests })
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
    for test in GUEST_TESTS {
        let exe = found.remove(test.name).with_context(|| format!("cargo built no test binary `{}`", test.name))?;
        wanted.insert(test.name.to_owned(), exe);
    }
    Ok(wanted)
}

/// `PTWATCH_VM_BINARIES_<ARCH>`: a directory holding `ptwatch`,
/// `ptwatch-workload` and one executable per guest test, named after it.
fn prebuilt(arch: Arch) -> Result<GuestBinaries> {
    let var = format!("PTWATCH_VM_BINARIES_{}", arch.name().to_ascii_uppercase());
    let Some(dir) = std::env::var_os(&var).map(PathBuf::from) else {
        bail!(
            "no {arch} build of ptwatch and its tests: the cross build (`cross:` commits) is not wired into vm-test yet; \
             set {var} to a directory with static {arch} `ptwatch`, `ptwatch-workload` and {} executables",
            GUEST_TESTS.iter().map(|t| format!("`{}`", t.name)).collect::<Vec<_>>().join(", ")
        );
    };
    let file = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        require_file(&path).with_context(|| format!("{var}={}", dir.display()))?;
        Ok(path)
    };
    let mut tests = BTreeMap::new();
    for test in GUEST_TESTS {
        tests.insert(test.name.to_owned(), file(test.name)?);
    }
    Ok(GuestBinaries { ptwatch: file("ptwatch")?, workload: file("ptwatch-workload")?, tests })
}

fn require_file(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("{} does not exist", path.display());
    }
    Ok(())
}
