//! Real Debian kernels in a throw-away VM, for the probes this host cannot
//! test (fentry/fexit, kprobes, older and newer kernels).
//!
//! Three steps, each usable on its own:
//!
//! 1. [`ensure_vm_tools`]: qemu, kmod, busybox-static, xz, `file` (apt),
//!    virtme-ng (pip) and the Rust virtiofsd (`cargo install`). Idempotent;
//!    a no-op costing a few milliseconds when everything is there.
//! 2. [`fetch_kernel`]: resolve the newest *complete* cloud kernel of a
//!    Debian suite at run time (private apt state, never the host's),
//!    `apt-get download` it, unpack it, decompress its modules and run
//!    `depmod`. The result is cached: a second call reads a manifest and
//!    touches no network. [`fetch_kernel_with`] with [`FetchMode::Refresh`]
//!    re-resolves.
//! 3. [`run_in_vm`]: boot it with virtme-ng (TCG, the host's root
//!    filesystem read-only plus overlays) and run a shell command as root;
//!    bpffs, tracefs and debugfs are mounted first. Output comes back through
//!    files in a shared read-write directory, so the command's stdout, its
//!    stderr and the kernel console never mix.
//!
//! See docs/vm-testing.md.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Debian kernel flavour used everywhere: small, boots fast, has BTF.
const FLAVOUR: &str = "cloud-amd64";
/// virtme-ng version installed when none is present (the one verified here).
const VIRTME_NG_VERSION: &str = "1.42";
/// Manifest written into a kernel's cache directory once it is complete.
const MANIFEST: &str = "kernel.json";
/// Debian packages the VM needs on the host: (package, file it provides).
/// libseccomp-dev and libcap-ng-dev are only needed to build virtiofsd;
/// busybox-static goes into virtme-ng's initramfs (it loads the virtio
/// modules a distribution kernel keeps as modules); `file` is how virtme-ng
/// reads a bzImage's version.
const APT_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("kmod", "/usr/sbin/depmod"),
    ("libseccomp-dev", "/usr/include/seccomp.h"),
    ("libcap-ng-dev", "/usr/include/cap-ng.h"),
    ("busybox-static", "/bin/busybox"),
    ("xz-utils", "/usr/bin/xz"),
    ("file", "/usr/bin/file"),
];

// ---------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------

/// A Debian kernel line. Versions are resolved at run time: each variant is
/// "the newest complete `linux-image-<version>-cloud-amd64` of a suite whose
/// version starts with a prefix".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DebianKernel {
    /// Debian 12 (bookworm, bookworm-updates, bookworm-security): 6.1 LTS.
    /// No PT_RECLAIM.
    Bookworm61,
    /// Newest complete 6.x in trixie-backports: PT_RECLAIM with
    /// `mm/pt_reclaim.c` (`free_pte`, `try_to_free_pte`).
    TrixieBackports6x,
    /// Newest complete 7.x in sid (unstable): PT_RECLAIM folded into
    /// `mm/memory.c`, no reclaim-specific symbol left.
    Sid7x,
    /// Newest complete kernel of any version in trixie-backports (may be
    /// newer than sid's).
    TrixieBackportsNewest,
}

impl DebianKernel {
    /// The three kernel lines the project tests against.
    pub const ALL: [DebianKernel; 3] = [Self::Bookworm61, Self::TrixieBackports6x, Self::Sid7x];

    /// Stable short name, used on the command line and as the cache
    /// directory name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bookworm61 => "bookworm-6.1",
            Self::TrixieBackports6x => "trixie-backports-6",
            Self::Sid7x => "sid-7",
            Self::TrixieBackportsNewest => "trixie-backports-newest",
        }
    }

    /// Suites of the main archive, suites of the security archive, and the
    /// prefix the kernel release must start with.
    fn spec(self) -> KernelSpec {
        match self {
            Self::Bookworm61 => KernelSpec {
                state: "bookworm",
                suites: &["bookworm", "bookworm-updates"],
                security_suites: &["bookworm-security"],
                release_prefix: "6.1.",
            },
            Self::TrixieBackports6x => KernelSpec {
                state: "trixie-backports",
                suites: &["trixie-backports"],
                security_suites: &[],
                release_prefix: "6.",
            },
            Self::Sid7x => KernelSpec { state: "sid", suites: &["sid"], security_suites: &[], release_prefix: "7." },
            Self::TrixieBackportsNewest => KernelSpec {
                state: "trixie-backports",
                suites: &["trixie-backports"],
                security_suites: &[],
                release_prefix: "",
            },
        }
    }
}

impl fmt::Display for DebianKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DebianKernel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let all = [Self::Bookworm61, Self::TrixieBackports6x, Self::Sid7x, Self::TrixieBackportsNewest];
        let lower = s.to_ascii_lowercase();
        let aliases: &[(&str, DebianKernel)] = &[
            ("bookworm", Self::Bookworm61),
            ("6.1", Self::Bookworm61),
            ("trixie-backports", Self::TrixieBackports6x),
            ("backports", Self::TrixieBackports6x),
            ("6", Self::TrixieBackports6x),
            ("sid", Self::Sid7x),
            ("7", Self::Sid7x),
            ("newest", Self::TrixieBackportsNewest),
        ];
        all.into_iter()
            .find(|k| k.name() == lower)
            .or_else(|| aliases.iter().find(|(a, _)| *a == lower).map(|(_, k)| *k))
            .ok_or_else(|| anyhow!("unknown kernel {s:?}; one of: {}", all.map(|k| k.name()).join(", ")))
    }
}

struct KernelSpec {
    /// Name of the private apt state directory (shared by variants that use
    /// the same suites).
    state: &'static str,
    suites: &'static [&'static str],
    security_suites: &'static [&'static str],
    release_prefix: &'static str,
}

