//! State directory → the per-deployment HMAC key, and secret bytes → keyed, truncated fingerprints.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// File name of the key inside the state directory.
pub const KEY_FILE: &str = "fingerprint.key";
const KEY_LEN: usize = 32;
/// Hex digits kept: 128 bits are plenty to tell credentials apart and too
/// few to help anyone brute-force a low-entropy secret offline without the key.
const FINGERPRINT_HEX: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "fingerprint key {path} is accessible by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` (and check nobody else read it)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "fingerprint key {path} is not a regular file; move it away so that a new key is \
         created (credential fingerprints will change)"
    )]
    NotRegularFile { path: PathBuf },
    #[error(
        "fingerprint key {path} holds {len} bytes, expected {KEY_LEN}; restore the original \
         key or move it away so that a new one is created (credential fingerprints will change)"
    )]
    WrongSize { path: PathBuf, len: u64 },
    #[error("no randomness for a new fingerprint key: {0}")]
    Random(getrandom::Error),
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> FingerprintError + 'p {
    move |source| FingerprintError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Keyed fingerprints of secrets: equal secrets give equal fingerprints within
/// one deployment, and nobody without the key can test a guess against one.
#[derive(Clone)]
pub struct Fingerprinter {
    // Keyed once; cloning the inner state per secret skips re-hashing the key.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprinter { key: <redacted> }")
    }
}

