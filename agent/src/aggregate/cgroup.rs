//! Which cgroup, container and pod a process belongs to, without asking
//! Kubernetes or a container runtime.
//!
//! The kernel side records the cgroup v2 id of a process at its first event
//! (the process may be gone before any harvest). Here that id is turned into
//! a path by finding the directory with that inode in the v2 tree, and the
//! path into `container_id`/`pod_uid` by the naming conventions of the
//! kubelet (cgroupfs and systemd drivers), containerd, CRI-O, Docker and
//! Podman: [`parse_path`] is pure so that every real-world shape can be
//! unit-tested.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The container runtime a cgroup path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A container directory under a kubelet pod cgroup (cgroupfs driver),
    /// whose name is the bare id and does not say which runtime made it.
    Unknown,
}

/// What a cgroup path says about the container and pod inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathInfo {
    pub container_id: Option<String>,
    /// Pod UID in its API form (dashes), recovered from the systemd slice
    /// name where the kubelet replaced them with underscores.
    pub pod_uid: Option<String>,
    pub runtime: Option<Runtime>,
}

/// The labels of one cgroup, as exported: empty strings where unknown (the
/// exporter omits those labels, which Prometheus treats the same).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CgroupLabels {
    /// Path relative to the cgroup v2 mount, starting with `/`.
    pub path: String,
    pub container_id: String,
    pub pod_uid: String,
}

impl CgroupLabels {
    pub fn from_path(path: &str) -> Self {
        let info = parse_path(path);
        Self {
            path: path.to_owned(),
            container_id: info.container_id.unwrap_or_default(),
            pod_uid: info.pod_uid.unwrap_or_default(),
        }
    }

    pub fn is_known(&self) -> bool {
        !self.path.is_empty()
    }
}

/// Container and pod named by a cgroup v2 path such as
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
///
/// The deepest component naming a container (or pod) wins: sub-cgroups a
/// container creates inside its own (`…/cri-containerd-<id>.scope/init.scope`)
/// name nothing, and in nested set-ups (a kind node inside Docker) the inner
/// container is the one the process runs in.
pub fn parse_path(path: &str) -> PathInfo {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut info = PathInfo::default();
    let mut in_kubepods = false;
    for (i, component) in components.iter().enumerate() {
        let parent = i.checked_sub(1).and_then(|p| components.get(p)).copied();
        // containerd's systemd-driver form when the runtime did not turn it
        // into a scope: `kubepods-…-pod<uid>.slice:cri-containerd:<id>`.
        if let Some((slice, prefix, id)) = colon_form(component) {
            if let Some(uid) = pod_from_slice(slice) {
                info.pod_uid = Some(uid);
            }
            if let Some(runtime) = runtime_of_prefix(prefix) {
                if is_container_id(id) {
                    info.container_id = Some(id.to_owned());
                    info.runtime = Some(runtime);
                }
            }
            continue;
        }
        if component.starts_with("kubepods") || component.contains("-kubepods") {
            in_kubepods = true;
        }
        if let Some(uid) = pod_from_slice(component) {
            info.pod_uid = Some(uid);
            continue;
        }
        if in_kubepods {
            if let Some(uid) = component.strip_prefix("pod").and_then(normalize_pod_uid) {
                info.pod_uid = Some(uid);
                continue;
            }
        }
        if let Some((id, runtime)) = container_component(component, parent) {
            info.container_id = Some(id.to_owned());
            info.runtime = Some(runtime);
        }
    }
    info
}

/// `<slice>:<prefix>:<id>`.
fn colon_form(component: &str) -> Option<(&str, &str, &str)> {
    let mut parts = component.splitn(3, ':');
    let (slice, prefix, id) = (parts.next()?, parts.next()?, parts.next()?);
    slice.ends_with(".slice").then_some((slice, prefix, id))
}

fn runtime_of_prefix(prefix: &str) -> Option<Runtime> {
    match prefix {
        "cri-containerd" => Some(Runtime::Containerd),
        "crio" => Some(Runtime::CriO),
        "docker" => Some(Runtime::Docker),
        "libpod" => Some(Runtime::Podman),
        _ => None,
    }
}

/// A container named by one path component: `<prefix>-<id>.scope` (systemd
/// driver), `<prefix>-<id>` (cgroupfs driver of CRI-O and containerd), or a
/// bare id under a pod or under `/docker`.
fn container_component<'a>(component: &'a str, parent: Option<&str>) -> Option<(&'a str, Runtime)> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    // `crio-conmon-<id>.scope` holds CRI-O's monitor, not the container.
    for (prefix, runtime) in [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(id) = name.strip_prefix(prefix) {
            return is_container_id(id).then_some((id, runtime));
        }
    }
    if component.len() == 64 && is_container_id(component) {
        match parent {
            Some("docker") => return Some((component, Runtime::Docker)),
            Some(p) if p.starts_with("pod") || p.contains("-pod") => return Some((component, Runtime::Unknown)),
            _ => {}
        }
    }
    None
}

