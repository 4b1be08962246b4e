//! TLS library discovery: library dirs and /proc/PID/maps → files exporting SSL_write/gnutls_record_send, and Go executables linking crypto/tls → uprobe targets (and the Go binaries that cannot be probed, with why).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSymbol};

use super::{
    golang::{self, GoBinary, NotCovered},
    sensors::{self, Hook, Sensor},
};

/// A TLS library family; the functions probed in it come from its sensor's program table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFamily {
    OpenSsl,
    GnuTls,
    /// crypto/tls compiled into a Go executable.
    Go,
}

impl TlsFamily {
    pub fn name(self) -> &'static str {
        match self {
            TlsFamily::OpenSsl => "openssl",
            TlsFamily::GnuTls => "gnutls",
            TlsFamily::Go => "go",
        }
    }

    pub fn sensor(self) -> &'static Sensor {
        match self {
            TlsFamily::OpenSsl => &sensors::tls_openssl::SENSOR,
            TlsFamily::GnuTls => &sensors::tls_gnutls::SENSOR,
            TlsFamily::Go => &sensors::tls_go::SENSOR,
        }
    }

    /// (symbol, entry program, return program) of each plaintext function, in table order.
    pub fn calls(self) -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
        self.sensor().programs.iter().filter_map(|p| match p.hook {
            Hook::TlsCall { symbol, ret } => Some((symbol, p.name, ret)),
            _ => None,
        })
    }

    /// The function that sets the SNI name, and the program that reports it.
    pub fn server_name(self) -> Option<(&'static str, &'static str)> {
        self.sensor().programs.iter().find_map(|p| match p.hook {
            Hook::TlsServerName { symbol } => Some((symbol, p.name)),
            _ => None,
        })
    }
}

/// A file to put uprobes on, and which of the probed symbols it defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTarget {
    /// Path usable from the daemon's mount namespace (may go through /proc/PID/root).
    pub path: PathBuf,
    pub family: TlsFamily,
    /// Data symbols first, then the SNI setter when defined (none for Go).
    pub symbols: Vec<&'static str>,
    /// For [`TlsFamily::Go`]: the functions' file offsets and the struct layout.
    pub go: Option<GoBinary>,
}

/// Which probed symbols an ELF file defines (exported, not merely imported).
/// A file counts as a TLS library only if it defines a data function; its SNI
/// setter is then listed too.
pub fn exported_tls_symbols(path: &Path) -> Option<(TlsFamily, Vec<&'static str>)> {
    let file = fs::File::open(path).ok()?;
    // SAFETY: read-only private mapping; a concurrent truncation could SIGBUS, which
    // is the same risk every ELF-inspecting tool takes with mapped binaries.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let obj = object::File::parse(&*map).ok()?;
    let defined: Vec<String> = obj
        .dynamic_symbols()
        .filter(|s| s.is_definition())
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect();
    for family in [TlsFamily::OpenSsl, TlsFamily::GnuTls] {
        let mut syms: Vec<&'static str> = family
            .calls()
            .map(|c| c.0)
            .filter(|s| defined.iter().any(|d| d == s))
            .collect();
        if !syms.is_empty() {
            if let Some((sni, _)) = family.server_name() {
                if defined.iter().any(|d| d == sni) {
                    syms.push(sni);
                }
            }
            return Some((family, syms));
        }
    }
    None
}

/// Whether a file name looks like a TLS library worth checking during the dir scan.
fn looks_like_tls_lib(name: &str) -> bool {
    (name.starts_with("libssl.so") || name.starts_with("libgnutls.so")) && !name.ends_with(".a")
}

/// Remembers which files (by device and inode) were examined so each distinct
/// file is parsed and attached once, whatever path or container it shows up under.
#[derive(Default)]
pub struct TlsDiscovery {
    seen: HashMap<(u64, u64), Option<TlsFamily>>,
    /// Go programs found that get no probes, by file identity: path, version if read, why.
    go_blind: HashMap<(u64, u64), (PathBuf, NotCovered)>,
    /// Go programs probed, by file identity: their Go version.
    go_seen: HashMap<(u64, u64), String>,
}

/// What discovery knows of one Go executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoCoverage {
    Covered { version: String },
    Blind(NotCovered),
}