/// A kernel unpacked in the cache, ready to boot. (The name says what it is
/// for; nothing is running.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootedKernel {
    pub which: DebianKernel,
    /// `uname -r` inside the VM, e.g. `7.2.13+deb14-cloud-amd64`.
    pub release: String,
    /// Debian version of the image package, e.g. `7.2.13-1`.
    pub package_version: String,
    /// The packages unpacked, as `name=version`.
    pub packages: Vec<String>,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// The unpacked tree: `depmod -b` base, holds `lib/modules/<release>`.
    pub modules_root: PathBuf,
    /// `<modules_root>/lib/modules/<release>` (uncompressed `.ko`, fresh
    /// `modules.dep`).
    pub modules_dir: PathBuf,
    /// `boot/config-<release>` when the packages ship it.
    pub config: Option<PathBuf>,
    /// `boot/System.map-<release>` when the packages ship it.
    pub system_map: Option<PathBuf>,
    /// This kernel line's directory in the cache (scratch space for runs
    /// lives under it).
    pub cache_dir: PathBuf,
}

impl BootedKernel {
    /// Value of a kernel config option (`CONFIG_PT_RECLAIM` → `Some("y")`),
    /// `None` when unset or when the package ships no config.
    pub fn config_value(&self, option: &str) -> Option<String> {
        let text = fs::read_to_string(self.config.as_ref()?).ok()?;
        let prefix = format!("{option}=");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim_matches('"').to_string())
    }
}

/// Whether [`fetch_kernel_with`] may answer from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FetchMode {
    /// Use the cached kernel when there is one (no network); resolve and
    /// download otherwise.
    #[default]
    CacheFirst,
    /// Always re-resolve against the mirror; download only when the newest
    /// complete version differs from the cached one. Falls back to the cache
    /// (with a warning) when the mirror cannot be reached.
    Refresh,
}

/// Default cache: `$PTWATCH_VM_CACHE`, else `$CARGO_TARGET_DIR/vm-kernels`,
/// else `<workspace>/target/vm-kernels`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PTWATCH_VM_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("vm-kernels");
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace =
        if manifest_dir.join("../Cargo.toml").exists() { manifest_dir.join("..") } else { manifest_dir.to_path_buf() };
    workspace.join("target").join("vm-kernels")
}

/// [`fetch_kernel_with`] in [`FetchMode::CacheFirst`].
pub fn fetch_kernel(which: DebianKernel, cache: &Path) -> Result<BootedKernel> {
    fetch_kernel_with(which, cache, FetchMode::CacheFirst)
}

/// Resolve, download, unpack and prepare a kernel; see the module docs.
pub fn fetch_kernel_with(which: DebianKernel, cache: &Path, mode: FetchMode) -> Result<BootedKernel> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let cache = cache.canonicalize().with_context(|| format!("resolving {}", cache.display()))?;
    let kdir = cache.join(which.name());
    fs::create_dir_all(&kdir).with_context(|| format!("creating {}", kdir.display()))?;
    let _lock = FileLock::exclusive(&cache.join(format!(".{}.lock", which.spec().state)))?;

    let cached = load_cached(&kdir);
    if mode == FetchMode::CacheFirst {
        if let Some(k) = cached {
            return Ok(k);
        }
    }

    let resolved = match resolve_kernel(which, &cache) {
        Ok(r) => r,
        Err(e) => {
            if let Some(k) = cached {
                eprintln!("vm: warning: could not re-resolve {which} ({e:#}); using cached {}", k.release);
                return Ok(k);
            }
            return Err(e.context(format!("resolving the newest {which} kernel")));
        }
    };
    if let Some(k) = cached {
        if k.release == resolved.release && k.package_version == resolved.version {
            return Ok(k);
        }
        eprintln!(
            "vm: {which}: {} {} replaces cached {} {}",
            resolved.release, resolved.version, k.release, k.package_version
        );
    }
    install_kernel(which, &cache, &kdir, &resolved)
}

/// The cached kernel of a line, if it is complete.
fn load_cached(kdir: &Path) -> Option<BootedKernel> {
    let text = fs::read_to_string(kdir.join(MANIFEST)).ok()?;
    let k: BootedKernel = serde_json::from_str(&text).ok()?;
    let complete = k.vmlinuz.is_file()
        && k.modules_dir.join("modules.dep").is_file()
        && k.modules_dir.join(".ptwatch-ready").is_file();
    complete.then_some(k)
}

/// What resolution found: the image package and everything to download.
#[derive(Debug, Clone)]
struct Resolved {
    release: String,
    version: String,
    /// (package, version)
    packages: Vec<(String, String)>,
}

/// One `apt-cache show` stanza, only the fields used.
#[derive(Debug, Clone, Default, PartialEq)]
struct PackageInfo {
    name: String,
    version: String,
    depends: Vec<(String, Option<String>)>,
}

fn resolve_kernel(which: DebianKernel, cache: &Path) -> Result<Resolved> {
    let spec = which.spec();
    let apt = AptState::new(cache, &spec)?;
    apt.update()?;

    let prefixes = ["linux-image-", "linux-binary-", "linux-modules-", "linux-base-"];
    let mut names = Vec::new();
    for p in prefixes {
        let out = apt.cache(&["pkgnames", p])?;
        names.extend(
            out.lines()
                .map(str::trim)
                .filter(|n| {
                    n.strip_prefix(p)
                        .and_then(|rest| rest.strip_suffix(&format!("-{FLAVOUR}")))
                        .is_some_and(|ver| ver.starts_with(|c: char| c.is_ascii_digit()))
                })
                .map(str::to_string),
        );
    }
    if names.is_empty() {
        bail!("no linux-*-{FLAVOUR} packages in {:?} (private apt lists in {})", spec.suites, apt.dir.display());
    }
    names.sort();
    names.dedup();
    let mut args = vec!["show"];
    args.extend(names.iter().map(String::as_str));
    let shown = apt.cache(&args)?;
    let index = parse_stanzas(&shown);
    choose_kernel(&index, spec.release_prefix).with_context(|| {
        format!("choosing a {FLAVOUR} kernel starting with {:?} in {:?}", spec.release_prefix, spec.suites)
    })
}

