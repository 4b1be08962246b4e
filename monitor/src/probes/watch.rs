//! Watched secret locations: config patterns → kernel match tables (path-prefix trie and inodes).

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapData};

use super::abi::*;
use crate::events::OpenPath;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WatchKind {
    /// The directory and everything beneath it.
    Dir,
    /// Files whose name ends with the suffix, anywhere beneath the directory.
    Suffix(String),
    /// Exactly this file.
    Exact,
}

/// One `sensors.files.watch` entry as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchPattern {
    /// Path with a leading `~/` still in place.
    pub path: String,
    pub kind: WatchKind,
}

impl WatchPattern {
    pub fn parse(s: &str) -> Result<WatchPattern, String> {
        let s = s.trim();
        if !(s.starts_with('/') || s.starts_with("~/")) {
            return Err(format!(
                "{s:?}: a watch path must be absolute or start with ~/"
            ));
        }
        if s.contains("/../") || s.ends_with("/..") {
            return Err(format!("{s:?}: '..' is not allowed in a watch path"));
        }
        if let Some((dir, ext)) = s.split_once("/**/*") {
            if ext.is_empty()
                || ext.contains(['/', '*'])
                || ext.len() > NW_WATCH_SUFFIX_LEN as usize
            {
                return Err(format!(
                    "{s:?}: DIR/**/*SUFFIX needs a suffix of 1..={NW_WATCH_SUFFIX_LEN} characters without / or *"
                ));
            }
            return Ok(WatchPattern {
                path: format!("{dir}/"),
                kind: WatchKind::Suffix(ext.to_owned()),
            });
        }
        if s.contains('*') {
            return Err(format!("{s:?}: the only wildcard form is DIR/**/*SUFFIX"));
        }
        let kind = if s.ends_with('/') {
            WatchKind::Dir
        } else {
            WatchKind::Exact
        };
        Ok(WatchPattern {
            path: s.to_owned(),
            kind,
        })
    }
}

/// A pattern expanded to one concrete path; its index is the kernel's watch id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchTarget {
    pub path: PathBuf,
    pub kind: WatchKind,
    /// The pattern as configured (for reporting).
    pub pattern: String,
}

/// Home directories from an /etc/passwd text: root and regular users (uid >= 1000).
pub fn home_dirs(passwd: &str) -> Vec<PathBuf> {
    let mut homes: Vec<PathBuf> = passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let uid: u32 = f.get(2)?.parse().ok()?;
            let home = *f.get(5)?;
            (home.starts_with('/') && home != "/" && (uid == 0 || (1000..65534).contains(&uid)))
                .then(|| PathBuf::from(home))
        })
        .collect();
    homes.sort();
    homes.dedup();
    homes
}

pub fn expand(patterns: &[WatchPattern], homes: &[PathBuf]) -> Vec<WatchTarget> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for p in patterns {
        let paths: Vec<String> = match p.path.strip_prefix("~/") {
            Some(rest) => homes
                .iter()
                .map(|h| format!("{}/{rest}", h.display()))
                .collect(),
            None => vec![p.path.clone()],
        };
        for path in paths {
            if seen.insert((path.clone(), p.kind.clone())) {
                out.push(WatchTarget {
                    path: PathBuf::from(path),
                    kind: p.kind.clone(),
                    pattern: p.path.clone(),
                });
            }
        }
    }
    out
}

fn watch_value(id: u32, t: &WatchTarget, prefix_len: u32) -> nw_watch {
    let mut w = nw_watch {
        id,
        prefix_len,
        ..Default::default()
    };
    match &t.kind {
        WatchKind::Dir => w.flags = NW_WATCH_DIR,
        WatchKind::Exact => w.flags = NW_WATCH_EXACT,
        WatchKind::Suffix(s) => {
            w.flags = NW_WATCH_DIR | NW_WATCH_SUFFIX;
            w.suffix_len = s.len() as u32;
            for (d, b) in w.suffix.iter_mut().zip(s.bytes()) {
                *d = b as std::os::raw::c_char;
            }
        }
    }
    w
}

/// Kernel encoding of a device number (MKDEV: major << 20 | minor).
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | minor
}

/// The watched-path prefilter's value (map `watch_head_bits`).
pub type HeadBits = [u64; NW_HEAD_BITS_WORDS as usize];

