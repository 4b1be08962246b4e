//! End-to-end: TLS plaintext from real clients (curl, python3, node, openssl s_client, gnutls-cli)
//! to a real nginx is seen for the right process and flow — and never printed.

use std::{process::Command, time::Duration};

use nhiwatch_e2e::*;

/// Bounds each wait for something that must happen: generous, so a busy machine is only slower.
const WAIT: Duration = Duration::from_secs(60);
/// Distinctive secret sent in every request; it must never appear in nhiwatch's output.
const SECRET: &str = "nhiwatchLEAKCANARY7f3a9c2e";

fn locations() -> &'static str {
    "location = /fhir/Patient { return 200 '{\"resourceType\":\"Bundle\"}'; }"
}

/// The TLS write carrying the request: right pid, tied to the client's flow to nginx.
fn assert_request_seen(d: &Daemon, pid: u32, port: u16, min_len: u64, expect_flow: bool) -> Value {
    let dst_suffix = format!(":{port}");
    let tls = d.wait_for("TLS write of the request", WAIT, |v| {
        kind_is(v, "tls_data")
            && pid_is(v, pid)
            && v["direction"] == "write"
            && v["len"].as_u64() >= Some(min_len)
    });
    assert!(tls["captured"].as_u64().unwrap() > 0, "{tls}");
    assert!(
        tls.get("plaintext").is_none() && tls.get("data").is_none(),
        "{tls}"
    );
    if expect_flow {
        let conn = d.wait_for("client connect", WAIT, |v| {
            kind_is(v, "tcp_connect")
                && pid_is(v, pid)
                && v["dst"].as_str().is_some_and(|s| s.ends_with(&dst_suffix))
        });
        assert_eq!(
            tls["flow"], conn["flow"],
            "TLS session tied to its TCP flow: {tls} vs {conn}"
        );
        assert!(tls["dst"].as_str().unwrap().ends_with(&dst_suffix), "{tls}");
    }
    // and the response came back through SSL_read in the same process
    d.wait_for("TLS read of the response", WAIT, |v| {
        kind_is(v, "tls_data") && pid_is(v, pid) && v["direction"] == "read"
    });
    tls
}

fn assert_no_leak(d: Daemon) {
    let metrics = d.metrics();
    let (stdout, stderr) = d.stop();
    for (what, text) in [
        ("events", &stdout),
        ("logs", &stderr),
        ("metrics", &metrics),
    ] {
        assert!(
            !text.contains(SECRET),
            "the secret leaked into nhiwatch {what}"
        );
        assert!(
            !text.contains("resourceType"),
            "a response body byte leaked into nhiwatch {what}"
        );
    }
}

#[test]
fn curl_http1_and_http2_requests_are_seen_with_pid_and_flow() {
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    let url = format!("https://127.0.0.1:{}/fhir/Patient?name=Doe", nginx.port);
    for proto in ["--http1.1", "--http2"] {
        let pid = spawn_pid(
            Command::new("curl")
                .args(["-sS", "--fail", proto, "--cacert"])
                .arg(&nginx.cert)
                .args(["-H", &format!("Authorization: Bearer {SECRET}"), &url]),
        );
        assert_request_seen(&d, pid, nginx.port, 40, true);
    }
    assert_no_leak(d);
}

#[test]
fn python_urllib_request_is_seen_with_pid_and_flow() {
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    let script = format!(
        "import ssl, urllib.request\nctx=ssl.create_default_context(cafile={cert:?})\n\
         req=urllib.request.Request('https://127.0.0.1:{port}/fhir/Patient', headers={{'Authorization':'Bearer {SECRET}'}})\n\
         print(urllib.request.urlopen(req, context=ctx).status)\n",
        cert = nginx.cert.display().to_string(),
        port = nginx.port
    );
    let pid = spawn_pid(Command::new("python3").args(["-c", &script]));
    assert_request_seen(&d, pid, nginx.port, 40, true);
    assert_no_leak(d);
}

