//! What the agent itself costs and how its probes are doing: CPU, memory,
//! open files, the kernel's run statistics of its eBPF programs and the
//! fill of its kernel maps.
//!
//! Everything is read when Prometheus scrapes (a handful of small `/proc`
//! files and one `BPF_OBJ_GET_INFO_BY_FD` per program), never per event.
//! The standard `process_*` metrics are read here from `/proc/self` rather
//! than with the prometheus crate's `process` feature: that feature pulls in
//! the `procfs` crate and its dependency tree for four numbers, and the
//! agent's footprint is one of its goals (docs/benchmarks.md).

use std::{
    fs, io,
    sync::{Arc, Weak},
};

use aya::maps::{HashMap, Map, MapData, MapError};
use ptwatch_common::{names, ThreadContext};

use crate::{aggregate::MapUsage, probes::Probes};

pub const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The transient maps of the kernel side (entries live for one syscall or
/// one `free_pgtables` call), which the aggregation never reads. The other
/// hash maps are counted at each harvest (see `aggregate`).
const IN_FREE_PGTABLES: &str = "IN_FREE_PGTABLES";

/// The agent's own resource use, as the standard `process_*` metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    /// Unix time the process started.
    pub start_time_seconds: f64,
    pub open_fds: u64,
}

/// Run statistics of one attached eBPF program.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgramRuns {
    pub name: String,
    pub runs: u64,
    pub run_seconds: f64,
}

/// One reading of everything in this module.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelfReading {
    pub process: Option<ProcessStats>,
    /// `kernel.bpf_stats_enabled`; None when the sysctl cannot be read.
    pub bpf_stats_enabled: Option<bool>,
    /// Only while bpf_stats is enabled: the kernel does not count otherwise.
    pub programs: Vec<ProgramRuns>,
    /// The transient maps (the others come with the harvest).
    pub maps: Vec<MapUsage>,
}

/// Where a [`SelfReading`] comes from: the running agent, or nothing (unit
/// tests of the other families).
pub trait SelfSource: Send + Sync {
    fn read(&self) -> SelfReading;
}

/// The running agent: `/proc/self` and its loaded probes.
pub struct AgentSelf {
    /// Weak, so that the agent detaches its probes when it drops them even
    /// if the metrics registry lives on a moment longer.
    probes: Weak<Probes>,
    clock: ProcessClock,
}

impl AgentSelf {
    pub fn new(probes: &Arc<Probes>) -> Self {
        Self { probes: Arc::downgrade(probes), clock: ProcessClock::detect() }
    }
}

impl SelfSource for AgentSelf {
    fn read(&self) -> SelfReading {
        let process = self
            .clock
            .read()
            .map_err(|err| tracing::debug!(error = %err, "reading /proc/self failed; no process_* metrics"))
            .ok();
        let bpf_stats_enabled = bpf_stats_enabled();
        let Some(probes) = self.probes.upgrade() else {
            return SelfReading { process, bpf_stats_enabled, ..SelfReading::default() };
        };
        let programs = if bpf_stats_enabled == Some(true) { program_runs(&probes) } else { Vec::new() };
        SelfReading { process, bpf_stats_enabled, programs, maps: transient_maps(&probes) }
    }
}

/// `kernel.bpf_stats_enabled`: whether the kernel counts program runs.
pub fn bpf_stats_enabled() -> Option<bool> {
    fs::read_to_string(BPF_STATS_SYSCTL).ok().map(|text| text.trim() != "0")
}

/// Run count and time of every attached program, from the kernel's
/// `bpf_prog_info` (the numbers `bpftool prog show` prints).
fn program_runs(probes: &Probes) -> Vec<ProgramRuns> {
    probes
        .attached()
        .iter()
        .filter_map(|(name, _)| {
            let info = probes.object().program(name)?.info();
            match info {
                Ok(info) => Some(ProgramRuns {
                    name: (*name).to_owned(),
                    runs: info.run_count(),
                    run_seconds: info.run_time().as_secs_f64(),
                }),
                Err(err) => {
                    tracing::debug!(program = name, error = %err, "reading program info failed");
                    None
                }
            }
        })
        .collect()
}

