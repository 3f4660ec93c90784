//! Capabilities: which ones the agent has, and dropping those it no longer
//! needs once its probes are attached.
//!
//! Loading and attaching eBPF programs needs capabilities (docs/install.md,
//! "Privileges"); reading the loaded maps afterwards goes through file
//! descriptors the agent already holds and, since Linux 6.5, needs none.
//! So after attaching, the agent keeps only what its reading still needs
//! (found by experiment: [`runtime_needs`]) and gives up everything else:
//! effective, permitted, inheritable and ambient sets, the bounding set when
//! it may change it (CAP_SETPCAP), and it sets `no_new_privs`.
//!
//! Linux keeps credentials per thread: capset(2), `PR_CAPBSET_DROP`,
//! `PR_CAP_AMBIENT` and `PR_SET_NO_NEW_PRIVS` change only the calling thread.
//! So the agent loads, attaches and drops on its main thread before any
//! other thread exists (the async runtime starts afterwards), checks that it
//! is alone, and every thread created later inherits the reduced
//! credentials of its creator.
//!
//! Raw system calls through `libc` rather than the `caps` crate, which
//! converts every set through a `HashSet`, for five system calls.

use std::{fmt, fs, io};

/// Capability numbers (linux/capability.h) the agent refers to by name.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Names of capabilities 0..=40, as in capabilities(7).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A set of capabilities, as the kernel's 64-bit masks.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct CapabilitySet(pub u64);

impl CapabilitySet {
    pub const EMPTY: Self = Self(0);

    pub fn of(caps: &[u32]) -> Self {
        Self(caps.iter().fold(0, |mask, &cap| mask | 1 << cap))
    }

    pub fn has(self, cap: u32) -> bool {
        self.0 & (1 << cap) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Parse `--inh-caps`-style names (`CAP_BPF` or `bpf`), comma-separated.
    pub fn parse_names(text: &str) -> Option<Self> {
        let mut set = Self::EMPTY;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
            let cap = NAMES.iter().position(|n| *n == full)?;
            set.0 |= 1 << cap;
        }
        Some(set)
    }
}

/// Name of capability `cap`.
pub fn name(cap: u32) -> String {
    NAMES.get(cap as usize).map_or_else(|| format!("cap_{cap}"), |n| (*n).to_owned())
}

