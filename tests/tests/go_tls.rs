//! End-to-end: API calls of Go programs (crypto/tls compiled in) built here with every toolchain
//! the tests install — symbols kept and stripped, HTTP/1.1 and HTTP/2 — seen through uprobes at
//! the entry and RET instructions of `(*tls.Conn).Read/Write`, and not one token byte kept.

use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use nhiwatch::probes::golang::{self, NotCovered};
use nhiwatch_e2e::{go, *};

const WAIT: Duration = Duration::from_secs(60);

/// The bearer token the clients send: must never appear in anything nhiwatch produced.
const TOKEN: &str = "gho_LEAKCANARYgotoken8a1f5c3e9d2b7";

fn locations() -> &'static str {
    // Odd goroutine numbers get 404, even ones 200: a response paired with the wrong HTTP/2
    // stream shows as a wrong status.
    "location ~ ^/g[0-9]*[13579]/ { return 404 '{\"error\":\"odd\"}'; }\n\
     location /g { return 200 '{\"ok\":true}'; }\n\
     location /c { return 200 '{\"ok\":true}'; }\n\
     location = /v1/items { return 200 '{\"items\":[]}'; }"
}

#[test]
fn go_binaries_are_inspected_with_and_without_symbols_and_the_offset_table_matches_every_toolchain()
{
    for tc in go::toolchains() {
        // The struct layout the table promises, read with reflect from this toolchain.
        let printed = go::run(&tc, "offsets");
        let full = go::build(&tc, "client", false);
        let stripped = go::build(&tc, "client", true);
        let a = golang::inspect(&full).unwrap_or_else(|e| panic!("{}: {e}", tc.label));
        let b = golang::inspect(&stripped).unwrap_or_else(|e| panic!("{} -s -w: {e}", tc.label));
        assert!(
            printed.starts_with(&format!("{} ", a.version)),
            "{printed} vs {}",
            a.version
        );
        let o = a.offsets;
        assert_eq!(
            printed.trim(),
            format!(
                "{} conn={} tcpconn_fd={} netfd_sysfd={}",
                a.version, o.conn, o.tcpconn_fd, o.netfd_sysfd
            ),
            "{}: the offset table disagrees with the toolchain",
            tc.label
        );
        assert!(
            a.version
                .starts_with(&format!("go{}", tc.label.trim_end_matches("-debian"))),
            "{} read as {}",
            tc.label,
            a.version
        );
        // Same code with and without symbols: the stripped build is found through .gopclntab alone.
        assert_eq!(a, b, "{}: stripped build inspected differently", tc.label);
        assert!(!a.read.rets.is_empty() && !a.write.rets.is_empty());
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "readelf -S {} | grep -q '\\.symtab'",
                    stripped.display()
                ))
                .status()
                .map_or(true, |s| !s.success()),
            "{} still has .symtab",
            tc.label
        );
    }
}

/// `bin`'s bytes with the Go version in `.go.buildinfo` replaced by `go1.<minor>.0…` (same length).
fn with_version(bin: &Path, minor: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(bin).unwrap();
    let v = golang::inspect(bin).unwrap().version;
    let info = bytes
        .windows(14)
        .position(|w| w == b"\xff Go buildinf:")
        .unwrap();
    let pos = info
        + bytes[info..]
            .windows(v.len())
            .position(|w| w == v.as_bytes())
            .unwrap();
    let fake = format!("go1.{minor}.");
    let fake = format!("{fake}{}", "0".repeat(v.len() - fake.len()));
    bytes[pos..pos + v.len()].copy_from_slice(fake.as_bytes());
    bytes
}

/// A release beyond the table: its own DWARF gives the layout when it has DWARF; a stripped
/// one is blind, never probed on a guess.
#[test]
fn a_release_beyond_the_table_is_read_from_dwarf_or_else_blind() {
    let tc = go::toolchains().pop().unwrap();
    let full = with_version(&go::build(&tc, "client", false), 99);
    let go = golang::inspect_bytes(&full).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(go.version, "go1.99.0");
    assert_eq!(
        Some(go.offsets),
        golang::table_offsets(1, 27),
        "DWARF agrees with the table"
    );
    let stripped = with_version(&go::build(&tc, "client", true), 99);
    assert!(
        matches!(
            golang::inspect_bytes(&stripped),
            Err(NotCovered::UnknownLayout(_))
        ),
        "stripped and unknown: blind"
    );
}

