//! The Helm chart `deploy/helm/ptwatch`, linted (`--strict`, against its
//! values schema) and rendered by Helm's own Go SDK (PyPI helm-python-sdk,
//! through deploy/helm/helm_sdk.py), the rendered manifests validated like
//! the kustomization's (kubernetes-validate, the PodMonitor schema), and its
//! defaults compared with the kustomization field by field, so the two ways
//! to deploy cannot drift apart. No cluster runs them here.

mod deploy_common;

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use deploy_common::{deploy_dir, kustomize, run, temp_dir, text, venv_tool, yaml_documents, VERSION};
use serde_json::{json, Value};

fn chart() -> PathBuf {
    deploy_dir().join("helm/ptwatch")
}

/// `helm_sdk.py COMMAND CHART VALUES`: its JSON answer, or the error Helm
/// raised.
fn helm(command: &str, values: &Value) -> Result<Value, String> {
    let output = run(
        Command::new(venv_tool("python3"))
            .arg(deploy_dir().join("helm/helm_sdk.py"))
            .arg(command)
            .arg(chart())
            .arg(values.to_string()),
        "helm_sdk.py (PyPI helm-python-sdk)",
    );
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("JSON from helm_sdk.py"))
    } else {
        Err(text(&output))
    }
}

/// The rendered manifests as one YAML stream, NOTES.txt left out.
fn render(values: &Value) -> String {
    let rendered = helm("render", values).unwrap_or_else(|err| panic!("render with {values} failed:\n{err}"));
    let mut stream = String::new();
    for (path, manifest) in rendered.as_object().expect("template map") {
        if path.ends_with(".yaml") && !manifest.as_str().expect("text").trim().is_empty() {
            stream.push_str("---\n");
            stream.push_str(manifest.as_str().expect("text"));
        }
    }
    stream
}

/// Rendered documents by kind.
fn by_kind(yaml: &str) -> BTreeMap<String, Value> {
    yaml_documents(yaml).into_iter().map(|d| (d["kind"].as_str().expect("kind").to_owned(), d)).collect()
}

#[test]
fn chart_lints_strictly_and_its_schema_rejects_bad_values() {
    let report = helm("lint", &json!({})).expect("lint runs");
    println!("{report}");
    assert_eq!(report["total_charts_linted"], 1);
    assert_eq!(report["messages"], json!([]), "strict lint findings");
    assert_eq!(report["errors"], json!([]));
    // Positive control: the values schema catches a typo and a bad runtime.
    for bad in [json!({"capabilities": {"runtime": "rkt"}}), json!({"podMonitr": {"enabled": true}})] {
        let report = helm("lint", &bad).expect("lint runs");
        assert_ne!(report["errors"], json!([]), "lint accepted {bad}");
        assert!(helm("render", &bad).is_err(), "render accepted {bad}");
    }
    let err = helm("render", &json!({"serviceMonitor": {"enabled": true}, "service": {"enabled": false}}))
        .expect_err("a ServiceMonitor without a Service");
    assert!(err.contains("serviceMonitor.enabled needs service.enabled"), "{err}");
}

