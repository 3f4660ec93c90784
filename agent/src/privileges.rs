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
//! By the time the probes are attached the agent runs several threads (the
//! runtime's workers and its blocking pool), so a drop in one thread would
//! leave the others privileged. The drop is therefore applied to every
//! thread: each is sent a signal whose handler makes the same system calls
//! (what libcap's psx library does for C programs), and every thread's
//! `/proc/self/task/<tid>/status` is checked afterwards. Threads created
//! later inherit the reduced credentials of their creator.
//!
//! Raw system calls through `libc` rather than the `caps` crate: the signal
//! handler must be async-signal-safe (no allocation, no locks), and `caps`
//! converts every set through a `HashSet`.

use std::{
    fmt, fs, io,
    sync::{
        atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

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
    #[error("cannot install the signal handler that drops capabilities in every thread")]
    Signal(#[source] io::Error),
    #[error("dropping capabilities failed in a thread")]
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

/// capget(2) for the calling thread. Async-signal-safe.
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

/// capset(2) for the calling thread. Async-signal-safe.
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

// --- Dropping, in every thread --------------------------------------------

/// What the drop is to leave, read by the signal handler.
static KEEP: AtomicU64 = AtomicU64::new(0);
static LAST_CAP: AtomicU64 = AtomicU64::new(40);
static DROP_BOUNDING: AtomicBool = AtomicBool::new(false);
/// First errno a thread met while dropping (0: none).
static FAILED: AtomicI32 = AtomicI32::new(0);
/// One drop at a time.
static DROPPING: Mutex<()> = Mutex::new(());

/// Reduce the calling thread's credentials to [`KEEP`]. Async-signal-safe
/// (raw system calls on stack data) and idempotent: a second run finds
/// CAP_SETPCAP gone and leaves the (already reduced) bounding set alone.
fn drop_in_this_thread() -> Result<(), i32> {
    let keep = CapabilitySet(KEEP.load(Ordering::SeqCst));
    let mut caps = capget_raw()?;
    // The bounding set first: changing it needs CAP_SETPCAP in effect.
    if DROP_BOUNDING.load(Ordering::SeqCst) && caps.effective.has(CAP_SETPCAP) {
        for cap in 0..=LAST_CAP.load(Ordering::SeqCst) {
            if !keep.has(cap as u32) {
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                    return Err(errno());
                }
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(errno());
    }
    caps.permitted = caps.permitted.intersection(keep);
    caps.effective = caps.permitted;
    caps.inheritable = CapabilitySet::EMPTY;
    capset_raw(caps)?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(errno());
    }
    Ok(())
}

extern "C" fn on_drop_signal(_: libc::c_int) {
    let saved = errno();
    if let Err(e) = drop_in_this_thread() {
        let _ = FAILED.compare_exchange(0, e, Ordering::SeqCst, Ordering::SeqCst);
    }
    // SAFETY: restoring this thread's errno, which the handler must not change.
    unsafe { *libc::__errno_location() = saved };
}

/// The signal that asks a thread to drop: a real-time signal nothing else in
/// the agent uses.
fn drop_signal() -> libc::c_int {
    libc::SIGRTMIN() + 5
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
    /// Threads the drop was applied to.
    pub threads: usize,
}

/// Drop every capability except `keep` (normally [`runtime_needs`]) in
/// every thread of the process, set `no_new_privs`, and reduce the bounding
/// set when allowed; verify the result in `/proc`.
pub fn drop_all_except(keep: CapabilitySet) -> Result<Dropped, PrivilegeError> {
    let _one_at_a_time = DROPPING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = current()?;
    let keep = keep.intersection(before.permitted);
    let bounding_too = before.effective.has(CAP_SETPCAP);
    let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() as u64 - 1);
    KEEP.store(keep.0, Ordering::SeqCst);
    LAST_CAP.store(last_cap, Ordering::SeqCst);
    DROP_BOUNDING.store(bounding_too, Ordering::SeqCst);
    FAILED.store(0, Ordering::SeqCst);

    // The handler stays installed afterwards: a signal still queued for a
    // thread must not meet the default action (terminate), and running the
    // handler again changes nothing.
    // SAFETY: a zeroed sigaction with our handler; SA_RESTART so that the
    // interrupted system calls of other threads resume.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_drop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(drop_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(PrivilegeError::Signal(io::Error::last_os_error()));
        }
    }

    // SAFETY: gettid/getpid have no preconditions.
    let (own_tid, pid) = unsafe { (libc::gettid(), libc::getpid()) };
    // Signal every other thread until each one shows the reduced
    // credentials; threads started meanwhile by a thread not yet reduced
    // are caught by the next round.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut threads;
    loop {
        let tids = thread_ids()?;
        threads = tids.len();
        let pending: Vec<i32> = tids
            .into_iter()
            .filter(|&tid| tid != own_tid)
            .filter(|&tid| thread_credentials(tid).is_some_and(|c| !c.dropped_to(keep, bounding_too)))
            .collect();
        let failed = FAILED.load(Ordering::SeqCst);
        if failed != 0 {
            return Err(PrivilegeError::Drop(io::Error::from_raw_os_error(failed)));
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(PrivilegeError::NotDropped {
                threads: pending.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                kept: keep,
            });
        }
        for tid in pending {
            // SAFETY: tgkill to a thread of our own process; ESRCH (it
            // exited meanwhile) is fine.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, drop_signal()) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Then this thread.
    drop_in_this_thread().map_err(|e| PrivilegeError::Drop(io::Error::from_raw_os_error(e)))?;
    let own = thread_credentials(own_tid).ok_or_else(|| PrivilegeError::Read {
        path: format!("/proc/self/task/{own_tid}/status"),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    if !own.dropped_to(keep, bounding_too) {
        return Err(PrivilegeError::NotDropped { threads: own_tid.to_string(), kept: keep });
    }
    Ok(Dropped {
        dropped: before.permitted.union(before.effective).without(keep),
        kept: keep,
        bounding_reduced: bounding_too,
        threads,
    })
}

/// After the probes are attached: keep only what reading them needs, drop
/// the rest in every thread, and log what was dropped.
pub fn drop_after_attach() -> Result<Dropped, PrivilegeError> {
    let keep = runtime_needs()?;
    let dropped = drop_all_except(keep)?;
    tracing::info!(
        dropped = %dropped.dropped,
        kept = %dropped.kept,
        bounding_set = if dropped.bounding_reduced { "reduced to the kept set" } else { "unchanged (no CAP_SETPCAP)" },
        no_new_privs = true,
        threads = dropped.threads,
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
