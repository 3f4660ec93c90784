//! Builds the eBPF object (crate `ebpf/`) for the BPF target and places it in
//! `OUT_DIR/ptwatch`, where `src/probes/object.rs` embeds it.
//!
//! The object is built for the architecture the agent is compiled for, not
//! the one cargo runs on: aya-ebpf picks the layout of `pt_regs` (how a
//! kprobe reads function arguments) from `cfg(bpf_target_arch)`, and without
//! it falls back to the build host, so an aarch64 agent cross-built on x86_64
//! would read x86 registers in every kprobe. `OUT_DIR` is per target triple,
//! so each target gets its own object and a change of target rebuilds it.
//!
//! Without bpf-linker the build writes an empty stub instead, so that
//! `cargo check` and `cargo clippy` work on a machine that has never run the
//! set-up; the resulting binary says so and refuses to load probes.
//! `PTWATCH_REQUIRE_EBPF=1` (set by `cargo xtask`) turns a missing linker into
//! a build error instead.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// The toolchain that builds the programs: its LLVM must match the one
/// bpf-linker is linked against (LLVM 22 on this project's machines).
const EBPF_TOOLCHAIN: &str = "1.95.0";
const EBPF_TARGET: &str = "bpfel-unknown-none";

/// The architectures ptwatch's kernel programs are written for: the kprobe
/// argument registers and the page-table bits differ between them.
#[derive(Clone, Copy, Debug)]
enum BpfTargetArch {
    X86_64,
    Aarch64,
    Riscv64,
}

impl BpfTargetArch {
    /// From cargo's `CARGO_CFG_TARGET_ARCH` of the agent's target.
    fn from_target_arch(arch: &str) -> Option<Self> {
        match arch {
            "x86_64" => Some(Self::X86_64),
            "aarch64" => Some(Self::Aarch64),
            "riscv64" => Some(Self::Riscv64),
            _ => None,
        }
    }

    /// The value of aya-ebpf's `cfg(bpf_target_arch)`.
    fn cfg_value(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
            Self::Riscv64 => "riscv64",
        }
    }
}

/// Why no real object is built.
enum StubReason {
    Requested,
    NoLinker,
    UnsupportedArch(String),
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PTWATCH_REQUIRE_EBPF");
    println!("cargo:rerun-if-env-changed=PTWATCH_EBPF_STUB");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("ptwatch");

    let require = env::var_os("PTWATCH_REQUIRE_EBPF").is_some_and(|v| v == "1");
    let force_stub = env::var_os("PTWATCH_EBPF_STUB").is_some_and(|v| v == "1");
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    if target_arch == "x86_64" && env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|libc| libc == "musl") {
        // musl's memcpy is slow on short copies: the binary's calls go to
        // `__wrap_memcpy` in src/main.rs (src/memcpy.rs says why).
        println!("cargo:rustc-link-arg-bins=-Wl,--wrap=memcpy");
    }
    let plan = if force_stub {
        Err(StubReason::Requested)
    } else {
        match (BpfTargetArch::from_target_arch(&target_arch), which::which("bpf-linker")) {
            (None, _) => Err(StubReason::UnsupportedArch(target_arch)),
            (Some(_), Err(_)) => Err(StubReason::NoLinker),
            (Some(arch), Ok(linker)) => Ok((arch, linker)),
        }
    };
    let (arch, linker) = match plan {
        Ok(found) => found,
        Err(reason) => return write_stub(&object, &reason, require),
    };

    let workspace = workspace_root()?;
    let ebpf_dir = workspace.join("ebpf");
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed={}", workspace.join("common").display());
    println!("cargo:rerun-if-changed={}", linker.display());

    // A separate target dir: cargo holds a lock on the outer one. Named by
    // architecture and by checkout so that an object can never be taken for
    // another's: two checkouts built into one CARGO_TARGET_DIR share this
    // OUT_DIR, and the nested build would find the other checkout's object
    // fresh (its fingerprints name the other checkout's unchanged files).
    let target_dir = out_dir.join(format!("ebpf-target-{}-{:016x}", arch.cfg_value(), checkout_id(&workspace)));
    let rustflags = [
        // Debug info feeds the object's BTF.
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        // Read by aya-ebpf (and its build script, which then emits nothing
        // of its own) to pick the target's `pt_regs` layout.
        "--cfg".to_owned(),
        format!("bpf_target_arch=\"{}\"", arch.cfg_value()),
    ];
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", EBPF_TOOLCHAIN, "cargo", "build", "--package", "ptwatch-ebpf", "--bin", "ptwatch"])
        .args(["--release", "--target", EBPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&workspace)
        // `-Z build-std` on a stable toolchain.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));
    // The outer build's compiler settings belong to the agent's toolchain and
    // target; aya-build's own override must not contradict the cfg above.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "AYA_BPF_TARGET_ARCH",
    ] {
        cargo.env_remove(key);
    }
    let output = cargo.output().context("running `rustup run` to build the eBPF programs (is rustup installed?)")?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the eBPF programs failed (see the warnings above); `cargo xtask setup` installs what they need"
        );
    }
    let built = target_dir.join(EBPF_TARGET).join("release").join("ptwatch");
    fs::copy(&built, &object).with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

/// A stable number for the checkout at `workspace` (std's `DefaultHasher`
/// with its fixed keys: the same path gives the same directory across
/// builds).
fn checkout_id(workspace: &Path) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    workspace.hash(&mut hasher);
    hasher.finish()
}

/// An empty object (the agent then refuses to load probes), or an error
/// when the caller asked for the real one.
fn write_stub(object: &Path, reason: &StubReason, require: bool) -> anyhow::Result<()> {
    let why = match (reason, require) {
        (StubReason::Requested, _) => "PTWATCH_EBPF_STUB=1".to_owned(),
        (StubReason::NoLinker, true) => {
            bail!("bpf-linker not found in PATH; run `cargo xtask setup` (or `cargo xtask run`) to install it")
        }
        (StubReason::NoLinker, false) => "bpf-linker not found".to_owned(),
        (StubReason::UnsupportedArch(arch), true) => {
            bail!("ptwatch's eBPF programs support the target architectures x86_64, aarch64 and riscv64, not {arch}")
        }
        (StubReason::UnsupportedArch(arch), false) => format!("target architecture {arch} is not supported"),
    };
    println!(
        "cargo:warning=ptwatch: eBPF object not built ({why}); the binary can only run commands that need no probes. Run `cargo xtask run` for a full build."
    );
    fs::write(object, []).context("writing eBPF stub")
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    manifest_dir.parent().map(PathBuf::from).context("agent crate has no parent directory")
}
