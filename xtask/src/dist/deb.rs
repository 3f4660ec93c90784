//! `ptwatch_<version>-1_<arch>.deb` through cargo-deb, from the binaries
//! already built (`--no-build`), configured by `[package.metadata.deb]` in
//! agent/Cargo.toml; then lintian, which must find no error.
use std::{fs, process::Command};

use anyhow::{ensure, Context as _, Result};

use super::Release;
use crate::{cmd, target::Target};

/// The Debian revision of every package (cargo-deb's default).
const REVISION: &str = "1";
const CHANGELOG: &str = "deploy/debian/changelog";

/// The newest entry of the Debian changelog must be this version: dpkg
/// shows it, and lintian compares it with the package's.
pub fn check_changelog(release: &Release<'_>) -> Result<()> {
    let path = release.workspace.root.join(CHANGELOG);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let expected = format!("ptwatch ({}-{REVISION}) ", release.version);
    ensure!(
        text.starts_with(&expected),
        "{CHANGELOG} must start with an entry `{expected}…` for this version; add one (dch -v {}-{REVISION})",
        release.version
    );
    Ok(())
}

pub fn file_name(version: &str, target: Target) -> String {
    format!("ptwatch_{version}-{REVISION}_{}.deb", target.debian_arch())
}

pub fn write(release: &Release<'_>, target: Target) -> Result<()> {
    let triple = target.triple();
    let deb = release.out.join(file_name(release.version, target));
    let mut cargo_deb = Command::new("cargo");
    cargo_deb
        .args(["deb", "-p", "ptwatch", "--no-build", "--locked", "--target", triple, "--deb-revision", REVISION])
        .arg("--output")
        .arg(&deb)
        .current_dir(&release.workspace.root)
        .env("SOURCE_DATE_EPOCH", release.epoch.to_string())
        // cargo-deb's names for the target's binutils (it otherwise runs
        // the host's strip on a foreign binary).
        .env(format!("STRIP_{triple}"), target.binutil("strip"))
        .env(format!("OBJCOPY_{triple}"), target.binutil("objcopy"));
    cmd::run(&mut cargo_deb).with_context(|| format!("cargo deb for {triple}"))?;
    ensure!(deb.is_file(), "cargo deb wrote no {}", deb.display());
    lintian(&deb)?;
    eprintln!("[dist] {}", deb.display());
    Ok(())
}

/// lintian must report no error; warnings are printed. Known, justified
/// tags are overridden in deploy/debian/ptwatch.lintian-overrides, which the
/// package carries.
fn lintian(deb: &std::path::Path) -> Result<()> {
    let out = cmd::output(Command::new("lintian").args(["--fail-on", "error"]).arg(deb))?;
    let report = String::from_utf8_lossy(&out.stdout);
    for line in report.lines() {
        eprintln!("[dist]   lintian: {line}");
    }
    ensure!(out.status.success(), "lintian found errors in {} (above)", deb.display());
    Ok(())
}
