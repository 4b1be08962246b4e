//! End-to-end: API calls parsed out of real clients' TLS plaintext (curl HTTP/1.1 and HTTP/2,
//! python3, node, openssl s_client) to a real nginx — and not one secret, body or query byte kept.

use std::{
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use nhiwatch_e2e::*;

/// Bounds each wait for something that must happen: generous, so a busy machine is only slower.
const WAIT: Duration = Duration::from_secs(60);

/// The JWT's signature segment: the secret part of the token.
const JWT_SIG: &str = "TEVBS0NBTkFSWWp3dHNpZ25hdHVyZTdkMmU5";
/// Another token's signature, for "different credentials differ".
const JWT_SIG_2: &str = "TEVBS0NBTkFSWXNlY29uZHRva2VuM2Y4YTE";
const API_KEY: &str = "sk-ant-api03-LEAKCANARYapikey5e1d7f0b";
const BASIC_PASSWORD: &str = "LEAKCANARYbasicpw91c4";
const AWS_SIGNATURE: &str = "5ea1ed0ca7a2ee0f1eac5ca7a2ee0f1eac5ca7a2ee0f1eac5ca7a2ee0f1eac5c";
const QUERY_VALUE: &str = "LEAKCANARYqueryvalue3b9";
const BODY_MARKER: &str = "LEAKCANARYbody6c1f";
const PATIENT_ID: &str = "8812345601";

/// Every byte sequence that must never appear in anything nhiwatch produced.
fn secrets() -> Vec<String> {
    vec![
        JWT_SIG.into(),
        JWT_SIG_2.into(),
        API_KEY.into(),
        "LEAKCANARYapikey".into(),
        BASIC_PASSWORD.into(),
        AWS_SIGNATURE.into(),
        QUERY_VALUE.into(),
        BODY_MARKER.into(),
        PATIENT_ID.into(),
        // response bodies
        "resourceType".into(),
        "claude-reply".into(),
        "LEAKCANARY".into(),
    ]
}

fn locations() -> &'static str {
    "location /fhir/R4/ { return 200 '{\"resourceType\":\"Bundle\",\"total\":1}'; }\n\
     location = /v1/messages { return 200 '{\"type\":\"message\",\"text\":\"claude-reply\"}'; }\n\
     location /phi-exports/ { return 200 'resourceType,csv'; }"
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A well-formed (unverifiable) JWT with the given signature segment.
fn jwt(sub: &str, sig: &str) -> String {
    let header = b64(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
    let payload = b64(&format!(
        r#"{{"iss":"https://issuer.nhiwatch.test","sub":"{sub}","aud":["fhir"],"exp":{},"iat":{},"jti":"jti-{sub}","scope":"patient/*.read"}}"#,
        now() + 600,
        now() - 60
    ));
    format!("{header}.{payload}.{sig}")
}

fn fhir_path() -> String {
    format!("/fhir/R4/Patient/{PATIENT_ID}/Observation?code={QUERY_VALUE}&_count=10")
}

const FHIR_TEMPLATE: &str = "/fhir/R4/Patient/{id}/Observation";

fn api_call(d: &Daemon, what: &str, pid: u32, path: &str) -> Value {
    d.wait_for(what, WAIT, |v| {
        kind_is(v, "api_call") && pid_is(v, pid) && v["path"] == path
    })
}

fn credential(call: &Value) -> &Value {
    let creds = call["credentials"].as_array().expect("credentials");
    assert_eq!(creds.len(), 1, "{call}");
    &creds[0]
}

/// Greps stdout, logs, the metrics page and every file of the state directory.
fn assert_no_leak(d: Daemon) {
    let metrics = d.metrics();
    let (stdout, stderr, state) = d.stop_with_state();
    let mut outputs = vec![
        ("events".to_owned(), stdout.into_bytes()),
        ("logs".to_owned(), stderr.into_bytes()),
        ("metrics".to_owned(), metrics.into_bytes()),
    ];
    for (path, bytes) in state {
        outputs.push((path.display().to_string(), bytes));
    }
    assert!(
        outputs.len() > 3,
        "the state directory holds the fingerprint key"
    );
    for (what, bytes) in &outputs {
        for s in secrets() {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s:?} leaked into nhiwatch {what}"
            );
        }
    }
}

