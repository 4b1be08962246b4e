//! End-to-end under a real container runtime (podman with runc): the shipped image built from
//! the Containerfile and run with exactly the DaemonSet's privileges and mounts (read from
//! deploy/kubernetes/daemonset.yaml), watching processes of the host and of other containers.

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use nhiwatch_e2e::{container::*, *};
use serde_yaml_ng::Value as Yaml;

/// Bounds each wait for something that must happen: generous, so a busy machine is only slower.
const WAIT: Duration = Duration::from_secs(60);

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn yaml(rel: &str) -> Yaml {
    serde_yaml_ng::from_str(&std::fs::read_to_string(repo(rel)).unwrap()).unwrap()
}

/// What the test puts where the DaemonSet mounts a ConfigMap or the node's state directory.
struct Sources {
    config: PathBuf,
    rules: PathBuf,
    state: PathBuf,
    node: String,
}

/// `podman run` options and the command for one container of the DaemonSet's pod template,
/// translated field by field; a field this translation does not know fails the test, so the
/// manifest and the test cannot drift apart.
fn podman_args(pod: &Yaml, container: &Yaml, src: &Sources) -> (Vec<String>, Vec<String>) {
    let mut args: Vec<String> = Vec::new();
    let s = |v: &Yaml| {
        v.as_str()
            .unwrap_or_else(|| panic!("a string: {v:?}"))
            .to_owned()
    };
    if pod["hostPID"].as_bool() == Some(true) {
        args.push("--pid=host".into());
    }
    assert_ne!(
        pod["hostNetwork"].as_bool(),
        Some(true),
        "hostNetwork is not granted"
    );
    // The pod's own network namespace would do as well (no sensor depends on it); the host's
    // lets the test reach /metrics and its servers on loopback without a bridge.
    args.push("--network=host".into());
    let sc = &container["securityContext"];
    for (key, v) in sc.as_mapping().expect("a securityContext") {
        match key.as_str().unwrap() {
            "privileged" => assert_eq!(v.as_bool(), Some(false), "never privileged"),
            "readOnlyRootFilesystem" => {
                if v.as_bool() == Some(true) {
                    // Kubernetes mounts no tmpfs on /tmp or /run; podman would by default.
                    args.push("--read-only".into());
                    args.push("--read-only-tmpfs=false".into());
                }
            }
            "allowPrivilegeEscalation" => {
                if v.as_bool() == Some(false) {
                    args.push("--security-opt=no-new-privileges".into());
                }
            }
            "runAsUser" | "runAsGroup" => {}
            "runAsNonRoot" => {
                if v.as_bool() == Some(true) {
                    assert_ne!(sc["runAsUser"].as_u64(), Some(0));
                }
            }
            // podman's default seccomp profile is the runtime's default.
            "seccompProfile" => assert_eq!(s(&v["type"]), "RuntimeDefault"),
            "capabilities" => {
                for c in v["drop"].as_sequence().into_iter().flatten() {
                    args.push(format!("--cap-drop={}", s(c).to_lowercase()));
                }
                for c in v["add"].as_sequence().into_iter().flatten() {
                    args.push(format!("--cap-add={}", s(c).to_lowercase()));
                }
            }
            other => panic!("securityContext.{other}: not translated to podman"),
        }
    }
    if let Some(uid) = sc["runAsUser"].as_u64() {
        let gid = sc["runAsGroup"].as_u64().unwrap_or(uid);
        args.push(format!("--user={uid}:{gid}"));
    }
    for e in container["env"].as_sequence().into_iter().flatten() {
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("spec.nodeName") {
            src.node.clone()
        } else {
            panic!("env {e:?}: not translated")
        };
        args.push(format!("--env={}={value}", s(&e["name"])));
    }
    let limits = &container["resources"]["limits"];
    if let Some(m) = limits["memory"].as_str() {
        args.push(format!(
            "--memory={}",
            m.strip_suffix("Gi")
                .map_or(m.to_owned(), |g| format!("{g}g"))
        ));
    }
    if let Some(c) = limits["cpu"].as_str() {
        args.push(format!("--cpus={c}"));
    }
    let volumes: BTreeMap<String, &Yaml> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| (s(&v["name"]), v))
        .collect();
    for m in container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let vol = volumes[&s(&m["name"])];
        let source = if let Some(p) = vol["hostPath"]["path"].as_str() {
            // The node's state directory: the test's own, never the machine's.
            if p == "/var/lib/nhiwatch" {
                src.state.clone()
            } else {
                PathBuf::from(p)
            }
        } else if vol["configMap"]["name"].as_str() == Some("nhiwatch-config") {
            assert_eq!(m["subPath"].as_str(), Some("nhiwatch.yaml"));
            src.config.clone()
        } else if vol["configMap"]["name"].as_str() == Some("nhiwatch-rules") {
            src.rules.clone()
        } else if vol["secret"]["optional"].as_bool() == Some(true) {
            // An optional Secret the test does not create (the fleet's shared key and store
            // password): Kubernetes starts the pod without it, and so does the test.
            continue;
        } else {
            panic!("volume {vol:?}: not translated")
        };
        let ro = if m["readOnly"].as_bool() == Some(true) {
            ":ro"
        } else {
            ""
        };
        args.push(format!(
            "--volume={}:{}{ro}",
            source.display(),
            s(&m["mountPath"])
        ));
    }
    let command: Vec<String> = container["command"]
        .as_sequence()
        .expect("a command")
        .iter()
        .map(s)
        .collect();
    args.push(format!("--entrypoint={}", command[0]));
    (args, command[1..].to_vec())
}

