//! Input that used to exhaust memory or time, and configurations that used to weaken the deployment silently: takes FIFOs, devices, oversized and deeply nested files, endless lines and weakening settings, runs the real binary (or the configuration loader) and passes only on a clear error within a deadline, with bounded memory.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nhiwatch::config::Config;

/// Every run here must end well within this; the old code blocked (FIFO), ran for minutes
/// (nested YAML) or grew until the allocator aborted (/dev/zero).
const DEADLINE: Duration = Duration::from_secs(30);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The child's peak resident set, from wait4(2).
    max_rss_kib: i64,
    took: Duration,
}

/// Runs the binary with `args`, feeding `stdin` bytes if given; kills it and fails past the deadline.
fn run(args: &[&std::ffi::OsStr], stdin: Option<(u8, usize)>) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nhiwatch"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run nhiwatch");
    if let (Some((byte, len)), Some(mut w)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let chunk = vec![byte; 1 << 16];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                if w.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n;
            }
        });
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Both pipes reach end of file when the process exits: that is the condition waited for.
    std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((o, e));
    });
    match rx.recv_timeout(DEADLINE) {
        Ok((stdout, stderr)) => {
            let mut status = 0;
            // SAFETY: plain out-parameters; the pid is our child, reaped once here.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let pid = child.id() as libc::pid_t;
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            assert_eq!(r, pid, "wait4");
            let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            Run {
                code,
                stdout,
                stderr,
                max_rss_kib: usage.ru_maxrss,
                took: started.elapsed(),
            }
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`nhiwatch {args:?}` still running after {DEADLINE:?}: killed");
        }
    }
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules")
}

/// A YAML value nested `n` brackets deep, ~2n bytes: the 200 KB of the issue is n = 100,000.
fn nested(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

fn data_source(i: usize) -> String {
    format!(
        "apiVersion: nhiwatch.dev/v1\nkind: DataSource\nmetadata: {{name: ds-{i}}}\nspec:\n  classification: phi\n  match:\n    - host: h{i}.example.org\n"
    )
}

#[test]
fn check_config_of_a_fifo_or_a_device_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.yaml");
    mkfifo(&fifo);
    for (path, kind) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "a character device"),
    ] {
        let r = run(&[os("check-config"), path.as_os_str()], None);
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("{}: not a regular file ({kind})", path.display())),
            "{}",
            r.stderr
        );
        assert!(r.took < Duration::from_secs(5), "{:?}", r.took);
    }
    // `nhiwatch check` reads rules through the same reader.
    let r = run(&[os("check"), fifo.as_os_str()], None);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("not a regular file (a FIFO)"),
        "{}",
        r.stderr
    );
}

#[test]
fn oversized_files_are_refused_naming_the_file_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(2 << 20))).unwrap();
    let r = run(&[os("check-config"), big.as_os_str()], None);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{}: 2097155 bytes is larger than the limit for a configuration file of 1048576 bytes",
            big.display()
        )),
        "{}",
        r.stderr
    );
    let r = run(&[os("check"), big.as_os_str()], None);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("larger than the limit for a rules file of 1048576 bytes"),
        "{}",
        r.stderr
    );
}

/// A ConfigMap-sized file (1 MB) of 6,817 data sources: the old loader accepted it after a long
/// quadratic overlap check and ~31 KB per data source (59 → 333 MB in a live daemon).
#[test]
fn too_many_rules_documents_are_refused_fast() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("many.yaml");
    let docs: Vec<String> = (0..6817).map(data_source).collect();
    std::fs::write(&f, docs.join("---\n")).unwrap();
    assert!(std::fs::metadata(&f).unwrap().len() < 1 << 20);
    let r = run(&[os("check"), f.as_os_str()], None);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("more than 5000 rules documents"),
        "{}",
        r.stderr
    );
    assert!(r.took < Duration::from_secs(20), "{:?}", r.took);
    // Several files each under the per-file limit are bounded together.
    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..5 {
        std::fs::write(
            many.join(format!("{i}.yaml")),
            format!("# {}\n", "y".repeat(1000 << 10)),
        )
        .unwrap();
    }
    let r = run(&[os("check"), many.as_os_str()], None);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("more than the limit of 4194304 bytes for all rules files together"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("4.yaml:1:1"), "{}", r.stderr);
}

