//! Attribution to cgroups, containers and pods with real cgroups of the v2
//! tree, and page-table memory in use now (`VmPTE`, `/proc/meminfo`).
//!
//! The cgroups are named like a Kubernetes node's (kubelet systemd driver,
//! containerd) under a private top-level directory, so that the agent's
//! path parsing meets the real shapes without a Kubernetes node.

mod support;

use std::{
    fs,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use ptwatch::aggregate::{cgroup::CgroupTree, Aggregator, CgroupTotals, Counts, KernelMaps};
use ptwatch_workload::Report;
use support::{pt_reclaim, workload_bin, Attached, Held};

/// A cgroup created for one test, with its parents; removed deepest first
/// when dropped, also when the test fails.
struct CgroupGuard {
    /// Created directories, shallowest first.
    created: Vec<PathBuf>,
    /// Path relative to the v2 mount, as the agent labels it.
    path: String,
}

impl CgroupGuard {
    fn create(relative: &str) -> Self {
        let tree = CgroupTree::detect().expect("a cgroup v2 tree (hybrid or unified)");
        let mut guard = Self { created: Vec::new(), path: format!("/{relative}") };
        let mut dir = tree.root().to_path_buf();
        for component in relative.split('/') {
            dir.push(component);
            fs::create_dir(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
            guard.created.push(dir.clone());
        }
        guard
    }

    fn procs(&self) -> PathBuf {
        self.created.last().expect("at least one directory").join("cgroup.procs")
    }

    /// `ptwatch-workload ARGS`, started by a shell that first moves itself
    /// into this cgroup: the workload's first event already happens there.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("sh");
        command
            .args(["-c", r#"echo $$ > "$1" && shift && exec "$@""#, "sh"])
            .arg(self.procs())
            .arg(workload_bin())
            .args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Report {
        let output = self.command(args).output().expect("spawn workload");
        assert!(output.status.success(), "workload {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("workload prints a JSON report")
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            // A process that just exited may leave the cgroup a moment late.
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(err) = fs::remove_dir(dir) {
                if Instant::now() > deadline {
                    eprintln!("cannot remove {}: {err}", dir.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A unique top-level name per test cgroup.
fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("ptwatch-test-{}-{tag}{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A pod UID and a container id that no real pod or container has.
fn pod_and_container() -> (String, String) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    let uid = format!("{:08x}-5b7a-4e0f-9a61-{:012x}", std::process::id(), nanos & 0xffff_ffff_ffff);
    let container = format!("{:064x}", nanos);
    (uid, container)
}

fn kubepods_path(top: &str, uid: &str, container: &str) -> String {
    let slice_uid = uid.replace('-', "_");
    format!(
        "{top}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice_uid}.slice/cri-containerd-{container}.scope"
    )
}

fn cgroup_of<'a>(aggregator: &'a Aggregator<KernelMaps>, path: &str) -> &'a CgroupTotals {
    aggregator.cgroups().find(|c| c.labels.path == path).unwrap_or_else(|| {
        panic!("no totals for cgroup {path}: {:?}", aggregator.cgroups().map(|c| &c.labels.path).collect::<Vec<_>>())
    })
}

/// The families of the attached aggregator's last harvest, as a scrape
/// would show them.
fn render(attached: &Attached) -> String {
    let info = ptwatch::export::metrics::AgentInfo::new(&attached.probes, true);
    let view = attached.aggregator.view();
    ptwatch::export::metrics::exposition(&view, &info, ptwatch::export::exposition::Format::Text)
}

/// The `start_time` label of process `key`.
fn start_time(attached: &Attached, pid: u32) -> String {
    let key = attached.aggregator.records_of(pid).last().expect("a record").key;
    ptwatch::aggregate::BootClock::detect().unix_time(key.start_time_ns)
}

fn meminfo_kib(field: &str) -> u64 {
    let meminfo = fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/meminfo"))
}

#[test]
fn processes_in_a_kubernetes_container_get_its_labels_and_the_cgroup_sums_them_past_exit_and_ttl() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let (uid, container) = pod_and_container();
    let cgroup = CgroupGuard::create(&kubepods_path(&unique("k8s"), &uid, &container));
    let mut attached = Attached::new();
    // Both exit before any harvest: the cgroup must come from the kernel.
    let a = cgroup.run(&["cuts", "64", "0", "2048", "1", "dontneed"]);
    let b = cgroup.run(&["cuts", "32", "0", "8192", "1", "dontneed"]);
    for report in [&a, &b] {
        let record = attached.process(report.pid);
        assert!(record.exited, "exited");
        assert_ne!(record.cgroup_id, 0, "cgroup captured in the kernel");
        let labels = record.cgroup.expect("cgroup resolved");
        assert_eq!(labels.path, cgroup.path);
        assert_eq!(labels.container_id, container);
        assert_eq!(labels.pod_uid, uid, "underscores of the slice map back to dashes");
        assert_eq!(record.counts.reclaimed() * 4, report.vmpte_drop_kib, "pid {}", report.pid);
        assert_eq!(record.pagetable_bytes, None, "no VmPTE after exit");
    }
    let total: Counts = cgroup_of(attached.harvest(), &cgroup.path).counts();
    let reclaimed = (a.vmpte_drop_kib + b.vmpte_drop_kib) / 4;
    assert_eq!(reclaimed, 48, "32 + 16 tables");
    assert_eq!(total.reclaimed(), reclaimed);
    assert_eq!(total.dontneed_calls, a.calls + b.calls);
    assert_eq!(total.dontneed_bytes, a.bytes + b.bytes);
    let labels = &cgroup_of(&attached.aggregator, &cgroup.path).labels;
    assert_eq!((labels.container_id.as_str(), labels.pod_uid.as_str()), (&*container, &*uid));

    // After the TTL (600 s in `Attached`) the process records go; the
    // cgroup's totals stay.
    let later = attached.harvest_at(Instant::now() + Duration::from_secs(601));
    assert!(later.records().all(|p| p.pid() != a.pid && p.pid() != b.pid), "records expired");
    let total = cgroup_of(later, &cgroup.path).counts();
    assert_eq!((total.reclaimed(), total.dontneed_calls), (reclaimed, a.calls + b.calls));
    let text = render(&attached);
    let labels = format!(r#"cgroup="{}",container_id="{container}",pod_uid="{uid}""#, cgroup.path);
    assert!(text.contains(&format!("ptwatch_cgroup_pte_pages_reclaimed_total{{{labels}}} {reclaimed}")), "{text}");
    assert!(
        text.contains(&format!("ptwatch_cgroup_madvise_dontneed_bytes_total{{{labels}}} {}", a.bytes + b.bytes)),
        "{text}"
    );
}

#[test]
fn a_live_process_reports_its_vmpte_and_its_cgroup() {
    let (_, container) = pod_and_container();
    let cgroup = CgroupGuard::create(&format!("{}/system.slice/docker-{container}.scope", unique("docker")));
    let mut attached = Attached::new();
    let held = Held::spawn(cgroup.command(&["hold", "64"]));
    let pid = held.report.pid;
    let record = attached.process(pid);
    let vmpte_kib = ptwatch::kernel::procfs::status_kib(pid, "VmPTE").expect("status").expect("VmPTE");
    assert!(!record.exited);
    // The process is blocked reading stdin: its page tables do not change.
    assert_eq!(record.pagetable_bytes, Some(vmpte_kib * 1024));
    assert!(vmpte_kib > 0);
    let labels = record.cgroup.expect("cgroup resolved");
    assert_eq!(labels.path, cgroup.path);
    assert_eq!(labels.container_id, container);
    assert_eq!(labels.pod_uid, "");
    let text = render(&attached);
    let series = format!(
        r#"ptwatch_process_pagetable_bytes{{pid="{pid}",comm="ptwatch-workloa",start_time="{}",cgroup="{}",container_id="{container}"}} {}"#,
        start_time(&attached, pid),
        cgroup.path,
        vmpte_kib * 1024
    );
    assert!(text.contains(&series), "{series}\n{text}");

    // memory.stat exists only where the v2 tree has the memory controller
    // (not on a hybrid host, whose memory controller is v1).
    let total = cgroup_of(&attached.aggregator, &cgroup.path);
    let stat = CgroupTree::detect().expect("v2").dir(&cgroup.path).join("memory.stat");
    match fs::read_to_string(&stat).ok().and_then(|s| ptwatch::aggregate::cgroup::memory_stat_field(&s, "pagetables")) {
        Some(bytes) => {
            let counted = total.pagetable_bytes.expect("pagetables exported when memory.stat has it");
            // Only the held process is charged there; allow a few pages of drift.
            assert!(counted.abs_diff(bytes) <= 16 * 4096, "exported {counted}, memory.stat {bytes}");
        }
        None => assert_eq!(total.pagetable_bytes, None, "no memory.stat pagetables: no series"),
    }
    drop(held);

    // Once it exited the gauge goes; the counters stay for the TTL.
    let record = attached.process(pid);
    assert!(record.exited);
    assert_eq!(record.pagetable_bytes, None);
}

#[test]
fn a_process_outside_any_container_is_labelled_with_its_cgroup_only() {
    let cgroup = CgroupGuard::create(&format!("{}/system.slice/batch.service", unique("plain")));
    let mut attached = Attached::new();
    let report = cgroup.run(&["cuts", "8", "0", "2048", "1", "dontneed"]);
    let record = attached.process(report.pid);
    let labels = record.cgroup.expect("cgroup resolved");
    assert_eq!(labels.path, cgroup.path);
    assert_eq!((labels.container_id.as_str(), labels.pod_uid.as_str()), ("", ""));
    let text = render(&attached);
    let series = format!(
        r#"ptwatch_madvise_dontneed_calls_total{{pid="{}",comm="ptwatch-workloa",start_time="{}",cgroup="{}"}} "#,
        report.pid,
        start_time(&attached, report.pid),
        cgroup.path
    );
    assert!(text.contains(&series), "{series}\n{text}");
}

#[test]
fn node_pagetable_bytes_is_meminfo_page_tables() {
    let mut attached = Attached::new();
    let before = meminfo_kib("PageTables") * 1024;
    let exported = attached.harvest().snapshot().node_pagetable_bytes.expect("PageTables exported");
    let after = meminfo_kib("PageTables") * 1024;
    // Other processes come and go meanwhile: within the range seen around
    // the harvest, with 1 MiB of slack.
    let (low, high) = (before.min(after).saturating_sub(1 << 20), before.max(after) + (1 << 20));
    assert!((low..=high).contains(&exported), "exported {exported}, /proc/meminfo {before}..{after}");
    let text = render(&attached);
    assert!(text.contains("# TYPE ptwatch_node_pagetable_bytes gauge"), "{text}");
}
