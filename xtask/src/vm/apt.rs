//! A private apt state per (architecture, suites): its own sources list,
//! lists and cache under the VM cache, so that looking up and downloading
//! Debian kernels of any suite and architecture never touches the host's
//! apt configuration. The mirror is the one the host's sources name.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::{
    arch::Arch,
    debian::parse_deb822,
    kernel::SeriesSpec,
    process::{run_checked, FileLock},
};

pub struct AptState {
    pub dir: PathBuf,
    options: Vec<String>,
    /// Held while this state is in use: `apt-get update` of two runs on the
    /// same lists would corrupt them.
    _lock: FileLock,
}

impl AptState {
    /// The state for `arch` and the suites of `spec`, locked.
    pub fn new(cache: &Path, arch: Arch, spec: &SeriesSpec) -> Result<Self> {
        let suites: Vec<&str> = spec.suites.iter().chain(spec.security_suites).copied().collect();
        let dir = cache.join("apt").join(format!("{}-{}", arch.debian(), suites.join("+")));
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let lock = FileLock::exclusive(&dir.join("lock"))?;
        let mirrors = host_mirrors();
        let list_path = dir.join("sources.list");
        let list = sources_list(&mirrors, arch, spec);
        if fs::read_to_string(&list_path).ok().as_deref() != Some(list.as_str()) {
            fs::write(&list_path, &list)?;
        }
        let o = |k: &str, v: &dyn AsRef<Path>| format!("{k}={}", v.as_ref().display());
        let options = vec![
            o("Dir::Etc::SourceList", &list_path),
            o("Dir::Etc::SourceParts", &"/dev/null"),
            o("Dir::Etc::Preferences", &"/dev/null"),
            o("Dir::Etc::PreferencesParts", &"/dev/null"),
            o("Dir::State::Lists", &dir.join("lists")),
            o("Dir::Cache", &dir.join("cache")),
            // A foreign architecture's packages: apt resolves and downloads
            // for this one only.
            format!("APT::Architecture={}", arch.debian()),
            format!("APT::Architectures={}", arch.debian()),
            // Only Packages indices: no translations, no AppStream metadata.
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
            // sid's Release is sometimes past its Valid-Until on mirrors;
            // signatures are still checked.
            "Acquire::Check-Valid-Until=false".into(),
            // Cache dirs under target/ are not writable by the _apt user.
            "APT::Sandbox::User=root".into(),
        ];
        Ok(Self { dir, options, _lock: lock })
    }

    fn base(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive").env("LC_ALL", "C");
        cmd
    }

    pub fn update(&self) -> Result<()> {
        let mut cmd = self.base("apt-get");
        cmd.args(["-q", "update"]);
        let out = run_checked(&mut cmd, "apt-get update (private state)")?;
        // apt-get update exits 0 on some fetch failures ("W: Failed to fetch").
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Failed to fetch") || err.contains("is not signed") {
            bail!("apt-get update (private state in {}) failed:\n{}", self.dir.display(), err.trim());
        }
        Ok(())
    }

    pub fn cache(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.base("apt-cache");
        cmd.args(args);
        let out = run_checked(&mut cmd, "apt-cache (private state)")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn get(&self, args: &[String], cwd: Option<&Path>) -> Result<()> {
        let mut cmd = self.base("apt-get");
        cmd.arg("-q").args(args);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        run_checked(&mut cmd, "apt-get (private state)")?;
        Ok(())
    }
}

/// One-line sources: one line per suite (a second word after the suite
/// would be read as a component).
fn sources_list(mirrors: &Mirrors, arch: Arch, spec: &SeriesSpec) -> String {
    let mut options = vec![format!("arch={}", arch.debian())];
    if let Some(k) = &mirrors.keyring {
        options.push(format!("signed-by={}", k.display()));
    }
    let options = options.join(" ");
    let mut list = String::from("# written by `cargo xtask vm` from the host's apt sources\n");
    for suite in spec.suites {
        list += &format!("deb [{options}] {} {suite} main\n", mirrors.archive);
    }
    for suite in spec.security_suites {
        list += &format!("deb [{options}] {} {suite} main\n", mirrors.security);
    }
    list
}

