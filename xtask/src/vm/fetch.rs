//! Resolving, downloading and preparing one kernel line: the newest
//! complete kernel of the line is found in a private apt state, downloaded,
//! unpacked and (for virtme-ng boots) given decompressed modules and a fresh
//! `modules.dep`. The result is cached under `<cache>/<arch>/<series>/`; a
//! manifest written last is the commit point, so an interrupted fetch is
//! redone and a completed one costs no network.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{
    apt::AptState,
    debian::parse_stanzas,
    kernel::{choose_kernel, is_kernel_package, KernelLine, Resolved},
    process::{run_checked, FileLock},
    tools::find_tool,
};

/// Manifest written into a kernel's cache directory once it is complete.
const MANIFEST: &str = "kernel.json";
/// Marker in a prepared module tree (decompressed, depmod run).
const MODULES_READY: &str = ".ptwatch-ready";

/// A kernel unpacked in the cache, ready to boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreparedKernel {
    pub line: KernelLine,
    /// `uname -r` inside the VM, e.g. `7.2.13+deb14-cloud-amd64`.
    pub release: String,
    /// Debian version of the image package, e.g. `7.2.13-1`.
    pub package_version: String,
    /// The packages unpacked, as `name=version`.
    pub packages: Vec<String>,
    /// The compressed kernel image qemu boots.
    pub vmlinuz: PathBuf,
    /// `<root>/lib/modules/<release>` with uncompressed `.ko` and a fresh
    /// `modules.dep`, when the boot needs modules (virtme-ng); `None` for
    /// initramfs boots, whose module trees are not even downloaded.
    pub modules_dir: Option<PathBuf>,
    /// `config-<release>` when the packages ship it.
    pub config: Option<PathBuf>,
    /// `System.map-<release>` when the packages ship it.
    pub system_map: Option<PathBuf>,
    /// This line's directory in the cache (runs keep scratch files there).
    pub cache_dir: PathBuf,
}

impl PreparedKernel {
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
pub fn fetch_kernel(line: KernelLine, cache: &Path) -> Result<PreparedKernel> {
    fetch_kernel_with(line, cache, FetchMode::CacheFirst)
}

/// Resolve, download, unpack and prepare a kernel; see the module docs.
pub fn fetch_kernel_with(line: KernelLine, cache: &Path, mode: FetchMode) -> Result<PreparedKernel> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let cache = cache.canonicalize().with_context(|| format!("resolving {}", cache.display()))?;
    let kdir = cache.join(line.arch.name()).join(line.series.name());
    fs::create_dir_all(&kdir).with_context(|| format!("creating {}", kdir.display()))?;
    let _lock = FileLock::exclusive(&kdir.join(".lock"))?;

    let cached = load_cached(&kdir);
    if mode == FetchMode::CacheFirst {
        if let Some(k) = cached {
            return Ok(k);
        }
    }

    let resolved = match resolve_kernel(line, &cache) {
        Ok(r) => r,
        Err(e) => {
            if let Some(k) = cached {
                eprintln!("vm: warning: could not re-resolve {line} ({e:#}); using cached {}", k.release);
                return Ok(k);
            }
            return Err(e.context(format!("resolving the newest {line} kernel")));
        }
    };
    if !resolved.skipped.is_empty() {
        eprintln!("vm: {line}: skipped incomplete kernels: {}", resolved.skipped.join(", "));
    }
    if let Some(k) = cached {
        if k.release == resolved.release && k.package_version == resolved.version {
            return Ok(k);
        }
        eprintln!(
            "vm: {line}: {} {} replaces cached {} {}",
            resolved.release, resolved.version, k.release, k.package_version
        );
    }
    install_kernel(line, &cache, &kdir, &resolved)
}

/// The cached kernel of a line, if it is complete.
fn load_cached(kdir: &Path) -> Option<PreparedKernel> {
    let text = fs::read_to_string(kdir.join(MANIFEST)).ok()?;
    let k: PreparedKernel = serde_json::from_str(&text).ok()?;
    let modules_ready = match &k.modules_dir {
        Some(dir) => dir.join("modules.dep").is_file() && dir.join(MODULES_READY).is_file(),
        None => !k.line.needs_modules(),
    };
    (k.vmlinuz.is_file() && modules_ready).then_some(k)
}

