//! `cargo xtask dist`: the release artifacts, for every target, in
//! `target/dist/`:
//!
//! - `ptwatch-<version>-<arch>-linux.tar.gz`: the static binary with the
//!   systemd unit, the example config, the licenses, the README, the man
//!   pages and shell completions;
//! - `ptwatch_<version>-1_<debian arch>.deb`: `/usr/bin/ptwatch`, the unit
//!   (enabled and started on installation), the config as a conffile, the
//!   man pages and completions;
//!   checked by lintian, which must report no error;
//! - `ptwatch-<version>.oci.tar`: one `FROM scratch` image per architecture
//!   under one OCI index, built by buildah from deploy/Containerfile without
//!   any registry;
//! - `SHA256SUMS` of all of them.
//!
//! Every target is built once, all in one cargo run
//! (`cargo::build_targets`), and its stripped binary is what the tarball and
//! the image carry; cargo-deb strips its own copy with the same binutils.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::{
    cargo::{self, Workspace},
    cmd,
    target::Target,
};

mod checksums;
mod deb;
mod docs;
mod image;
mod tarball;

/// What `dist` wrote, for the tests that run each artifact.
#[derive(Debug)]
pub struct Dist {
    pub dir: PathBuf,
}

/// One target's binary, stripped, ready to be packed.
struct Staged {
    target: Target,
    ptwatch: PathBuf,
}

/// Everything the artifacts share.
struct Release<'a> {
    workspace: &'a Workspace,
    version: &'a str,
    /// Seconds since the epoch for every timestamp written, so that two
    /// builds of one commit give the same archives (`SOURCE_DATE_EPOCH`).
    epoch: u64,
    /// Scratch space, outside `out` so that `SHA256SUMS` lists artifacts only.
    work: PathBuf,
    out: PathBuf,
}

pub fn run() -> Result<Dist> {
    let start = Instant::now();
    let workspace = Workspace::locate()?;
    let release = Release {
        version: &workspace.version,
        epoch: source_date_epoch(&workspace.root)?,
        work: workspace.target.join("dist-work"),
        out: workspace.target.join("dist"),
        workspace: &workspace,
    };
    for dir in [&release.work, &release.out] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing the previous {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    deb::check_changelog(&release)?;

    let mut staged = Vec::new();
    for (target, built) in Target::ALL.into_iter().zip(cargo::build_targets(&Target::ALL)?) {
        staged.push(stage(&release, target, &built.ptwatch)?);
    }
    let docs = docs::generate(&release, &staged)?;
    for binary in &staged {
        tarball::write(&release, binary, &docs)?;
        docs::stage_for_deb(&release, binary.target, &docs)?;
        deb::write(&release, binary.target)?;
    }
    image::write(&release, &staged)?;
    checksums::write(&release.out)?;
    eprintln!(
        "[dist] {} artifacts in {} ({:.0} s):",
        fs::read_dir(&release.out)?.count(),
        release.out.display(),
        start.elapsed().as_secs_f64()
    );
    let mut listing: Vec<(String, u64)> = fs::read_dir(&release.out)?
        .flatten()
        .map(|entry| (entry.file_name().to_string_lossy().into_owned(), entry.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    listing.sort();
    for (name, size) in listing {
        eprintln!("[dist]   {size:>10} {name}");
    }
    Ok(Dist { dir: release.out })
}

/// `SOURCE_DATE_EPOCH` if set (the reproducible-builds convention), else
/// the time of the last commit.
fn source_date_epoch(root: &Path) -> Result<u64> {
    if let Some(epoch) = std::env::var_os("SOURCE_DATE_EPOCH") {
        return epoch.to_string_lossy().trim().parse().context("SOURCE_DATE_EPOCH is not a number of seconds");
    }
    let out = cmd::stdout(std::process::Command::new("git").args(["log", "-1", "--format=%ct"]).current_dir(root))
        .context("the release timestamp comes from the last commit; outside a git checkout set SOURCE_DATE_EPOCH")?;
    out.trim().parse().with_context(|| format!("`git log` printed {out:?}, not a timestamp"))
}

/// Copy `ptwatch` into the work directory, stripped of its symbol table
/// (1.5 MB of 9.4 on x86_64) with the target's own binutils.
fn stage(release: &Release<'_>, target: Target, ptwatch: &Path) -> Result<Staged> {
    let dir = release.work.join(target.triple());
    fs::create_dir_all(&dir)?;
    let staged = dir.join("ptwatch");
    cmd::run(
        std::process::Command::new(target.binutil("strip")).arg("--strip-all").arg("-o").arg(&staged).arg(ptwatch),
    )
    .with_context(|| format!("stripping the {target} binary"))?;
    Ok(Staged { target, ptwatch: staged })
}
