//! Standalone container metadata: takes container ids (from cgroup paths), gives their name, image and labels from the runtime's Docker Engine API on a unix socket (Docker's, or podman's compatible one) in a bounded store the resolver reads.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use serde::Deserialize;

use prometheus_client::metrics::counter::Counter;

/// What nhiwatch keeps of a container: enough to name the identity, nothing secret (no env).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMeta {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// As the container was created from it (`docker.io/library/redis:7`, `localhost/app:1`).
    pub image: String,
    pub labels: Arc<BTreeMap<String, String>>,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Known(Arc<ContainerMeta>),
    /// No configured socket answered for it (no runtime API here, or the container is gone):
    /// the identity is formed from the id alone.
    Missing,
}

// ---- the Docker Engine API's container inspect (a subset) ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    config: InspectConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// `GET /containers/{id}/json`'s body → metadata.
pub fn parse_inspect(body: &[u8]) -> Result<ContainerMeta, String> {
    let i: Inspect = serde_json::from_slice(body).map_err(|e| format!("container inspect: {e}"))?;
    Ok(ContainerMeta {
        id: i.id,
        name: i.name.trim_start_matches('/').to_owned(),
        image: i.config.image,
        labels: Arc::new(i.config.labels.unwrap_or_default()),
    })
}

/// Bounded: the oldest entry goes first when full.
pub struct ContainerStore {
    entries: HashMap<String, Lookup>,
    order: VecDeque<String>,
    capacity: usize,
}

impl ContainerStore {
    pub fn new(capacity: usize) -> ContainerStore {
        ContainerStore {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn insert(&mut self, id: String, found: Lookup) {
        if !self.entries.contains_key(&id) {
            while self.entries.len() >= self.capacity {
                match self.order.pop_front() {
                    Some(old) => {
                        self.entries.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(id.clone());
        }
        self.entries.insert(id, found);
    }

    pub fn get(&self, id: &str) -> Option<&Lookup> {
        self.entries.get(id)
    }
}

/// The store shared between the lookup task and the resolver; `generation` changes with every
/// answer, so held events are re-attributed.
#[derive(Clone)]
pub struct ContainerStoreHandle {
    inner: Arc<RwLock<ContainerStore>>,
    generation: Arc<AtomicU64>,
}

impl ContainerStoreHandle {
    pub fn new(store: ContainerStore) -> ContainerStoreHandle {
        ContainerStoreHandle {
            inner: Arc::new(RwLock::new(store)),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self, id: &str) -> Option<Lookup> {
        self.inner.read().ok()?.get(id).cloned()
    }

    pub fn insert(&self, id: String, found: Lookup) {
        if let Ok(mut s) = self.inner.write() {
            s.insert(id, found);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Where the configured sockets are: each as written and, when the daemon runs in a container
/// of its own (the DaemonSet: a host PID namespace, its own mount namespace), under the host's
/// root, /proc/1/root.
pub fn socket_candidates(configured: &[PathBuf]) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    // Unless / is provably the host's root, the host's is tried too (a lookup skips a path that
    // is not there; /proc/1/root may be unreadable to us when pid 1 holds more capabilities).
    let same = |a: &str, b: &str| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    };
    let in_container = !same("/", "/proc/1/root");
    let mut out = Vec::new();
    for p in configured {
        out.push(p.clone());
        if in_container {
            let rel = p.strip_prefix("/").unwrap_or(p);
            out.push(Path::new("/proc/1/root").join(rel));
        }
    }
    out
}

/// Answers lookups one at a time (a container start is rare next to its events).
pub struct ContainerSource {
    pub sockets: Vec<PathBuf>,
    pub timeout: Duration,
    pub store: ContainerStoreHandle,
    pub requests: tokio::sync::mpsc::Receiver<String>,
    pub errors: Counter,
}

impl ContainerSource {
    pub async fn run(mut self) {
        while let Some(id) = self.requests.recv().await {
            if matches!(self.store.get(&id), Some(Lookup::Known(_))) {
                continue;
            }
            let mut found = Lookup::Missing;
            for socket in &self.sockets {
                if !socket.exists() {
                    continue;
                }
                match tokio::time::timeout(self.timeout, inspect(socket, &id)).await {
                    Ok(Ok(Some(meta))) => {
                        found = Lookup::Known(Arc::new(meta));
                        break;
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        self.errors.inc();
                        tracing::warn!(socket = %socket.display(), container = %id, "container metadata: {e}");
                    }
                    Err(_) => {
                        self.errors.inc();
                        tracing::warn!(socket = %socket.display(), container = %id, "container metadata: no answer within {:?}", self.timeout);
                    }
                }
            }
            self.store.insert(id, found);
        }
    }
}

/// Largest inspect body read (a container with thousands of labels is still far below).
const MAX_BODY: usize = 1 << 20;

/// `GET /containers/{id}/json` over the unix socket: Ok(None) when the runtime does not know it.
pub async fn inspect(socket: &Path, id: &str) -> Result<Option<ContainerMeta>, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{id:?} is not a container id"));
    }
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{}: {e}", socket.display()))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("/containers/{id}/json"))
        // Docker's and podman's API servers ignore the host; HTTP/1.1 needs one.
        .header(hyper::header::HOST, "docker")
        .body(Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let status = resp.status();
    if status == hyper::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{}: reading the answer: {e}", socket.display()))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{}: HTTP {status}", socket.display()));
    }
    parse_inspect(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields we read, as podman 4.3's compatible API answers (trimmed from a real answer).
    #[test]
    fn inspect_answer_of_podman_and_docker() {
        let body = br#"{"Id":"2209df008aec56a1447fd4ed5610b22156296630fdd616fa7a223ce75664f98c","Created":"2026-12-07T04:01:00Z","Path":"sleep","Name":"/claims-sync","Image":"sha256:a792","Config":{"Hostname":"2209df008aec","Env":["SECRET=do-not-keep"],"Image":"localhost/claims:1","Labels":{"team":"billing"}},"State":{"Pid":4242}}"#;
        let m = parse_inspect(body).unwrap();
        assert_eq!(m.name, "claims-sync");
        assert_eq!(m.image, "localhost/claims:1");
        assert_eq!(m.labels.get("team").map(String::as_str), Some("billing"));
        assert!(!format!("{m:?}").contains("do-not-keep"));
        // Docker answers `"Labels": null` for a container without labels.
        let m = parse_inspect(br#"{"Id":"ab","Name":"/x","Config":{"Image":"i","Labels":null}}"#)
            .unwrap();
        assert!(m.labels.is_empty());
        assert!(parse_inspect(b"not json").unwrap_err().contains("inspect"));
    }

    #[test]
    fn store_is_bounded_oldest_first() {
        let mut s = ContainerStore::new(2);
        s.insert("a".into(), Lookup::Missing);
        s.insert("b".into(), Lookup::Missing);
        s.insert("a".into(), Lookup::Missing);
        s.insert("c".into(), Lookup::Missing);
        assert!(s.get("a").is_none());
        assert!(s.get("b").is_some() && s.get("c").is_some());
    }
}