fn transient_maps(probes: &Probes) -> Vec<MapUsage> {
    let mut usage = Vec::new();
    for name in [names::THREAD_CONTEXT, IN_FREE_PGTABLES] {
        let Some(map) = probes.object().map(name) else { continue };
        let counted = match name {
            names::THREAD_CONTEXT => count_entries::<ThreadContext>(map),
            _ => count_entries::<u64>(map),
        };
        match counted {
            Ok((entries, max_entries)) => usage.push(MapUsage { name, entries, max_entries }),
            Err(err) => tracing::debug!(map = name, error = %err, "counting map entries failed"),
        }
    }
    usage
}

/// Entries of a hash map keyed by thread id, and its capacity. Entries come
/// and go while the keys are walked; the walk never takes more steps than
/// the map can hold.
fn count_entries<V: aya::Pod>(map: &Map) -> Result<(u64, u64), MapError> {
    let map: HashMap<&MapData, u32, V> = HashMap::try_from(map)?;
    let max_entries = aya::maps::IterableMap::map(&map).info()?.max_entries();
    let mut entries = 0;
    for key in map.keys().take(max_entries as usize) {
        if key.is_ok() {
            entries += 1;
        }
    }
    Ok((entries, u64::from(max_entries)))
}

/// Reads `/proc/self`, with the constants that turn its ticks and pages
/// into seconds and bytes.
struct ProcessClock {
    ticks_per_second: f64,
    page_size: u64,
    /// Boot time (`btime` of `/proc/stat`), Unix seconds.
    boot_time: Option<f64>,
}

impl ProcessClock {
    fn detect() -> Self {
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        Self {
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096),
            boot_time: fs::read_to_string("/proc/stat").ok().as_deref().and_then(boot_time),
        }
    }

    fn read(&self) -> io::Result<ProcessStats> {
        let stat = fs::read_to_string("/proc/self/stat")?;
        let fields = parse_stat(&stat)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/stat format"))?;
        // The listing's own directory descriptor is not one of the agent's.
        let open_fds = (fs::read_dir("/proc/self/fd")?.count() as u64).saturating_sub(1);
        Ok(ProcessStats {
            cpu_seconds: (fields.utime + fields.stime) as f64 / self.ticks_per_second,
            resident_bytes: fields.rss_pages * self.page_size,
            start_time_seconds: self.boot_time.unwrap_or(0.0) + fields.start_ticks as f64 / self.ticks_per_second,
            open_fds,
        })
    }
}

/// The fields of `/proc/<pid>/stat` the `process_*` metrics need.
#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    rss_pages: u64,
}

/// Parse `/proc/<pid>/stat` (proc(5)). The command name, field 2, is in
/// parentheses and may itself contain spaces and `)`, so the fields are
/// counted from its last `)`.
fn parse_stat(text: &str) -> Option<StatFields> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields { utime: field(14)?, stime: field(15)?, start_ticks: field(22)?, rss_pages: field(24)? })
}

/// `btime` of `/proc/stat`: when the system booted, Unix seconds.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse::<u64>().ok().map(|s| s as f64)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 987654 123456789 1536 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(line), Some(StatFields { utime: 250, stime: 75, start_ticks: 987654, rss_pages: 1536 }));
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn boot_time_from_proc_stat() {
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1764000000\nprocesses 9\n"), Some(1_764_000_000.0));
        assert_eq!(boot_time("cpu  1 2 3\n"), None);
    }

    /// The real `/proc/self` of this test process, compared with what the
    /// kernel says elsewhere: VmRSS and the descriptors opened here.
    #[test]
    fn own_process_is_read() {
        let clock = ProcessClock::detect();
        let before = clock.read().unwrap();
        let files: Vec<fs::File> = (0..5).map(|_| fs::File::open("/proc/self/stat").unwrap()).collect();
        let after = clock.read().unwrap();
        assert_eq!(after.open_fds, before.open_fds + 5, "{before:?} {after:?}");
        drop(files);
        let vm_rss = crate::kernel::procfs::status_kib(std::process::id(), "VmRSS").unwrap().unwrap() * 1024;
        // Both are the same kernel counter read a moment apart.
        let rss = after.resident_bytes as f64;
        assert!((rss / vm_rss as f64 - 1.0).abs() < 0.25, "statm {rss} vs VmRSS {vm_rss}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(after.start_time_seconds > now - 3600.0 && after.start_time_seconds <= now + 1.0, "{after:?}");
        assert!(after.cpu_seconds >= before.cpu_seconds);
    }
}
