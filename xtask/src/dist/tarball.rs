//! `ptwatch-<version>-<arch>-linux.tar.gz`: what a user needs to install the
//! static binary by hand (docs/install.md#from-a-tarball), under one
//! top-level directory, with fixed owners and timestamps.
use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::{
    docs::{self, Docs},
    Release, Staged,
};
use crate::cmd;

/// Files of the repository every tarball carries, and their names there.
const FILES: &[(&str, &str)] = &[
    ("deploy/systemd/ptwatch.service", "ptwatch.service"),
    ("deploy/systemd/ptwatch.toml", "ptwatch.toml"),
    ("LICENSE-MIT", "LICENSE-MIT"),
    ("LICENSE-APACHE", "LICENSE-APACHE"),
    ("README.md", "README.md"),
];

/// The archive's name without `.tar.gz`, also its top-level directory.
pub fn stem(version: &str, arch: &str) -> String {
    format!("ptwatch-{version}-{arch}-linux")
}

pub fn write(release: &Release<'_>, binary: &Staged, docs: &Docs) -> Result<()> {
    let stem = stem(release.version, binary.target.arch());
    let tree = release.work.join("tarballs").join(&stem);
    fs::create_dir_all(&tree)?;
    copy(&binary.ptwatch, &tree.join("ptwatch"))?;
    for (from, to) in FILES {
        copy(&release.workspace.root.join(from), &tree.join(to))?;
    }
    docs::copy_all(&docs.man_pages, &tree.join("man"))?;
    docs::copy_all(&docs.completions, &tree.join("completions"))?;
    let archive = release.out.join(format!("{stem}.tar.gz"));
    cmd::run(
        Command::new("tar")
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--format=gnu"])
            .arg(format!("--mtime=@{}", release.epoch))
            // -n: no file name or time in the gzip header.
            .args(["--use-compress-program=gzip -n -9", "-cf"])
            .arg(&archive)
            .arg("-C")
            .arg(tree.parent().context("tarball tree has a parent")?)
            .arg(&stem),
    )
    .with_context(|| format!("packing {}", archive.display()))?;
    eprintln!("[dist] {}", archive.display());
    Ok(())
}

/// Copy keeping the mode (the binary stays executable).
fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).map(drop).with_context(|| format!("copying {} to {}", from.display(), to.display()))
}
