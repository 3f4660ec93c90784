//! The container image of `cargo xtask dist` (`ptwatch-<version>.oci.tar`),
//! run by podman exactly as the DaemonSet runs it: host PID namespace, the
//! container securityContext, the host mounts, the ConfigMap, the args, env,
//! ports and resource limits, all read from the rendered kustomization
//! (`kubectl kustomize deploy/kubernetes`), never copied by hand. A field the
//! translation does not know makes the test fail, so the manifest cannot
//! grow a setting this test silently ignores.
//!
//! No Kubernetes runs here (no cluster, no kind node image reachable);
//! podman (Debian 12: 4.3, with runc, the containers-common seccomp profile)
//! stands in for the kubelet and its runtime. This host needs
//! `--runtime runc` (crun refuses its hybrid cgroup layout) and explicit
//! ulimits (podman cannot raise them without CAP_SYS_RESOURCE here).

mod deploy_common;
mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use deploy_common::{artifact, kustomize, run, run_ok, temp_dir, text, wait_until, yaml_documents, VERSION};
use serde_json::Value;
use support::{free_ports, http_get, run_workload, Metrics};

/// Pod spec fields the translation handles (or that do not change how the
/// container runs on one node: scheduling, accounts, grace period).
const POD_FIELDS: &[&str] = &[
    "serviceAccountName",
    "automountServiceAccountToken",
    "hostPID",
    "tolerations",
    "terminationGracePeriodSeconds",
    "containers",
    "volumes",
];
/// Container fields the translation handles.
const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "args",
    "env",
    "ports",
    "livenessProbe",
    "readinessProbe",
    "resources",
    "securityContext",
    "volumeMounts",
];

/// podman with its storage private to one test (vfs: no overlay mounts to
/// clean up), the runtime and limits this host needs.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .arg(format!("--root={}", self.dir.join("storage").display()))
            .arg(format!("--runroot={}", self.dir.join("run").display()))
            .args(["--storage-driver=vfs", "--cgroup-manager=cgroupfs", "--runtime=runc"]);
        command
    }

    /// Load the archive; podman picks the index entry of this host's
    /// platform. Returns the image id.
    fn load(&self, archive: &Path) -> String {
        let out = run_ok(
            self.command().arg("pull").arg("--quiet").arg(format!("oci-archive:{}", archive.display())),
            "podman pull oci-archive (Debian package podman; `cargo xtask setup --for test` installs it)",
        );
        out.lines().last().expect("podman pull prints the image id").trim().to_owned()
    }
}

/// The rendered DaemonSet and the ConfigMaps, by name.
struct Rendered {
    daemonset: Value,
    config_maps: BTreeMap<String, Value>,
}

fn rendered() -> Rendered {
    let documents = yaml_documents(&kustomize());
    let daemonset = documents.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet").clone();
    let config_maps = documents
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .map(|d| (d["metadata"]["name"].as_str().expect("ConfigMap name").to_owned(), d.clone()))
        .collect();
    Rendered { daemonset, config_maps }
}

