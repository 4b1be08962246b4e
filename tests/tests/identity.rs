//! End-to-end: every event carries the workload identity — Kubernetes pods built the
//! kubelet's way (both cgroup drivers, several runtimes) with metadata served over real
//! HTTP, systemd units, and uid + executable — including for short-lived processes.

use std::{
    io::{Read, Write},
    net::TcpListener,
    process::{Command, Stdio},
    time::Duration,
};

use nhiwatch_e2e::{kube::*, *};

/// Bounds each wait for something that must happen: generous, so a busy machine is only slower.
const WAIT: Duration = Duration::from_secs(60);

fn identity_config(watch: &str, source: &str, url: &str, token_file: &std::path::Path) -> String {
    format!(
        "{}identity:\n  node_name: e2e-node\n  pending_hold_ms: 8000\n  kubernetes:\n    source: {source}\n    url: {url}\n    token_file: {}\n    refresh_seconds: 1\n",
        config_with(&[watch.to_owned()], ""),
        token_file.display()
    )
}

struct Setup {
    tmp: TempDir,
    token_file: std::path::PathBuf,
    secret: std::path::PathBuf,
    watch: String,
}

fn setup() -> Setup {
    let tmp = TempDir::new("nhiwatch-e2e-identity");
    let token_file = tmp.path().join("api-token");
    std::fs::write(&token_file, "e2e-kube-token\n").unwrap();
    let dir = tmp.path().join("serviceaccount");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("token");
    std::fs::write(&secret, "jwt-not-real").unwrap();
    let watch = format!("{}/", dir.display());
    Setup {
        tmp,
        token_file,
        secret,
        watch,
    }
}

fn assert_identity(ev: &Value, pod: &FakePod) {
    let id = &ev["identity"];
    assert_eq!(id["status"], "resolved", "{ev}");
    assert_eq!(id["id"], pod.spiffe_id().as_str(), "{ev}");
    assert_eq!(id["kind"], "kubernetes");
    assert_eq!(id["namespace"], pod.namespace.as_str());
    assert_eq!(id["service_account"], pod.service_account.as_str());
    assert_eq!(id["pod"], pod.name.as_str());
    assert_eq!(id["pod_uid"], pod.uid.as_str());
    assert_eq!(id["container"], pod.container_name.as_str(), "{ev}");
    assert_eq!(id["container_id"], pod.container_id.as_str());
    assert_eq!(
        id["owner"],
        format!("ReplicaSet/{}-rs", pod.service_account).as_str()
    );
    assert_eq!(id["node"], "e2e-node");
}

