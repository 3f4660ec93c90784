//! `cargo xtask setup`: make this machine able to build and run ptwatch.
//!
//! Every step checks first and installs only what is missing, so a second
//! run costs a few cheap queries. Each step prints one line; a failure is one
//! line naming the missing prerequisite and how to get it.
use std::{
    env,
    ffi::CStr,
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

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

/// Debian packages: LLVM and its link dependencies to build bpf-linker;
/// `prometheus` for promtool (tests check the exposition format with it);
/// `python3-prometheus-client` for its OpenMetrics parser (tests check
/// OpenMetrics output with it, through `/usr/bin/python3`);
/// `bpftool` (bench reads per-program run times with it);
/// `prometheus-node-exporter` (the deploy end-to-end test scrapes it for the
/// dashboard's RAM-share panels), `systemd-container` (the deploy test boots
/// systemd with `systemd-nspawn` to run the agent under its unit) and
/// `python3-venv` (for [`PYTHON_TOOLS`]).
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "prometheus",
    "python3-prometheus-client",
    "bpftool",
    "prometheus-node-exporter",
    "systemd-container",
    "python3-venv",
];

/// A virtual environment for PyPI tools the tests run, outside the system
/// Python (Debian marks it externally managed).
pub const PYTHON_VENV: &str = "/opt/ptwatch-dev/venv";
/// PyPI packages installed into [`PYTHON_VENV`], pinned:
/// `kubernetes-validate` checks deploy/kubernetes against the Kubernetes
/// OpenAPI schemas, `dockerfile` parses deploy/Containerfile with BuildKit's
/// own parser (both in agent/tests/deploy_static.rs).
const PYTHON_TOOLS: &[&str] = &["kubernetes-validate==1.37.0", "dockerfile==3.4.0"];

fn step(what: &str) {
    eprintln!("[setup] {what}");
}

pub fn run() -> Result<()> {
    require_root()?;
    toolchain()?;
    packages(PACKAGES)?;
    python_tools()?;
    bpf_linker()?;
    MOUNTS.iter().try_for_each(mount_if_missing)
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "must run as root (set-up installs packages and mounts bpffs; the agent loads eBPF): \
             re-run as root, e.g. `sudo -E env \"PATH=$PATH\" cargo xtask ...`"
        );
    }
    step("running as root: yes");
    Ok(())
}

/// What a cross build for `target` needs beyond [`run`]: the Rust standard
/// library for the target (for the toolchain that runs this xtask) and
/// Debian's C cross compiler for `ring`.
pub fn cross(target: Target) -> Result<()> {
    rust_target(target)?;
    packages(target.debian_packages())
}

fn rust_target(target: Target) -> Result<()> {
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

fn toolchain() -> Result<()> {
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

/// Of `packages`, those that dpkg does not report as installed.
fn missing_packages<'a>(packages: &[&'a str]) -> Result<Vec<&'a str>> {
    let out = cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Package} ${Status}\\n"]).args(packages))
        .with_context(|| {
            format!(
                "this set-up supports Debian and Ubuntu only; elsewhere install the equivalents of {} by hand",
                packages.join(" ")
            )
        })?;
    // dpkg-query exits 1 when some package is unknown, and prints only the
    // known ones: absence from stdout means missing.
    let listing = String::from_utf8_lossy(&out.stdout);
    Ok(packages
        .iter()
        .copied()
        .filter(|pkg| {
            !listing.lines().any(|line| {
                line.split_once(' ').is_some_and(|(name, status)| name == *pkg && status == "install ok installed")
            })
        })
        .collect())
}