#[test]
fn a_go_binary_of_an_unknown_layout_is_blind_not_probed() {
    let tc = &go::toolchains()[1];
    let bin = go::build(tc, "client", true);
    let mut bytes = std::fs::read(&bin).unwrap();
    // Rewrite the version in .go.buildinfo to one the table does not know (same length).
    let v = golang::inspect(&bin).unwrap().version;
    let info = bytes
        .windows(14)
        .position(|w| w == b"\xff Go buildinf:")
        .unwrap();
    let pos = info
        + bytes[info..]
            .windows(v.len())
            .position(|w| w == v.as_bytes())
            .unwrap();
    let fake = format!("go1.99.{}", "0".repeat(v.len() - 7));
    bytes[pos..pos + v.len()].copy_from_slice(fake.as_bytes());
    match golang::inspect_bytes(&bytes) {
        Err(NotCovered::UnknownLayout(got)) => assert_eq!(got, fake),
        other => panic!("{other:?}"),
    }
    let old = format!("go1.16.{}", "0".repeat(v.len() - 7));
    bytes[pos..pos + v.len()].copy_from_slice(old.as_bytes());
    assert!(matches!(
        golang::inspect_bytes(&bytes),
        Err(NotCovered::TooOld(_))
    ));
}

fn extra_targets<'a>(paths: impl Iterator<Item = &'a Path>) -> String {
    let mut s = String::from("  tls:\n    extra_targets:\n");
    for p in paths {
        s.push_str(&format!("      - {}\n", p.display()));
    }
    s
}

struct Client {
    pid: u32,
    stdout: String,
}

/// Runs a Go client to completion against nginx; its stdout lists connections and statuses.
fn run_client(bin: &Path, nginx: &Nginx, args: &[&str]) -> Client {
    let out = Command::new(bin)
        .arg(format!("-url=https://api.nhiwatch.test:{}", nginx.port))
        .arg(format!("-ca={}", nginx.cert.display()))
        .args(args)
        .env("TOKEN", TOKEN)
        .env("CONNECT_TO", format!("127.0.0.1:{}", nginx.port))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id();
    let o = out.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    Client {
        pid,
        stdout: String::from_utf8(o.stdout).unwrap(),
    }
}

fn calls_of(d: &Daemon, pid: u32) -> Vec<Value> {
    d.events()
        .into_iter()
        .filter(|v| kind_is(v, "api_call") && pid_is(v, pid))
        .collect()
}

fn wait_calls(d: &Daemon, what: &str, pid: u32, n: usize) -> Vec<Value> {
    wait_until(what, WAIT, || calls_of(d, pid).len() >= n);
    // A moment for any extra (wrong) call to show too.
    std::thread::sleep(Duration::from_millis(300));
    calls_of(d, pid)
}

fn curl_fingerprint(d: &Daemon, nginx: &Nginx) -> String {
    let pid = spawn_pid(
        Command::new("curl")
            .args(["-sS", "--fail", "-o", "/dev/null", "--cacert"])
            .arg(&nginx.cert)
            .args([
                "-H",
                &format!("Authorization: Bearer {TOKEN}"),
                "--resolve",
                &format!("api.nhiwatch.test:{}:127.0.0.1", nginx.port),
                &format!("https://api.nhiwatch.test:{}/v1/items", nginx.port),
            ]),
    );
    let call = d.wait_for("curl's call", WAIT, |v| {
        kind_is(v, "api_call") && pid_is(v, pid)
    });
    call["credentials"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Local port → flow id, from the daemon's tcp_connect events of one process.
fn flows_by_port(d: &Daemon, pid: u32) -> HashMap<String, u64> {
    d.events()
        .iter()
        .filter(|v| kind_is(v, "tcp_connect") && pid_is(v, pid))
        .map(|v| {
            let src = v["src"].as_str().unwrap();
            (
                src.rsplit(':').next().unwrap().to_owned(),
                v["flow"].as_u64().unwrap(),
            )
        })
        .collect()
}

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
        for s in [TOKEN, "LEAKCANARY"] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s:?} leaked into nhiwatch {what}"
            );
        }
    }
}

