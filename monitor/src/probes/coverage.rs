//! TLS coverage: running processes with a TCP socket (from /proc) → the TLS stack each uses and whether nhiwatch sees its plaintext, or why it is blind.
//!
//! A process that opens TCP connections and is blind raises nothing by itself; it is counted
//! and listed so an operator knows where API-call findings cannot come from.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::Path,
};

use serde::Serialize;

use super::{
    golang,
    tls_libs::{executable_mappings, exported_tls_symbols, TlsFamily},
};

/// The TLS stack of a process: a bounded set, so it can be a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stack {
    /// libssl from the system library directories.
    OpensslSystem,
    /// A libssl copy elsewhere (an application's or a container's own).
    OpensslPrivate,
    /// OpenSSL linked into the executable, its SSL_write exported (node).
    OpensslStatic,
    Gnutls,
    Go,
    /// No TLS stack nhiwatch can read (see the reason).
    Blind,
}

impl Stack {
    pub const ALL: [Stack; 6] = [
        Stack::OpensslSystem,
        Stack::OpensslPrivate,
        Stack::OpensslStatic,
        Stack::Gnutls,
        Stack::Go,
        Stack::Blind,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stack::OpensslSystem => "openssl_system",
            Stack::OpensslPrivate => "openssl_private",
            Stack::OpensslStatic => "openssl_static",
            Stack::Gnutls => "gnutls",
            Stack::Go => "go",
            Stack::Blind => "blind",
        }
    }
}

/// One process with at least one TCP socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessCoverage {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub stack: Stack,
    /// Whether nhiwatch sees its TLS plaintext.
    pub covered: bool,
    /// The Go version, the library file, or why it is blind.
    pub detail: String,
}

/// What an executable file is, cached by its identity (re-reading ELF files every pass would
/// cost more than the rest of the scan).
#[derive(Default)]
pub struct CoverageScanner {
    exes: HashMap<(u64, u64), (Stack, bool, String)>,
}

/// Library directories the distribution's packages install libssl into.
const SYSTEM_DIRS: [&str; 4] = ["/usr/lib/", "/lib/", "/usr/lib64/", "/lib64/"];

impl CoverageScanner {
    /// Every process under `proc_root` with a TCP socket, by pid.
    pub fn scan(&mut self, proc_root: &Path) -> Vec<ProcessCoverage> {
        let mut out = Vec::new();
        let Ok(dir) = fs::read_dir(proc_root) else {
            return out;
        };
        let mut pids: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        // TCP socket inodes per network namespace, read once per namespace.
        let mut tcp_by_netns: HashMap<u64, HashSet<u64>> = HashMap::new();
        for pid in pids {
            let base = proc_root.join(pid.to_string());
            if pid == std::process::id() {
                continue;
            }
            let Some(socks) = socket_inodes(&base) else {
                continue;
            };
            if socks.is_empty() {
                continue;
            }
            let netns = fs::metadata(base.join("ns/net")).map_or(0, |m| m.ino());
            let tcp = tcp_by_netns
                .entry(netns)
                .or_insert_with(|| tcp_inodes(&base));
            if !socks.iter().any(|s| tcp.contains(s)) {
                continue;
            }
            if let Some(p) = self.classify(&base, pid) {
                out.push(p);
            }
        }
        out
    }

    fn classify(&mut self, base: &Path, pid: u32) -> Option<ProcessCoverage> {
        let comm = fs::read_to_string(base.join("comm"))
            .unwrap_or_default()
            .trim_end()
            .to_owned();
        let exe_link = fs::read_link(base.join("exe")).ok()?;
        let exe = exe_link.display().to_string();
        let maps = fs::read_to_string(base.join("maps")).unwrap_or_default();
        // A TLS library mapped: the library sensors probe it.
        for file in executable_mappings(&maps) {
            let name = file.rsplit('/').next().unwrap_or(file);
            let (stack, what) = if name.starts_with("libssl.so") {
                if SYSTEM_DIRS.iter().any(|d| file.starts_with(d)) {
                    (Stack::OpensslSystem, file)
                } else {
                    (Stack::OpensslPrivate, file)
                }
            } else if name.starts_with("libgnutls.so") {
                (Stack::Gnutls, file)
            } else {
                continue;
            };
            return Some(ProcessCoverage {
                pid,
                comm,
                exe,
                stack,
                covered: true,
                detail: what.to_owned(),
            });
        }
        // Else the executable itself: OpenSSL exported, Go, or blind. Read through the
        // process's own root (containers), once per file.
        let path = base.join("exe");
        let m = fs::metadata(&path).ok()?;
        let key = (m.dev(), m.ino());
        let (stack, covered, detail) = self
            .exes
            .entry(key)
            .or_insert_with(|| classify_exe(&path))
            .clone();
        Some(ProcessCoverage {
            pid,
            comm,
            exe,
            stack,
            covered,
            detail,
        })
    }
}

fn classify_exe(path: &Path) -> (Stack, bool, String) {
    if let Some((TlsFamily::OpenSsl, _)) = exported_tls_symbols(path) {
        return (Stack::OpensslStatic, true, "exports SSL_write".into());
    }
    match golang::inspect(path) {
        Ok(go) => (Stack::Go, true, go.version),
        Err(golang::NotCovered::NotGo) => (
            Stack::Blind,
            false,
            "no TLS library nhiwatch reads (plaintext, or TLS linked in without symbols: \
             BoringSSL, rustls, Java JSSE, ...)"
                .into(),
        ),
        Err(why) => (Stack::Blind, false, format!("Go program: {why}")),
    }
}

/// Socket inodes among a process's descriptors; None if they cannot be read.
fn socket_inodes(base: &Path) -> Option<Vec<u64>> {
    let dir = fs::read_dir(base.join("fd")).ok()?;
    Some(
        dir.flatten()
            .filter_map(|e| {
                let l = fs::read_link(e.path()).ok()?;
                let s = l.to_str()?;
                s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
            })
            .collect(),
    )
}

/// Inodes of the TCP sockets in a process's network namespace (/proc/PID/net/tcp, tcp6).
fn tcp_inodes(base: &Path) -> HashSet<u64> {
    let mut out = HashSet::new();
    for f in ["net/tcp", "net/tcp6"] {
        let Ok(text) = fs::read_to_string(base.join(f)) else {
            continue;
        };
        out.extend(parse_tcp_inodes(&text));
    }
    out
}

/// The inode column of a /proc/net/tcp table.
pub fn parse_tcp_inodes(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(9)?.parse().ok())
        .filter(|&i| i != 0)
}

/// Processes per (stack, covered), every combination present (zeros included).
pub fn counts(procs: &[ProcessCoverage]) -> Vec<(Stack, bool, usize)> {
    let mut out = Vec::new();
    for s in Stack::ALL {
        for covered in [true, false] {
            let n = procs
                .iter()
                .filter(|p| p.stack == s && p.covered == covered)
                .count();
            out.push((s, covered, n));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_table_inodes() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:0CEB 00000000:0000 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_tcp_inodes(t).collect::<Vec<_>>(), [23456]);
    }

    #[test]
    fn counts_cover_every_label_pair() {
        let c = counts(&[]);
        assert_eq!(c.len(), Stack::ALL.len() * 2);
        assert!(c.iter().all(|x| x.2 == 0));
    }
}