impl TlsDiscovery {
    /// Examines one file; returns a target the first time a TLS-exporting file is seen.
    pub fn consider(&mut self, path: &Path) -> Option<TlsTarget> {
        let m = fs::metadata(path).ok()?;
        if !m.is_file() {
            return None;
        }
        let key = (m.dev(), m.ino());
        if self.seen.contains_key(&key) {
            return None;
        }
        let found = exported_tls_symbols(path);
        if found.is_none() {
            // Not a library exporting TLS functions: a Go program carrying crypto/tls?
            return match golang::inspect(path) {
                Ok(go) => {
                    self.seen.insert(key, Some(TlsFamily::Go));
                    self.go_seen.insert(key, go.version.clone());
                    Some(TlsTarget {
                        path: path.to_owned(),
                        family: TlsFamily::Go,
                        symbols: Vec::new(),
                        go: Some(go),
                    })
                }
                Err(why) => {
                    self.seen.insert(key, None);
                    if why != NotCovered::NotGo {
                        tracing::info!(target = %path.display(), reason = %why, "Go program not probed");
                        self.go_blind.insert(key, (path.to_owned(), why));
                    }
                    None
                }
            };
        }
        self.seen.insert(key, found.as_ref().map(|f| f.0));
        let (family, symbols) = found?;
        Some(TlsTarget {
            path: path.to_owned(),
            family,
            symbols,
            go: None,
        })
    }

    /// What is known of a Go executable (by `st_dev`, inode) examined before.
    pub fn go_coverage(&self, key: (u64, u64)) -> Option<GoCoverage> {
        if let Some(v) = self.go_seen.get(&key) {
            return Some(GoCoverage::Covered { version: v.clone() });
        }
        self.go_blind
            .get(&key)
            .map(|(_, why)| GoCoverage::Blind(why.clone()))
    }

    /// (st_dev, inode) of every TLS library file found so far.
    pub fn tls_files(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.seen
            .iter()
            .filter(|(_, f)| f.is_some())
            .map(|(k, _)| *k)
    }

    /// Distinct files examined so far.
    pub fn examined(&self) -> usize {
        self.seen.len()
    }

    /// libssl/libgnutls files in the given directories (and one level of subdirectories,
    /// for multiarch layouts such as /usr/lib/x86_64-linux-gnu).
    pub fn scan_dirs(&mut self, dirs: &[PathBuf]) -> Vec<TlsTarget> {
        let mut out = Vec::new();
        for dir in dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if looks_like_tls_lib(&name) {
                    out.extend(self.consider(&p));
                } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let Ok(sub) = fs::read_dir(&p) else { continue };
                    for s in sub.flatten() {
                        if looks_like_tls_lib(&s.file_name().to_string_lossy()) {
                            out.extend(self.consider(&s.path()));
                        }
                    }
                }
            }
        }
        out
    }

    /// Executable mappings of a process (its binary and libraries, inside its own
    /// root filesystem) that export TLS functions and were not seen before.
    pub fn scan_process(&mut self, proc_root: &Path, pid: u32) -> Vec<TlsTarget> {
        let base = proc_root.join(pid.to_string());
        let Ok(maps) = fs::read_to_string(base.join("maps")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for file in executable_mappings(&maps) {
            // The path is in the process's mount namespace: reach it through its root.
            let p = base.join("root").join(file.trim_start_matches('/'));
            out.extend(self.consider(&p));
        }
        out
    }
}

/// Distinct file paths mapped executable in a /proc/PID/maps text.
pub fn executable_mappings(maps: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(_range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.contains('x') {
            continue;
        }
        let path = f.nth(3).unwrap_or("");
        if path.starts_with('/') && !line.ends_with(" (deleted)") && !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parsing_keeps_executable_files_once() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fe:01 123 /usr/bin/curl
55d0c0001000-55d0c0002000 r-xp 00001000 fe:01 123 /usr/bin/curl
7f0000000000-7f0000100000 r-xp 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000100000-7f0000200000 r-xp 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000300000-7f0000400000 rw-p 00000000 00:00 0 [heap]
7f0000400000-7f0000500000 r-xp 00000000 00:00 0 [vdso]
7f0000500000-7f0000600000 r-xp 00000000 fe:01 789 /tmp/gone.so (deleted)
";
        assert_eq!(
            executable_mappings(maps),
            ["/usr/bin/curl", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]
        );
    }

    #[test]
    fn finds_system_libssl_once() {
        let mut d = TlsDiscovery::default();
        let found = d.scan_dirs(&[PathBuf::from("/usr/lib"), PathBuf::from("/lib")]);
        // /lib is a symlink to /usr/lib on merged-/usr systems: still one target per file.
        let ssl: Vec<_> = found
            .iter()
            .filter(|t| t.family == TlsFamily::OpenSsl)
            .collect();
        assert!(!ssl.is_empty(), "libssl present on this machine");
        assert!(ssl[0].symbols.contains(&"SSL_write"));
        assert!(ssl[0].symbols.contains(&"SSL_ctrl"), "SNI setter found");
        let again = d.scan_dirs(&[PathBuf::from("/usr/lib")]);
        assert!(again.is_empty());
    }

    #[test]
    fn a_binary_without_tls_is_not_a_target() {
        let mut d = TlsDiscovery::default();
        assert!(d.consider(Path::new("/bin/sh")).is_none());
        assert!(d.consider(Path::new("/nonexistent/x")).is_none());
    }
}