#[test]
fn every_go_release_stripped_or_not_over_http1_and_http2_makes_one_api_call_per_request() {
    let toolchains = go::toolchains();
    // Build first (cached): the daemon's discovery then sees only finished files.
    let bins: Vec<_> = toolchains
        .iter()
        .flat_map(|tc| [false, true].map(|s| (tc.label.clone(), s, go::build(tc, "client", s))))
        .collect();
    let nginx = Nginx::start(locations());
    // Named in the configuration, the binaries are probed before they first run (discovery
    // at exec has its own test).
    let d = Daemon::start(&config_with(
        &[],
        &extra_targets(bins.iter().map(|b| b.2.as_path())),
    ));
    let fp = curl_fingerprint(&d, &nginx);
    for (label, stripped, bin) in &bins {
        for (proto, flag) in [("http1", "-h2=false"), ("http2", "-h2=true")] {
            let what = format!("go {label} stripped={stripped} {proto}");
            let c = run_client(bin, &nginx, &[flag, "-paths=/v1/items,/v1/items"]);
            let calls = wait_calls(&d, &what, c.pid, 2);
            assert_eq!(calls.len(), 2, "{what}: {calls:?}");
            let flows = flows_by_port(&d, c.pid);
            for call in &calls {
                assert_eq!(call["protocol"], proto, "{what}: {call}");
                assert_eq!(call["method"], "GET", "{what}: {call}");
                assert_eq!(call["path"], "/v1/items", "{what}: {call}");
                assert_eq!(call["status"], 200, "{what}: {call}");
                assert_eq!(call["end"], "complete", "{what}: {call}");
                assert_eq!(
                    call["authority"],
                    format!("api.nhiwatch.test:{}", nginx.port),
                    "{what}: {call}"
                );
                assert_eq!(
                    call["credentials"][0]["fingerprint"],
                    fp.as_str(),
                    "{what}: same token as curl's, same fingerprint: {call}"
                );
                let flow = call["flow"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{what}: no flow: {call}"));
                assert!(
                    flows.values().any(|f| *f == flow),
                    "{what}: flow {flow} is not one of the client's connections {flows:?}"
                );
            }
            assert!(c.stdout.contains("status 200"), "{}", c.stdout);
        }
    }
    let m = d.metrics();
    assert!(
        m.contains("probe_attached") && m.contains("crypto/tls.(*Conn).Read"),
        "per-binary probe statuses"
    );
    assert_no_leak(d);
}

/// `conn C path P local ADDR` lines of a client's stdout → path → local port.
fn ports_by_path(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("conn ")?;
            let mut f = rest.split(' ');
            let (_, _, path, _, local) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            Some((path.to_owned(), local.rsplit(':').next()?.to_owned()))
        })
        .collect()
}

#[test]
fn concurrent_goroutines_and_connections_each_call_on_its_own_flow_with_its_own_response() {
    let tc = go::toolchains().pop().expect("newest");
    let bin = go::build(&tc, "client", true);
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(
        &[],
        &extra_targets(std::iter::once(bin.as_path())),
    ));
    // Several connections (one transport each), HTTP/1.1 and HTTP/2, in parallel: every call on
    // the flow of the connection the client says it used.
    for flag in ["-h2=false", "-h2=true"] {
        let c = run_client(&bin, &nginx, &[flag, "-conns=4", "-paths=/c{c}/a,/c{c}/b"]);
        let calls = wait_calls(&d, flag, c.pid, 8);
        assert_eq!(calls.len(), 8, "{flag}: {calls:?}");
        let ports = ports_by_path(&c.stdout);
        let flows = flows_by_port(&d, c.pid);
        assert_eq!(flows.len(), 4, "{flag}: four connections: {flows:?}");
        for call in &calls {
            let path = call["path"].as_str().unwrap();
            let port = &ports[path];
            assert_eq!(
                call["flow"].as_u64(),
                Some(flows[port]),
                "{flag}: {path} went out on local port {port}: {call}"
            );
            assert_eq!(call["status"], 200, "{flag}: {call}");
        }
    }
    // Eight goroutines sharing one HTTP/2 connection: eight streams, each answered with its own
    // status (odd goroutines 404), all on the one flow.
    let c = run_client(
        &bin,
        &nginx,
        &["-h2=true", "-goroutines=8", "-paths=/g{g}/x"],
    );
    let calls = wait_calls(&d, "shared h2 connection", c.pid, 8);
    assert_eq!(calls.len(), 8, "{calls:?}");
    let flows = flows_by_port(&d, c.pid);
    assert_eq!(flows.len(), 1, "one connection: {flows:?}");
    let flow = *flows.values().next().unwrap();
    let mut streams: Vec<u64> = Vec::new();
    for call in &calls {
        assert_eq!(call["protocol"], "http2", "{call}");
        assert_eq!(call["flow"].as_u64(), Some(flow), "{call}");
        let path = call["path"].as_str().unwrap();
        let g: u32 = path
            .trim_start_matches("/g")
            .trim_end_matches("/x")
            .parse()
            .unwrap_or_else(|_| panic!("{path}"));
        let want = if g % 2 == 1 { 404 } else { 200 };
        assert_eq!(call["status"], want, "{call}");
        streams.push(call["stream"].as_u64().unwrap());
    }
    streams.sort();
    streams.dedup();
    assert_eq!(streams.len(), 8, "one stream per call");
    assert_no_leak(d);
}

