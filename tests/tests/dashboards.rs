//! End-to-end: a real Prometheus scrapes the daemon driven by real traffic, and every query of every Grafana dashboard returns data.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nhiwatch_e2e::{kube::*, *};

/// Bounds each wait for something that must happen: generous, so a busy machine is only slower.
const WAIT: Duration = Duration::from_secs(60);

const API_KEY: &str = "sk-ant-api03-LEAKCANARYdashboardkey51f0c9";
const FHIR: &str = "fhir.nhiwatch.test";
const LLM: &str = "llm.nhiwatch.test";
const BH: &str = "bh.nhiwatch.test";

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// Percent-encodes a query parameter (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Debian's Prometheus on a loopback port, scraping one target every second; killed and its
/// storage removed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = TempDir::new("nhiwatch-e2e-prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: nhiwatch\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting /usr/bin/prometheus (apt-get install prometheus)");
        let p = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(port, "/-/ready"), Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; the `data` member of a successful answer.
    fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = http_get(self.port, path_and_query)
            .unwrap_or_else(|e| panic!("prometheus {path_and_query}: {e}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus {path_and_query}: {status} {e}: {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "prometheus {path_and_query}: {status} {body}"
        );
        v["data"].clone()
    }

    /// An instant query's result vector (or scalar, as a one-element list).
    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)));
        match data["resultType"].as_str() {
            Some("scalar") | Some("string") => vec![data["result"].clone()],
            _ => data["result"].as_array().cloned().unwrap_or_default(),
        }
    }

    fn metric_names(&self) -> BTreeSet<String> {
        self.api("/api/v1/label/__name__/values")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// Grafana's `label_values(metric, label)`.
    fn label_values(&self, metric: &str, label: &str) -> Vec<String> {
        self.api(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            encode(metric)
        ))
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
    }

    /// Waits until `expr` has a sample satisfying `ok`.
    fn wait_for(&self, expr: &str, ok: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.query(expr);
            if r.iter().any(|s| value(s).is_some_and(&ok)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus: no wanted sample for {expr} within {WAIT:?}: {r:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number of an instant vector sample or a scalar.
fn value(sample: &Value) -> Option<f64> {
    let v = if sample.is_array() {
        &sample[1]
    } else {
        &sample["value"][1]
    };
    v.as_str()?.parse().ok()
}

/// Every metric name a PromQL expression mentions (ours all start with `nhiwatch_`).
fn metric_names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("nhiwatch_") {
        let start = i + at;
        let starts_word = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // Inside a string literal (a label value) it is not a metric.
        let quotes = expr[..start].matches('"').count();
        if starts_word && quotes.is_multiple_of(2) {
            out.push(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

struct Panel {
    dashboard: String,
    title: String,
    exprs: Vec<String>,
}

/// Loads every dashboard, checks the shape Grafana provisioning needs, and returns its panels.
fn load_dashboards() -> (Vec<Panel>, Vec<(String, String)>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    for want in [
        "nhiwatch-overview.json",
        "nhiwatch-identity.json",
        "nhiwatch-sensor-health.json",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let mut panels = Vec::new();
    let mut variables = Vec::new();
    let mut uids = BTreeSet::new();
    for f in &files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && uids.insert(uid.to_owned()),
            "{name}: uid {uid:?} missing or not unique"
        );
        assert!(
            d["schemaVersion"].as_u64().unwrap_or(0) >= 39,
            "{name}: schemaVersion"
        );
        assert!(
            d["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "nhiwatch")),
            "{name}: tags"
        );
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name}: no `datasource` variable of type datasource"
        );
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"]["uid"], "${datasource}",
                "{name}: variable {}",
                v["name"]
            );
            let q = v["definition"].as_str().unwrap_or_default().to_owned();
            variables.push((format!("{name} ${}", v["name"].as_str().unwrap_or("?")), q));
        }
        let list = d["panels"].as_array().cloned().unwrap_or_default();
        assert!(!list.is_empty(), "{name}: no panels");
        for p in list {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}: panel {title}"
            );
            let mut exprs = Vec::new();
            for t in p["targets"].as_array().cloned().unwrap_or_default() {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{name}: panel {title}"
                );
                let e = t["expr"].as_str().unwrap_or_default();
                assert!(
                    !e.is_empty(),
                    "{name}: panel {title} has a target without expr"
                );
                exprs.push(e.to_owned());
            }
            assert!(!exprs.is_empty(), "{name}: panel {title} has no query");
            panels.push(Panel {
                dashboard: name.clone(),
                title,
                exprs,
            });
        }
    }
    (panels, variables)
}

