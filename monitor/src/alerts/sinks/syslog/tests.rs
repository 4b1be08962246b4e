use std::{path::Path, sync::Arc};

use rustls::{pki_types::PrivateKeyDer, server::WebPkiClientVerifier, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::TcpListener,
    sync::{mpsc, oneshot},
};
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::alerts::sinks::tls::testpki::{Leaf, Pki};

/// Bounds every wait; generous, so a busy machine is slow rather than a failure.
const WAIT: Duration = Duration::from_secs(60);

fn alert(severity: Severity, rule: &str, dedup_key: &str, body: &str) -> Outgoing {
    Outgoing {
        time_ns: 1_700_000_000_123_456_789,
        fresh: true,
        severity,
        rule: rule.into(),
        dedup_key: dedup_key.into(),
        body: body.into(),
    }
}

/// Alerts whose bodies carry multi-byte UTF-8 and whose keys need SD escaping.
fn batch(tag: &str, n: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|i| {
            let body =
                serde_json::json!({"n": i, "tag": tag, "text": "ключ — 鍵 — 🔑 \"quoted\" ]"})
                    .to_string();
            alert(
                Severity::High,
                "NHI-010",
                &format!("{tag}-{i} \"q\" \\ ]"),
                &body,
            )
        })
        .collect()
}

/// Reads octet-counted frames (`LEN SP MSG`) until `n` arrived; fails on anything else.
async fn read_frames<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    while frames.len() < n {
        let got = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("frames in time")
            .expect("read");
        assert!(
            got > 0,
            "connection closed after {} of {n} frames",
            frames.len()
        );
        buf.extend_from_slice(&chunk[..got]);
        while let Some(sp) = buf.iter().position(|&b| b == b' ') {
            let len: usize = std::str::from_utf8(&buf[..sp])
                .ok()
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "bad length prefix {:?}",
                        String::from_utf8_lossy(&buf[..sp])
                    )
                });
            if buf.len() < sp + 1 + len {
                break;
            }
            let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).expect("UTF-8 frame");
            assert!(
                msg.starts_with('<'),
                "frame does not start a message: {msg:?}"
            );
            frames.push(msg);
            buf.drain(..sp + 1 + len);
        }
    }
    assert!(buf.is_empty(), "bytes beyond the frames: {buf:?}");
    frames
}

/// Checks one received message against the alert it came from.
fn assert_carries(msg: &str, o: &Outgoing) {
    let (head, body) = msg.split_once("] \u{feff}").expect("SD then BOM");
    let parsed: serde_json::Value = serde_json::from_str(body).expect("body is JSON");
    let sent: serde_json::Value = serde_json::from_str(&o.body).unwrap();
    assert_eq!(parsed, sent);
    assert!(head.starts_with("<83>1 "), "{head}");
    assert!(
        head.contains(&format!("dedup_key=\"{}\"", sd_value(&o.dedup_key))),
        "{head}"
    );
}

fn tls_server(dir: &Path, pki: &Pki) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = pki.leaf(dir, "server", &["localhost", "127.0.0.1"], true);
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca_pem).unwrap())
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let chain = CertificateDer::pem_file_iter(&server.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&server.key).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(cfg))
}

fn tls_config(address: &str, pki: &Pki, client: Option<&Leaf>) -> SyslogConfig {
    SyslogConfig {
        address: address.into(),
        tls: Some(TlsClientConfig {
            ca: Some(pki.ca_pem.clone()),
            cert: client.map(|c| c.cert.clone()),
            key: client.map(|c| c.key.clone()),
            server_name: None,
        }),
        app_name: "nhiwatch".into(),
        facility: 10,
    }
}

fn tcp_config(address: &str) -> SyslogConfig {
    serde_yaml_ng::from_str(&format!("address: \"{address}\"\n")).unwrap()
}