/// A path's head as files.bpf.c's `path_head` cuts it: the first 8 bytes, little-endian, kept up
/// to the first `/` after the leading one (included) or the end of the path.
pub fn path_head(path: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    let n = path.len().min(8);
    raw[..n].copy_from_slice(&path[..n]);
    if let Some(j) = raw[1..].iter().position(|&c| c == b'/' || c == 0) {
        let end = if raw[j + 1] == b'/' { j + 2 } else { j + 1 };
        raw[end..].fill(0);
    }
    u64::from_le_bytes(raw)
}

/// The prefilter bit of a head: the hash files.bpf.c's `head_may_be_watched` computes.
pub fn head_bit(head: u64) -> u32 {
    (head.wrapping_mul(NW_INODE_BITS_MUL as u64) >> (64 - NW_HEAD_BITS_LOG2)) as u32
}

/// The prefilter for a set of watched paths. Every path that a watch prefix accepts starts with
/// that prefix, hence has its head — except under a watch of `/` itself, which turns the
/// filter off (all bits set).
pub fn head_bits<'a>(paths: impl IntoIterator<Item = &'a [u8]>) -> Box<HeadBits> {
    let mut bits = Box::new([0u64; NW_HEAD_BITS_WORDS as usize]);
    for p in paths {
        if p == b"/" {
            bits.fill(!0);
            break;
        }
        let h = head_bit(path_head(p));
        bits[(h >> 6) as usize] |= 1 << (h & 63);
    }
    bits
}

/// The watched-inode prefilter's value (map `watch_ino_bits`).
pub type InodeBits = [u64; NW_INODE_BITS_WORDS as usize];

/// The prefilter bit of a (dev, ino): the hash files.bpf.c's `inode_bit` computes.
pub fn inode_bit(ino: u64, dev: u32) -> u32 {
    ((ino ^ (u64::from(dev) << 32)).wrapping_mul(NW_INODE_BITS_MUL as u64)
        >> (64 - NW_INODE_BITS_LOG2)) as u32
}

/// The prefilter for a set of (ino, dev): every member's bit set.
pub fn inode_bits<'a>(inodes: impl IntoIterator<Item = &'a (u64, u32)>) -> Box<InodeBits> {
    let mut bits = Box::new([0u64; NW_INODE_BITS_WORDS as usize]);
    for &(ino, dev) in inodes {
        let h = inode_bit(ino, dev);
        bits[(h >> 6) as usize] |= 1 << (h & 63);
    }
    bits
}

/// The watch tables as programmed into the kernel, and the way back from an
/// event to a readable path.
pub struct WatchSet {
    patterns: Vec<WatchPattern>,
    targets: Vec<WatchTarget>,
    inodes: HashSet<(u64, u32)>,
    paths: HashSet<Vec<u8>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WatchStats {
    pub targets: usize,
    pub paths: usize,
    pub inodes: usize,
    pub failed: usize,
}

impl WatchSet {
    pub fn new(patterns: &[String]) -> Result<WatchSet, String> {
        let patterns = patterns
            .iter()
            .map(|p| WatchPattern::parse(p))
            .collect::<Result<_, _>>()?;
        Ok(WatchSet {
            patterns,
            targets: Vec::new(),
            inodes: HashSet::new(),
            paths: HashSet::new(),
        })
    }

