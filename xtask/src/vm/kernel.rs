//! Which Debian kernels exist for testing, by architecture, and how the
//! newest *complete* one of a line is chosen from a package index.
//!
//! A kernel line is an architecture and a series ("newest 7.x of sid");
//! versions are never pinned, because sid's and the backports' vanish from
//! the mirror. [`choose_kernel`] is pure: give it `apt-cache show` stanzas,
//! it returns the packages to download.

use std::{fmt, str::FromStr};

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use super::{
    arch::{Arch, BootMethod},
    debian::{version_cmp, PackageInfo},
};

/// A Debian kernel series: suites to look in and the version prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Series {
    /// Debian 11 (bullseye, with -updates and -security): 5.10 LTS. Older
    /// than every probe plan ptwatch has a reason to expect.
    Bullseye510,
    /// Debian 12 (bookworm): 6.1 LTS, no PT_RECLAIM.
    Bookworm61,
    /// Debian 13 (trixie): 6.12 LTS, no PT_RECLAIM; today's stable.
    Trixie612,
    /// Newest complete 6.x in trixie-backports: PT_RECLAIM with
    /// `mm/pt_reclaim.c` on x86 (`free_pte`, `try_to_free_pte`).
    TrixieBackports6,
    /// Newest complete 7.x in trixie-backports.
    TrixieBackports7,
    /// Newest complete 7.x in sid: PT_RECLAIM folded into `mm/memory.c`.
    Sid7,
    /// Newest complete 7.x in trixie-backports or sid, whichever is newer
    /// (one 7.x kernel where emulation is too slow for two).
    Newest7,
}

/// Where to look for a series' packages.
#[derive(Debug, Clone, Copy)]
pub struct SeriesSpec {
    /// Suites of the main archive.
    pub suites: &'static [&'static str],
    /// Suites of the security archive.
    pub security_suites: &'static [&'static str],
    /// What the kernel release (`uname -r`) must start with.
    pub release_prefix: &'static str,
}

impl Series {
    pub const ALL: [Series; 7] = [
        Self::Bullseye510,
        Self::Bookworm61,
        Self::Trixie612,
        Self::TrixieBackports6,
        Self::TrixieBackports7,
        Self::Sid7,
        Self::Newest7,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Bullseye510 => "bullseye-5.10",
            Self::Bookworm61 => "bookworm-6.1",
            Self::Trixie612 => "trixie-6.12",
            Self::TrixieBackports6 => "trixie-backports-6",
            Self::TrixieBackports7 => "trixie-backports-7",
            Self::Sid7 => "sid-7",
            Self::Newest7 => "newest-7",
        }
    }

    pub fn spec(self) -> SeriesSpec {
        let spec = |suites, security_suites, release_prefix| SeriesSpec { suites, security_suites, release_prefix };
        match self {
            Self::Bullseye510 => spec(&["bullseye", "bullseye-updates"], &["bullseye-security"], "5.10."),
            Self::Bookworm61 => spec(&["bookworm", "bookworm-updates"], &["bookworm-security"], "6.1."),
            Self::Trixie612 => spec(&["trixie", "trixie-updates"], &["trixie-security"], "6.12."),
            Self::TrixieBackports6 => spec(&["trixie-backports"], &[], "6."),
            Self::TrixieBackports7 => spec(&["trixie-backports"], &[], "7."),
            Self::Sid7 => spec(&["sid"], &[], "7."),
            Self::Newest7 => spec(&["trixie-backports", "sid"], &[], "7."),
        }
    }
}

/// A kernel line: an architecture and a series. Named `<arch>/<series>`,
/// e.g. `arm64/newest-7`; a bare series means x86_64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KernelLine {
    pub arch: Arch,
    pub series: Series,
}

impl KernelLine {
    pub const fn new(arch: Arch, series: Series) -> Self {
        Self { arch, series }
    }

    /// The lines `cargo xtask vm-test` covers (issue 12's matrix).
    pub const MATRIX: [KernelLine; 9] = [
        Self::new(Arch::X86_64, Series::Bullseye510),
        Self::new(Arch::X86_64, Series::Bookworm61),
        Self::new(Arch::X86_64, Series::Trixie612),
        Self::new(Arch::X86_64, Series::TrixieBackports6),
        Self::new(Arch::X86_64, Series::TrixieBackports7),
        Self::new(Arch::X86_64, Series::Sid7),
        Self::new(Arch::Arm64, Series::Trixie612),
        Self::new(Arch::Arm64, Series::Newest7),
        Self::new(Arch::Riscv64, Series::Sid7),
    ];

