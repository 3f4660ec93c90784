//! `cargo xtask setup`: make this machine able to do what a command needs,
//! and nothing more: running the agent needs the build tools; packaging needs
//! cross compilers, cargo-deb, lintian and buildah; the tests need the
//! runtimes each artifact is tested in (systemd-nspawn, podman, Prometheus…).
//!
//! Every step checks first and installs only what is missing, so a second
//! run costs a few cheap queries. Each step prints one line; a failure is one
//! line naming the missing prerequisite and how to get it.
use anyhow::{bail, Result};

use crate::target::Target;

mod apt;
mod mounts;
mod python;
mod rust;

/// What the set-up prepares for. Each purpose includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Purpose {
    /// Build and run the agent on this machine (`cargo xtask run`, `build`).
    Run,
    /// Build the release artifacts for every target (`cargo xtask dist`).
    Dist,
    /// Run every test, which also tests each artifact in its runtime
    /// (`cargo xtask test`, `bench`, `vm-test`).
    Test,
}

/// Debian packages for [`Purpose::Run`]: LLVM 22 and its link dependencies,
/// to build bpf-linker.
const RUN_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];

/// Debian packages for [`Purpose::Dist`], besides each target's cross
/// compiler: `lintian` checks every .deb, `buildah` builds the image.
const DIST_PACKAGES: &[&str] = &["lintian", "buildah"];

/// Debian packages for [`Purpose::Test`]:
/// `prometheus` for promtool (tests check the exposition format with it)
/// and the server the deploy test scrapes with; `python3-prometheus-client`
/// for its OpenMetrics parser (through `/usr/bin/python3`); `bpftool` (bench
/// and tests read eBPF programs and their run times with it);
/// `prometheus-node-exporter` (the dashboard's RAM-share panels);
/// `systemd-container` (systemd-nspawn boots systemd for the unit and the
/// .deb); `podman` and `runc` (run the image); `python3-venv` (for
/// [`TEST_PYTHON_TOOLS`]); `cpio` (xtask's own test reads the guests'
/// initramfs back with cpio(1); a fresh Debian machine lacks it).
const TEST_PACKAGES: &[&str] = &[
    "prometheus",
    "python3-prometheus-client",
    "bpftool",
    "prometheus-node-exporter",
    "systemd-container",
    "podman",
    "runc",
    "python3-venv",
    "cpio",
];

/// PyPI packages installed into [`python::PYTHON_VENV`], pinned:
/// `kubernetes-validate` checks the rendered Kubernetes manifests (the
/// kustomization and the Helm chart) against the Kubernetes OpenAPI schemas,
/// `dockerfile` parses deploy/Containerfile with BuildKit's own parser,
/// `helm-python-sdk` lints and renders the Helm chart with Helm's own Go
/// code (no helm binary is packaged anywhere reachable), `jsonschema`
/// validates the dashboard against the vendored Grafana schemas, which
/// `grafana-foundation-sdk` (Grafana 11.6's kinds) regenerates
/// (deploy/grafana/schemas/generate.py).
const TEST_PYTHON_TOOLS: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "dockerfile==3.4.0",
    "helm-python-sdk==0.2.2",
    "jsonschema==4.26.0",
    "grafana-foundation-sdk==1769699379!11.6.0",
];

fn step(what: &str) {
    eprintln!("[setup] {what}");
}

/// The set-up of `cargo xtask run`: build and run the agent here.
pub fn run() -> Result<()> {
    run_for(Purpose::Run)
}

pub fn run_for(purpose: Purpose) -> Result<()> {
    require_root()?;
    rust::toolchain()?;
    apt::install(RUN_PACKAGES)?;
    rust::bpf_linker()?;
    mounts::MOUNTS.iter().try_for_each(mounts::mount_if_missing)?;
    if purpose >= Purpose::Dist {
        Target::ALL.into_iter().try_for_each(cross)?;
        apt::install(DIST_PACKAGES)?;
        rust::cargo_tool(&rust::CARGO_DEB)?;
    }
    if purpose >= Purpose::Test {
        apt::install(TEST_PACKAGES)?;
        python::install(TEST_PYTHON_TOOLS)?;
    }
    Ok(())
}

/// What a cross build for `target` needs beyond [`run`]: the Rust standard
/// library for the target (for the toolchain that runs this xtask) and
/// Debian's C cross compiler for `ring`.
pub fn cross(target: Target) -> Result<()> {
    rust::target(target)?;
    apt::install(target.debian_packages())
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