fn curl(nginx: &Nginx, proto: &str, extra: &[&str], path: &str) -> u32 {
    let host = "fhir.nhiwatch.test";
    spawn_pid(
        Command::new("curl")
            .args(["-sS", "--fail", "-o", "/dev/null", proto, "--cacert"])
            .arg(&nginx.cert)
            .args([
                "--resolve",
                &format!("{host}:{}:127.0.0.1", nginx.port),
                &format!("https://{host}:{}{path}", nginx.port),
            ])
            .args(extra),
    )
}

#[test]
fn curl_http1_and_http2_calls_carry_method_path_template_status_and_credential() {
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    let token = jwt("summarizer", JWT_SIG);
    let auth = format!("Authorization: Bearer {token}");

    let pid = curl(&nginx, "--http1.1", &["-H", &auth], &fhir_path());
    let call = api_call(&d, "curl HTTP/1.1 FHIR call", pid, FHIR_TEMPLATE);
    assert_eq!(call["protocol"], "http1", "{call}");
    assert_eq!(call["method"], "GET", "{call}");
    assert_eq!(
        call["authority"],
        format!("fhir.nhiwatch.test:{}", nginx.port),
        "{call}"
    );
    assert_eq!(call["destination"]["name"], "fhir.nhiwatch.test", "{call}");
    assert_eq!(call["destination"]["source"], "authority", "{call}");
    assert_eq!(
        call["query_keys"],
        serde_json::json!(["code", "_count"]),
        "{call}"
    );
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["end"], "complete", "{call}");
    assert!(call["latency_ms"].as_f64().unwrap() >= 0.0, "{call}");
    assert!(
        call["request_bytes"].as_u64().unwrap() > token.len() as u64,
        "{call}"
    );
    assert!(call["response_bytes"].as_u64().unwrap() > 30, "{call}");
    assert!(
        call["flow"].as_u64().is_some(),
        "tied to the TCP flow: {call}"
    );
    let conn = d.wait_for("curl's connect", WAIT, |v| {
        kind_is(v, "tcp_connect") && pid_is(v, pid)
    });
    assert_eq!(call["flow"], conn["flow"], "{call} vs {conn}");
    let cred = credential(&call);
    assert_eq!(cred["kind"], "jwt", "{call}");
    assert_eq!(cred["header"], "authorization", "{call}");
    assert_eq!(cred["jwt"]["iss"], "https://issuer.nhiwatch.test", "{call}");
    assert_eq!(cred["jwt"]["sub"], "summarizer", "{call}");
    assert_eq!(cred["jwt"]["ttl_seconds"], 660, "{call}");
    assert_eq!(cred["jwt"]["expired"], false, "{call}");
    let fp1 = cred["fingerprint"].as_str().unwrap().to_owned();
    assert!(
        fp1.starts_with("hmac-sha256:") && fp1.len() == 12 + 32,
        "{fp1}"
    );
    assert!(call["identity"]["id"].as_str().is_some(), "{call}");

    // HTTP/2 POST with an API key and a body.
    let pid = curl(
        &nginx,
        "--http2",
        &[
            "-H",
            &format!("x-api-key: {API_KEY}"),
            "-H",
            "content-type: application/json",
            "--data",
            &format!("{{\"messages\":[\"{BODY_MARKER}\"]}}"),
        ],
        "/v1/messages",
    );
    let call = api_call(&d, "curl HTTP/2 LLM call", pid, "/v1/messages");
    assert_eq!(call["protocol"], "http2", "{call}");
    assert_eq!(call["method"], "POST", "{call}");
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["end"], "complete", "{call}");
    assert!(
        call["stream"].as_u64().unwrap() % 2 == 1,
        "client stream: {call}"
    );
    assert!(call["request_bytes"].as_u64().unwrap() > 20, "{call}");
    let cred = credential(&call);
    assert_eq!(cred["kind"], "api_key", "{call}");
    assert_eq!(cred["vendor"], "anthropic", "{call}");
    assert_eq!(cred["header"], "x-api-key", "{call}");
    assert_ne!(cred["fingerprint"], fp1, "different credentials differ");

    // nginx (the server side of both) produced no API calls of its own.
    assert!(
        !d.events()
            .iter()
            .any(|v| kind_is(v, "api_call") && pid_is(v, nginx.pid())),
        "inbound requests are not outbound API calls"
    );
    assert_no_leak(d);
}

