//! End-to-end: the real probes see process lifecycle, watched file opens and TCP flows of real programs.

use std::{
    io::{Read, Write},
    net::TcpListener,
    os::unix::fs::symlink,
    process::Command,
    time::Duration,
};

use nhiwatch_e2e::*;

/// Bounds each wait for something that must happen: generous, so a busy machine is only slower.
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn exec_and_exit_of_a_short_lived_process_with_its_parent() {
    let d = Daemon::start(&config_with(&[], ""));
    let me = std::process::id();
    let child = Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(7));
    let exec = d.wait_for("exec of sh", WAIT, |v| kind_is(v, "exec") && pid_is(v, pid));
    assert_eq!(exec["filename"], "/bin/sh");
    assert_eq!(exec["ppid"].as_u64(), Some(u64::from(me)), "{exec}");
    // the executable with symlinks resolved (/bin/sh → /usr/bin/dash on Debian)
    let real = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(exec["process"]["exe"], real.to_str().unwrap());
    let fork = d.wait_for("fork of sh", WAIT, |v| kind_is(v, "fork") && pid_is(v, pid));
    assert_eq!(fork["ppid"].as_u64(), Some(u64::from(me)));
    let exit = d.wait_for("exit of sh", WAIT, |v| kind_is(v, "exit") && pid_is(v, pid));
    assert_eq!(exit["exit_code"], 7);
    // The daemon's own activity never shows up.
    d.stop();
}

#[test]
fn watched_files_by_absolute_relative_and_symlink_paths_unwatched_not() {
    let tmp = TempDir::new("nhiwatch-e2e-files");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(secrets.join("sa")).unwrap();
    let token = secrets.join("sa/token");
    std::fs::write(&token, "not-a-real-token").unwrap();
    let other = tmp.path().join("public.txt");
    std::fs::write(&other, "public").unwrap();
    let link = tmp.path().join("innocent-link");
    symlink(&token, &link).unwrap();
    let sentinel = secrets.join("sentinel");
    std::fs::write(&sentinel, "x").unwrap();

    let watch = format!("{}/", secrets.display());
    let d = Daemon::start(&config_with(std::slice::from_ref(&watch), ""));
    let token_s = token.display().to_string();

    // absolute path: matched by the path string in the kernel
    let abs = Command::new("cat").arg(&token).output().unwrap();
    assert!(abs.status.success());
    let ev = d.wait_for("absolute open", WAIT, |v| {
        kind_is(v, "file_open") && v["path"] == token_s.as_str()
    });
    assert_eq!(ev["matched_by"], "path");
    assert_eq!(ev["watch"], watch.as_str());
    assert!(ev["result"].as_i64().unwrap() >= 0);
    assert_eq!(ev["process"]["exe"], "/usr/bin/cat");

    // relative path from inside the directory: matched by inode
    let rel = Command::new("cat")
        .arg("sa/token")
        .current_dir(&secrets)
        .spawn()
        .unwrap();
    let rel_pid = rel.id();
    assert!(rel.wait_with_output().unwrap().status.success());
    let ev = d.wait_for("relative open", WAIT, |v| {
        kind_is(v, "file_open") && pid_is(v, rel_pid)
    });
    assert_eq!(ev["matched_by"], "inode");
    assert_eq!(ev["path"], token_s.as_str(), "path rebuilt from dentries");

    // a symlink from outside the watched tree
    let via = Command::new("cat")
        .arg(&link)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let via_pid = via.id();
    assert!(via.wait_with_output().unwrap().status.success());
    let ev = d.wait_for("symlink open", WAIT, |v| {
        kind_is(v, "file_open") && pid_is(v, via_pid)
    });
    assert_eq!(ev["path"], token_s.as_str());

    // a failed open of a watched path is reported with its error
    let missing = secrets.join("missing");
    let _ = Command::new("cat").arg(&missing).output().unwrap();
    let missing_s = missing.display().to_string();
    let ev = d.wait_for("failed open", WAIT, |v| {
        kind_is(v, "file_open") && v["path"] == missing_s.as_str()
    });
    assert_eq!(ev["result"], -2, "ENOENT");

    // unwatched: opened before a watched sentinel, so once the sentinel is seen it would have been too
    let unwatched = Command::new("cat")
        .arg(&other)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let unwatched_pid = unwatched.id();
    unwatched.wait_with_output().unwrap();
    let _ = Command::new("cat").arg(&sentinel).output().unwrap();
    let sentinel_s = sentinel.display().to_string();
    d.wait_for("sentinel", WAIT, |v| {
        kind_is(v, "file_open") && v["path"] == sentinel_s.as_str()
    });
    let leaked: Vec<Value> = d
        .events()
        .into_iter()
        .filter(|v| kind_is(v, "file_open") && pid_is(v, unwatched_pid))
        .collect();
    assert!(
        leaked.is_empty(),
        "unwatched open reached userspace: {leaked:?}"
    );
    d.stop();
}