/// Each data source used to cost ~31 KB: every host (and the default `/**` path) was compiled
/// into a regex with its own DFA. Plain hosts are compared as they are now and identical globs
/// are compiled once: 4,900 data sources (the most a 700 KB file holds) peaked at ~160 MB in
/// `check` and took 37 s, now ~40 MB and under a second.
#[test]
fn thousands_of_data_sources_cost_kilobytes_each() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("many.yaml");
    let docs: Vec<String> = (0..4900).map(data_source).collect();
    std::fs::write(&f, docs.join("---\n")).unwrap();
    let r = run(&[os("check"), f.as_os_str()], None);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("ok: 4900 data sources"), "{}", r.stdout);
    assert!(
        r.max_rss_kib < 96 << 10,
        "peak RSS {} KiB for 4,900 data sources",
        r.max_rss_kib
    );
    // The overlap check paired every two sources (12 million pairs, 6 s in a debug build); only
    // sources that share a host or both match files are paired now (0.7 s).
    assert!(r.took < Duration::from_secs(15), "{:?}", r.took);
}

/// Every distinct glob is a regex with its own DFA (~20 KB): 5,000 contracts with a secret path
/// and a destination each took 29 s and 233 MB to check, and one 1 MiB file of secret paths
/// could ask for gigabytes. More than 4,096 distinct globs are refused before any is compiled.
#[test]
fn too_many_distinct_globs_are_refused_before_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("contracts.yaml");
    let mut docs = vec![
        "apiVersion: nhiwatch.dev/v1\nkind: DataSource\nmetadata: {name: db}\nspec:\n  classification: phi\n  match:\n    - host: db.example.org\n".to_owned(),
    ];
    docs.extend((0..2100).map(|i| {
        format!(
            "apiVersion: nhiwatch.dev/v1\nkind: AccessContract\nmetadata: {{name: c-{i}}}\nspec:\n  identity: spiffe://x.example/ns/n/sa/s{i}\n  owner: team@example.org\n  purpose: test\n  allow:\n    dataSources: [db]\n    secrets:\n      - path: /var/run/secrets/app-{i}/**\n    destinations:\n      - host: \"*.svc-{i}.example.org\"\n"
        )
    }));
    std::fs::write(&f, docs.join("---\n")).unwrap();
    let r = run(&[os("check"), f.as_os_str()], None);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the rules hold more than 4096 distinct globs; expected at most 4096"),
        "{}",
        r.stderr
    );
    assert!(r.took < Duration::from_secs(10), "{:?}", r.took);
    assert!(r.max_rss_kib < 96 << 10, "{} KiB", r.max_rss_kib);
}

/// 200 KB of nested brackets took the parser minutes (quadratic in depth); refused in
/// milliseconds now, with the line and column where the limit was crossed.
#[test]
fn deeply_nested_yaml_is_refused_before_the_parser() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("deep.yaml");
    std::fs::write(&cfg, format!("state_dir: {}\n", nested(100_000))).unwrap();
    let r = run(&[os("check-config"), cfg.as_os_str()], None);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("line 1 column 75: YAML nested 65 levels deep, more than the limit of 64"),
        "{}",
        r.stderr
    );
    assert!(r.took < Duration::from_secs(5), "{:?}", r.took);

    let rules = dir.path().join("deep-rules.yaml");
    std::fs::write(
        &rules,
        format!("{}---\nx: {}\n", data_source(1), nested(100_000)),
    )
    .unwrap();
    let r = run(&[os("check"), rules.as_os_str()], None);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{}:9:67: YAML nested 65 levels deep; expected at most 64 levels of nesting",
            rules.display()
        )),
        "{}",
        r.stderr
    );
    assert!(r.took < Duration::from_secs(5), "{:?}", r.took);
}

