//! Harness for the privileged end-to-end tests: runs the real daemon, real servers and real clients on loopback.
//!
//! Every helper owns what it starts (processes, directories) and removes it on drop,
//! so tests can run twice in a row and next to CI on the same machine.

pub mod container;
pub mod go;
pub mod kube;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

pub use serde_json::Value;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other test run on this machine uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Ports this process holds (a lock file each, kept until it exits).
static PORTS_HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());

/// A TCP port on loopback that is free now and stays this test process's until it exits.
///
/// A port bound at 0 and given back could be taken by anyone before the server we start binds
/// it (another test, another run on this machine, any outgoing connection). So the port comes
/// from below the kernel's ephemeral range, which neither `bind(…:0)` nor outgoing connections
/// draw from, and a lock file under /tmp keeps it from every other test process using this harness.
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (lo, hi) = if ephemeral_low > 12_000 {
        (10_000u32, ephemeral_low)
    } else {
        (61_000, 65_535)
    };
    let span = hi - lo;
    let dir = std::env::temp_dir().join("nhiwatch-e2e-ports");
    std::fs::create_dir_all(&dir).unwrap();
    // Processes start at different places, so they rarely contend for the same lock.
    let start = std::process::id().wrapping_mul(7919)
        ^ SEQ.fetch_add(1, Ordering::Relaxed).wrapping_mul(131);
    for i in 0..span {
        let port = (lo + (start.wrapping_add(i)) % span) as u16;
        let Ok(lock) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        // Something outside the harness may listen there (a fixed-port service).
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        PORTS_HELD.lock().unwrap().push(lock);
        return port;
    }
    panic!("no free loopback port in {lo}..{hi}");
}

/// Waits until `ok()`, polling; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until every reader thread has drained its pipe: they end at EOF, once the
/// process that held the other end has exited.
fn join_readers(readers: &mut Vec<thread::JoinHandle<()>>) {
    wait_until("the output readers", READERS_WAIT, || {
        readers.iter().all(|r| r.is_finished())
    });
    for r in readers.drain(..) {
        let _ = r.join();
    }
}

/// How long a process's output may take to be read after it exited.
const READERS_WAIT: Duration = Duration::from_secs(60);

/// A directory under /tmp removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn nhiwatch_bin() -> PathBuf {
    match std::env::var_os("NHIWATCH_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/nhiwatch"),
    }
}

/// Minimal HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    // Generous: a busy machine answers late; a refused or reset connection still fails at once.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A running `nhiwatch run --events`, its JSON events collected as they arrive.
pub struct Daemon {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stdout_raw: Arc<Mutex<String>>,
    stderr_raw: Arc<Mutex<String>>,
    pub metrics_port: u16,
    /// The daemon's state directory (fingerprint key): part of what leak tests grep.
    pub state_dir: PathBuf,
    /// The stdout and stderr readers: joined at stop, so nothing the daemon printed is missed.
    readers: Vec<thread::JoinHandle<()>>,
    _dir: TempDir,
    /// The podman container the daemon runs in, if it does (removed on drop).
    container: Option<String>,
}

/// Daemon configuration for tests: the bundled defaults with `watch` replaced.
pub fn config_with(watch: &[String], extra_sensors: &str) -> String {
    let mut s = String::from("sensors:\n  poll_interval_ms: 2\n");
    s.push_str(extra_sensors);
    s.push_str("  files:\n    watch:\n");
    for w in watch {
        s.push_str(&format!("      - {w}\n"));
    }
    s
}

impl Daemon {
    /// Starts the daemon with its own state directory, removed with it.
    pub fn start(config_yaml: &str) -> Daemon {
        Daemon::start_with_state(config_yaml, None)
    }

    /// Starts the daemon; `state_dir` (kept by the caller, e.g. across restarts)
    /// or, if None, one of its own inside the daemon's temp dir.
    pub fn start_with_state(config_yaml: &str, state_dir: Option<&Path>) -> Daemon {
        Daemon::start_with_args(config_yaml, state_dir, &[])
    }

