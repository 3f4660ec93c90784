//! Documentation generated from the code: the man pages the packages ship
//! and docs/cli.md, both rendered by the built `ptwatch` binary from its
//! clap definitions (`ptwatch generate`, a hidden command; see
//! agent/src/cli/generate.rs for why the binary and not xtask renders them).
//!
//! `cargo xtask docs` rewrites docs/cli.md; agent/tests/docs.rs fails when
//! the committed file is stale. The packaging calls [`man_pages`] and
//! [`completions`].
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{cargo::Built, cmd};

/// The committed CLI reference, relative to the workspace root.
pub const CLI_REFERENCE: &str = "docs/cli.md";

/// Writes the man pages of `ptwatch` (the binary at `ptwatch`: `ptwatch.1`,
/// `ptwatch-agent.1`, ...) into `out`, uncompressed, and returns their
/// paths. The pages do not depend on the architecture, so a package for
/// another one can take them from the host's build.
pub fn man_pages(ptwatch: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let listed = cmd::stdout(Command::new(ptwatch).arg("generate").arg("man").arg(out))
        .with_context(|| format!("generating the man pages with {}", ptwatch.display()))?;
    let pages: Vec<PathBuf> = listed.lines().map(PathBuf::from).collect();
    anyhow::ensure!(!pages.is_empty(), "{} generate man wrote no page", ptwatch.display());
    for page in &pages {
        anyhow::ensure!(
            page.is_file(),
            "{} generate man listed {}, which does not exist",
            ptwatch.display(),
            page.display()
        );
    }
    Ok(pages)
}

/// Writes the shell completions of `ptwatch` into `out`, named where each
/// shell's system directory expects them (`ptwatch` for bash, `_ptwatch`
/// for zsh, `ptwatch.fish`), and returns their paths.
pub fn completions(ptwatch: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    [("bash", "ptwatch"), ("zsh", "_ptwatch"), ("fish", "ptwatch.fish")]
        .into_iter()
        .map(|(shell, name)| {
            let script = cmd::stdout(Command::new(ptwatch).args(["generate", "completion", shell]))
                .with_context(|| format!("generating the {shell} completion with {}", ptwatch.display()))?;
            let path = out.join(name);
            fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

/// The CLI reference as the built binary renders it.
fn cli_reference(ptwatch: &Path) -> Result<String> {
    cmd::stdout(Command::new(ptwatch).args(["generate", "markdown"]))
        .with_context(|| format!("generating the CLI reference with {}", ptwatch.display()))
}

/// `cargo xtask docs`: rewrite docs/cli.md from the built binary, and write
/// the man pages and completions the packages ship into `target/docs/` to
/// look at (`man -l target/docs/man/ptwatch-agent.1`).
pub fn run(built: &Built) -> Result<()> {
    let path = built.workspace.root.join(CLI_REFERENCE);
    let text = cli_reference(&built.ptwatch)?;
    let before = fs::read_to_string(&path).unwrap_or_default();
    if before == text {
        eprintln!("[docs] {CLI_REFERENCE} is up to date");
    } else {
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("[docs] wrote {CLI_REFERENCE}");
    }
    let out = built.workspace.target.join("docs");
    let pages = man_pages(&built.ptwatch, &out.join("man"))?;
    let scripts = completions(&built.ptwatch, &out.join("completions"))?;
    eprintln!(
        "[docs] wrote {} man pages and {} completion scripts under {}",
        pages.len(),
        scripts.len(),
        out.display()
    );
    Ok(())
}
