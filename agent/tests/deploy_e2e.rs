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

mod deploy_common;
mod support;

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use deploy_common::{
    assert_runs_confined_by_the_unit, deploy_dir, spawn, status_of_ptwatch_with_args, temp_dir, wait_for,
};
use support::{free_ports, http_get, run_workload, AgentProcess, Held};

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
    assert_runs_confined_by_the_unit(&process);
    drop(nspawn);
    let _ = std::fs::remove_dir_all(dir);
}

/// A root filesystem for `systemd-nspawn` that changes nothing on the host:
/// the host's own root (Debian, with systemd) as the lower layer of an
/// overlay whose upper layer is a private tmpfs. Every file a package
/// installs, and every file it leaves behind after a purge, shows up in the
/// upper layer, which makes "purge leaves nothing behind" checkable.
struct OverlayRoot {
    layers: std::path::PathBuf,
    merged: std::path::PathBuf,
}

impl OverlayRoot {
    fn mount(dir: &std::path::Path) -> Self {
        let layers = dir.join("layers");
        let merged = dir.join("root");
        std::fs::create_dir_all(&layers).expect("layers dir");
        std::fs::create_dir_all(&merged).expect("root dir");
        deploy_common::run_ok(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&layers), "mount tmpfs");
        std::fs::create_dir_all(layers.join("upper")).expect("upper");
        std::fs::create_dir_all(layers.join("work")).expect("work");
        let options =
            format!("lowerdir=/,upperdir={},workdir={}", layers.join("upper").display(), layers.join("work").display());
        deploy_common::run_ok(
            Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(&merged),
            "mount overlay",
        );
        Self { layers, merged }
    }

    /// Paths in the upper layer, relative to the root.
    fn changed(&self) -> std::collections::BTreeSet<String> {
        fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
            for entry in std::fs::read_dir(dir).expect("read upper layer").flatten() {
                let path = entry.path();
                out.insert(path.strip_prefix(base).expect("under upper").display().to_string());
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&path, base, out);
                }
            }
        }
        let upper = self.layers.join("upper");
        let mut out = std::collections::BTreeSet::new();
        walk(&upper, &upper, &mut out);
        out
    }
}

impl Drop for OverlayRoot {
    fn drop(&mut self) {
        for point in [&self.merged, &self.layers] {
            let _ = Command::new("umount").arg(point).status();
        }
    }
}

/// A `systemd-nspawn --boot` container; commands run inside through
/// `nsenter` into its init's namespaces (no machined on this host).
struct Container {
    nspawn: deploy_common::Guard,
    log: std::path::PathBuf,
}

impl Container {
    fn boot(root: &std::path::Path, log: &std::path::Path) -> Self {
        let nspawn = spawn(
            Command::new("systemd-nspawn")
                .arg(format!("--directory={}", root.display()))
                .args(["--register=no", "--keep-unit", "--boot", "--console=pipe"])
                // The container's own limits must not hide the unit's: grant
                // what the unit asks for, and share tracefs and BTF.
                .args(["--capability=CAP_BPF,CAP_PERFMON", "--system-call-filter=bpf perf_event_open"])
                .args(["--bind-ro=/sys/kernel/tracing", "--bind-ro=/sys/kernel/btf"])
                // The basic system only, none of the host's services, and no
                // timers: a job the host's image schedules at boot (apt
                // metrics for node_exporter) would write files while the test
                // compares the file system before and after the package.
                .args(["--", "systemd.unit=basic.target", "systemd.mask=timers.target"]),
            "systemd-nspawn (Debian package systemd-container; `cargo xtask setup --for test` installs it)",
            log,
        );
        let container = Self { nspawn, log: log.to_owned() };
        wait_for("the container's systemd", log, 60, || {
            container.init().is_some_and(|_| {
                let state = container.exec(&["systemctl", "is-system-running"]);
                matches!(String::from_utf8_lossy(&state.stdout).trim(), "running" | "degraded")
            })
        });
        container
    }