#[test]
fn message_layout() {
    let o = alert(Severity::High, "NHI-010", "k1", r#"{"a":1}"#);
    assert_eq!(
        rfc5424(&o, 10, "node-1", "nhiwatch", 42),
        "<83>1 2023-11-14T22:13:20.123456Z node-1 nhiwatch 42 NHI-010 \
         [nhiwatch@32473 rule=\"NHI-010\" severity=\"high\" dedup_key=\"k1\"] \u{feff}{\"a\":1}"
    );
    let bytes = rfc5424(&o, 10, "h", "a", 1).into_bytes();
    let at = bytes.windows(2).position(|w| w == b"] ").unwrap() + 2;
    assert_eq!(
        &bytes[at..at + 3],
        b"\xEF\xBB\xBF",
        "UTF-8 BOM before the body"
    );
    // Before the epoch: NILVALUE rather than a made-up date.
    let old = Outgoing { time_ns: -1, ..o };
    assert!(rfc5424(&old, 10, "h", "a", 1).starts_with("<83>1 - h a 1 NHI-010 "));
}

#[test]
fn pri_per_severity_and_facility() {
    for (sev, code) in [
        (Severity::Critical, 2),
        (Severity::High, 3),
        (Severity::Medium, 4),
        (Severity::Low, 5),
        (Severity::Info, 6),
    ] {
        for facility in [0u8, 10, 23] {
            let m = rfc5424(&alert(sev, "NHI-001", "k", "{}"), facility, "h", "a", 1);
            let pri = u16::from(facility) * 8 + code;
            assert!(m.starts_with(&format!("<{pri}>1 ")), "{m}");
            assert!(m.contains(&format!("severity=\"{}\"", sev.name())), "{m}");
        }
    }
}

#[test]
fn sd_values_are_escaped() {
    let m = rfc5424(
        &alert(Severity::Low, "NHI-0\"1]", r#"a"b\c]d"#, "{}"),
        10,
        "h",
        "a",
        1,
    );
    assert!(m.contains(r#"rule="NHI-0\"1\]""#), "{m}");
    assert!(m.contains(r#"dedup_key="a\"b\\c\]d"]"#), "{m}");
    // MSGID is a header field: no quotes to escape there, only non-printables replaced.
    assert!(m.contains(" NHI-0\"1] [nhiwatch@32473 "), "{m}");
}

#[test]
fn header_fields_are_printable_ascii_within_limits() {
    assert_eq!(header_field("my host\tname", 255), "my_host_name");
    assert_eq!(header_field("hôte", 255), "h_te");
    assert_eq!(header_field("", 48), "-");
    assert_eq!(header_field(&"x".repeat(300), HOSTNAME_MAX).len(), 255);
    assert_eq!(header_field(&"é".repeat(60), APP_NAME_MAX).len(), 48);
    let m = rfc5424(
        &alert(Severity::Info, "", "k", "{}"),
        10,
        "",
        "app with space",
        7,
    );
    assert!(
        m.starts_with("<86>1 2023-11-14T22:13:20.123456Z - app_with_space 7 - ["),
        "{m}"
    );
}

#[test]
fn config_defaults_and_errors() {
    let c = tcp_config("siem.example:6514");
    assert_eq!(c.app_name, "nhiwatch");
    assert_eq!(c.facility, 10);
    assert_eq!(c.tls, None);
    assert!(serde_yaml_ng::from_str::<SyslogConfig>("address: a:1\nport: 3\n").is_err());

    let t = Duration::from_secs(1);
    for good in ["siem.example:6514", "127.0.0.1:514", "[::1]:6514"] {
        SyslogSink::new(&tcp_config(good), "h", t).unwrap();
    }
    for bad in [
        "siem.example",
        "siem.example:",
        ":514",
        "host:0",
        "host:70000",
        "::1:514",
        "[::1:514",
        "a b:514",
    ] {
        match SyslogSink::new(&tcp_config(bad), "h", t) {
            Err(SinkError::Config(m)) => assert!(m.contains(bad), "{bad}: {m}"),
            Err(e) => panic!("{bad}: {e:?}"),
            Ok(_) => panic!("{bad} accepted"),
        }
    }
    let mut c = tcp_config("h:514");
    c.facility = 24;
    assert!(matches!(SyslogSink::new(&c, "h", t), Err(SinkError::Config(m)) if m.contains("24")));

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let mut c = tcp_config("h:6514");
    c.tls = Some(TlsClientConfig {
        ca: Some(missing.clone()),
        ..Default::default()
    });
    match SyslogSink::new(&c, "h", t) {
        Err(SinkError::Config(m)) => assert!(m.contains(&missing.display().to_string()), "{m}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("missing CA accepted"),
    }
    let pki = Pki::new(dir.path(), "t");
    let mut c = tls_config("h:6514", &pki, None);
    c.tls.as_mut().unwrap().server_name = Some("not a name!".into());
    assert!(
        matches!(SyslogSink::new(&c, "h", t), Err(SinkError::Config(m)) if m.contains("not a name!"))
    );
}

#[tokio::test]
async fn tls_with_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let client = pki.leaf(dir.path(), "client", &["client.test"], false);
    let acceptor = tls_server(dir.path(), &pki);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let n = 50;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let peer = tls.get_ref().1.peer_certificates().map(|c| c.len());
        (peer, read_frames(&mut tls, n).await)
    });
    // By name (the server certificate carries `localhost`) while connecting to the address.
    let mut cfg = tls_config(&addr.to_string(), &pki, Some(&client));
    cfg.tls.as_mut().unwrap().server_name = Some("localhost".into());
    let mut sink = SyslogSink::new(&cfg, "node-1", WAIT).unwrap();
    sink.check().await.unwrap();
    let alerts = batch("tls", n);
    sink.send(&alerts[..20]).await.unwrap();
    sink.send(&alerts[20..]).await.unwrap();
    let (peer, frames) = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(peer, Some(1), "the server saw our client certificate");
    assert_eq!(frames.len(), n);
    for (m, o) in frames.iter().zip(&alerts) {
        assert_carries(m, o);
        assert!(m.contains(" node-1 nhiwatch "), "{m}");
    }
}

#[tokio::test]
async fn refused_client_certificate_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let other = Pki::new(dir.path(), "other");
    let stranger = other.leaf(dir.path(), "stranger", &["stranger.test"], false);
    let acceptor = tls_server(dir.path(), &pki);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut b = Vec::new();
                    let _ = tls.read_to_end(&mut b).await;
                    let _ = tx.send(b);
                }
            });
        }
    });
    for client in [None, Some(&stranger)] {
        let cfg = tls_config(&addr.to_string(), &pki, client);
        let mut sink = SyslogSink::new(&cfg, "h", WAIT).unwrap();
        // The server's refusal must be seen however long it takes to arrive (the sink returns
        // as soon as it does).
        sink.tls13_settle = WAIT;
        match sink.send(&batch("refused", 3)).await {
            Err(SinkError::Transient(m)) => assert!(!m.is_empty()),
            r => panic!("client cert {:?}: {r:?}", client.map(|c| &c.cert)),
        }
        assert!(matches!(sink.check().await, Err(SinkError::Transient(_))));
    }
    assert!(
        rx.try_recv().is_err(),
        "the server accepted a refused client"
    );
}