#[test]
fn rendered_manifests_are_valid_against_the_schemas() {
    let dir = temp_dir("helm");
    let everything = json!({
        "podMonitor": {"enabled": true},
        "serviceMonitor": {"enabled": true},
        "networkPolicy": {"enabled": true},
    });
    let manifests = render(&everything);
    let path = dir.join("rendered.yaml");
    std::fs::write(&path, &manifests).expect("write the rendered chart");
    let output = run(
        Command::new(venv_tool("kubernetes-validate")).args(["--strict", "--kubernetes-version", "1.30.0"]).arg(&path),
        "kubernetes-validate",
    );
    let report = text(&output);
    println!("{report}");
    assert!(output.status.success(), "kubernetes-validate failed:\n{report}");
    for resource in [
        "daemonset/ptwatch",
        "configmap/ptwatch-config",
        "service/ptwatch",
        "serviceaccount/ptwatch",
        "networkpolicy/ptwatch",
    ] {
        assert!(report.contains(&format!("passed for resource {resource} ")), "{resource} not validated:\n{report}");
    }
    let podmonitor = {
        use std::io::Write as _;
        let mut child = Command::new(venv_tool("python3"))
            .arg(deploy_dir().join("kubernetes/validate_podmonitor.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("validate_podmonitor.py");
        child.stdin.take().expect("stdin").write_all(manifests.as_bytes()).expect("feed");
        child.wait_with_output().expect("validate_podmonitor.py")
    };
    assert!(podmonitor.status.success(), "PodMonitor invalid:\n{}", text(&podmonitor));
    // The ServiceMonitor mirrors the PodMonitor (no schema is vendored for
    // it): same job label, endpoint port and path, node relabeling.
    let kinds = by_kind(&manifests);
    let (pod, service) = (&kinds["PodMonitor"]["spec"], &kinds["ServiceMonitor"]["spec"]);
    assert_eq!(pod["jobLabel"], service["jobLabel"]);
    assert_eq!(pod["podMetricsEndpoints"], service["endpoints"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// The fields of the DaemonSet's pod that decide how the agent runs.
fn runtime_view(daemonset: &Value) -> Value {
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    json!({
        "hostPID": pod["hostPID"],
        "tolerations": pod["tolerations"],
        "automountServiceAccountToken": pod["automountServiceAccountToken"],
        "terminationGracePeriodSeconds": pod["terminationGracePeriodSeconds"],
        "volumes": pod["volumes"].as_array().expect("volumes").iter().map(|v| {
            // The ConfigMap's name differs by design (release-prefixed).
            let mut v = v.clone();
            if v.get("configMap").is_some() { v["configMap"]["name"] = json!("<config>"); }
            v
        }).collect::<Vec<_>>(),
        "image": container["image"],
        "args": container["args"],
        "env": container["env"],
        "ports": container["ports"],
        "livenessProbe": container["livenessProbe"],
        "readinessProbe": container["readinessProbe"],
        "resources": container["resources"],
        "securityContext": container["securityContext"],
        "volumeMounts": container["volumeMounts"],
    })
}

#[test]
fn defaults_deploy_what_the_kustomization_deploys() {
    let chart = by_kind(&render(&json!({"podMonitor": {"enabled": true}})));
    let kustomize = by_kind(&kustomize());
    assert_eq!(runtime_view(&chart["DaemonSet"]), runtime_view(&kustomize["DaemonSet"]), "DaemonSets differ");
    assert_eq!(
        chart["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["image"],
        json!(format!("ptwatch:{VERSION}")),
        "the chart's appVersion is the release's"
    );
    assert_eq!(
        chart["ConfigMap"]["data"]["ptwatch.toml"].as_str().map(str::trim_end),
        kustomize["ConfigMap"]["data"]["ptwatch.toml"].as_str().map(str::trim_end),
        "the chart's default config is deploy/kubernetes/ptwatch.toml"
    );
    assert_eq!(
        chart["PodMonitor"]["spec"]["podMetricsEndpoints"],
        kustomize["PodMonitor"]["spec"]["podMetricsEndpoints"]
    );
    assert_eq!(chart["PodMonitor"]["spec"]["jobLabel"], kustomize["PodMonitor"]["spec"]["jobLabel"]);
    assert_eq!(chart["Service"]["spec"]["clusterIP"], kustomize["Service"]["spec"]["clusterIP"]);
    assert_eq!(chart["Service"]["spec"]["ports"], kustomize["Service"]["spec"]["ports"]);
    assert_eq!(chart["ServiceAccount"]["automountServiceAccountToken"], json!(false));
    // Off by default: the monitors need prometheus-operator's CRDs, the
    // policy a CNI that enforces it.
    let defaults = by_kind(&render(&json!({})));
    for kind in ["PodMonitor", "ServiceMonitor", "NetworkPolicy"] {
        assert!(!defaults.contains_key(kind), "{kind} rendered by default");
    }
}

#[test]
fn capabilities_follow_the_runtime_and_the_accounting() {
    let added = |values: Value| -> Value {
        let kinds = by_kind(&render(&values));
        kinds["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
            .clone()
    };
    let exact = json!(["BPF", "PERFMON", "SYS_ADMIN"]);
    let minimal = json!(["BPF", "PERFMON"]);
    for runtime in ["containerd", "docker", "cri-o"] {
        assert_eq!(added(json!({"capabilities": {"runtime": runtime, "exactAccounting": true}})), exact, "{runtime}");
    }
    assert_eq!(added(json!({"capabilities": {"runtime": "containerd", "exactAccounting": false}})), minimal);
    assert_eq!(added(json!({"capabilities": {"runtime": "docker", "exactAccounting": false}})), minimal);
    // containers-common's seccomp profile opens bpf() only to CAP_SYS_ADMIN
    // (agent/tests/deploy_image.rs shows it with podman).
    assert_eq!(added(json!({"capabilities": {"runtime": "cri-o", "exactAccounting": false}})), exact);
}

#[test]
fn network_policy_admits_only_prometheus_to_the_metrics_port() {
    let kinds = by_kind(&render(&json!({"networkPolicy": {"enabled": true}})));
    let policy = &kinds["NetworkPolicy"]["spec"];
    assert_eq!(policy["podSelector"]["matchLabels"], kinds["DaemonSet"]["spec"]["selector"]["matchLabels"]);
    assert_eq!(policy["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["ingress"],
        json!([{
            "from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }],
            "ports": [{"port": 9977, "protocol": "TCP"}],
        }])
    );
    let port = &kinds["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"];
    assert_eq!(port, &json!(9977));
}
