//! TLS library discovery: library dirs and /proc/PID/maps → files exporting SSL_write/gnutls_record_send, and Go executables linking crypto/tls → uprobe targets (and the Go binaries that cannot be probed, with why).

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use object::{Object, ObjectSymbol};

use super::{
    golang::{self, GoBinary, NotCovered},
    sensors::{self, Hook, Sensor},
};

/// A TLS library family; the functions probed in it come from its sensor's program table.
/// Named in `sensors.tls.stacks` as `openssl`, `gnutls`, `go`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsFamily {
    #[serde(rename = "openssl")]
    OpenSsl,
    #[serde(rename = "gnutls")]
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

/// A file's identity: (`st_dev`, inode).
pub type FileKey = (u64, u64);

/// The file a target was inspected from, kept open until it is attached: a path through
/// /proc/PID/root vanishes when that process exits (a short-lived client), the open file does
/// not, so the uprobes go on the very inode that was inspected.
#[derive(Debug, Clone)]
pub struct OpenFile(Arc<fs::File>);

impl PartialEq for OpenFile {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for OpenFile {}

/// A file to put uprobes on, and which of the probed symbols it defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTarget {
    /// Path usable from the daemon's mount namespace (may go through /proc/PID/root); names the
    /// target in statuses and logs.
    pub path: PathBuf,
    /// The file's identity when it was inspected.
    pub key: FileKey,
    /// The inspected file, open; None for targets made by hand (tests).
    pub file: Option<OpenFile>,
    pub family: TlsFamily,
    /// Data symbols first, then the SNI setter when defined (none for Go).
    pub symbols: Vec<&'static str>,
    /// For [`TlsFamily::Go`]: the functions' file offsets and the struct layout.
    pub go: Option<GoBinary>,
}

impl TlsTarget {
    /// The path to attach through: the daemon's own descriptor of the inspected file while it
    /// is open (the kernel follows /proc/self/fd/N to that inode), else [`Self::path`].
    pub fn attach_path(&self) -> PathBuf {
        match &self.file {
            Some(f) => PathBuf::from(format!("/proc/self/fd/{}", f.0.as_raw_fd())),
            None => self.path.clone(),
        }
    }
}

/// Which probed symbols an ELF file defines (exported, not merely imported).
/// A file counts as a TLS library only if it defines a data function; its SNI
/// setter is then listed too.
pub fn exported_tls_symbols(path: &Path) -> Option<(TlsFamily, Vec<&'static str>)> {
    let file = fs::File::open(path).ok()?;
    // SAFETY: read-only private mapping; a concurrent truncation could SIGBUS, which
    // is the same risk every ELF-inspecting tool takes with mapped binaries.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    exported_tls_symbols_in(&map)
}

/// [`exported_tls_symbols`] of a file's bytes.
fn exported_tls_symbols_in(data: &[u8]) -> Option<(TlsFamily, Vec<&'static str>)> {
    let obj = object::File::parse(data).ok()?;
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
/// file is parsed once, whatever path or container it shows up under; and, for Go executables,
/// whether their probes are on now and which processes run them (a Go file is probed while it
/// runs, see [`Sensors::process_exited`](super::Sensors::process_exited)).
#[derive(Default)]
pub struct TlsDiscovery {
    seen: HashMap<FileKey, Option<TlsFamily>>,
    /// Go programs found that get no probes, by file identity: path, version if read, why.
    go_blind: HashMap<FileKey, (PathBuf, NotCovered)>,
    /// Go programs that can be probed, by file identity: what inspection found (kept, so that
    /// probing the file again after a detach or a failed attach does not parse it again).
    go: HashMap<FileKey, GoFile>,
    /// Which Go file each process runs (as seen in its mappings).
    go_pid: HashMap<u32, FileKey>,
    /// Stacks not probed (`sensors.tls.stacks`): their files are cached as examined, untouched.
    skip: Vec<TlsFamily>,
}

/// One Go executable that can be probed.
struct GoFile {
    binary: GoBinary,
    /// Probes on now.
    attached: bool,
    /// Named in `sensors.tls.extra_targets`: probed from start to stop, whoever runs it.
    pinned: bool,
    /// Processes known to run it.
    users: HashSet<u32>,
}

/// What discovery knows of one Go executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoCoverage {
    Covered { version: String },
    Blind(NotCovered),
}

/// The outcome of attaching a Go target, as discovery keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachOutcome {
    Attached,
    /// The file could not be reached (gone, or its path with it): tried again at its next exec.
    Vanished,
    /// The kernel refused for good (permission, feature): not tried again for this file.
    Failed,
}

impl TlsDiscovery {
    /// Discovery of the files of these TLS stacks only (`sensors.tls.stacks`).
    pub fn probing(stacks: &[TlsFamily]) -> TlsDiscovery {
        TlsDiscovery {
            skip: [TlsFamily::OpenSsl, TlsFamily::GnuTls, TlsFamily::Go]
                .into_iter()
                .filter(|f| !stacks.contains(f))
                .collect(),
            ..TlsDiscovery::default()
        }
    }

    /// Examines one file; returns a target the first time a TLS-exporting file is seen, and
    /// for a Go executable whose probes are off (never attached, the attach failed because the
    /// file vanished, or detached since its last process exited) each time it shows up again.
    pub fn consider(&mut self, path: &Path) -> Option<TlsTarget> {
        self.consider_for(path, None)
    }

