//! File sink: takes batches of alerts, gives a JSON-lines file (0600) that rotates by size (`path`, `path.1` … `path.KEEP`).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::SinkError;
use crate::alerts::Outgoing;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Relative paths are under `state_dir`.
    pub path: PathBuf,
    /// Rotate when the file would grow beyond this; 0 never rotates.
    pub max_bytes: u64,
    /// Rotated files kept (at most [`MAX_KEEP`]).
    pub keep: u32,
}

/// Rotated files a sink may keep: more is not a retention policy, it is a directory nobody reads.
pub const MAX_KEEP: u32 = 1000;

impl FileConfig {
    /// Messages name the key as it stands under the sink.
    pub fn validate(&self) -> Result<(), String> {
        crate::bounds::count("keep", self.keep, 0, MAX_KEEP)?;
        if self.max_bytes != 0 && self.max_bytes < 4096 {
            return Err(format!(
                "max_bytes must be 0 (never rotate) or at least 4096, got {}",
                self.max_bytes
            ));
        }
        Ok(())
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            path: PathBuf::from("findings.jsonl"),
            max_bytes: 64 << 20,
            keep: 5,
        }
    }
}

pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    len: u64,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl FileSink {
    pub fn open(cfg: &FileConfig, state_dir: &Path) -> Result<FileSink, SinkError> {
        let path = state_dir.join(&cfg.path);
        let err = |e: std::io::Error| SinkError::Config(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = open(&path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        Ok(FileSink {
            path,
            max_bytes: cfg.max_bytes,
            keep: cfg.keep,
            file: Some(file),
            len,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// The rotated files that exist, by number, highest first. Read from the directory, so a
    /// rotation costs what is on the disk, not `keep` (a loop over 1..keep that tested each
    /// name spun at 100% CPU with `keep: 100000000`).
    fn existing_rotated(&self) -> std::io::Result<Vec<u32>> {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Ok(Vec::new());
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let mut prefix = name.to_os_string();
        prefix.push(".");
        let prefix = prefix.as_encoded_bytes().to_vec();
        let mut found: Vec<u32> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let n = e.file_name();
            let Some(num) = n.as_encoded_bytes().strip_prefix(&prefix[..]) else {
                continue;
            };
            // Only the names rotation makes: digits without a leading zero.
            if num.first().is_some_and(|&d| d != b'0') && num.iter().all(u8::is_ascii_digit) {
                if let Some(k) = std::str::from_utf8(num).ok().and_then(|s| s.parse().ok()) {
                    found.push(k);
                }
            }
        }
        found.sort_unstable_by(|a, b| b.cmp(a));
        Ok(found)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in self.existing_rotated()? {
                if n >= self.keep {
                    // The oldest, or left over from a larger `keep`.
                    std::fs::remove_file(self.rotated(n))?;
                } else {
                    std::fs::rename(self.rotated(n), self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = Some(open(&self.path)?);
        self.len = 0;
        Ok(())
    }

    /// One write per batch, so a crash never leaves an alert half in one file and half in the next.
    pub fn send(&mut self, batch: &[Outgoing]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|o| o.body.len() + 1).sum());
        for o in batch {
            buf.extend_from_slice(o.body.as_bytes());
            buf.push(b'\n');
        }
        let path = self.path.clone();
        let transient =
            |e: std::io::Error| SinkError::Transient(format!("{}: {e}", path.display()));
        if self.max_bytes > 0 && self.len > 0 && self.len + buf.len() as u64 > self.max_bytes {
            self.rotate().map_err(transient)?;
        }
        if self.file.is_none() {
            self.file = Some(open(&self.path).map_err(transient)?);
        }
        let Some(f) = self.file.as_mut() else {
            return Err(SinkError::Transient(format!(
                "{}: not open",
                self.path.display()
            )));
        };
        if let Err(e) = f.write_all(&buf) {
            // Reopened at the next try (the file may have been removed or the disk filled).
            self.file = None;
            return Err(transient(e));
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    pub fn check(&mut self) -> Result<(), SinkError> {
        if self.file.is_none() {
            self.file = Some(
                open(&self.path)
                    .map_err(|e| SinkError::Transient(format!("{}: {e}", self.path.display())))?,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::finding::Severity;

    fn alert(i: usize) -> Outgoing {
        Outgoing {
            time_ns: 0,
            fresh: true,
            severity: Severity::Low,
            rule: "NHI-001".into(),
            dedup_key: "k".into(),
            body: format!("{{\"n\":{i}}}"),
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FileConfig {
            path: "a/alerts.jsonl".into(),
            max_bytes: 30,
            keep: 2,
        };
        let mut s = FileSink::open(&cfg, dir.path()).unwrap();
        for i in 0..10 {
            s.send(&[alert(i), alert(i)]).unwrap();
        }
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap_or_default();
        assert_eq!(read("a/alerts.jsonl"), "{\"n\":9}\n{\"n\":9}\n");
        assert_eq!(read("a/alerts.jsonl.1"), "{\"n\":8}\n{\"n\":8}\n");
        assert_eq!(read("a/alerts.jsonl.2"), "{\"n\":7}\n{\"n\":7}\n");
        assert!(!dir.path().join("a/alerts.jsonl.3").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("a/alerts.jsonl"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A large `keep` used to cost one stat per number at each rotation (100% CPU, no delivery);
    /// now a rotation touches only the files that exist.
    #[test]
    fn rotation_costs_what_exists_not_keep() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FileConfig {
            path: "alerts.jsonl".into(),
            max_bytes: 10,
            keep: u32::MAX,
        };
        let mut s = FileSink::open(&cfg, dir.path()).unwrap();
        let started = std::time::Instant::now();
        for i in 0..4 {
            s.send(&[alert(i)]).unwrap();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap_or_default();
        assert_eq!(read("alerts.jsonl.3"), "{\"n\":0}\n");
        assert_eq!(read("alerts.jsonl.1"), "{\"n\":2}\n");
        // Left over from a larger keep: dropped at the next rotation.
        s.keep = 2;
        s.send(&[alert(4)]).unwrap();
        assert!(!dir.path().join("alerts.jsonl.3").exists());
        assert_eq!(read("alerts.jsonl.2"), "{\"n\":2}\n");
        assert_eq!(read("alerts.jsonl"), "{\"n\":4}\n");
    }

    #[test]
    fn keep_and_max_bytes_are_bounded() {
        let c = |keep, max_bytes| FileConfig {
            path: "f".into(),
            max_bytes,
            keep,
        };
        assert_eq!(c(5, 0).validate(), Ok(()));
        assert_eq!(c(MAX_KEEP, 64 << 20).validate(), Ok(()));
        let e = c(100_000_000, 64 << 20).validate().unwrap_err();
        assert!(
            e.contains("keep") && e.contains("1000") && e.contains("100000000"),
            "{e}"
        );
        assert!(c(5, 10).validate().unwrap_err().contains("max_bytes"));
    }

    #[test]
    fn a_removed_file_is_recreated_after_rotation_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileSink::open(&FileConfig::default(), dir.path()).unwrap();
        s.send(&[alert(1)]).unwrap();
        // logrotate-style rename: our handle still points at the old file until it fails or rotates.
        s.file = None;
        std::fs::remove_file(dir.path().join("findings.jsonl")).unwrap();
        s.send(&[alert(2)]).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("findings.jsonl")).unwrap(),
            "{\"n\":2}\n"
        );
    }
}