#[test]
fn replay_of_a_long_line_counts_it_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rec.jsonl");
    let mut text = b"{\"not\":\"an observation\"}\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', 2 << 20));
    text.extend(b"\n{\"still\":\"not one\"}\n");
    std::fs::write(&f, text).unwrap();
    let rules = shipped_rules();
    let r = run(
        &[
            os("replay"),
            os("--rules"),
            rules.as_os_str(),
            f.as_os_str(),
        ],
        None,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{}:2: not an observation: line 2 is 2097152 bytes, longer than the limit of 1048576 bytes; skipped",
            f.display()
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(":3: not an observation"), "{}", r.stderr);
    assert!(
        r.stderr.contains("(3 unreadable lines skipped)"),
        "{}",
        r.stderr
    );
}

/// A stream without newlines (here 256 MiB of zeros on standard input) used to be buffered whole;
/// now it costs at most the line limit. /dev/zero as a file is refused outright.
#[test]
fn replay_of_an_endless_line_stays_bounded() {
    let rules = shipped_rules();
    let len = 256 << 20;
    let r = run(
        &[os("replay"), os("--rules"), rules.as_os_str(), os("-")],
        Some((0, len)),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "-:1: not an observation: line 1 is {len} bytes, longer than the limit"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.max_rss_kib < 128 << 10,
        "peak RSS {} KiB for a {len}-byte line",
        r.max_rss_kib
    );
    let r = run(
        &[
            os("replay"),
            os("--rules"),
            rules.as_os_str(),
            os("/dev/zero"),
        ],
        None,
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("/dev/zero: not a regular file (a character device)"),
        "{}",
        r.stderr
    );
}

/// An empty or comment-only file is YAML `null`; it used to replace every default (0 secret-file
/// watches, "ok") where `{}` kept them (17). All three mean "the defaults" now.
#[test]
fn empty_and_comment_only_configs_mean_the_same_as_braces() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    let mut configs = Vec::new();
    for (name, text) in [
        ("braces.yaml", "{}\n"),
        ("empty.yaml", ""),
        ("comments.yaml", "# nothing changed yet\n\n   # indented\n"),
        ("document.yaml", "---\n# only a marker\n"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let r = run(&[os("check-config"), p.as_os_str()], None);
        assert_eq!(r.code, Some(0), "{name}: {}", r.stderr);
        outputs.push(r.stdout.replace(name, "FILE"));
        configs.push(Config::load(&p).unwrap());
    }
    assert!(
        outputs[0].contains(&format!(
            "({} watch patterns)",
            Config::bundled().sensors.files.watch.len()
        )),
        "{}",
        outputs[0]
    );
    assert!(outputs.iter().all(|o| *o == outputs[0]), "{outputs:?}");
    assert!(configs.iter().all(|c| *c == configs[0]));
    assert!(!configs[0].sensors.files.watch.is_empty());
}

fn refused(yaml: &str) -> String {
    match Config::parse(yaml, "c.yaml") {
        Ok(_) => panic!("accepted: {yaml}"),
        Err(e) => e.to_string(),
    }
}

const HEC: &str = "alerts:\n  sinks:\n    - name: siem\n      type: webhook\n      body: hec\n      url: http://siem.example:8088/services/collector/event\n      token_file: /etc/nhiwatch/hec-token\n";

#[test]
fn http_webhook_is_refused_unless_the_user_opts_in() {
    let e = refused(HEC);
    for needle in [
        "c.yaml",
        "siem",
        "http://siem.example:8088",
        "HEC token",
        "in clear",
        "allow_insecure_http: true",
    ] {
        assert!(e.contains(needle), "{needle:?} in {e}");
    }
    let opted_in = format!("{HEC}      allow_insecure_http: true\n");
    Config::parse(&opted_in, "c.yaml").unwrap();
    Config::parse(&HEC.replace("http://", "https://"), "c.yaml").unwrap();
}

