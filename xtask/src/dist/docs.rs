//! Documentation files the packages carry besides README and licenses.
//!
//! HOOK(man pages): the `docs` work adds generated man pages
//! (`ptwatch generate man`, called through `crate::docs::man_pages`). Once it
//! is merged, `generate` returns them and the tarball (`man/`) and the .deb
//! (`/usr/share/man/man1/`) ship them; until then it returns none and says
//! so, and lintian reports `no-manual-page` as a warning.
use std::path::PathBuf;

use anyhow::Result;

use super::Release;

/// Generated documentation, by kind.
#[derive(Debug, Default)]
pub struct Docs {
    /// `*.1` man pages, uncompressed.
    pub man_pages: Vec<PathBuf>,
}

pub fn generate(_release: &Release<'_>) -> Result<Docs> {
    eprintln!("[dist] man pages: none yet (hook in xtask/src/dist/docs.rs)");
    Ok(Docs::default())
}