/// Pick the newest image package whose release starts with `prefix` and
/// whose split-out parts (`linux-binary-*` with vmlinuz, `linux-modules-*`)
/// are all present. Mirrors do carry images whose parts are gone (seen in
/// trixie-backports: 6.19.x images without their linux-modules package).
fn choose_kernel(index: &[PackageInfo], prefix: &str) -> Result<Resolved> {
    let find = |name: &str, version: Option<&str>| {
        index
            .iter()
            .filter(|p| p.name == name && version.is_none_or(|v| p.version == v))
            .max_by(|a, b| debian_version_cmp(&a.version, &b.version))
    };
    let mut images: Vec<&PackageInfo> =
        index.iter().filter(|p| image_release(&p.name).is_some_and(|r| r.starts_with(prefix))).collect();
    images.sort_by(|a, b| debian_version_cmp(&b.version, &a.version));
    let mut skipped = Vec::new();
    'candidates: for image in images {
        let Some(release) = image_release(&image.name) else { continue };
        let mut packages = vec![(image.name.clone(), image.version.clone())];
        for (dep, constraint) in &image.depends {
            let required = dep == &format!("linux-binary-{release}") || dep == &format!("linux-modules-{release}");
            let optional = dep == &format!("linux-base-{release}");
            if !(required || optional) {
                continue;
            }
            match find(dep, constraint.as_deref()) {
                Some(p) => packages.push((p.name.clone(), p.version.clone())),
                None if required => {
                    skipped.push(format!("{} {} (no {dep})", image.name, image.version));
                    continue 'candidates;
                }
                None => {}
            }
        }
        if !skipped.is_empty() {
            eprintln!("vm: skipped incomplete kernels: {}", skipped.join(", "));
        }
        return Ok(Resolved { release: release.to_string(), version: image.version.clone(), packages });
    }
    if skipped.is_empty() {
        bail!("no linux-image-{prefix}*-{FLAVOUR} package found");
    }
    bail!("every candidate is incomplete: {}", skipped.join(", "))
}

/// `linux-image-6.1.0-50-cloud-amd64` → `6.1.0-50-cloud-amd64`.
fn image_release(package: &str) -> Option<&str> {
    let release = package.strip_prefix("linux-image-")?;
    let version = release.strip_suffix(&format!("-{FLAVOUR}"))?;
    version.starts_with(|c: char| c.is_ascii_digit()).then_some(release)
}

fn install_kernel(which: DebianKernel, cache: &Path, kdir: &Path, resolved: &Resolved) -> Result<BootedKernel> {
    let spec = which.spec();
    let apt = AptState::new(cache, &spec)?;
    let debs = kdir.join("debs.partial");
    let root_tmp = kdir.join(format!("{}.partial", resolved.release));
    let root = kdir.join(&resolved.release);
    for d in [&debs, &root_tmp] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    fs::create_dir_all(&debs)?;
    fs::create_dir_all(&root_tmp)?;

    let started = Instant::now();
    let specs: Vec<String> = resolved.packages.iter().map(|(n, v)| format!("{n}={v}")).collect();
    eprintln!("vm: {which}: downloading {}", specs.join(" "));
    let mut args = vec!["download".to_string()];
    args.extend(specs.iter().cloned());
    apt.get(&args, Some(&debs))?;

    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    files.sort();
    if files.len() != resolved.packages.len() {
        bail!(
            "apt-get download left {} .deb files in {} for {} packages",
            files.len(),
            debs.display(),
            resolved.packages.len()
        );
    }
    for deb in &files {
        run_checked(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root_tmp), "unpacking a kernel package")?;
    }

    // Modules: find lib/modules/<release> (or usr/lib/modules/<release>).
    // depmod from kmod < 31 only knows <base>/lib/modules, and virtme-ng
    // finds a root by looking for lib/modules next to boot/: give a
    // usr-only tree a lib -> usr/lib link.
    let lib = root_tmp.join("lib");
    if !lib.exists() && root_tmp.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", &lib).context("linking lib -> usr/lib")?;
    }
    let mods_tmp = root_tmp.join("lib/modules").join(&resolved.release);
    if !mods_tmp.is_dir() {
        bail!("the packages {} contain no lib/modules/{}", specs.join(" "), resolved.release);
    }
    let decompressed = decompress_modules(&mods_tmp)?;
    run_checked(
        Command::new(find_tool("depmod", &["/usr/sbin/depmod", "/sbin/depmod"])?)
            .arg("-a")
            .arg("-b")
            .arg(&root_tmp)
            .arg(&resolved.release),
        "depmod",
    )?;
    let dep = fs::read_to_string(mods_tmp.join("modules.dep")).context("reading modules.dep")?;
    if dep.contains(".ko.xz") || dep.contains(".ko.zst") || dep.contains(".ko.gz") {
        bail!("modules.dep still names compressed modules after decompression");
    }
    fs::write(mods_tmp.join(".ptwatch-ready"), b"")?;

    // Move into place, then write the manifest (the commit point).
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::rename(&root_tmp, &root)?;
    fs::remove_dir_all(&debs).ok();
    let vmlinuz = [
        root.join("boot").join(format!("vmlinuz-{}", resolved.release)),
        root.join("lib/modules").join(&resolved.release).join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| anyhow!("no vmlinuz for {} in {}", resolved.release, root.display()))?;
    // boot/<what>-<release> (classic packages) or lib/modules/<release>/<what>
    // (the split linux-binary/linux-modules packages of 6.19+).
    let in_boot = |what: &str| {
        [
            root.join("boot").join(format!("{what}-{}", resolved.release)),
            root.join("lib/modules").join(&resolved.release).join(what),
        ]
        .into_iter()
        .find(|p| p.is_file())
    };
    let kernel = BootedKernel {
        which,
        release: resolved.release.clone(),
        package_version: resolved.version.clone(),
        packages: specs,
        vmlinuz,
        modules_root: root.clone(),
        modules_dir: root.join("lib/modules").join(&resolved.release),
        config: in_boot("config"),
        system_map: in_boot("System.map"),
        cache_dir: kdir.to_path_buf(),
    };
    let manifest = serde_json::to_string_pretty(&kernel)?;
    let tmp = kdir.join(format!("{MANIFEST}.tmp"));
    fs::write(&tmp, manifest)?;
    fs::rename(&tmp, kdir.join(MANIFEST))?;

    // Older releases of this line are no longer referenced.
    for entry in fs::read_dir(kdir)?.flatten() {
        let p = entry.path();
        let name = entry.file_name();
        if p.is_dir() && name != "runs" && p != root {
            fs::remove_dir_all(&p).ok();
        }
    }
    eprintln!(
        "vm: {which}: {} ready in {:.1}s ({decompressed} modules decompressed)",
        kernel.release,
        started.elapsed().as_secs_f64()
    );
    Ok(kernel)
}

