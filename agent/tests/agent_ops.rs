//! Operating the real `ptwatch agent` binary: configuration file and its
//! precedence under environment variables and flags, bad configuration,
//! OpenMetrics negotiation, health endpoints, TLS and authentication.
//! docs/configuration.md describes what is tested here.

mod support;

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use base64::Engine as _;
use support::{
    agent_command, assert_one_line_error, free_port, free_ports, http_get, http_request, https_request, promtool_check,
    run_workload, AgentProcess, HttpResponse,
};

/// Prometheus 2.x's scrape `Accept` header.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("ptwatch-ops-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    /// Write `name` (mode 600: some of these are secrets) and return its path.
    fn write(&self, name: &str, content: &str) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.0.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("create file");
        file.write_all(content.as_bytes()).expect("write file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM,
/// certificate DER for the client to trust).
fn self_signed() -> (String, String, Vec<u8>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("generate a certificate");
    (cert.pem(), signing_key.serialize_pem(), cert.der().to_vec())
}

fn status(response: Option<HttpResponse>) -> Option<u16> {
    response.map(|r| r.status)
}

fn serves_metrics(agent: &AgentProcess) -> bool {
    http_get(agent.addr, "/metrics").is_some_and(|(status, _)| status == 200)
}

fn ptwatch_output(command: &mut Command) -> Output {
    command.stdout(std::process::Stdio::piped()).output().expect("run ptwatch")
}

/// An agent error that must come from configuration: one line, exit 2, and
/// nothing else on stderr (logging had not even started).
fn assert_config_error(output: &Output, needle: &str) {
    assert_one_line_error(output, 2, needle);
    assert_eq!(String::from_utf8_lossy(&output.stderr).lines().count(), 1, "nothing may run before the error");
}

#[test]
fn config_file_values_are_applied() {
    let dir = TempDir::new("file");
    let addr = free_port();
    let config = dir.write(
        "ptwatch.toml",
        &format!(
            "# every top-level key and [log]\nlisten = \"{addr}\"\nexited_ttl = \"2s\"\nharvest_interval = \"500ms\"\nprobe_mode = \"auto\"\nbtf = \"/sys/kernel/btf/vmlinux\"\n\n[log]\nformat = \"json\"\nfilter = \"info\"\n"
        ),
    );
    let mut command = agent_command();
    command.args(["--config", arg(&config)]);
    // No --listen: the file's address is the only one it can serve on.
    let agent = AgentProcess::spawn(command, addr).wait_until("serve /metrics on the file's address", serves_metrics);

    let report = run_workload(&["cuts", "8", "0", "2048", "1", "dontneed"]);
    let series = format!(r#"ptwatch_madvise_dontneed_calls_total{{pid="{}""#, report.pid);
    assert!(agent.scrape().contains(&series), "series present right after exit");
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(!agent.scrape().contains(&series), "exited_ttl = \"2s\" from the file must have removed it");

    let (status, stderr) = agent.stop();
    assert!(status.success(), "{status:?}\n{stderr}");
    // [log] format = "json": every line is one JSON object.
    assert!(stderr.contains("serving /metrics"), "{stderr}");
    for line in stderr.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("log line is not JSON ({err}): {line}"));
        assert!(value["level"].is_string(), "{line}");
    }
}

/// Precedence flag > environment > file > default, shown with `listen`,
/// `btf` and the log format.
#[test]
fn flags_override_environment_which_overrides_the_file() {
    let dir = TempDir::new("precedence");
    let [file_addr, env_addr, flag_addr] = free_ports::<3>();
    let config = dir.write(
        "ptwatch.toml",
        &format!("listen = \"{file_addr}\"\nbtf = \"/nonexistent/vmlinux\"\n[log]\nformat = \"json\"\n"),
    );

    // File only: its (bad) btf is used, so the agent fails on it.
    let output = ptwatch_output(agent_command().args(["--config", arg(&config)]));
    assert_one_line_error(&output, 1, "/nonexistent/vmlinux");

    // Environment over file: PTWATCH_BTF and PTWATCH_LISTEN win, the file's
    // log format stays (PTWATCH_CONFIG names the file this time).
    let mut command = agent_command();
    command
        .env("PTWATCH_CONFIG", &config)
        .env("PTWATCH_BTF", "/sys/kernel/btf/vmlinux")
        .env("PTWATCH_LISTEN", env_addr.to_string());
    let agent = AgentProcess::spawn(command, env_addr).wait_until("serve on PTWATCH_LISTEN", serves_metrics);
    assert!(http_get(file_addr, "/metrics").is_none(), "the file's address must not be served");
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.lines().all(|l| l.starts_with('{')), "file's JSON log format expected:\n{stderr}");

    // Flags over environment: --listen and --log-format win.
    let mut command = agent_command();
    command
        .env("PTWATCH_CONFIG", &config)
        .env("PTWATCH_BTF", "/sys/kernel/btf/vmlinux")
        .env("PTWATCH_LISTEN", env_addr.to_string())
        .env("PTWATCH_LOG_FORMAT", "json")
        .args(["--listen", &flag_addr.to_string(), "--log-format", "text"]);
    let agent = AgentProcess::spawn(command, flag_addr).wait_until("serve on --listen", serves_metrics);
    assert!(http_get(env_addr, "/metrics").is_none(), "PTWATCH_LISTEN must lose to --listen");
    assert!(http_get(file_addr, "/metrics").is_none());
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains(" INFO ") && !stderr.lines().any(|l| l.starts_with('{')), "text logs expected:\n{stderr}");
}