    /// Like `start_with_state`, with extra arguments for `nhiwatch run` (e.g. `--record FILE`).
    pub fn start_with_args(config_yaml: &str, state_dir: Option<&Path>, extra: &[&str]) -> Daemon {
        let dir = TempDir::new("nhiwatch-e2e-daemon");
        let cfg = dir.path().join("nhiwatch.yaml");
        let state_dir = state_dir.map_or_else(|| dir.path().join("state"), Path::to_owned);
        let yaml = format!("state_dir: {}\n{config_yaml}", state_dir.display());
        std::fs::write(&cfg, yaml).unwrap();
        let metrics_port = free_port();
        let mut cmd = Command::new(nhiwatch_bin());
        cmd.args(["run", "--events", "--config"])
            .arg(&cfg)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args(extra)
            .env("NHIWATCH_LOG", "info,nhiwatch=debug");
        Daemon::spawn(cmd, metrics_port, state_dir, dir, None)
    }

    /// Starts `cmd` (a daemon that prints its events on stdout and serves /readyz on
    /// `metrics_port` of loopback) and waits until it is ready. `container`: the podman container
    /// it runs in, removed when the Daemon is dropped.
    pub fn spawn(
        mut cmd: Command,
        metrics_port: u16,
        state_dir: PathBuf,
        dir: TempDir,
        container: Option<String>,
    ) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nhiwatch (build it first: cargo build -p nhiwatch)");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout_raw = Arc::new(Mutex::new(String::new()));
        let stderr_raw = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let (ev, raw) = (events.clone(), stdout_raw.clone());
        let stdout_reader = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                raw.lock().unwrap().push_str(&line);
                raw.lock().unwrap().push('\n');
                // A non-JSON line is kept as a string so `stop` can fail on it.
                let v = serde_json::from_str(&line).unwrap_or_else(|_| Value::String(line.clone()));
                ev.lock().unwrap().push(v);
            }
        });
        let err = child.stderr.take().unwrap();
        let raw = stderr_raw.clone();
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                raw.lock().unwrap().push_str(&line);
                raw.lock().unwrap().push('\n');
            }
        });
        let mut d = Daemon {
            child,
            events,
            stdout_raw,
            stderr_raw,
            metrics_port,
            state_dir,
            readers: vec![stdout_reader, stderr_reader],
            _dir: dir,
            container,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                join_readers(&mut d.readers);
                panic!("nhiwatch exited during start ({status}):\n{}", d.stderr());
            }
            if matches!(http_get(metrics_port, "/readyz"), Ok((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nhiwatch not ready after 60 s:\n{}",
                d.stderr()
            );
            thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// The daemon's pid, for signalling it (SIGHUP reloads the rules).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout_raw.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr_raw.lock().unwrap().clone()
    }

    /// `/readyz`: (status, body); (0, error) if it could not be asked.
    pub fn readyz(&self) -> (u16, String) {
        http_get(self.metrics_port, "/readyz").unwrap_or_else(|e| (0, e.to_string()))
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// Sum of a metric's samples whose line contains every `needle`.
    pub fn metric_sum(&self, name: &str, needles: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits for an event matching `pred`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.events.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            if Instant::now() > deadline {
                let evs = self.events();
                let tail: Vec<String> = evs.iter().rev().take(30).map(|v| v.to_string()).collect();
                panic!(
                    "no event {what} within {timeout:?}; {} events, last ones:\n{}\nstderr:\n{}",
                    evs.len(),
                    tail.join("\n"),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon with SIGTERM and waits; asserts a clean exit.
    pub fn stop(self) -> (String, String) {
        let (out, err, _) = self.stop_with_state();
        (out, err)
    }

    /// Like `stop`, and also returns every file of the state directory as it
    /// was left after exit (read before the directory is removed).
    pub fn stop_with_state(mut self) -> (String, String, Vec<(PathBuf, Vec<u8>)>) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // Bounded generously: the daemon drains its alert sinks for up to drain_timeout.
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s;
            }
            assert!(Instant::now() < deadline, "nhiwatch ignored SIGTERM");
            thread::sleep(Duration::from_millis(50));
        };
        join_readers(&mut self.readers);
        assert!(
            status.success(),
            "nhiwatch exited with {status}:\n{}",
            self.stderr()
        );
        let bad: Vec<Value> = self.events().into_iter().filter(Value::is_string).collect();
        assert!(
            bad.is_empty(),
            "nhiwatch printed non-JSON lines on stdout: {bad:?}"
        );
        let state = files_under(&self.state_dir)
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap_or_default();
                (p, bytes)
            })
            .collect();
        (self.stdout(), self.stderr(), state)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(name) = &self.container {
            // Killing the podman client leaves its container running.
            container::remove(name);
        }
    }
}