#[test]
fn openssl_s_client_request_is_seen() {
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    let req = format!(
        "GET /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {SECRET}\r\nConnection: close\r\n\r\n"
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
    assert_request_seen(&d, pid, nginx.port, req.len() as u64, true);
    assert_no_leak(d);
}

#[test]
fn node_with_its_own_openssl_is_seen() {
    let Ok(node) = which("node") else {
        panic!("node is not installed: cargo xtask deps --all installs it");
    };
    let nginx = Nginx::start(locations());
    // node links OpenSSL statically; its binary must be discovered as a TLS target.
    let cfg = config_with(&[], &format!("  tls:\n    extra_targets: [{node}]\n"));
    let d = Daemon::start(&cfg);
    let script = format!(
        "const https=require('https');const fs=require('fs');\
         https.get({{host:'127.0.0.1',port:{port},path:'/fhir/Patient',ca:fs.readFileSync({cert:?}),servername:'localhost',\
         headers:{{Authorization:'Bearer {SECRET}'}}}},r=>{{r.resume();r.on('end',()=>process.exit(r.statusCode==200?0:1))}})\
         .on('error',e=>{{console.error(e);process.exit(2)}});",
        port = nginx.port,
        cert = nginx.cert.display().to_string()
    );
    let pid = spawn_pid(Command::new(&node).args(["-e", &script]));
    // node's TLS sits on memory BIOs: the socket write happens outside SSL_write,
    // so the flow cannot be tied in the kernel; pid and direction must still be right.
    assert_request_seen(&d, pid, nginx.port, 40, false);
    assert_no_leak(d);
}

#[test]
fn gnutls_client_is_seen() {
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    let req = format!(
        "GET /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {SECRET}\r\nConnection: close\r\n\r\n"
    );
    let pid = converse(
        Command::new("gnutls-cli").args([
            "--insecure",
            "--logfile=/dev/null",
            "-p",
            &nginx.port.to_string(),
            "127.0.0.1",
        ]),
        &req,
    );
    let tls = d.wait_for("gnutls write", WAIT, |v| {
        kind_is(v, "tls_data")
            && pid_is(v, pid)
            && v["direction"] == "write"
            && v["library"] == "gnutls"
    });
    assert!(tls["len"].as_u64().unwrap() >= 40, "{tls}");
    assert_no_leak(d);
}

fn which(cmd: &str) -> Result<String, ()> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map_err(|_| ())?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if p.is_empty() {
        return Err(());
    }
    // uprobes go on the real file, not a symlink or shim
    Ok(std::fs::canonicalize(&p)
        .map(|p| p.display().to_string())
        .unwrap_or(p))
}

/// Processes killed when the test ends, however it ends.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A private copy of the system libssl in `dir` (as every container image carries its own).
fn libssl_copy(dir: &std::path::Path) -> std::path::PathBuf {
    let system = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/usr/lib/aarch64-linux-gnu/libssl.so.3",
        "/usr/lib/libssl.so.3",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libssl.so.3 installed");
    std::fs::create_dir_all(dir).unwrap();
    let copy = dir.join("libssl.so.3");
    std::fs::copy(system, &copy).unwrap();
    copy
}

