//! Debian packages: installed with apt-get when dpkg does not report them
//! as installed.
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::step;
use crate::cmd;

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
pub fn install(packages: &[&str]) -> Result<()> {
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
