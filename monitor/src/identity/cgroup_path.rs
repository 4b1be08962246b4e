//! cgroup v2 paths → what runs there: a Kubernetes container (pod UID, QoS, runtime, container id), a standalone container (podman, Docker, containerd/nerdctl: runtime and id), a systemd unit, or neither.

/// Container runtime, from the scope or directory name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// cgroupfs driver: a bare container id says nothing about the runtime.
    Unknown,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn name(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// What a cgroup path says about the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupKind {
    Kubernetes {
        /// Pod UID with dashes, as the API server spells it.
        pod_uid: String,
        qos: QosClass,
        /// Absent for the pod-level cgroup itself (e.g. a process moved there).
        container_id: Option<String>,
        runtime: Runtime,
    },
    /// A container run without Kubernetes (podman, Docker, nerdctl): its runtime names it.
    Container {
        /// The runtime's full container id (hex).
        id: String,
        runtime: Runtime,
    },
    Systemd {
        /// `nginx.service`, `session-3.scope` …
        unit: String,
        /// Uid of the user manager for user units (`user@1000.service/...`).
        user: Option<u32>,
    },
    /// The root cgroup or anything else: identity falls back to uid + executable.
    Other,
}

fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_pod_uid(s: &str) -> bool {
    // 8-4-4-4-12 hex with dashes (UUID); static pods use a 32-hex hash.
    let hexdash = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (s.len() == 36 && hexdash(s) && s.matches('-').count() == 4)
        || (s.len() == 32 && hexdash(s) && !s.contains('-'))
}