impl fmt::Display for CapabilitySet {
    /// `CAP_BPF,CAP_PERFMON`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<String> = (0..64).filter(|&cap| self.has(cap)).map(name).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for CapabilitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self} ({:#x})", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read the process' capabilities (capget)")]
    Capget(#[source] io::Error),
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("capabilities must be dropped while the process has one thread, and it has {count}: {threads}")]
    NotAlone { count: usize, threads: String },
    #[error("dropping capabilities failed")]
    Drop(#[source] io::Error),
    #[error("threads {threads} still hold capabilities after dropping them (kept set: {kept})")]
    NotDropped { threads: String, kept: CapabilitySet },
    #[error("the capability test thread failed")]
    TestThread,
}

// --- Raw capget/capset (linux/capability.h) -------------------------------

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Effective, permitted and inheritable sets of the calling thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCaps {
    pub effective: CapabilitySet,
    pub permitted: CapabilitySet,
    pub inheritable: CapabilitySet,
}

fn join(low: u32, high: u32) -> CapabilitySet {
    CapabilitySet(u64::from(low) | u64::from(high) << 32)
}

/// capget(2) for the calling thread.
fn capget_raw() -> Result<ThreadCaps, i32> {
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(errno());
    }
    Ok(ThreadCaps {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// capset(2) for the calling thread.
fn capset_raw(caps: ThreadCaps) -> Result<(), i32> {
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let split = |set: CapabilitySet| (set.0 as u32, (set.0 >> 32) as u32);
    let (e, p, i) = (split(caps.effective), split(caps.permitted), split(caps.inheritable));
    let data = [
        CapData { effective: e.0, permitted: p.0, inheritable: i.0 },
        CapData { effective: e.1, permitted: p.1, inheritable: i.1 },
    ];
    // SAFETY: header and a two-element data array, as version 3 requires.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

fn errno() -> i32 {
    // SAFETY: errno is thread-local and always valid.
    unsafe { *libc::__errno_location() }
}

/// The calling thread's effective, permitted and inheritable capabilities.
pub fn current() -> Result<ThreadCaps, PrivilegeError> {
    capget_raw().map_err(|e| PrivilegeError::Capget(io::Error::from_raw_os_error(e)))
}

// --- What the agent still needs after attaching ---------------------------

/// `union bpf_attr` as `BPF_MAP_GET_NEXT_KEY` reads it.
#[repr(C)]
struct MapKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// Capabilities the agent's readings need once the probes are attached,
/// found by experiment: a scratch thread gives up its effective set and
/// calls `bpf(BPF_MAP_GET_NEXT_KEY)` on an invalid descriptor. Kernels from
/// 6.5 check the descriptor (EBADF): reading maps through descriptors the
/// agent holds needs no capability. Older kernels with
/// `kernel.unprivileged_bpf_disabled` set refuse every bpf(2) call without
/// CAP_BPF first (EPERM): the agent then keeps CAP_BPF (CAP_SYS_ADMIN on
/// kernels before 5.8, which have no CAP_BPF).
///
/// Nothing else the agent does after attaching needs a capability:
/// `/proc/<pid>/{status,cgroup}`, `/proc/meminfo` and the cgroup v2
/// `memory.stat` files are readable by everyone, the listener is already
/// bound and the TLS files were read at start-up.
pub fn runtime_needs() -> Result<CapabilitySet, PrivilegeError> {
    let outcome = std::thread::Builder::new()
        .name("ptwatch-captest".into())
        .spawn(|| -> Result<i32, i32> {
            let mut caps = capget_raw()?;
            caps.effective = CapabilitySet::EMPTY;
            // Only this thread's credentials change; it exits right after.
            capset_raw(caps)?;
            let attr = MapKeyAttr { map_fd: u32::MAX, _pad: 0, key: 0, next_key: 0, flags: 0 };
            // SAFETY: a valid attribute block of the size given.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_GET_NEXT_KEY,
                    &attr as *const MapKeyAttr,
                    size_of::<MapKeyAttr>() as libc::c_uint,
                )
            };
            Ok(if rc == 0 { 0 } else { errno() })
        })
        .map_err(|_| PrivilegeError::TestThread)?
        .join()
        .map_err(|_| PrivilegeError::TestThread)?;
    let permitted = current()?.permitted;
    let bpf_reader = if permitted.has(CAP_BPF) || !permitted.has(CAP_SYS_ADMIN) { CAP_BPF } else { CAP_SYS_ADMIN };
    match outcome {
        Ok(libc::EBADF) => Ok(CapabilitySet::EMPTY),
        Ok(libc::EPERM) => {
            tracing::info!(
                keep = %name(bpf_reader),
                "this kernel refuses bpf(2) map reads without a capability (kernel.unprivileged_bpf_disabled, before Linux 6.5)"
            );
            Ok(CapabilitySet::of(&[bpf_reader]))
        }
        Ok(other) => {
            // Unexpected: keep the capability rather than lose the metrics.
            tracing::warn!(
                errno = other,
                keep = %name(bpf_reader),
                "unexpected answer of bpf(2) without capabilities; keeping the capability to read maps"
            );
            Ok(CapabilitySet::of(&[bpf_reader]))
        }
        Err(errno) => Err(PrivilegeError::Drop(io::Error::from_raw_os_error(errno))),
    }
}

// --- Dropping -------------------------------------------------------------

/// Reduce the calling thread's credentials to `keep`: the bounding set
/// first when `bounding_too` (changing it needs CAP_SETPCAP in effect), the
/// ambient set, then effective, permitted and inheritable, and
/// `no_new_privs`.
fn drop_in_this_thread(keep: CapabilitySet, bounding_too: bool, last_cap: u32) -> Result<(), io::Error> {
    let os = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    if bounding_too {
        for cap in (0..=last_cap).filter(|&cap| !keep.has(cap)) {
            // SAFETY: prctl with integer arguments.
            os(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })?;
        }
    }
    // SAFETY: prctl with integer arguments.
    os(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) })?;
    let mut caps = capget_raw().map_err(io::Error::from_raw_os_error)?;
    caps.permitted = caps.permitted.intersection(keep);
    caps.effective = caps.permitted;
    caps.inheritable = CapabilitySet::EMPTY;
    capset_raw(caps).map_err(io::Error::from_raw_os_error)?;
    // SAFETY: prctl with integer arguments.
    os(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) })
}

