//! The initramfs of a foreign-architecture guest: the architecture's own
//! static busybox (from Debian's `busybox-static`, fetched once per
//! architecture into the cache), a tiny `/init`, the guest runner's script
//! and the files a test needs, in `/ptwatch/`.
//!
//! Nothing is shared with the host (the cloud arm64 kernel has no 9p, and
//! no module is loaded), so everything the steps run must be in here and
//! static; results leave over the serial console.

use std::{
    fs,
    io::BufWriter,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::{cpio, VmOptions, GUEST_FILES_DIR};
use crate::vm::{
    apt::AptState,
    arch::Arch,
    debian::parse_stanzas,
    fetch::PreparedKernel,
    process::{run_checked, FileLock},
};

/// `/init`: mounts what ptwatch and its tests need, then the runner, then
/// power-off (qemu runs with `-no-reboot`, so it exits).
const INIT: &str = r#"#!/bin/busybox sh
# --install finds busybox through /proc/self/exe.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
# /usr/bin first: the real tools of EXTRA_PACKAGES (setpriv) are there, the
# busybox applets of the same name in /bin.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf || echo "warning: cannot mount bpffs"
mount -t tracefs tracefs /sys/kernel/tracing || echo "warning: cannot mount tracefs"
mount -t debugfs debugfs /sys/kernel/debug || echo "warning: cannot mount debugfs"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "warning: cannot mount cgroup2"
ip link set lo up
# Kernel messages stay in dmesg: the console carries the runner's frames
# (an oops still reaches it: the kernel raises the level for those).
dmesg -n 1
ulimit -l unlimited 2>/dev/null
# riscv64's Debian kernel boots with the BPF JIT off (BPF_JIT_DEFAULT_ON
# unset), and fentry needs the JIT; an operator would turn it on.
[ -w /proc/sys/net/core/bpf_jit_enable ] && echo 1 > /proc/sys/net/core/bpf_jit_enable
hostname ptwatch-vm
echo "@@ptwatch-vm:booted $(cut -d' ' -f1 /proc/uptime)"
cd /ptwatch
sh /ptwatch/run.sh
sync
poweroff -f
"#;

/// Debian packages unpacked for the guests besides busybox, and the files
/// of them the guests get: util-linux's `setpriv` (the scan test runs a
/// process as nobody with it; busybox's applet lacks `--reuid`) with the
/// dynamic loader and the libraries it needs.
const EXTRA_PACKAGES: &[&str] = &["util-linux", "libc6", "libcap-ng0"];
fn wanted(relative: &Path) -> bool {
    let name = relative.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    relative.ends_with("bin/setpriv")
        || (relative.starts_with("usr/lib") || relative.starts_with("lib"))
            && (name.starts_with("ld-linux") || name == "libc.so.6" || name.starts_with("libcap-ng.so"))
}

/// Write the initramfs for a run to `path`.
pub fn build(kernel: &PreparedKernel, runner: &str, opts: &VmOptions, path: &Path) -> Result<()> {
    let busybox = busybox(kernel)?;
    let extra = extra_root(kernel)?;
    let mut extra_files = Vec::new();
    collect(&extra, &extra, &mut extra_files)?;
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = cpio::Writer::new(BufWriter::new(file));
    let guest = GUEST_FILES_DIR.trim_start_matches('/');
    let write = |w: &mut cpio::Writer<_>| -> std::io::Result<()> {
        for dir in [
            "bin", "sbin", "usr", "usr/bin", "usr/sbin", "usr/lib", "dev", "proc", "sys", "tmp", "run", "etc", "root",
            "boot", guest,
        ] {
            w.dir(dir)?;
        }
        // The kernel opens /dev/console for init before anything is mounted.
        w.char_device("dev/console", 5, 1)?;
        // Merged /usr: the dynamic loader is /lib/ld-linux-…, installed in
        // usr/lib.
        w.symlink("lib", "usr/lib")?;
        let mut dirs = std::collections::BTreeSet::new();
        for relative in &extra_files {
            let mut parents: Vec<&Path> = relative.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).collect();
            parents.reverse();
            for dir in parents {
                let dir = dir.display().to_string();
                if !["usr", "usr/bin", "usr/lib", "lib", "bin", "sbin", "usr/sbin"].contains(&dir.as_str())
                    && dirs.insert(dir.clone())
                {
                    w.dir(&dir)?;
                }
            }
            let host = extra.join(relative);
            let name = relative.display().to_string();
            match fs::read_link(&host) {
                Ok(target) => w.symlink(&name, &target.display().to_string())?,
                Err(_) => w.host_file(&name, &host)?,
            }
        }
        w.host_file("bin/busybox", &busybox)?;
        w.symlink("bin/sh", "busybox")?;
        w.file("init", 0o755, INIT.as_bytes())?;
        w.file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )?;
        w.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
        w.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost\n")?;
        // What `/boot/config-$(uname -r)` readers (ptwatch check, bpftool)
        // expect to find.
        if let Some(config) = &kernel.config {
            w.host_file(&format!("boot/config-{}", kernel.release), config)?;
        }
        w.file(&format!("{guest}/run.sh"), 0o755, runner.as_bytes())?;
        for (name, host) in &opts.files {
            w.host_file(&format!("{guest}/{name}"), host)?;
        }
        Ok(())
    };
    write(&mut w).with_context(|| format!("writing the initramfs {}", path.display()))?;
    w.finish().with_context(|| format!("writing the initramfs {}", path.display()))?;
    Ok(())
}

