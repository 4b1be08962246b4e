//! Pod metadata from the node: kubelet `/pods` polling or API-server list+watch (this node only) → a bounded pod store.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use serde::Deserialize;

/// What nhiwatch keeps of a pod: enough to name the identity, nothing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub node: String,
    /// Shared with the observations of the pod's processes (contracts may select by label).
    pub labels: Arc<BTreeMap<String, String>>,
    pub owner_kind: Option<String>,
    pub owner_name: Option<String>,
    pub containers: Vec<ContainerMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMeta {
    /// Runtime id without the `containerd://` style prefix.
    pub id: String,
    pub name: String,
    pub image: String,
}

impl PodMeta {
    pub fn container(&self, id: &str) -> Option<&ContainerMeta> {
        self.containers.iter().find(|c| c.id == id)
    }
}

// ---- the Kubernetes API shapes we read (a subset of core/v1 Pod) ----

#[derive(Debug, Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<Pod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
    #[serde(default)]
    pub resource_version: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub node_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(rename = "containerID", default)]
    pub container_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub object: serde_json::Value,
}

impl From<Pod> for PodMeta {
    fn from(p: Pod) -> PodMeta {
        let owner = p
            .metadata
            .owner_references
            .iter()
            .find(|o| o.controller == Some(true))
            .or(p.metadata.owner_references.first());
        let containers = p
            .status
            .container_statuses
            .iter()
            .chain(&p.status.init_container_statuses)
            .chain(&p.status.ephemeral_container_statuses)
            .filter_map(|c| {
                let raw = c.container_id.as_deref()?;
                let id = raw.split_once("://").map_or(raw, |(_, id)| id);
                (!id.is_empty()).then(|| ContainerMeta {
                    id: id.to_owned(),
                    name: c.name.clone(),
                    image: c.image.clone(),
                })
            })
            .collect();
        PodMeta {
            uid: p.metadata.uid,
            namespace: p.metadata.namespace,
            name: p.metadata.name,
            service_account: p
                .spec
                .service_account_name
                .unwrap_or_else(|| "default".into()),
            node: p.spec.node_name.unwrap_or_default(),
            labels: Arc::new(p.metadata.labels),
            owner_kind: owner.map(|o| o.kind.clone()),
            owner_name: owner.map(|o| o.name.clone()),
            containers,
        }
    }
}

/// Pods on this node by UID. Deleted pods stay resolvable for `retention` so late
/// events of their last processes still get the right identity.
pub struct PodStore {
    pods: HashMap<String, Arc<PodMeta>>,
    deleted: HashMap<String, (Arc<PodMeta>, Instant)>,
    retention: Duration,
    capacity: usize,
    pub evictions: u64,
}

impl PodStore {
    pub fn new(retention: Duration, capacity: usize) -> PodStore {
        PodStore {
            pods: HashMap::new(),
            deleted: HashMap::new(),
            retention,
            capacity,
            evictions: 0,
        }
    }

    pub fn get(&self, uid: &str) -> Option<&Arc<PodMeta>> {
        self.pods
            .get(uid)
            .or_else(|| self.deleted.get(uid).map(|(p, _)| p))
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn upsert(&mut self, pod: PodMeta) {
        if pod.uid.is_empty() {
            return;
        }
        self.deleted.remove(&pod.uid);
        if self.pods.len() >= self.capacity && !self.pods.contains_key(&pod.uid) {
            self.evictions += 1;
            return;
        }
        self.pods.insert(pod.uid.clone(), Arc::new(pod));
    }

    pub fn delete(&mut self, uid: &str) {
        self.delete_at(uid, Instant::now());
    }

    fn delete_at(&mut self, uid: &str, now: Instant) {
        if let Some(p) = self.pods.remove(uid) {
            self.deleted.insert(uid.to_owned(), (p, now));
        }
        self.expire(now);
    }

    /// Replaces the whole set (a kubelet poll or a relist); missing pods count as deleted.
    pub fn replace_all(&mut self, pods: Vec<PodMeta>) {
        self.replace_all_at(pods, Instant::now());
    }

    /// `replace_all` as of `now` (tests drive the clock through it).
    fn replace_all_at(&mut self, pods: Vec<PodMeta>, now: Instant) {
        let keep: std::collections::HashSet<String> = pods.iter().map(|p| p.uid.clone()).collect();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for uid in gone {
            self.delete_at(&uid, now);
        }
        for p in pods {
            self.upsert(p);
        }
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        let r = self.retention;
        self.deleted
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < r);
        while self.deleted.len() > self.capacity {
            let Some(oldest) = self
                .deleted
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.deleted.remove(&oldest);
            self.evictions += 1;
        }
    }
}

