//! Alert delivery end to end: real findings from real file reads go to a Splunk-HEC-shaped HTTPS receiver (python3 + ssl) that is stopped while the daemon restarts, and nothing is lost; severity routing, rate limiting and the file sink on the same run.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use nhiwatch_e2e::*;
use serde_json::Value;

const TOKEN: &str = "e2e-hec-token-7f3c9a11";
const SECRET: &str = "SECRET-CONTENT-d41d8cd98f00";

/// A Splunk HEC endpoint: checks `Authorization: Splunk TOKEN`, splits concatenated events,
/// appends each as one JSON line (with the request's path) to OUT. Also serves a generic JSON
/// webhook (an array per POST) on /hook and the HEC health endpoint.
const RECEIVER: &str = r#"
import http.server, json, ssl, sys
port, cert, key, token, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a):
        pass
    def reply(self, code, body):
        b = json.dumps(body).encode()
        self.send_response(code)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        self.reply(200 if self.path == '/services/collector/health' else 404, {'text': 'HEC is healthy', 'code': 17})
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', '0'))).decode()
        if self.path == '/services/collector/event':
            if self.headers.get('authorization') != 'Splunk ' + token:
                return self.reply(401, {'text': 'Invalid authorization', 'code': 3})
            dec, i, events = json.JSONDecoder(), 0, []
            while i < len(body):
                while i < len(body) and body[i].isspace():
                    i += 1
                if i == len(body):
                    break
                ev, i = dec.raw_decode(body, i)
                events.append(ev)
        elif self.path == '/hook':
            events = [{'event': e} for e in json.loads(body)]
        else:
            return self.reply(404, {'text': 'not found'})
        with open(out, 'a') as f:
            for ev in events:
                ev['path'] = self.path
                f.write(json.dumps(ev) + '\n')
        self.reply(200, {'text': 'Success', 'code': 0})