/// The shipped Kubernetes config with what the test must set: metadata from no API server,
/// watched secrets of the test, a loopback metrics port, the container runtime's socket.
fn daemon_config(watch: &[String], metrics_port: u16, socket: &Path) -> String {
    let mut cfg = yaml("deploy/kubernetes/config/nhiwatch.yaml");
    cfg["identity"]["kubernetes"]["source"] = "none".into();
    cfg["identity"]["containers"] =
        serde_yaml_ng::from_str(&format!("sockets: [{}]", socket.display())).unwrap();
    cfg["metrics"]["listen"] = format!("127.0.0.1:{metrics_port}").into();
    cfg["sensors"]["poll_interval_ms"] = 2.into();
    cfg["sensors"]["files"] =
        serde_yaml_ng::from_str(&format!("watch: [{}]", watch.join(", "))).unwrap();
    serde_yaml_ng::to_string(&cfg).unwrap()
}

fn cgroup_is(v: &Value, id: u64) -> bool {
    v["cgroup_id"].as_u64() == Some(id)
}

#[test]
fn the_image_runs_as_the_daemonset_does_and_sees_host_and_container_workloads() {
    let started = std::time::Instant::now();
    let image = Image::build_daemon();
    eprintln!(
        "image {} built in {:.0?}: {:.1} MiB",
        image.tag,
        started.elapsed(),
        image.size as f64 / 1048576.0
    );
    // The image holds the binary with its file capabilities, the config, the rules and CA
    // certificates, and runs as uid 65534.
    let listing = podman_ok(&[
        "run",
        "--rm",
        "--network=host",
        "--entrypoint=/bin/sh",
        &image.tag,
        "-c",
        "id -u; ls /usr/local/bin /etc/nhiwatch /etc/nhiwatch/rules; test -s /etc/ssl/certs/ca-certificates.crt && echo ca-ok",
    ]);
    for want in ["65534", "nhiwatch", "nhiwatch.yaml", "rules", "ca-ok"] {
        assert!(
            listing.contains(want),
            "{want} missing from the image:\n{listing}"
        );
    }
    let mnt = podman_ok(&["image", "mount", &image.tag]);
    let caps = run_ok(Command::new("getcap").arg(format!("{mnt}/usr/local/bin/nhiwatch")));
    podman_ok(&["image", "unmount", &image.tag]);
    assert!(
        String::from_utf8_lossy(&caps.stdout)
            .contains("cap_dac_read_search,cap_kill,cap_sys_ptrace,cap_sys_admin=p"),
        "{caps:?}"
    );

    let tmp = TempDir::new("nhiwatch-e2e-ds");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The node's state directory as an earlier root deployment left it: the init container
    // gives it to uid 65534.
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let host_secrets = tmp.path().join("host-secrets");
    std::fs::create_dir(&host_secrets).unwrap();
    let host_secret = host_secrets.join("db-password");
    std::fs::write(&host_secret, "not-a-real-password").unwrap();
    // The other container's secrets, mounted where Docker and Compose put them.
    let ctr_secrets = tmp.path().join("ctr-secrets");
    std::fs::create_dir(&ctr_secrets).unwrap();
    let ctr_token = unique("api-token");
    std::fs::write(ctr_secrets.join(&ctr_token), "not-a-real-token").unwrap();
    let metrics_port = free_port();
    // The runtime's API on the host. The daemon would find it under /proc/1/root, but pid 1 of
    // this machine holds capabilities outside our bounding set, so its root is unreadable even to
    // root here: the socket is mounted into the daemon's container as an operator would
    // (hostPath). A real socket is root's; the operator lets uid 65534 write it.
    let svc = PodmanService::start(tmp.path().join("podman.sock"));
    std::fs::set_permissions(&svc.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let config = tmp.path().join("nhiwatch.yaml");
    std::fs::write(
        &config,
        daemon_config(
            &[
                format!("{}/", host_secrets.display()),
                "/run/secrets/".into(),
            ],
            metrics_port,
            &svc.socket,
        ),
    )
    .unwrap();
    let src = Sources {
        config,
        rules: repo("rules"),
        state: state.clone(),
        node: "e2e-node".into(),
    };

    let ds = yaml("deploy/kubernetes/daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    assert_eq!(init["name"].as_str(), Some("state-owner"));
    let (mut args, cmd) = podman_args(pod, init, &src);
    let mut argv: Vec<&str> = vec!["run", "--rm"];
    args.push(image.tag.clone());
    argv.extend(args.iter().map(String::as_str));
    argv.extend(cmd.iter().map(String::as_str));
    podman_ok(&argv);
    assert_eq!(std::fs::metadata(&state).unwrap().uid(), 65534);

    let main = pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("nhiwatch"))
        .unwrap();
    let (mut args, cmd) = podman_args(pod, main, &src);
    args.push(format!(
        "--volume={}:{}",
        svc.socket.display(),
        svc.socket.display()
    ));
    let name = unique("nhiwatch-e2e-ds");
    let mut run = command();
    run.args(["run", "--rm", "--name", &name])
        .args(&args)
        .arg(&image.tag)
        .args(&cmd)
        .arg("--events");
    eprintln!("{run:?}");
    let d = Daemon::spawn(
        run,
        metrics_port,
        state.clone(),
        TempDir::new("nhiwatch-e2e-ds-daemon"),
        Some(name.clone()),
    );
    // Every sensor attached: ready (all are in sensors.required) and none degraded.
    assert_eq!(d.readyz().0, 200);
    let metrics = d.metrics();
    let degraded: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("nhiwatch_sensor_degraded{"))
        .collect();
    assert!(degraded.is_empty(), "{degraded:?}\n{}", d.stderr());

    // Processes of the host: exec, a secret read (and its finding), TCP, TLS.
    let nginx = Nginx::start("location = /x { return 200 'ok'; }");
    let cat = spawn_pid(
        Command::new("sh")
            .arg("-c")
            .arg(format!("exec cat {} >/dev/null", host_secret.display())),
    );
    d.wait_for("host exec", WAIT, |v| kind_is(v, "exec") && pid_is(v, cat));
    d.wait_for("host secret read", WAIT, |v| {
        kind_is(v, "file_open") && pid_is(v, cat)
    });
    d.wait_for("host secret finding", WAIT, |v| {
        kind_is(v, "finding")
            && v["rule"]["id"] == "NHI-020"
            && v["evidence"]["file"] == host_secret.display().to_string().as_str()
    });
    let curl = spawn_pid(
        Command::new("curl")
            .args(["-sS", "--fail", "-o", "/dev/null", "--cacert"])
            .arg(&nginx.cert)
            .arg(format!("https://127.0.0.1:{}/x", nginx.port)),
    );
    d.wait_for("host TCP connect", WAIT, |v| {
        kind_is(v, "tcp_connect") && pid_is(v, curl)
    });
    d.wait_for("host API call over TLS", WAIT, |v| {
        kind_is(v, "api_call") && pid_is(v, curl)
    });

    // Processes of another container (its own image's libssl).
    let client = Container::run(
        "nhiwatch-e2e-ds-client",
        &[
            "--network=host",
            &format!("--volume={}:/run/secrets:ro", ctr_secrets.display()),
            &format!("--volume={}:/ca.pem:ro", nginx.cert.display()),
            client_image(),
            "sleep",
            "600",
        ],
    );
    let cg = cgroup_id(&client.cgroup_dir());
    let port = nginx.port.to_string();
    let url = format!("https://127.0.0.1:{port}/x");
    let script = format!(
        "cat /run/secrets/{ctr_token} >/dev/null && curl -sS --fail -o /dev/null --cacert /ca.pem {url}"
    );
    podman_ok(&["exec", &client.name, "sh", "-c", &script]);
    let exec = d.wait_for("container exec", WAIT, |v| {
        kind_is(v, "exec")
            && cgroup_is(v, cg)
            && v["filename"].as_str().is_some_and(|f| f.ends_with("curl"))
    });
    // Named by podman's API, reached through /proc/1/root from inside the daemon's container.
    assert_eq!(exec["identity"]["kind"], "container", "{exec}");
    assert_eq!(
        exec["identity"]["container"],
        client.name.as_str(),
        "{exec}\n{}",
        d.stderr()
            .lines()
            .filter(|l| l.contains("container"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        exec["identity"]["container_id"],
        client.id().as_str(),
        "{exec}"
    );
    d.wait_for("container secret read", WAIT, |v| {
        kind_is(v, "file_open")
            && cgroup_is(v, cg)
            && v["path"].as_str().is_some_and(|p| p.ends_with(&ctr_token))
    });
    d.wait_for("container secret finding", WAIT, |v| {
        kind_is(v, "finding")
            && v["rule"]["id"] == "NHI-020"
            && v["evidence"]["file"]
                .as_str()
                .is_some_and(|p| p.ends_with(&ctr_token))
    });
    d.wait_for("container TCP connect", WAIT, |v| {
        kind_is(v, "tcp_connect")
            && cgroup_is(v, cg)
            && v["dst"].as_str().is_some_and(|a| a.ends_with(&port))
    });
    d.wait_for("container API call over TLS", WAIT, |v| {
        kind_is(v, "api_call") && cgroup_is(v, cg)
    });
    drop(client);

    let (_, stderr, files) = d.stop_with_state();
    // The stop hands the uprobes to the kernel (a bpffs it mounts under /dev/shm: the root is
    // read-only and /sys/fs/bpf is not mounted), not one by one.
    let released = stderr
        .lines()
        .find(|l| l.contains("TLS probes released"))
        .unwrap_or_else(|| panic!("no release line:\n{stderr}"));
    assert!(released.contains("detached_here=0"), "{released}");
    // The file sink on the node's state directory has both findings.
    let findings = files
        .iter()
        .find(|(p, _)| p.ends_with("findings.jsonl"))
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_else(|| panic!("no findings.jsonl in {files:?}"));
    assert!(findings.contains(&ctr_token), "{findings}");
    assert!(
        findings.contains(&host_secret.display().to_string()),
        "{findings}"
    );
}

/// `podman system service` on a socket of the test's own: the Docker Engine API the daemon asks
/// for a container's name, image and labels. Stopped on drop.
struct PodmanService {
    child: std::process::Child,
    socket: PathBuf,
}

impl PodmanService {
    fn start(socket: PathBuf) -> PodmanService {
        let child = command()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("podman system service");
        let s = PodmanService { child, socket };
        wait_until("the podman API socket", WAIT, || s.socket.exists());
        s
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An API key both containers present (a leak canary: it must appear in no output).
const KEY: &str = "sk-ant-api03-LEAKCANARYcontainerkey5d2e8b";

/// Two containers of one image with different names, each reading the same watched secret
/// mounted into it and calling the test's HTTPS server once with it through the image's own
/// libssl: every event of theirs is attributed to its container identity (name, image, labels
/// from podman's API; held while that answer is pending), the calls are seen from the first,
/// the secret reads are found with the container identity, NHI-050 names both, and a selector
/// on name and label renames one.
#[test]
fn standalone_containers_are_identities_named_by_the_runtime() {
    let tmp = TempDir::new("nhiwatch-e2e-ctr");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let svc = PodmanService::start(tmp.path().join("podman.sock"));
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("api-key"), KEY).unwrap();
    let nginx = Nginx::start("location = /v1/messages { return 200 '{}'; }");
    let team = unique("team");
    let (a, b) = (unique("summarizer-a"), unique("summarizer-b"));
    let selected = format!("spiffe://cluster.local/e2e/{b}");
    let cfg = format!(
        "{}identity:\n  node_name: e2e-node\n  containers:\n    sockets: [{}]\n  selectors:\n    - selectors: [\"container:name:{b}\", \"container:label:team:{team}\"]\n      id: {selected}\n",
        config_with(&["/run/secrets/".into()], ""),
        svc.socket.display()
    );
    let d = Daemon::start(&cfg);
    let image = client_image();
    let script = format!(
        "curl -sS --fail -o /dev/null --cacert /ca.pem -H \"x-api-key: $(cat /run/secrets/api-key)\" -d '{{}}' https://127.0.0.1:{}/v1/messages",
        nginx.port
    );
    let run = |name: &str| {
        let c = Container {
            name: name.to_owned(),
        };
        podman_ok(&[
            "run",
            "--detach",
            "--name",
            name,
            "--network=host",
            "--label",
            &format!("team={team}"),
            &format!("--volume={}:/run/secrets:ro", secrets.display()),
            &format!("--volume={}:/ca.pem:ro", nginx.cert.display()),
            image,
            "sh",
            "-c",
            &script,
        ]);
        c
    };
    let (ca, cb) = (run(&a), run(&b));
    for c in [&ca, &cb] {
        assert_eq!(c.wait(), 0, "{}: {}", c.name, c.logs());
    }
    let id_a = format!("spiffe://cluster.local/node/e2e-node/container/{a}");
    let of = |v: &Value, name: &str| v["identity"]["container"] == name;
    for (c, spiffe) in [(&ca, &id_a), (&cb, &selected)] {
        let call = d.wait_for(&format!("the API call of {}", c.name), WAIT, |v| {
            kind_is(v, "api_call") && of(v, &c.name)
        });
        let id = &call["identity"];
        assert_eq!(id["status"], "resolved", "{call}");
        assert_eq!(id["kind"], "container", "{call}");
        assert_eq!(id["id"], spiffe.as_str(), "{call}");
        assert_eq!(id["image"], image, "{call}");
        assert_eq!(id["container_id"], c.id().as_str(), "{call}");
        assert_eq!(id["node"], "e2e-node");
        assert_eq!(
            call["process"]["exe"].as_str().map(|e| e.ends_with("curl")),
            Some(true),
            "{call}"
        );
        d.wait_for(&format!("the secret read of {}", c.name), WAIT, |v| {
            kind_is(v, "file_open")
                && of(v, &c.name)
                && v["path"].as_str().is_some_and(|p| p.ends_with("api-key"))
        });
        d.wait_for(&format!("NHI-020 for {}", c.name), WAIT, |v| {
            kind_is(v, "finding")
                && v["rule"]["id"] == "NHI-020"
                && v["identity"]["id"] == spiffe.as_str()
        });
    }
    let shared = d.wait_for("NHI-050 naming both containers", WAIT, |v| {
        kind_is(v, "finding") && v["rule"]["id"] == "NHI-050"
    });
    let mut named: Vec<String> = shared["evidence"]["identities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    named.push(shared["identity"]["id"].as_str().unwrap_or("").to_owned());
    named.sort();
    let mut want = vec![id_a.clone(), selected.clone()];
    want.sort();
    assert_eq!(named, want, "{shared}");
    // No event of theirs left the hold unattributed (findings carry no status).
    let ids = [ca.id(), cb.id()];
    let loose: Vec<Value> = d
        .events()
        .into_iter()
        .filter(|v| {
            v["identity"]["container_id"]
                .as_str()
                .is_some_and(|c| ids.iter().any(|i| i == c))
                && v["identity"]["status"].is_string()
                && v["identity"]["status"] != "resolved"
        })
        .collect();
    assert!(loose.is_empty(), "{loose:#?}");

    let metrics = d.metrics();
    // Their first events waited for podman's answer and were released resolved.
    assert!(
        d.metric_sum("nhiwatch_held_attributions", &["resolved"]) > 0.0,
        "{metrics}"
    );
    let (stdout, stderr, state) = d.stop_with_state();
    let mut outputs = vec![
        ("stdout".to_owned(), stdout.into_bytes()),
        ("stderr".to_owned(), stderr.into_bytes()),
        ("metrics".to_owned(), metrics.into_bytes()),
    ];
    outputs.extend(state.into_iter().map(|(p, b)| (p.display().to_string(), b)));
    for (what, bytes) in &outputs {
        for s in [KEY, "LEAKCANARY"] {
            assert!(
                !String::from_utf8_lossy(bytes).contains(s),
                "{s} leaked into {what}"
            );
        }
    }
}