/// The store shared between the metadata source (writer) and the pipeline (reader).
#[derive(Clone)]
pub struct PodStoreHandle {
    pub store: Arc<RwLock<PodStore>>,
    /// Bumped on every change: lets readers re-check pending events cheaply.
    pub generation: Arc<AtomicU64>,
}

impl PodStoreHandle {
    pub fn new(store: PodStore) -> PodStoreHandle {
        PodStoreHandle {
            store: Arc::new(RwLock::new(store)),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn update(&self, f: impl FnOnce(&mut PodStore)) {
        if let Ok(mut s) = self.store.write() {
            f(&mut s);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.store.read().ok()?.get(uid).cloned()
    }
}

/// Where pod metadata comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PodSourceKind {
    /// Not on Kubernetes: Kubernetes cgroups resolve to `unknown`.
    #[default]
    None,
    /// The kubelet's `/pods` endpoint, polled (and re-polled when an unknown pod appears).
    Kubelet,
    /// The API server: list, then watch, pods with `spec.nodeName` = this node.
    Apiserver,
}

#[derive(Debug, Clone)]
pub struct PodSourceConfig {
    pub kind: PodSourceKind,
    pub url: String,
    pub node_name: String,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub refresh: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PodSourceError {
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("reading {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A token or CA file that is not a regular file, too large or not text; names the file.
    #[error("{0}")]
    Input(String),
    #[error("GET {url}: {}", chain(source))]
    Http { url: String, source: reqwest::Error },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("decoding pods from {url}: {source}")]
    Decode {
        url: String,
        source: serde_json::Error,
    },
    #[error("watch expired (410 Gone): relisting")]
    Gone,
}

/// An error with its causes: reqwest's own message hides the TLS or connect reason.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Pulls pod metadata into the store until the process ends; failures are logged
/// and counted, and the last good store stays in use.
pub struct PodSource {
    cfg: PodSourceConfig,
    client: reqwest::Client,
    pods: PodStoreHandle,
    pub refresh_requests: tokio::sync::mpsc::Receiver<()>,
    errors: prometheus_client::metrics::counter::Counter,
}

impl PodSource {
    pub fn new(
        cfg: PodSourceConfig,
        pods: PodStoreHandle,
        refresh_requests: tokio::sync::mpsc::Receiver<()>,
        errors: prometheus_client::metrics::counter::Counter,
    ) -> Result<PodSource, PodSourceError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .use_rustls_tls();
        if let Some(ca) = &cfg.ca_file {
            let pem = crate::input::read_text(ca, crate::input::MAX_PEM_BYTES, "a CA file")
                .map_err(|e| PodSourceError::Input(e.to_string()))?;
            let pem = pem.as_bytes();
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| PodSourceError::Client(e.to_string()))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        if cfg.insecure_skip_verify {
            // The kubelet's serving certificate is often self-signed; the operator opts in.
            b = b.danger_accept_invalid_certs(true);
        }
        let client = b
            .build()
            .map_err(|e| PodSourceError::Client(e.to_string()))?;
        Ok(PodSource {
            cfg,
            client,
            pods,
            refresh_requests,
            errors,
        })
    }

    fn request(&self, url: &str) -> Result<reqwest::RequestBuilder, PodSourceError> {
        let mut r = self.client.get(url);
        if let Some(tf) = &self.cfg.token_file {
            // Read every time: projected tokens rotate.
            // Bounded and never blocking: this runs at every refresh.
            let token = crate::input::read_text(tf, crate::input::MAX_TOKEN_BYTES, "a token file")
                .map_err(|e| PodSourceError::Input(e.to_string()))?;
            r = r.bearer_auth(token.trim());
        }
        Ok(r)
    }

    async fn get_list(&self, url: &str) -> Result<PodList, PodSourceError> {
        let resp = self
            .request(url)?
            .send()
            .await
            .map_err(|source| PodSourceError::Http {
                url: url.into(),
                source,
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(PodSourceError::Status {
                url: url.into(),
                status,
            });
        }
        let body = resp.bytes().await.map_err(|source| PodSourceError::Http {
            url: url.into(),
            source,
        })?;
        serde_json::from_slice(&body).map_err(|source| PodSourceError::Decode {
            url: url.into(),
            source,
        })
    }

    fn on_node(&self, p: &PodMeta) -> bool {
        self.cfg.node_name.is_empty() || p.node.is_empty() || p.node == self.cfg.node_name
    }

    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let r = match self.cfg.kind {
                PodSourceKind::None => return,
                PodSourceKind::Kubelet => self.kubelet_cycle().await,
                PodSourceKind::Apiserver => self.list_and_watch().await,
            };
            match r {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(PodSourceError::Gone) => continue,
                Err(e) => {
                    self.errors.inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "pod metadata source failed; keeping the last known pods");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One poll of the kubelet, then wait for the period or a refresh request.
    async fn kubelet_cycle(&mut self) -> Result<(), PodSourceError> {
        let url = format!("{}/pods", self.cfg.url.trim_end_matches('/'));
        let list = self.get_list(&url).await?;
        let pods: Vec<PodMeta> = list
            .items
            .into_iter()
            .map(PodMeta::from)
            .filter(|p| self.on_node(p))
            .collect();
        tracing::debug!(pods = pods.len(), "kubelet pods refreshed");
        self.pods.update(|s| s.replace_all(pods));
        tokio::select! {
            _ = tokio::time::sleep(self.cfg.refresh) => {}
            Some(()) = self.refresh_requests.recv() => {
                // Coalesce a burst of requests (many events of one new pod) into one poll.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while self.refresh_requests.try_recv().is_ok() {}
            }
        }
        Ok(())
    }

    async fn list_and_watch(&mut self) -> Result<(), PodSourceError> {
        let base = self.cfg.url.trim_end_matches('/');
        let selector =
            urlencoding::encode(&format!("spec.nodeName={}", self.cfg.node_name)).into_owned();
        let list = self
            .get_list(&format!("{base}/api/v1/pods?fieldSelector={selector}"))
            .await?;
        let rv = list.metadata.resource_version.clone().unwrap_or_default();
        let pods: Vec<PodMeta> = list.items.into_iter().map(PodMeta::from).collect();
        tracing::debug!(pods = pods.len(), resource_version = %rv, "pods listed");
        self.pods.update(|s| s.replace_all(pods));
        let url = format!(
            "{base}/api/v1/pods?fieldSelector={selector}&watch=1&allowWatchBookmarks=true&resourceVersion={}",
            urlencoding::encode(&rv)
        );
        let mut resp = self
            .request(&url)?
            .send()
            .await
            .map_err(|source| PodSourceError::Http {
                url: url.clone(),
                source,
            })?;
        match resp.status().as_u16() {
            200 => {}
            410 => return Err(PodSourceError::Gone),
            status => return Err(PodSourceError::Status { url, status }),
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|source| PodSourceError::Http {
            url: url.clone(),
            source,
        })? {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                self.apply_watch_line(&line)?;
            }
            if buf.len() > 16 << 20 {
                return Err(PodSourceError::Client(
                    "watch event larger than 16 MiB".into(),
                ));
            }
        }
        Ok(()) // the server ended the watch: relist
    }

    fn apply_watch_line(&self, line: &[u8]) -> Result<(), PodSourceError> {
        let ev: WatchEvent =
            serde_json::from_slice(line).map_err(|source| PodSourceError::Decode {
                url: "watch".into(),
                source,
            })?;
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" | "DELETED" => {
                let pod: Pod =
                    serde_json::from_value(ev.object).map_err(|source| PodSourceError::Decode {
                        url: "watch".into(),
                        source,
                    })?;
                let meta = PodMeta::from(pod);
                if ev.kind == "DELETED" {
                    self.pods.update(|s| s.delete(&meta.uid));
                } else {
                    self.pods.update(|s| s.upsert(meta));
                }
                Ok(())
            }
            "ERROR" => {
                let code = ev.object.get("code").and_then(|c| c.as_u64()).unwrap_or(0);
                if code == 410 {
                    Err(PodSourceError::Gone)
                } else {
                    Err(PodSourceError::Status {
                        url: "watch".into(),
                        status: code as u16,
                    })
                }
            }
            _ => Ok(()), // BOOKMARK
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"{"metadata":{"uid":"0f3b2a4c-1d2e-4f5a-8b9c-0123456789ab","name":"med-summarizer-7d9f","namespace":"clinical-ai",
      "labels":{"app":"med-summarizer"},"ownerReferences":[{"kind":"ReplicaSet","name":"med-summarizer-7d9","controller":true}]},
      "spec":{"serviceAccountName":"med-summarizer","nodeName":"node-a"},
      "status":{"containerStatuses":[{"name":"app","image":"registry/app:1","containerID":"containerd://4c1e7f0a9b8d"}]}}"#;

    #[test]
    fn pod_json_to_meta() {
        let p: Pod = serde_json::from_str(POD).unwrap();
        let m = PodMeta::from(p);
        assert_eq!(m.namespace, "clinical-ai");
        assert_eq!(m.service_account, "med-summarizer");
        assert_eq!(m.owner_kind.as_deref(), Some("ReplicaSet"));
        assert_eq!(m.container("4c1e7f0a9b8d").unwrap().name, "app");
        assert_eq!(m.labels["app"], "med-summarizer");
    }

    #[test]
    fn pod_without_service_account_uses_default() {
        let p: Pod =
            serde_json::from_str(r#"{"metadata":{"uid":"u","name":"n","namespace":"x"}}"#).unwrap();
        assert_eq!(PodMeta::from(p).service_account, "default");
    }

    #[test]
    fn deleted_pods_linger_then_go() {
        // The clock is the test's: a thread descheduled for longer than the retention must not
        // expire the pod before the first check.
        let mut s = PodStore::new(Duration::from_millis(50), 10);
        let p: Pod = serde_json::from_str(POD).unwrap();
        let uid = p.metadata.uid.clone();
        let t0 = Instant::now();
        s.replace_all_at(vec![PodMeta::from(p)], t0);
        s.replace_all_at(vec![], t0);
        s.replace_all_at(vec![], t0 + Duration::from_millis(49));
        assert!(s.get(&uid).is_some(), "resolvable during the retention");
        s.replace_all_at(vec![], t0 + Duration::from_millis(50));
        assert!(s.get(&uid).is_none(), "gone once the retention is over");
    }

    #[test]
    fn capacity_is_bounded() {
        let mut s = PodStore::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            let mut p: Pod = serde_json::from_str(POD).unwrap();
            p.metadata.uid = format!("uid-{i}");
            s.upsert(PodMeta::from(p));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.evictions, 7);
    }
}
