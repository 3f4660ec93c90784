//! The release of `cargo xtask dist` as a user receives it: checksums that
//! verify, tarballs holding what docs/install.md names, static binaries of
//! the right architecture, the x86_64 tarball's binary running `check` and
//! `agent` on this host, .debs with the binary, unit, conffile and
//! maintainer scripts, and an OCI index with one image per platform. The
//! .deb under systemd and the image under podman are tested in
//! deploy_e2e.rs and deploy_image.rs.

mod deploy_common;
mod support;

use std::{collections::BTreeSet, path::Path, process::Command};

use deploy_common::{artifact, deploy_dir, dist_dir, run_ok, temp_dir, VERSION};
use support::{free_port, AgentProcess, Metrics, AGENT_VARIABLES};

/// Architectures of the release: (uname -m, Debian, OCI, `file` says).
const ARCHES: [(&str, &str, &str, &str); 3] = [
    ("x86_64", "amd64", "amd64", "x86-64"),
    ("aarch64", "arm64", "arm64", "ARM aarch64"),
    ("riscv64", "riscv64", "riscv64", "RISC-V"),
];

fn tarball(arch: &str) -> std::path::PathBuf {
    artifact(&format!("ptwatch-{VERSION}-{arch}-linux.tar.gz"))
}

#[test]
fn checksums_cover_every_artifact_and_verify() {
    let dir = dist_dir();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).expect("SHA256SUMS");
    let listed: BTreeSet<&str> = sums.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    let mut expected = BTreeSet::new();
    for (arch, debian, _, _) in ARCHES {
        expected.insert(format!("ptwatch-{VERSION}-{arch}-linux.tar.gz"));
        expected.insert(format!("ptwatch_{VERSION}-1_{debian}.deb"));
    }
    expected.insert(format!("ptwatch-{VERSION}.oci.tar"));
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(listed, expected, "SHA256SUMS lists exactly the artifacts");
    // As docs/install.md tells users to check, and it can fail.
    run_ok(Command::new("sha256sum").args(["--check", "--strict", "SHA256SUMS"]).current_dir(&dir), "sha256sum");
    let copy = temp_dir("sums");
    for name in &expected {
        std::fs::copy(dir.join(name), copy.join(name)).expect("copy artifact");
    }
    let tampered = sums.replacen(&sums[..1], if &sums[..1] == "0" { "1" } else { "0" }, 1);
    std::fs::write(copy.join("SHA256SUMS"), tampered).expect("write");
    let check = deploy_common::run(
        Command::new("sha256sum").args(["--check", "--strict", "SHA256SUMS"]).current_dir(&copy),
        "sha256sum",
    );
    assert!(!check.status.success(), "a wrong checksum must fail the check");
    let _ = std::fs::remove_dir_all(copy);
}