/// Zero (and absurd) windows, intervals, timeouts and capacities: each family is refused with the
/// key and the range.
#[test]
fn zero_and_absurd_windows_intervals_and_capacities_are_refused() {
    let sink = |extra: &str| {
        format!(
            "alerts:\n  sinks:\n    - name: local\n      type: file\n      path: f.jsonl\n{extra}"
        )
    };
    for (yaml, needle) in [
        (
            "detectors: {dedup_window: 0s}",
            "detectors.dedup_window must be between 1s and 7days, got 0s",
        ),
        (
            "detectors: {ungoverned_window: 0s}",
            "detectors.ungoverned_window",
        ),
        (
            "detectors: {persist_interval: 0s}",
            "detectors.persist_interval",
        ),
        (
            "detectors: {combination: {window: 0s}}",
            "detectors.combination.window",
        ),
        (
            "detectors: {volume: {bucket: 0s}}",
            "detectors.volume.bucket",
        ),
        (
            "detectors: {volume: {history: 0}}",
            "detectors.volume.history",
        ),
        (
            "detectors: {volume: {sensitivity: 0}}",
            "detectors.volume.sensitivity",
        ),
        ("detectors: {max_identities: 0}", "detectors.max_identities"),
        (
            "detectors: {max_open_findings: 0}",
            "detectors.max_open_findings",
        ),
        (
            "alerts: {rate_limit: {window: 0s}}",
            "alerts.rate_limit.window",
        ),
        ("alerts: {sync_interval: 0s}", "alerts.sync_interval"),
        ("alerts: {drain_timeout: 100days}", "alerts.drain_timeout"),
        ("identity: {pending_hold_ms: 0}", "identity.pending_hold_ms"),
        (
            "identity: {kubernetes: {refresh_seconds: 0}}",
            "identity.kubernetes.refresh_seconds",
        ),
        ("sensors: {exited_linger_ms: 0}", "sensors.exited_linger_ms"),
        (
            "api_calls: {max_sessions: 1000000000}",
            "api_calls.max_sessions",
        ),
        (
            "metrics: {identity_series: 100000000}",
            "metrics.identity_series",
        ),
        (
            &sink("      batch_max: 0\n"),
            "alerts.sinks \"local\": batch_max",
        ),
        (
            &sink("      timeout: 0s\n"),
            "alerts.sinks \"local\": timeout",
        ),
        (
            &sink("      keep: 100000000\n"),
            "alerts.sinks \"local\": keep must be between 0 and 1000, got 100000000",
        ),
        (&sink("      max_bytes: 1\n"), "max_bytes"),
    ] {
        let e = refused(yaml);
        assert!(e.contains(needle), "{yaml}: {e}");
        assert!(e.starts_with("c.yaml: "), "{e}");
    }
    // The bundled values and the edges of each range are accepted.
    Config::parse(
        "detectors: {dedup_window: 1s, combination: {learning: 0s}}\nalerts: {drain_timeout: 0s}\n",
        "c.yaml",
    )
    .unwrap();
    Config::parse(&sink("      keep: 1000\n"), "c.yaml").unwrap();
}

/// Replay still streams from a pipe: a named FIFO whose writer comes after the open.
#[test]
fn replay_reads_a_fifo_whose_writer_comes_later() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rec.jsonl");
    mkfifo(&fifo);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            // Opening for writing waits for the replay to open it for reading.
            let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            w.write_all(b"{\"not\":\"an observation\"}\n").unwrap();
        })
    };
    let rules = shipped_rules();
    let r = run(
        &[
            os("replay"),
            os("--rules"),
            rules.as_os_str(),
            fifo.as_os_str(),
        ],
        None,
    );
    // Releases the writer if the replay never opened the FIFO, so the join cannot hang.
    let _release = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
    };
    writer.join().unwrap();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("(1 unreadable lines skipped)"),
        "{}",
        r.stderr
    );
}