#[test]
fn same_credential_from_curl_and_python_has_one_fingerprint_and_basic_keeps_only_the_user() {
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    let token = jwt("batch-export", JWT_SIG);
    let pid = curl(
        &nginx,
        "--http2",
        &["-H", &format!("Authorization: Bearer {token}")],
        &fhir_path(),
    );
    let from_curl = api_call(&d, "curl call", pid, FHIR_TEMPLATE);

    let script = format!(
        "import ssl, http.client, base64\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         c = http.client.HTTPSConnection('127.0.0.1', {port}, context=ctx)\n\
         c.request('GET', {path:?}, headers={{'Host': 'fhir.nhiwatch.test', 'Authorization': 'Bearer {token}'}})\n\
         r = c.getresponse(); r.read(); assert r.status == 200\n\
         c.request('GET', {path:?}, headers={{'Host': 'fhir.nhiwatch.test', 'Authorization': 'Bearer {other}'}})\n\
         r = c.getresponse(); r.read(); assert r.status == 200\n\
         basic = base64.b64encode(b'etl-svc:{BASIC_PASSWORD}').decode()\n\
         c.request('POST', '/phi-exports/2026/{PATIENT_ID}.csv', body=b'{BODY_MARKER}', headers={{'Host': 'fhir.nhiwatch.test', 'Authorization': 'Basic ' + basic}})\n\
         r = c.getresponse(); r.read(); assert r.status == 200\n",
        ca = nginx.cert.display().to_string(),
        port = nginx.port,
        path = fhir_path(),
        other = jwt("batch-export", JWT_SIG_2),
    );
    let pid = spawn_pid(Command::new("python3").args(["-c", &script]));
    let from_python: Vec<Value> = {
        d.wait_for("python's Basic call", WAIT, |v| {
            kind_is(v, "api_call") && pid_is(v, pid) && v["method"] == "POST"
        });
        d.events()
            .into_iter()
            .filter(|v| kind_is(v, "api_call") && pid_is(v, pid))
            .collect()
    };
    assert_eq!(
        from_python.len(),
        3,
        "three calls on one keep-alive connection: {from_python:?}"
    );
    for c in &from_python {
        assert_eq!(c["protocol"], "http1", "{c}");
        assert_eq!(c["status"], 200, "{c}");
        assert_eq!(c["flow"], from_python[0]["flow"], "one connection: {c}");
    }
    let fp = |v: &Value| credential(v)["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(from_python[0]["path"], FHIR_TEMPLATE);
    assert_eq!(
        fp(&from_curl),
        fp(&from_python[0]),
        "the same token from curl (HTTP/2) and python (HTTP/1.1) has one fingerprint"
    );
    assert_ne!(
        fp(&from_python[0]),
        fp(&from_python[1]),
        "another token differs"
    );
    let basic = &from_python[2];
    assert_eq!(basic["path"], "/phi-exports/{id}/{id}.csv", "{basic}");
    let cred = credential(basic);
    assert_eq!(cred["kind"], "basic", "{basic}");
    assert_eq!(cred["username"], "etl-svc", "{basic}");
    assert_eq!(cred["long_lived"], true, "{basic}");
    assert_no_leak(d);
}

#[test]
fn node_call_with_aws_sigv4_is_parsed() {
    let node = run_ok(Command::new("sh").args(["-c", "readlink -f \"$(command -v node)\""]));
    let node = String::from_utf8_lossy(&node.stdout).trim().to_owned();
    assert!(
        !node.is_empty(),
        "node is not installed: cargo xtask deps installs it"
    );
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(
        &[],
        &format!("  tls:\n    extra_targets: [{node}]\n"),
    ));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261123/us-east-1/s3/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature={AWS_SIGNATURE}"
    );
    let script = format!(
        "const https=require('https');const fs=require('fs');\
         https.get({{host:'127.0.0.1',port:{port},path:'/phi-exports/2026/report.csv',ca:fs.readFileSync({ca:?}),\
         servername:'s3.nhiwatch.test',headers:{{Host:'s3.nhiwatch.test',Authorization:'{auth}','x-amz-date':'20261123T000000Z'}}}},\
         r=>{{r.resume();r.on('end',()=>process.exit(r.statusCode==200?0:1))}})\
         .on('error',e=>{{console.error(e);process.exit(2)}});",
        port = nginx.port,
        ca = nginx.cert.display().to_string(),
    );
    let pid = spawn_pid(Command::new(&node).args(["-e", &script]));
    let call = api_call(&d, "node S3-like call", pid, "/phi-exports/{id}/report.csv");
    assert_eq!(call["method"], "GET", "{call}");
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["destination"]["name"], "s3.nhiwatch.test", "{call}");
    let cred = credential(&call);
    assert_eq!(cred["kind"], "aws_sigv4", "{call}");
    assert_eq!(cred["access_key_id"], "AKIAIOSFODNN7EXAMPLE", "{call}");
    assert_eq!(cred["long_lived"], true, "AKIA is a long-term key: {call}");
    assert_no_leak(d);
}

