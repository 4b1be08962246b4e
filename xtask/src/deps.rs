//! System packages: checks which are installed and installs the missing ones with apt-get.

use std::process::Command;

use anyhow::{bail, Result};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// To build and run the monitor.
    Build,
    /// Plus the tests' and benchmarks' real clients, servers and peers.
    All,
}

/// Debian package → a command or file that proves it is installed.
const BUILD: &[(&str, &str)] = &[
    ("clang-19", "/usr/bin/clang-19"),
    ("llvm-19", "/usr/bin/llvm-strip-19"),
    ("libclang1-19", "/usr/lib/llvm-19/lib/libclang-19.so.1"),
    ("libbpf-dev", "/usr/include/bpf/bpf_helpers.h"),
    ("bpftool", "/usr/sbin/bpftool"),
];
const TEST: &[(&str, &str)] = &[
    ("curl", "/usr/bin/curl"),
    ("openssl", "/usr/bin/openssl"),
    ("nginx-light", "/usr/sbin/nginx"),
    ("gnutls-bin", "/usr/bin/gnutls-cli"),
    ("python3", "/usr/bin/python3"),
    ("nodejs", "node"),
    ("iproute2", "/usr/sbin/ip"),
    ("libbpf-tools", "/usr/sbin/opensnoop"),
    ("bpftrace", "/usr/bin/bpftrace"),
    ("procps", "/usr/bin/pkill"),
    // SIEM receivers and the metrics scraper the alert and dashboard tests run for real.
    ("rsyslog", "/usr/sbin/rsyslogd"),
    (
        "rsyslog-gnutls",
        "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
    ),
    ("prometheus", "/usr/bin/prometheus"),
    // Deployment checks: the unit file's verifier, and a venv for kubernetes-validate (PyPI).
    ("systemd", "/usr/bin/systemd-analyze"),
    ("python3-venv", "/usr/share/doc/python3-venv"),
    // Loads both cores while the suite runs, to show no test's verdict depends on speed.
    ("stress-ng", "/usr/bin/stress-ng"),
    // Cleartext HTTP on sockets (issue I): a database protocol that must never become an
    // api_call (redis-server and redis-cli, tests/tests/sockets.rs).
    ("redis-server", "/usr/bin/redis-server"),
    ("redis-tools", "/usr/bin/redis-cli"),
];

fn present(proof: &str) -> bool {
    if proof.starts_with('/') {
        std::path::Path::new(proof).exists()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {proof}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

pub fn ensure(set: Set) -> Result<()> {
    let mut wanted: Vec<&(&str, &str)> = BUILD.iter().collect();
    if set == Set::All {
        wanted.extend(TEST.iter());
    }
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(_, proof)| !present(proof))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let sudo = if crate::is_root() {
        vec![]
    } else {
        vec!["sudo"]
    };
    let apt = |args: &[&str]| -> Result<()> {
        let mut argv: Vec<&str> = sudo.clone();
        argv.push("apt-get");
        argv.extend_from_slice(args);
        let status = Command::new(argv[0])
            .args(&argv[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| anyhow::anyhow!("running apt-get: {e}"))?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter());
    apt(&args)?;
    let still: Vec<&str> = wanted
        .iter()
        .filter(|(_, proof)| !present(proof))
        .map(|(p, _)| *p)
        .collect();
    if !still.is_empty() {
        bail!("installed, yet still missing: {}", still.join(" "));
    }
    Ok(())
}
