//! End-to-end: API calls sent in cleartext over TCP (HTTP/1.1, h2c with prior knowledge and by
//! `Upgrade: h2c`, gRPC) by real clients (curl, python3, python grpcio, a Go x/net h2c client)
//! to real servers (nginx plain and h2c, a python server, a grpcio server, a Go h2c server), seen
//! from the socket syscalls with `transport: "tcp"`; servers, non-HTTP traffic and TLS bytes never
//! parsed; a local proxy's upstream leg never a second call; the sensor turned off reports
//! disabled; and not one secret kept.

use std::{
    io::Write,
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use nhiwatch_e2e::*;

/// Bounds each wait for something that must happen: generous, so a busy machine is only slower.
const WAIT: Duration = Duration::from_secs(60);

const TOKEN: &str = "LEAKCANARYsockbearer4e8a1f9c";
const QUERY_VALUE: &str = "LEAKCANARYsockquery2b7";
const API_KEY: &str = "sk-ant-api03-LEAKCANARYsockapikey0d3";

fn secrets() -> [&'static str; 4] {
    [TOKEN, QUERY_VALUE, API_KEY, "LEAKCANARY"]
}

/// nginx serving cleartext: HTTP/1.1 on 127.0.0.1 and [::1], and h2c (prior knowledge, nginx
/// 1.22 has no Upgrade: h2c) on its own port. `extra` goes into the server blocks.
struct PlainNginx {
    child: Child,
    port: u16,
    h2c_port: u16,
    dir: TempDir,
}

impl PlainNginx {
    fn start(extra: &str) -> PlainNginx {
        let dir = TempDir::new("nhiwatch-e2e-plain-nginx");
        let (port, h2c_port) = (free_port(), free_port());
        let body = "location /fhir/ { return 200 '{\"resourceType\":\"Bundle\"}'; }";
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               default_type application/json;\n\
               server {{\n    listen 127.0.0.1:{port};\n    listen [::1]:{port};\n    {body}\n    {extra}\n  }}\n\
               server {{\n    listen 127.0.0.1:{h2c_port} http2;\n    {body}\n  }}\n}}\n",
            d = dir.path().display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        wait_until("plain nginx listening", WAIT, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && TcpStream::connect(("127.0.0.1", h2c_port)).is_ok()
        });
        PlainNginx {
            child,
            port,
            h2c_port,
            dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PlainNginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

fn calls_of(d: &Daemon, pid: u32) -> Vec<Value> {
    d.events()
        .into_iter()
        .filter(|v| kind_is(v, "api_call") && pid_is(v, pid))
        .collect()
}

/// Waits until `pid` has made `n` API calls and returns them.
fn wait_calls(d: &Daemon, what: &str, pid: u32, n: usize) -> Vec<Value> {
    wait_until(what, WAIT, || calls_of(d, pid).len() >= n);
    calls_of(d, pid)
}

fn kernel_anomaly(d: &Daemon, reason: &str) -> f64 {
    d.metric_sum(
        "nhiwatch_kernel_anomalies_total",
        &[&format!("reason=\"{reason}\"")],
    )
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
    for (what, bytes) in &outputs {
        for s in secrets() {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s:?} leaked into nhiwatch {what}"
            );
        }
        assert!(
            !bytes.windows(12).any(|w| w == b"resourceType"),
            "a response body byte leaked into nhiwatch {what}"
        );
    }
}

fn curl(args: &[&str]) -> u32 {
    spawn_pid(
        Command::new("curl")
            .args(["-sS", "--fail", "-o", "/dev/null"])
            .args(args),
    )
}

