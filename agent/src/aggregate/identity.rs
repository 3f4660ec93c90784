//! Which process a kernel entry belongs to, and whether it still runs.
//!
//! The kernel keys its per-process counters by [`ProcessKey`]: the tgid and
//! the thread-group leader's start time, so a pid the kernel recycles is a
//! new key. Here the same identity is checked against `/proc/<pid>/stat`:
//! the process is alive if that file exists *and* shows the same start time
//! (field 22, in clock ticks since boot); a process with another start time
//! is a new one that got the pid. The same file gives the process' name now
//! (field 2), which the harvest compares with the name its series carry.

use std::fs;

use ptwatch_common::ProcessKey;

/// What `/proc` says about a [`ProcessKey`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presence {
    /// Running (or a zombie not yet reaped), under this name.
    Alive { comm: String },
    /// Exited; its pid may be free or taken by another process.
    Gone,
}

/// Anything that can tell whether a process still runs; real code asks
/// `/proc`, unit tests script it.
pub trait Liveness {
    fn presence(&self, key: ProcessKey) -> Presence;
    /// Whether any thread with id `tid` exists (in any process).
    fn thread_exists(&self, tid: u32) -> bool;
}

/// Liveness from `/proc/<pid>/stat`.
pub struct ProcLiveness {
    clock: BootClock,
}

impl Default for ProcLiveness {
    fn default() -> Self {
        Self { clock: BootClock::detect() }
    }
}

impl Liveness for ProcLiveness {
    fn presence(&self, key: ProcessKey) -> Presence {
        let Ok(text) = fs::read(format!("/proc/{}/stat", key.tgid)) else {
            return Presence::Gone;
        };
        match Stat::parse(&text) {
            Some(stat) if stat.start_ticks == self.clock.ticks(key.start_time_ns) => {
                Presence::Alive { comm: String::from_utf8_lossy(stat.comm).into_owned() }
            }
            _ => Presence::Gone,
        }
    }

    fn thread_exists(&self, tid: u32) -> bool {
        // `/proc/<tid>` resolves for every thread, not only for leaders
        // (it is just not listed).
        std::path::Path::new(&format!("/proc/{tid}")).exists()
    }
}

/// Clock ticks of `/proc` (`USER_HZ`) and the boot time, to turn a
/// [`ProcessKey::start_time_ns`] into what `/proc` and humans show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootClock {
    /// Nanoseconds per clock tick (10,000,000 for the usual `USER_HZ` 100).
    ns_per_tick: u64,
    /// Unix time of the boot, seconds (`btime` of `/proc/stat`, read once:
    /// the kernel recomputes it at each read, and a clock step would
    /// otherwise change a running process' start time label).
    boot_unix_seconds: u64,
}

impl BootClock {
    pub fn detect() -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100);
        let boot = fs::read_to_string("/proc/stat").ok().and_then(|stat| boot_time(&stat)).unwrap_or(0);
        Self { ns_per_tick: 1_000_000_000 / ticks, boot_unix_seconds: boot }
    }

    /// A clock for tests.
    pub const fn new(ns_per_tick: u64, boot_unix_seconds: u64) -> Self {
        Self { ns_per_tick, boot_unix_seconds }
    }

    /// `start_time_ns` as `/proc/<pid>/stat` prints it: the kernel's
    /// `nsec_to_clock_t`, a floor division.
    pub fn ticks(&self, start_time_ns: u64) -> u64 {
        start_time_ns / self.ns_per_tick
    }

    /// The Unix time of `start_time_ns` (nanoseconds since boot), as
    /// `seconds.nanoseconds`: unique per process, since two processes with
    /// the same pid cannot start in the same nanosecond.
    pub fn unix_time(&self, start_time_ns: u64) -> String {
        let seconds = self.boot_unix_seconds + start_time_ns / 1_000_000_000;
        format!("{seconds}.{:09}", start_time_ns % 1_000_000_000)
    }
}