#[test]
fn openssl_s_client_pipelined_requests_pair_with_their_responses() {
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    // Two requests in one write: pipelining; nginx answers in order.
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: fhir.nhiwatch.test\r\nAuthorization: Bearer {}\r\n\r\n\
         GET /nope/{PATIENT_ID} HTTP/1.1\r\nHost: fhir.nhiwatch.test\r\nx-api-key: {API_KEY}\r\nConnection: close\r\n\r\n",
        fhir_path(),
        jwt("s-client", JWT_SIG)
    );
    let pid = converse(
        Command::new("openssl").args([
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-connect",
            &format!("127.0.0.1:{}", nginx.port),
        ]),
        &req,
    );
    let first = api_call(&d, "first pipelined call", pid, FHIR_TEMPLATE);
    let second = api_call(&d, "second pipelined call", pid, "/nope/{id}");
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(second["status"], 404, "{second}");
    assert_eq!(credential(&first)["kind"], "jwt");
    assert_eq!(credential(&second)["kind"], "api_key");
    assert_no_leak(d);
}

#[test]
fn fingerprint_key_is_private_and_stable_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let nginx = Nginx::start(locations());
    let state = TempDir::new("nhiwatch-e2e-state");
    let state_dir = state.path().join("state");
    let token = jwt("restart", JWT_SIG);
    let mut prints = Vec::new();
    for round in 0..2 {
        let d = Daemon::start_with_state(&config_with(&[], ""), Some(&state_dir));
        let pid = curl(
            &nginx,
            "--http1.1",
            &["-H", &format!("Authorization: Bearer {token}")],
            &fhir_path(),
        );
        let call = api_call(&d, &format!("call in round {round}"), pid, FHIR_TEMPLATE);
        prints.push(credential(&call)["fingerprint"].clone());
        assert_no_leak(d);
    }
    assert_eq!(prints[0], prints[1], "same key after a restart");
    let key = state_dir.join("fingerprint.key");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{key:?}");
    assert_eq!(meta.len(), 32);

    // Another deployment (another key) gives the same token another fingerprint.
    let d = Daemon::start(&config_with(&[], ""));
    let pid = curl(
        &nginx,
        "--http1.1",
        &["-H", &format!("Authorization: Bearer {token}")],
        &fhir_path(),
    );
    let call = api_call(&d, "call with another key", pid, FHIR_TEMPLATE);
    assert_ne!(credential(&call)["fingerprint"], prints[0]);
    assert_no_leak(d);
}
