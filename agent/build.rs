//! Builds the eBPF object (crate `ebpf/`) for the BPF target and places it in
//! `OUT_DIR/ptwatch`, where `src/probes/object.rs` embeds it.
//!
//! Without bpf-linker the build writes an empty stub instead, so that
//! `cargo check` and `cargo clippy` work on a machine that has never run the
//! set-up; the resulting binary says so and refuses to load probes.
//! `PTWATCH_REQUIRE_EBPF=1` (set by `cargo xtask`) turns a missing linker into
//! a build error instead.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

/// The toolchain that builds the programs: its LLVM must match the one
/// bpf-linker is linked against (LLVM 22 on this project's machines).
const EBPF_TOOLCHAIN: &str = "1.95.0";
const EBPF_TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PTWATCH_REQUIRE_EBPF");
    println!("cargo:rerun-if-env-changed=PTWATCH_EBPF_STUB");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("ptwatch");

    let require = env::var_os("PTWATCH_REQUIRE_EBPF").is_some_and(|v| v == "1");
    let force_stub = env::var_os("PTWATCH_EBPF_STUB").is_some_and(|v| v == "1");
    let linker = which::which("bpf-linker");
    if force_stub || linker.is_err() {
        if require {
            bail!("bpf-linker not found in PATH; run `cargo xtask setup` (or `cargo xtask run`) to install it");
        }
        println!(
            "cargo:warning=ptwatch: eBPF object not built ({}); the binary can only run commands that need no probes. Run `cargo xtask run` for a full build.",
            if force_stub { "PTWATCH_EBPF_STUB=1" } else { "bpf-linker not found" }
        );
        fs::write(&object, []).context("writing eBPF stub")?;
        return Ok(());
    }

    let workspace = workspace_root()?;
    let ebpf_dir = workspace.join("ebpf");
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed={}", workspace.join("common").display());
    if let Ok(linker) = &linker {
        println!("cargo:rerun-if-changed={}", linker.display());
    }

    // A separate target dir: cargo holds a lock on the outer one.
    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", EBPF_TOOLCHAIN, "cargo", "build", "--package", "ptwatch-ebpf", "--bin", "ptwatch"])
        .args(["--release", "--target", EBPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&workspace)
        // `-Z build-std` on a stable toolchain.
        .env("RUSTC_BOOTSTRAP", "1")
        // BPF ISA v3 (kernel 5.1+): 32-bit sub-registers and jumps give the
        // verifier smaller programs. Debug info feeds the object's BTF.
        .env("CARGO_ENCODED_RUSTFLAGS", ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"));
    // The outer build's compiler settings belong to the host toolchain.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET"] {
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

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    manifest_dir.parent().map(PathBuf::from).context("agent crate has no parent directory")
}