/// exec, file, TCP and TLS events of processes inside each simulated pod carry its identity.
fn pods_scenario(source: &str) {
    let s = setup();
    let api = FakeKubeApi::start("e2e-node", "e2e-kube-token");
    let pods = [
        FakePod::new(
            Driver::Systemd,
            Qos::Burstable,
            Runtime::Containerd,
            "clinical-ai",
            "med-summarizer",
        ),
        FakePod::new(
            Driver::Cgroupfs,
            Qos::BestEffort,
            Runtime::Containerd,
            "billing",
            "claims-sync",
        ),
        FakePod::new(
            Driver::Systemd,
            Qos::Guaranteed,
            Runtime::CriO,
            "fitness",
            "step-importer",
        ),
        FakePod::new(
            Driver::Systemd,
            Qos::Burstable,
            Runtime::Docker,
            "mental-health",
            "notes-indexer",
        ),
    ];
    // Two pods exist before the daemon starts, two are created after.
    api.add(&pods[0]);
    api.add(&pods[1]);
    // The API server is reached over TLS (nginx terminating it in front of the fake API,
    // the daemon trusting its CA), the kubelet over plain HTTP as its read-only port is.
    let front = (source == "apiserver").then(|| {
        Nginx::start(&format!(
            "location / {{ proxy_pass http://127.0.0.1:{}; proxy_buffering off; proxy_http_version 1.1; proxy_read_timeout 3600s; }}",
            api.port
        ))
    });
    let cfg = match &front {
        Some(n) => {
            identity_config(
                &s.watch,
                source,
                &format!("https://127.0.0.1:{}", n.port),
                &s.token_file,
            ) + &format!("    ca_file: {}\n", n.cert.display())
        }
        None => identity_config(&s.watch, source, &api.url(), &s.token_file),
    };
    let d = Daemon::start(&cfg);
    api.add(&pods[2]);
    api.add(&pods[3]);
    let nginx = Nginx::start("location = /x { return 200 'ok'; }");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = c.write_all(b"hi");
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        }
    });
    for pod in &pods {
        let cat = spawn_pid(&mut pod.command(&format!("exec cat {}", s.secret.display())));
        // the first exec (sh) happens before the process moves itself into the pod
        let ev = d.wait_for("exec in pod", WAIT, |v| {
            kind_is(v, "exec")
                && pid_is(v, cat)
                && v["filename"].as_str().is_some_and(|f| f.ends_with("cat"))
        });
        assert!(
            ev["identity"]["status"] == "resolved",
            "{ev}\ndaemon log:\n{}",
            d.stderr()
        );
        assert_identity(&ev, pod);
        let ev = d.wait_for("secret read in pod", WAIT, |v| {
            kind_is(v, "file_open") && pid_is(v, cat)
        });
        assert_identity(&ev, pod);

        let py = spawn_pid(&mut pod.command(&format!(
            "exec python3 -c 'import socket; s=socket.create_connection((\"127.0.0.1\",{port})); s.recv(2); s.close()'"
        )));
        let ev = d.wait_for("connect in pod", WAIT, |v| {
            kind_is(v, "tcp_connect") && pid_is(v, py)
        });
        assert_identity(&ev, pod);
        let ev = d.wait_for("close in pod", WAIT, |v| {
            kind_is(v, "tcp_close") && pid_is(v, py)
        });
        assert_identity(&ev, pod);

        let curl = spawn_pid(&mut pod.command(&format!(
            "exec curl -sS --fail --cacert {} https://127.0.0.1:{}/x",
            nginx.cert.display(),
            nginx.port
        )));
        let ev = d.wait_for("TLS in pod", WAIT, |v| {
            kind_is(v, "tls_data") && pid_is(v, curl)
        });
        assert_identity(&ev, pod);
    }
    // nginx runs in the test's own cgroup: its events are not the pods'.
    let n = d.wait_for("nginx TLS read", WAIT, |v| {
        kind_is(v, "tls_data") && pid_is(v, nginx.pid())
    });
    assert_ne!(n["identity"]["kind"], "kubernetes", "{n}");
    // the metadata came through the endpoint under test, not some other path
    let reqs = api.requests();
    let used = match source {
        "kubelet" => reqs.iter().any(|r| r == "/pods"),
        _ => reqs
            .iter()
            .any(|r| r.starts_with("/api/v1/pods?") && r.contains("watch=1")),
    };
    assert!(used, "{source} endpoint never requested: {reqs:?}");
    d.stop();
}

#[test]
fn kubernetes_identity_from_kubelet_pods_both_drivers_several_runtimes() {
    pods_scenario("kubelet");
}

#[test]
fn kubernetes_identity_from_apiserver_list_and_watch() {
    pods_scenario("apiserver");
}

#[test]
fn systemd_unit_and_uid_exe_identities() {
    let s = setup();
    let d = Daemon::start(&config_with(std::slice::from_ref(&s.watch), ""));
    let unit = FakeUnit::new(&unique("nhiwatch-e2e"));
    let pid = spawn_pid(&mut unit.command(&format!("exec cat {}", s.secret.display())));
    let ev = d.wait_for("file read in unit", WAIT, |v| {
        kind_is(v, "file_open") && pid_is(v, pid)
    });
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(ev["identity"]["status"], "resolved");
    assert_eq!(ev["identity"]["kind"], "systemd");
    assert_eq!(ev["identity"]["unit"], unit.unit.as_str());
    assert_eq!(
        ev["identity"]["id"],
        format!("spiffe://cluster.local/node/{host}/unit/{}", unit.unit).as_str()
    );

    // a plain process as another user: uid + executable
    std::fs::set_permissions(
        s.tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        "4242",
        "--regid",
        "4242",
        "--clear-groups",
        "/bin/ls",
        "/",
    ]);
    let pid = spawn_pid(&mut cmd);
    let ev = d.wait_for("exec as uid 4242", WAIT, |v| {
        kind_is(v, "exec") && pid_is(v, pid) && v["filename"] == "/bin/ls"
    });
    assert_eq!(ev["identity"]["kind"], "unix", "{ev}");
    assert_eq!(ev["identity"]["uid"], 4242);
    assert_eq!(
        ev["identity"]["id"],
        format!("spiffe://cluster.local/node/{host}/uid/4242/usr/bin/ls").as_str(),
        "{ev}"
    );
    d.stop();
}

