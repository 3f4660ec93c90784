//! `ptwatch-<version>.oci.tar`: the container image, one `FROM scratch`
//! image per target under one OCI index, as an OCI archive (load it with
//! `podman load`, push it with `skopeo copy --all oci-archive:…`).
//!
//! buildah builds deploy/Containerfile once per platform from a context
//! holding each target's static binary (`linux-<arch>/ptwatch`); the
//! Containerfile only copies files, so no registry, base image or emulation
//! is needed. buildah's storage is private to this build (under
//! `target/dist-work/`, vfs driver), so nothing touches the machine's images.
use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::{Release, Staged};
use crate::cmd;

const CONTAINERFILE: &str = "deploy/Containerfile";
/// Copied into the image beside the binary.
const LICENSES: &[&str] = &["LICENSE-MIT", "LICENSE-APACHE"];

pub fn file_name(version: &str) -> String {
    format!("ptwatch-{version}.oci.tar")
}

pub fn write(release: &Release<'_>, staged: &[Staged]) -> Result<()> {
    let root = &release.workspace.root;
    let work = release.work.join("image");
    let context = work.join("context");
    for binary in staged {
        let platform = binary.target.oci_platform();
        let dir = context.join(format!("{}-{}", platform.os, platform.architecture));
        fs::create_dir_all(&dir)?;
        fs::copy(&binary.ptwatch, dir.join("ptwatch")).context("copying a binary into the image context")?;
    }
    for license in LICENSES {
        fs::copy(root.join(license), context.join(license)).with_context(|| format!("copying {license}"))?;
    }
    let platforms: Vec<String> = staged.iter().map(|binary| binary.target.oci_platform().to_string()).collect();
    let name = format!("localhost/ptwatch:{}", release.version);
    cmd::run(
        buildah(&work)
            .arg("build")
            .arg(format!("--platform={}", platforms.join(",")))
            .arg(format!("--manifest={name}"))
            .arg(format!("--build-arg=VERSION={}", release.version))
            .arg(format!("--timestamp={}", release.epoch))
            .arg("--file")
            .arg(root.join(CONTAINERFILE))
            .arg(&context),
    )
    .context("building the image")?;
    let archive = release.out.join(file_name(release.version));
    cmd::run(
        buildah(&work)
            .args(["manifest", "push", "--all", "--format=oci", &name])
            // The index's `org.opencontainers.image.ref.name` is the tag.
            .arg(format!("oci-archive:{}:{}", archive.display(), release.version)),
    )
    .context("writing the OCI archive")?;
    eprintln!("[dist] {} ({})", archive.display(), platforms.join(", "));
    Ok(())
}

/// buildah with storage under `work`.
fn buildah(work: &Path) -> Command {
    let mut command = Command::new("buildah");
    command
        .arg(format!("--root={}", work.join("storage").display()))
        .arg(format!("--runroot={}", work.join("run").display()))
        .arg("--storage-driver=vfs");
    command
}
