//! One trace event as the user sees it: decoded from the kernel's
//! [`TraceEvent`], filtered, printed as a table row or a JSON line.

use std::collections::HashSet;

use ptwatch_common::{Cause, EventKind, Level, TraceEvent};
use serde::Serialize;

use crate::kernel::procfs;

/// A decoded event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// cgroup v2 path of the running task, when it could be resolved.
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    pub event: &'static str,
    pub cause: &'static str,
    pub level: &'static str,
    pub pages: u64,
    /// Range of a DONTNEED call (hex), when known.
    pub start: Option<String>,
    pub len: Option<u64>,
    /// Bytes a DONTNEED call advised.
    pub bytes: Option<u64>,
}

/// The name of an enum value the kernel sent, or `unknown` for a value
/// this build does not know.
fn name<T>(value: u32, from_index: fn(usize) -> Option<T>, name: fn(T) -> &'static str) -> &'static str {
    from_index(value as usize).map_or("unknown", name)
}

impl Record {
    /// `realtime_offset_ns`: CLOCK_REALTIME − CLOCK_MONOTONIC, to turn the
    /// kernel's monotonic time into wall-clock time.
    pub fn new(event: &TraceEvent, realtime_offset_ns: i128, cgroup: Option<String>) -> Self {
        let dontneed = event.kind == EventKind::Dontneed as u32;
        let range_known = dontneed && event.len != 0;
        Self {
            timestamp_ns: u64::try_from(i128::from(event.time_ns) + realtime_offset_ns).unwrap_or(0),
            pid: event.tgid,
            tid: event.tid,
            comm: procfs::comm_to_string(&event.comm),
            cgroup,
            cgroup_id: event.cgroup_id,
            event: name(event.kind, EventKind::from_index, EventKind::name),
            cause: name(event.cause, Cause::from_index, Cause::name),
            level: name(event.level, Level::from_index, Level::name),
            pages: event.pages,
            start: range_known.then(|| format!("{:#x}", event.start)),
            len: range_known.then_some(event.len),
            bytes: dontneed.then_some(event.bytes),
        }
    }
}

/// The filters applied in userspace (`--pid` and `--cgroup` are applied in
/// the kernel already).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Compared with the kernel's comm, which keeps 15 bytes.
    pub comm: Option<String>,
    /// Empty: every cause.
    pub causes: HashSet<String>,
    pub min_pages: u64,
}

impl Filter {
    pub fn new(comm: Option<&str>, causes: &[String], min_pages: u64) -> Self {
        Self {
            comm: comm.map(|c| c.chars().take(ptwatch_common::COMM_LEN - 1).collect()),
            causes: causes.iter().cloned().collect(),
            min_pages,
        }
    }

    pub fn accepts(&self, record: &Record) -> bool {
        self.comm.as_ref().is_none_or(|comm| *comm == record.comm)
            && (self.causes.is_empty() || self.causes.contains(record.cause))
            && record.pages >= self.min_pages
    }
}

pub const HEADER: &str = "TIME            PID      COMM             CGROUP                         EVENT     CAUSE     LEVEL     PAGES  RANGE";

/// One table row.
pub fn text_row(record: &Record) -> String {
    let range = match (&record.start, record.len) {
        (Some(start), Some(len)) => format!("{start} +{}", human_bytes(len)),
        _ => "-".to_owned(),
    };
    let cgroup = record.cgroup.as_deref().unwrap_or("-");
    format!(
        "{:<15} {:<8} {:<16} {:<30} {:<9} {:<9} {:<7} {:>7}  {range}",
        local_time(record.timestamp_ns),
        record.pid,
        record.comm,
        shorten(cgroup, 30),
        record.event,
        record.cause,
        record.level,
        record.pages
    )
}

/// Keep the end of a long path (its most specific part).
pub fn shorten(text: &str, width: usize) -> String {
    let chars = text.chars().count();
    if chars <= width {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(chars - (width - 1)).collect();
    format!("…{tail}")
}

/// `512 MiB`, `4 KiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 || unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `HH:MM:SS.uuuuuu` in local time.
pub fn local_time(timestamp_ns: u64) -> String {
    let seconds = timestamp_ns / 1_000_000_000;
    let micros = (timestamp_ns % 1_000_000_000) / 1000;
    // The `time_t` of a timespec: naming the type itself is deprecated on
    // musl targets (its width changed in musl 1.2), the field is not.
    let mut when = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    when.tv_sec = seconds.try_into().unwrap_or(0);
    // SAFETY: an all-zero `tm` is valid; localtime_r writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a time_t and a tm owned by this frame.
    if unsafe { libc::localtime_r(&when.tv_sec, &mut tm) }.is_null() {
        return format!("{seconds}.{micros:06}");
    }
    format!("{:02}:{:02}:{:02}.{micros:06}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, in nanoseconds.
pub fn realtime_offset_ns() -> i128 {
    fn now(clock: libc::clockid_t) -> i128 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid timespec owned by this frame.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    }
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, why: Cause, pages: u64) -> TraceEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"java");
        TraceEvent {
            time_ns: 5_000_000_000,
            start: 0x7f00_0000_0000,
            len: 1 << 30,
            bytes: 1 << 30,
            pages,
            cgroup_id: 7,
            tgid: 42,
            tid: 43,
            kind: kind as u32,
            cause: why as u32,
            level: Level::Pte as u32,
            _pad: 0,
            comm,
        }
    }

    #[test]
    fn decodes_dontneed_and_free() {
        let call = Record::new(&event(EventKind::Dontneed, Cause::Reclaim, 512), 1_000, Some("/a".into()));
        assert_eq!(call.timestamp_ns, 5_000_001_000);
        assert_eq!((call.pid, call.comm.as_str(), call.event, call.cause), (42, "java", "dontneed", "reclaim"));
        assert_eq!(call.start.as_deref(), Some("0x7f0000000000"));
        assert_eq!(call.len, Some(1 << 30));
        let row = text_row(&call);
        assert!(row.contains("0x7f0000000000 +1 GiB") && row.contains(" 512 "), "{row}");
        let free = Record::new(&event(EventKind::Free, Cause::Unmap, 1), 0, None);
        let mut odd = event(EventKind::Free, Cause::Unmap, 1);
        odd.cause = 99;
        assert_eq!(Record::new(&odd, 0, None).cause, "unknown", "a value from a newer kernel side");
        assert_eq!((free.event, free.cause, free.start.as_deref(), free.bytes), ("free", "unmap", None, None));
        assert!(text_row(&free).ends_with(" -"));
    }

    #[test]
    fn filters() {
        let record = Record::new(&event(EventKind::Dontneed, Cause::Reclaim, 8), 0, None);
        assert!(Filter::default().accepts(&record));
        assert!(Filter::new(Some("java"), &[], 0).accepts(&record));
        assert!(!Filter::new(Some("jav"), &[], 0).accepts(&record));
        assert!(Filter::new(None, &["reclaim".into(), "exit".into()], 8).accepts(&record));
        assert!(!Filter::new(None, &["unmap".into()], 0).accepts(&record));
        assert!(!Filter::new(None, &[], 9).accepts(&record));
        // Long names compare on the 15 characters the kernel keeps.
        let mut long = record.clone();
        long.comm = "ptwatch-workloa".into();
        assert!(Filter::new(Some("ptwatch-workload"), &[], 0).accepts(&long));
    }

    #[test]
    fn sizes_and_paths() {
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(shorten("/a/b/c", 10), "/a/b/c");
        assert_eq!(shorten("/system.slice/foo.service", 10), "…o.service");
    }
}
