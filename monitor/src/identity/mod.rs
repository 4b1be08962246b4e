//! Workload identity for every event: kernel cgroup id + process → SPIFFE ID (Kubernetes service account, standalone container, systemd unit, or uid + executable) with an explicit attribution status.

pub mod cgroup_path;
pub mod cgroups;
pub mod containers;
pub mod inventory;
pub mod kubernetes;
pub mod selectors;
pub mod settings;
pub mod telemetry;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use self::{
    cgroup_path::CgroupKind,
    cgroups::CgroupResolver,
    containers::{ContainerMeta, ContainerStoreHandle, Lookup},
    kubernetes::{PodMeta, PodStoreHandle},
    selectors::{Attributes, SelectorRule},
};
pub use self::{settings::IdentityConfig, telemetry::IdentityTelemetry};
use crate::context::process_table::ProcessInfo;

/// How sure nhiwatch is of who did it. Never left empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Attribution {
    /// The identity is known.
    Resolved,
    /// A Kubernetes container whose pod metadata, or a standalone container whose runtime's
    /// answer, has not arrived yet.
    Pending,
    /// Host activity outside any workload (kernel threads, processes without an executable).
    Host,
    /// Neither the cgroup nor the process could be resolved.
    Unknown,
}

impl Attribution {
    pub fn name(self) -> &'static str {
        match self {
            Attribution::Resolved => "resolved",
            Attribution::Pending => "pending",
            Attribution::Host => "host",
            Attribution::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    Kubernetes,
    /// A container run without Kubernetes (podman, Docker, nerdctl).
    Container,
    Systemd,
    Unix,
}

/// A machine identity and the attributes it was formed from (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadIdentity {
    /// SPIFFE ID.
    pub id: String,
    pub kind: IdentityKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub node: String,
}

/// The answer for one event: a status, and the identity when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributed {
    pub status: Attribution,
    pub identity: Option<Arc<WorkloadIdentity>>,
    /// For pending and unknown Kubernetes events: which pod and container to wait for.
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
}

impl Attributed {
    fn bare(status: Attribution) -> Attributed {
        Attributed {
            status,
            identity: None,
            pod_uid: None,
            container_id: None,
        }
    }
}

/// The JSON shape of an attribution on events and findings.
#[derive(Serialize)]
pub struct IdentityView<'a> {
    pub status: Attribution,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub identity: Option<&'a WorkloadIdentity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<&'a str>,
}

impl Attributed {
    pub fn view(&self) -> IdentityView<'_> {
        IdentityView {
            status: self.status,
            identity: self.identity.as_deref(),
            pod_uid: if self.identity.is_none() {
                self.pod_uid.as_deref()
            } else {
                None
            },
            container_id: if self.identity.is_none() {
                self.container_id.as_deref()
            } else {
                None
            },
        }
    }
}

/// Renders a template such as `spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}`.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Placeholders a template may use.
pub const TEMPLATE_VARS: [&str; 12] = [
    "trust_domain",
    // A standalone container's name and image.
    "name",
    "image",
    "node",
    "namespace",
    "service_account",
    "pod",
    "container",
    "unit",
    "uid",
    "user",
    "exe",
];

type CacheKey = (u64, u32, Arc<str>);

/// Resolves identities; everything it learns is cached and bounded.
pub struct IdentityResolver {
    cfg: IdentityConfig,
    node: String,
    cgroups: CgroupResolver,
    pods: Option<PodStoreHandle>,
    rules: Vec<SelectorRule>,
    users: HashMap<u32, String>,
    cache: HashMap<CacheKey, (u64, Arc<WorkloadIdentity>)>,
    capacity: usize,
    refresh: Option<tokio::sync::mpsc::Sender<()>>,
    containers: Option<ContainerStoreHandle>,
    container_requests: Option<tokio::sync::mpsc::Sender<String>>,
    /// Container ids asked for and not answered yet (each is asked once).
    requested: HashSet<String>,
    pub evictions: u64,
}

impl IdentityResolver {
    pub fn new(
        cfg: IdentityConfig,
        node: String,
        cgroups: CgroupResolver,
        pods: Option<PodStoreHandle>,
        refresh: Option<tokio::sync::mpsc::Sender<()>>,
    ) -> IdentityResolver {
        let rules = cfg
            .selectors
            .iter()
            .filter_map(|r| SelectorRule::parse(&r.selectors, &r.id).ok())
            .collect();
        IdentityResolver {
            cfg,
            node,
            cgroups,
            pods,
            rules,
            users: read_users(),
            cache: HashMap::new(),
            capacity: 65536,
            refresh,
            containers: None,
            container_requests: None,
            requested: HashSet::new(),
            evictions: 0,
        }
    }

