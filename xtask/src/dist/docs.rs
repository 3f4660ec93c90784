//! Documentation files the packages carry besides README and licenses: the
//! man pages and shell completions, rendered by the release binary itself
//! (`ptwatch generate`, through `crate::docs`), so they describe exactly the
//! flags the shipped binary accepts. The pages do not depend on the
//! architecture; the binary of the target this machine runs renders them.
//!
//! The .deb takes them from `target/<triple>/release/dist-docs/`, the path
//! `[package.metadata.deb]` names (cargo-deb maps `target/release/` to the
//! target's directory), so [`stage_for_deb`] copies them there.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{Release, Staged};
use crate::{cmd, target::Target};

/// Where the .deb's assets expect the generated files, under a target's
/// release directory (agent/Cargo.toml, `[package.metadata.deb]`).
const DEB_DOCS: &str = "dist-docs";

/// Generated documentation, by kind.
#[derive(Debug)]
pub struct Docs {
    /// `*.1` man pages, uncompressed.
    pub man_pages: Vec<PathBuf>,
    /// `ptwatch` (bash), `_ptwatch` (zsh), `ptwatch.fish`.
    pub completions: Vec<PathBuf>,
}

pub fn generate(release: &Release<'_>, staged: &[Staged]) -> Result<Docs> {
    let host = staged
        .iter()
        .find(|binary| Target::host() == Some(binary.target))
        .context("no release target runs on this machine, and the man pages are rendered by running the binary")?;
    let dir = release.work.join("docs");
    let docs = Docs {
        man_pages: crate::docs::man_pages(&host.ptwatch, &dir.join("man"))?,
        completions: crate::docs::completions(&host.ptwatch, &dir.join("completions"))?,
    };
    eprintln!("[dist] {} man pages and {} completion scripts", docs.man_pages.len(), docs.completions.len());
    Ok(docs)
}

/// Copy the files into `target/<triple>/release/dist-docs/{man,completions}`,
/// the man pages compressed as Debian policy wants them (`gzip -n -9`: no
/// name or time in the header, so the package stays reproducible).
pub fn stage_for_deb(release: &Release<'_>, target: Target, docs: &Docs) -> Result<()> {
    let base = release.workspace.release_dir(Some(target)).join(DEB_DOCS);
    if base.exists() {
        fs::remove_dir_all(&base).with_context(|| format!("removing {}", base.display()))?;
    }
    let man = base.join("man");
    copy_all(&docs.man_pages, &man)?;
    for page in &docs.man_pages {
        let name = page.file_name().context("man page without a name")?;
        cmd::run(Command::new("gzip").args(["-n", "-9"]).arg(man.join(name)))?;
    }
    copy_all(&docs.completions, &base.join("completions"))
}

/// Copy `files` into `dir` (created), keeping their names.
pub fn copy_all(files: &[PathBuf], dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in files {
        let name = file.file_name().context("generated file without a name")?;
        fs::copy(file, dir.join(name)).with_context(|| format!("copying {}", file.display()))?;
    }
    Ok(())
}