srv = http.server.ThreadingHTTPServer(('127.0.0.1', port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print('ready', flush=True)
srv.serve_forever()
"#;

struct Receiver {
    child: Child,
}

impl Receiver {
    fn start(dir: &Path, port: u16, out: &Path) -> Receiver {
        let script = dir.join("receiver.py");
        std::fs::write(&script, RECEIVER).unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(dir.join("tls/cert.pem"))
            .arg(dir.join("tls/key.pem"))
            .arg(TOKEN)
            .arg(out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "receiver did not start");
        Receiver { child }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Received events (path, OCSF or native alert), by line.
fn received(out: &Path) -> Vec<Value> {
    // The receiver's buffered writes can be caught halfway through a line.
    complete_lines(&std::fs::read_to_string(out).unwrap_or_default())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Dedup keys of the OCSF NHI-020 alerts about files under `dir` that reached `path`.
fn ocsf_keys(events: &[Value], path: &str, dir: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e["path"] == path)
        .map(|e| &e["event"])
        .filter(|a| a["finding_info"]["analytic"]["uid"] == "NHI-020")
        .filter(|a| a.to_string().contains(dir))
        .map(|a| a["finding_info"]["uid"].as_str().unwrap().to_owned())
        .collect()
}

/// Dedup keys of the daemon's own NHI-020 findings (stdout) about files under `dir`.
fn stdout_keys(events: &[Value], dir: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "finding" && e["rule"]["id"] == "NHI-020")
        .filter(|e| {
            e["evidence"]["file"]
                .as_str()
                .is_some_and(|f| f.starts_with(dir))
        })
        .map(|e| e["dedup_key"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads `files` with cat (an ungoverned identity: each file is an NHI-020).
fn read_files(files: &[PathBuf]) {
    for f in files {
        run_ok(Command::new("cat").arg(f));
    }
}

struct Setup {
    tmp: TempDir,
    secrets: PathBuf,
    port: u16,
    out: PathBuf,
}

impl Setup {
    fn new(prefix: &str, n: usize) -> Setup {
        let tmp = TempDir::new(prefix);
        let tls = tmp.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        make_cert(&tls);
        std::fs::write(tmp.path().join("hec-token"), format!("{TOKEN}\n")).unwrap();
        let secrets = tmp.path().join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        for i in 0..n {
            std::fs::write(secrets.join(format!("s{i:02}")), SECRET).unwrap();
        }
        Setup {
            port: free_port(),
            out: tmp.path().join("received.jsonl"),
            secrets,
            tmp,
        }
    }

    fn file(&self, i: usize) -> PathBuf {
        self.secrets.join(format!("s{i:02}"))
    }

    fn files(&self, r: std::ops::Range<usize>) -> Vec<PathBuf> {
        r.map(|i| self.file(i)).collect()
    }

    fn config(&self, alerts: &str) -> String {
        format!(
            "{}rules: []\nalerts:\n{alerts}",
            config_with(&[format!("{}/", self.secrets.display())], ""),
        )
    }

    fn hec_sink(&self) -> String {
        format!(
            "    - name: hec\n      type: webhook\n      body: hec\n      url: https://localhost:{port}/services/collector/event\n      token_file: {dir}/hec-token\n      tls: {{ca: {dir}/tls/ca.pem}}\n      retry_initial: 100ms\n      retry_max: 500ms\n      timeout: 2s\n",
            port = self.port,
            dir = self.tmp.path().display(),
        )
    }
}

#[test]
fn hec_outage_and_a_daemon_restart_lose_no_alert() {
    let s = Setup::new("nhiwatch-e2e-hec", 15);
    let dir = s.secrets.display().to_string();
    let state = s.tmp.path().join("state");
    let cfg = s.config(&format!(
        "  drain_timeout: 1s\n  rate_limit: {{window: 1m, max: 1000}}\n  sinks:\n{}",
        s.hec_sink()
    ));
    let receiver = Receiver::start(s.tmp.path(), s.port, &s.out);
    let d = Daemon::start_with_state(&cfg, Some(&state));

    // Receiver up: alerts arrive as HEC events shaped as OCSF Detection Findings.
    read_files(&s.files(0..5));
    wait_until("5 alerts at the receiver", Duration::from_secs(60), || {
        ocsf_keys(&received(&s.out), "/services/collector/event", &dir).len() == 5
    });
    let got = received(&s.out);
    let one = got
        .iter()
        .find(|e| e["event"]["finding_info"]["analytic"]["uid"] == "NHI-020")
        .unwrap();
    assert_eq!(one["event"]["class_uid"], 2004, "{one}");
    assert_eq!(one["source"], "nhiwatch", "{one}");
    assert!(one["time"].as_str().unwrap().contains('.'), "{one}");
    assert!(one["host"].as_str().is_some_and(|h| !h.is_empty()), "{one}");

    // Receiver down: alerts wait in the spool, failures are counted, then the daemon restarts.
    receiver.stop();
    read_files(&s.files(5..10));
    wait_until("delivery failures", Duration::from_secs(60), || {
        d.metric_sum("nhiwatch_alert_send_failures_total", &["sink=\"hec\""]) >= 1.0
    });
    wait_until("5 spooled alerts", Duration::from_secs(60), || {
        d.metric_sum("nhiwatch_alert_queue_alerts", &["sink=\"hec\""]) >= 5.0
    });
    assert_eq!(
        d.metric_sum("nhiwatch_alert_sink_up", &["sink=\"hec\""]),
        0.0
    );
    let first_run: Vec<Value> = d.events();
    let (_, err1) = d.stop();

    let d = Daemon::start_with_state(&cfg, Some(&state));
    // Logged before the daemon is ready, but read from its stderr by a thread of ours.
    wait_until(
        "the restarted daemon to report the spooled alerts",
        Duration::from_secs(60),
        || {
            d.stderr()
                .contains("undelivered alerts from an earlier run")
        },
    );
    read_files(&s.files(10..15));
    wait_until(
        "delivery failures after the restart",
        Duration::from_secs(60),
        || d.metric_sum("nhiwatch_alert_send_failures_total", &["sink=\"hec\""]) >= 1.0,
    );

    // Receiver back: every alert of both runs arrives.
    let receiver = Receiver::start(s.tmp.path(), s.port, &s.out);
    let mut expected = stdout_keys(&first_run, &dir);
    wait_until(
        "all 15 alerts at the receiver",
        Duration::from_secs(60),
        || ocsf_keys(&received(&s.out), "/services/collector/event", &dir).len() == 15,
    );
    wait_until("an empty queue", Duration::from_secs(60), || {
        d.metric_sum("nhiwatch_alert_queue_alerts", &["sink=\"hec\""]) == 0.0
    });
    assert_eq!(
        d.metric_sum("nhiwatch_alert_sink_up", &["sink=\"hec\""]),
        1.0
    );
    expected.extend(stdout_keys(&d.events(), &dir));
    assert_eq!(expected.len(), 15, "the daemon found 15 reads");
    assert_eq!(
        ocsf_keys(&received(&s.out), "/services/collector/event", &dir),
        expected,
        "the receiver got exactly the daemon's findings"
    );
    assert!(d.metric_sum("nhiwatch_alerts_sent_total", &["sink=\"hec\""]) >= 10.0);
    assert_eq!(
        d.metric_sum("nhiwatch_alerts_dropped_total", &["sink=\"hec\""]),
        0.0
    );
    let lat = d.metric_sum("nhiwatch_alert_latency_seconds_count", &["sink=\"hec\""]);
    assert!(lat >= 1.0, "latency recorded: {lat}");
    let (_, err2) = d.stop();
    receiver.stop();

    // Secrets never leave: not the files' contents, not the HEC token.
    let received_text = std::fs::read_to_string(&s.out).unwrap();
    for (what, text) in [
        ("received", &received_text),
        ("stderr 1", &err1),
        ("stderr 2", &err2),
    ] {
        assert!(!text.contains(SECRET), "file content in {what}");
        assert!(!text.contains(TOKEN), "HEC token in {what}");
    }
    for f in files_under(&state) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(SECRET) && !text.contains(TOKEN), "{f:?}");
    }
}

#[test]
fn severity_routing_rate_limit_and_file_sink() {
    let s = Setup::new("nhiwatch-e2e-route", 8);
    let dir = s.secrets.display().to_string();
    let receiver = Receiver::start(s.tmp.path(), s.port, &s.out);
    let cfg = s.config(&format!(
        "  rate_limit: {{window: 10s, max: 3}}\n  sinks:\n    - name: archive\n      type: file\n      format: ocsf\n      path: archive/alerts.jsonl\n    - name: hook\n      type: webhook\n      body: json\n      min_severity: high\n      url: https://localhost:{port}/hook\n      tls: {{ca: {tmp}/tls/ca.pem}}\n",
        port = s.port,
        tmp = s.tmp.path().display(),
    ));
    let d = Daemon::start(&cfg);
    // One identity (cat) reads 8 secrets: 3 NHI-020 go out, 5 are held back and reported by
    // one NHI-090 when the window closes. The window is wide enough for the 8 reads to fall in
    // it on a busy machine (a read that missed it would open a new window and go out).
    read_files(&s.files(0..8));
    wait_until("NHI-090 at the webhook", Duration::from_secs(60), || {
        received(&s.out)
            .iter()
            .any(|e| e["event"]["finding_info"]["analytic"]["uid"] == "NHI-090")
    });
    let got = received(&s.out);
    assert_eq!(ocsf_keys(&got, "/hook", &dir).len(), 3, "{got:#?}");
    let held = got
        .iter()
        .map(|e| &e["event"])
        .find(|a| a["finding_info"]["analytic"]["uid"] == "NHI-090")
        .unwrap();
    assert!(
        held["message"]
            .as_str()
            .unwrap_or_default()
            .contains("5 more NHI-020")
            || held.to_string().contains("5 more NHI-020"),
        "{held}"
    );
    // min_severity high: the medium NHI-001 (ungoverned identity) never reaches the webhook.
    assert!(
        !got.iter()
            .any(|e| e["event"]["finding_info"]["analytic"]["uid"] == "NHI-001"),
        "{got:#?}"
    );
    assert!(d.metric_sum("nhiwatch_alerts_suppressed_total", &["rule=\"NHI-020\""]) >= 5.0);
    let (out, _, state) = d.stop_with_state();
    receiver.stop();
    // The file sink got the same rate-limited stream, in OCSF, medium findings included.
    let archive = state
        .iter()
        .find(|(p, _)| p.ends_with("archive/alerts.jsonl"))
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .expect("archive/alerts.jsonl in the state directory");
    let lines: Vec<Value> = archive
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |rule: &str| {
        lines
            .iter()
            .filter(|a| a["finding_info"]["analytic"]["uid"] == rule)
            .filter(|a| a.to_string().contains(&dir))
            .count()
    };
    assert_eq!(of("NHI-020"), 3, "{archive}");
    let held_back = lines
        .iter()
        .filter(|a| a["finding_info"]["analytic"]["uid"] == "NHI-090")
        .filter(|a| {
            a["actor"]["user"]["uid"]
                .as_str()
                .is_some_and(|u| u.ends_with("/usr/bin/cat"))
        })
        .filter(|a| a["count"] == 5)
        .count();
    assert_eq!(held_back, 1, "{archive}");
    assert!(
        lines
            .iter()
            .any(|a| a["finding_info"]["analytic"]["uid"] == "NHI-001"),
        "{archive}"
    );
    // Stdout carries the same stream as the sinks (rate limit applied once, before every output).
    let printed = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == "finding" && e["rule"]["id"] == "NHI-020")
        .filter(|e| e.to_string().contains(&dir))
        .count();
    assert_eq!(printed, 3);
    assert!(!archive.contains(SECRET));
}

/// A small tmpfs mounted on a directory, unmounted on drop (even when the test failed).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0700"))
                .arg(unique("nhiwatch-e2e-tmpfs"))
                .arg(dir),
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a daemon that did not exit): detach it, nothing must stay mounted.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Native findings in a file sink's output.
fn native(path: &Path) -> Vec<Value> {
    complete_lines(&std::fs::read_to_string(path).unwrap_or_default())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_sink_whose_spool_cannot_be_written_is_down_says_so_once_and_logs_at_a_bounded_rate() {
    const FILES: usize = 300;
    let s = Setup::new("nhiwatch-e2e-fulldisk", FILES + 1);
    let state = s.tmp.path().join("state");
    // The spool of sink "small" lives on its own 1 MiB file system; sink "main" on the
    // ordinary disk. Declared after the directories and before the daemon: dropped in between.
    let mount = Tmpfs::mount(&state.join("spool/small"), "1m");
    let cfg = s.config(
        "  rate_limit: {window: 1m, max: 0}\n  sinks:\n    - {name: main, type: file, path: main.jsonl}\n    - {name: small, type: file, path: small.jsonl}\n",
    );
    let d = Daemon::start_with_state(&cfg, Some(&state));
    // Fill the small file system: every page is taken, so every append to the spool fails
    // (ENOSPC). dd ends with that error, as intended.
    let filler = mount.0.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=64k", "status=none"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(std::fs::metadata(&filler).unwrap().len() > 0);

    // Hundreds of findings: one NHI-020 per secret read.
    run_ok(Command::new("cat").args(s.files(0..FILES)));
    let dropped = || {
        d.metric_sum(
            "nhiwatch_alerts_dropped_total",
            &["sink=\"small\"", "reason=\"spool_error\""],
        )
    };
    wait_until(
        "hundreds of alerts dropped as spool_error",
        Duration::from_secs(60),
        || dropped() >= (FILES - 50) as f64,
    );
    assert_eq!(
        d.metric_sum("nhiwatch_alert_sink_up", &["sink=\"small\""]),
        0.0,
        "a sink whose spool cannot be written is down"
    );
    assert_eq!(
        d.metric_sum("nhiwatch_alert_sink_up", &["sink=\"main\""]),
        1.0
    );
    // One NHI-091 about "small" on the other sink, naming the spool and the error.
    let main = state.join("main.jsonl");
    let down = |v: &Value| v["rule"]["id"] == "NHI-091" && v["evidence"]["destination"] == "small";
    wait_until("NHI-091 on sink main", Duration::from_secs(60), || {
        native(&main).iter().any(down)
    });
    let found = native(&main);
    let alerts: Vec<&Value> = found.iter().filter(|v| down(v)).collect();
    assert_eq!(alerts.len(), 1, "one NHI-091 per episode: {alerts:#?}");
    let summary = alerts[0]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("No space left on device") && summary.contains("cannot be written"),
        "{summary}"
    );
    // The log says it once (and at most once a minute after), not once per alert.
    let warns = |err: &str| {
        err.lines()
            .filter(|l| l.contains("WARN") && l.contains("sink=small"))
            .count()
    };
    let err = d.stderr();
    let n = warns(&err);
    assert!(
        (1..5).contains(&n),
        "{n} WARN lines for {} dropped alerts:\n{err}",
        dropped()
    );
    assert!(
        err.contains("alert spool cannot be written") && err.contains("errno=28"),
        "{err}"
    );

    // Room again: the sink comes back up by itself, and new alerts reach it.
    std::fs::remove_file(&filler).unwrap();
    wait_until("sink small up again", Duration::from_secs(60), || {
        d.metric_sum("nhiwatch_alert_sink_up", &["sink=\"small\""]) == 1.0
    });
    let last = s.file(FILES);
    run_ok(Command::new("cat").arg(&last));
    let small = state.join("small.jsonl");
    let last = last.display().to_string();
    wait_until("a new alert on sink small", Duration::from_secs(60), || {
        native(&small)
            .iter()
            .any(|v| v["rule"]["id"] == "NHI-020" && v["evidence"]["file"] == last.as_str())
    });
    assert!(
        !native(&small).iter().any(down),
        "the NHI-091 about small goes to the other sinks"
    );
    let (_, err) = d.stop();
    assert!(warns(&err) < 5, "{err}");
    assert!(err.contains("alert spool written again"), "{err}");
    drop(mount);
}