fn qos_of(name: &str) -> Option<QosClass> {
    match name {
        "burstable" => Some(QosClass::Burstable),
        "besteffort" => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// Container id and runtime from the last path element, for both drivers.
fn container(elem: &str) -> Option<(String, Runtime)> {
    if let Some(scope) = elem.strip_suffix(".scope") {
        for (prefix, rt) in [
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::CriO),
            ("docker-", Runtime::Docker),
        ] {
            if let Some(id) = scope.strip_prefix(prefix) {
                // crio-conmon-<id>.scope is the monitor process, not the container
                return is_container_id(id).then(|| (id.to_owned(), rt));
            }
        }
        return None;
    }
    is_container_id(elem).then(|| (elem.to_owned(), Runtime::Unknown))
}

fn parse_kubepods(elems: &[&str]) -> Option<CgroupKind> {
    // elems start after "kubepods.slice" / "kubepods"
    let mut i = 0;
    let mut qos = QosClass::Guaranteed;
    let systemd = elems.first()?.ends_with(".slice");
    let pod_uid;
    if systemd {
        // kubepods-burstable.slice / kubepods-pod<uid>.slice
        let first = elems
            .first()?
            .strip_suffix(".slice")?
            .strip_prefix("kubepods-")?;
        if let Some(q) = qos_of(first) {
            qos = q;
            i += 1;
        }
        let pod = elems.get(i)?.strip_suffix(".slice")?;
        let uid = pod.rsplit_once("-pod")?.1;
        pod_uid = uid.replace('_', "-");
    } else {
        if let Some(q) = qos_of(elems.first()?) {
            qos = q;
            i += 1;
        }
        pod_uid = elems.get(i)?.strip_prefix("pod")?.to_owned();
    }
    if !is_pod_uid(&pod_uid) {
        return None;
    }
    let (container_id, runtime) = match elems.get(i + 1) {
        None => (None, Runtime::Unknown),
        Some(c) => {
            let (id, rt) = container(c)?;
            (Some(id), rt)
        }
    };
    Some(CgroupKind::Kubernetes {
        pod_uid,
        qos,
        container_id,
        runtime,
    })
}

/// A standalone container from one path element and the one before it, in the layouts the
/// runtimes make with either cgroup driver:
/// - podman: `libpod-<id>` (cgroupfs, under `libpod_parent`) and `libpod-<id>.scope` (systemd,
///   under `machine.slice`); `libpod-conmon-<id>.scope` is its monitor process, not the container;
/// - Docker: `docker-<id>.scope` (systemd, under `system.slice`) and `docker/<id>` (cgroupfs);
/// - containerd with nerdctl: `nerdctl-<id>.scope` (systemd) and `<namespace>/<id>` (cgroupfs,
///   `default/<id>` unless `--namespace`), recognised at the top of the hierarchy only.
fn standalone(parent: Option<&str>, elem: &str, top: bool) -> Option<(String, Runtime)> {
    let full_id = |id: &str| (id.len() == 64 && is_container_id(id)).then(|| id.to_owned());
    let scope = elem.strip_suffix(".scope").unwrap_or(elem);
    for (prefix, rt) in [
        ("libpod-", Runtime::Podman),
        ("docker-", Runtime::Docker),
        ("nerdctl-", Runtime::Containerd),
    ] {
        if let Some(id) = scope.strip_prefix(prefix) {
            // Docker and nerdctl only make scopes; podman's cgroupfs layout has no suffix.
            if scope.len() == elem.len() && rt != Runtime::Podman {
                return None;
            }
            return full_id(id).map(|id| (id, rt));
        }
    }
    let id = full_id(elem)?;
    match parent {
        Some("docker") => Some((id, Runtime::Docker)),
        Some(ns) if top && !ns.contains('.') && !ns.is_empty() => Some((id, Runtime::Containerd)),
        _ => None,
    }
}

/// Classifies a cgroup v2 path relative to the hierarchy root (e.g. `/system.slice/nginx.service`).
/// Malformed Kubernetes paths come out as `Other`, never as a wrong pod.
pub fn parse(path: &str) -> CgroupKind {
    let elems: Vec<&str> = path.split('/').filter(|e| !e.is_empty()).collect();
    // Kubelet hierarchies may sit below a prefix (nested or kind-style nodes): find kubepods.
    if let Some(k) = elems
        .iter()
        .position(|e| *e == "kubepods.slice" || *e == "kubepods")
    {
        return parse_kubepods(&elems[k + 1..]).unwrap_or(CgroupKind::Other);
    }
    // A standalone container; a cgroup a container made beneath its own (e.g. podman's
    // `container` for systemd inside) still belongs to it: the innermost container wins.
    for (i, e) in elems.iter().enumerate().rev() {
        let parent = i.checked_sub(1).map(|p| elems[p]);
        if let Some((id, runtime)) = standalone(parent, e, i == 1) {
            return CgroupKind::Container { id, runtime };
        }
    }
    // systemd: the innermost .service or .scope names the unit.
    let user = elems.iter().find_map(|e| {
        e.strip_prefix("user@")?
            .strip_suffix(".service")?
            .parse()
            .ok()
    });
    if let Some(unit) = elems
        .iter()
        .rev()
        .find(|e| (e.ends_with(".service") || e.ends_with(".scope")) && !e.starts_with("user@"))
    {
        return CgroupKind::Systemd {
            unit: (*unit).to_owned(),
            user,
        };
    }
    CgroupKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3b2a4c-1d2e-4f5a-8b9c-0123456789ab";
    const CID: &str = "4c1e7f0a9b8d6e5f4c1e7f0a9b8d6e5f4c1e7f0a9b8d6e5f4c1e7f0a9b8d6e5f";

    fn k8s(qos: QosClass, rt: Runtime) -> CgroupKind {
        CgroupKind::Kubernetes {
            pod_uid: UID.into(),
            qos,
            container_id: Some(CID.into()),
            runtime: rt,
        }
    }

    #[test]
    fn systemd_driver_every_qos_and_runtime() {
        let u = UID.replace('-', "_");
        let cases = [
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope"), k8s(QosClass::Burstable, Runtime::Containerd)),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{CID}.scope"), k8s(QosClass::BestEffort, Runtime::CriO)),
            (format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{CID}.scope"), k8s(QosClass::Guaranteed, Runtime::Docker)),
        ];
        for (path, want) in cases {
            assert_eq!(parse(&path), want, "{path}");
        }
    }

    #[test]
    fn cgroupfs_driver_every_qos() {
        assert_eq!(
            parse(&format!("/kubepods/burstable/pod{UID}/{CID}")),
            k8s(QosClass::Burstable, Runtime::Unknown)
        );
        assert_eq!(
            parse(&format!("/kubepods/besteffort/pod{UID}/{CID}")),
            k8s(QosClass::BestEffort, Runtime::Unknown)
        );
        assert_eq!(
            parse(&format!("/kubepods/pod{UID}/{CID}")),
            k8s(QosClass::Guaranteed, Runtime::Unknown)
        );
    }

    #[test]
    fn pod_level_cgroup_and_nested_prefix() {
        let CgroupKind::Kubernetes { container_id, .. } =
            parse(&format!("/kubepods/burstable/pod{UID}"))
        else {
            panic!()
        };
        assert_eq!(container_id, None);
        assert!(matches!(
            parse(&format!("/docker/abc/kubepods/pod{UID}/{CID}")),
            CgroupKind::Kubernetes {
                qos: QosClass::Guaranteed,
                ..
            }
        ));
    }

    #[test]
    fn systemd_units() {
        assert_eq!(
            parse("/system.slice/nginx.service"),
            CgroupKind::Systemd {
                unit: "nginx.service".into(),
                user: None
            }
        );
        assert_eq!(
            parse("/user.slice/user-1000.slice/user@1000.service/app.slice/sync.service"),
            CgroupKind::Systemd {
                unit: "sync.service".into(),
                user: Some(1000)
            }
        );
        assert_eq!(
            parse("/user.slice/user-1000.slice/session-3.scope"),
            CgroupKind::Systemd {
                unit: "session-3.scope".into(),
                user: None
            }
        );
    }

    /// Path shapes as podman 4.3 (verified on this machine), Docker and nerdctl make them.
    #[test]
    fn standalone_containers_of_each_runtime_and_driver() {
        let c = |rt| CgroupKind::Container {
            id: CID.into(),
            runtime: rt,
        };
        let cases = [
            (format!("/libpod_parent/libpod-{CID}"), c(Runtime::Podman)),
            (
                format!("/machine.slice/libpod-{CID}.scope"),
                c(Runtime::Podman),
            ),
            (
                format!("/machine.slice/libpod-{CID}.scope/container"),
                c(Runtime::Podman),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope"
                ),
                c(Runtime::Podman),
            ),
            (
                format!("/system.slice/docker-{CID}.scope"),
                c(Runtime::Docker),
            ),
            (format!("/docker/{CID}"), c(Runtime::Docker)),
            (
                format!("/system.slice/nerdctl-{CID}.scope"),
                c(Runtime::Containerd),
            ),
            (format!("/default/{CID}"), c(Runtime::Containerd)),
            (format!("/buildkit/{CID}"), c(Runtime::Containerd)),
        ];
        for (path, want) in cases {
            assert_eq!(parse(&path), want, "{path}");
        }
        // podman's monitor, a short id, a hex directory deep in some unit, a docker service:
        // not containers.
        assert_eq!(
            parse(&format!("/machine.slice/libpod-conmon-{CID}.scope")),
            CgroupKind::Systemd {
                unit: format!("libpod-conmon-{CID}.scope"),
                user: None
            }
        );
        for p in [
            "/libpod_parent/libpod-4c1e7f0a9b8d".to_owned(),
            format!("/system.slice/docker-{CID}"),
            format!("/system.slice/app.service/{CID}"),
            format!("/a/b/{CID}"),
        ] {
            assert!(
                !matches!(parse(&p), CgroupKind::Container { .. }),
                "{p}: {:?}",
                parse(&p)
            );
        }
        assert_eq!(
            parse("/system.slice/docker.service"),
            CgroupKind::Systemd {
                unit: "docker.service".into(),
                user: None
            }
        );
        // Inside Kubernetes the pod wins.
        assert!(matches!(
            parse(&format!("/kubepods/pod{UID}/{CID}")),
            CgroupKind::Kubernetes { .. }
        ));
    }

    #[test]
    fn malformed_paths_are_other_not_a_guess() {
        for p in [
            "/",
            "",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podNOTAUID.slice/cri-containerd-x.scope",
            &format!("/kubepods/burstable/pod{UID}/not-a-container-id"),
            &format!("/kubepods/burstable/pod{UID}/crio-conmon-{CID}.scope"),
            "/kubepods/burstable/pod/",
            "/kubepods/pod1234/abc",
            "/some/random/dir",
            "///",
        ] {
            assert_eq!(parse(p), CgroupKind::Other, "{p:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_paths_never_panic(p in "[/a-z0-9_.@-]{0,200}") {
            let _ = parse(&p);
        }
    }
}