/// Every regular file beneath `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    &v[key]
}

pub fn kind_is(v: &Value, kind: &str) -> bool {
    v["kind"] == kind
}

pub fn pid_is(v: &Value, pid: u32) -> bool {
    v["pid"].as_u64() == Some(u64::from(pid))
}

/// Runs a command to completion and returns its pid; panics with its output on failure.
pub fn spawn_pid(cmd: &mut Command) -> u32 {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

/// Starts an interactive client, writes `input` and keeps stdin open until the client exits by
/// itself (clients quit at stdin's EOF, maybe before the response): `input` must end the
/// conversation (`Connection: close`, HTTP/1.0), so the server closes once it answered.
/// Returns the client's pid.
pub fn converse(cmd: &mut Command, input: &str) -> u32 {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?}: no end of the conversation within 60 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    pid
}

/// Runs a command to completion; panics with its output on failure.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA and a server certificate it signed for `localhost`, `*.nhiwatch.test`, 127.0.0.1 and ::1:
/// `(ca, cert, key)`. Clients trust `ca`, as in a real deployment (rustls refuses a
/// self-signed CA certificate used as a server certificate).
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let csr = dir.join("server.csr");
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,DNS:*.nhiwatch.test,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=nhiwatch-e2e-ca",
            ])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-set_serial", "2"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
    );
    (ca, cert, key)
}

/// nginx with TLS (HTTP/1.1 and HTTP/2) on a loopback port, in its own prefix directory.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
    /// The CA clients should trust.
    pub cert: PathBuf,
}

impl Nginx {
    /// `locations` is inserted into the server block (e.g. `location /x { return 200 "ok"; }`).
    pub fn start(locations: &str) -> Nginx {
        let dir = TempDir::new("nhiwatch-e2e-nginx");
        let (ca, cert, key) = make_cert(dir.path());
        let port = free_port();
        let root = dir.path().join("html");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("hello"), "hello from nginx\n").unwrap();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               default_type application/json;\n\
               server {{\n    listen 127.0.0.1:{port} ssl http2;\n\
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n    root {root};\n    {locations}\n  }}\n}}\n",
            d = dir.path().display(),
            cert = cert.display(),
            key = key.display(),
            root = root.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nginx");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            port,
            dir,
            cert: ca,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client certificate for `name` (SAN `DNS:name`, clientAuth) signed by the CA that
/// `make_cert(dir)` left in `dir`: `(cert, key)`.
pub fn make_client_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
        ),
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-set_serial", "3"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(dir.join("ca.pem"))
            .arg("-CAkey")
            .arg(dir.join("ca.key"))
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
    );
    (cert, key)
}

