//! `SHA256SUMS`: one line per artifact in the format `sha256sum -c` reads,
//! so users verify a download with the tool they already have.
use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::cmd;

pub const FILE: &str = "SHA256SUMS";

pub fn write(dir: &Path) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != FILE)
        .collect();
    names.sort();
    let sums = cmd::stdout(Command::new("sha256sum").args(&names).current_dir(dir))?;
    fs::write(dir.join(FILE), &sums).with_context(|| format!("writing {FILE}"))?;
    // The file must verify as users will verify it.
    cmd::stdout(Command::new("sha256sum").args(["--check", "--strict", FILE]).current_dir(dir))?;
    eprintln!("[dist] {FILE}: {} artifacts, verified with sha256sum --check", names.len());
    Ok(())
}