#[test]
fn tarballs_hold_a_static_binary_and_what_the_install_guide_names() {
    for (arch, _, _, machine) in ARCHES {
        let archive = tarball(arch);
        let listing = run_ok(Command::new("tar").arg("-tvzf").arg(&archive), "tar");
        let top = format!("ptwatch-{VERSION}-{arch}-linux/");
        let names: BTreeSet<String> =
            listing.lines().filter_map(|l| l.split_whitespace().last()).map(str::to_owned).collect();
        for file in [
            "ptwatch",
            "ptwatch.service",
            "ptwatch.toml",
            "LICENSE-MIT",
            "LICENSE-APACHE",
            "README.md",
            "man/ptwatch.1",
            "man/ptwatch-agent.1",
            "completions/ptwatch",
            "completions/_ptwatch",
            "completions/ptwatch.fish",
        ] {
            assert!(names.contains(&format!("{top}{file}")), "{file} missing from {}:\n{listing}", archive.display());
        }
        assert!(names.iter().all(|n| n.starts_with(&top)), "one top-level directory:\n{listing}");
        assert!(listing.lines().all(|l| l.contains(" 0/0 ")), "owned by 0/0:\n{listing}");
        let dir = temp_dir(&format!("tarball-{arch}"));
        run_ok(Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&dir), "tar -x");
        let root = dir.join(&top);
        let file = run_ok(Command::new("file").arg("-b").arg(root.join("ptwatch")), "file");
        assert!(file.contains(machine), "{arch}: {file}");
        assert!(file.contains("statically linked") || file.contains("static-pie linked"), "{arch}: {file}");
        assert!(file.contains("stripped") && !file.contains("not stripped"), "{arch}: {file}");
        // The unit and config are the repository's.
        for (name, source) in [("ptwatch.service", "systemd/ptwatch.service"), ("ptwatch.toml", "systemd/ptwatch.toml")]
        {
            let shipped = std::fs::read(root.join(name)).expect("shipped file");
            assert_eq!(shipped, std::fs::read(deploy_dir().join(source)).expect("repo file"), "{arch}: {name}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The x86_64 tarball's binary, unpacked as a user would, on this host:
/// `check --json` reports the tracepoint plan with the exact walk, and
/// `agent` with the shipped config serves metrics that parse.
#[test]
fn tarball_binary_runs_check_and_agent_on_this_host() {
    let dir = temp_dir("tarball-run");
    run_ok(Command::new("tar").arg("-xzf").arg(tarball("x86_64")).arg("-C").arg(&dir), "tar -x");
    let root = dir.join(format!("ptwatch-{VERSION}-x86_64-linux"));
    let binary = root.join("ptwatch");
    let clean = |command: &mut Command| {
        for name in AGENT_VARIABLES {
            command.env_remove(name);
        }
    };
    let mut check = Command::new(&binary);
    check.args(["check", "--json"]);
    clean(&mut check);
    let report: serde_json::Value =
        serde_json::from_str(&run_ok(&mut check, "ptwatch check --json")).expect("check prints JSON");
    assert_eq!(report["reclaim_accounting"]["method"], "page_table_walk", "{report:#}");
    assert!(report["probe_mode"].is_string(), "{report:#}");

    let addr = free_port();
    let mut agent = Command::new(&binary);
    clean(&mut agent);
    agent
        .arg("agent")
        .arg("--config")
        .arg(root.join("ptwatch.toml"))
        .args(["--listen", &addr.to_string()])
        .stderr(std::process::Stdio::piped());
    let agent = AgentProcess::spawn(agent, addr).wait_ready();
    let metrics = Metrics::parse(agent.scrape());
    assert_eq!(metrics.value("ptwatch_reclaim_accounting_info", &[("method", "page_table_walk")]), 1.0);
    let build = metrics.samples("ptwatch_build_info", &[]);
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].0.get("version").map(String::as_str), Some(VERSION));
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{status:?}\n{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

fn deb_field(deb: &Path, field: &str) -> String {
    run_ok(Command::new("dpkg-deb").arg("--field").arg(deb).arg(field), "dpkg-deb").trim().to_owned()
}

#[test]
fn debs_carry_the_binary_unit_conffile_and_systemd_scripts() {
    for (_, debian, _, machine) in ARCHES {
        let deb = artifact(&format!("ptwatch_{VERSION}-1_{debian}.deb"));
        assert_eq!(deb_field(&deb, "Package"), "ptwatch");
        assert_eq!(deb_field(&deb, "Version"), format!("{VERSION}-1"));
        assert_eq!(deb_field(&deb, "Architecture"), debian);
        let dir = temp_dir(&format!("deb-{debian}"));
        run_ok(Command::new("dpkg-deb").arg("--raw-extract").arg(&deb).arg(&dir), "dpkg-deb -R");
        let file = run_ok(Command::new("file").arg("-b").arg(dir.join("usr/bin/ptwatch")), "file");
        assert!(file.contains(machine), "{debian}: {file}");
        assert_eq!(
            std::fs::read(dir.join("usr/lib/systemd/system/ptwatch.service")).expect("unit"),
            std::fs::read(deploy_dir().join("systemd/ptwatch.service")).expect("repo unit"),
            "{debian}: the unit is deploy/systemd's"
        );
        let conffiles = std::fs::read_to_string(dir.join("DEBIAN/conffiles")).expect("conffiles");
        assert_eq!(conffiles.trim(), "/etc/ptwatch/ptwatch.toml");
        let postinst = std::fs::read_to_string(dir.join("DEBIAN/postinst")).expect("postinst");
        assert!(postinst.contains("deb-systemd-helper enable ptwatch.service"), "{postinst}");
        assert!(postinst.contains("deb-systemd-invoke $_dh_action ptwatch.service"), "{postinst}");
        let prerm = std::fs::read_to_string(dir.join("DEBIAN/prerm")).expect("prerm");
        assert!(prerm.contains("deb-systemd-invoke stop ptwatch.service"), "{prerm}");
        let postrm = std::fs::read_to_string(dir.join("DEBIAN/postrm")).expect("postrm");
        assert!(postrm.contains("deb-systemd-helper purge ptwatch.service"), "{postrm}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `tar -xOf ARCHIVE MEMBER`, parsed as JSON.
fn oci_json(archive: &Path, member: &str) -> serde_json::Value {
    let text = run_ok(Command::new("tar").arg("-xOf").arg(archive).arg(member), "tar -xO");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{member}: {e}"))
}

fn blob(digest: &serde_json::Value) -> String {
    format!("blobs/sha256/{}", digest.as_str().expect("digest").strip_prefix("sha256:").expect("sha256 digest"))
}

#[test]
fn oci_archive_indexes_one_scratch_image_per_platform() {
    let archive = artifact(&format!("ptwatch-{VERSION}.oci.tar"));
    let layout = oci_json(&archive, "oci-layout");
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let top = oci_json(&archive, "index.json");
    let entries = top["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 1, "{top}");
    assert_eq!(entries[0]["annotations"]["org.opencontainers.image.ref.name"], VERSION);
    let index = oci_json(&archive, &blob(&entries[0]["digest"]));
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let mut platforms = BTreeSet::new();
    for manifest in index["manifests"].as_array().expect("platform manifests") {
        let platform = format!(
            "{}/{}",
            manifest["platform"]["os"].as_str().expect("os"),
            manifest["platform"]["architecture"].as_str().expect("arch")
        );
        let image = oci_json(&archive, &blob(&manifest["digest"]));
        // FROM scratch: one layer, the one COPY of the binary (and the
        // licenses in a second one).
        let layers = image["layers"].as_array().expect("layers");
        assert!(layers.len() <= 2, "{platform}: {} layers", layers.len());
        let config = oci_json(&archive, &blob(&image["config"]["digest"]));
        assert_eq!(
            format!("{}/{}", config["os"].as_str().expect("os"), config["architecture"].as_str().expect("arch")),
            platform
        );
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/bin/ptwatch"]));
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["agent"]));
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.version"], VERSION);
        platforms.insert(platform);
    }
    let expected: BTreeSet<String> = ARCHES.iter().map(|(_, _, oci, _)| format!("linux/{oci}")).collect();
    assert_eq!(platforms, expected);
}
