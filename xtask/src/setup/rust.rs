//! The Rust side of the set-up: the pinned eBPF toolchain with rust-src,
//! standard libraries of cross targets, bpf-linker built against the same
//! LLVM, and cargo subcommands the packaging runs.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::step;
use crate::{cmd, target::Target};

/// The toolchain that compiles the eBPF crate (agent/build.rs runs
/// `rustup run` with it). Its LLVM major must equal bpf-linker's.
pub const EBPF_TOOLCHAIN: &str = "1.95.0";
/// LLVM of [`EBPF_TOOLCHAIN`], of Debian's `llvm-22-dev`, and hence of the
/// bpf-linker to build: bitcode from a newer LLVM fails to load in an older
/// one ("Invalid record").
const LLVM_MAJOR: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn toolchain() -> Result<()> {
    let list = cmd::stdout(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required to build the eBPF programs: install it from https://rustup.rs")?;
    // Lines look like `1.95.0-x86_64-unknown-linux-gnu (default)`.
    let prefix = format!("{EBPF_TOOLCHAIN}-");
    let installed = list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or_default();
        name == EBPF_TOOLCHAIN || name.starts_with(&prefix)
    });
    if !installed {
        step(&format!(
            "toolchain {EBPF_TOOLCHAIN}: missing, installing (rustup toolchain install {EBPF_TOOLCHAIN} --profile minimal)"
        ));
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            // Installing a toolchain must not replace rustup itself (it
            // downgraded a newer rustup when tried).
            "--no-self-update",
        ]))
        .with_context(|| {
            format!("installing Rust {EBPF_TOOLCHAIN} failed: check network access to static.rust-lang.org")
        })?;
    }

    // `-Z build-std=core` compiles core for the BPF target from source.
    let components =
        cmd::stdout(Command::new("rustup").args(["component", "list", "--toolchain", EBPF_TOOLCHAIN, "--installed"]))?;
    let has_src = components.lines().any(|line| line.trim() == "rust-src");
    if has_src {
        step(&format!("toolchain {EBPF_TOOLCHAIN} with rust-src: present"));
    } else {
        step(&format!(
            "toolchain {EBPF_TOOLCHAIN}: rust-src missing, adding (rustup component add rust-src --toolchain {EBPF_TOOLCHAIN})"
        ));
        cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", EBPF_TOOLCHAIN]))
            .context("adding rust-src failed: check network access to static.rust-lang.org")?;
    }
    Ok(())
}

