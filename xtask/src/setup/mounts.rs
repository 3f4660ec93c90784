//! The pseudo-filesystems the agent needs, mounted when missing.
use std::{ffi::CStr, fs, io};

use anyhow::{bail, Context as _, Result};

use super::step;

/// The filesystem type mounted at `mount_point`, if any. The last entry of
/// /proc/mounts wins: later mounts hide earlier ones at the same point.
fn mounted_type(mount_point: &str) -> Result<Option<String>> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().rev().find_map(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next()?;
        let point = fields.next()?;
        let fstype = fields.next()?;
        (point == mount_point).then(|| fstype.to_owned())
    }))
}

/// A pseudo-filesystem the agent needs.
pub struct Mount {
    /// What to call it in messages.
    label: &'static str,
    point: &'static CStr,
    fstype: &'static CStr,
    source: &'static CStr,
    /// Kernel option that provides it, for the error message.
    kernel_option: &'static str,
}

pub const MOUNTS: [Mount; 2] = [
    // Where aya and bpftool pin objects; some hosts boot with a plain
    // directory there.
    Mount {
        label: "bpffs",
        point: c"/sys/fs/bpf",
        fstype: c"bpf",
        source: c"bpf",
        kernel_option: "CONFIG_BPF_SYSCALL",
    },
    // Tracepoints are found by name through tracefs.
    Mount {
        label: "tracefs",
        point: c"/sys/kernel/tracing",
        fstype: c"tracefs",
        source: c"nodev",
        kernel_option: "CONFIG_TRACING",
    },
];

pub fn mount_if_missing(mount: &Mount) -> Result<()> {
    let point = mount.point.to_string_lossy();
    let fstype = mount.fstype.to_string_lossy();
    let source = mount.source.to_string_lossy();
    if mounted_type(&point)?.as_deref() == Some(&*fstype) {
        step(&format!("{} at {point}: mounted", mount.label));
        return Ok(());
    }
    step(&format!("{} at {point}: not mounted, mounting (mount -t {fstype} {source} {point})", mount.label));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc =
        unsafe { libc::mount(mount.source.as_ptr(), mount.point.as_ptr(), mount.fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        bail!(
            "mounting {} at {point} failed ({err}): needs a kernel with {} and CAP_SYS_ADMIN; try `mount -t {fstype} {source} {point}` by hand",
            mount.label,
            mount.kernel_option
        );
    }
    Ok(())
}