/// Issue G item 8: with ≈ 210 uprobes attached the daemon must stop well within a unit's
/// `TimeoutStopSec` and a pod's grace period (it took 24–45 s detaching one by one).
#[test]
fn stop_with_200_uprobes_is_fast() {
    const COPIES: usize = 24; // 9 uprobes each (4 calls × entry and return, SSL_ctrl): 216
    let dir = TempDir::new("nhiwatch-e2e-stop");
    let d = Daemon::start(&config_with(&[], ""));
    let mut holders = Children(Vec::new());
    for i in 0..COPIES {
        let lib = libssl_copy(&dir.path().join(i.to_string()));
        let script = format!(
            "import ctypes, sys, time\nctypes.CDLL({:?})\nprint('loaded', flush=True)\ntime.sleep(600)\n",
            lib.display().to_string()
        );
        holders.0.push(
            Command::new("python3")
                .args(["-c", &script])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let prefix = dir.path().display().to_string();
    let attached = || {
        d.metrics()
            .lines()
            .filter(|l| {
                l.starts_with("nhiwatch_probe_attached{")
                    && l.contains(&prefix)
                    && l.ends_with(" 1")
            })
            .count()
    };
    // 5 statuses per copy: SSL_write, SSL_read, SSL_write_ex, SSL_read_ex, SSL_ctrl.
    wait_until("uprobes on every private libssl", WAIT, || {
        attached() >= COPIES * 5
    });
    let statuses = attached();
    let pid = d.pid();
    let started = std::time::Instant::now();
    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    // Exited (a zombie until the harness reaps it, or gone).
    let exited = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    wait_until(
        "nhiwatch to exit after SIGTERM",
        Duration::from_secs(10),
        exited,
    );
    let took = started.elapsed();
    eprintln!("stop with {statuses} uprobe statuses on the copies took {took:?}");
    // A clean exit, alerts drained (the harness checks the status and the output).
    let (_, stderr) = d.stop();
    assert!(stderr.contains("TLS probes released"), "{stderr}");
    assert!(stderr.contains("nhiwatch stopped"), "{stderr}");
}

/// Issue G item 11: a one-shot client that loads its own copy of libssl (as every container
/// image carries one) must be seen from its first call. Each of 40 curls gets a private copy
/// through LD_LIBRARY_PATH and makes one HTTPS call; every one must become an api_call. It was
/// 11 and 28 of 40 when the library was only attached after the process had made its call.
/// The clients run without a controlling terminal (`setsid`), as cron jobs and container
/// processes do: that is where the daemon holds a process at a new library (README).
#[test]
fn first_call_through_a_new_libssl_copy_is_seen() {
    const CLIENTS: usize = 40;
    let nginx = Nginx::start(locations());
    let d = Daemon::start(&config_with(&[], ""));
    let dir = TempDir::new("nhiwatch-e2e-first-call");
    let url = format!("https://127.0.0.1:{}/fhir/Patient?name=Doe", nginx.port);
    let mut pids = Vec::new();
    for i in 0..CLIENTS {
        let lib_dir = dir.path().join(i.to_string());
        libssl_copy(&lib_dir);
        pids.push(spawn_pid(
            Command::new("setsid")
                .arg("curl")
                .args(["-sS", "--fail", "--http1.1", "--cacert"])
                .arg(&nginx.cert)
                .arg(&url)
                .env("LD_LIBRARY_PATH", &lib_dir),
        ));
    }
    let seen = || {
        let events = d.events();
        pids.iter()
            .filter(|&&pid| {
                events
                    .iter()
                    .any(|v| kind_is(v, "api_call") && pid_is(v, pid))
            })
            .count()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            "an api_call from every one-shot curl",
            Duration::from_secs(20),
            || seen() == CLIENTS,
        )
    }));
    let n = seen();
    eprintln!("api_calls from {n} of {CLIENTS} one-shot curls with a private libssl");
    let metrics = d.metrics();
    let held: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("nhiwatch_tls_hold"))
        .collect();
    eprintln!("{}", held.join("\n"));
    assert!(
        result.is_ok(),
        "api_calls from only {n} of {CLIENTS} one-shot curls"
    );
    d.stop();
}

