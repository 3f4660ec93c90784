//! Building the workspace with the real eBPF object, for the host or for a
//! release target, and finding what was built.
use std::{
    env,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{ensure, Context as _, Result};
use serde::Deserialize;

use crate::{
    cmd,
    target::{elf, Target},
};

/// Where the workspace and its build output are.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
    /// The version of the `ptwatch` package: the version of every release
    /// artifact.
    pub version: String,
}

#[derive(Deserialize)]
struct Metadata {
    workspace_root: PathBuf,
    target_directory: PathBuf,
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    version: String,
}

impl Workspace {
    /// Asks cargo, so that CARGO_TARGET_DIR and `build.target-dir` in any
    /// config are honoured.
    pub fn locate() -> Result<Self> {
        let json = cmd::stdout(
            cargo().args(["metadata", "--format-version", "1", "--no-deps", "--offline"]).current_dir(manifest_root()),
        )?;
        let meta: Metadata = serde_json::from_str(&json).context("parsing `cargo metadata` output")?;
        let version = meta
            .packages
            .into_iter()
            .find(|package| package.name == "ptwatch")
            .map(|package| package.version)
            .context("`cargo metadata` lists no package `ptwatch`")?;
        Ok(Self { root: meta.workspace_root, target: meta.target_directory, version })
    }

    /// A cargo command in the workspace root that must build the real eBPF
    /// object: agent/build.rs fails instead of writing its stub.
    pub fn cargo(&self) -> Command {
        let mut cargo = cargo();
        cargo.current_dir(&self.root).env("PTWATCH_REQUIRE_EBPF", "1");
        cargo
    }

    /// `cargo <subcommand> --target <triple>` with the target's cross
    /// compiler, linker and flags, building the real eBPF object for the
    /// target's architecture; append the subcommand's other arguments.
    /// `setup::cross` must have installed the target's tools first.
    pub fn cargo_for(&self, target: Target, subcommand: &str) -> Command {
        let mut cargo = self.cargo();
        cargo.arg(subcommand).args(["--target", target.triple()]).envs(target.cargo_env());
        cargo
    }

    /// Where `--release` output for `target` lands (`None`: the host's
    /// own build, without `--target`).
    pub fn release_dir(&self, target: Option<Target>) -> PathBuf {
        match target {
            Some(target) => self.target.join(target.triple()).join("release"),
            None => self.target.join("release"),
        }
    }
}

/// The cargo that runs this xtask (same toolchain), else the one on PATH.
fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// The workspace root as compiled in: xtask lives one level below it. Only a
/// starting point for `cargo metadata`.
fn manifest_root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest)
}

/// Release binaries with the eBPF object embedded.
#[derive(Debug)]
pub struct Built {
    pub workspace: Workspace,
    pub ptwatch: PathBuf,
    pub workload: PathBuf,
}

/// The profile of the host's test executables (`Cargo.toml`): release
/// without LTO. The binaries they test are the release ones.
pub const TEST_PROFILE: &str = "release-tests";

/// The packages of every host test build. Each names the same set, so that
/// cargo unifies the same features and one build serves them all: with
/// `-p ptwatch` alone, the x86_64 guests' build recompiled ring, rustls,
/// rcgen and the agent after the host tests (69 s in a CI run).
pub const TEST_PACKAGES: [&str; 3] = ["--workspace", "--exclude", "ptwatch-ebpf"];

/// The release binaries built by this project.
const PACKAGES: [&str; 4] = ["-p", "ptwatch", "-p", "ptwatch-workload"];

/// The host's own release build (`target/release`), what tests and `run`
/// use.
pub fn build() -> Result<Built> {
    let workspace = Workspace::locate()?;
    let mut cargo = workspace.cargo();
    cargo.args(["build", "--release"]).args(PACKAGES);
    finish(cargo, workspace, None)
}

/// What the tests run: the static build of this machine's target, which
/// the tarballs, packages and image carry; the host's release build where
/// no release target runs natively.
pub fn build_shipped() -> Result<Built> {
    match Target::host() {
        Some(target) => build_for(target),
        None => build(),
    }
}

/// A static release build for `target` (`target/<triple>/release`),
/// checked to be a static executable of the target's machine.
pub fn build_for(target: Target) -> Result<Built> {
    let mut built = build_targets(&[target])?;
    built.pop().context("a build of one target built nothing")
}

/// Static release builds for `targets`, in one cargo invocation, each
/// checked like [`build_for`]'s. One invocation lets cargo build the targets
/// side by side: the agent crate's compile and link are mostly serial, so
/// three targets built in turn left one of two cores idle for minutes.
pub fn build_targets(targets: &[Target]) -> Result<Vec<Built>> {
    let workspace = Workspace::locate()?;
    let mut cargo = workspace.cargo();
    cargo.args(["build", "--release"]).args(PACKAGES);
    for &target in targets {
        cargo.args(["--target", target.triple()]).envs(target.cargo_env());
    }
    run_build(cargo)?;
    let mut all = Vec::new();
    for &target in targets {
        let built = located(workspace.clone(), Some(target))?;
        for bin in [&built.ptwatch, &built.workload] {
            let exe = elf::require_static(bin, target.elf_machine())?;
            eprintln!("[build] {}: {} executable, {}", bin.display(), exe.machine, exe.linking);
        }
        if let Some(symbol) = target.required_symbol() {
            let bytes =
                std::fs::read(&built.ptwatch).with_context(|| format!("reading {}", built.ptwatch.display()))?;
            ensure!(
                elf::defines_symbol(&bytes, symbol)?,
                "{} does not define `{symbol}`: the static build's memcpy is musl's again (agent/build.rs, agent/src/memcpy.rs)",
                built.ptwatch.display()
            );
        }
        if Target::host() == Some(target) {
            // Static linking can fail at run time only (a static glibc
            // calling into NSS, a bad interpreter): run it once where it can
            // run.
            let version = cmd::stdout(Command::new(&built.ptwatch).arg("--version"))?;
            eprintln!("[build] runs here: {}", version.trim());
        }
        all.push(built);
    }
    Ok(all)
}

fn finish(cargo: Command, workspace: Workspace, target: Option<Target>) -> Result<Built> {
    run_build(cargo)?;
    located(workspace, target)
}

fn run_build(mut cargo: Command) -> Result<()> {
    eprintln!("[build] {} (PTWATCH_REQUIRE_EBPF=1)", cmd::display(&cargo));
    cmd::run(&mut cargo).context("building the release binaries failed (see cargo's output above)")
}

/// The binaries a release build for `target` wrote.
fn located(workspace: Workspace, target: Option<Target>) -> Result<Built> {
    let release = workspace.release_dir(target);
    let built = Built { ptwatch: release.join("ptwatch"), workload: release.join("ptwatch-workload"), workspace };
    for bin in [&built.ptwatch, &built.workload] {
        anyhow::ensure!(bin.is_file(), "cargo reported success but {} does not exist", bin.display());
    }
    eprintln!("[build] built {} and {}", built.ptwatch.display(), built.workload.display());
    Ok(built)
}

/// Replace this process with `binary args`: signals (Ctrl-C) then reach the
/// agent directly, and its exit status becomes the command's.
pub fn exec(binary: &Path, args: &[OsString]) -> Result<ExitCode> {
    let mut command = Command::new(binary);
    command.args(args);
    eprintln!("[run] {}", cmd::display(&command));
    let err = command.exec();
    Err(err).with_context(|| format!("executing {}", binary.display()))
}