pub fn target(target: Target) -> Result<()> {
    let triple = target.triple();
    // Without `--toolchain`: the toolchain cargo resolves here (rustup
    // overrides, RUSTUP_TOOLCHAIN) is the one that builds the agent.
    let installed = cmd::stdout(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is required to add cross-compilation targets: install it from https://rustup.rs")?;
    if installed.lines().any(|line| line.trim() == triple) {
        step(&format!("Rust target {triple}: present"));
        return Ok(());
    }
    step(&format!("Rust target {triple}: missing, adding (rustup target add {triple})"));
    cmd::run(Command::new("rustup").args(["target", "add", triple])).with_context(|| {
        format!("adding the Rust target {triple} failed: check network access to static.rust-lang.org")
    })
}

/// An executable named `name` in a PATH directory.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
        fs::metadata(candidate).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

/// The LLVM version bpf-linker is linked against, e.g. `22.1.8`.
///
/// `bpf-linker --version` prints only its own version; LLVM's command-line
/// parser answers `--version` itself (and exits) when handed it through
/// `--llvm-args`, before any input is read.
fn linker_llvm_version(linker: &Path) -> Result<String> {
    let scratch = env::temp_dir().join(format!("xtask-bpf-linker-probe-{}.o", std::process::id()));
    let out = cmd::output(Command::new(linker).arg("--llvm-args=--version").arg("-o").arg(&scratch).arg("/dev/null"))?;
    // Nothing should be written; clean up in case a future version does.
    let _ = fs::remove_file(&scratch);
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    text.split_once("LLVM version ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(str::to_owned)
        .with_context(|| format!("{} did not report its LLVM version (got {:?})", linker.display(), text.trim()))
}

fn llvm_major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// What is wrong with the bpf-linker on PATH, or its description if nothing.
fn check_bpf_linker() -> std::result::Result<String, String> {
    let Some(linker) = find_on_path("bpf-linker") else {
        return Err("not found on PATH".to_owned());
    };
    let version = cmd::stdout(Command::new(&linker).arg("--version"))
        .map(|v| v.trim().to_owned())
        .map_err(|err| format!("{} --version failed: {err:#}", linker.display()))?;
    let llvm = linker_llvm_version(&linker).map_err(|err| format!("{err:#}"))?;
    if llvm_major(&llvm) == Some(LLVM_MAJOR) {
        Ok(format!("{version} (LLVM {llvm}) at {}", linker.display()))
    } else {
        Err(format!("{} is built with LLVM {llvm}, not {LLVM_MAJOR}", linker.display()))
    }
}

pub fn bpf_linker() -> Result<()> {
    let problem = match check_bpf_linker() {
        Ok(found) => {
            step(&format!("bpf-linker: {found}"));
            return Ok(());
        }
        Err(problem) => problem,
    };
    step(&format!(
        "bpf-linker: {problem}; installing {BPF_LINKER_VERSION} for LLVM {LLVM_MAJOR} with cargo install (takes a few minutes)"
    ));
    let install = |locked: bool| {
        let mut cargo = Command::new("rustup");
        cargo
            .args(["run", EBPF_TOOLCHAIN, "cargo", "install", "bpf-linker"])
            .args(["--version", BPF_LINKER_VERSION])
            .args(locked.then_some("--locked"))
            // Replaces a bpf-linker built against another LLVM.
            .arg("--force")
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{LLVM_MAJOR}"))
            // Without LLVM_PREFIX bpf-linker's build.rs takes the first
            // llvm-config on PATH (Debian's default LLVM 14) and fails to
            // link -lLLVM; llvm-sys reads its own variable.
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
        cmd::run(&mut cargo)
    };
    if let Err(err) = install(true) {
        // A yanked or missing dependency version breaks --locked only.
        step(&format!("bpf-linker: install with --locked failed ({err:#}); retrying without --locked"));
        install(false).with_context(|| {
            format!(
                "installing bpf-linker failed: needs llvm-{LLVM_MAJOR}-dev, libpolly-{LLVM_MAJOR}-dev, libzstd-dev, zlib1g-dev and a C compiler; see the cargo output above"
            )
        })?;
    }
    match check_bpf_linker() {
        Ok(found) => {
            step(&format!("bpf-linker: installed {found}"));
            Ok(())
        }
        Err(problem) => bail!(
            "bpf-linker still unusable after installing it: {problem}; is another bpf-linker earlier on PATH than ~/.cargo/bin?"
        ),
    }
}

/// A cargo subcommand installed from crates.io with `cargo install`.
pub struct CargoTool {
    /// The crate, whose binary `cargo-<name>` cargo runs as `cargo <name>`.
    pub krate: &'static str,
    pub version: &'static str,
}

/// cargo-deb builds the .deb packages of `cargo xtask dist`; pinned, since
/// its generated maintainer scripts and control fields are part of what the
/// tests check.
pub const CARGO_DEB: CargoTool = CargoTool { krate: "cargo-deb", version: "3.8.0" };

/// Install `tool` unless `<crate> --version` already reports its version.
pub fn cargo_tool(tool: &CargoTool) -> Result<()> {
    let CargoTool { krate, version } = tool;
    // `cargo-deb --version` prints `cargo-deb 3.8.0`.
    let installed = cmd::stdout(Command::new(krate).arg("--version"))
        .is_ok_and(|out| out.split_whitespace().nth(1) == Some(*version));
    if installed {
        step(&format!("{krate} {version}: present"));
        return Ok(());
    }
    step(&format!("{krate} {version}: missing, installing with cargo install (takes a few minutes)"));
    cmd::run(Command::new("cargo").args(["install", krate, "--version", version, "--locked", "--force"]))
        .with_context(|| format!("installing {krate} {version} failed: check network access to crates.io"))
}