    /// Recomputes targets (homes may have appeared, directories been created)
    /// and brings the kernel maps in line. Ids stay stable for unchanged targets.
    pub fn program(
        &mut self,
        trie: &mut LpmTrie<MapData, [u8; NW_PATH_MAX as usize], nw_watch>,
        inodes: &mut BpfHashMap<MapData, nw_inode_key, nw_watch>,
        devs: &mut BpfHashMap<MapData, u32, u32>,
        bits: &mut Array<MapData, InodeBits>,
        heads: &mut Array<MapData, HeadBits>,
    ) -> WatchStats {
        let homes = std::fs::read_to_string("/etc/passwd")
            .map(|p| home_dirs(&p))
            .unwrap_or_default();
        for t in expand(&self.patterns, &homes) {
            if !self.targets.contains(&t) {
                self.targets.push(t);
            }
        }
        let mut stats = WatchStats {
            targets: self.targets.len(),
            ..Default::default()
        };
        let mut live_inodes = HashSet::new();
        for (id, t) in self.targets.iter().enumerate() {
            let id = id as u32;
            let bytes = t.path.as_os_str().as_encoded_bytes();
            if bytes.len() >= NW_PATH_MAX as usize {
                stats.failed += 1;
                continue;
            }
            let mut data = [0u8; NW_PATH_MAX as usize];
            data[..bytes.len()].copy_from_slice(bytes);
            let value = watch_value(id, t, bytes.len() as u32);
            if !self.paths.contains(bytes) {
                match trie.insert(&Key::new(bytes.len() as u32 * 8, data), value, 0) {
                    Ok(()) => {
                        self.paths.insert(bytes.to_vec());
                    }
                    Err(_) => stats.failed += 1,
                }
            }
            // Inode entries for what exists now: catches relative paths and symlinks.
            let want_dir = !matches!(t.kind, WatchKind::Exact);
            if let Ok(m) = std::fs::metadata(&t.path) {
                if m.is_dir() == want_dir {
                    let key = nw_inode_key {
                        ino: m.ino(),
                        dev: kernel_dev(m.dev()),
                        _pad: 0,
                    };
                    live_inodes.insert((key.ino, key.dev));
                    if !self.inodes.contains(&(key.ino, key.dev)) {
                        let ok = inodes.insert(key, value, 0).is_ok()
                            && devs.insert(key.dev, 1, 0).is_ok();
                        if ok {
                            self.inodes.insert((key.ino, key.dev));
                        } else {
                            stats.failed += 1;
                        }
                    }
                }
            }
        }
        // Inodes of deleted or replaced directories must not match a stranger reusing the number.
        for gone in self
            .inodes
            .difference(&live_inodes)
            .copied()
            .collect::<Vec<_>>()
        {
            let _ = inodes.remove(&nw_inode_key {
                ino: gone.0,
                dev: gone.1,
                _pad: 0,
            });
            self.inodes.remove(&gone);
        }
        // The exit probe looks an ancestor up in watch_inodes only when its bit is set: a
        // watched inode whose bit is missing would go unmatched, so a failed write is counted.
        // (Rewritten whole after the inserts above: an open in between may miss a new inode,
        // as it may while the inserts themselves are under way.)
        if bits.set(0, *inode_bits(&self.inodes), 0).is_err() {
            stats.failed += 1;
        }
        // Same for the path prefilter: a trie entry whose head bit is missing would never be
        // looked up.
        if heads
            .set(0, *head_bits(self.paths.iter().map(Vec::as_slice)), 0)
            .is_err()
        {
            stats.failed += 1;
        }
        stats.paths = self.paths.len();
        stats.inodes = self.inodes.len();
        stats
    }