    /// The container's PID 1, as the host sees it: nspawn's child.
    fn init(&self) -> Option<u32> {
        let task = format!("/proc/{}/task/{}/children", self.nspawn.pid(), self.nspawn.pid());
        std::fs::read_to_string(task).ok()?.split_whitespace().next()?.parse().ok()
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        let init = self.init().unwrap_or_else(|| {
            panic!("the container has no init; its log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default())
        });
        deploy_common::run(
            Command::new("nsenter")
                .arg(format!("--target={init}"))
                .args(["--mount", "--uts", "--ipc", "--pid", "--root", "--wd", "--"])
                .args(["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
                .args(args),
            "nsenter",
        )
    }

    fn exec_ok(&self, args: &[&str]) -> String {
        let output = self.exec(args);
        assert!(output.status.success(), "{args:?} in the container failed:\n{}", deploy_common::text(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// Files whose change a package's life is expected to leave: dpkg's own
/// database and logs, and caches.
const EXPECTED_CHURN: &[&str] = &["var/lib/dpkg/", "var/log/", "var/cache/"];

/// The .deb of `cargo xtask dist` for this host, installed with dpkg into a
/// Debian root filesystem booted under systemd: the maintainer scripts enable
/// and start the service, which becomes ready as a confined unprivileged
/// process; `systemd-analyze security` on the running system scores at most
/// the ceiling; `dpkg --purge` stops it and leaves no file behind.
#[test]
fn deb_installs_starts_and_purges_cleanly_under_systemd() {
    let start = Instant::now();
    let arch = deploy_common::run_ok(Command::new("dpkg").arg("--print-architecture"), "dpkg").trim().to_owned();
    let deb = deploy_common::artifact(&format!("ptwatch_{}-1_{arch}.deb", deploy_common::VERSION));
    let dir = temp_dir("e2e-deb");
    let [addr] = free_ports::<1>();
    let root = OverlayRoot::mount(&dir);
    let merged = &root.merged;
    // This host's image forbids starting services from maintainer scripts
    // (policy-rc.d exits 101, as in many build containers); a real system
    // has none.
    let _ = std::fs::remove_file(merged.join("usr/sbin/policy-rc.d"));
    // The package's config listens on 0.0.0.0:9977; a drop-in, as an admin
    // would write one, moves it to a free port (the container shares the
    // host's network).
    let drop_in = merged.join("etc/systemd/system/ptwatch.service.d");
    std::fs::create_dir_all(&drop_in).expect("drop-in dir");
    std::fs::write(drop_in.join("listen.conf"), format!("[Service]\nEnvironment=PTWATCH_LISTEN={addr}\n"))
        .expect("drop-in");
    std::fs::copy(&deb, merged.join("root/ptwatch.deb")).expect("copy the .deb");
    let container = Container::boot(merged, &dir.join("nspawn.log"));
    let booted = start.elapsed();

    let before = root.changed();
    let install = container.exec_ok(&["dpkg", "-i", "/root/ptwatch.deb"]);
    assert!(install.contains("Setting up ptwatch"), "{install}");
    assert_eq!(container.exec_ok(&["systemctl", "is-enabled", "ptwatch.service"]).trim(), "enabled");
    wait_for("the packaged service", &dir.join("nspawn.log"), 60, || {
        http_get(addr, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    assert_eq!(container.exec_ok(&["systemctl", "is-active", "ptwatch.service"]).trim(), "active");
    let (status, metrics) = http_get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert!(metrics.contains("ptwatch_build_info{"), "{metrics}");
    let process = status_of_ptwatch_with_args("agent --config /etc/ptwatch/ptwatch.toml")
        .expect("the agent process started by systemd");
    assert_runs_confined_by_the_unit(&process);

    // What dpkg knows: the binary where the unit looks first after
    // /usr/local, the unit, the config as a conffile.
    let files = container.exec_ok(&["dpkg", "-L", "ptwatch"]);
    for path in ["/usr/bin/ptwatch", "/usr/lib/systemd/system/ptwatch.service", "/etc/ptwatch/ptwatch.toml"] {
        assert!(files.lines().any(|l| l == path), "{path} not in the package:\n{files}");
    }
    let conffiles = container.exec_ok(&["dpkg-query", "-W", "-f=${Conffiles}", "ptwatch"]);
    assert!(conffiles.contains("/etc/ptwatch/ptwatch.toml"), "conffiles: {conffiles}");

    // The exposure of the installed unit, as the running systemd sees it.
    let security = container.exec(&["systemd-analyze", "security", "--no-pager", "ptwatch.service"]);
    let report = deploy_common::text(&security);
    let score = deploy_common::exposure(&report);
    println!("exposure of the installed unit: {score} (ceiling {})", deploy_common::EXPOSURE_CEILING);
    assert!(score <= deploy_common::EXPOSURE_CEILING, "exposure {score}:\n{report}");

    // Positive control for the leftover check below: installed, the package's
    // files are in the upper layer.
    let installed = root.changed();
    for path in ["usr/bin/ptwatch", "etc/ptwatch/ptwatch.toml"] {
        assert!(installed.contains(path) && !before.contains(path), "{path} not seen as installed");
    }

    let purge = container.exec_ok(&["dpkg", "--purge", "ptwatch"]);
    assert!(purge.contains("Purging configuration files for ptwatch"), "{purge}");
    let state = container.exec(&["systemctl", "is-active", "ptwatch.service"]);
    assert_ne!(String::from_utf8_lossy(&state.stdout).trim(), "active", "still running after purge");
    assert!(http_get(addr, "/metrics").is_none(), "the agent still answers after purge");
    let leftovers: Vec<String> = root
        .changed()
        .difference(&before)
        .filter(|path| !EXPECTED_CHURN.iter().any(|churn| path.starts_with(churn)))
        // A directory of the host copied up because something was created
        // and removed in it (systemd's private /var/tmp): nothing remains.
        .filter(|path| !(merged.join(path).is_dir() && std::path::Path::new("/").join(path).is_dir()))
        .cloned()
        .collect();
    assert!(leftovers.is_empty(), "dpkg --purge left files behind: {leftovers:?}");
    println!("booted in {:.1} s, whole test {:.1} s", booted.as_secs_f64(), start.elapsed().as_secs_f64());
    drop(container);
    drop(root);
    let _ = std::fs::remove_dir_all(dir);
}
