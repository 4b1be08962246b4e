//! Kubernetes as the kubelet leaves it on a node: the real cgroup v2 layout of pods and
//! containers, and a real HTTP server speaking the kubelet `/pods` and API-server list/watch shapes.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    thread,
};

use serde_json::{json, Value};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n.div_ceil(2)];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect::<String>()[..n].to_owned()
}

/// One simulated pod with one container: its cgroup directories exist while it lives.
pub struct FakePod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub container_name: String,
    pub container_id: String,
    pub runtime: Runtime,
    /// The container's cgroup directory.
    pub cgroup: PathBuf,
    created: Vec<PathBuf>,
}

impl FakePod {
    pub fn new(driver: Driver, qos: Qos, runtime: Runtime, namespace: &str, sa: &str) -> FakePod {
        let uid = {
            let h = random_hex(32);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        };
        let container_id = random_hex(64);
        let root = PathBuf::from(CGROUP_ROOT);
        let rel: Vec<String> = match driver {
            Driver::Systemd => {
                let u = uid.replace('-', "_");
                let scope = match runtime {
                    Runtime::Containerd => format!("cri-containerd-{container_id}.scope"),
                    Runtime::CriO => format!("crio-{container_id}.scope"),
                    Runtime::Docker => format!("docker-{container_id}.scope"),
                };
                match qos {
                    Qos::Guaranteed => vec![
                        "kubepods.slice".into(),
                        format!("kubepods-pod{u}.slice"),
                        scope,
                    ],
                    Qos::Burstable => vec![
                        "kubepods.slice".into(),
                        "kubepods-burstable.slice".into(),
                        format!("kubepods-burstable-pod{u}.slice"),
                        scope,
                    ],
                    Qos::BestEffort => vec![
                        "kubepods.slice".into(),
                        "kubepods-besteffort.slice".into(),
                        format!("kubepods-besteffort-pod{u}.slice"),
                        scope,
                    ],
                }
            }
            Driver::Cgroupfs => {
                let mut v = vec!["kubepods".to_string()];
                match qos {
                    Qos::Guaranteed => {}
                    Qos::Burstable => v.push("burstable".into()),
                    Qos::BestEffort => v.push("besteffort".into()),
                }
                v.push(format!("pod{uid}"));
                v.push(container_id.clone());
                v
            }
        };
        let mut created = Vec::new();
        let mut dir = root;
        for part in rel {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                created.push(dir.clone());
            }
        }
        let short = &uid[..8];
        FakePod {
            name: format!("{sa}-{short}"),
            namespace: namespace.into(),
            service_account: sa.into(),
            container_name: "app".into(),
            container_id,
            runtime,
            uid,
            cgroup: dir,
            created,
        }
    }

    /// The pod as the kubelet and the API server return it.
    pub fn json(&self, node: &str) -> Value {
        let prefix = match self.runtime {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        };
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": self.name, "namespace": self.namespace, "uid": self.uid, "resourceVersion": "1",
                "labels": {"app": self.service_account},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{}-rs", self.service_account), "uid": "x", "controller": true}]
            },
            "spec": {"serviceAccountName": self.service_account, "nodeName": node, "containers": [{"name": self.container_name, "image": "registry.example/app:1"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": self.container_name, "image": "registry.example/app:1", "imageID": "sha256:abc",
                "containerID": format!("{prefix}://{}", self.container_id), "ready": true, "restartCount": 0, "state": {"running": {}}
            }]}
        })
    }

    /// `sh -c` that moves itself into the container's cgroup, then runs `script`.
    pub fn command(&self, script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && {script}",
            self.cgroup.display()
        ));
        c
    }

    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        // Shared parents (kubepods.slice …) go only if empty: another run may use them.
        for d in self.created.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                thread::sleep(std::time::Duration::from_millis(20)); // exiting processes leave late
            }
        }
    }
}

/// A systemd-style unit cgroup (`system.slice/<name>.service`).
pub struct FakeUnit {
    pub unit: String,
    pub cgroup: PathBuf,
}

