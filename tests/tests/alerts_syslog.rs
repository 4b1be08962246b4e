//! End-to-end: alerts reach a real rsyslogd over RFC 5425 TLS (client certificate required) and plain octet-counted TCP, intact and one message per alert.

use std::time::Duration;

use nhiwatch::{
    alerts::{
        sinks::{
            syslog::{SyslogConfig, SyslogSink},
            tls::TlsClientConfig,
            SinkError,
        },
        Outgoing,
    },
    detect::finding::Severity,
};
use nhiwatch_e2e::*;

/// Bounds each wait for something that must happen: generous, so a busy machine is only slower.
const WAIT: Duration = Duration::from_secs(60);
const HOST: &str = "e2e-node";
const APP: &str = "nhiwatch-e2e";

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

const SEVERITIES: [(Severity, u64); 5] = [
    (Severity::Critical, 2),
    (Severity::High, 3),
    (Severity::Medium, 4),
    (Severity::Low, 5),
    (Severity::Info, 6),
];

/// `n` alerts of every severity with keys that need SD escaping and bodies in several scripts;
/// one body is larger than a TLS record (16 KiB) so a frame spans records.
fn alerts(tag: &str, n: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|i| {
            let (severity, _) = SEVERITIES[i % SEVERITIES.len()];
            let pad = if i == 3 {
                "x".repeat(20_000)
            } else {
                String::new()
            };
            let body = serde_json::json!({
                "i": i,
                "tag": tag,
                "text": "ключ — 鍵 — 🔑 — \"q\" \\ ] [x] <y>",
                "pad": pad,
            })
            .to_string();
            Outgoing {
                time_ns: 1_700_000_000_000_000_000 + i as i64 * 1_000,
                fresh: true,
                severity,
                rule: format!("NHI-{:03}", 10 + i % 7),
                dedup_key: format!("{tag}/{i}/\"quoted\"\\back]slash"),
                body,
            }
        })
        .collect()
}

fn sd_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

fn tls_config(r: &Rsyslog, cert: Option<(&std::path::Path, &std::path::Path)>) -> SyslogConfig {
    SyslogConfig {
        address: format!("127.0.0.1:{}", r.tls_port),
        tls: Some(TlsClientConfig {
            ca: Some(r.ca.clone()),
            cert: cert.map(|c| c.0.to_owned()),
            key: cert.map(|c| c.1.to_owned()),
            server_name: Some("localhost".into()),
        }),
        app_name: APP.into(),
        facility: 10,
    }
}

/// Every sent alert arrived exactly once, as itself: PRI, MSGID, SD params, JSON body.
fn assert_received_exactly(got: &[Value], sent: &[Outgoing], facility: u64) {
    assert_eq!(
        got.len(),
        sent.len(),
        "messages merged, split, lost or duplicated: {got:#?}"
    );
    for o in sent {
        let want_sd = format!(
            "[nhiwatch@32473 rule=\"{}\" severity=\"{}\" dedup_key=\"{}\"]",
            sd_escape(&o.rule),
            o.severity.name(),
            sd_escape(&o.dedup_key)
        );
        let matching: Vec<&Value> = got
            .iter()
            .filter(|m| m["structured_data"] == want_sd.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "{want_sd} in {got:#?}");
        let m = matching[0];
        let code = SEVERITIES.iter().find(|s| s.0 == o.severity).unwrap().1;
        assert_eq!(m["pri"], (facility * 8 + code).to_string().as_str(), "{m}");
        assert_eq!(m["severity"], code.to_string().as_str(), "{m}");
        assert_eq!(m["facility"], facility.to_string().as_str(), "{m}");
        assert_eq!(m["msgid"], o.rule.as_str(), "{m}");
        assert_eq!(m["app_name"], APP, "{m}");
        assert_eq!(m["hostname"], HOST, "{m}");
        assert_eq!(m["procid"], std::process::id().to_string().as_str(), "{m}");
        let msg = m["msg"].as_str().unwrap();
        // rsyslog keeps the BOM RFC 5424 puts before a UTF-8 MSG; a JSON parser must not see it.
        let body = msg.strip_prefix('\u{feff}').unwrap_or(msg);
        let parsed: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("body of {want_sd} is not the JSON sent ({e}): {msg:?}"));
        assert_eq!(parsed, serde_json::from_str::<Value>(&o.body).unwrap());
    }
}