#[test]
fn bad_config_files_are_one_line_usage_errors() {
    let dir = TempDir::new("bad");
    let empty = dir.write("empty-token", "\n");
    let _ = empty;
    for (name, content, needle) in [
        ("syntax.toml", "listen = \n", ":1:"),
        ("unknown-key.toml", "lisen = \"127.0.0.1:1\"\n", "unknown field `lisen`"),
        ("unknown-section-key.toml", "[tls]\ncrt = \"c.pem\"\n", "unknown field `crt`"),
        ("unknown-section.toml", "[metrics]\npath = \"/m\"\n", "unknown field `metrics`"),
        ("bad-address.toml", "listen = \"nowhere\"\n", "invalid socket address"),
        ("bad-duration.toml", "\nexited_ttl = \"5x\"\n", ":2:"),
        ("bad-type.toml", "harvest_interval = true\n", "a duration"),
        ("bad-mode.toml", "probe_mode = \"ebpf\"\n", "expected one of"),
        ("bad-filter.toml", "[log]\nfilter = \"=[\"\n", "[log] filter in"),
        ("missing-secret.toml", "[auth]\nbearer_token_file = \"no-such-token\"\n", "no-such-token"),
        ("empty-secret.toml", "[auth]\nbearer_token_file = \"empty-token\"\n", "is empty"),
        ("half-tls.toml", "[tls]\ncert = \"c.pem\"\n", "no key"),
        ("half-basic.toml", "[auth]\nbasic_user = \"u\"\n", "password file"),
        (
            "two-auths.toml",
            "[auth]\nbasic_user = \"u\"\nbasic_password_file = \"empty-token\"\nbearer_token_file = \"empty-token\"\n",
            "cannot both",
        ),
    ] {
        let path = dir.write(name, content);
        let output =
            ptwatch_output(agent_command().args(["--listen", &free_port().to_string(), "--config", arg(&path)]));
        assert_config_error(&output, needle);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Errors about the file's own content name it.
        if !matches!(
            name,
            "missing-secret.toml" | "empty-secret.toml" | "half-tls.toml" | "half-basic.toml" | "two-auths.toml"
        ) {
            assert!(stderr.contains(arg(&path)), "{name}: the file must be named: {stderr}");
        }
    }
    // A file that does not exist, named by flag or by variable.
    let missing = dir.0.join("missing.toml");
    let output = ptwatch_output(agent_command().args(["--config", arg(&missing)]));
    assert_config_error(&output, &format!("cannot read config file {}", missing.display()));
    let output = ptwatch_output(agent_command().env("PTWATCH_CONFIG", &missing));
    assert_config_error(&output, "No such file");
}

