//! What the agent itself costs and how its probes are doing: CPU, memory,
//! open files and the kernel's run statistics of its eBPF programs. (The
//! fill of its kernel maps comes with the harvest.)
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

use super::{
    exposition::{Exposition, Value},
    families as f,
};
use crate::{
    aggregate::identity::Stat,
    probes::{Probes, ProgramStats},
};

pub const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

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

/// One reading of everything in this module.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelfReading {
    pub process: Option<ProcessStats>,
    /// `kernel.bpf_stats_enabled`; None when the sysctl cannot be read.
    pub bpf_stats_enabled: Option<bool>,
    /// The kernel's statistics of each attached program.
    pub programs: Vec<ProgramStats>,
}

impl SelfReading {
    /// The agent's own families: eBPF program statistics and `process_*`.
    pub fn render(&self, out: &mut Exposition) {
        if let Some(enabled) = self.bpf_stats_enabled {
            out.family(&f::BPF_STATS_ENABLED).sample("", "", enabled);
        }
        // Runs and run time are counted only while bpf_stats is enabled:
        // exported only then. Recursion misses are always counted.
        if self.bpf_stats_enabled == Some(true) {
            let mut runs = out.family(&f::BPF_PROGRAM_RUNS);
            for program in &self.programs {
                runs.values(&[program.name], program.runs);
            }
            let mut seconds = out.family(&f::BPF_PROGRAM_RUN_SECONDS);
            for program in &self.programs {
                seconds.values(&[program.name], program.run_time_ns as f64 / 1e9);
            }
        }
        let mut misses = out.family(&f::BPF_PROGRAM_MISSES);
        for program in &self.programs {
            misses.values(&[program.name], program.recursion_misses);
        }
        if let Some(process) = &self.process {
            out.family(&f::PROCESS_CPU_SECONDS).sample("", "", process.cpu_seconds);
            out.family(&f::PROCESS_RESIDENT_MEMORY).sample("", "", process.resident_bytes);
            out.family(&f::PROCESS_START_TIME).sample("", "", Value::Float(process.start_time_seconds));
            out.family(&f::PROCESS_OPEN_FDS).sample("", "", process.open_fds);
        }
    }
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
        SelfReading { process, bpf_stats_enabled, programs: probes.program_stats() }
    }
}

/// `kernel.bpf_stats_enabled`: whether the kernel counts program runs.
pub fn bpf_stats_enabled() -> Option<bool> {
    fs::read_to_string(BPF_STATS_SYSCTL).ok().map(|text| text.trim() != "0")
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
            boot_time: fs::read_to_string("/proc/stat")
                .ok()
                .as_deref()
                .and_then(crate::aggregate::identity::boot_time)
                .map(|s| s as f64),
        }
    }

    fn read(&self) -> io::Result<ProcessStats> {
        let stat = fs::read("/proc/self/stat")?;
        let fields = Stat::parse(&stat)
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

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    /// The real `/proc/self` of this test process, compared with what the
    /// kernel says elsewhere: VmRSS and the descriptors opened here.
    #[test]
    fn own_process_is_read() {
        let clock = ProcessClock::detect();
        let before = clock.read().unwrap();
        let files: Vec<fs::File> = (0..5).map(|_| fs::File::open("/proc/self/stat").unwrap()).collect();
        // Other tests of this process open and close descriptors meanwhile:
        // compare with a count of /proc/self/fd that did not move around
        // the read (listing the directory holds one descriptor itself).
        let listed = || fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1;
        let after = (0..100)
            .find_map(|_| {
                let (first, read, second) = (listed(), clock.read().unwrap(), listed());
                (first == second).then_some((read, first))
            })
            .map(|(read, listed)| {
                assert_eq!(read.open_fds, listed, "{before:?} {read:?}");
                read
            })
            .unwrap();
        assert!(after.open_fds >= 5);
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