impl Fingerprinter {
    /// Loads `state_dir/fingerprint.key`, creating it (and `state_dir`, 0700)
    /// on first run. Refuses a key file that group or others can access, that
    /// is not a regular file, or that has the wrong size.
    pub fn load_or_create(state_dir: &Path) -> Result<Fingerprinter, FingerprintError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_err("create directory", state_dir))?;
        let path = state_dir.join(KEY_FILE);
        loop {
            match read_key(&path) {
                Ok(key) => return Ok(Fingerprinter::from_key(key)),
                Err(FingerprintError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if let Some(key) = create_key(state_dir, &path)? {
                return Ok(Fingerprinter::from_key(key));
            }
            // Another process created the key between our read and our link: read theirs.
        }
    }

    pub fn from_key(key: [u8; 32]) -> Fingerprinter {
        Fingerprinter {
            // HMAC accepts keys of any length, so this cannot fail.
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&key)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length")),
        }
    }

    /// `hmac-sha256:` + the first 32 hex digits of HMAC-SHA-256(key, secret).
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(12 + FINGERPRINT_HEX);
        out.push_str("hmac-sha256:");
        for b in digest.iter().take(FINGERPRINT_HEX / 2) {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

fn read_key(path: &Path) -> Result<[u8; KEY_LEN], FingerprintError> {
    // O_NOFOLLOW: a symlink planted in the state directory must not redirect
    // us to a key someone else controls. Checks run on the opened file, not the name.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                FingerprintError::NotRegularFile {
                    path: path.to_owned(),
                }
            } else {
                io_err("open", path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if !meta.file_type().is_file() {
        return Err(FingerprintError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FingerprintError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(FingerprintError::WrongSize {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let mut key = [0u8; KEY_LEN];
    file.read_exact(&mut key).map_err(io_err("read", path))?;
    Ok(key)
}

/// Writes a fresh key under a temporary name and links it into place. `None`
/// when another process won the race (its key is then the one to use).
fn create_key(dir: &Path, path: &Path) -> Result<Option<[u8; KEY_LEN]>, FingerprintError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::getrandom(&mut key).map_err(FingerprintError::Random)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{KEY_FILE}.{}.{nanos}.tmp", std::process::id()));
    let written = write_tmp(&tmp, &key).and_then(|()| {
        // link(2), unlike rename(2), never replaces a key another process just
        // created: two daemons starting together still agree on one key.
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("link", path)(e)),
        }
    });
    let _ = fs::remove_file(&tmp);
    if !written? {
        return Ok(None);
    }
    // Make the new name durable before any fingerprint depends on it.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))?;
    Ok(Some(key))
}

fn write_tmp(tmp: &Path, key: &[u8; KEY_LEN]) -> Result<(), FingerprintError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)
        .map_err(io_err("create", tmp))?;
    f.write_all(key).map_err(io_err("write", tmp))?;
    f.sync_all().map_err(io_err("sync", tmp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under /tmp, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let p = std::env::temp_dir()
                .join(format!("nhiwatch-fp-{tag}-{}-{nanos}", std::process::id()));
            fs::create_dir(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn same_secret_same_fingerprint_and_format() {
        let fp = Fingerprinter::from_key([7; 32]);
        let a = fp.fingerprint(b"ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(
            a,
            fp.fingerprint(b"ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        );
        assert!(a.starts_with("hmac-sha256:"));
        let hex = &a["hmac-sha256:".len()..];
        assert_eq!(hex.len(), 32);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(
            a,
            fp.fingerprint(b"ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab")
        );
        assert_ne!(
            a,
            Fingerprinter::from_key([8; 32])
                .fingerprint(b"ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        );
    }

    #[test]
    fn known_hmac_value() {
        // RFC 4231 test case 2 (key "Jefe"), zero-padded key changes nothing for HMAC
        // as long as it is shorter than the block: HMAC pads keys with zeros itself.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let fp = Fingerprinter::from_key(key);
        assert_eq!(
            fp.fingerprint(b"what do ya want for nothing?"),
            "hmac-sha256:5bdcc146bf60754e6a042426089575c7"
        );
    }

    #[test]
    fn debug_hides_key() {
        let fp = Fingerprinter::from_key([0xAB; 32]);
        let s = format!("{fp:?}");
        assert!(
            !s.to_lowercase().contains("ab, ") && !s.contains("171"),
            "{s}"
        );
        assert!(s.contains("redacted"));
    }

    #[test]
    fn key_created_0600_and_reused() {
        let dir = TempDir::new("create");
        let state = dir.0.join("state");
        let a = Fingerprinter::load_or_create(&state).unwrap();
        let meta = fs::metadata(state.join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let b = Fingerprinter::load_or_create(&state).unwrap();
        assert_eq!(a.fingerprint(b"secret"), b.fingerprint(b"secret"));
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&state).unwrap().count(), 1);
        // A different deployment gets a different key.
        let other = TempDir::new("other");
        let c = Fingerprinter::load_or_create(&other.0).unwrap();
        assert_ne!(a.fingerprint(b"secret"), c.fingerprint(b"secret"));
    }

    #[test]
    fn refuses_group_readable_key() {
        let dir = TempDir::new("perm");
        let path = dir.0.join(KEY_FILE);
        fs::write(&path, [1u8; 32]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Fingerprinter::load_or_create(&dir.0).unwrap_err();
        assert!(
            matches!(err, FingerprintError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("chmod 600"),
            "{msg}"
        );
        // The refused file is left alone, never silently replaced.
        assert_eq!(fs::read(&path).unwrap(), [1u8; 32]);
    }

    #[test]
    fn refuses_wrong_size_and_non_regular() {
        let dir = TempDir::new("size");
        let path = dir.0.join(KEY_FILE);
        fs::write(&path, [1u8; 16]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = Fingerprinter::load_or_create(&dir.0).unwrap_err();
        assert!(
            matches!(err, FingerprintError::WrongSize { len: 16, .. }),
            "{err}"
        );

        let dir = TempDir::new("dir");
        fs::create_dir(dir.0.join(KEY_FILE)).unwrap();
        fs::set_permissions(dir.0.join(KEY_FILE), fs::Permissions::from_mode(0o700)).unwrap();
        let err = Fingerprinter::load_or_create(&dir.0).unwrap_err();
        assert!(
            matches!(err, FingerprintError::NotRegularFile { .. }),
            "{err}"
        );

        let dir = TempDir::new("link");
        let target = dir.0.join("elsewhere");
        fs::write(&target, [2u8; 32]).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, dir.0.join(KEY_FILE)).unwrap();
        let err = Fingerprinter::load_or_create(&dir.0).unwrap_err();
        assert!(
            matches!(err, FingerprintError::NotRegularFile { .. }),
            "{err}"
        );
    }
}