/// Run the python client's OpenMetrics parser (a real implementation of the
/// spec) over `text`; families as JSON.
fn parse_openmetrics(text: &str) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = [
    {"name": f.name, "type": f.type,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
print(json.dumps(families))
"#;
    // Debian's python3 with python3-prometheus-client (`cargo xtask setup`).
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 is needed");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed the parser");
    let output = child.wait_with_output().expect("python3");
    assert!(
        output.status.success(),
        "OpenMetrics parser rejected the exposition (python3-prometheus-client is installed by `cargo xtask setup`):\n{}\n---\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("parser output")
}

#[test]
fn openmetrics_when_the_scraper_asks_for_it_prometheus_text_otherwise() {
    let agent = AgentProcess::start(&[]);
    let report = run_workload(&["cuts", "8", "0", "2048", "1", "dontneed"]);

    let om = http_request(agent.addr, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]).expect("scrape");
    assert_eq!(om.status, 200, "{}", om.body);
    assert_eq!(om.header("content-type"), Some(OPENMETRICS_TYPE));
    assert!(om.body.ends_with("\n# EOF\n"), "{}", om.body);
    assert_eq!(om.body.matches("# EOF").count(), 1);
    // Counter families are named without `_total`; their samples have it.
    assert!(om.body.contains("# TYPE ptwatch_pte_pages_reclaimed counter\n"), "{}", om.body);
    assert!(!om.body.contains("# TYPE ptwatch_pte_pages_reclaimed_total"), "{}", om.body);

    let families = parse_openmetrics(&om.body);
    let family = |name: &str| {
        families
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no family {name} in {families}"))
            .clone()
    };
    let reclaimed = family("ptwatch_pte_pages_reclaimed");
    assert_eq!(reclaimed["type"], "counter");
    let pid = report.pid.to_string();
    let sample = reclaimed["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["labels"]["pid"] == pid.as_str())
        .unwrap_or_else(|| panic!("no sample for pid {pid}: {reclaimed}"));
    assert_eq!(sample["name"], "ptwatch_pte_pages_reclaimed_total");
    assert_eq!(sample["value"].as_f64(), Some((report.vmpte_drop_kib / 4) as f64));
    assert_eq!(family("ptwatch_build_info")["type"], "gauge");

    for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*"), Some("application/json")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let text = http_request(agent.addr, "/metrics", &headers).expect("scrape");
        assert_eq!(text.status, 200);
        assert_eq!(text.header("content-type"), Some(TEXT_TYPE), "Accept {accept:?}");
        assert!(!text.body.contains("# EOF"));
        promtool_check(&text.body);
    }
}

#[test]
fn healthz_answers_at_once_and_readyz_once_the_probes_work() {
    let addr = free_port();
    let mut command = agent_command();
    command.args(["--listen", &addr.to_string()]);
    let agent = AgentProcess::spawn(command, addr);
    // Poll closely so the start-up window (probes loading) is seen when it
    // is long enough; readiness must never go back once reached.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut readyz_seen = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Some((status, body)) = http_get(addr, "/healthz") {
            assert_eq!((status, body.as_str()), (200, "ok\n"));
            let readyz = status_of(addr, "/readyz");
            if readyz != Some(503) || readyz_seen.last() != Some(&readyz) {
                readyz_seen.push(readyz);
            }
            if readyz == Some(200) {
                break;
            }
            // While not ready, /metrics has nothing to serve yet.
            if readyz == Some(503) {
                assert!(matches!(status_of(addr, "/metrics"), Some(503 | 200)));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(readyz_seen.last(), Some(&Some(200)), "never ready: {readyz_seen:?}");
    assert!(readyz_seen.iter().all(|s| matches!(s, Some(200 | 503))), "{readyz_seen:?}");
    assert_eq!(status_of(addr, "/metrics"), Some(200));
    assert_eq!(status_of(addr, "/readyz"), Some(200));
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
}

fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).map(|(status, _)| status)
}