/// Runtimes name containers by 64 hex digits; shorter hex ids (12+, as
/// `docker ps` abbreviates them) are accepted where a prefix says it is a
/// container.
fn is_container_id(id: &str) -> bool {
    (12..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod of a kubelet systemd slice: `kubepods-pod<uid>.slice`
/// (Guaranteed), `kubepods-<qos>-pod<uid>.slice`, also with a `kubelet-`
/// prefix (kind). The kubelet writes the UID's dashes as underscores because
/// a dash separates slice levels.
fn pod_from_slice(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice")?;
    if !name.contains("kubepods") {
        return None;
    }
    let last = name.rsplit('-').next()?;
    normalize_pod_uid(last.strip_prefix("pod")?)
}

/// A pod UID in API form: a UUID (with dashes or the kubelet's underscores)
/// or the 32-hex config hash static pods get.
fn normalize_pod_uid(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-").to_ascii_lowercase();
    let groups: Vec<&str> = uid.split('-').collect();
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g));
    let hash = uid.len() == 32 && hex(&uid);
    (uuid || hash).then_some(uid)
}

/// The cgroup v2 path of a process from `/proc/<pid>/cgroup` (the `0::` line;
/// on hybrid hosts the v1 lines come first).
pub fn v2_path_from_proc(text: &str) -> Option<String> {
    text.lines().find_map(|line| line.strip_prefix("0::")).map(|path| path.trim_end().to_owned())
}

/// Mount point of the cgroup v2 tree from `/proc/self/mountinfo`: the
/// unified mount of a hybrid host (`/sys/fs/cgroup/unified`) or the only
/// one of a pure v2 host (`/sys/fs/cgroup`).
pub fn v2_mount_from_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    let mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let fstype = rest.split_whitespace().next()?;
            let mount_point = fields.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then_some(mount_point)
        })
        .collect();
    // Prefer the conventional places if several are mounted.
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|wanted| mounts.contains(wanted))
        .or_else(|| mounts.first().copied())
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A field of a cgroup's `memory.stat` (`pagetables 123`), in bytes.
pub fn memory_stat_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == field).then(|| value.trim().parse().ok()).flatten()
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoV2Mount,
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Directories visited by one scan at most: a bound on the work a miss can
/// cause (a busy Kubernetes node has a few thousand cgroups).
const MAX_SCAN_DIRS: usize = 200_000;
/// An id still unknown after a scan (its cgroup was removed before it was
/// seen) is not scanned for again before this.
const MISS_RETRY: Duration = Duration::from_secs(30);
/// Bound of the remembered misses.
const MAX_MISSES: usize = 10_000;

/// Cgroup v2 ids to paths, by the inode numbers of the v2 tree's
/// directories (a v2 cgroup id is its kernfs inode number).
pub struct CgroupTree {
    root: PathBuf,
    by_id: HashMap<u64, String>,
    /// When each unknown id was last scanned for.
    misses: HashMap<u64, Instant>,
    /// `now` of the harvest that scanned last: at most one scan per harvest.
    scanned_at: Option<Instant>,
}