    /// Targets by watch id.
    pub fn targets(&self) -> &[WatchTarget] {
        &self.targets
    }
}

/// The readable path of a watched open.
pub fn path_of(targets: &[WatchTarget], watch_id: u32, path: &OpenPath<'_>) -> String {
    match path {
        OpenPath::Argument(p) => String::from_utf8_lossy(p).into_owned(),
        OpenPath::Dentries(names) => {
            let mut base = targets
                .get(watch_id as usize)
                .map(|t| t.path.clone())
                .unwrap_or_else(|| PathBuf::from("?"));
            for n in names.iter().rev() {
                base.push(Path::new(&*String::from_utf8_lossy(n)));
            }
            base.to_string_lossy().into_owned()
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn inode_prefilter_hash_is_the_kernels() {
        // The value files.bpf.c's inode_bit gives for (ino 12345, dev 8:1), worked out by hand.
        assert_eq!(inode_bit(12345, (8 << 20) | 1), 10999);
        let set = [(12345, (8 << 20) | 1), (2, 7)];
        let bits = inode_bits(&set);
        for &(ino, dev) in &set {
            let h = inode_bit(ino, dev);
            assert_eq!(bits[(h >> 6) as usize] >> (h & 63) & 1, 1);
        }
        assert_eq!(bits.iter().map(|w| w.count_ones()).sum::<u32>(), 2);
    }

    use super::*;

    #[test]
    fn path_heads_cut_after_the_first_component() {
        let h = |p: &str| path_head(p.as_bytes()).to_le_bytes();
        assert_eq!(&h("/etc/ssl/private/"), b"/etc/\0\0\0");
        assert_eq!(&h("/etc"), b"/etc\0\0\0\0");
        assert_eq!(&h("/"), b"/\0\0\0\0\0\0\0");
        assert_eq!(&h("/var/run/secrets/"), b"/var/\0\0\0");
        assert_eq!(&h("/123456/x"), b"/123456/");
        assert_eq!(&h("/workspace/a"), b"/workspa");
        // Whatever a watch prefix accepts shares its head.
        for (watch, opened) in [
            ("/etc/ssl/private/", "/etc/ssl/private/key.pem"),
            ("/workspace/creds/", "/workspace/creds/x"),
            ("/root/.aws/credentials", "/root/.aws/credentials"),
            ("/opt", "/opt"),
        ] {
            assert_eq!(path_head(watch.as_bytes()), path_head(opened.as_bytes()));
        }
        // The value files.bpf.c's head bit gives for "/etc/", worked out by hand.
        assert_eq!(head_bit(path_head(b"/etc/")), head_bit(0x2f_63_74_65_2f));
        let bits = head_bits([b"/etc/ssl/".as_slice(), b"/root/.ssh/"]);
        assert_eq!(bits.iter().map(|w| w.count_ones()).sum::<u32>(), 2);
        let b = head_bit(path_head(b"/etc/shadow"));
        assert_eq!(bits[(b >> 6) as usize] >> (b & 63) & 1, 1);
        let all = head_bits([b"/etc/".as_slice(), b"/"]);
        assert!(all.iter().all(|&w| w == !0));
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(
            WatchPattern::parse("/var/run/secrets/").unwrap().kind,
            WatchKind::Dir
        );
        assert_eq!(
            WatchPattern::parse("~/.aws/credentials").unwrap().kind,
            WatchKind::Exact
        );
        let p = WatchPattern::parse("/etc/**/*.key").unwrap();
        assert_eq!(p.path, "/etc/");
        assert_eq!(p.kind, WatchKind::Suffix(".key".into()));
        for bad in ["etc/x", "/a/*/b", "/a/**/*", "/a/../b", "/a/**/*x/y"] {
            assert!(WatchPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn homes_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                      alice:x:1000:1000::/home/alice:/bin/bash\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      broken line\n";
        assert_eq!(
            home_dirs(passwd),
            vec![PathBuf::from("/home/alice"), PathBuf::from("/root")]
        );
    }

    #[test]
    fn tilde_expands_per_home() {
        let pats = vec![
            WatchPattern::parse("~/.netrc").unwrap(),
            WatchPattern::parse("/run/secrets/").unwrap(),
        ];
        let t = expand(&pats, &[PathBuf::from("/root"), PathBuf::from("/home/a")]);
        let paths: Vec<_> = t
            .iter()
            .map(|t| t.path.to_string_lossy().into_owned())
            .collect();
        assert_eq!(paths, ["/root/.netrc", "/home/a/.netrc", "/run/secrets/"]);
    }

    #[test]
    fn suffix_value_is_encoded() {
        let t = WatchTarget {
            path: "/etc/".into(),
            kind: WatchKind::Suffix(".key".into()),
            pattern: String::new(),
        };
        let w = watch_value(3, &t, 5);
        assert_eq!(w.id, 3);
        assert_eq!(w.flags, NW_WATCH_DIR | NW_WATCH_SUFFIX);
        assert_eq!(w.suffix_len, 4);
        assert_eq!(w.suffix[0] as u8, b'.');
    }

    #[test]
    fn dentry_paths_rebuild_under_their_watch() {
        let t = vec![WatchTarget {
            path: "/run/secrets/".into(),
            kind: WatchKind::Dir,
            pattern: String::new(),
        }];
        let p = OpenPath::Dentries(vec![&b"token"[..], &b"sa"[..]]);
        assert_eq!(path_of(&t, 0, &p), "/run/secrets/sa/token");
        assert_eq!(path_of(&t, 0, &OpenPath::Argument(b"/x/y")), "/x/y");
    }

    #[test]
    fn dev_encoding_matches_the_kernel() {
        // 8:1 (sda1) is 0x801 in userspace and (8 << 20) | 1 in the kernel.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 70000)), (259 << 20) | 70000);
    }
}