/// Credentials of one thread, from `/proc/self/task/<tid>/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadCredentials {
    pub inheritable: CapabilitySet,
    pub permitted: CapabilitySet,
    pub effective: CapabilitySet,
    pub bounding: CapabilitySet,
    pub ambient: CapabilitySet,
    pub no_new_privs: bool,
}

impl ThreadCredentials {
    /// Parse the `Cap*:` and `NoNewPrivs:` lines of a status file.
    pub fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim).map(str::to_owned)
        };
        let set = |name: &str| field(name).and_then(|hex| u64::from_str_radix(&hex, 16).ok()).map(CapabilitySet);
        Some(Self {
            inheritable: set("CapInh")?,
            permitted: set("CapPrm")?,
            effective: set("CapEff")?,
            bounding: set("CapBnd")?,
            ambient: set("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
        })
    }

    /// Whether these credentials are what a drop to `keep` leaves.
    fn dropped_to(&self, keep: CapabilitySet, bounding_too: bool) -> bool {
        self.effective.without(keep).is_empty()
            && self.permitted.without(keep).is_empty()
            && self.inheritable.is_empty()
            && self.ambient.is_empty()
            && self.no_new_privs
            && (!bounding_too || self.bounding.without(keep).is_empty())
    }
}

/// Credentials of thread `tid` of this process; None once it has exited.
fn thread_credentials(tid: i32) -> Option<ThreadCredentials> {
    ThreadCredentials::parse(&fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?)
}

