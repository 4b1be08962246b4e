//! End-to-end: credential hygiene on real clients (curl, python3) in a systemd unit sending JWTs and API keys to a real HTTPS nginx: audience mismatch (and its benign twins by URL, host and declared audience), scope beyond the contract, a static key aged through the state database the daemon restores, the contract's owner and purpose in native and OCSF alerts, and no token, signature or query value anywhere.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use nhiwatch_e2e::{kube::FakeUnit, *};

const WAIT: Duration = Duration::from_secs(60);

const FHIR: &str = "fhir.nhiwatch.test";
const BILLING: &str = "billing.nhiwatch.test";
const LLM: &str = "llm.nhiwatch.test";
const PURPOSE: &str = "Summarise medication lists for clinicians (e2e)";
const OWNER: &str = "clinical-ai@example.org";
/// Query values: never kept (only their keys are).
const QUERY_SECRET: &str = "QRYCANARY7f3e";

fn locations() -> &'static str {
    "location /R4/ { return 200 '{\"resourceType\":\"Bundle\",\"total\":1}'; }\n\
     location /api/ { return 200 '{\"ok\":true}'; }\n\
     location = /v1/messages { return 200 '{\"type\":\"message\"}'; }"
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A JWT valid for 10 minutes with these audiences and scopes, signed HS256 with a key only the
/// test knows (nhiwatch decodes claims and never verifies; the signature is what must not leak).
fn jwt(aud: &str, scope: &str, tag: &str) -> String {
    use hmac::Mac as _;
    let b64 = |s: &[u8]| URL_SAFE_NO_PAD.encode(s);
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64(format!(
        r#"{{"iss":"https://idp.nhiwatch.test","sub":"client:summarizer","aud":{aud},"scope":"{scope}","exp":{},"iat":{},"jti":"{tag}"}}"#,
        now() + 600,
        now() - 60
    )
    .as_bytes());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"e2e-signing-key").unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    let sig = b64(&mac.finalize().into_bytes());
    format!("{header}.{payload}.{sig}")
}

/// One request of a python client: host, method, path, headers.
type Request<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, String)>);

struct Setup {
    tmp: TempDir,
    nginx: Nginx,
    unit: FakeUnit,
    rules: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = TempDir::new("nhiwatch-e2e-hygiene");
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let rules = tmp.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        let unit = FakeUnit::new(&unique("nhiwatch-e2e-hygiene"));
        let s = Setup {
            nginx: Nginx::start(locations()),
            unit,
            rules,
            tmp,
        };
        std::fs::write(s.rules.join("rules.yaml"), s.rules_text()).unwrap();
        s
    }

    fn id(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_owned();
        format!("spiffe://cluster.local/node/{host}/unit/{}", self.unit.unit)
    }

    /// The FHIR server, a billing API known by an opaque audience, an LLM; a contract for the
    /// unit allowing SMART read scopes on FHIR.
    fn rules_text(&self) -> String {
        format!(
            r#"apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {{name: ehr}}
spec:
  classification: phi
  match: [{{host: {FHIR}, paths: ["/R4/**"]}}]
---
apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {{name: billing}}
spec:
  classification: financial
  match: [{{host: {BILLING}, paths: ["/api/**"]}}]
  audiences: ["api://billing-prod"]
---
apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {{name: llm}}
spec:
  classification: internal
  match: [{{host: {LLM}, paths: ["/v1/messages"]}}]
---
apiVersion: nhiwatch.dev/v1
kind: AccessContract
metadata: {{name: summarizer}}
spec:
  selectors: ["systemd:unit:{unit}"]
  owner: {OWNER}
  purpose: {PURPOSE}
  allow:
    dataSources: [ehr, billing, llm]
    scopes: [{{dataSource: ehr, scopes: ["patient/*.read", openid]}}]
  credentials: {{kinds: [jwt, api-key]}}
"#,
            unit = self.unit.unit,
        )
    }

    fn config(&self) -> String {
        format!(
            "{}rules: [{}]\nalerts:\n  stdout: true\n  rate_limit: {{window: 1m, max: 0}}\n  sinks:\n    - {{name: native, type: file, format: native, path: findings.jsonl}}\n    - {{name: ocsf, type: file, format: ocsf, path: ocsf.jsonl}}\n",
            config_with(&[], ""),
            self.rules.display()
        )
    }

    /// curl in the unit: GET `https://host/path` with `header`; returns its pid.
    fn curl(&self, host: &str, path: &str, header: &str) -> u32 {
        let port = self.nginx.port;
        let hdr = self.tmp.path().join(format!("{}.hdr", unique("h")));
        // The header from a file: the token never shows on a command line.
        std::fs::write(&hdr, format!("{header}\n")).unwrap();
        spawn_pid(&mut self.unit.command(&format!(
            "exec curl -sS --fail --http1.1 --cacert {ca} --resolve {host}:{port}:127.0.0.1 -H @{hdr} -o /dev/null https://{host}:{port}{path}",
            ca = self.nginx.cert.display(),
            hdr = hdr.display(),
        )))
    }

    /// python3 in the unit: one request per (host, method, path, headers); returns its pid.
    fn python(&self, requests: &[Request<'_>]) -> u32 {
        let mut body = format!(
            "import ssl, http.client\nctx = ssl.create_default_context(cafile={ca:?})\n",
            ca = self.nginx.cert.display().to_string()
        );
        for (host, method, path, headers) in requests {
            let h: Vec<String> = headers
                .iter()
                .map(|(k, v)| format!("{k:?}: {v:?}"))
                .collect();
            body.push_str(&format!(
                "c = http.client.HTTPSConnection('127.0.0.1', {port}, context=ctx)\n\
                 c.request({method:?}, {path:?}, body=b'{{}}' if {method:?} == 'POST' else None, headers={{'Host': {host:?}, {h}}})\n\
                 r = c.getresponse(); r.read(); assert r.status == 200, r.status\nc.close()\n",
                port = self.nginx.port,
                h = h.join(", "),
            ));
        }
        let script = self.tmp.path().join(format!("{}.py", unique("client")));
        std::fs::write(&script, body).unwrap();
        spawn_pid(
            &mut self
                .unit
                .command(&format!("exec python3 {}", script.display())),
        )
    }
}