/// What Grafana would send for `expr` with these variable values.
fn substitute(expr: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m");
    // Longest names first, so `$id` never eats the start of `$identity`.
    let mut names: Vec<&&str> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names {
        e = e
            .replace(&format!("${{{n}}}"), &vars[*n])
            .replace(&format!("${n}"), &vars[*n]);
    }
    assert!(!e.contains('$'), "unknown variable left in {e}");
    e
}

/// The python client run inside a pod: HTTPS calls to the test's nginx with a Host header.
fn client(nginx: &Nginx, dir: &Path, body: &str) -> PathBuf {
    let script = dir.join(format!("{}.py", unique("client")));
    let prelude = format!(
        r#"import ssl, http.client
ctx = ssl.create_default_context(cafile={ca:?})
conns = {{}}
def call(host, method, path, headers=None, body=None):
    c = conns.get(host)
    if c is None:
        c = conns[host] = http.client.HTTPSConnection('127.0.0.1', {port}, context=ctx)
    h = dict(headers or {{}})
    h['Host'] = host
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    r.read()
    assert r.status == 200, (host, path, r.status)
def read(p):
    with open(p) as f:
        return f.read().strip()
"#,
        ca = nginx.cert.display().to_string(),
        port = nginx.port,
    );
    std::fs::write(&script, prelude + body).unwrap();
    script
}

