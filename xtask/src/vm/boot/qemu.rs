//! arm64 and riscv64 guests: qemu (TCG) booting the kernel with the
//! initramfs of `initramfs.rs`; the framed stream and the kernel's console
//! share the serial port and come back on qemu's stdout.

use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use super::{initramfs, GuestRun, VmOptions};
use crate::vm::{
    arch::Arch,
    fetch::PreparedKernel,
    guest::{self, Step},
    process::{kill_group, tail, Drained},
    tools,
};

const BOOTED: &str = "@@ptwatch-vm:booted";

/// Machine, console device and firmware of an architecture.
fn machine_args(arch: Arch) -> (&'static [&'static str], &'static str) {
    match arch {
        // qemu's virt board; -nic none: its default NIC wants an EFI ROM
        // this host's qemu does not ship, and the guest needs no network.
        Arch::Arm64 => (&["-M", "virt"], "ttyAMA0"),
        // OpenSBI from qemu (-bios default) starts the kernel in S-mode.
        Arch::Riscv64 => (&["-M", "virt", "-bios", "default"], "ttyS0"),
        Arch::X86_64 => (&["-M", "q35"], "ttyS0"),
    }
}

pub fn run(kernel: &PreparedKernel, steps: &[Step], opts: &VmOptions, run_dir: &Path) -> Result<GuestRun> {
    let arch = kernel.line.arch;
    let qemu = tools::qemu(arch)?;
    let runner = guest::render(steps, "/tmp/ptwatch-runner");
    let initrd = run_dir.join("initramfs.cpio");
    initramfs::build(kernel, &runner, opts, &initrd)?;

    let cpu = opts.cpu.unwrap_or_else(|| arch.default_cpu());
    if cpu.arch() != arch {
        bail!("CPU model {cpu:?} is not a {arch} CPU");
    }
    let (machine, console) = machine_args(arch);
    // quiet: the console carries the frames; panic=-1 and -no-reboot turn
    // a panic into qemu exiting instead of a hang until the timeout.
    let mut append = vec![format!("console={console}"), "rdinit=/init".into(), "panic=-1".into(), "quiet".into()];
    append.extend(opts.append.iter().cloned());

    let mut cmd = Command::new(&qemu);
    cmd.args(machine)
        .args(["-cpu", cpu.qemu_arg()])
        .args(["-smp", &opts.cpus.to_string()])
        .args(["-m", &opts.memory])
        .args(["-nic", "none", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append.join(" ")])
        .args(&opts.qemu_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a timeout ends qemu and nothing else.
        .process_group(0);

    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {}", qemu.display()))?;
    let pgid = child.id() as libc::pid_t;
    let drained = Drained::start(&mut child);
    let mut timed_out = false;
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > opts.timeout {
            timed_out = true;
            kill_group(pgid);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    kill_group(pgid);
    let elapsed = started.elapsed();
    let (stdout, stderr) = drained.finish();
    let mut console = stdout.replace('\r', "");
    if !stderr.trim().is_empty() {
        console.push_str("\n--- qemu stderr ---\n");
        console.push_str(&stderr);
    }
    // The console is read at the end: /init reports the guest's uptime
    // when it started (TCG's clock follows the host's).
    let booted = console.contains(BOOTED);
    let boot_time = console
        .split_once(BOOTED)
        .and_then(|(_, after)| after.split_whitespace().next()?.parse::<f64>().ok())
        .map(std::time::Duration::from_secs_f64);
    fs_write(run_dir, &console);
    if timed_out {
        bail!(
            "{arch} VM for {} timed out after {:?} ({}); last console lines:\n{}\n(scratch files kept in {})",
            kernel.release,
            opts.timeout,
            if booted { "the kernel booted; the steps did not finish" } else { "the kernel did not reach user space" },
            tail(&console, 40),
            run_dir.display()
        );
    }
    if !booted {
        bail!(
            "{arch} kernel {} did not boot (qemu exited with {exit:?} after {:.1}s before /init ran); last console lines:\n{}\n(scratch files kept in {})",
            kernel.release,
            elapsed.as_secs_f64(),
            tail(&console, 40),
            run_dir.display()
        );
    }
    let stream = console.split_once(BOOTED).map(|(_, after)| after.to_owned()).unwrap_or_default();
    Ok(GuestRun { log: guest::parse(&stream), stream, console, elapsed, boot_time, run_dir: run_dir.to_path_buf() })
}

fn fs_write(run_dir: &Path, console: &str) {
    std::fs::write(run_dir.join("console.log"), console).ok();
}