/// `xz -d` / `zstd -d` / `gzip -d` every compressed module under `dir`, in
/// batches. virtme-ng's initramfs (busybox insmod) cannot load compressed
/// modules.
fn decompress_modules(dir: &Path) -> Result<usize> {
    let mut by_tool: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let tool = if name.ends_with(".ko.xz") {
                "xz"
            } else if name.ends_with(".ko.zst") {
                "zstd"
            } else if name.ends_with(".ko.gz") {
                "gzip"
            } else {
                continue;
            };
            by_tool.entry(tool).or_default().push(path);
        }
    }
    let mut count = 0;
    for (tool, files) in by_tool {
        for chunk in files.chunks(256) {
            let mut cmd = Command::new(tool);
            cmd.arg("-d").arg("-q").arg("-f");
            if tool == "zstd" {
                cmd.arg("--rm");
            }
            cmd.arg("--").args(chunk);
            run_checked(&mut cmd, "decompressing kernel modules")?;
            count += chunk.len();
        }
    }
    Ok(count)
}

// ---------------------------------------------------------------------------
// Private apt state
// ---------------------------------------------------------------------------

struct AptState {
    dir: PathBuf,
    options: Vec<String>,
}

impl AptState {
    fn new(cache: &Path, spec: &KernelSpec) -> Result<Self> {
        let dir = cache.join("apt").join(spec.state);
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let mirrors = host_mirrors();
        let mut list = String::from("# written by `cargo xtask vm` from the host's apt sources\n");
        let keyring = mirrors.keyring.as_ref().map(|k| format!("[signed-by={}] ", k.display())).unwrap_or_default();
        if !spec.suites.is_empty() {
            list += &format!("deb {keyring}{} {} main\n", mirrors.archive, spec.suites.join(" "));
        }
        if !spec.security_suites.is_empty() {
            list += &format!("deb {keyring}{} {} main\n", mirrors.security, spec.security_suites.join(" "));
        }
        let list_path = dir.join("sources.list");
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
            // Only Packages indices: no translations, no AppStream metadata.
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
            // Cache dirs under target/ are not writable by the _apt user.
            "APT::Sandbox::User=root".into(),
        ];
        Ok(Self { dir, options })
    }

    fn base(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive").env("LC_ALL", "C");
        cmd
    }

    fn update(&self) -> Result<()> {
        let mut cmd = self.base("apt-get");
        cmd.args(["-q", "update"]);
        let out = run_checked(&mut cmd, "apt-get update (private state)")?;
        // apt-get update exits 0 on some fetch failures ("W: Failed to fetch").
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Failed to fetch") || err.contains("is not signed") {
            bail!("apt-get update (private state) failed:\n{}", err.trim());
        }
        Ok(())
    }

    fn cache(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.base("apt-cache");
        cmd.args(args);
        let out = run_checked(&mut cmd, "apt-cache (private state)")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn get(&self, args: &[String], cwd: Option<&Path>) -> Result<()> {
        let mut cmd = self.base("apt-get");
        cmd.arg("-q").args(args);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        run_checked(&mut cmd, "apt-get (private state)")?;
        Ok(())
    }
}

/// Mirror URIs taken from the host's apt configuration.
#[derive(Debug, Clone, PartialEq)]
struct Mirrors {
    archive: String,
    security: String,
    keyring: Option<PathBuf>,
}

/// The host's Debian mirror, from `/etc/apt/sources.list.d/debian.sources`
/// (deb822) or `/etc/apt/sources.list`; `$PTWATCH_DEBIAN_MIRROR` overrides.
fn host_mirrors() -> Mirrors {
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

/// RFC822-style stanzas: `Key: value`, continuation lines start with
/// whitespace, `#` comments, blank lines separate stanzas.
fn parse_deb822(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                stanzas.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        stanzas.push(cur);
    }
    stanzas
}

/// `apt-cache show` output → packages (name, version, parsed Depends).
fn parse_stanzas(text: &str) -> Vec<PackageInfo> {
    parse_deb822(text)
        .into_iter()
        .filter_map(|fields| {
            let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            Some(PackageInfo {
                name: get("Package")?,
                version: get("Version")?,
                depends: get("Depends").map(|d| parse_depends(&d)).unwrap_or_default(),
            })
        })
        .collect()
}

/// `a (= 1), b | c (>= 2)` → `[(a, Some(1)), (b, None)]`: first alternative
/// only, version kept only for `=`.
fn parse_depends(field: &str) -> Vec<(String, Option<String>)> {
    field
        .split(',')
        .filter_map(|group| {
            let alt = group.split('|').next()?.trim();
            let (name, rest) = match alt.find([' ', '(']) {
                Some(i) => (&alt[..i], alt[i..].trim()),
                None => (alt, ""),
            };
            let name = name.split(':').next()?.trim();
            if name.is_empty() {
                return None;
            }
            let version = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.trim().strip_prefix('='))
                .filter(|r| !r.starts_with(['<', '>', '=']))
                .map(|v| v.trim().to_string());
            Some((name.to_string(), version))
        })
        .collect()
}