impl CgroupTree {
    /// The v2 tree of this host.
    pub fn detect() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let mountinfo =
            fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_owned(), source })?;
        Ok(Self::at(v2_mount_from_mountinfo(&mountinfo).ok_or(CgroupError::NoV2Mount)?))
    }

    pub fn at(root: PathBuf) -> Self {
        Self { root, by_id: HashMap::new(), misses: HashMap::new(), scanned_at: None }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of cgroup `path` (as in `/proc/<pid>/cgroup`).
    pub fn dir(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Path of cgroup `id`; rescans the tree on a miss, at most once per
    /// harvest (`now`) and once per [`MISS_RETRY`] for the same id.
    pub fn path_of(&mut self, id: u64, now: Instant) -> Option<String> {
        if let Some(path) = self.by_id.get(&id) {
            return Some(path.clone());
        }
        let retry = self.misses.get(&id).is_none_or(|at| now.saturating_duration_since(*at) >= MISS_RETRY);
        if retry && self.scanned_at != Some(now) {
            self.scan();
            self.scanned_at = Some(now);
        }
        let found = self.by_id.get(&id).cloned();
        if found.is_none() {
            if self.misses.len() >= MAX_MISSES {
                self.misses.clear();
            }
            self.misses.insert(id, now);
        }
        found
    }

    /// Rebuild the id map from the tree: removed cgroups drop out, so the
    /// map stays as large as the tree.
    fn scan(&mut self) {
        let mut by_id = HashMap::new();
        let mut pending = vec![(self.root.clone(), String::from("/"))];
        while let Some((dir, path)) = pending.pop() {
            if by_id.len() >= MAX_SCAN_DIRS {
                tracing::warn!(root = %self.root.display(), "cgroup tree has more than {MAX_SCAN_DIRS} directories; scan cut short");
                break;
            }
            // A cgroup removed during the scan is simply not there.
            let Ok(meta) = fs::symlink_metadata(&dir) else {
                continue;
            };
            by_id.insert(meta.ino(), path.clone());
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink() && !t.is_fifo());
                if !is_dir {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if path == "/" { format!("/{name}") } else { format!("{path}/{name}") };
                pending.push((entry.path(), child));
            }
        }
        self.by_id = by_id;
        self.misses.retain(|id, _| !self.by_id.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "8d2f3c1e-5b7a-4e0f-9a61-2c3d4e5f6a7b";
    const UID_UNDERSCORED: &str = "8d2f3c1e_5b7a_4e0f_9a61_2c3d4e5f6a7b";

    fn parsed(path: &str) -> (Option<String>, Option<String>, Option<Runtime>) {
        let info = parse_path(path);
        (info.container_id, info.pod_uid, info.runtime)
    }

    fn some(id: &str, uid: &str, runtime: Runtime) -> (Option<String>, Option<String>, Option<Runtime>) {
        (Some(id.to_owned()), Some(uid.to_owned()), Some(runtime))
    }

    #[test]
    fn kubelet_systemd_driver_every_qos_class() {
        for (qos_slice, pod_prefix) in [
            ("kubepods-burstable.slice/", "kubepods-burstable-pod"),
            ("kubepods-besteffort.slice/", "kubepods-besteffort-pod"),
            // Guaranteed pods sit directly under kubepods.slice.
            ("", "kubepods-pod"),
        ] {
            let path =
                format!("/kubepods.slice/{qos_slice}{pod_prefix}{UID_UNDERSCORED}.slice/cri-containerd-{ID}.scope");
            assert_eq!(parsed(&path), some(ID, UID, Runtime::Containerd), "{path}");
        }
    }

    #[test]
    fn kubelet_cgroupfs_driver_every_qos_class() {
        for qos in ["burstable/", "besteffort/", ""] {
            let path = format!("/kubepods/{qos}pod{UID}/{ID}");
            assert_eq!(parsed(&path), some(ID, UID, Runtime::Unknown), "{path}");
        }
        // CRI-O and containerd with the cgroupfs driver prefix the id.
        assert_eq!(parsed(&format!("/kubepods/burstable/pod{UID}/crio-{ID}")), some(ID, UID, Runtime::CriO));
        assert_eq!(
            parsed(&format!("/kubepods/besteffort/pod{UID}/cri-containerd-{ID}")),
            some(ID, UID, Runtime::Containerd)
        );
    }

    #[test]
    fn cri_o_systemd_scopes_and_its_monitor() {
        let pod = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_UNDERSCORED}.slice");
        assert_eq!(parsed(&format!("{pod}/crio-{ID}.scope")), some(ID, UID, Runtime::CriO));
        // conmon watches the container from its own scope: the pod, no container.
        assert_eq!(parsed(&format!("{pod}/crio-conmon-{ID}.scope")), (None, Some(UID.to_owned()), None));
        // The pod slice itself (pause/infra processes on some set-ups).
        assert_eq!(parsed(&pod), (None, Some(UID.to_owned()), None));
    }

    #[test]
    fn docker_standalone_both_drivers() {
        assert_eq!(
            parsed(&format!("/system.slice/docker-{ID}.scope")),
            (Some(ID.to_owned()), None, Some(Runtime::Docker))
        );
        assert_eq!(parsed(&format!("/docker/{ID}")), (Some(ID.to_owned()), None, Some(Runtime::Docker)));
        // A bare 64-hex directory elsewhere is not assumed to be a container.
        assert_eq!(parsed(&format!("/user.slice/{ID}")), (None, None, None));
    }

    #[test]
    fn podman_scopes_and_their_inner_cgroup() {
        let expected = (Some(ID.to_owned()), None, Some(Runtime::Podman));
        assert_eq!(parsed(&format!("/machine.slice/libpod-{ID}.scope")), expected);
        assert_eq!(parsed(&format!("/machine.slice/libpod-{ID}.scope/container")), expected);
    }

    #[test]
    fn sub_cgroups_inside_a_container_keep_its_labels() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_UNDERSCORED}.slice/cri-containerd-{ID}.scope/init.scope"
        );
        assert_eq!(parsed(&path), some(ID, UID, Runtime::Containerd));
    }

    #[test]
    fn kind_node_inside_docker_names_the_inner_container() {
        let outer = "f".repeat(64);
        let path = format!(
            "/system.slice/docker-{outer}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_UNDERSCORED}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parsed(&path), some(ID, UID, Runtime::Containerd));
        // Docker in Docker, cgroupfs.
        assert_eq!(parsed(&format!("/docker/{outer}/docker/{ID}")), (Some(ID.to_owned()), None, Some(Runtime::Docker)));
    }

    #[test]
    fn containerd_colon_form_left_unconverted() {
        let path = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{UID_UNDERSCORED}.slice:cri-containerd:{ID}"
        );
        assert_eq!(parsed(&path), some(ID, UID, Runtime::Containerd));
    }

    #[test]
    fn static_pods_have_a_hash_for_uid() {
        let hash = "6d1d0bd1e5b3e2fdc3b0e8e0a1b2c3d4";
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parsed(&path), some(ID, hash, Runtime::Containerd));
        assert_eq!(parsed(&format!("/kubepods/burstable/pod{hash}/{ID}")), some(ID, hash, Runtime::Unknown));
    }

    #[test]
    fn a_test_prefix_above_kubepods_does_not_matter() {
        let path = format!(
            "/ptwatch-test-42/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_UNDERSCORED}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parsed(&path), some(ID, UID, Runtime::Containerd));
    }

    #[test]
    fn plain_systemd_and_unknown_paths_name_nothing() {
        for path in [
            "/",
            "",
            "/init.scope",
            "/system.slice/sshd.service",
            "/system.slice/containerd.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/podman-1234.scope",
            // Not under kubepods: a directory called pod<uuid> is nobody's pod.
            &format!("/pods/pod{UID}"),
            // Ids of the wrong shape.
            "/system.slice/docker-xyz.scope",
            "/system.slice/docker-abc.scope",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnot_a_uid.slice",
        ] {
            assert_eq!(parsed(path), (None, None, None), "{path}");
        }
    }

    #[test]
    fn labels_from_path() {
        let labels = CgroupLabels::from_path(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(labels.container_id, ID);
        assert_eq!(labels.pod_uid, UID);
        assert!(labels.is_known());
        assert!(!CgroupLabels::default().is_known());
        assert_eq!(CgroupLabels::from_path("/system.slice/cron.service").container_id, "");
    }

    #[test]
    fn proc_cgroup_v2_line_on_hybrid_and_pure_hosts() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/c1\n0::/system.slice/cron.service\n";
        assert_eq!(v2_path_from_proc(hybrid).as_deref(), Some("/system.slice/cron.service"));
        assert_eq!(v2_path_from_proc("0::/\n").as_deref(), Some("/"));
        // Pure v1: no unified line.
        assert_eq!(v2_path_from_proc("4:memory:/x\n1:cpu:/\n"), None);
    }

    #[test]
    fn v2_mount_is_found_on_hybrid_and_pure_hosts() {
        let hybrid = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(v2_mount_from_mountinfo(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let pure = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v2_mount_from_mountinfo(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let elsewhere = "30 23 0:26 / /run/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(v2_mount_from_mountinfo(elsewhere), Some(PathBuf::from("/run/my cgroups")));
        assert_eq!(v2_mount_from_mountinfo("27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw\n"), None);
    }

    #[test]
    fn memory_stat_pagetables() {
        let stat = "anon 1024\nfile 0\nkernel_stack 16384\npagetables 2617344\nsec_pagetables 0\n";
        assert_eq!(memory_stat_field(stat, "pagetables"), Some(2_617_344));
        assert_eq!(memory_stat_field(stat, "sec_pagetables"), Some(0));
        assert_eq!(memory_stat_field("anon 1\n", "pagetables"), None);
    }

    #[test]
    fn the_hosts_v2_tree_resolves_its_own_cgroup() {
        // Every supported host has a v2 tree (hybrid or pure).
        let mut tree = CgroupTree::detect().unwrap();
        let own = v2_path_from_proc(&fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap();
        let id = fs::metadata(tree.dir(&own)).unwrap().ino();
        let now = Instant::now();
        assert_eq!(tree.path_of(id, now).as_deref(), Some(own.as_str()));
        // An id no directory has: one scan, then remembered as a miss.
        assert_eq!(tree.path_of(u64::MAX, now), None);
        assert!(tree.misses.contains_key(&u64::MAX));
    }
}