fn keys(object: &Value) -> Vec<&str> {
    object.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

/// What to change from the manifest, for the variants the test compares.
#[derive(Default)]
struct Changes {
    host_pid: Option<bool>,
    drop_capability: Option<&'static str>,
}

/// `podman run` arguments for the DaemonSet's container, translated from
/// the rendered manifest field by field. Returns the arguments and the
/// host address each named container port is published on.
fn podman_run_args(rendered: &Rendered, dir: &Path, changes: &Changes) -> (Vec<String>, BTreeMap<String, SocketAddr>) {
    let pod = &rendered.daemonset["spec"]["template"]["spec"];
    for field in keys(pod) {
        assert!(POD_FIELDS.contains(&field), "pod spec field {field:?} is not translated to podman by this test");
    }
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let container = &containers[0];
    for field in keys(container) {
        assert!(CONTAINER_FIELDS.contains(&field), "container field {field:?} is not translated by this test");
    }
    let mut args = vec!["--ulimit=nofile=20000:20000".to_owned(), "--ulimit=nproc=4096:4096".to_owned()];

    if changes.host_pid.unwrap_or(pod["hostPID"] == true) {
        args.push("--pid=host".to_owned());
    }

    let security = &container["securityContext"];
    for (field, value) in security.as_object().expect("securityContext") {
        match field.as_str() {
            "runAsUser" => args.push(format!("--user={value}")),
            "runAsNonRoot" => assert_eq!(value, false, "runAsNonRoot with runAsUser 0"),
            "privileged" if value == true => args.push("--privileged".to_owned()),
            "privileged" => {}
            "allowPrivilegeEscalation" if value == false => args.push("--security-opt=no-new-privileges".to_owned()),
            "allowPrivilegeEscalation" => {}
            "readOnlyRootFilesystem" if value == true => {
                args.extend(["--read-only".to_owned(), "--read-only-tmpfs=false".to_owned()]);
            }
            "readOnlyRootFilesystem" => {}
            "capabilities" => {
                for cap in value["drop"].as_array().into_iter().flatten() {
                    args.push(format!("--cap-drop={}", cap.as_str().expect("capability").to_lowercase()));
                }
                for cap in value["add"].as_array().into_iter().flatten() {
                    let cap = cap.as_str().expect("capability");
                    if changes.drop_capability != Some(cap) {
                        args.push(format!("--cap-add=CAP_{cap}"));
                    }
                }
            }
            // RuntimeDefault: podman's default profile, which is what
            // containers-common ships (and CRI-O uses).
            "seccompProfile" => assert_eq!(value["type"], "RuntimeDefault", "seccomp profile {value}"),
            other => panic!("securityContext field {other:?} is not translated by this test"),
        }
    }

    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| (v["name"].as_str().expect("volume name"), v))
        .collect();
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        let name = mount["name"].as_str().expect("mount name");
        let volume = volumes.get(name).unwrap_or_else(|| panic!("no volume {name}"));
        let source = if let Some(path) = volume["hostPath"]["path"].as_str() {
            assert!(Path::new(path).is_dir(), "hostPath {path} is not a directory on this host");
            PathBuf::from(path)
        } else if let Some(map) = volume["configMap"]["name"].as_str() {
            // The kubelet writes the ConfigMap's keys as files.
            let data = &rendered.config_maps.get(map).unwrap_or_else(|| panic!("no ConfigMap {map}"))["data"];
            let files = dir.join(format!("configmap-{map}"));
            std::fs::create_dir_all(&files).expect("ConfigMap dir");
            for (key, content) in data.as_object().expect("ConfigMap data") {
                std::fs::write(files.join(key), content.as_str().expect("text data")).expect("ConfigMap file");
            }
            files
        } else {
            panic!("volume {volume} is neither hostPath nor configMap: not translated by this test");
        };
        let read_only = if mount["readOnly"] == true { ":ro" } else { "" };
        args.push(format!(
            "--volume={}:{}{read_only}",
            source.display(),
            mount["mountPath"].as_str().expect("mountPath")
        ));
    }

    for env in container["env"].as_array().into_iter().flatten() {
        args.push(format!(
            "--env={}={}",
            env["name"].as_str().expect("env name"),
            env["value"].as_str().expect("env value")
        ));
    }
    let limits = &container["resources"]["limits"];
    if let Some(memory) = limits["memory"].as_str() {
        let bytes =
            memory.strip_suffix("Mi").map(|m| format!("{m}m")).unwrap_or_else(|| panic!("memory limit {memory}"));
        args.push(format!("--memory={bytes}"));
    }
    if let Some(cpu) = limits["cpu"].as_str() {
        let millis: f64 =
            cpu.strip_suffix('m').and_then(|m| m.parse().ok()).unwrap_or_else(|| panic!("cpu limit {cpu}"));
        args.push(format!("--cpus={}", millis / 1000.0));
    }
    // Each port published on a free loopback port: a pod has its own
    // network namespace, and so does this container.
    let mut ports = BTreeMap::new();
    for port in container["ports"].as_array().expect("ports") {
        let [addr] = free_ports::<1>();
        let target = port["containerPort"].as_u64().expect("containerPort");
        args.push(format!("--publish={addr}:{target}"));
        ports.insert(port["name"].as_str().expect("port name").to_owned(), addr);
    }
    (args, ports)
}

/// The container's command line after the image: the manifest's `args`.
fn container_args(rendered: &Rendered) -> Vec<String> {
    let container = &rendered.daemonset["spec"]["template"]["spec"]["containers"][0];
    container["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("arg").to_owned()).collect()
}

/// A running container, removed when dropped.
struct Running<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = self.podman.command().args(["rm", "--force", "--time=5", &self.name]).output();
    }
}

impl Running<'_> {
    fn logs(&self) -> String {
        text(&run(self.podman.command().args(["logs", &self.name]), "podman logs"))
    }

    /// Wait up to 60 s for `ready` while the container runs; panic with its
    /// log if it stops or never gets there.
    fn wait(&self, what: &str, ready: impl Fn() -> bool) {
        wait_until(
            what,
            60,
            || {
                let state = self.state();
                assert!(state.starts_with("running"), "the container stopped ({state}):\n{}", self.logs());
                ready()
            },
            || self.logs(),
        );
    }

    fn state(&self) -> String {
        let out = run(
            self.podman.command().args(["inspect", "--format={{.State.Status}} {{.State.ExitCode}}", &self.name]),
            "podman inspect",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn start<'a>(podman: &'a Podman, image: &str, args: &[String], rendered: &Rendered, name: &str) -> Running<'a> {
    let name = format!("ptwatch-test-{name}-{}", std::process::id());
    let _ = podman.command().args(["rm", "--force", &name]).output();
    run_ok(
        podman
            .command()
            .args(["run", "--detach", "--name", &name])
            .args(args)
            .arg(image)
            .args(container_args(rendered)),
        "podman run",
    );
    Running { podman, name }
}

