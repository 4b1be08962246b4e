//! End-to-end: an object whose CO-RE relocations were dropped is refused, not run with wrong offsets.

use std::{process::Command, time::Duration};

use nhiwatch_e2e::*;

#[test]
fn object_without_btf_ext_is_refused_by_the_core_canary() {
    let tmp = TempDir::new("nhiwatch-e2e-core");
    let good = tmp.path().join("good.o");
    let bad = tmp.path().join("bad.o");
    std::fs::write(&good, nhiwatch::probes::object::bytes()).unwrap();
    let objcopy = ["llvm-objcopy-19", "llvm-objcopy"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("llvm-objcopy (llvm-19) installed");
    run_ok(
        Command::new(objcopy)
            .args(["--remove-section", ".BTF.ext"])
            .arg(&good)
            .arg(&bad),
    );
    let out = Command::new(nhiwatch_bin())
        .args([
            "run",
            "--metrics-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env("NHIWATCH_BPF_OBJECT", &bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a relocation-less object must not run:\n{stderr}"
    );
    assert!(
        stderr.contains("CO-RE relocations were not applied"),
        "{stderr}"
    );

    // the same path with the intact object starts fine (the test can fail both ways): it gets
    // ready, however long loading takes on this machine, instead of exiting
    let port = free_port();
    let mut child = Command::new(nhiwatch_bin())
        .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("NHIWATCH_BPF_OBJECT", &good)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the intact object's daemon to get ready",
        Duration::from_secs(60),
        || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("intact object should keep running; it exited: {status}");
            }
            matches!(http_get(port, "/readyz"), Ok((200, _)))
        },
    );
    let _ = child.kill();
    let _ = child.wait();
}