    /// [`Self::consider`] for a file process `pid` maps: records `pid` as a user of a Go file.
    fn consider_for(&mut self, path: &Path, pid: Option<u32>) -> Option<TlsTarget> {
        let m = fs::metadata(path).ok()?;
        if !m.is_file() {
            return None;
        }
        let key = (m.dev(), m.ino());
        if let Some(g) = self.go.get_mut(&key) {
            if let Some(pid) = pid {
                g.users.insert(pid);
                self.go_pid.insert(pid, key);
            }
            if g.attached {
                return None;
            }
            // Known good, probes off: attach again without parsing again. The file is opened
            // now so that it is this inode that gets them even if the process exits meanwhile.
            let file = open_same(path, key)?;
            return Some(TlsTarget {
                path: path.to_owned(),
                key,
                file: Some(file),
                family: TlsFamily::Go,
                symbols: Vec::new(),
                go: Some(g.binary.clone()),
            });
        }
        if self.seen.contains_key(&key) {
            return None;
        }
        // Opened once and inspected from the open file: a process that exits now (its
        // /proc/PID/root path gone) leaves nothing cached, or a file that can still be attached.
        let file = open_same(path, key)?;
        // SAFETY: read-only private mapping; a concurrent truncation could SIGBUS, which
        // is the same risk every ELF-inspecting tool takes with mapped binaries.
        let map = unsafe { memmap2::Mmap::map(&*file.0) }.ok()?;
        let found = exported_tls_symbols_in(&map);
        if let Some((family, _)) = &found {
            if self.skip.contains(family) {
                self.seen.insert(key, Some(*family));
                return None;
            }
        } else if self.skip.contains(&TlsFamily::Go) {
            self.seen.insert(key, None);
            return None;
        }
        if found.is_none() {
            // Not a library exporting TLS functions: a Go program carrying crypto/tls?
            return match golang::inspect_bytes(&map) {
                Ok(go) => {
                    self.seen.insert(key, Some(TlsFamily::Go));
                    let mut users = HashSet::new();
                    if let Some(pid) = pid {
                        users.insert(pid);
                        self.go_pid.insert(pid, key);
                    }
                    self.go.insert(
                        key,
                        GoFile {
                            binary: go.clone(),
                            attached: false,
                            pinned: false,
                            users,
                        },
                    );
                    Some(TlsTarget {
                        path: path.to_owned(),
                        key,
                        file: Some(file),
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
            key,
            file: Some(file),
            family,
            symbols,
            go: None,
        })
    }

    /// Records how attaching a Go target went.
    pub fn go_attached(&mut self, key: FileKey, outcome: AttachOutcome) {
        match outcome {
            AttachOutcome::Attached => {
                if let Some(g) = self.go.get_mut(&key) {
                    g.attached = true;
                }
            }
            // Left known-good with probes off: its next exec attaches again.
            AttachOutcome::Vanished => {}
            AttachOutcome::Failed => {
                // Cached as examined: not tried (nor parsed) again.
                if let Some(g) = self.go.remove(&key) {
                    for pid in g.users {
                        self.go_pid.remove(&pid);
                    }
                }
            }
        }
    }

    /// Keeps a Go file's probes on whoever runs it (`sensors.tls.extra_targets`).
    pub fn pin_go(&mut self, key: FileKey) {
        if let Some(g) = self.go.get_mut(&key) {
            g.pinned = true;
        }
    }

    /// Process `pid` is gone: the Go file whose last known user it was, if its probes are on
    /// and it is not pinned (a candidate for [`Self::go_detach`]).
    pub fn go_exited(&mut self, pid: u32) -> Option<FileKey> {
        let key = self.go_pid.remove(&pid)?;
        let g = self.go.get_mut(&key)?;
        g.users.remove(&pid);
        (g.users.is_empty() && g.attached && !g.pinned).then_some(key)
    }

    /// Whether a Go file's probes may go now: still no known user, and no process in `running`
    /// ((pid, executable's file key) of the running processes, asked only then) runs it;
    /// survivors found there (started before their exec was scanned, or forked) become its
    /// users. True marks its probes off: the caller releases them.
    pub fn go_detach(
        &mut self,
        key: FileKey,
        running: impl FnOnce() -> Vec<(u32, FileKey)>,
    ) -> bool {
        let Some(g) = self.go.get_mut(&key) else {
            return false;
        };
        if !g.users.is_empty() || !g.attached || g.pinned {
            return false;
        }
        let survivors: Vec<u32> = running()
            .into_iter()
            .filter(|(_, k)| *k == key)
            .map(|(p, _)| p)
            .collect();
        if !survivors.is_empty() {
            for p in survivors {
                g.users.insert(p);
                self.go_pid.insert(p, key);
            }
            return false;
        }
        g.attached = false;
        true
    }

    /// Whether a Go file's probes are on now.
    pub fn go_is_attached(&self, key: FileKey) -> bool {
        self.go.get(&key).is_some_and(|g| g.attached)
    }

    /// What is known of a Go executable (by `st_dev`, inode) examined before.
    pub fn go_coverage(&self, key: FileKey) -> Option<GoCoverage> {
        if let Some(g) = self.go.get(&key) {
            return Some(GoCoverage::Covered {
                version: g.binary.version.clone(),
            });
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
            out.extend(self.consider_for(&p, Some(pid)));
        }
        out
    }
}

/// Opens `path` if it still is the file `key` names.
fn open_same(path: &Path, key: FileKey) -> Option<OpenFile> {
    let f = fs::File::open(path).ok()?;
    let m = f.metadata().ok()?;
    ((m.dev(), m.ino()) == key).then(|| OpenFile(Arc::new(f)))
}

/// (pid, executable's file key) of every process under `proc_root` whose executable can be read.
pub fn running_executables(proc_root: &Path) -> Vec<(u32, FileKey)> {
    let Ok(dir) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            // stat follows the link to the executable itself, in whatever mount namespace.
            let m = fs::metadata(e.path().join("exe")).ok()?;
            Some((pid, (m.dev(), m.ino())))
        })
        .collect()
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