#[test]
fn tls_with_client_certificate_delivers_every_alert_intact() {
    let r = Rsyslog::start();
    let cfg = tls_config(&r, Some((&r.client_cert, &r.client_key)));
    let sent = alerts("tls", 23);
    block_on(async {
        let mut sink = SyslogSink::new(&cfg, HOST, WAIT).unwrap();
        sink.check().await.unwrap();
        // Several batches on one connection, then one more after rsyslog had time to idle.
        sink.send(&sent[..1]).await.unwrap();
        sink.send(&sent[1..15]).await.unwrap();
        sink.send(&sent[15..20]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        sink.send(&sent[20..]).await.unwrap();
    });
    let got = r.wait_received(sent.len(), WAIT);
    assert_received_exactly(&got, &sent, 10);
    // rsyslog's RFC 5424 re-emission carries the same header, so a downstream collector sees it too.
    let raw = String::from_utf8_lossy(&r.received_raw()).into_owned();
    assert!(
        raw.contains(&format!("<83>1 2023-11-14T22:13:20.000001Z {HOST} {APP} ")),
        "{}",
        &raw[..raw.len().min(2000)]
    );
}

#[test]
fn tls_clients_rsyslog_does_not_permit_deliver_nothing() {
    let r = Rsyslog::start();
    // Another CA's certificate, our CA's certificate with a name rsyslog does not permit, and none.
    let other = TempDir::new("nhiwatch-e2e-other-ca");
    make_cert(other.path());
    let stranger = make_client_cert(other.path(), RSYSLOG_PEER);
    let wrong_name = make_client_cert(r.dir.path(), "someone-else");
    let clients = [
        Some((stranger.0.as_path(), stranger.1.as_path())),
        Some((wrong_name.0.as_path(), wrong_name.1.as_path())),
        None,
    ];
    for client in clients {
        let cfg = tls_config(&r, client);
        let result = block_on(async {
            let mut sink = SyslogSink::new(&cfg, HOST, WAIT).unwrap();
            sink.send(&alerts("refused", 3)).await
        });
        // A refusal seen during or right after the handshake is an error; either way nothing may arrive.
        assert!(
            matches!(result, Err(SinkError::Transient(_))),
            "client {client:?}: {result:?}"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(r.received().is_empty(), "{:#?}", r.received());
    // The refusals are rsyslog's (certificate checks), not a broken listener: a permitted client still gets in.
    let ok = alerts("after-refusals", 2);
    let cfg = tls_config(&r, Some((&r.client_cert, &r.client_key)));
    block_on(async {
        SyslogSink::new(&cfg, HOST, WAIT)
            .unwrap()
            .send(&ok)
            .await
            .unwrap()
    });
    assert_received_exactly(&r.wait_received(2, WAIT), &ok, 10);
}

#[test]
fn plain_tcp_with_octet_counting() {
    let r = Rsyslog::start();
    let cfg: SyslogConfig = serde_yaml_ng::from_str(&format!(
        "address: 127.0.0.1:{}\napp_name: {APP}\nfacility: 16\n",
        r.tcp_port
    ))
    .unwrap();
    let sent = alerts("tcp", 12);
    block_on(async {
        let mut sink = SyslogSink::new(&cfg, HOST, WAIT).unwrap();
        sink.send(&sent[..5]).await.unwrap();
        sink.send(&sent[5..]).await.unwrap();
    });
    // No newline separates the frames: only octet counting keeps them apart.
    assert_received_exactly(&r.wait_received(sent.len(), WAIT), &sent, 16);
}

/// File contents the daemon sees read: never to reach the SIEM.
const SECRET: &str = "SECRET-syslog-e2e-5c0ffee1d0d0";

/// The daemon itself, configured with a syslog sink over TLS with a client certificate: an
/// ungoverned process (cat) reads watched secret files, and rsyslog receives the daemon's own
/// findings as OCSF Detection Findings, one message each, with the dedup keys printed on stdout.
#[test]
fn daemon_findings_reach_rsyslog_as_ocsf() {
    let r = Rsyslog::start();
    let tmp = TempDir::new("nhiwatch-e2e-syslog-daemon");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let files: Vec<_> = (0..6)
        .map(|i| {
            let f = secrets.join(format!("s{i:02}"));
            std::fs::write(&f, SECRET).unwrap();
            f
        })
        .collect();
    let dir = secrets.display().to_string();
    let cfg = format!(
        "{}rules: []\nalerts:\n  rate_limit: {{window: 1m, max: 1000}}\n  sinks:\n    - name: siem\n      type: syslog\n      format: ocsf\n      min_severity: low\n      address: 127.0.0.1:{port}\n      tls:\n        ca: {ca}\n        cert: {cert}\n        key: {key}\n        server_name: localhost\n      retry_initial: 100ms\n      retry_max: 1s\n      timeout: 30s\n",
        config_with(&[format!("{dir}/")], ""),
        port = r.tls_port,
        ca = r.ca.display(),
        cert = r.client_cert.display(),
        key = r.client_key.display(),
    );
    let d = Daemon::start(&cfg);
    for f in &files {
        run_ok(std::process::Command::new("cat").arg(f));
    }
    // NHI-020 (high) per file read, about files under `dir`: keys as rsyslog received them.
    let ocsf_020 = |got: &[Value]| -> Vec<(Value, Value)> {
        got.iter()
            .filter(|m| m["msgid"] == "NHI-020")
            .filter_map(|m| {
                let msg = m["msg"].as_str()?;
                let body: Value = serde_json::from_str(msg.strip_prefix('\u{feff}')?).ok()?;
                body.to_string().contains(&dir).then(|| (m.clone(), body))
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ocsf_020(&r.received()).len() < files.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "rsyslog got {} of {} NHI-020 alerts; daemon stderr:\n{}\nrsyslog log:\n{}",
            ocsf_020(&r.received()).len(),
            files.len(),
            d.stderr(),
            r.internal_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2)); // duplicates or split messages would show now
    let got = r.received();
    let events = d.events();
    let (_, stderr) = d.stop();

    // Every message is a whole OCSF Detection Finding whose header agrees with its body.
    let mut rules = std::collections::BTreeSet::new();
    for m in &got {
        let msg = m["msg"].as_str().unwrap();
        let body: Value = serde_json::from_str(msg.strip_prefix('\u{feff}').unwrap_or(msg))
            .unwrap_or_else(|e| panic!("not one JSON document ({e}): {m}"));
        assert_eq!(body["class_uid"], 2004, "{m}");
        let rule = body["finding_info"]["analytic"]["uid"].as_str().unwrap();
        assert_eq!(m["msgid"], rule, "{m}");
        let key = body["finding_info"]["uid"].as_str().unwrap();
        let sev_id = body["severity_id"].as_u64().unwrap();
        let code = 7 - sev_id; // OCSF 1 Informational … 5 Critical → syslog 6 … 2
        assert_eq!(m["pri"], (10 * 8 + code).to_string().as_str(), "{m}");
        let sev = body["severity"].as_str().unwrap().to_lowercase();
        assert_eq!(
            m["structured_data"],
            format!("[nhiwatch@32473 rule=\"{rule}\" severity=\"{sev}\" dedup_key=\"{key}\"]")
                .as_str(),
            "{m}"
        );
        assert_eq!(m["app_name"], "nhiwatch", "{m}");
        let host = m["hostname"].as_str().unwrap();
        assert!(!host.is_empty() && !host.contains(' '), "{m}");
        assert!(
            sev_id >= 2,
            "min_severity low let an info finding through: {m}"
        );
        rules.insert(rule.to_owned());
    }
    assert!(
        rules.contains("NHI-001"),
        "the ungoverned identity itself: {rules:?}"
    );

    // Exactly the daemon's own NHI-020 findings about these files, each once.
    let received_keys: Vec<String> = ocsf_020(&got)
        .iter()
        .map(|(_, b)| b["finding_info"]["uid"].as_str().unwrap().to_owned())
        .collect();
    let mut unique_keys = received_keys.clone();
    unique_keys.sort();
    unique_keys.dedup();
    assert_eq!(
        unique_keys.len(),
        received_keys.len(),
        "duplicates: {received_keys:?}"
    );
    let printed: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] == "finding" && e["rule"]["id"] == "NHI-020")
        .filter(|e| {
            e["evidence"]["file"]
                .as_str()
                .is_some_and(|f| f.starts_with(&dir))
        })
        .map(|e| e["dedup_key"].as_str().unwrap().to_owned())
        .collect();
    let mut printed_sorted = printed.clone();
    printed_sorted.sort();
    assert_eq!(
        printed_sorted.len(),
        files.len(),
        "the daemon found every read"
    );
    assert_eq!(
        unique_keys, printed_sorted,
        "rsyslog got exactly the daemon's findings"
    );

    // Secrets never leave: not in what rsyslog wrote, not in the daemon's log.
    let raw = r.received_raw();
    assert!(!raw.is_empty());
    assert!(
        !String::from_utf8_lossy(&raw).contains(SECRET),
        "file content reached the SIEM"
    );
    assert!(!stderr.contains(SECRET), "file content in the daemon's log");
}