/// rsyslogd in the foreground with its own work directory and no local log socket: an RFC 5425
/// TLS input (client certificate required: `x509/name`, peer `nhiwatch-client`) and a plain TCP
/// input on loopback, both octet-counting aware. Everything received over the network is written
/// to `received.jsonl` (one JSON object per message: pri, severity, facility, hostname, app_name,
/// procid, msgid, structured_data, msg) and `received.log` (RFC 5424 as rsyslog re-emits it).
pub struct Rsyslog {
    child: Child,
    pub dir: TempDir,
    pub tls_port: u16,
    pub tcp_port: u16,
    /// The CA the server certificate chains to (clients trust it) and that signs accepted clients.
    pub ca: PathBuf,
    /// A client certificate rsyslog accepts, and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The name rsyslog's TLS input permits (SAN of `Rsyslog::client_cert`).
pub const RSYSLOG_PEER: &str = "nhiwatch-client";

impl Rsyslog {
    pub fn start() -> Rsyslog {
        let dir = TempDir::new("nhiwatch-e2e-rsyslog");
        let d = dir.path();
        let (ca, cert, key) = make_cert(d);
        let (client_cert, client_key) = make_client_cert(d, RSYSLOG_PEER);
        let work = d.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let (tls_port, tcp_port) = (free_port(), free_port());
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp")
template(name="nhiwatch_json" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
ruleset(name="net") {{
  action(type="omfile" file="{d}/received.jsonl" template="nhiwatch_json")
  action(type="omfile" file="{d}/received.log" template="RSYSLOG_SyslogProtocol23Format")
}}
input(type="imtcp" address="127.0.0.1" port="{tls_port}" ruleset="net"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/name"
      permittedPeer=["{RSYSLOG_PEER}"])
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="net" streamDriver.name="ptcp")
*.* action(type="omfile" file="{d}/internal.log")
"#,
            work = work.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
            d = d.display(),
        );
        let conf_path = d.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        run_ok(
            Command::new("/usr/sbin/rsyslogd")
                .arg("-N1")
                .arg("-f")
                .arg(&conf_path),
        );
        let child = Command::new("/usr/sbin/rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "starting /usr/sbin/rsyslogd (cargo xtask deps installs rsyslog, rsyslog-gnutls)",
            );
        let mut r = Rsyslog {
            child,
            dir,
            tls_port,
            tcp_port,
            ca,
            client_cert,
            client_key,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // Listening sockets show up in /proc without connecting (a probe connection would be a
        // session, and a failed TLS handshake, in rsyslog's own log).
        while !(listening(tls_port) && listening(tcp_port)) {
            if let Ok(Some(s)) = r.child.try_wait() {
                panic!("rsyslogd exited ({s}):\n{}", r.internal_log());
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on {tls_port}/{tcp_port}:\n{}",
                r.internal_log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// What rsyslog logged about itself (start, TLS errors …).
    pub fn internal_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("internal.log")).unwrap_or_default()
    }

    /// Every message received over the network so far, as rsyslog parsed it.
    pub fn received(&self) -> Vec<Value> {
        complete_lines(
            &std::fs::read_to_string(self.dir.path().join("received.jsonl")).unwrap_or_default(),
        )
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("rsyslog line {l:?}: {e}")))
        .collect()
    }

    /// Both output files, raw: what leak checks grep.
    pub fn received_raw(&self) -> Vec<u8> {
        let mut out = std::fs::read(self.dir.path().join("received.jsonl")).unwrap_or_default();
        out.extend(std::fs::read(self.dir.path().join("received.log")).unwrap_or_default());
        out
    }

