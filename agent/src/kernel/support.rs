//! Checks of what the agent may do and what the kernel supports, each with a
//! one-line explanation for the user.

use std::{fs, io, path::Path};

use crate::{
    kernel::{
        mapping::{AnonMapping, PTE_TABLE_SPAN},
        procfs,
    },
    privileges::{self, CapabilitySet, PrivilegeError, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN},
};

#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("missing capability {missing}: loading and attaching eBPF tracing programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run as root or grant them (docs/install.md#privileges)")]
    MissingCapabilities { missing: CapabilitySet },
    #[error(transparent)]
    Capabilities(#[from] PrivilegeError),
    #[error("tracefs is not mounted and mounting it at {path} failed (needs CAP_SYS_ADMIN; or mount it first: mount -t tracefs nodev {path})")]
    Tracefs {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot read tracefs at {path} (tracefs is root-only; a non-root agent needs CAP_DAC_READ_SEARCH, see docs/install.md#privileges)")]
    TracefsUnreadable {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Fail early, with one line naming what is missing, when the process
/// cannot load and attach tracing programs: that needs CAP_BPF plus
/// CAP_PERFMON in the effective set (CAP_SYS_ADMIN implies both, and is the
/// only way on kernels before 5.8).
pub fn require_privileges() -> Result<(), SupportError> {
    let effective = privileges::current()?.effective;
    if effective.has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing = CapabilitySet::of(&[CAP_BPF, CAP_PERFMON]).without(effective);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SupportError::MissingCapabilities { missing })
    }
}

const TRACEFS: &str = "/sys/kernel/tracing";
/// Where aya looks for tracefs, in its order.
const TRACEFS_PLACES: [&str; 2] = [TRACEFS, "/sys/kernel/debug/tracing"];
/// A tracepoint every plan attaches, read to prove tracefs is usable.
const PROBE_EVENT_ID: &str = "events/syscalls/sys_enter_madvise/id";

/// Tracepoints are found through tracefs: mount it when no place has it
/// (many hosts boot without it; mounting needs CAP_SYS_ADMIN), and check
/// that this process can read it (it is root-only: mode 0700).
pub fn ensure_tracefs() -> Result<(), SupportError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = TRACEFS_PLACES.into_iter().find(|place| tracefs_mounted_at(&mountinfo, place));
    let place = match mounted {
        Some(place) => place,
        None => {
            mount_tracefs()?;
            TRACEFS
        }
    };
    let id = Path::new(place).join(PROBE_EVENT_ID);
    match fs::read_to_string(&id) {
        Ok(_) => Ok(()),
        Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
            Err(SupportError::TracefsUnreadable { path: place.to_owned(), source })
        }
        // A kernel without syscall tracepoints fails later with the name of
        // the missing event; this check is about permission.
        Err(_) => Ok(()),
    }
}

/// Whether `/proc/self/mountinfo` has a tracefs mount at `place` (field 5
/// is the mount point, the field after ` - ` the type).
fn tracefs_mounted_at(mountinfo: &str, place: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mount_point = line.split_whitespace().nth(4);
        let fstype = line.split_once(" - ").and_then(|(_, rest)| rest.split_whitespace().next());
        mount_point == Some(place) && fstype == Some("tracefs")
    })
}

fn mount_tracefs() -> Result<(), SupportError> {
    let source = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        tracing::info!(path = TRACEFS, "mounted tracefs");
        Ok(())
    } else {
        Err(SupportError::Tracefs { path: TRACEFS, source: io::Error::last_os_error() })
    }
}

/// What the kernel's build configuration says about PT_RECLAIM, when the
/// configuration can be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigState {
    Enabled,
    Disabled,
    Unknown,
}

/// Look for `CONFIG_PT_RECLAIM` in `/proc/config.gz` or
/// `/boot/config-$(uname -r)`.
pub fn pt_reclaim_config() -> ConfigState {
    let config = fs::File::open("/proc/config.gz")
        .ok()
        .and_then(|file| {
            use std::io::Read as _;
            let mut text = String::new();
            flate2::read::GzDecoder::new(file).read_to_string(&mut text).ok().map(|_| text)
        })
        .or_else(|| fs::read_to_string(format!("/boot/config-{}", procfs::kernel_release())).ok());
    match config {
        Some(config) if config.lines().any(|l| l == "CONFIG_PT_RECLAIM=y") => ConfigState::Enabled,
        Some(_) => ConfigState::Disabled,
        None => ConfigState::Unknown,
    }
}

/// Whether PT_RECLAIM works on this kernel, tested the only way that cannot
/// be fooled by backports or config quirks: map and touch 16 MiB (8 PTE
/// tables), `MADV_DONTNEED` it, and see whether `VmPTE` drops.
///
/// Run it before the probes are attached or from a process they ignore (the
/// agent's own tgid is filtered in the kernel programs).
pub fn pt_reclaim_works() -> io::Result<bool> {
    const TABLES: usize = 8;
    let mapping = AnonMapping::spans(TABLES)?;
    mapping.touch(0, TABLES * PTE_TABLE_SPAN);
    let before = own_vmpte()?;
    // SAFETY: the range is inside our mapping.
    if unsafe { libc::madvise(mapping.aligned_start().cast(), TABLES * PTE_TABLE_SPAN, libc::MADV_DONTNEED) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let after = own_vmpte()?;
    // Other threads of the agent may fault in new tables meanwhile; half of
    // the expected drop (4 kB per table) is an unambiguous signal.
    Ok(before.saturating_sub(after) >= (TABLES as u64 * 4) / 2)
}

fn own_vmpte() -> io::Result<u64> {
    procfs::status_kib(std::process::id(), "VmPTE")?.ok_or_else(|| io::Error::other("no VmPTE in /proc/self/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tracefs_mounts() {
        let mountinfo = "25 18 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
                         40 21 0:12 / /sys/kernel/tracing rw,relatime - tracefs nodev rw\n\
                         41 22 0:13 / /sys/kernel/debug rw,relatime - debugfs debugfs rw\n";
        assert!(tracefs_mounted_at(mountinfo, TRACEFS));
        assert!(!tracefs_mounted_at(mountinfo, "/sys/kernel/debug/tracing"));
        assert!(!tracefs_mounted_at(mountinfo, "/sys/kernel/debug"), "debugfs is not tracefs");
    }

    #[test]
    fn behavioural_check_runs() {
        // The result depends on the kernel; the check itself must not fail.
        // (Integration tests assert the value on kernels known either way.)
        pt_reclaim_works().expect("the behavioural PT_RECLAIM check must run");
    }
}