/// The server drops the connection between two batches: the second batch goes out on a new
/// connection instead of into the dead one.
#[tokio::test]
async fn reconnects_after_the_server_closes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let client = pki.leaf(dir.path(), "client", &["client.test"], false);
    for tls in [false, true] {
        let acceptor = tls_server(dir.path(), &pki);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dropped_tx, dropped_rx) = oneshot::channel();
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut dropped = Some(dropped_tx);
            for _ in 0..2 {
                let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
                    .await
                    .expect("a new connection for the second batch")
                    .unwrap();
                if tls {
                    let mut s = acceptor.accept(tcp).await.unwrap();
                    got.push(read_frames(&mut s, 3).await);
                } else {
                    let mut s = tcp;
                    got.push(read_frames(&mut s, 3).await);
                }
                // The stream is dropped here: FIN, no close_notify, like a crashed or restarted server.
                if let Some(d) = dropped.take() {
                    let _ = d.send(());
                }
            }
            got
        });
        let cfg = if tls {
            tls_config(&addr.to_string(), &pki, Some(&client))
        } else {
            tcp_config(&addr.to_string())
        };
        let mut sink = SyslogSink::new(&cfg, "h", WAIT).unwrap();
        let first = batch("first", 3);
        let second = batch("second", 3);
        sink.send(&first).await.unwrap();
        dropped_rx.await.unwrap();
        // The server's FIN (or reset) has reached our socket: what the sink must notice.
        let fd = sink.conn.as_ref().expect("connected").fd();
        let deadline = std::time::Instant::now() + WAIT;
        while !peer_closed(fd) {
            assert!(
                std::time::Instant::now() < deadline,
                "the server's close did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sink.send(&second).await.unwrap();
        let got = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
        for (frames, sent) in got.iter().zip([&first, &second]) {
            for (m, o) in frames.iter().zip(sent) {
                assert_carries(m, o);
            }
        }
    }
}

/// Whether the peer closed the TCP connection on `fd` (TCP state CLOSE_WAIT after its FIN, or
/// CLOSE after a reset), whatever is still unread.
fn peer_closed(fd: RawFd) -> bool {
    // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is the sink's open socket; `info` and `len` are valid for writes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    const TCP_CLOSE: u8 = 7;
    const TCP_CLOSE_WAIT: u8 = 8;
    r == 0 && matches!(info.tcpi_state, TCP_CLOSE | TCP_CLOSE_WAIT)
}

#[tokio::test]
async fn unreachable_server_is_transient_then_recovers() {
    // Bound but not listening: connections are refused, and the port stays ours until the
    // server listens on it (a port given back in between could be taken by anyone).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = socket.local_addr().unwrap().to_string();
    let mut sink = SyslogSink::new(&tcp_config(&address), "h", WAIT).unwrap();
    let alerts = batch("later", 2);
    assert!(
        matches!(sink.send(&alerts).await, Err(SinkError::Transient(m)) if m.contains(&address))
    );
    assert!(matches!(sink.check().await, Err(SinkError::Transient(_))));
    let listener = socket.listen(16).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_frames(&mut s, 2).await
    });
    sink.send(&alerts).await.unwrap();
    let frames = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    for (m, o) in frames.iter().zip(&alerts) {
        assert_carries(m, o);
    }
}