    /// Waits until at least `n` messages arrived, then a little longer so that extra (split or
    /// duplicated) messages would show too; returns all of them.
    pub fn wait_received(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        while self.received().len() < n {
            assert!(
                Instant::now() < deadline,
                "rsyslog received {} of {n} messages within {timeout:?}; its log:\n{}",
                self.received().len(),
                self.internal_log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(Duration::from_millis(500));
        self.received()
    }
}

/// The lines of `text` that are whole: a writer (rsyslog's buffered omfile, a receiver script)
/// may be caught halfway through its last line.
pub fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    text[..whole].lines()
}

/// Whether something listens on 127.0.0.1:`port` (TCP, IPv4), read from /proc/net/tcp.
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts `wrapper… nhiwatch run --events --config … --metrics-addr …` (the wrapper being
    /// e.g. `setpriv --bounding-set=… --`), like `start_with_args`; `Err(stderr)` if the daemon
    /// exits or is not ready within 60 s, so tests can assert that a start fails.
    pub fn try_start_wrapped(
        wrapper: &[String],
        config_yaml: &str,
        extra: &[&str],
    ) -> Result<Daemon, String> {
        Daemon::try_start_as(wrapper, None, config_yaml, extra)
    }

    /// Like `try_start_wrapped`, for a wrapper that runs the daemon as `owner` (uid = gid, e.g.
    /// `setpriv --reuid 65534 …`): the state directory is made that user's, as systemd's
    /// `StateDirectory=` does. Returns once the daemon serves `/readyz`, ready (200) or running
    /// without a required sensor (503 `not ready: …`): tests of degraded starts look at why.
    pub fn try_start_as(
        wrapper: &[String],
        owner: Option<u32>,
        config_yaml: &str,
        extra: &[&str],
    ) -> Result<Daemon, String> {
        let mut command = wrapper.to_vec();
        command.push(nhiwatch_bin().display().to_string());
        Daemon::try_start_command(&command, owner, config_yaml, extra)
    }

    /// Like `try_start_as` with `command` ending in the binary to run (e.g. a copy given file
    /// capabilities) instead of the one under test being appended to a wrapper.
    pub fn try_start_binary(
        command: &[String],
        owner: Option<u32>,
        config_yaml: &str,
    ) -> Result<Daemon, String> {
        Daemon::try_start_command(command, owner, config_yaml, &[])
    }

    fn try_start_command(
        command: &[String],
        owner: Option<u32>,
        config_yaml: &str,
        extra: &[&str],
    ) -> Result<Daemon, String> {
        let dir = TempDir::new("nhiwatch-e2e-daemon");
        let cfg = dir.path().join("nhiwatch.yaml");
        let state_dir = dir.path().join("state");
        if let Some(uid) = owner {
            std::fs::create_dir(&state_dir).unwrap();
            std::os::unix::fs::chown(&state_dir, Some(uid), Some(uid)).unwrap();
        }
        let yaml = format!("state_dir: {}\n{config_yaml}", state_dir.display());
        std::fs::write(&cfg, yaml).unwrap();
        let metrics_port = free_port();
        let (program, pre) = command.split_first().expect("a command");
        let mut child = Command::new(program)
            .args(pre)
            .args(["run", "--events", "--config"])
            .arg(&cfg)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args(extra)
            .env("NHIWATCH_LOG", "info,nhiwatch=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout_raw = Arc::new(Mutex::new(String::new()));
        let stderr_raw = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let (ev, raw) = (events.clone(), stdout_raw.clone());
        let stdout_reader = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                raw.lock().unwrap().push_str(&line);
                raw.lock().unwrap().push('\n');
                let v = serde_json::from_str(&line).unwrap_or_else(|_| Value::String(line.clone()));
                ev.lock().unwrap().push(v);
            }
        });
        let err = child.stderr.take().unwrap();
        let raw = stderr_raw.clone();
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                raw.lock().unwrap().push_str(&line);
                raw.lock().unwrap().push('\n');
            }
        });
        let mut d = Daemon {
            child,
            events,
            stdout_raw,
            stderr_raw,
            metrics_port,
            state_dir,
            readers: vec![stdout_reader, stderr_reader],
            _dir: dir,
            container: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                join_readers(&mut d.readers);
                return Err(format!("exited during start ({status}):\n{}", d.stderr()));
            }
            match http_get(metrics_port, "/readyz") {
                Ok((200, _)) => return Ok(d),
                Ok((503, body)) if body.starts_with("not ready:") => return Ok(d),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(format!("not serving /readyz after 60 s:\n{}", d.stderr()));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}