#[test]
fn cleartext_http1_and_h2c_calls_from_curl_and_python_over_ipv4_and_ipv6() {
    let nginx = PlainNginx::start("");
    let d = Daemon::start(&config_with(&[], ""));
    let auth = format!("Authorization: Bearer {TOKEN}");
    let path = format!("/fhir/R4/Patient/8812/Observation?code={QUERY_VALUE}");

    // curl, HTTP/1.1 over IPv4
    let url = format!("http://127.0.0.1:{}{path}", nginx.port);
    let pid = curl(&["--http1.1", "-H", &auth, &url]);
    let calls = wait_calls(&d, "curl HTTP/1.1 cleartext call", pid, 1);
    let call = &calls[0];
    assert_eq!(call["transport"], "tcp", "{call}");
    assert_eq!(call["protocol"], "http1", "{call}");
    assert_eq!(call["method"], "GET", "{call}");
    assert_eq!(call["path"], "/fhir/R4/Patient/{id}/Observation", "{call}");
    assert_eq!(call["query_keys"], serde_json::json!(["code"]), "{call}");
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["end"], "complete", "{call}");
    let conn = d.wait_for("curl's connect", WAIT, |v| {
        kind_is(v, "tcp_connect") && pid_is(v, pid)
    });
    assert_eq!(
        call["flow"], conn["flow"],
        "tied to its TCP flow: {call} vs {conn}"
    );
    let cred = &call["credentials"][0];
    assert_eq!(cred["kind"], "bearer", "{call}");
    let fp = cred["fingerprint"].as_str().unwrap().to_owned();
    assert!(fp.starts_with("hmac-sha256:"), "{fp}");

    // curl, h2c with prior knowledge (curl 7.88 cannot reuse such a connection for a second
    // URL: one request per process), same credential, same fingerprint
    let url = format!("http://127.0.0.1:{}{path}", nginx.h2c_port);
    let pid = curl(&["--http2-prior-knowledge", "-H", &auth, &url]);
    let calls = wait_calls(&d, "curl h2c call", pid, 1);
    let call = &calls[0];
    assert_eq!(call["transport"], "tcp", "{call}");
    assert_eq!(call["protocol"], "http2", "{call}");
    assert_eq!(call["stream"], 1, "{call}");
    assert_eq!(call["method"], "GET", "{call}");
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["credentials"][0]["fingerprint"], fp.as_str(), "{call}");

    // python http.client over IPv6 loopback: three requests on one keep-alive connection
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('::1', {port})\n\
         for i in range(3):\n\
         \x20   c.request('GET', '/fhir/R4/Patient/{{}}'.format(100 + i), headers={{'x-api-key': '{API_KEY}'}})\n\
         \x20   r = c.getresponse(); r.read()\n\
         \x20   assert r.status == 200, r.status\n\
         c.close()\n",
        port = nginx.port
    );
    let pid = spawn_pid(Command::new("python3").args(["-c", &script]));
    let calls = wait_calls(&d, "python's three calls over IPv6", pid, 3);
    for call in &calls {
        assert_eq!(call["transport"], "tcp", "{call}");
        assert_eq!(call["protocol"], "http1", "{call}");
        assert_eq!(call["path"], "/fhir/R4/Patient/{id}", "{call}");
        assert_eq!(call["credentials"][0]["kind"], "api_key", "{call}");
        assert_eq!(call["flow"], calls[0]["flow"], "one connection: {call}");
        assert!(
            call["destination"]["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("[::1]:")),
            "{call}"
        );
    }
    // nginx served them all and made no call of its own.
    assert!(calls_of(&d, nginx.pid()).is_empty());
    assert_eq!(
        calls_of(&d, pid).len(),
        3,
        "one api_call per request, none twice"
    );
    assert_no_leak(d);
}

