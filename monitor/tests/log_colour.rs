//! Log lines of the real binary with stderr to a pipe: takes `nhiwatch run` stopped before any probe loads, gives whether its log lines carry ANSI colour codes (they must not).

use std::{net::TcpListener, process::Command};

/// `run` logs a warning for a rules path that does not exist, then stops at a metrics port
/// that is taken: a line from the daemon's own logger, with no probe loaded and no root needed.
fn stderr_of_run(no_color: Option<&str>) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("nhiwatch-log-colour-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!("rules:\n  - {}\n", dir.join("missing-rules").display()),
    )
    .unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nhiwatch"));
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--metrics-addr")
        .arg(busy.local_addr().unwrap().to_string())
        .env_remove("NO_COLOR")
        .env_remove("NHIWATCH_LOG");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().unwrap();
    drop(busy);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "run must stop at the taken port");
    out.stderr
}

#[test]
fn no_colour_codes_when_stderr_is_not_a_terminal() {
    for no_color in [None, Some(""), Some("1")] {
        let err = stderr_of_run(no_color);
        let text = String::from_utf8_lossy(&err);
        assert!(
            text.contains("rules path does not exist"),
            "the warning must be logged: {text}"
        );
        assert!(
            !err.contains(&0x1b),
            "ANSI escape in stderr (NO_COLOR={no_color:?}): {text:?}"
        );
    }
}

/// A rules path with line breaks in it (a ConfigMap's key names it) is logged inside its own line:
/// no line of stderr may start with what the path carried after its break.
#[test]
fn a_value_with_line_breaks_stays_inside_its_log_line() {
    let dir = std::env::temp_dir().join(format!("nhiwatch-log-lines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "rules:\n  - \"{}/missing\\nERROR forged line\\r\\nWARN another\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nhiwatch"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--metrics-addr")
        .arg(busy.local_addr().unwrap().to_string())
        .env("NO_COLOR", "1")
        .env_remove("NHIWATCH_LOG")
        .output()
        .unwrap();
    drop(busy);
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("rules path does not exist"), "{text}");
    assert!(text.contains("missing\\nERROR forged line"), "{text}");
    for line in text.lines() {
        assert!(
            !line.starts_with("ERROR forged") && !line.starts_with("WARN another"),
            "a value started a log line of its own:\n{text}"
        );
    }
}

/// The last line of a failed command names the path it could not read: a path with a line
/// break in it stays on that one line.
#[test]
fn the_error_a_command_exits_with_is_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_nhiwatch"))
        .arg("check-config")
        .arg("/nonexistent-nhiwatch\nnhiwatch: forged line")
        .env_remove("NHIWATCH_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent-nhiwatch\\nnhiwatch: forged line"),
        "{err}"
    );
}