fn wait_call(d: &Daemon, pid: u32, host: &str) -> Value {
    d.wait_for(&format!("API call of {pid} to {host}"), WAIT, |v| {
        kind_is(v, "api_call") && pid_is(v, pid) && v["destination"]["name"] == host
    })
}

/// One more call of the identity, without a credential, seen through to its `api_call`. The
/// pipeline judges observations in order on one thread and writes events and findings in one
/// ordered stream, so once this call shows, every finding of the calls before it has shown too:
/// an absence asserted after it is an absence, however busy the machine.
fn barrier(s: &Setup, d: &Daemon, host: &str, path: &str) {
    let pid = s.curl(host, path, "X-Nhiwatch-Barrier: 1");
    wait_call(d, pid, host);
}

fn findings(events: &[Value], id: &str, rule: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|v| kind_is(v, "finding") && v["identity"]["id"] == id && v["rule"]["id"] == rule)
        .cloned()
        .collect()
}

fn wait_finding(d: &Daemon, id: &str, rule: &str, pred: impl Fn(&Value) -> bool) -> Value {
    d.wait_for(&format!("{rule} for {id}"), WAIT, |v| {
        kind_is(v, "finding") && v["identity"]["id"] == id && v["rule"]["id"] == rule && pred(v)
    })
}

fn file_lines(state: &[(PathBuf, Vec<u8>)], name: &str) -> Vec<Value> {
    let (_, bytes) = state
        .iter()
        .find(|(p, _)| p.file_name().is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("no {name} in the state directory"));
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// No secret in anything the daemon wrote: stdout, stderr, metrics, every state file.
fn assert_no_leak(outputs: &[(String, Vec<u8>)], secrets: &[String]) {
    for (what, bytes) in outputs {
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s:?} leaked into nhiwatch {what}"
            );
        }
    }
}