/// Debian version ordering (`dpkg --compare-versions`): epoch, upstream,
/// revision; `~` sorts before everything, letters before other symbols,
/// digit runs compare numerically.
pub fn debian_version_cmp(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((up, rev)) => (epoch, up, rev),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(c) if c.is_ascii_digit() => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    fn part(a: &str, b: &str) -> Ordering {
        let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
        while !a.is_empty() || !b.is_empty() {
            while a.first().is_some_and(|c| !c.is_ascii_digit()) || b.first().is_some_and(|c| !c.is_ascii_digit()) {
                let (ca, cb) = (
                    a.first().copied().filter(|c| !c.is_ascii_digit()),
                    b.first().copied().filter(|c| !c.is_ascii_digit()),
                );
                let (oa, ob) = (order(ca), order(cb));
                if oa != ob {
                    return oa.cmp(&ob);
                }
                if ca.is_some() {
                    a = &a[1..];
                }
                if cb.is_some() {
                    b = &b[1..];
                }
            }
            let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let strip = |s: &[u8]| {
                let z = s.iter().take_while(|c| **c == b'0').count();
                s[z..].to_vec()
            };
            let (na, nb) = (strip(&a[..da]), strip(&b[..db]));
            let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(&nb));
            if ord != Ordering::Equal {
                return ord;
            }
            a = &a[da..];
            b = &b[db..];
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| part(ua, ub)).then_with(|| part(ra, rb))
}

// ---------------------------------------------------------------------------
// Host tools
// ---------------------------------------------------------------------------

/// Where the VM tools are; from [`vm_tools`].
#[derive(Debug, Clone)]
pub struct VmTools {
    pub vng: PathBuf,
    pub virtiofsd: PathBuf,
    pub qemu: PathBuf,
}

/// Install what the VM needs, when missing: the apt packages of
/// [`APT_TOOLS`], virtme-ng from PyPI, virtiofsd from crates.io (a few
/// minutes, once). Fast when all is present.
pub fn ensure_vm_tools() -> Result<()> {
    let missing: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(pkg, file)| !Path::new(file).exists() || !dpkg_installed(pkg))
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        eprintln!("vm: installing {}", missing.join(" "));
        let apt = |args: &[&str]| {
            let mut cmd = Command::new("apt-get");
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null());
            run_checked(&mut cmd, "apt-get")
        };
        apt(&["-q", "update"])?;
        let mut args = vec!["-q", "-y", "install", "--no-install-recommends"];
        args.extend(&missing);
        apt(&args)?;
    }

    // A pyenv shim can outlive the package it points to: ask vng itself.
    let vng_works = find_vng().is_some_and(|vng| {
        Command::new(vng).arg("--version").stdin(Stdio::null()).output().is_ok_and(|o| o.status.success())
    });
    if !vng_works {
        eprintln!("vm: installing virtme-ng {VIRTME_NG_VERSION} (pip)");
        let python = find_tool("python3", &["/usr/bin/python3"])?;
        let pip = |extra: &[&str]| {
            run_checked(
                Command::new(&python)
                    .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                    .args(extra)
                    .arg(format!("virtme-ng=={VIRTME_NG_VERSION}"))
                    .env("PIP_ROOT_USER_ACTION", "ignore"),
                "pip install virtme-ng",
            )
        };
        if let Err(e) = pip(&[]) {
            // Debian's own python3 refuses installs outside a venv (PEP 668);
            // a pyenv or other user-installed python does not.
            if !format!("{e:#}").contains("externally-managed-environment") {
                return Err(e);
            }
            pip(&["--break-system-packages"])?;
        }
        find_vng()
            .ok_or_else(|| anyhow!("virtme-ng installed but no `vng` found on PATH nor in python's scripts dir"))?;
    }

    if find_virtiofsd().is_none() {
        eprintln!("vm: building virtiofsd (cargo install virtiofsd --locked; takes a few minutes, once)");
        let cargo = std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["install", "--locked", "--quiet", "virtiofsd"]);
        // Inherit output: it is long-running and users want to see progress.
        let status = cmd.status().context("running cargo install virtiofsd")?;
        if !status.success() {
            bail!("cargo install virtiofsd failed ({status}); it needs libseccomp-dev and libcap-ng-dev");
        }
        find_virtiofsd().ok_or_else(|| anyhow!("virtiofsd installed but not found in ~/.cargo/bin"))?;
    }
    vm_tools().map(|_| ())
}

