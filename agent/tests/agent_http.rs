//! The real `ptwatch agent` binary: `/metrics` over HTTP, validated by
//! Prometheus' own parser (`promtool check metrics`), values read back with a
//! text-format parser and compared with the kernel's accounting.

mod support;

use std::process::Command;

use support::{promtool_check, pt_reclaim, run_workload, AgentProcess};

#[test]
fn metrics_are_valid_prometheus_text_and_match_the_kernel() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let agent = AgentProcess::start(&[]);
    let report = run_workload(&["cuts", "64", "0", "2048", "1", "dontneed"]);
    let metrics = agent.metrics();
    promtool_check(&metrics.text);
    let pid = report.pid.to_string();
    let labels = [("pid", pid.as_str()), ("comm", "ptwatch-workloa")];
    assert_eq!(
        metrics.get("ptwatch_pte_pages_reclaimed_total", &labels),
        Some((report.vmpte_drop_kib / 4) as f64),
        "{}",
        metrics.text
    );
    assert_eq!(metrics.get("ptwatch_madvise_dontneed_calls_total", &labels), Some(report.calls as f64));
    assert_eq!(metrics.get("ptwatch_madvise_dontneed_bytes_total", &labels), Some(report.bytes as f64));
    assert!(metrics.get("ptwatch_node_pte_pages_reclaimed_total", &[]).is_some_and(|v| v >= 32.0));
    assert_eq!(metrics.get("ptwatch_pt_reclaim_supported", &[]), Some(1.0));
    assert_eq!(
        metrics.get("ptwatch_build_info", &[("probe_mode", "tracepoint"), ("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    assert_eq!(metrics.get("ptwatch_reclaim_accounting_info", &[("method", "page_table_walk")]), Some(1.0));
    let (status, stderr) = agent.stop();
    assert!(status.success(), "SIGTERM must exit 0: {status:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn comm_with_quotes_backslashes_and_spaces_is_escaped() {
    assert!(pt_reclaim(), "this test needs a kernel with PT_RECLAIM (6.14+)");
    let agent = AgentProcess::start(&[]);
    // A process name with every character the format must escape (the
    // kernel keeps 15 bytes of it).
    let dir = std::env::temp_dir().join(format!("ptwatch-comm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let odd = dir.join("a \"b\\ c");
    std::fs::copy(support::workload_bin(), &odd).expect("copy workload");
    let output = Command::new(&odd).args(["cuts", "8", "0", "2048", "1", "dontneed"]).output().expect("run");
    assert!(output.status.success());
    let report: ptwatch_workload::Report = serde_json::from_slice(&output.stdout).expect("report");
    let text = agent.scrape();
    promtool_check(&text);
    // The cgroup labels follow comm.
    let series = format!(r#"ptwatch_pte_pages_reclaimed_total{{pid="{}",comm="a \"b\\ c""#, report.pid);
    assert!(text.lines().any(|line| line.starts_with(&series) && line.ends_with(" 4")), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn exited_processes_stay_for_the_ttl_then_go() {
    let agent = AgentProcess::start(&["--exited-ttl", "2s", "--harvest-interval", "500ms"]);
    let report = run_workload(&["cuts", "8", "0", "2048", "1", "dontneed"]);
    let series = format!(r#"ptwatch_madvise_dontneed_calls_total{{pid="{}""#, report.pid);
    assert!(agent.scrape().contains(&series), "series present right after exit");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let metrics = agent.metrics();
    assert!(!metrics.text.contains(&series), "series gone after the TTL:\n{}", metrics.text);
    // The node total still counts it.
    assert!(metrics.get("ptwatch_node_madvise_dontneed_calls_total", &[]).is_some());
}