#[test]
fn tokens_outside_their_audience_and_scopes_are_reported_with_the_contracts_purpose() {
    let s = Setup::new();
    let id = s.id();
    let d = Daemon::start(&s.config());

    // Benign: the audience names the FHIR base URL (curl), the billing API's declared opaque id
    // (python), and the FHIR host (python); scopes inside the contract.
    let by_url = jwt(
        "[\"https://fhir.nhiwatch.test/R4\"]",
        "patient/*.read openid",
        "by-url",
    );
    let by_declared = jwt("\"api://billing-prod\"", "billing.read", "declared");
    let by_host = jwt("\"fhir.nhiwatch.test\"", "patient/Patient.read", "by-host");
    let pid = s.curl(
        FHIR,
        &format!("/R4/Patient/7?identifier={QUERY_SECRET}"),
        &format!("Authorization: Bearer {by_url}"),
    );
    wait_call(&d, pid, FHIR);
    let pid = s.python(&[
        (
            BILLING,
            "GET",
            "/api/invoices/9",
            vec![("Authorization", format!("Bearer {by_declared}"))],
        ),
        (
            FHIR,
            "GET",
            "/R4/MedicationRequest/3",
            vec![("Authorization", format!("Bearer {by_host}"))],
        ),
    ]);
    wait_call(&d, pid, BILLING);
    wait_call(&d, pid, FHIR);

    // A token minted for the billing API presented to FHIR (curl), and a SMART token asking for
    // system-wide access (python).
    let stolen = jwt(
        "\"https://billing.nhiwatch.test\"",
        "patient/*.read",
        "stolen",
    );
    let wide = jwt(
        "\"https://fhir.nhiwatch.test/R4\"",
        "patient/*.read system/*.*",
        "wide",
    );
    let pid = s.curl(
        FHIR,
        "/R4/Observation/1",
        &format!("Authorization: Bearer {stolen}"),
    );
    let call = wait_call(&d, pid, FHIR);
    let stolen_fp = call["credentials"][0]["fingerprint"].clone();
    assert_eq!(
        call["credentials"][0]["jwt"]["aud"],
        serde_json::json!(["https://billing.nhiwatch.test"]),
        "{call}"
    );
    let pid = s.python(&[(
        FHIR,
        "GET",
        "/R4/Patient/8",
        vec![("Authorization", format!("Bearer {wide}"))],
    )]);
    let call = wait_call(&d, pid, FHIR);
    assert_eq!(
        call["credentials"][0]["jwt"]["scope"],
        serde_json::json!(["patient/*.read", "system/*.*"]),
        "{call}"
    );

    let mismatch = wait_finding(&d, &id, "NHI-056", |_| true);
    assert_eq!(mismatch["severity"], "high", "{mismatch}");
    assert_eq!(mismatch["evidence"]["destination"], FHIR, "{mismatch}");
    assert_eq!(
        mismatch["evidence"]["audiences"],
        serde_json::json!(["https://billing.nhiwatch.test"]),
        "{mismatch}"
    );
    assert_eq!(
        mismatch["evidence"]["credential"]["fingerprint"], stolen_fp,
        "{mismatch}"
    );
    assert_eq!(mismatch["contract"]["purpose"], PURPOSE, "{mismatch}");
    assert_eq!(mismatch["contract"]["owner"], OWNER, "{mismatch}");
    let scope = wait_finding(&d, &id, "NHI-058", |_| true);
    assert_eq!(scope["evidence"]["scope"], "system/*.*", "{scope}");
    assert_eq!(scope["severity"], "medium", "{scope}");
    barrier(&s, &d, FHIR, "/R4/Patient/1");
    let events = d.events();
    // Exactly those: the benign tokens raised nothing, `patient/*.read` is inside the contract.
    assert_eq!(findings(&events, &id, "NHI-056").len(), 1, "{events:#?}");
    assert_eq!(findings(&events, &id, "NHI-058").len(), 1, "{events:#?}");
    assert!(findings(&events, &id, "NHI-057").is_empty());

    let metrics = d.metrics();
    let (stdout, stderr, state) = d.stop_with_state();
    // The SIEM shape carries the purpose and owner too, in `unmapped.contract`.
    let ocsf = file_lines(&state, "ocsf.jsonl");
    let o = ocsf
        .iter()
        .find(|o| {
            o["finding_info"]["analytic"]["uid"] == "NHI-056"
                && o["actor"]["user"]["uid"] == id.as_str()
        })
        .unwrap_or_else(|| panic!("no NHI-056 in ocsf.jsonl: {ocsf:#?}"));
    assert_eq!(o["unmapped"]["contract"]["purpose"], PURPOSE, "{o}");
    assert_eq!(o["unmapped"]["contract"]["owner"], OWNER, "{o}");
    assert!(file_lines(&state, "findings.jsonl")
        .iter()
        .any(|f| f["rule"]["id"] == "NHI-058"));

    let sig = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    let mut secrets = vec![QUERY_SECRET.to_owned()];
    for t in [&by_url, &by_declared, &by_host, &stolen, &wide] {
        secrets.push(t.clone());
        secrets.push(sig(t));
    }
    let mut outputs = vec![
        ("stdout".to_owned(), stdout.into_bytes()),
        ("stderr".to_owned(), stderr.into_bytes()),
        ("metrics".to_owned(), metrics.into_bytes()),
    ];
    outputs.extend(state.into_iter().map(|(p, b)| (p.display().to_string(), b)));
    assert_no_leak(&outputs, &secrets);
}