/// Install those of `packages` that are missing, with apt-get.
fn packages(packages: &[&str]) -> Result<()> {
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        step(&format!("Debian packages {}: present", packages.join(" ")));
        return Ok(());
    }
    let list = missing.join(" ");
    step(&format!("Debian packages {list}: missing, installing with apt-get"));
    let how = format!("install them by hand: apt-get update && apt-get install -y {list}");
    // Wait for another apt run (a parallel set-up) instead of failing at
    // once on apt's and dpkg's locks.
    let wait = ["-o", "DPkg::Lock::Timeout=600"];
    cmd::run(Command::new("apt-get").args(wait).arg("update"))
        .with_context(|| format!("apt-get update failed; {how}"))?;
    cmd::run(
        Command::new("apt-get")
            .args(wait)
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing Debian packages failed; {how}"))?;
    let still = missing_packages(&missing)?;
    if !still.is_empty() {
        bail!("Debian packages still missing after apt-get install: {}; {how}", still.join(" "));
    }
    Ok(())
}

/// [`PYTHON_TOOLS`] in [`PYTHON_VENV`], through the venv's own pip.
fn python_tools() -> Result<()> {
    let venv = Path::new(PYTHON_VENV);
    let python = venv.join("bin/python3");
    let installed = |tool: &str| {
        let (name, version) = tool.split_once("==").unwrap_or((tool, ""));
        cmd::stdout(Command::new(&python).args(["-m", "pip", "show", name]))
            .is_ok_and(|info| info.lines().any(|line| line == format!("Version: {version}")))
    };
    if python.exists() && PYTHON_TOOLS.iter().all(|tool| installed(tool)) {
        step(&format!("Python tools {} in {PYTHON_VENV}: present", PYTHON_TOOLS.join(" ")));
        return Ok(());
    }
    step(&format!("Python tools {}: missing, installing into {PYTHON_VENV} with pip", PYTHON_TOOLS.join(" ")));
    if !python.exists() {
        cmd::run(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(venv))
            .with_context(|| format!("creating the virtual environment {PYTHON_VENV} failed (package python3-venv)"))?;
    }
    cmd::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_TOOLS),
    )
    .with_context(|| format!("pip install {} failed: check network access to PyPI", PYTHON_TOOLS.join(" ")))
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

fn bpf_linker() -> Result<()> {
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

/// The filesystem type mounted at `mount_point`, if any. The last entry of
/// /proc/mounts wins: later mounts hide earlier ones at the same point.
fn mounted_type(mount_point: &str) -> Result<Option<String>> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().rev().find_map(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next()?;
        let point = fields.next()?;
        let fstype = fields.next()?;
        (point == mount_point).then(|| fstype.to_owned())
    }))
}

/// A pseudo-filesystem the agent needs.
struct Mount {
    /// What to call it in messages.
    label: &'static str,
    point: &'static CStr,
    fstype: &'static CStr,
    source: &'static CStr,
    /// Kernel option that provides it, for the error message.
    kernel_option: &'static str,
}

const MOUNTS: [Mount; 2] = [
    // Where aya and bpftool pin objects; some hosts boot with a plain
    // directory there.
    Mount {
        label: "bpffs",
        point: c"/sys/fs/bpf",
        fstype: c"bpf",
        source: c"bpf",
        kernel_option: "CONFIG_BPF_SYSCALL",
    },
    // Tracepoints are found by name through tracefs.
    Mount {
        label: "tracefs",
        point: c"/sys/kernel/tracing",
        fstype: c"tracefs",
        source: c"nodev",
        kernel_option: "CONFIG_TRACING",
    },
];

fn mount_if_missing(mount: &Mount) -> Result<()> {
    let point = mount.point.to_string_lossy();
    let fstype = mount.fstype.to_string_lossy();
    let source = mount.source.to_string_lossy();
    if mounted_type(&point)?.as_deref() == Some(&*fstype) {
        step(&format!("{} at {point}: mounted", mount.label));
        return Ok(());
    }
    step(&format!("{} at {point}: not mounted, mounting (mount -t {fstype} {source} {point})", mount.label));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc =
        unsafe { libc::mount(mount.source.as_ptr(), mount.point.as_ptr(), mount.fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        bail!(
            "mounting {} at {point} failed ({err}): needs a kernel with {} and CAP_SYS_ADMIN; try `mount -t {fstype} {source} {point}` by hand",
            mount.label,
            mount.kernel_option
        );
    }
    Ok(())
}