/// The uretprobe crash: a goroutine whose stack grows (and is moved) between TLS calls. With
/// probes only at entries and RET instructions, the client runs to completion and every call
/// is seen.
#[test]
fn goroutines_growing_their_stacks_under_the_probes_run_to_completion() {
    let tc = go::toolchains().pop().expect("newest");
    let bin = go::build(&tc, "client", false);
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(
        &[],
        &extra_targets(std::iter::once(bin.as_path())),
    ));
    for flag in ["-h2=false", "-h2=true"] {
        let c = run_client(
            &bin,
            &nginx,
            &[
                flag,
                "-conns=2",
                "-goroutines=2",
                "-deep=3000",
                "-paths=/c{c}/1,/c{c}/2,/c{c}/3",
            ],
        );
        let calls = wait_calls(&d, flag, c.pid, 12);
        assert_eq!(calls.len(), 12, "{flag}: {calls:?}");
        assert!(calls.iter().all(|c| c["status"] == 200), "{calls:?}");
    }
    assert_no_leak(d);
}

/// A Go binary nobody named: found when it is executed (its /proc/PID/exe, through its root),
/// probed once, and its calls seen.
#[test]
fn a_go_program_is_discovered_when_it_runs() {
    let tc = &go::toolchains()[2];
    let bin = go::build(tc, "client", true);
    // A private copy: a file no other test's daemon attached to before.
    let dir = TempDir::new("nhiwatch-e2e-go");
    let copy = dir.path().join(unique("goclient"));
    std::fs::copy(&bin, &copy).unwrap();
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    let name = copy.file_name().unwrap().to_string_lossy().into_owned();
    let mut child = Command::new(&copy)
        .arg(format!("-url=https://api.nhiwatch.test:{}", nginx.port))
        .arg(format!("-ca={}", nginx.cert.display()))
        .args(["-wait-stdin", "-h2=true", "-paths=/v1/items"])
        .env("TOKEN", TOKEN)
        .env("CONNECT_TO", format!("127.0.0.1:{}", nginx.port))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_until("the running Go program probed", WAIT, || {
        d.metrics().lines().any(|l| {
            l.starts_with("nhiwatch_probe_attached{")
                && l.contains("crypto/tls.(*Conn).Read")
                && l.contains(&name)
                && l.ends_with(" 1")
        })
    });
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    assert!(child.wait().unwrap().success());
    let calls = wait_calls(&d, "discovered Go program's call", pid, 1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["status"], 200, "{}", calls[0]);
    assert_no_leak(d);
}

/// A process kept running with its connections open until dropped.
struct Held {
    child: std::process::Child,
}