/// Moves a credential's first sighting `days` back in the state database, as an older
/// deployment of nhiwatch would have recorded it.
fn age_in_state(db: &Path, fingerprint: &str, days: i64) {
    let script = format!(
        "import sqlite3, json, sys\n\
         db = sqlite3.connect({db:?})\n\
         row = db.execute('SELECT record FROM credentials WHERE fingerprint = ?', ({fingerprint:?},)).fetchone()\n\
         assert row, 'no credential row'\n\
         r = json.loads(row[0])\n\
         r['first_seen'] -= {secs}\n\
         db.execute('UPDATE credentials SET record = ? WHERE fingerprint = ?', (json.dumps(r), {fingerprint:?}))\n\
         db.commit()\n",
        db = db.display().to_string(),
        secs = days * 86_400,
    );
    run_ok(Command::new("python3").arg("-c").arg(script));
}

#[test]
fn a_static_key_first_seen_long_ago_is_overdue_for_rotation_after_a_restart() {
    let s = Setup::new();
    let id = s.id();
    let state = s.tmp.path().join("state");
    let old_key = format!("sk-ant-api03-{}", unique("ROTCANARYold"));
    let new_key = format!("sk-ant-api03-{}", unique("ROTCANARYnew"));
    let send = |d: &Daemon, key: &str| {
        let pid = s.python(&[(
            LLM,
            "POST",
            "/v1/messages",
            vec![("x-api-key", key.to_owned())],
        )]);
        wait_call(d, pid, LLM)["credentials"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Run 1: both keys are seen for the first time: nothing to say about their age.
    let d = Daemon::start_with_state(&s.config(), Some(&state));
    let old_fp = send(&d, &old_key);
    let new_fp = send(&d, &new_key);
    barrier(&s, &d, LLM, "/v1/messages");
    assert!(findings(&d.events(), &id, "NHI-059").is_empty());
    let (out1, err1) = d.stop();

    // As if nhiwatch had first seen the old key 120 days ago.
    age_in_state(&state.join("nhiwatch.db"), &old_fp, 120);

    // Run 2: the restored first sighting makes the old key overdue (default 90 days); the new
    // key, seen minutes ago, is not.
    let d = Daemon::start_with_state(&s.config(), Some(&state));
    assert_eq!(send(&d, &old_key), old_fp);
    assert_eq!(send(&d, &new_key), new_fp);
    let f = wait_finding(&d, &id, "NHI-059", |_| true);
    let ev = &f["evidence"];
    assert_eq!(ev["credential"]["fingerprint"], old_fp.as_str(), "{f}");
    assert_eq!(ev["days_in_use"], 120, "{f}");
    assert_eq!(ev["age_is_lower_bound"], true, "{f}");
    assert_eq!(ev["limit"], 90.0, "{f}");
    assert!(ev["first_seen"].as_str().is_some(), "{f}");
    assert_eq!(f["contract"]["purpose"], PURPOSE, "{f}");
    barrier(&s, &d, LLM, "/v1/messages");
    assert_eq!(findings(&d.events(), &id, "NHI-059").len(), 1);
    let metrics = d.metrics();
    let (out2, err2) = d.stop();
    let mut outputs = vec![
        ("stdout 1".to_owned(), out1.into_bytes()),
        ("stderr 1".to_owned(), err1.into_bytes()),
        ("stdout 2".to_owned(), out2.into_bytes()),
        ("stderr 2".to_owned(), err2.into_bytes()),
        ("metrics".to_owned(), metrics.into_bytes()),
    ];
    outputs.extend(
        files_under(&state)
            .into_iter()
            .filter_map(|p| Some((p.display().to_string(), std::fs::read(&p).ok()?))),
    );
    assert_no_leak(
        &outputs,
        &[old_key.clone(), new_key.clone(), "ROTCANARY".to_owned()],
    );
}