    /// Whether the boot needs the kernel's modules prepared.
    pub fn needs_modules(self) -> bool {
        self.arch.boot_method() == BootMethod::Virtme
    }
}

/// `x86_64/sid-7`.
impl fmt::Display for KernelLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.arch, self.series.name())
    }
}

impl FromStr for KernelLine {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (arch, series) = match s.split_once('/') {
            Some((arch, series)) => (arch.parse()?, series),
            None => (Arch::X86_64, s),
        };
        let lower = series.to_ascii_lowercase();
        let aliases: &[(&str, Series)] = &[
            ("bullseye", Series::Bullseye510),
            ("5.10", Series::Bullseye510),
            ("bookworm", Series::Bookworm61),
            ("6.1", Series::Bookworm61),
            ("trixie", Series::Trixie612),
            ("6.12", Series::Trixie612),
            ("backports", Series::TrixieBackports6),
            ("trixie-backports", Series::TrixieBackports6),
            ("sid", Series::Sid7),
            ("newest", Series::Newest7),
        ];
        let series = Series::ALL
            .into_iter()
            .find(|k| k.name() == lower)
            .or_else(|| aliases.iter().find(|(a, _)| *a == lower).map(|(_, k)| *k))
            .ok_or_else(|| {
                anyhow!(
                    "unknown kernel {s:?}: <arch>/<series>, arch one of x86_64, arm64, riscv64 (default x86_64), series one of {}",
                    Series::ALL.map(Series::name).join(", ")
                )
            })?;
        Ok(Self { arch, series })
    }
}

/// What resolution found: the image package and everything to download.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub release: String,
    pub version: String,
    /// (package, version)
    pub packages: Vec<(String, String)>,
    /// Newer candidates passed over because a part is missing, with why
    /// (e.g. `linux-image-6.19.14+deb13-cloud-amd64 6.19.14-1~bpo13+1 (no
    /// linux-modules-…)`).
    pub skipped: Vec<String>,
}

/// `linux-image-6.1.0-50-cloud-amd64` → `6.1.0-50-cloud-amd64`.
pub fn image_release(arch: Arch, package: &str) -> Option<&str> {
    let release = package.strip_prefix("linux-image-")?;
    let version = release.strip_suffix(&format!("-{}", arch.flavour()))?;
    is_release_version(version).then_some(release)
}

/// `6.1.0-50`, `7.2.13+deb14`: digits first and last. Rules out the meta
/// packages (`linux-image-cloud-amd64`) and other flavours that share a
/// suffix (`…-cloud-arm64` and `…-rt-arm64` both end in `-arm64`).
fn is_release_version(version: &str) -> bool {
    version.starts_with(|c: char| c.is_ascii_digit()) && version.ends_with(|c: char| c.is_ascii_digit())
}

/// Whether `name` is a `linux-{image,binary,modules,base}-<digits…>-<flavour>`
/// package of `arch`: what resolution asks `apt-cache show` about.
pub fn is_kernel_package(arch: Arch, name: &str) -> bool {
    ["linux-image-", "linux-binary-", "linux-modules-", "linux-base-"].iter().any(|p| {
        name.strip_prefix(p)
            .and_then(|rest| rest.strip_suffix(&format!("-{}", arch.flavour())))
            .is_some_and(is_release_version)
    })
}