/// The exit probe reads the opened file through the task's inline fd array when it can (fds
/// below 64, table never grown) and falls back to reading the fd table otherwise: a relative
/// open of a watched file at fd 80 must still be matched by inode.
#[test]
fn watched_file_opened_relatively_at_a_high_fd() {
    let tmp = TempDir::new("nhiwatch-e2e-highfd");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let token = secrets.join("token");
    std::fs::write(&token, "not-a-real-token").unwrap();
    let watch = format!("{}/", secrets.display());
    let d = Daemon::start(&config_with(std::slice::from_ref(&watch), ""));
    // fds 3..=79 taken, so cat's open of the token gets fd 80 in a grown table
    let child = Command::new("/bin/bash")
        .args([
            "-c",
            "for i in $(seq 3 79); do eval \"exec $i</dev/null\"; done; exec cat token",
        ])
        .current_dir(&secrets)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let token_s = token.display().to_string();
    let ev = d.wait_for("relative open at a high fd", WAIT, |v| {
        kind_is(v, "file_open") && pid_is(v, pid)
    });
    assert_eq!(ev["matched_by"], "inode");
    assert_eq!(ev["path"], token_s.as_str());
    assert_eq!(ev["result"], 80, "{ev}");
    d.stop();
}

/// The same relative open by a process whose fd table was never grown: the exit probe's plain-load
/// walk over the inline fd array must find the watched directory too. (Processes started from the
/// test inherit whatever high fds its parent left open, so the shell closes them and forks cat
/// from a small table, which `FDSize` confirms.)
#[test]
fn watched_file_opened_relatively_from_a_small_fd_table() {
    let tmp = TempDir::new("nhiwatch-e2e-smallfd");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(secrets.join("sa")).unwrap();
    let token = secrets.join("sa/token");
    std::fs::write(&token, "not-a-real-token").unwrap();
    let watch = format!("{}/", secrets.display());
    let d = Daemon::start(&config_with(std::slice::from_ref(&watch), ""));
    let script = "for f in /proc/$$/fd/*; do n=${f##*/}; [ \"$n\" -gt 2 ] && eval \"exec $n>&-\"; \
                  done 2>/dev/null; \
                  grep FDSize /proc/self/status; cat sa/token >/dev/null & echo \"cat $!\"; wait";
    let out = Command::new("/bin/bash")
        .args(["-c", script])
        .current_dir(&secrets)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FDSize:\t64"), "{text}");
    let pid: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("cat "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text}"));
    let token_s = token.display().to_string();
    let ev = d.wait_for("relative open from a small fd table", WAIT, |v| {
        kind_is(v, "file_open") && pid_is(v, pid)
    });
    assert_eq!(ev["matched_by"], "inode");
    assert_eq!(ev["path"], token_s.as_str());
    d.stop();
}

fn tcp_roundtrip(d: &Daemon, bind: &str, host: &str) {
    let listener = TcpListener::bind(bind).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1234];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&[7u8; 567]).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let script = format!(
        "import socket\ns=socket.create_connection(({host:?},{port}))\ns.sendall(b'a'*1234)\n\
         got=b''\nwhile len(got)<567:\n  got+=s.recv(4096)\ns.close()\n"
    );
    let client = Command::new("python3")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let pid = client.id();
    assert!(client.wait_with_output().unwrap().status.success());
    server.join().unwrap();
    let conn = d.wait_for("tcp_connect", WAIT, |v| {
        kind_is(v, "tcp_connect") && pid_is(v, pid)
    });
    let dst = conn["dst"].as_str().unwrap().to_owned();
    assert!(dst.ends_with(&format!(":{port}")), "{conn}");
    assert!(dst.contains(host), "{conn}");
    let src_port: u16 = conn["src"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(src_port, 0, "{conn}");
    let close = d.wait_for("tcp_close", WAIT, |v| {
        kind_is(v, "tcp_close") && pid_is(v, pid)
    });
    assert_eq!(close["flow"], conn["flow"]);
    assert_eq!(close["src"], conn["src"], "4-tuple kept at close");
    assert_eq!(close["bytes_sent"], 1234, "{close}");
    assert_eq!(close["bytes_received"], 567, "{close}");
    assert_eq!(close["process"]["comm"], "python3");
}