impl Held {
    /// Starts `cmd` with piped stdin and waits until its stdout prints `ready_line` (or, with
    /// None, until it has a TCP connection to `port`).
    fn start(cmd: &mut Command, ready_line: Option<&str>, port: u16) -> Held {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        if let Some(line) = ready_line {
            let out = child.stdout.take().unwrap();
            let mut lines = std::io::BufReader::new(out).lines();
            assert!(
                lines.any(|l| l.is_ok_and(|l| l == line)),
                "{cmd:?} never printed {line}"
            );
        } else {
            wait_until(&format!("{cmd:?} connected"), WAIT, || {
                has_connection_to(pid, port)
            });
        }
        Held { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` has an established TCP connection to 127.0.0.1:`port`.
fn has_connection_to(pid: u32, port: u16) -> bool {
    let Ok(o) = Command::new("ss")
        .args([
            "-Htnp",
            "state",
            "established",
            "dport",
            &format!("= :{port}"),
        ])
        .output()
    else {
        return false;
    };
    String::from_utf8_lossy(&o.stdout).contains(&format!("pid={pid},"))
}

#[test]
fn coverage_lists_go_openssl_node_and_a_blind_process() {
    let tcs = go::toolchains();
    let tc = tcs.last().unwrap();
    let bin = go::build(tc, "client", true);
    // A Go program too old for the register ABI (its version rewritten to go1.16): blind.
    let dir = TempDir::new("nhiwatch-e2e-go-coverage");
    let old = dir.path().join("old-go-client");
    let mut bytes = std::fs::read(&bin).unwrap();
    let v = golang::inspect(&bin).unwrap().version;
    let info = bytes
        .windows(14)
        .position(|w| w == b"\xff Go buildinf:")
        .unwrap();
    let pos = info
        + bytes[info..]
            .windows(v.len())
            .position(|w| w == v.as_bytes())
            .unwrap();
    bytes[pos..pos + v.len()]
        .copy_from_slice(format!("go1.16.{}", "0".repeat(v.len() - 7)).as_bytes());
    std::fs::write(&old, &bytes).unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let nginx = Nginx::start(locations());
    let go_args = |b: &Path| {
        let mut c = Command::new(b);
        c.arg(format!("-url=https://api.nhiwatch.test:{}", nginx.port))
            .arg(format!("-ca={}", nginx.cert.display()))
            .args(["-wait-after", "-paths=/v1/items"])
            .env("TOKEN", "not-a-secret")
            .env("CONNECT_TO", format!("127.0.0.1:{}", nginx.port));
        c
    };
    let go_new = Held::start(&mut go_args(&bin), Some("done"), nginx.port);
    let go_old = Held::start(&mut go_args(&old), Some("done"), nginx.port);
    let openssl = Held::start(
        Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{}", nginx.port)),
        None,
        nginx.port,
    );
    let node = Held::start(
        Command::new("node").arg("-e").arg(format!(
            "require('tls').connect({{port:{},host:'127.0.0.1',rejectUnauthorized:false}});setInterval(()=>{{}},1000)",
            nginx.port
        )),
        None,
        nginx.port,
    );
    let o = run_ok(Command::new(nhiwatch_bin()).args(["coverage", "--json"]));
    let listed: Vec<Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |pid: u32| {
        listed
            .iter()
            .find(|v| v["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} not listed: {listed:?}"))
            .clone()
    };
    let g = of(go_new.pid());
    assert_eq!(g["stack"], "go", "{g}");
    assert_eq!(g["covered"], true, "{g}");
    assert_eq!(g["detail"], v.as_str(), "{g}");
    let b = of(go_old.pid());
    assert_eq!(b["stack"], "blind", "{b}");
    assert_eq!(b["covered"], false, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains("older than go1.17"),
        "{b}"
    );
    let s = of(openssl.pid());
    assert_eq!(s["stack"], "openssl_system", "{s}");
    assert_eq!(s["covered"], true, "{s}");
    let n = of(node.pid());
    assert_eq!(n["stack"], "openssl_static", "{n}");
    assert_eq!(n["covered"], true, "{n}");
    // The daemon publishes the same as counts.
    let d = Daemon::start(&config_with(&[], ""));
    wait_until("tls_coverage published", WAIT, || {
        d.metric_sum(
            "nhiwatch_tls_coverage",
            &["stack=\"go\"", "covered=\"true\""],
        ) >= 1.0
            && d.metric_sum(
                "nhiwatch_tls_coverage",
                &["stack=\"blind\"", "covered=\"false\""],
            ) >= 1.0
    });
    d.stop();
}

/// A Go binary built and stripped by Debian (hey, an HTTP load generator, built with Debian's
/// Go), not by us: inspected through .gopclntab alone, and its calls seen over HTTP/1.1 and h2.
#[test]
fn a_go_binary_built_and_stripped_by_debian_is_seen() {
    let hey = Path::new("/usr/bin/hey");
    assert!(
        hey.exists(),
        "Debian package hey missing: run `cargo xtask deps`"
    );
    let go = golang::inspect(hey).unwrap_or_else(|e| panic!("{}: {e}", hey.display()));
    assert!(go.version.starts_with("go1."), "{}", go.version);
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], &extra_targets(std::iter::once(hey))));
    let fp = curl_fingerprint(&d, &nginx);
    for (proto, h2) in [("http1", false), ("http2", true)] {
        let mut cmd = Command::new(hey);
        cmd.args(["-n", "4", "-c", "1", "-H"])
            .arg(format!("Authorization: Bearer {TOKEN}"))
            .args(["-host", "api.nhiwatch.test"]);
        if h2 {
            cmd.arg("-h2");
        }
        let pid = spawn_pid(cmd.arg(format!("https://127.0.0.1:{}/v1/items", nginx.port)));
        let calls = wait_calls(&d, &format!("hey {proto}"), pid, 4);
        assert_eq!(calls.len(), 4, "{proto}: {calls:?}");
        for call in &calls {
            assert_eq!(call["protocol"], proto, "{call}");
            assert_eq!(call["path"], "/v1/items", "{call}");
            assert_eq!(call["status"], 200, "{call}");
            assert_eq!(call["credentials"][0]["fingerprint"], fp.as_str(), "{call}");
        }
    }
    assert_no_leak(d);
}

/// gRPC-go runs its own HTTP/2 over crypto/tls: each unary call is one api_call (path = the
/// method), with the token's fingerprint equal to curl's; the in-process server's side of the
/// same connection makes no api_call.
#[test]
fn grpc_go_calls_are_api_calls() {
    let bin = go::build_debian_gopath("grpc");
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(
        &[],
        &extra_targets(std::iter::once(bin.as_path())),
    ));
    let fp = curl_fingerprint(&d, &nginx);
    // The nginx test certificate serves the gRPC server too.
    let (cert, key) = (
        nginx.dir.path().join("cert.pem"),
        nginx.dir.path().join("key.pem"),
    );
    assert!(cert.exists() && key.exists(), "{}", cert.display());
    let pid = spawn_pid(
        Command::new(&bin)
            .arg(&cert)
            .arg(&key)
            .arg("3")
            .env("TOKEN", TOKEN),
    );
    let calls = wait_calls(&d, "gRPC calls", pid, 3);
    assert_eq!(calls.len(), 3, "{calls:?}");
    for call in &calls {
        assert_eq!(call["protocol"], "http2", "{call}");
        assert_eq!(call["method"], "POST", "{call}");
        assert_eq!(call["path"], "/grpc.health.v1.Health/Check", "{call}");
        assert_eq!(call["status"], 200, "{call}");
        assert_eq!(call["credentials"][0]["fingerprint"], fp.as_str(), "{call}");
    }
    assert_no_leak(d);
}

/// `nhiwatch_probe_attached` lines of the Go `Read` probe on targets whose path contains `name`.
fn go_read_probes(d: &Daemon, name: &str) -> Vec<String> {
    d.metrics()
        .lines()
        .filter(|l| {
            l.starts_with("nhiwatch_probe_attached{")
                && l.contains("crypto/tls.(*Conn).Read")
                && l.contains(name)
        })
        .map(str::to_owned)
        .collect()
}

/// Whether the Go `Read` probe is attached (value 1) on a target whose path contains `name`.
fn go_probed(d: &Daemon, name: &str) -> bool {
    go_read_probes(d, name).iter().any(|l| l.ends_with(" 1"))
}

/// BPF links and perf events (each uprobe is one) the daemon holds.
fn attachments(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|t| {
                    let t = t.to_string_lossy();
                    t.contains("perf_event") || t.contains("bpf_link") || t.contains("bpf-link")
                })
                .count()
        })
        .unwrap_or(0)
}

/// A private copy of the newest toolchain's stripped client (a file no other daemon probed).
fn private_client(dir: &TempDir, prefix: &str) -> (std::path::PathBuf, String) {
    let tc = go::toolchains().pop().expect("newest");
    let bin = go::build(&tc, "client", true);
    let copy = dir.path().join(unique(prefix));
    std::fs::copy(&bin, &copy).unwrap();
    let name = copy.file_name().unwrap().to_string_lossy().into_owned();
    (copy, name)
}

/// A client of `bin` that prints "ready" and makes its one request on a line on stdin.
fn waiting_client(bin: &Path, nginx: &Nginx) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(bin)
        .arg(format!("-url=https://api.nhiwatch.test:{}", nginx.port))
        .arg(format!("-ca={}", nginx.cert.display()))
        .args(["-wait-stdin", "-h2=true", "-paths=/v1/items"])
        .env("TOKEN", TOKEN)
        .env("CONNECT_TO", format!("127.0.0.1:{}", nginx.port))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l == "ready")),
        "{} never got ready",
        bin.display()
    );
    // Keep reading: the client prints its statuses later, into a pipe that must stay open.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn go_on(child: &mut std::process::Child) {
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
}

/// Who opens one file: a fanotify mark (which, unlike inotify, names the opening process).
struct OpenWatch(std::os::fd::OwnedFd);

impl OpenWatch {
    fn new(file: &Path) -> OpenWatch {
        use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
        // SAFETY: plain syscalls; the descriptor is owned from here on.
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
                (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
            )
        };
        assert!(
            fd >= 0,
            "fanotify_init: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(file.as_os_str().as_bytes()).unwrap();
        let r = unsafe {
            libc::fanotify_mark(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::FAN_MARK_ADD,
                libc::FAN_OPEN,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        assert_eq!(r, 0, "fanotify_mark: {}", std::io::Error::last_os_error());
        OpenWatch(fd)
    }

    /// Waits until process `opener` opens the file (false after `timeout`).
    fn opened_by(&self, opener: u32, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        let size = std::mem::size_of::<libc::fanotify_event_metadata>();
        while std::time::Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd; a buffer we own.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let mut at = 0usize;
            let mut seen = false;
            while n > 0 && at + size <= n as usize {
                // SAFETY: the kernel wrote whole events; read unaligned from our buffer.
                let ev: libc::fanotify_event_metadata =
                    unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
                if ev.fd >= 0 {
                    unsafe { libc::close(ev.fd) };
                }
                seen |= ev.pid as u32 == opener;
                at += ev.event_len.max(size as u32) as usize;
            }
            if seen {
                return true;
            }
        }
        false
    }
}

/// A Go program that exits while the daemon is still looking at it (killed the moment the
/// daemon opens its executable to inspect it) does not leave its file blind: the next,
/// long-lived process of the same file is probed and its call seen. (Before, the file stayed
/// cached as inspected for good: "not Go" when opening it through the vanished
/// /proc/PID/root failed, or attached when the attach through that path failed, `missing_file`.)
#[test]
fn a_go_program_that_exits_at_once_leaves_its_file_probeable_for_the_next_process() {
    let dir = TempDir::new("nhiwatch-e2e-go-short");
    let (copy, name) = private_client(&dir, "goshort");
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    let watch = OpenWatch::new(&copy);
    let mut short = Command::new(&copy)
        .args(["-wait-stdin", "-ca=/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let opened = watch.opened_by(d.pid(), WAIT);
    let _ = short.kill();
    let _ = short.wait();
    assert!(
        opened,
        "the daemon never opened {} to inspect it",
        copy.display()
    );
    let mut long = waiting_client(&copy, &nginx);
    let pid = long.id();
    wait_until("the next process of the same file probed", WAIT, || {
        go_probed(&d, &name)
    });
    go_on(&mut long);
    let calls = wait_calls(&d, "the long-lived process's call", pid, 1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["status"], 200, "{}", calls[0]);
    assert_no_leak(d);
}

/// Probes on a Go file live as long as a process runs it: after its last process exits they
/// are released (gone from the daemon's links and from `nhiwatch_probe_attached`), and the
/// next exec of the file attaches them again (from what was parsed before) and is seen.
#[test]
fn a_go_files_probes_go_with_its_last_process_and_come_back_with_the_next() {
    let dir = TempDir::new("nhiwatch-e2e-go-detach");
    let (copy, name) = private_client(&dir, "godetach");
    let go = golang::inspect(&copy).unwrap();
    // One uprobe per entry and per RET of Read.
    let sites = 2 + go.read.rets.len();
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    for round in ["first", "again"] {
        let before = attachments(d.pid());
        let mut c = waiting_client(&copy, &nginx);
        let pid = c.id();
        wait_until(&format!("{round}: probed"), WAIT, || {
            go_probed(&d, &name) && attachments(d.pid()) >= before + sites
        });
        go_on(&mut c);
        let calls = wait_calls(&d, &format!("{round}: call"), pid, 1);
        assert_eq!(calls.len(), 1, "{round}: {calls:?}");
        // Its only process is gone: the probes go (after the daemon's short grace period), all
        // at once. (Other processes on this machine may make the daemon attach elsewhere too:
        // the drop is looked for between two close samples, the statuses name this file.)
        let mut last = attachments(d.pid());
        let mut biggest_drop = 0;
        wait_until(&format!("{round}: probes released"), WAIT, || {
            let now = attachments(d.pid());
            biggest_drop = biggest_drop.max(last.saturating_sub(now));
            last = now;
            go_read_probes(&d, &name).is_empty() && biggest_drop >= sites
        });
    }
    assert!(d.stderr().contains("TLS probes detached"), "detach logged");
    assert_no_leak(d);
}

/// A Go file inspected once is not inspected again (cheap repeated execs), a process that
/// exits as it is looked at leaves nothing cached, and a file whose probes went comes back
/// as a target from what was parsed before. Uses a fake /proc: no privileges needed.
#[test]
fn discovery_keeps_a_go_file_probeable_across_vanished_processes_and_detaches() {
    use nhiwatch::probes::tls_libs::{AttachOutcome, TlsDiscovery};
    let dir = TempDir::new("nhiwatch-e2e-go-discovery");
    let (bin, _) = private_client(&dir, "godisc");
    let proc_root = dir.path().join("proc");
    let process = |pid: u32, alive: bool| {
        let base = proc_root.join(pid.to_string());
        let _ = std::fs::remove_dir_all(&base);
        if !alive {
            return;
        }
        std::fs::create_dir_all(base.join("root/opt")).unwrap();
        std::fs::hard_link(&bin, base.join("root/opt/client")).unwrap();
        std::fs::write(
            base.join("maps"),
            "00400000-00800000 r-xp 00000000 fe:01 42 /opt/client\n",
        )
        .unwrap();
    };
    let mut disc = TlsDiscovery::default();
    // Maps read, then the process is gone before its file is opened: nothing is cached.
    process(10, true);
    std::fs::remove_file(proc_root.join("10/root/opt/client")).unwrap();
    assert!(disc.scan_process(&proc_root, 10).is_empty());
    assert_eq!(disc.examined(), 0, "a vanished file is not cached");
    // The next process: a Go target.
    process(11, true);
    let t = disc.scan_process(&proc_root, 11);
    assert_eq!(t.len(), 1, "{t:?}");
    let key = t[0].key;
    assert!(t[0].go.is_some());
    // Its attach found the file gone: offered again, without a new inspection.
    disc.go_attached(key, AttachOutcome::Vanished);
    process(12, true);
    let again = disc.scan_process(&proc_root, 12);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].go, t[0].go);
    disc.go_attached(key, AttachOutcome::Attached);
    assert!(
        disc.scan_process(&proc_root, 12).is_empty(),
        "attached: a lookup"
    );
    // Users 11 and 12: only the last one's exit makes the file a candidate for detaching.
    assert_eq!(disc.go_exited(11), None);
    assert_eq!(disc.go_exited(12), Some(key));
    // A process the scans missed still runs it: it stays.
    assert!(!disc.go_detach(key, || vec![(13, key)]));
    assert_eq!(disc.go_exited(13), Some(key));
    assert!(disc.go_detach(key, Vec::new));
    assert!(!disc.go_is_attached(key));
    process(14, true);
    assert_eq!(disc.scan_process(&proc_root, 14).len(), 1, "probed again");
    // A file the kernel refused for good is not offered again.
    disc.go_attached(key, AttachOutcome::Failed);
    process(15, true);
    assert!(disc.scan_process(&proc_root, 15).is_empty());
    for pid in 10..16 {
        process(pid, false);
    }
}

/// `sensors.tls.stacks: [go]` (what benchmark 9 runs with): Go programs are probed, OpenSSL is
/// not — curl's request through libssl makes no api_call and no libssl probe is attached.
#[test]
fn only_the_tls_stacks_named_are_probed() {
    let dir = TempDir::new("nhiwatch-e2e-go-stacks");
    let (copy, _) = private_client(&dir, "gostacks");
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(
        &[],
        &format!(
            "{}    stacks: [go]\n  sockets:\n    enabled: false\n",
            extra_targets(std::iter::once(copy.as_path()))
        ),
    ));
    let c = run_client(&copy, &nginx, &["-h2=true", "-paths=/v1/items"]);
    let calls = wait_calls(&d, "the Go client's call", c.pid, 1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let curl = spawn_pid(
        Command::new("curl")
            .args(["-sS", "--fail", "-o", "/dev/null", "--cacert"])
            .arg(&nginx.cert)
            .args([
                "--resolve",
                &format!("api.nhiwatch.test:{}:127.0.0.1", nginx.port),
                &format!("https://api.nhiwatch.test:{}/v1/items", nginx.port),
            ]),
    );
    // curl's exit is seen (the process sensor is on), its call is not.
    d.wait_for("curl's exit", WAIT, |v| {
        kind_is(v, "exit") && pid_is(v, curl)
    });
    assert!(calls_of(&d, curl).is_empty(), "OpenSSL was probed");
    let m = d.metrics();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("nhiwatch_probe_attached{") && l.contains("SSL_write")),
        "a libssl probe attached:\n{m}"
    );
    d.stop();
}
