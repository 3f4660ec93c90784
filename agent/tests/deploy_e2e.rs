//! End-to-end checks of `deploy/` against real parts on this host:
//!
//! - a real Prometheus server (Debian package `prometheus`) scrapes a running
//!   agent and node_exporter every second with `deploy/prometheus`'s scrape
//!   configuration and rules while workloads run; then every query of the
//!   Grafana dashboard and every recording rule must return data through
//!   Prometheus' HTTP API, and every rule must evaluate without error;
//! - `deploy/systemd/ptwatch.service`, unchanged, run by a real systemd (PID 1
//!   of a `systemd-nspawn` container, since this host's PID 1 is not systemd):
//!   the agent starts and serves metrics as a non-root user with exactly the
//!   unit's capabilities, no_new_privs and a seccomp filter.

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{free_ports, http_get, run_workload, AgentProcess, Held};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ptwatch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A child process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets it clean up.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(command: &mut Command, what: &str, log: &Path) -> Guard {
    let log = std::fs::File::create(log).expect("log file");
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {what} ({command:?}): {err}"));
    Guard(child)
}

fn wait_for(what: &str, log: &Path, seconds: u64, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} not ready within {seconds} s; its log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// `kernel.bpf_stats_enabled` set to 1 while alive (the eBPF run-time panels
/// need it), then restored.
struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";
    fn enable() -> Self {
        let old = std::fs::read_to_string(Self::PATH).expect("read kernel.bpf_stats_enabled");
        std::fs::write(Self::PATH, "1").expect("set kernel.bpf_stats_enabled=1");
        Self(old.trim().to_owned())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/api/v1/query` of `expr`: the result array, or the error.
fn query(prometheus: SocketAddr, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let (status, body) = http_get(prometheus, &format!("/api/v1/query?query={}", percent_encode(expr)))
        .ok_or_else(|| "Prometheus did not answer".to_owned())?;
    let answer: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
    if answer["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// A dashboard query as Grafana would send it with every template variable
/// at "All" and a rate interval fit for a 1 s scrape.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "20s").replace("$node", ".*").replace("$namespace", ".*").replace("$pod", ".*")
}

/// Panels whose description says they need kube-state-metrics, which no
/// Kubernetes cluster here can provide: their queries must be valid, and may
/// be empty.
const NEEDS_KUBE_STATE_METRICS: &str = "Requires kube-state-metrics";

#[test]
fn prometheus_scrapes_the_agent_and_every_panel_and_rule_has_data() {
    let _stats = BpfStats::enable();
    let dir = temp_dir("e2e-prometheus");
    let [node_exporter_addr, prometheus_addr] = free_ports::<2>();
    let agent = AgentProcess::start(&["--harvest-interval", "1s"]);

    // node_exporter for node_memory_MemTotal_bytes (RAM-share panel and rule).
    let node_log = dir.join("node_exporter.log");
    let _node_exporter = spawn(
        Command::new("prometheus-node-exporter").args([
            &format!("--web.listen-address={node_exporter_addr}"),
            "--collector.disable-defaults",
            "--collector.meminfo",
        ]),
        "prometheus-node-exporter (Debian package prometheus-node-exporter; `cargo xtask setup` installs it)",
        &node_log,
    );
    wait_for("node_exporter", &node_log, 20, || {
        http_get(node_exporter_addr, "/metrics")
            .is_some_and(|(s, b)| s == 200 && b.contains("node_memory_MemTotal_bytes"))
    });

    // deploy/prometheus/prometheus.yml with this host's targets and a 1 s
    // interval; rule files as shipped.
    let config = std::fs::read_to_string(deploy_dir().join("prometheus/prometheus.yml")).expect("prometheus.yml");
    let config = config
        .replace(r#"["node-a.example.com:9977", "node-b.example.com:9977"]"#, &format!(r#"["{}"]"#, agent.addr))
        .replace(r#"["node-a.example.com:9100", "node-b.example.com:9100"]"#, &format!(r#"["{node_exporter_addr}"]"#))
        .replace("scrape_interval: 30s", "scrape_interval: 1s")
        .replace("evaluation_interval: 30s", "evaluation_interval: 1s");
    assert!(config.contains(&agent.addr.to_string()) && config.contains("1s"), "targets substituted:\n{config}");
    std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
    std::fs::copy(deploy_dir().join("prometheus/ptwatch-rules.yml"), dir.join("ptwatch-rules.yml")).expect("rules");
    let prometheus_log = dir.join("prometheus.log");
    let _prometheus = spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={prometheus_addr}")),
        "prometheus (Debian package prometheus)",
        &prometheus_log,
    );
    wait_for("prometheus", &prometheus_log, 30, || {
        http_get(prometheus_addr, "/-/ready").is_some_and(|(s, _)| s == 200)
    });

    // Workloads: one process that stays alive (VmPTE, per-cgroup gauges) and
    // repeated DONTNEED runs for the rates, over 30 s of scrapes.
    let held = Held::start(64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        run_workload(&["cuts", "32", "0", "2048", "1", "dontneed"]);
        std::thread::sleep(Duration::from_millis(500));
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/ptwatch-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut failures = Vec::new();
    let mut optional_empty = Vec::new();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        let optional = panel["description"].as_str().is_some_and(|d| d.contains(NEEDS_KUBE_STATE_METRICS));
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = substitute(target["expr"].as_str().expect("expr"));
            checked += 1;
            match query(prometheus_addr, &expr) {
                Ok(result) if result.is_empty() && optional => optional_empty.push(title.to_owned()),
                Ok(result) if result.is_empty() => failures.push(format!("panel {title:?}: no data for {expr}")),
                Ok(_) => {}
                Err(err) => failures.push(format!("panel {title:?}: {expr}: {err}")),
            }
        }
    }
    assert!(checked >= 20, "only {checked} panel queries found");
    println!("{checked} panel queries; empty because kube-state-metrics is absent here: {optional_empty:?}");

    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/ptwatch-rules.yml")).expect("rules");
    let records: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- record: ")).collect();
    assert!(records.len() >= 5, "recording rules: {records:?}");
    for record in &records {
        match query(prometheus_addr, record) {
            Ok(result) if result.is_empty() => failures.push(format!("recording rule {record}: no data")),
            Ok(_) => {}
            Err(err) => failures.push(format!("recording rule {record}: {err}")),
        }
    }
    // Every rule, alerts included, evaluates without error.
    let (_, body) = http_get(prometheus_addr, "/api/v1/rules").expect("rules API");
    let api: serde_json::Value = serde_json::from_str(&body).expect("rules JSON");
    for group in api["data"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().into_iter().flatten() {
            if rule["health"] != "ok" {
                failures.push(format!("rule {} health {}: {}", rule["name"], rule["health"], rule["lastError"]));
            }
        }
    }
    drop(held);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Effective capabilities the unit grants: CAP_DAC_READ_SEARCH (2),
/// CAP_SYS_ADMIN (21), CAP_PERFMON (38), CAP_BPF (39).
const UNIT_CAPABILITIES: u64 = 1 << 2 | 1 << 21 | 1 << 38 | 1 << 39;

/// The `/proc/<pid>/status` of a `ptwatch` process with arguments `args`:
/// argv[0] is whatever its starter chose (systemd passes the unit's bare
/// `ptwatch`), so only its file name is compared.
fn status_of_ptwatch_with_args(args: &str) -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let argv = std::fs::read(entry.path().join("cmdline")).ok()?;
        let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
        let (argv0, rest) = argv.trim_end().split_once(' ')?;
        (Path::new(argv0).file_name()? == "ptwatch" && rest == args)
            .then(|| std::fs::read_to_string(entry.path().join("status")).ok())
            .flatten()
    })
}

fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_else(|| panic!("no {name} in {status}"))
}

#[test]
fn systemd_runs_the_agent_under_the_unit() {
    let dir = temp_dir("e2e-systemd");
    let [addr] = free_ports::<1>();
    // The unit as shipped; the binary appears at its ExecStart path through a
    // bind mount, the config names a test port.
    std::fs::copy(deploy_dir().join("systemd/ptwatch.service"), dir.join("ptwatch.service")).expect("unit");
    std::fs::create_dir_all(dir.join("bin")).expect("bin dir");
    std::fs::copy(support::ptwatch_bin(), dir.join("bin/ptwatch")).expect("binary");
    std::fs::write(dir.join("ptwatch.toml"), format!("listen = \"{addr}\"\n")).expect("config");
    // Boot target: basic system plus the unit, nothing else of the host's.
    std::fs::write(
        dir.join("ptwatch-test.target"),
        "[Unit]\nRequires=basic.target\nWants=ptwatch.service\nAfter=basic.target\nAllowIsolate=yes\n",
    )
    .expect("target");
    let bind = |from: &str, to: &str| format!("--bind-ro={}:{to}", dir.join(from).display());
    let log = dir.join("nspawn.log");
    let nspawn = spawn(
        Command::new("systemd-nspawn")
            // The host's /usr with an empty /etc on tmpfs; no machined here.
            .args(["--directory=/", "--volatile=yes", "--register=no", "--keep-unit", "--boot", "--console=pipe"])
            // The container's own limits must not hide the unit's: grant
            // what the unit asks for, and share tracefs and BTF.
            .args(["--capability=CAP_BPF,CAP_PERFMON", "--system-call-filter=bpf perf_event_open"])
            .args(["--bind-ro=/sys/kernel/tracing", "--bind-ro=/sys/kernel/btf"])
            .arg(bind("ptwatch.service", "/etc/systemd/system/ptwatch.service"))
            .arg(bind("ptwatch-test.target", "/etc/systemd/system/ptwatch-test.target"))
            .arg(bind("ptwatch.toml", "/etc/ptwatch/ptwatch.toml"))
            .arg(bind("bin", "/usr/local/bin"))
            .args(["--", "systemd.unit=ptwatch-test.target"]),
        "systemd-nspawn (Debian package systemd-container; `cargo xtask setup` installs it)",
        &log,
    );
    wait_for("the agent under systemd", &log, 90, || http_get(addr, "/readyz").is_some_and(|(s, _)| s == 200));
    let (status, metrics) = http_get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert!(metrics.contains("ptwatch_build_info{"), "{metrics}");
    // The process systemd started: unprivileged, with the unit's capabilities
    // and nothing else, no_new_privs, a seccomp filter.
    let process = status_of_ptwatch_with_args("agent --config /etc/ptwatch/ptwatch.toml")
        .expect("the agent process started by systemd");
    let uid = status_field(&process, "Uid:");
    assert!(!uid.starts_with("0\t") && !uid.starts_with("0 "), "runs as a dynamic user, not root: Uid {uid}");
    // The bounding set is the unit's (the agent may not shrink it without
    // CAP_SETPCAP); once attached the agent keeps at most those
    // (agent/src/privileges.rs drops what it no longer needs).
    let bounding = u64::from_str_radix(status_field(&process, "CapBnd:"), 16).expect("CapBnd");
    assert_eq!(bounding, UNIT_CAPABILITIES, "bounding set {bounding:#x}");
    let effective = u64::from_str_radix(status_field(&process, "CapEff:"), 16).expect("CapEff");
    assert_eq!(effective & !UNIT_CAPABILITIES, 0, "effective capabilities {effective:#x}");
    assert_eq!(status_field(&process, "NoNewPrivs:"), "1");
    assert_eq!(status_field(&process, "Seccomp:"), "2", "seccomp filter mode");
    drop(nspawn);
    let _ = std::fs::remove_dir_all(dir);
}
