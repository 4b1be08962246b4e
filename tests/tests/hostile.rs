//! Hostile local input through a live daemon: executables whose names try to forge or break the metrics scrape.

use std::{
    ffi::OsStr,
    io::Write,
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use nhiwatch_e2e::*;

const WAIT: Duration = Duration::from_secs(60);

/// Copies curl under `name` inside `dir` and makes one HTTPS call with it.
fn call_as(dir: &std::path::Path, name: &[u8], nginx: &Nginx) -> PathBuf {
    let exe = dir.join(OsStr::from_bytes(name));
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy("/usr/bin/curl", &exe).unwrap();
    run_ok(
        Command::new(&exe)
            .args(["-sS", "--fail", "-o", "/dev/null", "--cacert"])
            .arg(&nginx.cert)
            .args([
                "--resolve",
                &format!("fhir.nhiwatch.test:{}:127.0.0.1", nginx.port),
                &format!("https://fhir.nhiwatch.test:{}/hello", nginx.port),
            ]),
    );
    exe
}

/// Prometheus's own parser on the scrape: its lint remarks (help texts of OpenMetrics counters)
/// are fine, a parsing error is not.
fn promtool_parses(scrape: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        // Debian's promtool (2.42) reads the classic text format, which has no `info` type;
        // labels, escapes and lines, what this checks, are the same in both formats.
        .write_all(scrape.replace(" info\n", " gauge\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if said.contains("error while linting") || said.contains("parsing error") {
        Err(said)
    } else {
        Ok(())
    }
}

#[test]
fn hostile_executable_names_cannot_forge_or_break_the_scrape() {
    let nginx = Nginx::start("location /hello { return 200 \"ok\"; }");
    let d = Daemon::start(&config_with(&[], ""));
    let dir = TempDir::new("nhiwatch-e2e-hostile");
    let long = format!("{}/curl", vec!["d".repeat(200); 18].join("/"));
    let names: [&[u8]; 5] = [
        b"x\"} 1\nnhiwatch_forged{a=\"b",
        b"back\\slash\\\"quote",
        b"not-utf8-\xff\xfe",
        b"ctl-\x01\x1b[31m-\t",
        long.as_bytes(),
    ];
    for name in names {
        call_as(dir.path(), name, &nginx);
    }
    // Every call parsed (each is counted under its identity in the same step).
    wait_until("the hostile executables' API calls", WAIT, || {
        d.metric_sum("nhiwatch_api_calls_total", &[]) >= names.len() as f64
    });
    let scrape = d.metrics();
    promtool_parses(&scrape)
        .unwrap_or_else(|e| panic!("promtool refused the scrape: {e}\n{scrape}"));
    assert!(
        !scrape.lines().any(|l| l.starts_with("nhiwatch_forged")),
        "a process added a line to the scrape:\n{scrape}"
    );
    assert!(
        !scrape.contains('\u{1b}'),
        "a control character reached the scrape"
    );
    for line in scrape.lines() {
        assert!(line.len() < 4096, "an unbounded line: {line}");
    }
    // The values survive, escaped as the exposition format says.
    for escaped in [r#"forged{a=\"b"#, r#"back\\slash\\\"quote"#] {
        assert!(scrape.contains(escaped), "{escaped} missing:\n{scrape}");
    }
    d.stop();
}