/// The hold's safety rail for interactive use: a process with a controlling terminal is never
/// stopped (its shell would report a stopped job), yet its new library copy is still reported
/// at once and attached. And with `hold_new_libraries: false` nobody is held at all.
#[test]
fn processes_with_a_terminal_or_with_the_hold_off_are_never_held() {
    // Loads its own libssl copy and stays a moment, so the copy can be attached either way.
    let load = |lib: &std::path::Path| {
        format!(
            "python3 -c 'import ctypes, time; ctypes.CDLL(\"{}\"); time.sleep(2)'",
            lib.display()
        )
    };
    for hold in [true, false] {
        let d = Daemon::start(&config_with(
            &[],
            &format!("  tls:\n    hold_new_libraries: {hold}\n"),
        ));
        let dir = TempDir::new("nhiwatch-e2e-no-hold");
        let attached_to = |lib: &std::path::Path| {
            let needle = format!("{}\"", lib.display());
            d.metrics().lines().any(|l| {
                l.starts_with("nhiwatch_probe_attached{probe=\"tls/SSL_write\"")
                    && l.contains(&needle)
                    && l.ends_with(" 1")
            })
        };
        // `script` runs the command on a new pseudo-terminal: its controlling terminal.
        let on_tty = libssl_copy(&dir.path().join("tty"));
        spawn_pid(Command::new("script").args(["-qec", &load(&on_tty), "/dev/null"]));
        wait_until("the copy used on a terminal attached", WAIT, || {
            attached_to(&on_tty)
        });
        assert_eq!(
            d.metric_sum("nhiwatch_tls_holds_total", &["outcome=\"held\""]),
            0.0,
            "a process with a terminal was held"
        );
        // Without a terminal: held only when the hold is on.
        let plain = libssl_copy(&dir.path().join("plain"));
        spawn_pid(Command::new("setsid").args(["sh", "-c", &load(&plain)]));
        wait_until("the copy used without a terminal attached", WAIT, || {
            attached_to(&plain)
        });
        let hold_probe = d.metrics().contains(
            "nhiwatch_probe_attached{probe=\"tls_hold/hold_tls_library\",target=\"kernel\"} 1",
        );
        assert_eq!(
            hold_probe, hold,
            "the hold's probe is attached only when enabled"
        );
        let held = d.metric_sum("nhiwatch_tls_holds_total", &["outcome=\"held\""]);
        assert_eq!(
            held,
            if hold { 1.0 } else { 0.0 },
            "hold {hold}: held {held}"
        );
        let released = d.metric_sum("nhiwatch_tls_holds_total", &["outcome=\"released\""]);
        assert_eq!(
            released, held,
            "every held process continued after the attach"
        );
        d.stop();
    }
}

/// Only a process the daemon may continue is ever held. Without CAP_KILL (the deployed set
/// less that one) root cannot send SIGCONT to another user's process in another session; such
/// a process, once stopped, would have stayed stopped for ever.
#[test]
fn a_process_the_daemon_cannot_continue_is_never_held() {
    let caps = ",+sys_admin,+sys_ptrace,+dac_read_search";
    let wrapper: Vec<String> = [
        "setpriv".to_owned(),
        format!("--inh-caps=-all{caps}"),
        format!("--ambient-caps=-all{caps}"),
        format!("--bounding-set=-all{caps}"),
        "--".to_owned(),
    ]
    .into();
    let d = Daemon::try_start_wrapped(&wrapper, &config_with(&[], ""), &[])
        .expect("nhiwatch with the deployed capabilities less CAP_KILL");
    let dir = TempDir::new("nhiwatch-e2e-other-user");
    let lib = libssl_copy(&dir.path().join("nobody"));
    let mut child = Children(vec![Command::new("setsid")
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &format!(
                "import ctypes; ctypes.CDLL({:?})",
                lib.display().to_string()
            ),
        ])
        .current_dir("/")
        .spawn()
        .unwrap()]);
    let c = &mut child.0[0];
    let mut status = None;
    wait_until(
        "the other user's process to finish",
        Duration::from_secs(10),
        || {
            status = c.try_wait().unwrap();
            status.is_some()
        },
    );
    assert!(status.unwrap().success(), "{status:?}");
    assert_eq!(
        d.metric_sum("nhiwatch_tls_holds_total", &["outcome=\"held\""]),
        0.0
    );
    d.stop();
}