/// Mirror URIs taken from the host's apt configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirrors {
    pub archive: String,
    pub security: String,
    pub keyring: Option<PathBuf>,
}

/// The host's Debian mirror, from `/etc/apt/sources.list.d/debian.sources`
/// (deb822) or `/etc/apt/sources.list`; `$PTWATCH_DEBIAN_MIRROR` overrides.
pub fn host_mirrors() -> Mirrors {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let one_line = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let mut m = mirrors_from_sources(&deb822, &one_line);
    if let Ok(uri) = std::env::var("PTWATCH_DEBIAN_MIRROR") {
        m.archive = uri.trim_end_matches('/').to_string();
    }
    if m.keyring.as_ref().is_some_and(|k| !k.exists()) {
        m.keyring = None;
    }
    m
}

fn mirrors_from_sources(deb822: &str, one_line: &str) -> Mirrors {
    let mut archive = None;
    let mut security = None;
    let mut keyring = None;
    for stanza in parse_deb822(deb822) {
        let get = |k: &str| stanza.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str());
        if get("Enabled").is_some_and(|v| v.trim() == "no")
            || !get("Types").unwrap_or("").split_whitespace().any(|t| t == "deb")
        {
            continue;
        }
        let Some(uri) = get("URIs").and_then(|u| u.split_whitespace().next()) else {
            continue;
        };
        let suites = get("Suites").unwrap_or("");
        let is_security =
            suites.split_whitespace().any(|s| s.ends_with("-security")) || uri.contains("debian-security");
        let slot = if is_security { &mut security } else { &mut archive };
        if slot.is_none() {
            *slot = Some(uri.trim_end_matches('/').to_string());
            if !is_security {
                keyring = get("Signed-By")
                    .map(str::trim)
                    .filter(|k| k.starts_with('/') && !k.contains('\n'))
                    .map(PathBuf::from);
            }
        }
    }
    for line in one_line.lines() {
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        let slot =
            if suite.ends_with("-security") || uri.contains("debian-security") { &mut security } else { &mut archive };
        if slot.is_none() {
            *slot = Some(uri.trim_end_matches('/').to_string());
        }
    }
    let archive = archive.unwrap_or_else(|| "http://deb.debian.org/debian".to_string());
    let security = security.unwrap_or_else(|| match archive.strip_suffix("/debian") {
        Some(base) => format!("{base}/debian-security"),
        None => "http://deb.debian.org/debian-security".to_string(),
    });
    Mirrors {
        archive,
        security,
        keyring: keyring.or_else(|| Some(PathBuf::from("/usr/share/keyrings/debian-archive-keyring.gpg"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails with the error it unwraps")]
mod tests {
    use super::*;
    use crate::vm::kernel::Series;

    #[test]
    fn mirrors() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
            URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
            Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let m = mirrors_from_sources(deb822, "");
        assert_eq!(m.archive, "http://deb.debian.org/debian");
        assert_eq!(m.security, "http://deb.debian.org/debian-security");
        assert_eq!(m.keyring, Some(PathBuf::from("/usr/share/keyrings/debian-archive-keyring.gpg")));
        let m = mirrors_from_sources("", "deb [arch=amd64] http://mirror.example/debian/ bookworm main\n");
        assert_eq!(m.archive, "http://mirror.example/debian");
        assert_eq!(m.security, "http://mirror.example/debian-security");
    }

    #[test]
    fn one_suite_per_line() {
        let m =
            Mirrors { archive: "http://m/debian".into(), security: "http://m/debian-security".into(), keyring: None };
        let list = sources_list(&m, Arch::Arm64, &Series::Trixie612.spec());
        let lines: Vec<&str> = list.lines().filter(|l| l.starts_with("deb ")).collect();
        assert_eq!(
            lines,
            [
                "deb [arch=arm64] http://m/debian trixie main",
                "deb [arch=arm64] http://m/debian trixie-updates main",
                "deb [arch=arm64] http://m/debian-security trixie-security main",
            ]
        );
    }
}