/// 1,000 short-lived processes across 20 pods; half the pods appear after the
/// daemon started and a quarter only get metadata well after their processes ran:
/// every exec ends `resolved`, to the right pod, none lost.
#[test]
fn churn_of_short_lived_processes_with_late_metadata() {
    let s = setup();
    let api = FakeKubeApi::start("e2e-node", "e2e-kube-token");
    let pods: Vec<FakePod> = (0..20)
        .map(|i| {
            let driver = if i % 2 == 0 {
                Driver::Systemd
            } else {
                Driver::Cgroupfs
            };
            FakePod::new(
                driver,
                Qos::Burstable,
                Runtime::Containerd,
                &format!("ns{i}"),
                &format!("sa{i}"),
            )
        })
        .collect();
    for p in &pods[..10] {
        api.add(p);
    }
    let d = Daemon::start(&identity_config(
        &s.watch,
        "apiserver",
        &api.url(),
        &s.token_file,
    ));
    for p in &pods[10..15] {
        api.add(p);
    }
    let mut expected = Vec::new();
    for round in 0..50 {
        if round == 25 {
            // the last five pods' metadata arrives only now, after 25 of their processes ran
            for p in &pods[15..] {
                api.add(p);
            }
        }
        for (i, p) in pods.iter().enumerate() {
            let child = p
                .command("exec /bin/true")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            expected.push((child.id(), i));
            let status = child.wait_with_output().unwrap().status;
            assert!(status.success());
        }
    }
    assert_eq!(expected.len(), 1000);
    for (pid, i) in &expected {
        let ev = d.wait_for("churn exec", WAIT, |v| {
            kind_is(v, "exec") && pid_is(v, *pid) && v["filename"] == "/bin/true"
        });
        assert_identity(&ev, &pods[*i]);
    }
    // Held and re-attributed lines print like direct ones, for consumers that read lines.
    let out = d.stdout();
    for line in out
        .lines()
        .filter(|l| l.contains("\"filename\":\"/bin/true\""))
    {
        assert!(
            line.starts_with("{\"time\":")
                && line.contains(",\"identity\":{\"status\":\"resolved\",\"id\":"),
            "keys out of order: {line}"
        );
    }
    let m = d.metrics();
    assert!(
        d.metric_sum("nhiwatch_held_attributions_total", &[]) > 0.0,
        "some events were held: {m}"
    );
    assert_eq!(
        d.metric_sum("nhiwatch_identity_hold_expired_total", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(
        d.metric_sum("nhiwatch_kernel_events_lost_total", &[]),
        0.0,
        "{m}"
    );
    d.stop();
}

/// A TLS client in a pod whose metadata arrives only after it ran: the server name it sent
/// waits for the pod like its other events, and leaves resolved rather than `pending`.
#[test]
fn server_names_wait_for_late_pod_metadata() {
    let s = setup();
    let api = FakeKubeApi::start("e2e-node", "e2e-kube-token");
    let pod = FakePod::new(
        Driver::Systemd,
        Qos::Burstable,
        Runtime::Containerd,
        "late-names",
        "sni-client",
    );
    let d = Daemon::start(&identity_config(
        &s.watch,
        "apiserver",
        &api.url(),
        &s.token_file,
    ));
    let nginx = Nginx::start("location = /x { return 200 'ok'; }");
    let curl = spawn_pid(&mut pod.command(&format!(
        "exec curl -sS --fail --cacert {} --resolve api.nhiwatch.test:{port}:127.0.0.1 https://api.nhiwatch.test:{port}/x",
        nginx.cert.display(),
        port = nginx.port
    )));
    // An exec started after curl ended is read after all of curl's records: once it is
    // printed, the daemon has seen the server name while the pod was still unknown.
    let marker = spawn_pid(&mut Command::new("/bin/true"));
    d.wait_for("marker exec", WAIT, |v| {
        kind_is(v, "exec") && pid_is(v, marker)
    });
    api.add(&pod);
    let ev = d.wait_for("server name", WAIT, |v| {
        kind_is(v, "tls_sni") && pid_is(v, curl)
    });
    assert_eq!(ev["server_name"], "api.nhiwatch.test", "{ev}");
    assert_identity(&ev, &pod);
    let ev = d.wait_for("TLS data", WAIT, |v| {
        kind_is(v, "tls_data") && pid_is(v, curl)
    });
    assert_identity(&ev, &pod);
    d.stop();
}