#[test]
fn a_python_server_is_not_a_client_and_its_inbound_requests_are_counted() {
    let port = free_port();
    let server = Child2(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("python server listening", WAIT, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let d = Daemon::start(&config_with(&[], ""));
    let before = d.metric_sum(
        "nhiwatch_stage_dropped_total",
        &["stage=\"api_calls\"", "reason=\"not_http_client\""],
    );
    let pid = curl(&[
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        &format!("http://127.0.0.1:{port}/"),
    ]);
    let calls = wait_calls(&d, "curl's call to the python server", pid, 1);
    assert_eq!(calls[0]["transport"], "tcp");
    assert_eq!(calls[0]["status"], 200);
    wait_until("the server's inbound request counted", WAIT, || {
        d.metric_sum(
            "nhiwatch_stage_dropped_total",
            &["stage=\"api_calls\"", "reason=\"not_http_client\""],
        ) > before
    });
    assert!(
        calls_of(&d, server.0.id()).is_empty(),
        "the server made no call"
    );
    assert_no_leak(d);
}

struct Child2(Child);

impl Drop for Child2 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn redis_tls_unix_sockets_files_and_pipes_give_no_api_call() {
    let dir = TempDir::new("nhiwatch-e2e-sockets-nothttp");
    let redis_port = free_port();
    let _redis = Child2(
        Command::new("redis-server")
            .args([
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (cargo xtask deps installs it)"),
    );
    wait_until("redis listening", WAIT, || {
        TcpStream::connect(("127.0.0.1", redis_port)).is_ok()
    });
    let tls = Nginx::start("location / { return 200 'ok'; }");
    let d = Daemon::start(&config_with(&[], ""));
    let not_http_before = kernel_anomaly(&d, "socket_not_http");

    let mut pids = Vec::new();
    // a database protocol: RESP over TCP (its inline form even starts with a capital word)
    let out = run_ok(Command::new("redis-cli").args([
        "-p",
        &redis_port.to_string(),
        "SET",
        "k",
        "GET / HTTP/1.1",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    // a TLS connection: the bytes on its socket are records, the request is seen by the uprobes
    let pid = curl(&[
        "--http1.1",
        "--cacert",
        tls.cert.to_str().unwrap(),
        &format!("https://127.0.0.1:{}/x", tls.port),
    ]);
    let via_tls = wait_calls(&d, "curl's call through TLS", pid, 1);
    // a unix socket, a file copy and a pipe, each carrying an HTTP request's bytes
    let big = dir.path().join("big");
    let mut f = std::fs::File::create(&big).unwrap();
    f.write_all(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    f.write_all(&vec![b'a'; 8 << 20]).unwrap();
    drop(f);
    let sock = dir.path().join("s.sock");
    let script = format!(
        "import socket, shutil, os\n\
         srv = socket.socket(socket.AF_UNIX); srv.bind('{s}'); srv.listen(1)\n\
         c = socket.socket(socket.AF_UNIX); c.connect('{s}')\n\
         a, _ = srv.accept()\n\
         c.sendall(b'GET /unix HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); a.recv(100)\n\
         a.sendall(b'HTTP/1.1 200 OK\\r\\ncontent-length: 0\\r\\n\\r\\n'); c.recv(100)\n\
         shutil.copyfile('{big}', '{big}.copy')\n\
         r, w = os.pipe(); os.write(w, b'GET /pipe HTTP/1.1\\r\\n\\r\\n'); os.read(r, 100)\n",
        s = sock.display(),
        big = big.display(),
    );
    pids.push(spawn_pid(Command::new("python3").args(["-c", &script])));
    pids.push(spawn_pid(
        Command::new("cp").arg(&big).arg(dir.path().join("cp.copy")),
    ));
    pids.push(spawn_pid(Command::new("sh").args([
        "-c",
        "printf 'GET /sh HTTP/1.1\\r\\n\\r\\n' | cat > /dev/null",
    ])));

    wait_until("redis and the TLS bytes classified not HTTP", WAIT, || {
        kernel_anomaly(&d, "socket_not_http") >= not_http_before + 2.0
    });
    // Processes above ran to completion (spawn_pid waits): anything they caused is in the ring;
    // an exit event of the last one bounds the wait.
    let last = *pids.last().unwrap();
    d.wait_for("the pipe writer's exit", WAIT, |v| {
        kind_is(v, "exit") && pid_is(v, last)
    });
    let tcp_calls: Vec<Value> = d
        .events()
        .into_iter()
        .filter(|v| (kind_is(v, "api_call") || kind_is(v, "tls_data")) && v["transport"] == "tcp")
        .filter(|v| {
            let p = v["pid"].as_u64().unwrap_or(0) as u32;
            pids.contains(&p) || p == pid || p == tls.pid()
        })
        .collect();
    assert!(
        tcp_calls.is_empty(),
        "non-HTTP or TLS traffic parsed as cleartext: {tcp_calls:?}"
    );
    assert!(
        d.events().iter().all(|v| !(kind_is(v, "api_call")
            && pids.contains(&(v["pid"].as_u64().unwrap_or(0) as u32)))),
        "no api_call from unix sockets, files or pipes"
    );
    assert_eq!(via_tls.len(), 1, "{via_tls:?}");
    assert_eq!(
        via_tls[0]["transport"], "tls",
        "the TLS connection is parsed once, from the uprobes"
    );
    d.stop();
}

#[test]
fn a_local_proxy_in_front_of_an_https_upstream_gives_one_call_per_request_to_the_client() {
    let upstream = Nginx::start("location / { return 200 '{\"resourceType\":\"Patient\"}'; }");
    let proxy = PlainNginx::start(&format!(
        "location /api/ {{ proxy_pass https://127.0.0.1:{}; proxy_ssl_verify off; proxy_http_version 1.1; }}",
        upstream.port
    ));
    for (proxies, expect_proxy_calls) in [("", false), ("  proxy_executables: []\n", true)] {
        let cfg = format!(
            "{}api_calls:\n  max_sessions: 16384\n{proxies}",
            config_with(&[], "")
        );
        let d = Daemon::start(&cfg);
        let dropped_before = d.metric_sum(
            "nhiwatch_stage_dropped_total",
            &["stage=\"api_calls\"", "reason=\"proxied\""],
        );
        let url = format!(
            "http://127.0.0.1:{}/api/Patient/77?x={QUERY_VALUE}",
            proxy.port
        );
        let pid = curl(&["-H", &format!("Authorization: Bearer {TOKEN}"), &url, &url]);
        let calls = wait_calls(&d, "the client's calls through the proxy", pid, 2);
        for c in &calls {
            assert_eq!(c["transport"], "tcp", "{c}");
            assert_eq!(c["status"], 200, "{c}");
            assert_eq!(c["path"], "/api/Patient/{id}", "{c}");
        }
        if expect_proxy_calls {
            // Without the proxy rule the upstream leg is a second call: the rule is what removes it.
            wait_calls(
                &d,
                "nginx's upstream calls without the rule",
                proxy.pid(),
                2,
            );
            d.stop();
            continue;
        }
        wait_until(
            "the proxy's upstream calls dropped as proxied",
            WAIT,
            || {
                d.metric_sum(
                    "nhiwatch_stage_dropped_total",
                    &["stage=\"api_calls\"", "reason=\"proxied\""],
                ) >= dropped_before + 2.0
            },
        );
        assert!(
            calls_of(&d, proxy.pid()).is_empty(),
            "{:?}",
            calls_of(&d, proxy.pid())
        );
        assert!(calls_of(&d, upstream.pid()).is_empty());
        assert_eq!(calls_of(&d, pid).len(), 2, "exactly one call per request");
        assert_no_leak(d);
    }
}

/// Where `cargo xtask deps` installs python grpcio (xtask/src/deps.rs, `python_grpcio`).
fn grpcio_path() -> std::path::PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    };
    let dir = target.join("python/grpcio");
    assert!(
        dir.join("grpc_health").exists(),
        "python grpcio missing at {}: run `cargo xtask deps`",
        dir.display()
    );
    dir
}

/// A python grpcio server with the standard health service on loopback, until dropped.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let script = "import sys, grpc\n\
             from concurrent import futures\n\
             from grpc_health.v1 import health, health_pb2, health_pb2_grpc\n\
             s = grpc.server(futures.ThreadPoolExecutor(max_workers=2))\n\
             h = health.HealthServicer()\n\
             h.set('', health_pb2.HealthCheckResponse.SERVING)\n\
             health_pb2_grpc.add_HealthServicer_to_server(h, s)\n\
             print(s.add_insecure_port('127.0.0.1:0'), flush=True)\n\
             s.start()\n\
             sys.stdin.read()\n";
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", script])
            .env("PYTHONPATH", grpcio_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 grpc server");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().expect("the gRPC server's port");
        wait_until("gRPC server listening", WAIT, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// python grpcio (C-core) writes its first request as one sendmsg of 26+ iovecs (one per frame
/// piece): every call is decoded, not only the ones after the connection's first write.
#[test]
fn grpc_health_checks_from_python_grpcio_over_h2c() {
    let server = GrpcServer::start();
    let d = Daemon::start(&config_with(&[], ""));
    let script = format!(
        "import grpc\n\
         from grpc_health.v1 import health_pb2, health_pb2_grpc\n\
         stub = health_pb2_grpc.HealthStub(grpc.insecure_channel('127.0.0.1:{port}'))\n\
         for i in range(3):\n\
         \x20   r = stub.Check(health_pb2.HealthCheckRequest(service=''), metadata=[('authorization', 'Bearer {TOKEN}')])\n\
         \x20   assert r.status == health_pb2.HealthCheckResponse.SERVING, r\n",
        port = server.port
    );
    let pid = spawn_pid(
        Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .env("PYTHONPATH", grpcio_path()),
    );
    let calls = wait_calls(&d, "grpcio's three health checks", pid, 3);
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(call["transport"], "tcp", "{call}");
        assert_eq!(call["protocol"], "http2", "{call}");
        assert_eq!(call["stream"], 2 * i + 1, "{call}");
        assert_eq!(call["method"], "POST", "{call}");
        assert_eq!(call["path"], "/grpc.health.v1.Health/Check", "{call}");
        assert_eq!(call["grpc"]["service"], "grpc.health.v1.Health", "{call}");
        assert_eq!(call["grpc"]["method"], "Check", "{call}");
        assert_eq!(call["status"], 200, "{call}");
        assert_eq!(call["end"], "complete", "{call}");
        assert_eq!(call["credentials"][0]["kind"], "bearer", "{call}");
        assert_eq!(call["flow"], calls[0]["flow"], "one connection: {call}");
    }
    assert_eq!(calls_of(&d, pid).len(), 3, "one api_call per call");
    assert!(
        calls_of(&d, server.child.id()).is_empty(),
        "the server made no call"
    );
    assert_no_leak(d);
}

/// A Go h2c client (golang.org/x/net/http2 with prior knowledge; Go's non-blocking connect and
/// its own frame writer) against nginx h2c: one api_call per request on one connection.
#[test]
fn go_h2c_client_calls_against_nginx_h2c() {
    let bin = go::build_debian_gopath("h2c");
    let nginx = PlainNginx::start("");
    let d = Daemon::start(&config_with(&[], ""));
    let url = format!("http://127.0.0.1:{}/fhir/R4/Patient/", nginx.h2c_port);
    let pid = spawn_pid(
        Command::new(&bin)
            .args(["client", &url, "3"])
            .env("NHIWATCH_TOKEN", TOKEN),
    );
    let calls = wait_calls(&d, "the Go client's three h2c calls", pid, 3);
    // x/net 0.7 opens its first request on stream 3: what matters is one call per stream.
    let mut streams: Vec<u64> = calls
        .iter()
        .map(|c| c["stream"].as_u64().unwrap())
        .collect();
    streams.dedup();
    assert_eq!(streams.len(), 3, "{calls:?}");
    for call in &calls {
        assert_eq!(call["transport"], "tcp", "{call}");
        assert_eq!(call["protocol"], "http2", "{call}");
        assert_eq!(call["method"], "GET", "{call}");
        assert_eq!(call["path"], "/fhir/R4/Patient/{id}", "{call}");
        assert_eq!(call["status"], 200, "{call}");
        assert_eq!(call["end"], "complete", "{call}");
        assert_eq!(call["credentials"][0]["kind"], "bearer", "{call}");
        assert_eq!(call["flow"], calls[0]["flow"], "one connection: {call}");
    }
    assert_eq!(calls_of(&d, pid).len(), 3, "one api_call per request");
    assert!(calls_of(&d, nginx.pid()).is_empty());
    assert_no_leak(d);
}

/// curl `--http2` on an http:// URL asks for `Upgrade: h2c`; a Go server (x/net's h2c handler)
/// switches. The request before the switch is one HTTP/1 call (status 101: its answer comes as
/// stream 1, which is that same call), the requests after it are HTTP/2 streams.
#[test]
fn an_http1_upgrade_to_h2c_gives_one_call_before_the_switch_and_h2_streams_after() {
    let bin = go::build_debian_gopath("h2c");
    let port = free_port();
    let mut server = Child2(
        Command::new(&bin)
            .args(["server", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the Go h2c server listening", WAIT, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let d = Daemon::start(&config_with(&[], ""));
    let url = |n: u32| format!("http://127.0.0.1:{port}/fhir/R4/Patient/{n}?code={QUERY_VALUE}");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (a, b, c) = (url(1), url(2), url(3));
    let pid = curl(&["--http2", "-H", &auth, &a, &b, &c]);
    let calls = wait_calls(&d, "curl's calls around the h2c upgrade", pid, 3);
    let first = &calls[0];
    assert_eq!(first["protocol"], "http1", "{first}");
    assert_eq!(first["status"], 101, "{first}");
    for call in &calls[1..] {
        assert_eq!(call["protocol"], "http2", "{call}");
        assert_eq!(call["status"], 200, "{call}");
        assert_eq!(call["end"], "complete", "{call}");
        assert_ne!(
            call["stream"], 1,
            "stream 1 is the upgrading request: {call}"
        );
    }
    for call in &calls {
        assert_eq!(call["transport"], "tcp", "{call}");
        assert_eq!(call["method"], "GET", "{call}");
        assert_eq!(call["path"], "/fhir/R4/Patient/{id}", "{call}");
        assert_eq!(call["credentials"][0]["kind"], "bearer", "{call}");
        assert_eq!(call["flow"], first["flow"], "one connection: {call}");
    }
    assert_eq!(calls_of(&d, pid).len(), 3, "one api_call per request");
    assert!(
        calls_of(&d, server.0.id()).is_empty(),
        "the server made no call"
    );
    drop(server.0.stdin.take());
    assert_no_leak(d);
}

/// `sensors.sockets.enabled: false`: the sensor says it is disabled (metric, /readyz, log), is
/// neither degraded nor what keeps the daemon from being ready, and follows nothing.
#[test]
fn a_disabled_sockets_sensor_reports_disabled_and_follows_nothing() {
    let nginx = PlainNginx::start("");
    let d = Daemon::start(&config_with(&[], "  sockets:\n    enabled: false\n"));
    let (code, body) = d.readyz();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("sensors disabled by the settings: sockets"),
        "{body}"
    );
    assert_eq!(
        d.metric_sum("nhiwatch_sensor_disabled", &["sensor=\"sockets\""]),
        1.0
    );
    let metrics = d.metrics();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("nhiwatch_sensor_degraded{") && l.contains("sensor=\"sockets\"")),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("nhiwatch_probe_attached{") && l.contains("probe=\"sockets/")),
        "no probe rows for a sensor that was not asked for"
    );
    let pid = curl(&[
        "--http1.1",
        &format!("http://127.0.0.1:{}/fhir/x", nginx.port),
    ]);
    d.wait_for("curl's exit", WAIT, |v| {
        kind_is(v, "exit") && pid_is(v, pid)
    });
    assert!(calls_of(&d, pid).is_empty(), "{:?}", calls_of(&d, pid));
    let (_, stderr) = d.stop();
    assert!(
        stderr.contains("sensor disabled by the settings") && stderr.contains("sockets"),
        "{stderr}"
    );
}