    /// Standalone containers' metadata: the store the lookup task fills and its request channel.
    pub fn with_containers(
        mut self,
        store: ContainerStoreHandle,
        requests: tokio::sync::mpsc::Sender<String>,
    ) -> IdentityResolver {
        self.containers = Some(store);
        self.container_requests = Some(requests);
        self
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn pods_generation(&self) -> u64 {
        self.generation()
    }

    /// A pod's labels, for contracts that select by label.
    pub fn pod_labels(
        &self,
        pod_uid: &str,
    ) -> Option<Arc<std::collections::BTreeMap<String, String>>> {
        self.pods.as_ref()?.get(pod_uid).map(|p| p.labels.clone())
    }

    /// Changes whenever pod or container metadata arrives (both only grow).
    fn generation(&self) -> u64 {
        self.pods.as_ref().map_or(0, |p| p.generation())
            + self.containers.as_ref().map_or(0, |c| c.generation())
    }

    /// Who did it: from the kernel's cgroup id and, when known, the process.
    pub fn resolve(&mut self, cgroup_id: u64, proc: Option<&ProcessInfo>) -> Attributed {
        let (uid, exe): (u32, Arc<str>) = match proc {
            Some(p) => (p.uid, p.exe.clone()),
            None => (u32::MAX, Arc::from("")),
        };
        let key = (cgroup_id, uid, exe);
        if let Some((_, id)) = self.cache.get(&key) {
            return Attributed {
                status: Attribution::Resolved,
                identity: Some(id.clone()),
                pod_uid: None,
                container_id: None,
            };
        }
        let cg = self.cgroups.resolve(cgroup_id);
        let kind = cg
            .as_ref()
            .map(|c| c.kind.clone())
            .unwrap_or(CgroupKind::Other);
        let r = match kind {
            CgroupKind::Kubernetes {
                pod_uid,
                container_id,
                ..
            } => {
                let pod = self.pods.as_ref().and_then(|p| p.get(&pod_uid));
                match pod {
                    Some(pod) => Ok(self.kubernetes_identity(&pod, container_id.as_deref(), proc)),
                    None => {
                        if let Some(tx) = &self.refresh {
                            let _ = tx.try_send(()); // one outstanding request is enough
                        }
                        let status = if self.pods.is_some() {
                            Attribution::Pending
                        } else {
                            Attribution::Unknown
                        };
                        Err(Attributed {
                            status,
                            identity: None,
                            pod_uid: Some(pod_uid),
                            container_id,
                        })
                    }
                }
            }
            CgroupKind::Container { id, .. } => {
                match self.containers.as_ref().map(|c| c.get(&id)) {
                    Some(Some(Lookup::Known(meta))) => {
                        Ok(self.container_identity(&id, Some(&meta), proc))
                    }
                    Some(None) => {
                        // Ask once; a full channel is asked again by the next event.
                        if !self.requested.contains(&id) {
                            if self.requested.len() >= 4096 {
                                self.requested.clear();
                            }
                            let sent = self
                                .container_requests
                                .as_ref()
                                .is_some_and(|tx| tx.try_send(id.clone()).is_ok());
                            if sent {
                                self.requested.insert(id.clone());
                            }
                        }
                        Err(Attributed {
                            status: Attribution::Pending,
                            identity: None,
                            pod_uid: None,
                            container_id: Some(id),
                        })
                    }
                    Some(Some(Lookup::Missing)) | None => {
                        Ok(self.container_identity(&id, None, proc))
                    }
                }
            }
            CgroupKind::Systemd { unit, .. } => Ok(self.systemd_identity(&unit, proc)),
            CgroupKind::Other => match proc {
                Some(p) if !p.exe.is_empty() => Ok(self.unix_identity(p)),
                Some(_) => Err(Attributed::bare(Attribution::Host)),
                None => Err(Attributed::bare(Attribution::Unknown)),
            },
        };
        match r {
            Ok(id) => {
                let id = Arc::new(id);
                if self.cache.len() >= self.capacity {
                    self.evictions += self.cache.len() as u64;
                    self.cache.clear();
                }
                self.cache.insert(key, (self.generation(), id.clone()));
                Attributed {
                    status: Attribution::Resolved,
                    identity: Some(id),
                    pod_uid: None,
                    container_id: None,
                }
            }
            Err(a) => a,
        }
    }

    fn user_name(&mut self, uid: u32) -> String {
        if !self.users.contains_key(&uid) {
            self.users = read_users(); // a user created after start
        }
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    fn finish(
        &mut self,
        mut id: WorkloadIdentity,
        proc: Option<&ProcessInfo>,
        labels: Option<&BTreeMap<String, String>>,
    ) -> WorkloadIdentity {
        if let Some(p) = proc {
            id.uid = Some(p.uid);
            id.user = Some(self.user_name(p.uid));
            id.exe = (!p.exe.is_empty()).then(|| p.exe.to_string());
        }
        let attrs = Attributes { id: &id, labels };
        if let Some(rule) = self.rules.iter().find(|r| r.matches(&attrs)) {
            id.id = rule.id.clone();
        }
        id
    }

    fn blank(&self, kind: IdentityKind) -> WorkloadIdentity {
        WorkloadIdentity {
            id: String::new(),
            kind,
            namespace: None,
            service_account: None,
            pod: None,
            pod_uid: None,
            container: None,
            container_id: None,
            image: None,
            owner: None,
            unit: None,
            uid: None,
            user: None,
            exe: None,
            node: self.node.clone(),
        }
    }

    fn kubernetes_identity(
        &mut self,
        pod: &PodMeta,
        container_id: Option<&str>,
        proc: Option<&ProcessInfo>,
    ) -> WorkloadIdentity {
        let c = container_id.and_then(|cid| pod.container(cid));
        let mut id = self.blank(IdentityKind::Kubernetes);
        id.id = render(
            &self.cfg.templates.kubernetes,
            &[
                ("trust_domain", &self.cfg.trust_domain),
                ("node", &self.node),
                ("namespace", &pod.namespace),
                ("service_account", &pod.service_account),
                ("pod", &pod.name),
                ("container", c.map_or("", |c| c.name.as_str())),
            ],
        );
        id.namespace = Some(pod.namespace.clone());
        id.service_account = Some(pod.service_account.clone());
        id.pod = Some(pod.name.clone());
        id.pod_uid = Some(pod.uid.clone());
        id.container = c.map(|c| c.name.clone());
        id.container_id = container_id.map(str::to_owned);
        id.image = c.map(|c| c.image.clone());
        id.owner = pod
            .owner_kind
            .as_ref()
            .zip(pod.owner_name.as_ref())
            .map(|(k, n)| format!("{k}/{n}"));
        self.finish(id, proc, Some(&pod.labels))
    }

    /// A standalone container: named by the runtime, or by its short id where no runtime API
    /// answered for it.
    fn container_identity(
        &mut self,
        container_id: &str,
        meta: Option<&ContainerMeta>,
        proc: Option<&ProcessInfo>,
    ) -> WorkloadIdentity {
        let short = &container_id[..container_id.len().min(12)];
        let name = meta.map_or(short, |m| m.name.as_str());
        let image = meta.map_or("", |m| m.image.as_str());
        let mut id = self.blank(IdentityKind::Container);
        id.id = render(
            &self.cfg.templates.container,
            &[
                ("trust_domain", &self.cfg.trust_domain),
                ("node", &self.node),
                ("name", name),
                ("container", name),
                ("image", image),
            ],
        );
        id.container = Some(name.to_owned());
        id.container_id = Some(container_id.to_owned());
        id.image = meta.map(|m| m.image.clone());
        self.finish(id, proc, meta.map(|m| &*m.labels))
    }

    fn systemd_identity(&mut self, unit: &str, proc: Option<&ProcessInfo>) -> WorkloadIdentity {
        let mut id = self.blank(IdentityKind::Systemd);
        id.id = render(
            &self.cfg.templates.systemd,
            &[
                ("trust_domain", &self.cfg.trust_domain),
                ("node", &self.node),
                ("unit", unit),
            ],
        );
        id.unit = Some(unit.to_owned());
        self.finish(id, proc, None)
    }

    fn unix_identity(&mut self, p: &ProcessInfo) -> WorkloadIdentity {
        let user = self.user_name(p.uid);
        let mut id = self.blank(IdentityKind::Unix);
        id.id = render(
            &self.cfg.templates.unix,
            &[
                ("trust_domain", &self.cfg.trust_domain),
                ("node", &self.node),
                ("uid", &p.uid.to_string()),
                ("user", &user),
                ("exe", &p.exe),
            ],
        );
        self.finish(id, Some(p), None)
    }
}

fn read_users() -> HashMap<u32, String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, (*f.first()?).to_owned()))
        })
        .collect()
}

/// The node name: `NODE_NAME` (set from the downward API in the DaemonSet), else the hostname.
pub fn node_name(configured: Option<&str>) -> String {
    if let Some(n) = configured.filter(|n| !n.is_empty()) {
        return n.to_owned();
    }
    if let Ok(n) = std::env::var("NODE_NAME") {
        if !n.is_empty() {
            return n;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render() {
        assert_eq!(
            render(
                "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}",
                &[
                    ("trust_domain", "td"),
                    ("namespace", "a"),
                    ("service_account", "b")
                ]
            ),
            "spiffe://td/ns/a/sa/b"
        );
    }
}
