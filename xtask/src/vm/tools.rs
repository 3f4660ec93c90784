//! The host tools a VM of each architecture needs, installed when missing:
//! Debian packages (qemu per architecture, kmod, xz …), and for x86's
//! virtme-ng boots virtme-ng from PyPI and the Rust virtiofsd from
//! crates.io. A no-op costing a few milliseconds when everything is there.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context, Result};

use super::{
    arch::{Arch, BootMethod},
    process::run_checked,
};

/// virtme-ng version installed when none is present (the one verified here).
const VIRTME_NG_VERSION: &str = "1.42";

/// Debian packages the host needs for an architecture's VMs: (package, file
/// it provides). libseccomp-dev and libcap-ng-dev are only needed to build
/// virtiofsd; busybox-static goes into virtme-ng's initramfs (it loads the
/// virtio modules a distribution kernel keeps as modules); `file` is how
/// virtme-ng reads a bzImage's version. Initramfs boots take busybox from
/// the guest architecture's own Debian package (see `initramfs`) and need
/// only qemu (whose riscv64 machine brings OpenSBI).
fn apt_tools(arch: Arch) -> &'static [(&'static str, &'static str)] {
    match arch {
        Arch::X86_64 => &[
            ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
            ("kmod", "/usr/sbin/depmod"),
            ("libseccomp-dev", "/usr/include/seccomp.h"),
            ("libcap-ng-dev", "/usr/include/cap-ng.h"),
            ("busybox-static", "/bin/busybox"),
            ("xz-utils", "/usr/bin/xz"),
            ("file", "/usr/bin/file"),
        ],
        Arch::Arm64 => &[("qemu-system-arm", "/usr/bin/qemu-system-aarch64")],
        Arch::Riscv64 => &[
            ("qemu-system-misc", "/usr/bin/qemu-system-riscv64"),
            ("qemu-system-data", "/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin"),
        ],
    }
}

/// Where the virtme-ng tools are; from [`virtme_tools`].
#[derive(Debug, Clone)]
pub struct VirtmeTools {
    pub vng: PathBuf,
    pub virtiofsd: PathBuf,
    pub qemu: PathBuf,
}

/// Install what the VMs of `arches` need, when missing: the apt packages of
/// [`apt_tools`], and for virtme-ng boots virtme-ng from PyPI and
/// virtiofsd from crates.io (a few minutes, once).
pub fn ensure_vm_tools(arches: &[Arch]) -> Result<()> {
    let mut missing: Vec<&str> = arches
        .iter()
        .flat_map(|a| apt_tools(*a).iter())
        .filter(|(pkg, file)| !Path::new(file).exists() || !dpkg_installed(pkg))
        .map(|(pkg, _)| *pkg)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        eprintln!("vm: installing {}", missing.join(" "));
        let apt = |args: &[&str]| {
            let mut cmd = Command::new("apt-get");
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null());
            run_checked(&mut cmd, "apt-get")
        };
        apt(&["-q", "update"])?;
        let mut args = vec!["-q", "-y", "install", "--no-install-recommends"];
        args.extend(&missing);
        apt(&args)?;
    }
    if arches.iter().any(|a| a.boot_method() == BootMethod::Virtme) {
        ensure_virtme()?;
        virtme_tools()?;
    }
    for arch in arches {
        qemu(*arch)?;
    }
    Ok(())
}

fn ensure_virtme() -> Result<()> {
    // A pyenv shim can outlive the package it points to: ask vng itself.
    let vng_works = find_vng().is_some_and(|vng| {
        Command::new(vng).arg("--version").stdin(Stdio::null()).output().is_ok_and(|o| o.status.success())
    });
    if !vng_works {
        eprintln!("vm: installing virtme-ng {VIRTME_NG_VERSION} (pip)");
        let python = find_tool("python3", &["/usr/bin/python3"])?;
        let pip = |extra: &[&str]| {
            run_checked(
                Command::new(&python)
                    .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                    .args(extra)
                    .arg(format!("virtme-ng=={VIRTME_NG_VERSION}"))
                    .env("PIP_ROOT_USER_ACTION", "ignore"),
                "pip install virtme-ng",
            )
        };
        if let Err(e) = pip(&[]) {
            // Debian's own python3 refuses installs outside a venv (PEP 668);
            // a pyenv or other user-installed python does not.
            if !format!("{e:#}").contains("externally-managed-environment") {
                return Err(e);
            }
            pip(&["--break-system-packages"])?;
        }
        find_vng()
            .ok_or_else(|| anyhow!("virtme-ng installed but no `vng` found on PATH nor in python's scripts dir"))?;
    }

    if find_virtiofsd().is_none() {
        eprintln!("vm: building virtiofsd (cargo install virtiofsd --locked; takes a few minutes, once)");
        let cargo = std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["install", "--locked", "--quiet", "virtiofsd"]);
        // Inherit output: it is long-running and users want to see progress.
        let status = cmd.status().context("running cargo install virtiofsd")?;
        if !status.success() {
            bail!("cargo install virtiofsd failed ({status}); it needs libseccomp-dev and libcap-ng-dev");
        }
        find_virtiofsd().ok_or_else(|| anyhow!("virtiofsd installed but not found in ~/.cargo/bin"))?;
    }
    Ok(())
}

/// The qemu system emulator of `arch`, without installing anything.
pub fn qemu(arch: Arch) -> Result<PathBuf> {
    for (pkg, file) in apt_tools(arch) {
        if !Path::new(file).exists() {
            bail!("{file} missing (package {pkg}): run `cargo xtask vm setup`");
        }
    }
    find_tool(arch.qemu(), &[])
}

/// Locate the virtme-ng tools without installing anything.
pub fn virtme_tools() -> Result<VirtmeTools> {
    let vng = find_vng().ok_or_else(|| anyhow!("`vng` (virtme-ng) not found: run `cargo xtask vm setup`"))?;
    let virtiofsd = find_virtiofsd().ok_or_else(|| {
        anyhow!("the Rust virtiofsd is not installed (Debian's C one in /usr/lib/qemu does not work with virtme-ng): run `cargo xtask vm setup`")
    })?;
    Ok(VirtmeTools { vng, virtiofsd, qemu: qemu(Arch::X86_64)? })
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

pub fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default()
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` on PATH, else the first existing fallback.
pub fn find_tool(name: &str, fallbacks: &[&str]) -> Result<PathBuf> {
    path_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| is_executable(p))
        .ok_or_else(|| anyhow!("`{name}` not found on PATH"))
}

fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(|h| PathBuf::from(h).join("bin"))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
}

/// The Rust virtiofsd: PATH (but not qemu's old C daemon), then cargo's bin.
fn find_virtiofsd() -> Option<PathBuf> {
    path_dirs()
        .into_iter()
        .map(|d| d.join("virtiofsd"))
        .chain(cargo_bin_dir().map(|d| d.join("virtiofsd")))
        .filter(|p| !p.starts_with("/usr/lib/qemu") && !p.starts_with("/usr/libexec"))
        .find(|p| is_executable(p))
}

/// `vng` on PATH, else in the scripts directory of python3's site.
fn find_vng() -> Option<PathBuf> {
    if let Some(p) = path_dirs().into_iter().map(|d| d.join("vng")).find(|p| is_executable(p)) {
        return Some(p);
    }
    let out = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = Path::new(&dir).join("vng");
    is_executable(&p).then_some(p)
}