/// The process' threads once it is down to one, or after a second: a
/// thread that has just exited (joined) stays listed in `/proc/self/task`
/// until the kernel has released it, a moment later (longer under
/// emulation).
fn alone() -> Result<Vec<i32>, PrivilegeError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let threads = thread_ids()?;
        if threads.len() == 1 || std::time::Instant::now() > deadline {
            return Ok(threads);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A thread's name, for the error message.
fn thread_name(tid: i32) -> String {
    fs::read_to_string(format!("/proc/self/task/{tid}/comm")).map_or_else(|_| "gone".into(), |c| c.trim().to_owned())
}

fn thread_ids() -> Result<Vec<i32>, PrivilegeError> {
    let path = "/proc/self/task";
    let entries = fs::read_dir(path).map_err(|source| PrivilegeError::Read { path: path.into(), source })?;
    Ok(entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
}

/// What [`drop_after_attach`] did.
#[derive(Clone, Debug)]
pub struct Dropped {
    /// Capabilities the process had (permitted or effective) and gave up.
    pub dropped: CapabilitySet,
    /// Capabilities it still has.
    pub kept: CapabilitySet,
    /// Whether the bounding set was reduced to `kept` too (needs CAP_SETPCAP).
    pub bounding_reduced: bool,
}

/// Drop every capability except `keep` (normally [`runtime_needs`]), set
/// `no_new_privs`, and reduce the bounding set when allowed; verify the
/// result in `/proc`. The process must have one thread: the others would
/// keep their privileges.
pub fn drop_all_except(keep: CapabilitySet) -> Result<Dropped, PrivilegeError> {
    let threads = alone()?;
    if threads.len() != 1 {
        let names: Vec<String> = threads.iter().map(|tid| format!("{tid} ({})", thread_name(*tid))).collect();
        return Err(PrivilegeError::NotAlone { count: threads.len(), threads: names.join(", ") });
    }
    let before = current()?;
    let keep = keep.intersection(before.permitted);
    let bounding_too = before.effective.has(CAP_SETPCAP);
    let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() as u32 - 1);
    drop_in_this_thread(keep, bounding_too, last_cap).map_err(PrivilegeError::Drop)?;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let own = thread_credentials(tid).ok_or_else(|| PrivilegeError::Read {
        path: format!("/proc/self/task/{tid}/status"),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    if !own.dropped_to(keep, bounding_too) {
        return Err(PrivilegeError::NotDropped { threads: tid.to_string(), kept: keep });
    }
    Ok(Dropped {
        dropped: before.permitted.union(before.effective).without(keep),
        kept: keep,
        bounding_reduced: bounding_too,
    })
}

/// After the probes are attached, before any other thread starts: keep only
/// what reading them needs, drop the rest, and log what was dropped.
pub fn drop_after_attach() -> Result<Dropped, PrivilegeError> {
    let keep = runtime_needs()?;
    let dropped = drop_all_except(keep)?;
    tracing::info!(
        dropped = %dropped.dropped,
        kept = %dropped.kept,
        bounding_set = if dropped.bounding_reduced { "reduced to the kept set" } else { "unchanged (no CAP_SETPCAP)" },
        no_new_privs = true,
        "capabilities dropped: the probes are attached"
    );
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_print_and_parse_by_name() {
        let set = CapabilitySet::of(&[CAP_BPF, CAP_PERFMON]);
        assert_eq!(set.to_string(), "CAP_PERFMON,CAP_BPF");
        assert_eq!(CapabilitySet::parse_names("bpf, CAP_perfmon"), Some(set));
        assert_eq!(CapabilitySet::parse_names("nonsense"), None);
        assert_eq!(CapabilitySet::EMPTY.to_string(), "none");
        assert_eq!(CapabilitySet(1 << 45).to_string(), "cap_45");
    }

    #[test]
    fn parses_status_credentials() {
        let status = "Name:\tptwatch\nCapInh:\t0000000000000000\nCapPrm:\t000000c000000000\nCapEff:\t000000c000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let creds = ThreadCredentials::parse(status).expect("parse");
        assert_eq!(creds.permitted, CapabilitySet::of(&[CAP_BPF, CAP_PERFMON]));
        assert!(creds.no_new_privs);
        assert!(creds.dropped_to(CapabilitySet::of(&[CAP_BPF, CAP_PERFMON]), false));
        assert!(!creds.dropped_to(CapabilitySet::of(&[CAP_BPF, CAP_PERFMON]), true), "bounding set is full");
        assert!(!creds.dropped_to(CapabilitySet::EMPTY, false));
    }

    /// Never a partial drop: with another thread alive, nothing changes.
    #[test]
    fn dropping_refuses_while_other_threads_run() {
        let (stop, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = wait.recv();
        });
        let before = current().expect("capget");
        let err = drop_all_except(CapabilitySet::EMPTY).expect_err("more than one thread");
        assert!(matches!(err, PrivilegeError::NotAlone { count, .. } if count >= 2), "{err}");
        assert_eq!(current().expect("capget"), before, "nothing was dropped");
        drop(stop);
        other.join().expect("join");
    }

    #[test]
    fn own_capabilities_match_proc() {
        let caps = current().expect("capget");
        let proc =
            ThreadCredentials::parse(&fs::read_to_string("/proc/thread-self/status").expect("status")).expect("parse");
        assert_eq!(
            (caps.effective, caps.permitted, caps.inheritable),
            (proc.effective, proc.permitted, proc.inheritable)
        );
    }
}
