//! `nhiwatch check` on a rules directory with symlink loops: takes the shipped rules copied beside `dot -> .` and `self -> ../loopdir`, runs the real binary and passes only if it finishes within 30 s with the same result as on the shipped rules.

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// The longest a `check` may take; the old recursive walk of these links never finished.
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `nhiwatch check DIR`: (exit status, stdout, stderr), killing it and failing past the deadline.
fn check(dir: &Path) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nhiwatch"))
        .arg("check")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run nhiwatch");
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
        Ok((o, e)) => {
            let status = child.wait().expect("cannot wait for nhiwatch");
            (status.code(), o, e)
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`nhiwatch check {}` still running after {DEADLINE:?}: killed",
                dir.display()
            );
        }
    }
}

#[test]
fn check_of_a_rules_directory_with_link_loops_finishes_with_the_same_result() {
    use std::os::unix::fs::symlink;
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("loopdir");
    std::fs::create_dir(&dir).unwrap();
    for f in ["contracts.yaml", "data-sources.yaml"] {
        std::fs::copy(shipped.join(f), dir.join(f)).unwrap();
    }
    symlink(".", dir.join("dot")).unwrap();
    symlink("../loopdir", dir.join("self")).unwrap();

    let want = check(&shipped);
    let got = check(&dir);
    assert_eq!(want.0, Some(0), "check of the shipped rules: {want:?}");
    assert!(want.1.starts_with("ok: "), "{want:?}");
    assert_eq!(got.0, want.0, "stderr: {}", got.2);
    assert_eq!(got.1, want.1);
}