/// Pick the newest image package of `line` whose split-out parts
/// (`linux-binary-*` with vmlinuz, `linux-modules-*`) are all in the index.
/// Mirrors do carry images whose parts are gone (seen in trixie-backports:
/// 6.19.x images without their linux-modules package); those are skipped
/// and listed in [`Resolved::skipped`]. The modules package is downloaded
/// only when the boot needs it ([`KernelLine::needs_modules`]).
pub fn choose_kernel(index: &[PackageInfo], line: KernelLine) -> Result<Resolved> {
    let prefix = line.series.spec().release_prefix;
    let find = |name: &str, version: Option<&str>| {
        index
            .iter()
            .filter(|p| p.name == name && version.is_none_or(|v| p.version == v))
            .max_by(|a, b| version_cmp(&a.version, &b.version))
    };
    let mut images: Vec<&PackageInfo> =
        index.iter().filter(|p| image_release(line.arch, &p.name).is_some_and(|r| r.starts_with(prefix))).collect();
    images.sort_by(|a, b| version_cmp(&b.version, &a.version));
    let mut skipped = Vec::new();
    'candidates: for image in images {
        let Some(release) = image_release(line.arch, &image.name) else { continue };
        let mut packages = vec![(image.name.clone(), image.version.clone())];
        for (dep, constraint) in &image.depends {
            let binary = dep == &format!("linux-binary-{release}");
            let modules = dep == &format!("linux-modules-{release}");
            let base = dep == &format!("linux-base-{release}");
            if !(binary || modules || base) {
                continue;
            }
            match find(dep, constraint.as_deref()) {
                Some(p) if modules && !line.needs_modules() => {
                    let _ = p; // present, so the kernel is complete; not needed to boot
                }
                Some(p) => packages.push((p.name.clone(), p.version.clone())),
                None if binary || modules => {
                    skipped.push(format!("{} {} (no {dep})", image.name, image.version));
                    continue 'candidates;
                }
                None => {}
            }
        }
        return Ok(Resolved { release: release.to_string(), version: image.version.clone(), packages, skipped });
    }
    if skipped.is_empty() {
        bail!("no linux-image-{prefix}*-{} package found", line.arch.flavour());
    }
    bail!("every candidate is incomplete: {}", skipped.join(", "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails with the error it unwraps")]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, deps: &[&str]) -> PackageInfo {
        PackageInfo {
            name: name.into(),
            version: version.into(),
            depends: deps.iter().map(|d| (d.to_string(), Some(version.to_string()))).collect(),
        }
    }

    fn split(flavour: &str, release: &str, version: &str, parts: &[&str]) -> Vec<PackageInfo> {
        let deps: Vec<String> = parts.iter().map(|p| format!("linux-{p}-{release}-{flavour}")).collect();
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        let mut v = vec![pkg(&format!("linux-image-{release}-{flavour}"), version, &deps)];
        v.extend(parts.iter().map(|p| pkg(&format!("linux-{p}-{release}-{flavour}"), version, &[])));
        v
    }

    #[test]
    fn chooses_newest_complete_kernel() {
        let mut index = vec![
            pkg(
                "linux-image-6.18.15+deb13-cloud-amd64",
                "6.18.15-1~bpo13+1",
                &["linux-base-6.18.15+deb13-cloud-amd64"],
            ),
            pkg("linux-image-6.18.12+deb13-cloud-amd64", "6.18.12-1~bpo13+1", &[]),
            pkg(
                "linux-image-6.19.14+deb13-cloud-amd64",
                "6.19.14-1~bpo13+1",
                &["linux-binary-6.19.14+deb13-cloud-amd64", "linux-modules-6.19.14+deb13-cloud-amd64"],
            ),
            pkg("linux-binary-6.19.14+deb13-cloud-amd64", "6.19.14-1~bpo13+1", &[]),
        ];
        index.extend(split("cloud-amd64", "7.3.4+deb13", "7.3.4-1~bpo13+1", &["binary", "modules", "base"]));
        let x86 = |s| KernelLine::new(Arch::X86_64, s);
        // 6.19.14 lacks its modules; 6.18.15 lacks only the optional base.
        let r = choose_kernel(&index, x86(Series::TrixieBackports6)).unwrap();
        assert_eq!(r.release, "6.18.15+deb13-cloud-amd64");
        assert_eq!(r.packages.len(), 1);
        assert_eq!(
            r.skipped,
            ["linux-image-6.19.14+deb13-cloud-amd64 6.19.14-1~bpo13+1 (no linux-modules-6.19.14+deb13-cloud-amd64)"]
        );
        let r = choose_kernel(&index, x86(Series::TrixieBackports7)).unwrap();
        assert_eq!(r.release, "7.3.4+deb13-cloud-amd64");
        assert_eq!(r.packages.len(), 4, "virtme-ng boots need the modules");
        assert!(r.skipped.is_empty());
        assert!(choose_kernel(&index, x86(Series::Bullseye510)).is_err());
    }

    #[test]
    fn kernel_choice_per_arch() {
        let mut index = Vec::new();
        index.extend(split("cloud-arm64", "7.3.4+deb13", "7.3.4-1~bpo13+1", &["binary", "modules", "base"]));
        index.extend(split("cloud-arm64", "7.2.13+deb14", "7.2.13-1", &["binary", "modules", "base"]));
        // Newer, but its modules are gone from the mirror: skipped.
        index.extend(split("cloud-arm64", "7.4.1+deb14", "7.4.1-1", &["binary", "base"]));
        let at = index.len() - 3;
        index[at].depends.push(("linux-modules-7.4.1+deb14-cloud-arm64".into(), None));
        index.extend(split("cloud-amd64", "7.9.9+deb14", "7.9.9-1", &["binary", "modules"]));
        index.extend(split("riscv64", "7.2.13+deb14", "7.2.13-1", &["binary", "modules"]));
        index.push(pkg("linux-image-6.12.117+deb13-cloud-arm64", "6.12.117-1", &[]));
        index.push(pkg("linux-image-6.12.107+deb13-cloud-arm64", "6.12.107-1", &[]));

        let arm = choose_kernel(&index, KernelLine::new(Arch::Arm64, Series::Newest7)).unwrap();
        assert_eq!(arm.release, "7.3.4+deb13-cloud-arm64", "the amd64 7.9.9 is not an arm64 kernel");
        assert_eq!(arm.skipped.len(), 1, "{arm:?}");
        let names: Vec<&str> = arm.packages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-image-7.3.4+deb13-cloud-arm64",
                "linux-binary-7.3.4+deb13-cloud-arm64",
                "linux-base-7.3.4+deb13-cloud-arm64"
            ],
            "an initramfs boot needs no modules"
        );
        let arm612 = choose_kernel(&index, KernelLine::new(Arch::Arm64, Series::Trixie612)).unwrap();
        assert_eq!(arm612.release, "6.12.117+deb13-cloud-arm64");
        let rv = choose_kernel(&index, KernelLine::new(Arch::Riscv64, Series::Sid7)).unwrap();
        assert_eq!(rv.release, "7.2.13+deb14-riscv64");
        assert_eq!(rv.packages.len(), 2);
    }

    #[test]
    fn package_names() {
        assert_eq!(image_release(Arch::X86_64, "linux-image-6.1.0-50-cloud-amd64"), Some("6.1.0-50-cloud-amd64"));
        assert_eq!(image_release(Arch::X86_64, "linux-image-cloud-amd64"), None);
        assert_eq!(image_release(Arch::X86_64, "linux-image-6.1.0-50-cloud-amd64-dbg"), None);
        assert_eq!(image_release(Arch::X86_64, "linux-image-6.1.0-50-cloud-arm64"), None);
        assert_eq!(image_release(Arch::Riscv64, "linux-image-7.2.13+deb14-riscv64"), Some("7.2.13+deb14-riscv64"));
        assert!(is_kernel_package(Arch::Arm64, "linux-modules-7.3.4+deb13-cloud-arm64"));
        assert!(!is_kernel_package(Arch::Arm64, "linux-modules-7.3.4+deb13-arm64"));
        assert!(!is_kernel_package(Arch::Riscv64, "linux-image-7.2.13+deb14-rt-riscv64"));
        assert!(!is_kernel_package(Arch::Arm64, "linux-headers-7.3.4+deb13-cloud-arm64"));
    }

    #[test]
    fn line_names_round_trip() {
        for line in KernelLine::MATRIX {
            assert_eq!(line.to_string().parse::<KernelLine>().unwrap(), line);
        }
        assert_eq!("sid".parse::<KernelLine>().unwrap(), KernelLine::new(Arch::X86_64, Series::Sid7));
        assert_eq!("aarch64/newest".parse::<KernelLine>().unwrap(), KernelLine::new(Arch::Arm64, Series::Newest7));
        assert!("potato".parse::<KernelLine>().is_err());
        assert!("mips/sid-7".parse::<KernelLine>().is_err());
    }
}