impl FakeUnit {
    pub fn new(name: &str) -> FakeUnit {
        let slice = Path::new(CGROUP_ROOT).join("system.slice");
        let _ = std::fs::create_dir(&slice);
        let unit = format!("{name}.service");
        let cgroup = slice.join(&unit);
        std::fs::create_dir(&cgroup).unwrap();
        FakeUnit { unit, cgroup }
    }

    pub fn command(&self, script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && {script}",
            self.cgroup.display()
        ));
        c
    }
}

impl Drop for FakeUnit {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(self.cgroup.parent().unwrap());
    }
}

struct ApiState {
    pods: Vec<Value>,
    resource_version: u64,
    watchers: Vec<TcpStream>,
    requests: Vec<String>,
    /// Every ADDED event with its resourceVersion: a watch from version R gets those after R
    /// replayed first, as the API server does for changes between a list and its watch.
    history: Vec<(u64, String)>,
}

/// A node's view of Kubernetes over real HTTP: `GET /pods` (kubelet) and
/// `GET /api/v1/pods?fieldSelector=spec.nodeName=N[&watch=1]` (API server), bearer token checked.
pub struct FakeKubeApi {
    pub port: u16,
    pub node: String,
    pub token: String,
    state: Arc<Mutex<ApiState>>,
}

impl FakeKubeApi {
    pub fn start(node: &str, token: &str) -> FakeKubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ApiState {
            pods: Vec::new(),
            resource_version: 100,
            watchers: Vec::new(),
            requests: Vec::new(),
            history: Vec::new(),
        }));
        let st = state.clone();
        let (node_s, token_s) = (node.to_owned(), token.to_owned());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let st = st.clone();
                let (node, token) = (node_s.clone(), token_s.clone());
                thread::spawn(move || serve(conn, st, &node, &token));
            }
        });
        FakeKubeApi {
            port,
            node: node.into(),
            token: token.into(),
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Adds a pod: listed from now on, and pushed to open watches as ADDED.
    pub fn add(&self, pod: &FakePod) {
        let obj = pod.json(&self.node);
        let mut s = self.state.lock().unwrap();
        s.resource_version += 1;
        s.pods.push(obj.clone());
        let line = format!("{}\n", json!({"type": "ADDED", "object": obj}));
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        let rv = s.resource_version;
        s.history.push((rv, chunk.clone()));
        s.watchers.retain_mut(|w| {
            w.write_all(chunk.as_bytes())
                .and_then(|()| w.flush())
                .is_ok()
        });
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn serve(mut conn: TcpStream, st: Arc<Mutex<ApiState>>, node: &str, token: &str) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut auth = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h
                .strip_prefix("authorization: ")
                .or_else(|| h.strip_prefix("Authorization: "))
            {
                auth = v.trim().to_owned();
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        st.lock().unwrap().requests.push(target.clone());
        let respond = |conn: &mut TcpStream, status: &str, body: &str| {
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        };
        if auth != format!("Bearer {token}") {
            respond(
                &mut conn,
                "401 Unauthorized",
                r#"{"kind":"Status","code":401}"#,
            );
            continue;
        }
        let selector = format!("fieldSelector=spec.nodeName%3D{node}");
        if target == "/pods" {
            let s = st.lock().unwrap();
            let body =
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": s.pods});
            respond(&mut conn, "200 OK", &body.to_string());
        } else if target.starts_with("/api/v1/pods?") && target.contains(&selector) {
            if target.contains("watch=1") {
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
                let from: u64 = target
                    .split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix("resourceVersion="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut s = st.lock().unwrap();
                for (rv, chunk) in &s.history {
                    if *rv > from {
                        let _ = conn.write_all(chunk.as_bytes());
                    }
                }
                let _ = conn.flush();
                s.watchers.push(conn.try_clone().unwrap());
                drop(s);
                // The watch stays open until the test ends.
                let mut sink = [0u8; 64];
                while reader.get_mut().read(&mut sink).unwrap_or(0) > 0 {}
                return;
            }
            let s = st.lock().unwrap();
            let body = json!({"kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": s.resource_version.to_string()}, "items": s.pods});
            respond(&mut conn, "200 OK", &body.to_string());
        } else {
            respond(
                &mut conn,
                "404 Not Found",
                r#"{"kind":"Status","code":404}"#,
            );
        }
    }
}