fn resolve_kernel(line: KernelLine, cache: &Path) -> Result<Resolved> {
    let spec = line.series.spec();
    let apt = AptState::new(cache, line.arch, &spec)?;
    apt.update()?;

    let mut names = Vec::new();
    for prefix in ["linux-image-", "linux-binary-", "linux-modules-", "linux-base-"] {
        let out = apt.cache(&["pkgnames", prefix])?;
        names.extend(out.lines().map(str::trim).filter(|n| is_kernel_package(line.arch, n)).map(str::to_string));
    }
    if names.is_empty() {
        bail!(
            "no linux-*-{} packages in {:?} (private apt lists in {})",
            line.arch.flavour(),
            spec.suites,
            apt.dir.display()
        );
    }
    names.sort();
    names.dedup();
    let mut args = vec!["show"];
    args.extend(names.iter().map(String::as_str));
    let shown = apt.cache(&args)?;
    choose_kernel(&parse_stanzas(&shown), line).with_context(|| {
        format!(
            "choosing a {} kernel starting with {:?} in {:?}",
            line.arch.flavour(),
            spec.release_prefix,
            spec.suites
        )
    })
}

fn install_kernel(line: KernelLine, cache: &Path, kdir: &Path, resolved: &Resolved) -> Result<PreparedKernel> {
    let apt = AptState::new(cache, line.arch, &line.series.spec())?;
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
    eprintln!("vm: {line}: downloading {}", specs.join(" "));
    let mut args = vec!["download".to_string()];
    args.extend(specs.iter().cloned());
    apt.get(&args, Some(&debs))?;
    drop(apt);

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

    // Split packages (6.19+) install to usr/lib/modules; depmod from kmod <
    // 31 only knows <base>/lib/modules, and virtme-ng finds a root by
    // looking for lib/modules next to boot/: give a usr-only tree a
    // lib -> usr/lib link.
    let lib = root_tmp.join("lib");
    if !lib.exists() && root_tmp.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", &lib).context("linking lib -> usr/lib")?;
    }
    let mods_tmp = root_tmp.join("lib/modules").join(&resolved.release);
    let mut decompressed = 0;
    if line.needs_modules() {
        if !mods_tmp.join("kernel").is_dir() {
            bail!("the packages {} contain no lib/modules/{}/kernel", specs.join(" "), resolved.release);
        }
        decompressed = decompress_modules(&mods_tmp)?;
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
        fs::write(mods_tmp.join(MODULES_READY), b"")?;
    } else if mods_tmp.join("kernel").is_dir() {
        // A classic package brings its modules along; an initramfs boot
        // loads none.
        fs::remove_dir_all(mods_tmp.join("kernel")).ok();
    }

    // Move into place, then write the manifest (the commit point).
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::rename(&root_tmp, &root)?;
    fs::remove_dir_all(&debs).ok();
    // boot/<what>-<release> (classic packages) or lib/modules/<release>/<what>
    // (the split linux-binary/linux-base packages of 6.19+).
    let find = |what: &str| {
        [
            root.join("boot").join(format!("{what}-{}", resolved.release)),
            root.join("lib/modules").join(&resolved.release).join(what),
        ]
        .into_iter()
        .find(|p| p.is_file())
    };
    let vmlinuz =
        find("vmlinuz").ok_or_else(|| anyhow!("no vmlinuz for {} in {}", resolved.release, root.display()))?;
    let kernel = PreparedKernel {
        line,
        release: resolved.release.clone(),
        package_version: resolved.version.clone(),
        packages: specs,
        vmlinuz,
        modules_dir: line.needs_modules().then(|| root.join("lib/modules").join(&resolved.release)),
        config: find("config"),
        system_map: find("System.map"),
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
        "vm: {line}: {} ready in {:.1}s ({decompressed} modules decompressed)",
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
            if entry.file_type()?.is_dir() {
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