#[test]
fn tls_serves_https_with_the_configured_certificate() {
    let dir = TempDir::new("tls");
    let (cert_pem, key_pem, trusted) = self_signed();
    let cert = dir.write("cert.pem", &cert_pem);
    let key = dir.write("key.pem", &key_pem);
    let addr = free_port();
    let mut command = agent_command();
    // The certificate by flag, the key by variable.
    command.args(["--listen", &addr.to_string(), "--tls-cert", arg(&cert)]).env("PTWATCH_TLS_KEY", &key);
    let agent = AgentProcess::spawn(command, addr).wait_until("serve /metrics over TLS", |a| {
        status(https_request(a.addr, &trusted, "/metrics", &[])) == Some(200)
    });
    let scrape = https_request(addr, &trusted, "/metrics", &[]).expect("TLS scrape");
    promtool_check(&scrape.body);
    assert_eq!(status(https_request(addr, &trusted, "/healthz", &[])), Some(200));
    assert_eq!(status(https_request(addr, &trusted, "/readyz", &[])), Some(200));
    let om = https_request(addr, &trusted, "/metrics", &[("Accept", "application/openmetrics-text")]).expect("OM");
    assert!(om.body.ends_with("# EOF\n"));
    // Plain HTTP gets no HTTP answer, and a client that does not trust the
    // certificate fails the handshake.
    assert!(http_get(addr, "/metrics").is_none_or(|(status, _)| status != 200));
    let (_, _, stranger) = self_signed();
    assert!(https_request(addr, &stranger, "/metrics", &[]).is_none());
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn bad_tls_material_is_one_line_before_anything_starts() {
    let dir = TempDir::new("badtls");
    let (cert_pem, key_pem, _) = self_signed();
    let (_, other_key_pem, _) = self_signed();
    let cert = dir.write("cert.pem", &cert_pem);
    let key = dir.write("key.pem", &key_pem);
    let other_key = dir.write("other-key.pem", &other_key_pem);
    let garbage = dir.write("garbage.pem", "this is not PEM\n");
    let broken_key = dir.write("broken-key.pem", "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n");
    let broken_cert = dir.write("broken-cert.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
    let missing = dir.0.join("missing.pem");
    for (cert, key, needle) in [
        (&missing, &key, format!("cannot read TLS certificate {}", missing.display())),
        (&cert, &missing, format!("cannot read TLS key {}", missing.display())),
        (&garbage, &key, format!("TLS certificate {}: no CERTIFICATE block", garbage.display())),
        (&broken_cert, &key, format!("TLS certificate {}: invalid PEM", broken_cert.display())),
        (&cert, &garbage, format!("TLS key {}: no usable private key", garbage.display())),
        (&cert, &broken_key, format!("TLS key {}", broken_key.display())),
        (&cert, &other_key, "cannot be used together".to_owned()),
        (&cert, &cert, format!("TLS key {}: no usable private key", cert.display())),
    ] {
        let output = ptwatch_output(agent_command().args([
            "--listen",
            &free_port().to_string(),
            "--tls-cert",
            arg(cert),
            "--tls-key",
            arg(key),
        ]));
        assert_config_error(&output, &needle);
    }
    let output = ptwatch_output(agent_command().args(["--tls-cert", arg(&cert)]));
    assert_config_error(&output, "no key");
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[test]
fn basic_auth_guards_metrics_but_not_health() {
    let dir = TempDir::new("basic");
    // A trailing newline, as `echo` writes, is not part of the password.
    let password = dir.write("password", "s3:cret\n");
    let addr = free_port();
    let mut command = agent_command();
    command
        .args(["--listen", &addr.to_string(), "--basic-auth-password-file", arg(&password)])
        .env("PTWATCH_BASIC_AUTH_USER", "prometheus");
    let agent = AgentProcess::spawn(command, addr).wait_ready();
    assert_eq!(status_of(addr, "/healthz"), Some(200), "health endpoints need no credentials");

    let denied = http_request(addr, "/metrics", &[]).expect("answer");
    assert_eq!(denied.status, 401);
    assert!(denied.header("www-authenticate").is_some_and(|v| v.starts_with("Basic ")), "{}", denied.head);
    for wrong in [basic("prometheus", "s3:cre"), basic("prometheus", "s3:cret\n"), basic("root", "s3:cret")] {
        assert_eq!(status(http_request(addr, "/metrics", &[("Authorization", &wrong)])), Some(401), "{wrong}");
    }
    assert_eq!(status(http_request(addr, "/metrics", &[("Authorization", "Bearer s3:cret")])), Some(401));
    assert_eq!(status(http_request(addr, "/", &[])), Some(401));
    let right = http_request(addr, "/metrics", &[("Authorization", &basic("prometheus", "s3:cret"))]).expect("ok");
    assert_eq!(right.status, 200);
    promtool_check(&right.body);

    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("clear text"), "auth without TLS must be warned about:\n{stderr}");
}

/// TLS and a bearer token from the config file, with paths relative to the
/// file, while the agent runs from another directory.
#[test]
fn bearer_token_and_tls_from_the_config_file() {
    let dir = TempDir::new("bearer");
    let (cert_pem, key_pem, trusted) = self_signed();
    dir.write("cert.pem", &cert_pem);
    dir.write("key.pem", &key_pem);
    dir.write("token", "t0ken-abc\n");
    let addr = free_port();
    let config = dir.write(
        "ptwatch.toml",
        &format!(
            "listen = \"{addr}\"\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[auth]\nbearer_token_file = \"token\"\n"
        ),
    );
    let mut command = agent_command();
    command.current_dir("/").args(["--config", arg(&config)]);
    let agent = AgentProcess::spawn(command, addr)
        .wait_until("become ready", |a| status(https_request(a.addr, &trusted, "/readyz", &[])) == Some(200));
    assert_eq!(status(https_request(addr, &trusted, "/healthz", &[])), Some(200));

    let denied = https_request(addr, &trusted, "/metrics", &[]).expect("answer");
    assert_eq!(denied.status, 401);
    assert!(denied.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer ")), "{}", denied.head);
    for wrong in ["Bearer t0ken-ab", "Bearer t0ken-abcd", "Bearer T0KEN-ABC", "t0ken-abc", "Basic t0ken-abc"] {
        assert_eq!(
            status(https_request(addr, &trusted, "/metrics", &[("Authorization", wrong)])),
            Some(401),
            "{wrong}"
        );
    }
    let right = https_request(addr, &trusted, "/metrics", &[("Authorization", "Bearer t0ken-abc")]).expect("ok");
    assert_eq!(right.status, 200);
    assert!(right.body.contains("ptwatch_build_info"));
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("clear text"), "{stderr}");
}