/// An HTTP probe of the manifest, made the way the kubelet makes it: from
/// outside the container, to the named port. An exec probe would need a
/// shell or client in the image, which a scratch image has not.
fn probe(rendered: &Rendered, which: &str, ports: &BTreeMap<String, SocketAddr>) -> u16 {
    let probe = &rendered.daemonset["spec"]["template"]["spec"]["containers"][0][which];
    assert!(probe.get("exec").is_none(), "{which} is an exec probe; the scratch image has no shell");
    let get = &probe["httpGet"];
    let port = get["port"].as_str().expect("named port");
    let addr =
        ports.get(port).unwrap_or_else(|| panic!("{which} names port {port}, which the container does not expose"));
    http_get(*addr, get["path"].as_str().expect("probe path")).map_or(0, |(status, _)| status)
}

#[test]
fn image_runs_with_the_daemonsets_security_context_and_mounts() {
    let dir = temp_dir("image");
    let podman = Podman::new(&dir);
    let rendered = rendered();
    // The manifest's image is this release's.
    let image_ref = rendered.daemonset["spec"]["template"]["spec"]["containers"][0]["image"].as_str().expect("image");
    assert!(image_ref.ends_with(&format!(":{VERSION}")), "the manifest runs {image_ref}, not version {VERSION}");
    let image = podman.load(&artifact(&format!("ptwatch-{VERSION}.oci.tar")));

    // As the manifest says.
    let (args, ports) = podman_run_args(&rendered, &dir, &Changes::default());
    println!("podman run {}", args.join(" "));
    let metrics_addr = ports["metrics"];
    let agent = start(&podman, &image, &args, &rendered, "daemonset");
    agent.wait("become ready", || probe(&rendered, "readinessProbe", &ports) == 200);
    assert_eq!(probe(&rendered, "livenessProbe", &ports), 200, "liveness");
    let scrape = || Metrics::parse(http_get(metrics_addr, "/metrics").expect("scrape").1);
    let metrics = scrape();
    assert_eq!(metrics.value("ptwatch_reclaim_accounting_info", &[("method", "page_table_walk")]), 1.0, "exact walk");
    assert_eq!(metrics.value("ptwatch_probe_attached", &[("event", "pt_reclaim")]), 1.0, "reclaim probe attached");
    // A process of the host, counted exactly by the agent in the container.
    if support::expect_pt_reclaim() {
        let report = run_workload(&["cuts", "32", "0", "2048", "1", "dontneed"]);
        let pid = report.pid.to_string();
        let expected = (report.vmpte_drop_kib / 4) as f64;
        assert!(expected > 0.0, "the workload's DONTNEED reclaimed no PTE table");
        agent.wait("count the workload's reclaim", || {
            scrape().get("ptwatch_pte_pages_reclaimed_total", &[("pid", &pid)]) == Some(expected)
        });
    }
    let logs = agent.logs();
    assert!(logs.contains("\"ready"), "JSON logs say the agent is ready:\n{logs}");
    drop(agent);

    // Without the host PID namespace: the agent still runs and says it
    // counts reclaim through pgtables_bytes (docs/install.md#kubernetes).
    let (args, ports) = podman_run_args(&rendered, &dir, &Changes { host_pid: Some(false), ..Changes::default() });
    let agent = start(&podman, &image, &args, &rendered, "no-hostpid");
    agent.wait("become ready without host PID", || probe(&rendered, "readinessProbe", &ports) == 200);
    let metrics = Metrics::parse(http_get(ports["metrics"], "/metrics").expect("scrape").1);
    assert_eq!(metrics.value("ptwatch_reclaim_accounting_info", &[("method", "pgtables_bytes")]), 1.0, "fallback");
    drop(agent);

    // podman's default seccomp profile (containers-common) allows bpf() and
    // perf_event_open() only to a container holding CAP_SYS_ADMIN: without
    // it, CAP_BPF and CAP_PERFMON are not enough and the agent stops.
    let (args, _) =
        podman_run_args(&rendered, &dir, &Changes { drop_capability: Some("SYS_ADMIN"), ..Changes::default() });
    let agent = start(&podman, &image, &args, &rendered, "no-sys-admin");
    wait_until("the agent without CAP_SYS_ADMIN to stop", 60, || agent.state().starts_with("exited"), || agent.logs());
    let (state, logs) = (agent.state(), agent.logs());
    assert!(!state.ends_with(" 0"), "exited with success without CAP_SYS_ADMIN: {state}\n{logs}");
    assert!(logs.contains("Operation not permitted"), "bpf() refused by seccomp:\n{logs}");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}
