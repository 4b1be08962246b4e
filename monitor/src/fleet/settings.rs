//! The `fleet:` settings: takes the YAML block, gives the store address, credentials, TLS files, windows and caps, checked by `validate()`.

use std::{os::unix::fs::OpenOptionsExt, path::PathBuf, time::Duration};

use serde::Deserialize;

/// Off unless `url` is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// `redis://host:port[/db]` or `rediss://…` (TLS). No password in the URL: use `password_file`.
    pub url: Option<String>,
    /// This node's name in the store (default: the observation's node, else `NODE_NAME`, else
    /// the host name).
    pub node: Option<String>,
    /// Every key starts with `<prefix>:`, so several clusters can share one store.
    pub prefix: String,
    /// Per-node counts are kept per window of this length (epoch-aligned); the fleet judges a
    /// window's sum over the nodes.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Keys live for `window × ttl_windows` after their last write: a node that dies stops
    /// counting once its windows expire.
    pub ttl_windows: u32,
    /// How often a daemon writes what changed and judges the fleet's sums.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Each store command gives up after this long (the store is then counted down).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Observations queued for the fleet worker; beyond it they are dropped and counted, so
    /// the pipeline never waits on the store.
    pub buffer: usize,
    /// ACL user (Redis 6+); with `password_file` only, the `default` user.
    pub username: Option<String>,
    /// File holding the password (first line); never in the URL or the configuration.
    pub password_file: Option<PathBuf>,
    pub tls: FleetTls,
    /// The credential fingerprint key every node shares (32 bytes, e.g. a Kubernetes Secret),
    /// used instead of `state_dir/fingerprint.key`: fingerprints compare across nodes only
    /// under one key. The store keeps an HMAC of a fixed label under it, so a node with
    /// another key is reported (`nhiwatch_fleet_key_mismatch`) and writes nothing.
    pub fingerprint_key_file: Option<PathBuf>,
    /// Caps under adversarial cardinality; what goes beyond is counted, not stored.
    pub max_fingerprints_per_identity: usize,
    pub max_identities_per_fingerprint: usize,
    pub max_data_sources_per_identity: usize,
    pub max_identities: usize,
    pub max_inventory: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetTls {
    /// CA certificate(s) (PEM) the store's certificate must chain to (default: system roots).
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for stores that require one (`tls-auth-clients yes`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            url: None,
            node: None,
            prefix: "nhiwatch".into(),
            window: Duration::from_secs(60),
            ttl_windows: 10,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            buffer: 65_536,
            username: None,
            password_file: None,
            tls: FleetTls::default(),
            fingerprint_key_file: None,
            max_fingerprints_per_identity: 64,
            max_identities_per_fingerprint: 64,
            max_data_sources_per_identity: 64,
            max_identities: 16_384,
            max_inventory: 100_000,
        }
    }
}

impl FleetConfig {
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Messages name the key as it stands in the file (`fleet.…`).
    pub fn validate(&self) -> Result<(), String> {
        use crate::bounds::{count, duration, DAY, HOUR, MINUTE, SECOND};
        let Some(url) = &self.url else {
            return Ok(());
        };
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        if scheme != "redis" && scheme != "rediss" {
            return Err("fleet.url must start with redis:// or rediss:// (TLS)".to_owned());
        }
        // The userinfo part may hold a password: never echoed, refused so it stays in a file.
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Err("fleet.url must not carry a user or password; use fleet.username and fleet.password_file".to_owned());
        }
        if authority.is_empty() {
            return Err("fleet.url has no host".to_owned());
        }
        // Several nodes would mean Redis Cluster, which the fleet does not speak yet (its
        // pipelines span slots): refused rather than half-working.
        if authority.contains(',') {
            return Err("fleet.url names several hosts: Redis Cluster is not supported yet; point fleet.url at one primary, or at a cluster-aware proxy".to_owned());
        }
        if scheme == "redis" && (self.tls.ca.is_some() || self.tls.cert.is_some()) {
            return Err(
                "fleet.tls is set but fleet.url is redis://; use rediss:// for TLS".to_owned(),
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("fleet.tls.cert and fleet.tls.key go together".to_owned());
        }
        if self.username.is_some() && self.password_file.is_none() {
            return Err("fleet.username needs fleet.password_file".to_owned());
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 64
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(format!(
                "fleet.prefix must be 1 to 64 characters of letters, digits, - _ . :, got {:?}",
                self.prefix
            ));
        }
        if let Some(n) = &self.node {
            if n.is_empty() || n.len() > 253 || n.contains(['|', '\n']) {
                return Err(
                    "fleet.node must be 1 to 253 characters without | or newlines".to_owned(),
                );
            }
        }
        duration("fleet.window", self.window, SECOND, HOUR)?;
        count("fleet.ttl_windows", self.ttl_windows, 2, 1_000)?;
        if self.window * self.ttl_windows > 7 * DAY {
            return Err("fleet.window × fleet.ttl_windows must be at most 7 days".to_owned());
        }
        duration(
            "fleet.flush_interval",
            self.flush_interval,
            Duration::from_millis(100),
            MINUTE,
        )?;
        duration(
            "fleet.timeout",
            self.timeout,
            Duration::from_millis(10),
            MINUTE,
        )?;
        count("fleet.buffer", self.buffer, 16, 1 << 22)?;
        count(
            "fleet.max_fingerprints_per_identity",
            self.max_fingerprints_per_identity,
            1,
            4_096,
        )?;
        count(
            "fleet.max_identities_per_fingerprint",
            self.max_identities_per_fingerprint,
            2,
            4_096,
        )?;
        count(
            "fleet.max_data_sources_per_identity",
            self.max_data_sources_per_identity,
            1,
            4_096,
        )?;
        count("fleet.max_identities", self.max_identities, 1, 1 << 20)?;
        count("fleet.max_inventory", self.max_inventory, 1, 10_000_000)?;
        Ok(())
    }

