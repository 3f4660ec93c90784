//! Static checks of `deploy/`: the systemd unit (`systemd-analyze verify`,
//! `systemd-analyze security` with an exposure ceiling), the Kubernetes
//! manifests (rendered by `kubectl kustomize`, validated against the
//! Kubernetes OpenAPI schemas by PyPI's `kubernetes-validate` and the
//! PodMonitor against `deploy/kubernetes/schemas`), the Containerfile (parsed
//! by BuildKit's parser), the Prometheus rules (`promtool check` and
//! `promtool test rules`), and every agent flag, variable and config file the
//! deploy files use, run through the real binary.

mod deploy_common;
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use deploy_common::{
    deploy_dir, exposure, kustomize, run, temp_dir, text, venv_tool, yaml_documents, EXPOSURE_CEILING,
};
use support::{agent_command, free_port, ptwatch_bin, AgentProcess};

/// The unit with its ExecStart binary replaced by the one under test
/// (`systemd-analyze verify` checks that the binary exists and is
/// executable); nothing else changes.
fn unit_for_test(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/ptwatch.service")).expect("read the unit");
    assert!(unit.contains("\nExecStart=ptwatch "), "the unit runs `ptwatch` from systemd's search path");
    let unit = unit.replace("\nExecStart=ptwatch ", &format!("\nExecStart={} ", ptwatch_bin().display()));
    std::fs::create_dir_all(dir).expect("temp dir");
    let path = dir.join("ptwatch.service");
    std::fs::write(&path, unit).expect("write the unit");
    path
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let dir = temp_dir("unit-verify");
    let unit = unit_for_test(&dir);
    let output = run(Command::new("systemd-analyze").arg("verify").arg(&unit), "systemd-analyze (package systemd)");
    assert!(output.status.success(), "systemd-analyze verify failed:\n{}", text(&output));
    // verify also warns (unknown settings, bad values) without failing.
    assert_eq!(text(&output).trim(), "", "systemd-analyze verify printed warnings");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn systemd_unit_exposure_is_below_the_ceiling() {
    let dir = temp_dir("unit-security");
    let unit = unit_for_test(&dir);
    let output = run(
        Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(&unit),
        "systemd-analyze",
    );
    let report = text(&output);
    println!("{report}");
    let score = exposure(&report);
    println!("exposure {score} (ceiling {EXPOSURE_CEILING})");
    assert!(score <= EXPOSURE_CEILING, "exposure {score} above {EXPOSURE_CEILING}:\n{report}");
    // The settings the unit is meant to have, as systemd reads them.
    for line in [
        "✓ NoNewPrivileges=",
        "✓ User=/DynamicUser=",
        "✓ ProtectSystem=",
        "✓ ProtectHome=",
        "✓ PrivateTmp=",
        "✓ MemoryDenyWriteExecute=",
        "✓ LockPersonality=",
        "✓ ProtectKernelTunables=",
        "✓ RestrictAddressFamilies=~AF_UNIX",
        "✓ SystemCallArchitectures=",
    ] {
        assert!(report.lines().any(|l| l.starts_with(line)), "{line} not satisfied:\n{report}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `--long-flags` and `PTWATCH_*` names in `text`.
fn flags_and_variables(text: &str) -> Vec<String> {
    let mut found: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|word| {
            (word.starts_with("--") && word.len() > 2 && word[2..].chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                || (word.starts_with("PTWATCH_") && word.len() > 8)
        })
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn flags_and_variables_in_the_deploy_files_are_the_agents() {
    let help = run(Command::new(ptwatch_bin()).args(["agent", "--help"]), "ptwatch agent --help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for file in ["systemd/ptwatch.service", "kubernetes/daemonset.yaml", "Containerfile"] {
        let content = std::fs::read_to_string(deploy_dir().join(file)).expect("read deploy file");
        // Lines that configure the agent, not comments or build steps.
        let agent_lines: String = content
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter(|l| {
                l.contains("ptwatch") || l.contains("PTWATCH_") || l.contains("--config") || l.contains("args:")
            })
            .filter(|l| !l.contains("cargo") && !l.contains("PTWATCH_REQUIRE_EBPF") && !l.starts_with("COPY"))
            .collect::<Vec<_>>()
            .join("\n");
        let used = flags_and_variables(&agent_lines);
        assert!(!used.is_empty() || file == "Containerfile", "{file}: no agent flags found");
        for name in used {
            assert!(help.contains(&name), "{file} uses {name}, which `ptwatch agent --help` does not list");
        }
    }
}

/// The example config files start the real agent (a bad key or value would
/// exit 2): systemd's and the Kubernetes ConfigMap's.
#[test]
fn example_config_files_are_accepted_by_the_agent() {
    for file in ["systemd/ptwatch.toml", "kubernetes/ptwatch.toml"] {
        let path = deploy_dir().join(file);
        let addr = free_port();
        let mut command = agent_command();
        command.arg("--config").arg(&path).args(["--listen", &addr.to_string()]);
        let agent = AgentProcess::spawn(command, addr).wait_ready();
        let (status, stderr) = agent.stop();
        assert!(status.success(), "{file}: {status:?}\n{stderr}");
        assert!(stderr.contains(&path.display().to_string()), "the agent names its config file:\n{stderr}");
    }
}

/// `kubectl kustomize DIR`: a copy of the kustomization, changed by a test.
fn kustomize_dir(dir: &Path) -> String {
    let output = run(Command::new("kubectl").arg("kustomize").arg(dir), "kubectl (needed to render deploy/kubernetes)");
    assert!(output.status.success(), "kubectl kustomize failed:\n{}", text(&output));
    String::from_utf8(output.stdout).expect("UTF-8 manifests")
}

fn kubernetes_validate(manifests: &str, dir: &Path) -> Output {
    let path = dir.join("rendered.yaml");
    std::fs::write(&path, manifests).expect("write rendered manifests");
    run(
        Command::new(venv_tool("kubernetes-validate")).args(["--strict", "--kubernetes-version", "1.30.0"]).arg(&path),
        "kubernetes-validate",
    )
}

fn validate_podmonitor(manifests: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(venv_tool("python3"))
        .arg(deploy_dir().join("kubernetes/validate_podmonitor.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run validate_podmonitor.py");
    child.stdin.take().expect("stdin").write_all(manifests.as_bytes()).expect("feed the manifests");
    child.wait_with_output().expect("validate_podmonitor.py")
}

#[test]
fn kubernetes_manifests_are_valid_against_the_schemas() {
    let dir = temp_dir("k8s");
    let manifests = kustomize();
    for kind in ["Namespace", "ServiceAccount", "ConfigMap", "Service", "DaemonSet", "PodMonitor"] {
        assert!(manifests.contains(&format!("\nkind: {kind}\n")), "no {kind} rendered:\n{manifests}");
    }
    let output = kubernetes_validate(&manifests, &dir);
    let report = text(&output);
    println!("{report}");
    assert!(output.status.success(), "kubernetes-validate failed:\n{report}");
    for resource in ["namespace/ptwatch", "serviceaccount/ptwatch", "service/ptwatch", "daemonset/ptwatch"] {
        assert!(report.contains(&format!("passed for resource {resource} ")), "{resource} not validated:\n{report}");
    }
    let output = validate_podmonitor(&manifests);
    assert!(output.status.success(), "PodMonitor invalid:\n{}", text(&output));

    // Both validators really reject a wrong field.
    let broken = manifests.replacen("hostPID: true", "hostPID: true\n      hostPIDs: true", 1);
    assert!(
        !kubernetes_validate(&broken, &dir).status.success(),
        "kubernetes-validate --strict accepted an unknown field"
    );
    let broken = manifests.replacen("scrapeTimeout: 10s", "scrapeTimeout: 10s\n    scrapeTimeOut: 10s", 1);
    assert!(!validate_podmonitor(&broken).status.success(), "the PodMonitor schema accepted an unknown field");

    // Least privilege, as docs/install.md#kubernetes states it.
    assert!(!manifests.contains("privileged: true"), "the DaemonSet must not be privileged");
    assert!(manifests.contains("- BPF\n") && manifests.contains("- PERFMON\n"), "CAP_BPF and CAP_PERFMON granted");
    assert!(manifests.contains("drop:\n            - ALL"), "every other capability dropped:\n{manifests}");
    assert!(manifests.contains("readOnlyRootFilesystem: true"));
    assert!(manifests.contains("path: /healthz") && manifests.contains("path: /readyz"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn containerfile_copies_the_static_binary_onto_an_empty_base() {
    let script = r#"
import json, sys, dockerfile
print(json.dumps([[c.cmd, list(c.flags), list(c.value)] for c in dockerfile.parse_file(sys.argv[1])]))
"#;
    let output = run(
        Command::new(venv_tool("python3")).args(["-c", script]).arg(deploy_dir().join("Containerfile")),
        "python3 with the dockerfile package",
    );
    assert!(output.status.success(), "BuildKit's parser rejected deploy/Containerfile:\n{}", text(&output));
    let commands: Vec<(String, Vec<String>, Vec<String>)> =
        serde_json::from_slice(&output.stdout).expect("parsed instructions");
    let instructions: Vec<&str> = commands.iter().map(|(cmd, _, _)| cmd.as_str()).collect();
    // One stage on scratch: nothing to pull, nothing to run at build time
    // (so no emulator for foreign platforms), no shell in the image.
    assert_eq!(commands.iter().filter(|(cmd, _, _)| cmd == "FROM").count(), 1, "{instructions:?}");
    assert!(commands.iter().any(|(cmd, _, value)| cmd == "FROM" && value == &["scratch"]), "{commands:?}");
    assert!(!instructions.contains(&"RUN"), "nothing runs at build time: {instructions:?}");
    // The binary of the build platform, by the names buildah and BuildKit
    // give it; xtask/src/dist/image.rs lays the context out that way.
    assert!(
        commands.iter().any(|(cmd, _, value)| cmd == "COPY"
            && value == &["${TARGETOS}-${TARGETARCH}/ptwatch", "/usr/bin/ptwatch"]),
        "{commands:?}"
    );
    assert!(
        commands.iter().any(|(cmd, _, value)| cmd == "ENTRYPOINT" && value == &["/usr/bin/ptwatch"]),
        "{commands:?}"
    );
}

#[test]
fn prometheus_rules_check_and_unit_tests_pass() {
    let prometheus = deploy_dir().join("prometheus");
    for (args, what) in [
        (vec!["check", "rules", "ptwatch-rules.yml"], "promtool check rules"),
        (vec!["check", "config", "prometheus.yml"], "promtool check config"),
        (vec!["test", "rules", "tests/ptwatch-rules.test.yml"], "promtool test rules"),
    ] {
        let output =
            run(Command::new("promtool").args(&args).current_dir(&prometheus), "promtool (package prometheus)");
        println!("{}", text(&output));
        assert!(output.status.success(), "{what} failed:\n{}", text(&output));
    }
    // Every alert of the rules file has a firing and a not-firing case.
    let rules = std::fs::read_to_string(prometheus.join("ptwatch-rules.yml")).expect("rules");
    let tests = std::fs::read_to_string(prometheus.join("tests/ptwatch-rules.test.yml")).expect("rule tests");
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        let cases: Vec<&str> =
            tests.split("alertname: ").skip(1).filter(|c| c.starts_with(&format!("{alert}\n"))).collect();
        assert!(cases.iter().any(|c| c.contains("exp_alerts: []")), "{alert}: no not-firing case");
        assert!(cases.iter().any(|c| c.contains("exp_labels:")), "{alert}: no firing case");
    }
}

/// The NetworkPolicy component (docs/http.md#who-may-connect): off by
/// default; turned on the documented way (uncommenting `components:` in
/// the kustomization), it renders a valid policy that admits only
/// Prometheus, to the port the DaemonSet serves on, and selects the agent's
/// pods (the Helm chart's `networkPolicy.enabled` renders the same rule:
/// deploy_helm.rs).
#[test]
fn network_policy_is_off_by_default_and_valid_when_switched_on() {
    assert!(!kustomize().contains("kind: NetworkPolicy"), "the NetworkPolicy must be off by default");
    let dir = temp_dir("netpol");
    let copy = dir.join("kubernetes");
    let copied = run(Command::new("cp").arg("-r").arg(deploy_dir().join("kubernetes")).arg(&copy), "cp");
    assert!(copied.status.success(), "{}", text(&copied));
    let kustomization = copy.join("kustomization.yaml");
    let original = std::fs::read_to_string(&kustomization).expect("read kustomization.yaml");
    let switch = "# components:\n#   - components/network-policy\n";
    assert!(original.contains(switch), "the documented switch is in kustomization.yaml:\n{original}");
    let switched = original.replace(switch, "components:\n  - components/network-policy\n");
    std::fs::write(&kustomization, switched).expect("write kustomization.yaml");
    let manifests = kustomize_dir(&copy);
    let output = kubernetes_validate(&manifests, &dir);
    assert!(output.status.success(), "kubernetes-validate failed:\n{}", text(&output));
    assert!(text(&output).contains("passed for resource networkpolicy/ptwatch "), "{}", text(&output));

    let documents = yaml_documents(&manifests);
    let of_kind = |kind: &str| {
        documents.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} rendered:\n{manifests}"))
    };
    let (policy, daemonset) = (of_kind("NetworkPolicy"), of_kind("DaemonSet"));
    assert_eq!(policy["metadata"]["namespace"], daemonset["metadata"]["namespace"]);
    let spec = &policy["spec"];
    assert_eq!(spec["podSelector"]["matchLabels"], daemonset["spec"]["template"]["metadata"]["labels"]);
    assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress"]));
    assert_eq!(
        spec["ingress"],
        serde_json::json!([{
            "from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }],
            "ports": [{"port": 9977, "protocol": "TCP"}],
        }])
    );
    let port = &daemonset["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"];
    assert_eq!(port, &serde_json::json!(9977));
    let _ = std::fs::remove_dir_all(dir);
}
