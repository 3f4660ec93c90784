//! x86_64 guests: virtme-ng boots the kernel with the host's root file
//! system (read-only, throw-away overlays), so host-built binaries run
//! inside as they are. The runner's framed stream goes to a file in the
//! run directory, the one host directory the guest may write; the kernel
//! console stays apart in vng's output.

use std::{
    ffi::OsString,
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};

use super::{GuestRun, VmOptions};
use crate::vm::{
    arch::Arch,
    fetch::PreparedKernel,
    guest::{self, Step},
    process::{kill_group, shell_quote, tail, Drained},
    tools::{self, path_dirs},
};

pub fn run(kernel: &PreparedKernel, steps: &[Step], opts: &VmOptions, run_dir: &Path) -> Result<GuestRun> {
    let tools = tools::virtme_tools()?;
    if let Some(cpu) = opts.cpu.filter(|c| c.arch() != Arch::X86_64) {
        anyhow::bail!("CPU model {cpu:?} is not an x86_64 CPU");
    }
    fs::write(run_dir.join("cmd.sh"), guest::render(steps, &run_dir.join("scratch").display().to_string()))?;
    fs::write(run_dir.join("guest.sh"), prelude(run_dir, kernel))?;

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
        .args(["--cpus", &opts.cpus.to_string()])
        .arg(format!("--rwdir={}", run_dir.display()));
    if let Some(cwd) = &opts.cwd {
        cmd.arg("--cwd").arg(cwd);
    }
    for dir in &opts.rw_dirs {
        cmd.arg(format!("--rwdir={}", dir.display()));
    }
    if !opts.qemu_args.is_empty() {
        cmd.arg(format!("--qemu-opts={}", opts.qemu_args.join(" ")));
    }
    for a in &opts.append {
        cmd.args(["--append", a]);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        cmd.args(["--user", "root"]);
    }
    // vng passes `-cpu max` without KVM, the model `Cpu::X86Max` documents.
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
    let drained = Drained::start(&mut child);

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
    let (vng_stdout, vng_stderr) = drained.finish();
    let mut console = vng_stderr;
    if !vng_stdout.trim().is_empty() {
        console.push_str("\n--- vng stdout ---\n");
        console.push_str(&vng_stdout);
    }
    let read = |name: &str| fs::read(run_dir.join(name)).ok().map(|b| String::from_utf8_lossy(&b).into_owned());
    let booted = booted_marker.exists();
    if let Some(setup) = read("setup.log").filter(|s| !s.trim().is_empty()) {
        console.push_str("\n--- guest set-up ---\n");
        console.push_str(&setup);
    }
    if timed_out {
        fs::write(run_dir.join("console.log"), &console).ok();
        return Err(anyhow!(
            "VM for {} timed out after {:?} ({}); last console lines:\n{}\n(scratch files kept in {})",
            kernel.release,
            opts.timeout,
            if booted { "the kernel booted; the steps did not finish" } else { "the kernel did not reach user space" },
            tail(&console, 40),
            run_dir.display()
        ));
    }
    if !booted {
        fs::write(run_dir.join("console.log"), &console).ok();
        let hint = if console.contains("Linux version") {
            "the kernel started but never reached the guest script: see the console"
        } else {
            "the kernel printed nothing: a corrupt image, too little memory or an early triple fault (qemu runs with -no-reboot and exits)"
        };
        return Err(anyhow!(
            "kernel {} did not boot (vng exited with {exit:?} after {:.1}s before the guest ran anything; {hint}); last console lines:\n{}\n(scratch files kept in {})",
            kernel.release,
            elapsed.as_secs_f64(),
            tail(&console, 40),
            run_dir.display()
        ));
    }
    let stream = read("stream").unwrap_or_default();
    Ok(GuestRun { log: guest::parse(&stream), stream, console, elapsed, boot_time, run_dir: run_dir.to_path_buf() })
}

/// What the guest runs first: a marker that user space is up, the mounts
/// virtme-ng leaves out, this kernel's config in /boot, then the runner
/// with its stream into a file.
fn prelude(run_dir: &Path, kernel: &PreparedKernel) -> String {
    let dir = shell_quote(&run_dir.display().to_string());
    let quote_opt =
        |p: &Option<PathBuf>| p.as_ref().map(|p| shell_quote(&p.display().to_string())).unwrap_or_else(|| "''".into());
    let (config, system_map) = (quote_opt(&kernel.config), quote_opt(&kernel.system_map));
    format!(
        r#"# generated by xtask/src/vm/boot/virtme.rs
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
/bin/sh "$R/cmd.sh" > "$R/stream" 2>&1 < /dev/null
sync
"#
    )
}