/// `root`'s files that [`wanted`] selects, relative to `root` (symlinks
/// included, not followed).
fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            collect(root, &path, out)?;
        } else if let Ok(relative) = path.strip_prefix(root) {
            if wanted(relative) {
                out.push(relative.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(())
}

/// [`EXTRA_PACKAGES`] of the guest's architecture unpacked once into
/// `<cache>/<arch>/guest-root/`.
fn extra_root(kernel: &PreparedKernel) -> Result<PathBuf> {
    let arch_dir = kernel.cache_dir.parent().context("kernel cache dir has no parent")?;
    let root = arch_dir.join("guest-root");
    let ready = arch_dir.join("guest-root.ready");
    let _lock = FileLock::exclusive(&arch_dir.join(".guest-root.lock"))?;
    if ready.is_file() {
        return Ok(root);
    }
    let cache = arch_dir.parent().context("arch cache dir has no parent")?;
    let apt = AptState::new(cache, kernel.line.arch, &kernel.line.series.spec())?;
    apt.update()?;
    let debs = arch_dir.join("guest-debs.partial");
    for d in [&debs, &root] {
        if d.exists() {
            fs::remove_dir_all(d)?;
        }
    }
    fs::create_dir_all(&debs)?;
    let mut args = vec!["download".to_owned()];
    args.extend(EXTRA_PACKAGES.iter().map(|p| (*p).to_owned()));
    apt.get(&args, Some(&debs))?;
    for deb in fs::read_dir(&debs)?.filter_map(|e| e.ok().map(|e| e.path())) {
        run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root), "unpacking a guest package")?;
    }
    fs::remove_dir_all(&debs).ok();
    fs::write(&ready, EXTRA_PACKAGES.join(" "))?;
    eprintln!("vm: {}: {} unpacked in {}", kernel.line.arch, EXTRA_PACKAGES.join(", "), root.display());
    Ok(root)
}

/// The architecture's static busybox, fetched once into
/// `<cache>/<arch>/busybox/`.
fn busybox(kernel: &PreparedKernel) -> Result<PathBuf> {
    let arch: Arch = kernel.line.arch;
    let arch_dir = kernel.cache_dir.parent().context("kernel cache dir has no parent")?;
    let dir = arch_dir.join("busybox");
    let binary = dir.join("busybox");
    fs::create_dir_all(&dir)?;
    let _lock = FileLock::exclusive(&dir.join(".lock"))?;
    if binary.is_file() {
        return Ok(binary);
    }
    let cache = arch_dir.parent().context("arch cache dir has no parent")?;
    let apt = AptState::new(cache, arch, &kernel.line.series.spec())?;
    apt.update()?;
    let shown = apt.cache(&["show", "busybox-static"])?;
    let newest = parse_stanzas(&shown)
        .into_iter()
        .max_by(|a, b| crate::vm::debian::version_cmp(&a.version, &b.version))
        .context("no busybox-static package in the kernel's suites")?;
    let partial = dir.join("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial)?;
    apt.get(&["download".into(), format!("busybox-static={}", newest.version)], Some(&partial))?;
    let deb = fs::read_dir(&partial)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no busybox-static .deb")?;
    run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(partial.join("root")), "unpacking busybox-static")?;
    let Some(found) =
        ["bin/busybox", "usr/bin/busybox"].iter().map(|p| partial.join("root").join(p)).find(|p| p.is_file())
    else {
        bail!("busybox-static {} has no bin/busybox", newest.version);
    };
    fs::rename(found, &binary)?;
    fs::remove_dir_all(&partial).ok();
    eprintln!("vm: {arch}: busybox-static {} cached in {}", newest.version, binary.display());
    Ok(binary)
}