/// Locate the VM tools without installing anything.
pub fn vm_tools() -> Result<VmTools> {
    let vng = find_vng()
        .ok_or_else(|| anyhow!("`vng` (virtme-ng) not found: run ensure_vm_tools (`cargo xtask vm setup`)"))?;
    let virtiofsd = find_virtiofsd().ok_or_else(|| {
        anyhow!("the Rust virtiofsd is not installed (Debian's C one in /usr/lib/qemu does not work with virtme-ng): run ensure_vm_tools (`cargo xtask vm setup`)")
    })?;
    let qemu = find_tool("qemu-system-x86_64", &["/usr/bin/qemu-system-x86_64"])?;
    for (pkg, file) in APT_TOOLS {
        if !Path::new(file).exists() {
            bail!("{file} missing (package {pkg}): run ensure_vm_tools (`cargo xtask vm setup`)");
        }
    }
    Ok(VmTools { vng, virtiofsd, qemu })
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default()
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` on PATH, else the first existing fallback.
fn find_tool(name: &str, fallbacks: &[&str]) -> Result<PathBuf> {
    path_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| is_executable(p))
        .ok_or_else(|| anyhow!("`{name}` not found on PATH"))
}

fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(|h| PathBuf::from(h).join("bin"))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
}

/// The Rust virtiofsd: PATH (but not qemu's old C daemon), then cargo's bin.
fn find_virtiofsd() -> Option<PathBuf> {
    path_dirs()
        .into_iter()
        .map(|d| d.join("virtiofsd"))
        .chain(cargo_bin_dir().map(|d| d.join("virtiofsd")))
        .filter(|p| !p.starts_with("/usr/lib/qemu") && !p.starts_with("/usr/libexec"))
        .find(|p| is_executable(p))
}

/// `vng` on PATH, else in the scripts directory of python3's site.
fn find_vng() -> Option<PathBuf> {
    if let Some(p) = path_dirs().into_iter().map(|d| d.join("vng")).find(|p| is_executable(p)) {
        return Some(p);
    }
    let out = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = Path::new(&dir).join("vng");
    is_executable(&p).then_some(p)
}

// ---------------------------------------------------------------------------
// Running a command in a VM
// ---------------------------------------------------------------------------

/// How to run the VM. `VmOptions::new(timeout)` gives the defaults.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Whole run: boot + command + power-off.
    pub timeout: Duration,
    /// qemu `-m`, e.g. `2G`.
    pub memory: String,
    /// vCPUs; `None` is virtme-ng's default (all host CPUs).
    pub cpus: Option<u32>,
    /// Working directory of the command in the guest (the host's root file
    /// system is the guest's, read-only). `None`: the caller's cwd.
    pub cwd: Option<PathBuf>,
    /// Host directories the guest may write to (they are read-only
    /// otherwise; /tmp, /etc, /var, /home … are throw-away overlays).
    pub rw_dirs: Vec<PathBuf>,
    /// Extra kernel command-line arguments.
    pub append: Vec<String>,
    /// Extra arguments for `vng`.
    pub extra_vng_args: Vec<String>,
}

impl VmOptions {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            memory: "2G".into(),
            cpus: None,
            cwd: None,
            rw_dirs: Vec::new(),
            append: Vec::new(),
            extra_vng_args: Vec::new(),
        }
    }
}

/// What a command printed in the VM.
#[derive(Debug, Clone)]
pub struct VmOutput {
    /// Exit status of the command (`sh` convention: 128+n after signal n).
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    /// Output of the guest-side set-up (mounts, checks): warnings land here.
    pub setup_log: String,
    /// vng's own output: the kernel console (boot log) and qemu messages.
    pub console: String,
    /// Host time from starting vng until it exited.
    pub elapsed: Duration,
    /// Host time from starting vng until the guest's user space ran.
    pub boot_time: Option<Duration>,
}

impl VmOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// [`run_in_vm_with`] with 2 GiB of memory and the given timeout.
pub fn run_in_vm(kernel: &BootedKernel, command: &str, timeout: Duration) -> Result<VmOutput> {
    run_in_vm_with(kernel, command, &VmOptions::new(timeout))
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Boot `kernel` with virtme-ng and run `command` with `/bin/sh` as root.
/// Fails when the VM cannot start, the kernel does not reach user space, or
/// the timeout passes; a non-zero exit of `command` is not an error (see
/// [`VmOutput::status`]).
pub fn run_in_vm_with(kernel: &BootedKernel, command: &str, opts: &VmOptions) -> Result<VmOutput> {
    let tools = vm_tools()?;
    if !kernel.vmlinuz.is_file() {
        bail!("{} does not exist: fetch the kernel again", kernel.vmlinuz.display());
    }

    // Scratch directory shared read-write with the guest. Under the cache,
    // not /tmp: virtme-ng overlays the guest's /tmp, so writes there would
    // not reach the host.
    let n = RUN_COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
    let run_dir = kernel.cache_dir.join("runs").join(format!("{}-{}-{n}", std::process::id(), unix_millis()));
    fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    fs::write(run_dir.join("cmd.sh"), command)?;
    let script = guest_script(&run_dir, kernel);
    fs::write(run_dir.join("guest.sh"), script)?;

    let mut path: Vec<PathBuf> = Vec::new();
    for tool in [&tools.virtiofsd, &tools.vng] {
        if let Some(dir) = tool.parent() {
            path.push(dir.to_path_buf());
        }
    }
    path.extend(path_dirs());
    let path = std::env::join_paths(path).unwrap_or_else(|_| OsString::from("/usr/bin:/bin"));

    let mut cmd = Command::new(&tools.vng);
    cmd.arg("--run")
        .arg(&kernel.vmlinuz)
        .arg("--qemu")
        .arg(&tools.qemu)
        .arg("--disable-kvm")
        .arg("--verbose")
        .args(["--memory", &opts.memory])
        .arg(format!("--rwdir={}", run_dir.display()));
    if let Some(cpus) = opts.cpus {
        cmd.args(["--cpus", &cpus.to_string()]);
    }
    if let Some(cwd) = &opts.cwd {
        cmd.arg("--cwd").arg(cwd);
    }
    for d in &opts.rw_dirs {
        cmd.arg(format!("--rwdir={}", d.display()));
    }
    for a in &opts.append {
        cmd.args(["--append", a]);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        cmd.args(["--user", "root"]);
    }
    cmd.args(&opts.extra_vng_args);
    cmd.arg("--exec").arg(format!("/bin/sh {}/guest.sh", run_dir.display()));
    cmd.env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a timeout can end vng, qemu and virtiofsd.
        .process_group(0);

    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {}", tools.vng.display()))?;
    let pgid = child.id() as libc::pid_t;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err_t = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));

    let booted_marker = run_dir.join("booted");
    let mut boot_time = None;
    let mut timed_out = false;
    let exit = loop {
        if boot_time.is_none() && booted_marker.exists() {
            boot_time = Some(started.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > opts.timeout {
            timed_out = true;
            kill_group(pgid);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // vng may leave helpers (virtiofsd) behind in its group on odd exits.
    kill_group(pgid);
    let elapsed = started.elapsed();
    let vng_stdout = out_t.join().unwrap_or_default();
    let vng_stderr = err_t.join().unwrap_or_default();
    let mut console = String::from_utf8_lossy(&vng_stderr).into_owned();
    let vng_out = String::from_utf8_lossy(&vng_stdout);
    if !vng_out.trim().is_empty() {
        console.push_str("\n--- vng stdout ---\n");
        console.push_str(&vng_out);
    }

    fs::write(run_dir.join("console.log"), &console).ok();
    let read = |name: &str| fs::read(run_dir.join(name)).ok().map(|b| String::from_utf8_lossy(&b).into_owned());
    let booted = booted_marker.exists();
    if boot_time.is_none() && booted {
        boot_time = Some(elapsed);
    }
    let status = read("status").and_then(|s| s.trim().parse::<i32>().ok());
    let tail = console_tail(&console, 40);

    let result = if timed_out {
        Err(anyhow!(
            "VM for {} timed out after {:?} ({}); last console lines:\n{tail}\n(scratch files kept in {})",
            kernel.release,
            opts.timeout,
            if booted {
                "the kernel booted; the command did not finish"
            } else {
                "the kernel did not reach user space"
            },
            run_dir.display()
        ))
    } else if !booted {
        let hint = if console.contains("Linux version") {
            "the kernel started but never reached the guest script: see the console"
        } else {
            "the kernel printed nothing: a corrupt image, too little memory or an early triple fault (qemu runs with -no-reboot and exits)"
        };
        Err(anyhow!(
            "kernel {} did not boot (vng exited with {:?} after {:.1}s before the guest ran anything; {hint}); last console lines:\n{tail}\n(scratch files kept in {})",
            kernel.release,
            exit,
            elapsed.as_secs_f64(),
            run_dir.display()
        ))
    } else if let Some(status) = status {
        Ok(VmOutput {
            status,
            stdout: read("stdout").unwrap_or_default(),
            stderr: read("stderr").unwrap_or_default(),
            setup_log: read("setup.log").unwrap_or_default(),
            console,
            elapsed,
            boot_time,
        })
    } else {
        Err(anyhow!(
            "kernel {} booted but the command left no exit status (crash or power-off?); vng exited with {:?}; last console lines:\n{tail}\n(scratch files kept in {})",
            kernel.release,
            exit,
            run_dir.display()
        ))
    };
    if result.is_ok() && std::env::var_os("PTWATCH_VM_KEEP").is_none() {
        fs::remove_dir_all(&run_dir).ok();
    }
    result
}

/// The script the guest runs: mounts, a marker that user space is up, the
/// command with its output in files, its exit status, sync.
fn guest_script(run_dir: &Path, kernel: &BootedKernel) -> String {
    let dir = shell_quote(&run_dir.display().to_string());
    let quote_opt =
        |p: &Option<PathBuf>| p.as_ref().map(|p| shell_quote(&p.display().to_string())).unwrap_or_else(|| "''".into());
    let (config, system_map) = (quote_opt(&kernel.config), quote_opt(&kernel.system_map));
    format!(
        r#"# generated by xtask/src/vm.rs
R={dir}
KCONFIG={config}
KSYSMAP={system_map}
: > "$R/booted"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
{{
  mounted() {{ grep -qs " $1 $2 " /proc/mounts; }}
  mounted /sys/fs/bpf bpf || mount -t bpf bpf /sys/fs/bpf || echo "warning: cannot mount bpffs"
  mounted /sys/kernel/tracing tracefs || mount -t tracefs tracefs /sys/kernel/tracing || echo "warning: cannot mount tracefs"
  mounted /sys/kernel/debug debugfs || mount -t debugfs debugfs /sys/kernel/debug || echo "warning: cannot mount debugfs"
  [ -e /sys/kernel/btf/vmlinux ] || echo "warning: /sys/kernel/btf/vmlinux missing"
  [ -e "/lib/modules/$(uname -r)/modules.dep" ] || echo "warning: /lib/modules/$(uname -r)/modules.dep missing: modules cannot load"
  # The guest sees the host's /boot: give it this kernel's config and
  # System.map instead (bpftool feature probe and others read
  # /boot/config-$(uname -r)).
  rel=$(uname -r)
  if [ ! -e "/boot/config-$rel" ] && [ -n "$KCONFIG" ]; then
    mount -t tmpfs -o mode=0755 boot /boot &&
      cp "$KCONFIG" "/boot/config-$rel" &&
      {{ [ -z "$KSYSMAP" ] || cp "$KSYSMAP" "/boot/System.map-$rel"; }} ||
      echo "warning: cannot provide /boot/config-$rel"
  fi
  ulimit -l unlimited 2>/dev/null || true
}} > "$R/setup.log" 2>&1
/bin/sh "$R/cmd.sh" > "$R/stdout" 2> "$R/stderr" < /dev/null
echo $? > "$R/status"
sync
"#
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn console_tail(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// End what is left of vng's process group (qemu, virtiofsd): SIGTERM,
/// then SIGKILL. Does nothing when the group is already empty.
fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names
    // the process group created for vng (signal 0 only checks it exists).
    let alive = || unsafe { libc::kill(-pgid, 0) } == 0;
    if !alive() {
        return;
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        if !alive() {
            return;
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Run a command, capture its output, fail with the command line and stderr
/// when it fails.
fn run_checked(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    cmd.stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("{what}: cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "{what}: `{line}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// An exclusive `flock` held until drop.
struct FileLock {
    _file: fs::File,
}

impl FileLock {
    fn exclusive(path: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            bail!("locking {}: {}", path.display(), std::io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }
}

// ---------------------------------------------------------------------------
// Command line (wired from main.rs as `cargo xtask vm …`)
// ---------------------------------------------------------------------------

/// `cargo xtask vm …`
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Install qemu, virtme-ng, virtiofsd and friends when missing.
    Setup,
    /// Resolve, download and prepare kernels (all three when none is named).
    Fetch {
        /// bookworm-6.1, trixie-backports-6, sid-7, trixie-backports-newest
        kernels: Vec<DebianKernel>,
        /// Re-resolve against the mirror even when a kernel is cached.
        #[arg(long)]
        refresh: bool,
    },
    /// Boot a kernel and run a shell command in it as root.
    Run {
        /// bookworm-6.1, trixie-backports-6, sid-7, trixie-backports-newest
        kernel: DebianKernel,
        /// Seconds for boot + command.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Print the kernel console too.
        #[arg(long)]
        console: bool,
        /// The command (joined with spaces, run by /bin/sh).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Boot each kernel and print what ptwatch depends on: BTF, mounts,
    /// the page-table symbols in kallsyms.
    Check { kernels: Vec<DebianKernel> },
}

/// Kernel symbols ptwatch's probe plans look for.
pub const PROBE_SYMBOLS: &[&str] = &[
    "tlb_remove_table",
    "free_pte",
    "try_to_free_pte",
    "___pte_free_tlb",
    "free_pgtables",
    "zap_vma_range_batched",
    "zap_page_range_single_batched",
    "exit_mmap",
    "pte_free_defer",
    "zap_huge_pmd",
];

/// Entry point for `cargo xtask vm …`.
pub fn run(cmd: VmCommand) -> Result<()> {
    let cache = default_cache_dir();
    let or_all = |ks: Vec<DebianKernel>| if ks.is_empty() { DebianKernel::ALL.to_vec() } else { ks };
    match cmd {
        VmCommand::Setup => ensure_vm_tools(),
        VmCommand::Fetch { kernels, refresh } => {
            let mode = if refresh { FetchMode::Refresh } else { FetchMode::CacheFirst };
            for k in or_all(kernels) {
                let b = fetch_kernel_with(k, &cache, mode)?;
                println!("{k}: {} ({}) {}", b.release, b.package_version, b.vmlinuz.display());
            }
            Ok(())
        }
        VmCommand::Run { kernel, timeout, console, command } => {
            ensure_vm_tools()?;
            let k = fetch_kernel(kernel, &cache)?;
            let out = run_in_vm(&k, &command.join(" "), Duration::from_secs(timeout))?;
            if console {
                eprintln!("{}", out.console);
            }
            eprint!("{}", out.setup_log);
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            if !out.success() {
                bail!("command exited with status {} in {}", out.status, k.release);
            }
            Ok(())
        }
        VmCommand::Check { kernels } => {
            ensure_vm_tools()?;
            let script = format!(
                "uname -r; ls -la /sys/kernel/btf/vmlinux; mount | grep -E 'bpf|tracefs|debugfs'; \
                 echo kallsyms: $(grep -c . /proc/kallsyms); grep -wE '{}' /proc/kallsyms | awk '{{print $3}}' | sort -u",
                PROBE_SYMBOLS.join("|")
            );
            for k in or_all(kernels) {
                let b = fetch_kernel(k, &cache)?;
                let out = run_in_vm(&b, &script, Duration::from_secs(300))?;
                println!(
                    "== {k} ({}), booted in {:.1}s, CONFIG_PT_RECLAIM={}",
                    b.release,
                    out.boot_time.unwrap_or(out.elapsed).as_secs_f64(),
                    b.config_value("CONFIG_PT_RECLAIM").unwrap_or_else(|| "unset".into())
                );
                print!("{}{}{}", out.setup_log, out.stdout, out.stderr);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        let lt = |a: &str, b: &str| {
            assert_eq!(debian_version_cmp(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(debian_version_cmp(b, a), Ordering::Greater, "{b} > {a}");
        };
        lt("6.18.12-1~bpo13+1", "6.18.15-1~bpo13+1");
        lt("6.19.14-1~bpo13+1", "7.0.4-1~bpo13+1");
        lt("7.2.9-1~bpo13+1", "7.2.13-1");
        lt("7.2.13-1~bpo13+1", "7.2.13-1");
        lt("6.1.176-1", "1:6.1.0-1");
        lt("1.0~rc1", "1.0");
        lt("1.0", "1.0a");
        lt("1.0a", "1.0+");
        lt("1.0", "1.0-1");
        assert_eq!(debian_version_cmp("1.0-0", "1.0"), Ordering::Equal);
        assert_eq!(debian_version_cmp("01.2", "1.2"), Ordering::Equal);
    }

    #[test]
    fn depends() {
        let d = parse_depends(
            "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, kmod, \
             linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), python3:any",
        );
        assert_eq!(
            d,
            vec![
                ("dracut".to_string(), None),
                ("kmod".to_string(), None),
                ("linux-binary-7.2.13+deb14-cloud-amd64".to_string(), Some("7.2.13-1".to_string())),
                ("python3".to_string(), None),
            ]
        );
    }

    fn pkg(name: &str, version: &str, deps: &[&str]) -> PackageInfo {
        PackageInfo {
            name: name.into(),
            version: version.into(),
            depends: deps.iter().map(|d| (d.to_string(), Some(version.to_string()))).collect(),
        }
    }

    #[test]
    fn chooses_newest_complete_kernel() {
        let index = vec![
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
            pkg(
                "linux-image-7.3.4+deb13-cloud-amd64",
                "7.3.4-1~bpo13+1",
                &[
                    "linux-binary-7.3.4+deb13-cloud-amd64",
                    "linux-modules-7.3.4+deb13-cloud-amd64",
                    "linux-base-7.3.4+deb13-cloud-amd64",
                ],
            ),
            pkg("linux-binary-7.3.4+deb13-cloud-amd64", "7.3.4-1~bpo13+1", &[]),
            pkg("linux-modules-7.3.4+deb13-cloud-amd64", "7.3.4-1~bpo13+1", &[]),
            pkg("linux-base-7.3.4+deb13-cloud-amd64", "7.3.4-1~bpo13+1", &[]),
        ];
        // 6.19.14 lacks its modules; 6.18.15 lacks only the optional base.
        let r = choose_kernel(&index, "6.").unwrap();
        assert_eq!(r.release, "6.18.15+deb13-cloud-amd64");
        assert_eq!(r.packages.len(), 1);
        let r = choose_kernel(&index, "").unwrap();
        assert_eq!(r.release, "7.3.4+deb13-cloud-amd64");
        assert_eq!(r.packages.len(), 4);
        assert!(choose_kernel(&index, "8.").is_err());
    }

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
    fn kernel_names_round_trip() {
        for k in [
            DebianKernel::Bookworm61,
            DebianKernel::TrixieBackports6x,
            DebianKernel::Sid7x,
            DebianKernel::TrixieBackportsNewest,
        ] {
            assert_eq!(k.name().parse::<DebianKernel>().unwrap(), k);
        }
        assert_eq!("sid".parse::<DebianKernel>().unwrap(), DebianKernel::Sid7x);
        assert!("potato".parse::<DebianKernel>().is_err());
        assert_eq!(image_release("linux-image-6.1.0-50-cloud-amd64"), Some("6.1.0-50-cloud-amd64"));
        assert_eq!(image_release("linux-image-cloud-amd64"), None);
        assert_eq!(image_release("linux-image-6.1.0-50-cloud-amd64-dbg"), None);
    }
}
