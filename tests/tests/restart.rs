//! Restarts keep what the detectors learned: an open finding's window survives a stop, so the next run neither raises it again nor summarises it early, and closes it when it is due.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use nhiwatch_e2e::*;

/// Long enough for a stop and a start on a busy machine, short enough to see the window close.
const WINDOW_S: u64 = 45;

/// The findings of one run about the identity running `exe`, as (rule, phase, dedup key, count).
fn findings_of(events: &[Value], exe: &Path) -> Vec<(String, String, String, u64)> {
    let exe = exe.display().to_string();
    events
        .iter()
        .filter(|v| kind_is(v, "finding") && v["identity"]["exe"] == exe.as_str())
        .map(|v| {
            (
                v["rule"]["id"].as_str().unwrap_or_default().to_owned(),
                v["phase"].as_str().unwrap_or_default().to_owned(),
                v["dedup_key"].as_str().unwrap_or_default().to_owned(),
                v["count"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Reads `file` with `exe` and waits until the daemon printed the open (it is judged next, on
/// the same thread).
fn read_seen(d: &Daemon, exe: &Path, file: &Path) {
    let pid = spawn_pid(Command::new(exe).arg(file));
    let path = file.display().to_string();
    d.wait_for("the secret read", Duration::from_secs(60), |v| {
        kind_is(v, "file_open") && pid_is(v, pid) && v["path"] == path.as_str()
    });
}

#[test]
fn a_restart_neither_reopens_findings_nor_summarises_them_early() {
    let tmp = TempDir::new("nhiwatch-e2e-restart");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let secret = secrets.join("db-password");
    std::fs::write(&secret, "restart-secret-5e1f\n").unwrap();
    // A private copy of cat: an identity (uid + executable) no other process on the machine
    // shares. It reads a watched secret, so it is reported however NHI-001 is scoped.
    let exe = tmp.path().join(unique("reader"));
    std::fs::copy("/bin/cat", &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = tmp.path().join("state");
    let cfg = format!(
        "{}rules: []\ndetectors:\n  dedup_window: {WINDOW_S}s\n  ungoverned_window: {WINDOW_S}s\n",
        config_with(&[format!("{}/", secrets.display())], ""),
    );

    // Run 1: the identity reads the secret twice: NHI-001 (ungoverned) and NHI-020 (secret
    // read) open, and each counts a repeat.
    let d = Daemon::start_with_state(&cfg, Some(&state));
    let opened_at = Instant::now();
    read_seen(&d, &exe, &secret);
    wait_until(
        "NHI-001 and NHI-020 opened",
        Duration::from_secs(60),
        || {
            let f = findings_of(&d.events(), &exe);
            ["NHI-001", "NHI-020"].iter().all(|r| {
                f.iter()
                    .any(|(rule, phase, ..)| rule == r && phase == "opened")
            })
        },
    );
    read_seen(&d, &exe, &secret);
    let (out1, _) = d.stop();
    let run1: Vec<Value> = out1
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let run1 = findings_of(&run1, &exe);
    let opened: Vec<&(String, String, String, u64)> = run1
        .iter()
        .filter(|f| f.1 == "opened" && (f.0 == "NHI-001" || f.0 == "NHI-020"))
        .collect();
    assert_eq!(opened.len(), 2, "one NHI-001 and one NHI-020: {run1:#?}");
    // Old behaviour: the stop closed every window, and the repeats left summaries at once.
    assert!(
        run1.iter().all(|f| f.1 != "summary"),
        "a stop must not close windows early: {run1:#?}"
    );

    // Run 2, same state directory, the identity still active: nothing is raised again.
    let d = Daemon::start_with_state(&cfg, Some(&state));
    read_seen(&d, &exe, &secret);
    let run2 = findings_of(&d.events(), &exe);
    assert!(
        run2.iter().all(|f| f.1 != "opened"),
        "the restart re-opened findings whose window was still open: {run2:#?}"
    );
    // The windows close when they are due, in this run, with every occurrence of both runs.
    let due = Duration::from_secs(WINDOW_S).saturating_sub(opened_at.elapsed());
    wait_until(
        "both windows to close with their summaries",
        due + Duration::from_secs(60),
        || {
            let f = findings_of(&d.events(), &exe);
            ["NHI-001", "NHI-020"].iter().all(|r| {
                f.iter()
                    .any(|(rule, phase, ..)| rule == r && phase == "summary")
            })
        },
    );
    let run2 = findings_of(&d.events(), &exe);
    for (rule, _, key, _) in &opened {
        let s = run2
            .iter()
            .find(|f| &f.0 == rule && f.1 == "summary")
            .unwrap_or_else(|| panic!("no {rule} summary: {run2:#?}"));
        assert_eq!(&s.2, key, "the summary carries the finding's dedup key");
        assert!(
            s.3 >= 3,
            "two reads before the restart and one after: {s:?}"
        );
    }
    assert!(run2.iter().all(|f| f.1 != "opened"), "{run2:#?}");
    d.stop();
}
