//! Fleet-wide detection against a real redis-server: three `nhiwatch replay` runs with three node
//! names share one store; each cross-node finding comes out exactly once, its benign twin never;
//! TLS with a client certificate, a wrong password, and no marker secret in the store.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use nhiwatch_e2e::{
    free_port, make_cert, make_client_cert, nhiwatch_bin, unique, wait_until, TempDir, Value,
};

/// A redis-server on a loopback port with its own directory, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    /// Plain-text port for redis-cli when the server also listens with TLS.
    cli_port: u16,
}

impl Redis {
    fn start(dir: &Path, extra: &[String]) -> Redis {
        let port = free_port();
        let mut r = Redis {
            child: None,
            port,
            dir: dir.to_owned(),
            args: extra.to_vec(),
            cli_port: port,
        };
        r.spawn();
        r
    }

    fn start_tls(dir: &Path) -> Redis {
        let (ca, cert, key) = make_cert(dir);
        let tls = free_port();
        let plain = free_port();
        let mut r = Redis {
            child: None,
            port: tls,
            dir: dir.to_owned(),
            args: vec![
                "--port".into(),
                plain.to_string(),
                "--tls-port".into(),
                tls.to_string(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                ca.display().to_string(),
                "--tls-auth-clients".into(),
                "yes".into(),
            ],
            cli_port: plain,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        if !self.args.iter().any(|a| a == "--tls-port") {
            cmd.args(["--port", &self.port.to_string()]);
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            cmd.spawn()
                .expect("redis-server (cargo xtask deps installs it)"),
        );
        wait_until(
            "redis-server answering PING",
            Duration::from_secs(20),
            || {
                // With requirepass it answers, but refuses.
                let a = self.cli(&["PING"]);
                a.trim() == "PONG" || a.contains("NOAUTH")
            },
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.cli_port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        // Error replies (NOAUTH) go to stderr.
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Every key under `prefix` and its whole value, as redis-cli prints them.
    fn dump(&self, prefix: &str) -> String {
        let keys = self.cli(&["--scan", "--pattern", &format!("{prefix}:*")]);
        let mut all = String::new();
        for k in keys.lines().filter(|k| !k.is_empty()) {
            all.push_str(k);
            all.push('\n');
            let t = self.cli(&["TYPE", k]);
            let v = match t.trim() {
                "hash" => self.cli(&["HGETALL", k]),
                _ => self.cli(&["GET", k]),
            };
            all.push_str(&v);
        }
        all
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

const MARKER: &str = "sk-live-FLEETMARKER-4c1e9d2b";

const RULES: &str = r#"
apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {name: notes}
spec:
  classification: phi
  match: [{host: notes.fleet.test, paths: ["/mh/*"]}]
---
apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {name: fitness}
spec:
  classification: pii
  match: [{host: api.fitness.fleet.test}]
---
apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {name: records}
spec:
  classification: phi
  match: [{host: records.fleet.test}]
---
apiVersion: nhiwatch.dev/v1
kind: AccessContract
metadata: {name: fleet-sync}
spec:
  selectors: ["k8s:ns:fleet-a"]
  owner: team@example.org
  purpose: Sync fitness data into records
  allow:
    dataSources: [fitness, records]
    combinations: [[fitness, records]]
    destinations: [{host: api.fitness.fleet.test}, {host: records.fleet.test}, {host: notes.fleet.test}]
  credentials: {kinds: [api-key, bearer], shared: forbidden}
  limits:
    - {dataSource: fitness, requestsPerMinute: 100}
    - {dataSource: records, bytesPerHour: 10000}
"#;

/// One API call observation as `nhiwatch record` writes it; the marker sits in every field a
/// careless store layout could copy (pod, exe, path, labels).
fn call(
    sec: u32,
    ns: &str,
    sa: &str,
    node: &str,
    host: &str,
    path: &str,
    fp: Option<&str>,
) -> String {
    let creds = fp.map_or(String::new(), |fp| {
        format!(r#","credentials":[{{"kind":"api_key","fingerprint":"{fp}","vendor":"acme"}}]"#)
    });
    format!(
        r#"{{"time":"2026-11-24T10:00:{sec:02}.000000000Z","identity":{{"id":"spiffe://fleet.test/ns/{ns}/sa/{sa}","kind":"kubernetes","namespace":"{ns}","service_account":"{sa}","pod":"{sa}-{MARKER}","node":"{node}"}},"labels":{{"token":"{MARKER}"}},"pid":7,"exe":"/app/{MARKER}","kind":"api_call","host":"{host}","method":"GET","path":"{path}?k={MARKER}","status":200,"request_bytes":100,"response_bytes":1000{creds}}}"#
    )
}

/// The recording of one node: the three cross-node episodes and their benign twins.
fn recording(node: &str) -> String {
    let mut lines = Vec::new();
    let fit = "api.fitness.fleet.test";
    // Replicated volume: 40 calls per node (limit 100 a minute; 120 over three nodes). Twin: 30.
    for i in 0..40 {
        lines.push(call(
            1 + i % 50,
            "fleet-a",
            "sync",
            node,
            fit,
            "/v1/steps",
            None,
        ));
    }
    for i in 0..30 {
        lines.push(call(
            1 + i % 50,
            "fleet-a",
            "sync-twin",
            node,
            fit,
            "/v1/steps",
            None,
        ));
    }
    // Replicated byte volume: 4 calls of 1,100 bytes per node (10,000 bytes an hour; 13,200
    // over three nodes). Twin: 3 calls, 9,900 over three nodes.
    for i in 0..4 {
        lines.push(call(
            2 + i,
            "fleet-a",
            "bulk",
            node,
            "records.fleet.test",
            "/r/2",
            None,
        ));
    }
    for i in 0..3 {
        lines.push(call(
            2 + i,
            "fleet-a",
            "bulk-twin",
            node,
            "records.fleet.test",
            "/r/2",
            None,
        ));
    }
    match node {
        "node-a" => {
            // Cross-replica combination: notes here, fitness on node-b. Twin: records + fitness.
            lines.push(call(
                51,
                "fleet-a",
                "combo",
                node,
                "notes.fleet.test",
                "/mh/1",
                None,
            ));
            lines.push(call(
                51,
                "fleet-a",
                "combo-twin",
                node,
                "records.fleet.test",
                "/r/1",
                None,
            ));
            // Shared key: alpha here, beta on node-b. Twin: gamma's key on node-a and node-c.
            lines.push(call(
                52,
                "fleet-b",
                "alpha",
                node,
                fit,
                "/v1/x",
                Some("hmac-sha256:aaaa0000aaaa0000aaaa0000aaaa0000"),
            ));
            lines.push(call(
                52,
                "fleet-b",
                "gamma",
                node,
                fit,
                "/v1/x",
                Some("hmac-sha256:cccc0000cccc0000cccc0000cccc0000"),
            ));
        }
        "node-b" => {
            lines.push(call(53, "fleet-a", "combo", node, fit, "/v1/steps", None));
            lines.push(call(
                53,
                "fleet-a",
                "combo-twin",
                node,
                fit,
                "/v1/steps",
                None,
            ));
            lines.push(call(
                54,
                "fleet-b",
                "beta",
                node,
                fit,
                "/v1/x",
                Some("hmac-sha256:aaaa0000aaaa0000aaaa0000aaaa0000"),
            ));
        }
        _ => {
            lines.push(call(
                55,
                "fleet-b",
                "gamma",
                node,
                fit,
                "/v1/x",
                Some("hmac-sha256:cccc0000cccc0000cccc0000cccc0000"),
            ));
        }
    }
    lines.sort();
    lines.join("\n") + "\n"
}

struct Setup {
    dir: TempDir,
    prefix: String,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let dir = TempDir::new(name);
        std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
        for n in ["node-a", "node-b", "node-c"] {
            std::fs::write(dir.path().join(format!("{n}.jsonl")), recording(n)).unwrap();
        }
        Setup {
            dir,
            prefix: unique("fleet").replace('-', "_"),
        }
    }

    fn config(&self, fleet: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{}.yaml", unique("cfg")));
        std::fs::write(
            &p,
            format!(
                "state_dir: {}\nrules: [{}]\nfleet:\n  prefix: {}\n  timeout: 2s\n{fleet}",
                self.dir.path().join("state").display(),
                self.dir.path().join("rules.yaml").display(),
                self.prefix
            ),
        )
        .unwrap();
        p
    }

    /// `nhiwatch replay` of one node's recording: (findings, stderr).
    fn replay(&self, cfg: &Path, node: &str) -> (Vec<Value>, String) {
        let out = Command::new(nhiwatch_bin())
            .args(["replay", "--config"])
            .arg(cfg)
            .arg(self.dir.path().join(format!("{node}.jsonl")))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "replay {node}: {stderr}");
        let findings = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (findings, stderr)
    }
}

/// The fleet detectors' findings (local findings claimed fleet-wide, NHI-001 and NHI-031,
/// name their nodes too: see `local_findings_every_node_raises_go_out_once_for_the_fleet`).
fn fleet_findings(all: &[Value]) -> Vec<&Value> {
    all.iter()
        .filter(|f| {
            f["evidence"]["nodes"]
                .as_array()
                .is_some_and(|n| !n.is_empty())
                && f["rule"]["id"] != "NHI-001"
                && f["rule"]["id"] != "NHI-031"
        })
        .collect()
}

/// Identity → how many NHI-001 findings name it.
fn ungoverned(all: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for f in all.iter().filter(|f| f["rule"]["id"] == "NHI-001") {
        *m.entry(f["identity"]["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    m
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn three_nodes_raise_each_cross_node_finding_once_and_never_the_twins() {
    let s = Setup::new("nhiwatch-e2e-fleet");
    let redis = Redis::start(s.dir.path(), &[]);
    let cfg = s.config(&format!("  url: redis://127.0.0.1:{}\n", redis.port));
    let mut all = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let (f, err) = s.replay(&cfg, node);
        assert!(!err.contains("did not take"), "{err}");
        all.extend(f);
    }
    let fleet = fleet_findings(&all);
    let text = serde_json::to_string_pretty(&fleet).unwrap();
    assert_eq!(fleet.len(), 4, "{text}");
    let by_rule =
        |id: &str| -> Vec<&&Value> { fleet.iter().filter(|f| f["rule"]["id"] == id).collect() };

    let (volume, bytes): (Vec<&&Value>, Vec<&&Value>) = by_rule("NHI-041")
        .into_iter()
        .partition(|f| f["evidence"]["metric"] == "requests");
    assert_eq!(volume.len(), 1, "{text}");
    // bytesPerHour over the fleet: the hour's bytes summed over the nodes.
    assert_eq!(bytes.len(), 1, "{text}");
    assert_eq!(
        bytes[0]["identity"]["id"],
        "spiffe://fleet.test/ns/fleet-a/sa/bulk"
    );
    assert_eq!(bytes[0]["evidence"]["metric"], "bytes");
    assert_eq!(bytes[0]["evidence"]["observed"], 13200.0);
    assert_eq!(bytes[0]["evidence"]["limit"], 10000.0);
    assert_eq!(bytes[0]["evidence"]["window_seconds"], 3600);
    assert_eq!(
        strs(&bytes[0]["evidence"]["nodes"]),
        ["node-a", "node-b", "node-c"]
    );
    assert_eq!(
        volume[0]["identity"]["id"],
        "spiffe://fleet.test/ns/fleet-a/sa/sync"
    );
    assert_eq!(
        strs(&volume[0]["evidence"]["nodes"]),
        ["node-a", "node-b", "node-c"]
    );
    assert_eq!(volume[0]["evidence"]["observed"], 120.0);
    assert_eq!(volume[0]["evidence"]["limit"], 100.0);

    let combo = by_rule("NHI-030");
    assert_eq!(combo.len(), 1, "{text}");
    assert_eq!(
        combo[0]["identity"]["id"],
        "spiffe://fleet.test/ns/fleet-a/sa/combo"
    );
    assert_eq!(strs(&combo[0]["evidence"]["nodes"]), ["node-a", "node-b"]);
    assert_eq!(
        strs(&combo[0]["evidence"]["data_sources"]),
        ["fitness", "notes"]
    );

    let shared = by_rule("NHI-050");
    assert_eq!(shared.len(), 1, "{text}");
    assert_eq!(
        strs(&shared[0]["evidence"]["identities"]),
        [
            "spiffe://fleet.test/ns/fleet-b/sa/alpha",
            "spiffe://fleet.test/ns/fleet-b/sa/beta"
        ]
    );
    assert_eq!(strs(&shared[0]["evidence"]["nodes"]), ["node-a", "node-b"]);
    assert!(!text.contains("twin") && !text.contains("gamma"), "{text}");
    // Local detection unchanged: node-a alone raises NHI-010 for `notes`.
    assert!(all
        .iter()
        .any(|f| f["rule"]["id"] == "NHI-010" && f["evidence"]["nodes"].is_null()));
    // Every node raises NHI-001 for an ungoverned identity it sees: once for the fleet (gamma
    // is on node-a and node-c).
    let b = "spiffe://fleet.test/ns/fleet-b/sa";
    assert_eq!(
        ungoverned(&all),
        [
            (format!("{b}/alpha"), 1),
            (format!("{b}/beta"), 1),
            (format!("{b}/gamma"), 1)
        ]
        .into_iter()
        .collect(),
        "{all:#?}"
    );

    // At-least-once: the same recordings again (a retry) double-count nothing and raise nothing.
    let key = format!("{}:w:{{spiffe://fleet.test/ns/fleet-a/sa/sync}}:", s.prefix);
    let keys = redis.cli(&["--scan", "--pattern", &format!("{key}*")]);
    let wkey = keys.lines().next().expect("the window key").to_owned();
    let before = redis.cli(&["HGETALL", &wkey]);
    for node in ["node-a", "node-b", "node-c"] {
        let (f, _) = s.replay(&cfg, node);
        assert!(fleet_findings(&f).is_empty(), "{f:?}");
        assert!(ungoverned(&f).is_empty(), "{f:?}");
    }
    assert_eq!(redis.cli(&["HGETALL", &wkey]), before);
    assert!(before.contains("\"fitness\":40"), "{before}");
    // Every key expires.
    for k in redis
        .cli(&["--scan", "--pattern", &format!("{}:*", s.prefix)])
        .lines()
    {
        let ttl: i64 = redis.cli(&["PTTL", k]).trim().parse().unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
    // Leak test: no marker secret in any key or value, nor the path.
    let dump = redis.dump(&s.prefix);
    assert!(dump.contains("node-a"), "{dump}");
    assert!(
        !dump.contains("FLEETMARKER") && !dump.contains("/v1/steps"),
        "{dump}"
    );
}

#[test]
fn fleet_inventory_names_every_node() {
    let s = Setup::new("nhiwatch-e2e-fleet-inv");
    let redis = Redis::start(s.dir.path(), &[]);
    let cfg = s.config(&format!("  url: redis://127.0.0.1:{}\n", redis.port));
    for node in ["node-a", "node-b", "node-c"] {
        s.replay(&cfg, node);
    }
    let out = Command::new(nhiwatch_bin())
        .args(["inventory", "--fleet", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sync = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["identity"] == "spiffe://fleet.test/ns/fleet-a/sa/sync")
        .unwrap_or_else(|| panic!("{rows:#}"));
    assert_eq!(strs(&sync["nodes"]), ["node-a", "node-b", "node-c"]);
    assert_eq!(sync["contract"], "fleet-sync");
    assert_eq!(sync["data_sources"]["fitness"], 120);
    // A draft contract from what an ungoverned identity did on every node (this host saw none of it).
    let out = Command::new(nhiwatch_bin())
        .args([
            "suggest",
            "--fleet",
            "spiffe://fleet.test/ns/fleet-b/sa/gamma",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let draft = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        draft.contains("fitness") && draft.contains("gamma"),
        "{draft}"
    );
}

#[test]
fn tls_with_a_client_certificate_and_a_wrong_password() {
    let s = Setup::new("nhiwatch-e2e-fleet-tls");
    let redis = Redis::start_tls(s.dir.path());
    let (cert, key) = make_client_cert(s.dir.path(), "nhiwatch-client");
    let ca = s.dir.path().join("ca.pem");
    let cfg = s.config(&format!(
        "  url: rediss://localhost:{}\n  tls: {{ca: {}, cert: {}, key: {}}}\n",
        redis.port,
        ca.display(),
        cert.display(),
        key.display()
    ));
    let mut all = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let (f, err) = s.replay(&cfg, node);
        assert!(!err.contains("did not take"), "{err}");
        all.extend(f);
    }
    assert_eq!(fleet_findings(&all).len(), 4, "{all:#?}");
    // Without the client certificate the store refuses; local findings still come out.
    let no_cert = s.config(&format!(
        "  url: rediss://localhost:{}\n  tls: {{ca: {}}}\n",
        redis.port,
        ca.display()
    ));
    let (f, err) = s.replay(&no_cert, "node-a");
    assert!(err.contains("did not take"), "{err}");
    assert!(f.iter().any(|f| f["rule"]["id"] == "NHI-010"), "{f:?}");
    drop(redis);

    // A password the store does not accept: a clear error naming the setting, local detection on.
    let dir = TempDir::new("nhiwatch-e2e-fleet-auth");
    let redis = Redis::start(
        dir.path(),
        &["--requirepass".into(), "right-horse-battery".into()],
    );
    let pw = s.dir.path().join("password");
    std::fs::write(&pw, "wrong-staple\n").unwrap();
    let cfg = s.config(&format!(
        "  url: redis://127.0.0.1:{}\n  password_file: {}\n",
        redis.port,
        pw.display()
    ));
    let (f, err) = s.replay(&cfg, "node-a");
    assert!(
        err.contains("WRONGPASS") && err.contains("fleet.password_file"),
        "{err}"
    );
    assert!(!err.contains("wrong-staple"), "{err}");
    assert!(f.iter().any(|f| f["rule"]["id"] == "NHI-010"), "{f:?}");
    // The findings the fleet would claim go out unclaimed, as without `fleet:`.
    assert_eq!(ungoverned(&f).len(), 2, "{f:?}");
}

/// The README's minimal ACL (Fleet, "Pointing it at your Redis or Valkey"), created from the
/// README's own line: three nodes, the inventory and a draft contract work with that user alone;
/// a wrong user, and a user lacking a command, are named clearly while local detection goes on.
#[test]
fn the_documented_acl_user_is_all_the_fleet_needs() {
    let s = Setup::new("nhiwatch-e2e-fleet-acl");
    let redis = Redis::start(s.dir.path(), &[]);
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER nhiwatch "))
        .expect("README's ACL line");
    let acl = |user: &str, drop: &str| {
        let l = line
            .replace("SETUSER nhiwatch ", &format!("SETUSER {user} "))
            .replace("~prod-eu1:*", &format!("~{}:*", s.prefix))
            .replace(">PASSWORD", ">acl-horse-staple");
        let args: Vec<&str> = l.split_whitespace().filter(|a| *a != drop).collect();
        assert_eq!(redis.cli(&args).trim(), "OK", "{l}");
    };
    acl("nhiwatch", "");
    let pw = s.dir.path().join("acl-password");
    std::fs::write(&pw, "acl-horse-staple\n").unwrap();
    let with_user = |user: &str| {
        s.config(&format!(
            "  url: redis://127.0.0.1:{}\n  username: {user}\n  password_file: {}\n",
            redis.port,
            pw.display()
        ))
    };
    let cfg = with_user("nhiwatch");
    let mut all = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let (f, err) = s.replay(&cfg, node);
        assert!(
            !err.contains("did not take") && !err.contains("NOPERM"),
            "{err}"
        );
        all.extend(f);
    }
    assert_eq!(fleet_findings(&all).len(), 4, "{all:#?}");
    assert_eq!(ungoverned(&all).values().sum::<usize>(), 3, "{all:#?}");
    for args in [
        vec!["inventory", "--fleet", "--json"],
        vec![
            "suggest",
            "--fleet",
            "spiffe://fleet.test/ns/fleet-b/sa/gamma",
        ],
    ] {
        let out = Command::new(nhiwatch_bin())
            .args(&args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Everything it wrote is under the user's prefix, so nothing else was reachable.
    assert!(!redis.dump(&s.prefix).is_empty());

    // A user the store does not know: named, local detection (and the unclaimed NHI-001) on.
    let (f, err) = s.replay(&with_user("nobody"), "node-a");
    assert!(
        err.contains("WRONGPASS") && err.contains("fleet.username"),
        "{err}"
    );
    assert!(!err.contains("acl-horse-staple"), "{err}");
    assert!(f.iter().any(|f| f["rule"]["id"] == "NHI-010"), "{f:?}");
    assert_eq!(ungoverned(&f).len(), 2, "{f:?}");

    // A user missing one of the documented commands: the refusal names the ACL section.
    acl("nhiwatch-lacking", "+hgetall");
    let (f, err) = s.replay(&with_user("nhiwatch-lacking"), "node-a");
    assert!(err.contains("NOPERM") && err.contains("README"), "{err}");
    assert!(f.iter().any(|f| f["rule"]["id"] == "NHI-010"), "{f:?}");
}

// ---- Faults, on the fleet stage itself (three nodes in this process, the real store) ----------

use std::sync::Arc;

use nhiwatch::{
    detect::compiled::Compiled,
    events::observation::Observation,
    fleet::{telemetry::FleetTelemetry, worker, Fleet, FleetConfig},
    metrics::Registry,
};

fn rules(s: &Setup) -> Arc<Compiled> {
    let set = nhiwatch::contracts::load_paths(&[s.dir.path().join("rules.yaml")]).unwrap();
    Arc::new(Compiled::new(set))
}

fn fleet_cfg(s: &Setup, port: u16, node: &str) -> FleetConfig {
    let cfg = FleetConfig {
        url: Some(format!("redis://127.0.0.1:{port}")),
        node: Some(node.into()),
        prefix: s.prefix.clone(),
        timeout: Duration::from_millis(300),
        flush_interval: Duration::from_millis(100),
        ..FleetConfig::default()
    };
    cfg.validate().unwrap();
    cfg
}

fn node(s: &Setup, port: u16, name: &str, key: &str) -> (Fleet, FleetTelemetry) {
    let t = FleetTelemetry::register(&Registry::new());
    let f = Fleet::new(
        &fleet_cfg(s, port, name),
        rules(s),
        Duration::from_secs(600),
        name.into(),
        Some(key.into()),
        t.clone(),
    )
    .unwrap();
    (f, t)
}

fn feed(f: &mut Fleet, node: &str) {
    for line in recording(node).lines() {
        let o: Observation = serde_json::from_str(line).unwrap();
        f.add(&o);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Flushes `f` until the store takes its counts (a failed connect waits `flush_interval`).
fn flush_until_up(
    rt: &tokio::runtime::Runtime,
    f: &mut Fleet,
    out: &mut Vec<nhiwatch::detect::finding::Finding>,
) {
    wait_until(
        "the fleet store to take the node's counts",
        Duration::from_secs(20),
        || {
            rt.block_on(f.flush(out));
            f.is_up() && f.pending() == 0
        },
    );
}

#[test]
fn store_stopped_restarted_and_emptied_loses_and_duplicates_nothing() {
    let s = Setup::new("nhiwatch-e2e-fleet-down");
    // Persistent, so that the first restart keeps what the store held.
    let mut redis = Redis::start(
        s.dir.path(),
        &[
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            "always".into(),
        ],
    );
    let rt = runtime();
    let (mut a, ta) = node(&s, redis.port, "node-a", "k1");
    let (mut b, tb) = node(&s, redis.port, "node-b", "k1");
    let (mut c, _) = node(&s, redis.port, "node-c", "k1");
    let mut out = Vec::new();
    feed(&mut a, "node-a");
    flush_until_up(&rt, &mut a, &mut out);
    assert_eq!(ta.up.get(), 1);

    // The store goes away: the other nodes keep their counts, report down, raise nothing.
    redis.stop();
    feed(&mut b, "node-b");
    feed(&mut c, "node-c");
    rt.block_on(b.flush(&mut out));
    rt.block_on(c.flush(&mut out));
    assert!(!b.is_up() && b.pending() > 0 && c.pending() > 0);
    assert_eq!(tb.up.get(), 0);
    assert!(tb.stage.errors.get() > 0);
    assert!(out.is_empty(), "{out:?}");

    // Back with its data: the waiting counts go in, each episode is raised once.
    redis.spawn();
    for f in [&mut a, &mut b, &mut c] {
        flush_until_up(&rt, f, &mut out);
    }
    let rules_of = |out: &[nhiwatch::detect::finding::Finding]| {
        let mut r: Vec<String> = out.iter().map(|f| f.rule.id.clone()).collect();
        r.sort();
        r
    };
    assert_eq!(
        rules_of(&out),
        ["NHI-030", "NHI-041", "NHI-041", "NHI-050"],
        "{out:#?}"
    );
    let volume = out
        .iter()
        .find(|f| f.rule.id == "NHI-041" && f.evidence.metric.as_deref() == Some("requests"))
        .unwrap();
    assert_eq!(volume.evidence.nodes, ["node-a", "node-b", "node-c"]);

    // Restarted empty: every node writes its windows and claims again; nothing is raised twice.
    redis.stop();
    let _ = std::fs::remove_dir_all(s.dir.path().join("appendonlydir"));
    redis.spawn();
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0");
    out.clear();
    for f in [&mut c, &mut a, &mut b] {
        // A node writes again only once it sees the store's new incarnation.
        rt.block_on(f.flush(&mut out));
        flush_until_up(&rt, f, &mut out);
    }
    assert!(
        out.is_empty(),
        "raised again after the store was emptied: {out:#?}"
    );
    let keys = redis.cli(&[
        "--scan",
        "--pattern",
        &format!(
            "{}:w:{{spiffe://fleet.test/ns/fleet-a/sa/sync}}:*",
            s.prefix
        ),
    ]);
    let w = keys.lines().next().expect("the window written again");
    let shares = redis.cli(&["HKEYS", w]);
    for n in ["node-a", "node-b", "node-c"] {
        assert!(shares.contains(n), "{shares}");
    }
}

/// A node with another fingerprint key writes nothing (its fingerprints would never match) and
/// is reported: a log line, `nhiwatch_fleet_key_mismatch`, and an NHI-092 finding for the SIEM.
#[test]
fn a_node_with_another_fingerprint_key_is_reported_and_writes_nothing() {
    let s = Setup::new("nhiwatch-e2e-fleet-key");
    let redis = Redis::start(s.dir.path(), &[]);
    let rt = runtime();
    // What the daemon gives the fleet: the HMAC of a fixed label under its key (the fleet
    // never holds the key itself).
    let check = |d: char| format!("hmac-sha256:{}", d.to_string().repeat(64));
    let (one, two, three) = (check('1'), check('2'), check('3'));
    let (mut a, ta) = node(&s, redis.port, "node-a", &one);
    let (mut b, tb) = node(&s, redis.port, "node-b", &two);
    let mut out = Vec::new();
    feed(&mut a, "node-a");
    feed(&mut b, "node-b");
    flush_until_up(&rt, &mut a, &mut out);
    rt.block_on(b.flush(&mut out));
    assert_eq!(ta.key_mismatch.get(), 0);
    assert_eq!(tb.key_mismatch.get(), 1);
    assert!(tb.withheld.get() > 0);
    let dump = redis.dump(&s.prefix);
    assert!(
        dump.contains("node-a") && !dump.contains("node-b|"),
        "{dump}"
    );
    // The operator sees it in the SIEM: one NHI-092 through the sinks, naming the node and both
    // key ids, never a key.
    assert_eq!(out.len(), 1, "{out:#?}");
    let f = &out[0];
    assert_eq!(f.rule.id, "NHI-092");
    assert_eq!(f.evidence.nodes, ["node-b"]);
    let (mine, theirs) = (
        f.evidence.key_id.clone().unwrap(),
        f.evidence.fleet_key_id.clone().unwrap(),
    );
    assert!(
        mine.len() == 16 && theirs.len() == 16 && mine != theirs,
        "{f:#?}"
    );
    assert!(
        f.summary.contains("node-b") && f.summary.contains(&mine) && f.summary.contains(&theirs),
        "{}",
        f.summary
    );
    let text = serde_json::to_string(f).unwrap();
    // The ids are short prefixes of the check values, not the values.
    assert_eq!(
        (mine.as_str(), theirs.as_str()),
        ("2222222222222222", "1111111111111111")
    );
    assert!(
        !text.contains(&one[12..]) && !text.contains(&two[12..]),
        "{text}"
    );
    // Once per node and key id: the next flushes, and a restarted node-b, stay quiet.
    out.clear();
    rt.block_on(b.flush(&mut out));
    let (mut b2, tb2) = node(&s, redis.port, "node-b", &two);
    feed(&mut b2, "node-b");
    rt.block_on(b2.flush(&mut out));
    assert_eq!(tb2.key_mismatch.get(), 1);
    assert!(out.is_empty(), "{out:#?}");
    // Another node with yet another key gets its own.
    let (mut c, _) = node(&s, redis.port, "node-c", &three);
    feed(&mut c, "node-c");
    rt.block_on(c.flush(&mut out));
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].evidence.nodes, ["node-c"]);
}

#[test]
fn a_slow_store_never_makes_the_pipeline_wait() {
    let s = Setup::new("nhiwatch-e2e-fleet-slow");
    let redis = Redis::start(
        s.dir.path(),
        &["--enable-debug-command".into(), "yes".into()],
    );
    let (f, t) = node(&s, redis.port, "node-a", "k1");
    let mut h = worker::spawn(f, 1024, Duration::from_millis(100)).unwrap();
    let obs: Vec<Observation> = recording("node-a")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    wait_until("fleet up", Duration::from_secs(10), || t.up.get() == 1);
    // What one observe costs: no pacing, the worker keeps up or the queue fills; either way
    // the hand-off must not wait.
    // At least `n` hand-offs, and on until `done` (bounded: 5 s).
    let timed = |n: usize, done: &dyn Fn() -> bool| -> Vec<Duration> {
        let mut d = Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        let mut i = 0;
        while i < n || (!done() && std::time::Instant::now() < end) {
            let t0 = std::time::Instant::now();
            h.observe(&obs[i % obs.len()]);
            d.push(t0.elapsed());
            i += 1;
        }
        d.sort();
        d
    };
    let fast = timed(1000, &|| true);
    // The store asleep for 5 s; timing starts only once the worker has proof it is blocked
    // (a store command of its own timed out since the sleep began), not after a guessed pause.
    let errors_before = t.stage.errors.get();
    let full_before = t.buffer_full.get();
    let port = redis.cli_port.to_string();
    let sleeper = std::thread::spawn(move || {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port, "DEBUG", "SLEEP", "5"])
            .output()
            .unwrap()
    });
    wait_until(
        "the fleet worker to see the sleeping store time out",
        Duration::from_secs(4),
        || t.stage.errors.get() > errors_before && t.up.get() == 0,
    );
    assert!(
        !sleeper.is_finished(),
        "DEBUG SLEEP ended before the timing began"
    );
    // Until the queue overflowed: the worker, stuck on the store, stopped taking observations.
    let slow = timed(2000, &|| t.buffer_full.get() > full_before);
    let p99 = |d: &[Duration]| d[d.len() * 99 / 100];
    eprintln!(
        "observe p99: {:?} with the store answering, {:?} while it sleeps (max {:?})",
        p99(&fast),
        p99(&slow),
        slow.last().unwrap()
    );
    assert!(
        p99(&slow) < Duration::from_millis(1),
        "p99 {:?}",
        p99(&slow)
    );
    assert!(*slow.last().unwrap() < Duration::from_millis(50));
    // The worker was stuck on the store: its queue filled and the overflow was counted, not waited for.
    assert!(
        t.buffer_full.get() > full_before,
        "the queue never filled while the store slept"
    );
    // And the whole timed run fell inside the sleep: the store answered nothing meanwhile.
    assert!(
        !sleeper.is_finished(),
        "DEBUG SLEEP ended during the timing: the verdict would not be about a blocked store"
    );
    sleeper.join().unwrap();
    wait_until("fleet up again", Duration::from_secs(15), || {
        t.up.get() == 1
    });
    let mut out = Vec::new();
    h.stop(&mut out);
}

/// NHI-001 and NHI-031 come from each node's own engine (what one node sees is the whole
/// evidence), so every node that sees the identity raises them: with `fleet:` one finding per
/// episode goes out, naming every node that reported it. Three real engines, three fleet nodes.
#[test]
fn local_findings_every_node_raises_go_out_once_for_the_fleet() {
    use nhiwatch::detect::{finding::Finding, DetectConfig, Engine};
    let s = Setup::new("nhiwatch-e2e-fleet-dedup");
    let redis = Redis::start(s.dir.path(), &[]);
    let rt = runtime();
    let mut cfg = DetectConfig::default();
    // Judge data-source pairs from the first sighting: NHI-031 at once.
    cfg.combination.learning = Duration::ZERO;
    let mut nodes: Vec<(Fleet, FleetTelemetry)> = Vec::new();
    for (i, name) in ["node-a", "node-b", "node-c"].into_iter().enumerate() {
        let set = nhiwatch::contracts::load_paths(&[s.dir.path().join("rules.yaml")]).unwrap();
        let mut engine = Engine::new(set, cfg.clone());
        let (mut fleet, t) = node(&s, redis.port, name, "k1");
        let sec = 10 + i as u32;
        let mut found = Vec::new();
        for line in [
            // Ungoverned (no contract for fleet-c) and active on every node.
            call(
                sec,
                "fleet-c",
                "loner",
                name,
                "records.fleet.test",
                "/r/1",
                None,
            ),
            // Governed, a new pair of data sources on every node.
            call(
                sec,
                "fleet-a",
                "mixer",
                name,
                "api.fitness.fleet.test",
                "/v1/steps",
                None,
            ),
            call(
                sec + 1,
                "fleet-a",
                "mixer",
                name,
                "records.fleet.test",
                "/r/1",
                None,
            ),
        ] {
            let o: Observation = serde_json::from_str(&line).unwrap();
            engine.observe(&o, &mut found);
            fleet.add(&o);
        }
        for f in found {
            if nhiwatch::fleet::deduped_fleet_wide(&f) {
                fleet.defer(f);
            }
        }
        nodes.push((fleet, t));
    }
    let mut out = Vec::new();
    // Each node claims at its flush; the winner raises at its next, naming every reporter.
    for (f, _) in nodes.iter_mut() {
        flush_until_up(&rt, f, &mut out);
    }
    for (f, _) in nodes.iter_mut() {
        rt.block_on(f.flush_all(&mut out));
    }
    let deduped: Vec<Finding> = out
        .iter()
        .filter(|f| f.rule.id == "NHI-001" || f.rule.id == "NHI-031")
        .cloned()
        .collect();
    let ids: Vec<(&str, &str)> = deduped
        .iter()
        .map(|f| (f.rule.id.as_str(), f.identity.id.as_str()))
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "one NHI-001 and one NHI-031 for the fleet: {deduped:#?}"
    );
    let one = |rule: &str, sa: &str| {
        let f = deduped
            .iter()
            .find(|f| f.rule.id == rule)
            .unwrap_or_else(|| panic!("no {rule}: {deduped:#?}"));
        assert!(f.identity.id.ends_with(sa), "{f:#?}");
        assert_eq!(f.evidence.nodes, ["node-a", "node-b", "node-c"], "{f:#?}");
    };
    one("NHI-001", "/fleet-c/sa/loner");
    one("NHI-031", "/fleet-a/sa/mixer");
    // Once per episode: the same findings again (a node restarted, a repeat) stay quiet.
    out.clear();
    let (f, _) = &mut nodes[0];
    for d in &deduped {
        f.defer(d.clone());
    }
    rt.block_on(f.flush_all(&mut out));
    assert!(out.is_empty(), "{out:#?}");
    // The store holds who reported, never more.
    let dump = redis.dump(&s.prefix);
    assert!(!dump.contains("FLEETMARKER"), "{dump}");
}

// ---- The daemon with real probes ---------------------------------------------------------------

/// `nhiwatch run` with `fleet:` writes what its probes see under its node name; killed with
/// SIGKILL and started again on the same state, it rejoins: the store answers, writes resume.
#[test]
fn a_daemon_killed_with_sigkill_rejoins_the_fleet() {
    use nhiwatch_e2e::{config_with, Daemon};
    let s = Setup::new("nhiwatch-e2e-fleet-live");
    let redis = Redis::start(s.dir.path(), &[]);
    let node = unique("live-node");
    let state = s.dir.path().join("daemon-state");
    let yaml = format!(
        "{}fleet:\n  url: redis://127.0.0.1:{}\n  node: {node}\n  prefix: {}\n  flush_interval: 200ms\n  timeout: 500ms\n",
        config_with(&[s.dir.path().join("secret").display().to_string()], ""),
        redis.port,
        s.prefix
    );
    let written = |d: &Daemon| d.metric_sum("nhiwatch_fleet_commands_total", &["op=\"write\""]);
    let inventory_has_node = || {
        let keys = redis.cli(&["--scan", "--pattern", &format!("{}:inv:*", s.prefix)]);
        keys.lines().any(|k| {
            redis
                .cli(&["HKEYS", k])
                .lines()
                .any(|f| f.starts_with(&format!("{node}|")))
        })
    };
    std::fs::write(s.dir.path().join("secret"), "not really a secret\n").unwrap();
    let d = Daemon::start_with_state(&yaml, Some(&state));
    wait_until("the daemon's fleet writes", Duration::from_secs(30), || {
        let _ = Command::new("true").status();
        d.metric_sum("nhiwatch_fleet_up", &[]) == 1.0 && written(&d) > 0.0 && inventory_has_node()
    });
    // The daemon path of a local finding the fleet claims: `cat` reading the watched secret is
    // an ungoverned identity (no rules here); its NHI-001 goes from the findings stage to the
    // fleet worker, is claimed in the store and comes back naming this node.
    let secret = s.dir.path().join("secret");
    let cat = nhiwatch_e2e::spawn_pid(Command::new("cat").arg(&secret));
    let f = d.wait_for(
        "NHI-001 for cat, claimed fleet-wide",
        Duration::from_secs(30),
        |e| {
            e["kind"] == "finding"
                && e["rule"]["id"] == "NHI-001"
                && e["identity"]["exe"]
                    .as_str()
                    .is_some_and(|x| x.ends_with("/cat"))
                && e["evidence"]["nodes"].as_array().is_some()
        },
    );
    assert_eq!(f["evidence"]["nodes"][0], node.as_str(), "{f}");
    let claimed = redis.cli(&["--scan", "--pattern", &format!("{}:nodes:*", s.prefix)]);
    assert!(
        !claimed.trim().is_empty(),
        "no claim in the store (cat pid {cat})"
    );
    // SIGKILL: no stop, no last flush.
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
    drop(d);
    let d = Daemon::start_with_state(&yaml, Some(&state));
    wait_until(
        "the restarted daemon's fleet writes",
        Duration::from_secs(30),
        || {
            let _ = Command::new("true").status();
            d.metric_sum("nhiwatch_fleet_up", &[]) == 1.0 && written(&d) > 0.0
        },
    );
    assert_eq!(d.metric_sum("nhiwatch_fleet_key_mismatch", &[]), 0.0);
    let (_, stderr) = d.stop();
    assert!(stderr.contains("fleet detection on"), "{stderr}");
}

// ---- Cost (BENCHMARKS.md, "Fleet"): `-- --ignored fleet_cost --nocapture` -----------------------

fn info_field(redis: &Redis, section: &str, field: &str) -> f64 {
    redis
        .cli(&["INFO", section])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One node at 1,000 and 10,000 API calls/s (50 identities, two data sources and one
/// credential each), flushed once a second as the daemon does: what it sends the store, what the
/// store spends on it, what the node spends.
#[test]
#[ignore]
fn fleet_cost() {
    let s = Setup::new("nhiwatch-e2e-fleet-cost");
    let redis = Redis::start(s.dir.path(), &[]);
    let rt = runtime();
    let secs = 10u32;
    for rate in [1_000u32, 10_000] {
        let (mut f, _) = node(&s, redis.port, "node-a", "k1");
        let mut obs = Vec::new();
        for i in 0..rate * secs {
            let id = i % 50;
            let host = if i % 2 == 0 {
                "api.fitness.fleet.test"
            } else {
                "records.fleet.test"
            };
            let line = call(
                0,
                "fleet-a",
                &format!("svc-{id}"),
                "node-a",
                host,
                "/v1/x",
                Some(&format!("hmac-sha256:{id:032x}")),
            );
            let mut o: Observation = serde_json::from_str(&line).unwrap();
            // Spread over `secs` seconds at `rate`.
            o.time += i64::from(i) * 1_000_000_000 / i64::from(rate);
            obs.push(o);
        }
        let (c0, i0, o0, cpu0) = (
            info_field(&redis, "stats", "total_commands_processed"),
            info_field(&redis, "stats", "total_net_input_bytes"),
            info_field(&redis, "stats", "total_net_output_bytes"),
            info_field(&redis, "cpu", "used_cpu_user") + info_field(&redis, "cpu", "used_cpu_sys"),
        );
        let mut add = Duration::ZERO;
        let mut flush = Duration::ZERO;
        let mut out = Vec::new();
        let per_second = rate as usize;
        for chunk in obs.chunks(per_second) {
            let t0 = std::time::Instant::now();
            for o in chunk {
                f.add(o);
            }
            add += t0.elapsed();
            let t0 = std::time::Instant::now();
            rt.block_on(f.flush(&mut out));
            flush += t0.elapsed();
        }
        let s_ = f64::from(secs);
        let (c1, i1, o1, cpu1) = (
            info_field(&redis, "stats", "total_commands_processed"),
            info_field(&redis, "stats", "total_net_input_bytes"),
            info_field(&redis, "stats", "total_net_output_bytes"),
            info_field(&redis, "cpu", "used_cpu_user") + info_field(&redis, "cpu", "used_cpu_sys"),
        );
        let store_cpu = (cpu1 - cpu0) / s_;
        // For `cargo xtask bench --only fleet` (BENCHMARKS.md, section 7).
        println!(
            "fleet_cost rate={rate} commands={:.0} bytes_in={:.0} bytes_out={:.0} add_us={:.2} flush_ms={:.1} store_cpu={:.5}",
            (c1 - c0) / s_,
            (i1 - i0) / s_,
            (o1 - o0) / s_,
            add.as_secs_f64() * 1e6 / f64::from(rate * secs),
            flush.as_secs_f64() * 1e3 / s_,
            store_cpu
        );
        println!(
            "fleet cost at {rate} calls/s: {:.0} commands/s, {:.0} bytes/s to the store, {:.0} bytes/s back; \
             node: {:.2} µs per observation added, {:.1} ms per 1 s flush; store CPU {:.4} s/s ({:.0} such nodes per core)",
            (c1 - c0) / s_,
            (i1 - i0) / s_,
            (o1 - o0) / s_,
            add.as_secs_f64() * 1e6 / f64::from(rate * secs),
            flush.as_secs_f64() * 1e3 / s_,
            store_cpu,
            1.0 / store_cpu.max(1e-9)
        );
    }
}

/// The daemon's CPU time so far (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the executable name's closing parenthesis: field 3 onwards; utime and stime are 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / ticks
}

/// Alert latency for local findings and the daemon's CPU with `fleet:` off and on (a live
/// daemon, real probes): 1,000 watched files opened once each (one NHI-020 each), at about
/// 300/s; the daemon's own `nhiwatch_pipeline_latency_seconds{stage="finding"}` quantiles and
/// its CPU time over the run. For `cargo xtask bench --only fleet` (BENCHMARKS.md, section 7).
#[test]
#[ignore]
fn fleet_latency() {
    use nhiwatch_e2e::{config_with, Daemon};
    let s = Setup::new("nhiwatch-e2e-fleet-latency");
    let redis = Redis::start(s.dir.path(), &[]);
    let n = 1000;
    for mode in ["off", "on"] {
        let dir = s.dir.path().join(format!("secrets-{mode}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            std::fs::write(dir.join(format!("s{i}")), "x").unwrap();
        }
        let mut yaml = config_with(&[format!("{}/", dir.display())], "");
        if mode == "on" {
            yaml.push_str(&format!(
                "fleet:\n  url: redis://127.0.0.1:{}\n  node: bench-node\n  prefix: {}\n",
                redis.port, s.prefix
            ));
        }
        let d = Daemon::start(&yaml);
        if mode == "on" {
            wait_until("fleet up", Duration::from_secs(30), || {
                d.metric_sum("nhiwatch_fleet_up", &[]) == 1.0
            });
        }
        let findings = || {
            d.metric_sum(
                "nhiwatch_pipeline_latency_seconds_count",
                &["stage=\"finding\""],
            )
        };
        let before = findings();
        let (cpu0, t0) = (cpu_seconds(d.pid()), std::time::Instant::now());
        for i in 0..n {
            let _ = std::fs::read(dir.join(format!("s{i}")));
            // Pacing for a steady rate (not a wait for a condition).
            std::thread::sleep(Duration::from_micros(3_300));
        }
        // Until the count stops moving (each poll sees the last one's count again).
        let mut last = -1.0;
        wait_until("the findings judged", Duration::from_secs(60), || {
            let now = findings();
            let done = now > before && now == last;
            last = now;
            done
        });
        let (cpu, wall) = (cpu_seconds(d.pid()) - cpu0, t0.elapsed().as_secs_f64());
        let q = |p: &str| {
            1e3 * d.metric_sum(
                "nhiwatch_pipeline_latency_seconds",
                &["stage=\"finding\"", &format!("quantile=\"{p}\"")],
            )
        };
        println!(
            "fleet_latency fleet={mode} findings={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} cpu_s={cpu:.3} wall_s={wall:.2} cpu_pct={:.2}",
            findings() - before,
            q("0.5"),
            q("0.99"),
            q("0.999"),
            100.0 * cpu / wall
        );
        d.stop();
    }
}

// ---- Fleet baseline (NHI-040) ----------------------------------------------------------------

/// `n` calls to `records` by `sa` on `node` in minute `minute` (a `fleet.window` each).
fn minute_calls(minute: u32, n: u32, sa: &str, node: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            call(
                i % 60,
                "fleet-a",
                sa,
                node,
                "records.fleet.test",
                "/r/1",
                None,
            )
            .replace("T10:00:", &format!("T10:{minute:02}:"))
        })
        .collect()
}

/// 5 calls to `fitness` by `sa` on `node` in minute `minute` moving `total` bytes in all.
fn minute_bytes(minute: u32, total: u32, sa: &str, node: &str) -> Vec<String> {
    (0..5)
        .map(|i| {
            call(
                i * 10,
                "fleet-a",
                sa,
                node,
                "api.fitness.fleet.test",
                "/v1/steps",
                None,
            )
            .replace("T10:00:", &format!("T10:{minute:02}:"))
            .replace(
                "\"response_bytes\":1000",
                &format!("\"response_bytes\":{}", total / 5 - 100),
            )
        })
        .collect()
}

/// A replicated workload whose replicas each stay under their node's baseline while the
/// identity as a whole triples its usual volume: one fleet NHI-040; its twin, doubling, none.
/// The same in bytes: replicas behind a balancer (node-a and node-b take turns, their sum is
/// steady) each stay within their own noisy baseline while the identity's bytes more than
/// double: one fleet NHI-040 on bytes; its twin, at its usual level, none.
#[test]
fn a_replicated_volume_spike_is_judged_against_the_fleets_baseline() {
    let s = Setup::new("nhiwatch-e2e-fleet-spike");
    let redis = Redis::start(s.dir.path(), &[]);
    let cfg = s.config(&format!(
        "  url: redis://127.0.0.1:{}\ndetectors:\n  volume: {{warmup: 3, history: 10, min_requests: 10}}\n",
        redis.port
    ));
    let mut all = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let mut lines = Vec::new();
        for minute in 0..6 {
            lines.extend(minute_calls(minute, 5, "replica", node));
            lines.extend(minute_calls(minute, 5, "replica-twin", node));
        }
        // Each node's 19 stays at its own threshold (5 + 6·√5 ≈ 19); the fleet's 57 is not.
        lines.extend(minute_calls(6, 19, "replica", node));
        lines.extend(minute_calls(6, 10, "replica-twin", node));
        // Bytes (MB): node-a 4 and 8 by turns, node-b the other way round, node-c 6: the
        // fleet moves 18 MB a minute. Then node-a and node-b 20 each (within their own noisy
        // baselines, 6 + 6·1.48·2 ≈ 23.8), node-c its usual: 46 MB for the fleet, above its
        // threshold of 18 + 6·1.8 = 28.8 (two nodes' 40 stay under theirs, 12 + 6·1.2 = 19.2,
        // as each node's 20 is above it: the third node's replay raises it, naming all three).
        for minute in 0..6 {
            let (a, b) = if minute % 2 == 0 {
                (4_000_000, 8_000_000)
            } else {
                (8_000_000, 4_000_000)
            };
            let mine = match node {
                "node-a" => a,
                "node-b" => b,
                _ => 6_000_000,
            };
            lines.extend(minute_bytes(minute, mine, "heavy", node));
            lines.extend(minute_bytes(minute, mine, "heavy-twin", node));
        }
        let spike = if node == "node-c" {
            6_000_000
        } else {
            20_000_000
        };
        lines.extend(minute_bytes(6, spike, "heavy", node));
        lines.extend(minute_bytes(6, 6_000_000, "heavy-twin", node));
        lines.sort();
        let file = s.dir.path().join(format!("{node}.jsonl"));
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        let (f, err) = s.replay(&cfg, node);
        assert!(!err.contains("did not take"), "{err}");
        all.extend(f);
    }
    let text = serde_json::to_string_pretty(&all).unwrap();
    assert!(
        !all.iter()
            .any(|f| f["rule"]["id"] == "NHI-040" && f["evidence"]["nodes"].is_null()),
        "a node's own baseline fired: {text}"
    );
    let (spikes, bytes): (Vec<&Value>, Vec<&Value>) = fleet_findings(&all)
        .into_iter()
        .filter(|f| f["rule"]["id"] == "NHI-040")
        .partition(|f| f["evidence"]["metric"] == "requests");
    assert!(
        !serde_json::to_string(&fleet_findings(&all))
            .unwrap()
            .contains("twin"),
        "{text}"
    );
    assert_eq!(bytes.len(), 1, "{text}");
    assert_eq!(
        bytes[0]["identity"]["id"],
        "spiffe://fleet.test/ns/fleet-a/sa/heavy"
    );
    assert_eq!(bytes[0]["evidence"]["metric"], "bytes");
    assert_eq!(bytes[0]["evidence"]["observed"], 46e6);
    assert_eq!(bytes[0]["evidence"]["expected"], 18e6);
    assert_eq!(
        strs(&bytes[0]["evidence"]["nodes"]),
        ["node-a", "node-b", "node-c"]
    );
    assert_eq!(spikes.len(), 1, "{text}");
    assert_eq!(
        spikes[0]["identity"]["id"],
        "spiffe://fleet.test/ns/fleet-a/sa/replica"
    );
    assert_eq!(spikes[0]["evidence"]["data_source"], "records");
    assert!(strs(&spikes[0]["evidence"]["nodes"]).len() >= 2, "{text}");
}

/// Adversarial cardinality: one identity presenting 10,000 fingerprints and 2,000 identities
/// presenting one; the store keeps the caps' worth and counts the rest.
#[test]
fn store_sizes_stay_within_the_caps_under_adversarial_cardinality() {
    let s = Setup::new("nhiwatch-e2e-fleet-caps");
    let redis = Redis::start(s.dir.path(), &[]);
    let rt = runtime();
    let (mut f, t) = node(&s, redis.port, "node-a", "k1");
    let fit = "api.fitness.fleet.test";
    for i in 0..10_000 {
        let fp = format!("hmac-sha256:{i:032x}");
        let o: Observation = serde_json::from_str(&call(
            1,
            "fleet-b",
            "rotator",
            "node-a",
            fit,
            "/v1/x",
            Some(&fp),
        ))
        .unwrap();
        f.add(&o);
    }
    for i in 0..2_000 {
        let o: Observation = serde_json::from_str(&call(
            2,
            "fleet-b",
            &format!("holder-{i}"),
            "node-a",
            fit,
            "/v1/x",
            Some("hmac-sha256:ffff0000ffff0000ffff0000ffff0000"),
        ))
        .unwrap();
        f.add(&o);
    }
    let mut out = Vec::new();
    flush_until_up(&rt, &mut f, &mut out);
    let fp_keys = redis.cli(&["--scan", "--pattern", &format!("{}:fp:*", s.prefix)]);
    // The rotator's 64 (max_fingerprints_per_identity) and the shared one.
    assert_eq!(fp_keys.lines().filter(|l| !l.is_empty()).count(), 65);
    let shared = format!(
        "{}:fp:{{hmac-sha256:ffff0000ffff0000ffff0000ffff0000}}",
        s.prefix
    );
    assert_eq!(redis.cli(&["HLEN", &shared]).trim(), "64");
    assert!(
        t.capped.get() >= 10_000 - 64 + 2_000 - 64,
        "{}",
        t.capped.get()
    );
    // Every holder is on one node: that node's own detector reports the sharing, the fleet not.
    let shared: Vec<_> = out.iter().filter(|f| f.rule.id == "NHI-050").collect();
    assert_eq!(
        shared.len(),
        0,
        "all on one node: the local detector's, not the fleet's"
    );
}
