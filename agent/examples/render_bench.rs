//! How long a scrape of N series takes in-process: the aggregation of a
//! scripted kernel map (what a real scrape harvests, without the `bpf(2)`
//! reads) and the exposition, Prometheus text and OpenMetrics.
//!
//! `cargo run --release -p ptwatch --example render_bench -- 10000 100000`
//! prints, per series count, the median and 90th percentile of 50 scrapes.
//! The processes are as the footprint bench's (`cargo xtask bench`): every
//! one with its own series (`--top-processes 0`), four per-process series
//! each in the tracepoint plan; a cgroup per 10 processes.

use std::{
    cell::RefCell,
    rc::Rc,
    time::{Duration, Instant},
};

use ptwatch::{
    aggregate::{Aggregator, CounterSource, Host, Liveness, MapCapacity, Presence, Selection},
    export::{
        exposition::Format,
        metrics::{AgentInfo, Harvest, Metrics, Render},
    },
    probes::{plan::Attach, ProbeError},
};
use ptwatch_common::{Cause, Level, NodeCounters, ProcessCounters, ProcessKey, ThreadContext};

/// A kernel map of `processes` entries, each counting at every read.
#[derive(Clone)]
struct Script(Rc<RefCell<Vec<(ProcessKey, ProcessCounters)>>>);

impl CounterSource for Script {
    fn node(&self) -> Result<NodeCounters, ProbeError> {
        let mut node = NodeCounters::default();
        for (_, c) in self.0.borrow().iter() {
            node.dontneed_calls += c.dontneed_calls;
            node.dontneed_bytes += c.dontneed_bytes;
            node.frees.add(&c.frees);
        }
        Ok(node)
    }
    fn processes(&mut self, into: &mut Vec<(ProcessKey, ProcessCounters)>) -> Result<(), ProbeError> {
        let mut entries = self.0.borrow_mut();
        for (_, c) in entries.iter_mut() {
            c.dontneed_calls += 1;
            c.frees.pages[Cause::Reclaim.index()][Level::Pte.index()] += 1;
        }
        into.clear();
        into.extend(entries.iter().copied());
        Ok(())
    }
    fn overflow(&mut self, into: &mut Vec<(u64, ProcessCounters)>) -> Result<(), ProbeError> {
        into.clear();
        into.push((0, ProcessCounters::default()));
        Ok(())
    }
    fn take(&mut self, _key: &ProcessKey) -> Result<Option<ProcessCounters>, ProbeError> {
        Ok(None)
    }
    fn threads(&mut self, into: &mut Vec<(u32, ThreadContext)>) -> Result<(), ProbeError> {
        into.clear();
        Ok(())
    }
    fn forget_thread(&mut self, _tid: u32) {}
    fn reap_io_requests(&mut self) -> u64 {
        0
    }
    fn capacity(&self) -> MapCapacity {
        MapCapacity { processes: Some(1 << 20), overflow: Some(1 << 18), threads: Some(16384) }
    }
}

struct AllAlive;

impl Liveness for AllAlive {
    fn presence(&self, key: ProcessKey) -> Presence {
        Presence::Alive { comm: format!("worker-{}", key.tgid) }
    }
    fn thread_exists(&self, _tid: u32) -> bool {
        true
    }
}

struct Node;

impl Host for Node {
    fn cgroup_path(&mut self, id: u64, _now: Instant) -> Option<String> {
        Some(format!("/kubepods.slice/bench-{id}.slice"))
    }
    fn cgroup_of_pid(&self, _pid: u32) -> Option<String> {
        None
    }
    fn cgroup_exists(&self, _path: &str) -> bool {
        true
    }
    fn cgroup_pagetable_bytes(&self, _path: &str) -> Option<u64> {
        Some(1 << 20)
    }
    fn process_pagetable_bytes(&self, pid: u32) -> Option<u64> {
        Some(u64::from(pid) * 4096)
    }
    fn node_pagetable_bytes(&self) -> Option<u64> {
        Some(1 << 30)
    }
}

/// The scripted world is single-threaded; the benchmark never moves it.
struct Bench(Aggregator<Script, AllAlive, Node>);
// SAFETY: created, used and dropped on the main thread.
unsafe impl Send for Bench {}
impl Harvest for Bench {
    fn harvest(&mut self, full: bool) -> Result<(), ProbeError> {
        let now = Instant::now();
        if full {
            self.0.harvest(now)?;
        } else {
            self.0.harvest_counters(now)?;
        }
        Ok(())
    }
    fn view(&self) -> ptwatch::aggregate::View<'_> {
        self.0.view()
    }
}

fn metrics(processes: u32) -> Metrics {
    let entries = (0..processes)
        .map(|i| {
            let key = ProcessKey { tgid: 1000 + i, _pad: 0, start_time_ns: 1_000_000_000 + u64::from(i) };
            let mut c = ProcessCounters {
                dontneed_calls: 1,
                dontneed_bytes: 2 << 20,
                cgroup_id: u64::from(i / 10) + 1,
                ..ProcessCounters::default()
            };
            c.comm[..6].copy_from_slice(b"worker");
            (key, c)
        })
        .collect();
    let aggregator =
        Aggregator::with_host(Script(Rc::new(RefCell::new(entries))), AllAlive, Node, Duration::from_secs(300))
            .with_selection(Selection { top: 0, ..Selection::default() });
    let info = AgentInfo {
        version: "bench",
        kernel: "6.18".into(),
        probe_mode: Attach::Tracepoint,
        reclaim_accounting: "page_table_walk",
        pt_reclaim_supported: true,
        probes: vec![
            ("dontneed", Some(Attach::Tracepoint)),
            ("io_uring_dontneed", Some(Attach::Tracepoint)),
            ("pt_reclaim", Some(Attach::Tracepoint)),
            ("pagetable_free", None),
        ],
        frees_probed: false,
        clock: ptwatch::aggregate::BootClock::detect(),
        bystander_cost: "hooked_functions_only",
    };
    let metrics = Metrics::new(Box::new(Bench(aggregator)), info);
    metrics.refresh();
    metrics
}

/// CPU time of this thread, ms: unlike wall time, not inflated by other
/// processes competing for the CPUs of a shared machine.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec owned by this frame.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

fn main() {
    let targets: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let targets = if targets.is_empty() { vec![10_000, 100_000] } else { targets };
    for series in targets {
        // Four per-process series per process, plus a cgroup per ten.
        let processes = (series as f64 / 4.3) as u32;
        let metrics = metrics(processes);
        for format in [Format::Text, Format::OpenMetrics] {
            let body = metrics.render(format);
            let counted = body.lines().filter(|l| !l.starts_with('#')).count();
            let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..50)
                .map(|_| {
                    let (started, cpu_started) = (Instant::now(), thread_cpu_ms());
                    let body = metrics.render(format);
                    let times = (started.elapsed().as_secs_f64() * 1e3, thread_cpu_ms() - cpu_started);
                    std::hint::black_box(body);
                    times
                })
                .unzip();
            wall.sort_by(f64::total_cmp);
            cpu.sort_by(f64::total_cmp);
            println!(
                "{format:?}: {counted} series ({processes} processes), {} KiB: median {:.2} ms (CPU {:.2} ms), p90 {:.2} ms, max {:.2} ms",
                body.len() / 1024,
                wall[wall.len() / 2],
                cpu[cpu.len() / 2],
                wall[wall.len() * 9 / 10],
                wall[wall.len() - 1]
            );
        }
    }
}