/// `btime` of `/proc/stat`: when the system booted, Unix seconds.
pub fn boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse().ok()
}

/// The fields of `/proc/<pid>/stat` (proc(5)) ptwatch reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat<'a> {
    /// Field 2, without its parentheses: raw bytes, as the kernel keeps them.
    pub comm: &'a [u8],
    pub utime: u64,
    pub stime: u64,
    /// Field 22: start time, clock ticks since boot.
    pub start_ticks: u64,
    /// Field 24: resident pages.
    pub rss_pages: u64,
}

impl<'a> Stat<'a> {
    /// The command name may itself contain spaces and `)`, so it runs from
    /// the first `(` to the last `)`, and the other fields are counted from
    /// there.
    pub fn parse(text: &'a [u8]) -> Option<Self> {
        let open = text.iter().position(|&b| b == b'(')?;
        let close = text.iter().rposition(|&b| b == b')')?;
        let comm = text.get(open + 1..close)?;
        let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        // `fields[0]` is field 3 (state).
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self { comm, utime: field(14)?, stime: field(15)?, start_ticks: field(22)?, rss_pages: field(24)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = b"4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 987654 123456789 1536 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let stat = Stat::parse(line).expect("parse");
        assert_eq!(stat.comm, b"a) b (c");
        assert_eq!((stat.utime, stat.stime, stat.start_ticks, stat.rss_pages), (250, 75, 987654, 1536));
        assert_eq!(Stat::parse(b"1 (x) S 1 2"), None);
        assert_eq!(Stat::parse(b"garbage"), None);
    }

    #[test]
    fn boot_time_from_proc_stat() {
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1764000000\nprocesses 9\n"), Some(1_764_000_000));
        assert_eq!(boot_time("cpu  1 2 3\n"), None);
    }

    #[test]
    fn clock_ticks_and_unix_time() {
        let clock = BootClock::new(10_000_000, 1_764_000_000);
        // 12.345678901 s after boot.
        assert_eq!(clock.ticks(12_345_678_901), 1234);
        assert_eq!(clock.unix_time(12_345_678_901), "1764000012.345678901");
        assert_eq!(clock.unix_time(5), "1764000000.000000005");
    }

    /// The real `/proc`: this process is alive under its key, and a key with
    /// another start time (the same pid reused) is not.
    #[test]
    fn own_process_is_alive_and_a_recycled_pid_is_not() {
        let clock = BootClock::detect();
        let text = fs::read(format!("/proc/{}/stat", std::process::id())).expect("own stat");
        let stat = Stat::parse(&text).expect("parse own stat");
        let start_time_ns = stat.start_ticks * clock.ns_per_tick + 1234;
        let key = ProcessKey { tgid: std::process::id(), _pad: 0, start_time_ns };
        let liveness = ProcLiveness { clock };
        match liveness.presence(key) {
            Presence::Alive { comm } => assert!(!comm.is_empty()),
            Presence::Gone => panic!("own process not alive under {key:?}"),
        }
        let recycled = ProcessKey { start_time_ns: start_time_ns + clock.ns_per_tick, ..key };
        assert_eq!(liveness.presence(recycled), Presence::Gone);
        let none = ProcessKey { tgid: u32::MAX, ..key };
        assert_eq!(liveness.presence(none), Presence::Gone);
    }

    #[test]
    fn threads_that_are_not_leaders_exist_in_proc() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).expect("send tid");
            let _ = done_rx.recv();
        });
        let tid = rx.recv().expect("tid");
        let liveness = ProcLiveness::default();
        assert_ne!(tid, std::process::id());
        assert!(liveness.thread_exists(tid), "thread {tid}");
        drop(done_tx);
        thread.join().expect("join");
        // join returns when the thread clears its tid, a moment before the
        // kernel removes it from /proc.
        let gone = (0..1000).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            !liveness.thread_exists(tid)
        });
        assert!(gone, "thread {tid} exited");
    }
}