#[test]
fn tcp_connect_and_close_with_tuple_and_bytes_ipv4_and_ipv6() {
    let d = Daemon::start(&config_with(&[], ""));
    tcp_roundtrip(&d, "127.0.0.1:0", "127.0.0.1");
    if TcpListener::bind("[::1]:0").is_ok() {
        tcp_roundtrip(&d, "[::1]:0", "::1");
    }
    d.stop();
}

#[test]
fn metrics_report_probe_status_and_counts() {
    let d = Daemon::start(&config_with(&[], ""));
    let _ = Command::new("/bin/true").output().unwrap();
    wait_until("an exec counted in the metrics", WAIT, || {
        d.metric_sum("nhiwatch_events_total", &["kind=\"exec\""]) >= 1.0
    });
    let m = d.metrics();
    for probe in [
        "process/handle_exec",
        "files/enter_openat",
        "tcp/handle_sock_state",
        "core/canary",
    ] {
        let line = format!("nhiwatch_probe_attached{{probe=\"{probe}\",target=\"kernel\"}} 1");
        assert!(m.contains(&line), "missing {line} in\n{m}");
    }
    assert!(
        m.contains("nhiwatch_probe_attached{probe=\"tls/SSL_write\""),
        "{m}"
    );
    assert!(d.metric_sum("nhiwatch_events_total", &["kind=\"exec\""]) >= 1.0);
    assert!(m.contains("nhiwatch_kernel_events_lost_total"), "{m}");
    assert!(matches!(http_get(d.metrics_port, "/healthz"), Ok((200, _))));
    d.stop();
}

/// An undersized ring buffer under an open() storm: every open is either
/// received or counted as lost, exactly.
#[test]
fn losses_are_counted_exactly_under_an_open_storm() {
    let tmp = TempDir::new("nhiwatch-e2e-storm");
    let dir = tmp.path().join("watched");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("f");
    std::fs::write(&file, "x").unwrap();
    let cfg = config_with(
        &[format!("{}/", dir.display())],
        "  ring_buffer_bytes: 8192\n  wakeup_bytes: 4096\n",
    );
    let d = Daemon::start(&cfg);
    const N: usize = 20000;
    let script = format!(
        "import os\np={:?}\nfor _ in range({}):\n  os.close(os.open(p, os.O_RDONLY))\n",
        file.display().to_string(),
        N / 2
    );
    // The first half while the daemon is frozen, so the ring overflows however fast the daemon
    // reads compared with python on this machine; the second half while it reads.
    let signal = |sig| {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(d.pid() as i32, sig) }, 0);
    };
    signal(libc::SIGSTOP);
    let frozen = run_ok(Command::new("python3").args(["-c", &script]));
    signal(libc::SIGCONT);
    assert!(frozen.status.success());
    let out = run_ok(Command::new("python3").args(["-c", &script]));
    assert!(out.status.success());
    let path = file.display().to_string();
    let mut last = (0usize, 0f64);
    // Until every open is accounted for and the counts hold still (bounded: a busy machine
    // drains the ring slowly, a broken count never adds up).
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let received = d
            .events()
            .iter()
            .filter(|v| kind_is(v, "file_open") && v["path"] == path.as_str())
            .count();
        let lost = d.metric_sum("nhiwatch_kernel_events_lost_total", &["kind=\"file_open\""]);
        if (received, lost) == last && received + lost as usize == N {
            break;
        }
        last = (received, lost);
    }
    let (received, lost) = last;
    assert!(
        lost > 0.0,
        "the undersized ring should have overflowed (received {received})"
    );
    assert!(received > 0, "some events get through");
    assert_eq!(
        received + lost as usize,
        N,
        "received {received} + lost {lost} != generated {N}"
    );
    d.stop();
}