fn python() -> String {
    let out = run_ok(Command::new("python3").args([
        "-c",
        "import os, sys; print(os.path.realpath(sys.executable))",
    ]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn every_dashboard_panel_has_data_in_a_real_prometheus() {
    let (panels, variables) = load_dashboards();

    let tmp = TempDir::new("nhiwatch-e2e-dashboards");
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let secrets = tmp.path().join("secrets");
    let rules = tmp.path().join("rules");
    for d in [&secrets, &rules] {
        std::fs::create_dir_all(d).unwrap();
    }
    let key_file = secrets.join("api-key");
    std::fs::write(&key_file, API_KEY).unwrap();
    let api = FakeKubeApi::start("e2e-node", "e2e-kube-token");
    let kube_token = tmp.path().join("kube-token");
    std::fs::write(&kube_token, "e2e-kube-token\n").unwrap();
    let nginx = Nginx::start(
        "location /R4/ { return 200 '{\"resourceType\":\"Bundle\"}'; }\n\
         location = /v1/messages { return 200 '{\"type\":\"message\"}'; }\n\
         location /notes/ { return 200 '{\"note\":\"session\"}'; }",
    );
    let summarizer = FakePod::new(
        Driver::Systemd,
        Qos::Burstable,
        Runtime::Containerd,
        "clinical-ai",
        "med-summarizer",
    );
    let stranger = FakePod::new(
        Driver::Systemd,
        Qos::Burstable,
        Runtime::Containerd,
        "billing",
        "claims-bot",
    );
    api.add(&summarizer);
    api.add(&stranger);
    let py = python();
    // The summarizer may read FHIR medications; the LLM and the notes are outside its contract
    // (NHI-010 twice: the second is rate-limited) and the claims bot has no contract at all
    // (NHI-001) yet uses the summarizer's API key (NHI-050).
    std::fs::write(
        rules.join("rules.yaml"),
        format!(
            r#"apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {{name: ehr-medications}}
spec:
  classification: phi
  match:
    - host: {FHIR}
      paths: ["/R4/MedicationRequest/**"]
---
apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {{name: llm-anthropic}}
spec:
  classification: internal
  match:
    - host: {LLM}
      paths: ["/v1/messages"]
---
apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {{name: mental-health-notes}}
spec:
  classification: phi
  match:
    - host: {BH}
---
apiVersion: nhiwatch.dev/v1
kind: AccessContract
metadata: {{name: med-summarizer}}
spec:
  identity: {id}
  owner: clinical-ai@example.org
  purpose: Summarise medication lists
  allow:
    dataSources: [ehr-medications]
    secrets:
      - path: {key}
        executables: [{py}]
    destinations: [{{host: {FHIR}}}]
"#,
            id = summarizer.spiffe_id(),
            key = key_file.display(),
        ),
    )
    .unwrap();
    // A file sink gives the sink series; one alert per (identity, rule) a minute gives suppressions.
    let config = format!(
        "{}identity:\n  node_name: e2e-node\n  pending_hold_ms: 8000\n  kubernetes:\n    source: kubelet\n    url: {}\n    token_file: {}\n    refresh_seconds: 1\nrules: [{}]\n\
         alerts:\n  rate_limit: {{window: 1m, max: 1}}\n  sinks:\n    - {{name: archive, type: file, path: alerts.jsonl}}\n",
        config_with(&[format!("{}/", secrets.display())], ""),
        api.url(),
        kube_token.display(),
        rules.display(),
    );
    let d = Daemon::start(&config);
    let prom = Prometheus::start(d.metrics_port);
    // Prometheus first scrapes up to ~5 s after it is ready (its scrape manager applies targets on
    // a 5 s tick). A counter first scraped after the test's findings has no increase to show, so
    // the traffic waits for a first scrape (an earlier CI run failed on exactly this).
    prom.wait_for("up", |v| v == 1.0);

    let key = key_file.display().to_string();
    let work = client(
        &nginx,
        tmp.path(),
        &format!(
            "key = read({key:?})\n\
             call('{FHIR}', 'GET', '/R4/MedicationRequest/123', {{'x-api-key': key}})\n\
             call('{FHIR}', 'GET', '/R4/Appointment/9')\n\
             call('{LLM}', 'POST', '/v1/messages', {{'x-api-key': key}}, b'{{}}')\n\
             call('{BH}', 'GET', '/notes/7')\n"
        ),
    );
    let pid = spawn_pid(&mut summarizer.command(&format!("exec {py} {}", work.display())));
    d.wait_for("the summarizer's notes call", WAIT, |v| {
        kind_is(v, "api_call") && pid_is(v, pid) && v["destination"]["name"] == BH
    });
    let shared = client(
        &nginx,
        tmp.path(),
        &format!(
            "call('{LLM}', 'POST', '/v1/messages', {{'x-api-key': read({key:?})}}, b'{{}}')\n"
        ),
    );
    let pid = spawn_pid(&mut stranger.command(&format!("exec {py} {}", shared.display())));
    d.wait_for("the claims bot's LLM call", WAIT, |v| {
        kind_is(v, "api_call") && pid_is(v, pid) && v["destination"]["name"] == LLM
    });
    let stranger_id = stranger.spiffe_id();
    for rule in ["NHI-010", "NHI-001", "NHI-050"] {
        d.wait_for(rule, WAIT, |v| {
            kind_is(v, "finding") && v["rule"]["id"] == rule
        });
    }
    // Not necessarily the first NHI-050 seen: wait for the claims bot's own.
    d.wait_for("NHI-050 for the claims bot", WAIT, |v| {
        kind_is(v, "finding")
            && v["rule"]["id"] == "NHI-050"
            && v["identity"]["id"] == stranger_id.as_str()
    });

    // Prometheus has what the traffic produced, and rates have several samples to work with.
    let summarizer_id = summarizer.spiffe_id();
    prom.wait_for(
        &format!(
            "nhiwatch_api_calls_by_identity_total{{identity=\"{summarizer_id}\",data_source=\"ehr-medications\"}}"
        ),
        |v| v >= 1.0,
    );
    prom.wait_for("nhiwatch_pipeline_latency_seconds_count", |v| v >= 3.0);
    prom.wait_for(r#"nhiwatch_findings_total{rule="NHI-050"}"#, |v| v >= 1.0);
    prom.wait_for(r#"nhiwatch_alerts_sent_total{sink="archive"}"#, |v| {
        v >= 3.0
    });
    prom.wait_for(r#"nhiwatch_alerts_suppressed_total{rule="NHI-010"}"#, |v| {
        v >= 1.0
    });
    prom.wait_for(
        r#"nhiwatch_alert_latency_seconds_count{sink="archive"}"#,
        |v| v >= 1.0,
    );

    // The variables: every query variable has values; `identity` offers the summarizer.
    let mut values: BTreeMap<&str, String> = BTreeMap::new();
    values.insert("instance", ".*".into());
    for (what, q) in &variables {
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{what}: unsupported variable query {q}"));
        let (metric, label) = inner
            .split_once(',')
            .unwrap_or_else(|| panic!("{what}: {q}"));
        let got = prom.label_values(metric.trim(), label.trim());
        assert!(!got.is_empty(), "{what}: {q} has no values");
        if label.trim() == "identity" {
            assert!(
                got.contains(&summarizer_id),
                "{what}: {summarizer_id} not in {got:?}"
            );
        }
    }
    values.insert("identity", summarizer_id.clone());

    // Rates need a few scrapes: checked again until every panel has data (a busy machine
    // scrapes late), and what still fails at the deadline is reported.
    let check = || {
        let known = prom.metric_names();
        let mut used = BTreeSet::new();
        let mut failures = Vec::new();
        for p in &panels {
            for expr in &p.exprs {
                for m in metric_names_in(expr) {
                    if !known.contains(&m) {
                        failures.push(format!(
                            "{} / {}: metric {m} does not exist\n    {expr}",
                            p.dashboard, p.title
                        ));
                    }
                    used.insert(m);
                }
                let q = substitute(expr, &values);
                let r = prom.query(&q);
                if r.is_empty() {
                    failures.push(format!("{} / {}: no data\n    {q}", p.dashboard, p.title));
                }
            }
        }
        (used, failures)
    };
    let deadline = Instant::now() + WAIT;
    let (used, failures) = loop {
        let (used, failures) = check();
        if failures.is_empty() || Instant::now() >= deadline {
            break (used, failures);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "{} panels checked; metrics the dashboards use:\n  {}",
        panels.len(),
        used.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "{} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The numbers mean what the panels say.
    let one = |q: &str| {
        prom.query(q)
            .first()
            .and_then(value)
            .unwrap_or_else(|| panic!("{q}: no value"))
    };
    assert!(
        one(r#"sum(increase(nhiwatch_findings_total{rule="NHI-001"}[5m]))"#) >= 1.0,
        "ungoverned identities panel reads 0"
    );
    assert_eq!(
        one(&format!(
            "count(sum by (data_source) (nhiwatch_api_calls_by_identity_total{{identity=\"{summarizer_id}\",data_source!=\"none\"}}))"
        )),
        3.0,
        "the summarizer called three data sources"
    );
    assert!(
        one(&format!(
            "sum(nhiwatch_api_calls_by_identity_total{{identity=\"{summarizer_id}\",data_source=\"none\"}})"
        )) >= 1.0,
        "the appointment call is unclassified"
    );
    assert!(
        one(r#"max(nhiwatch_pipeline_latency_seconds{stage="finding",quantile="0.99"})"#) > 0.0,
        "finding latency p99"
    );
    // No secret reaches the metrics.
    let text = d.metrics();
    assert!(!text.contains(API_KEY), "the API key is in /metrics");
    d.stop();
}