    /// Reads `fingerprint_key_file`: a regular file (a Secret's symlinks are followed: the
    /// volume is the administrator's), no access for others (a group may read it: `fsGroup`),
    /// exactly 32 bytes.
    pub fn shared_key(&self) -> Result<Option<[u8; 32]>, String> {
        use std::{io::Read, os::unix::fs::MetadataExt};
        let Some(p) = &self.fingerprint_key_file else {
            return Ok(None);
        };
        let err = |what: &str| format!("fleet.fingerprint_key_file {}: {what}", p.display());
        let real = std::fs::canonicalize(p).map_err(|e| err(&e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&real)
            .map_err(|e| err(&e.to_string()))?;
        let meta = f.metadata().map_err(|e| err(&e.to_string()))?;
        if !meta.file_type().is_file() {
            return Err(err("not a regular file"));
        }
        if meta.mode() & 0o007 != 0 {
            return Err(err(&format!(
                "readable by others (mode {:04o}); mount it with defaultMode 0400 or 0440",
                meta.mode() & 0o7777
            )));
        }
        if meta.len() != 32 {
            return Err(err(&format!(
                "holds {} bytes, expected 32 (create it with `head -c 32 /dev/urandom`)",
                meta.len()
            )));
        }
        let mut key = [0u8; 32];
        f.read_exact(&mut key).map_err(|e| err(&e.to_string()))?;
        Ok(Some(key))
    }

    pub fn ttl(&self) -> Duration {
        self.window * self.ttl_windows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut FleetConfig)) -> Result<(), String> {
        let mut c = FleetConfig {
            url: Some("redis://127.0.0.1:6379".into()),
            ..FleetConfig::default()
        };
        f(&mut c);
        c.validate()
    }

    #[test]
    fn off_by_default_and_checked_when_on() {
        assert!(!FleetConfig::default().enabled());
        assert!(FleetConfig::default().validate().is_ok());
        assert!(with(|_| ()).is_ok());
        for (change, needle) in [
            (
                Box::new(|c: &mut FleetConfig| c.url = Some("http://x".into()))
                    as Box<dyn FnOnce(&mut FleetConfig)>,
                "redis://",
            ),
            (
                Box::new(|c: &mut FleetConfig| c.url = Some("redis://u:hunter2@x".into())),
                "password_file",
            ),
            (
                Box::new(|c: &mut FleetConfig| c.window = Duration::ZERO),
                "fleet.window",
            ),
            (
                Box::new(|c: &mut FleetConfig| c.ttl_windows = 1),
                "fleet.ttl_windows",
            ),
            (Box::new(|c: &mut FleetConfig| c.buffer = 0), "fleet.buffer"),
            (
                Box::new(|c: &mut FleetConfig| c.prefix = "a{b}".into()),
                "fleet.prefix",
            ),
            (
                Box::new(|c: &mut FleetConfig| c.tls.cert = Some("/c".into())),
                "fleet.tls",
            ),
            (
                Box::new(|c: &mut FleetConfig| c.username = Some("u".into())),
                "password_file",
            ),
            (
                Box::new(|c: &mut FleetConfig| {
                    c.url = Some("redis://10.0.0.1:7000,10.0.0.2:7000".into())
                }),
                "Redis Cluster is not supported",
            ),
        ] {
            let e = with(change).unwrap_err();
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn the_shared_key_file_is_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let with = |p: &std::path::Path| FleetConfig {
            fingerprint_key_file: Some(p.to_owned()),
            ..FleetConfig::default()
        };
        std::fs::write(&key, [7u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert_eq!(with(&key).shared_key().unwrap(), Some([7u8; 32]));
        // A Secret volume's file is a symlink into ..data: followed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        assert_eq!(with(&link).shared_key().unwrap(), Some([7u8; 32]));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o444)).unwrap();
        let e = with(&key).shared_key().unwrap_err();
        assert!(
            e.contains("readable by others") && e.contains("fleet.fingerprint_key_file"),
            "{e}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&key, [7u8; 31]).unwrap();
        assert!(with(&key).shared_key().unwrap_err().contains("31 bytes"));
        assert!(with(dir.path())
            .shared_key()
            .unwrap_err()
            .contains("not a regular file"));
        assert_eq!(FleetConfig::default().shared_key().unwrap(), None);
    }
}
