//! The fleet store client: takes the `fleet:` settings, gives a Redis-protocol connection (TLS, ACL user, password from a file) and the key layout every node shares.
//!
//! Layout (`P` = `fleet.prefix`, `W` = window number = epoch seconds / window, `D` = day number;
//! `{…}` is a Redis Cluster hash tag, so an identity's keys share one slot):
//!
//! | key | type | field → value | TTL |
//! |---|---|---|---|
//! | `P:w:{ID}:W` | hash | node → that node's absolute counts for the window (JSON: requests and bytes per data source, contract) | window × ttl_windows |
//! | `P:hb:{ID}:H` (H: clock hour number) | hash | node → that node's absolute bytes per data source in the hour (JSON), for `bytesPerHour` | 2 hours, or window × ttl_windows if longer |
//! | `P:h:{ID}` | hash | window → the fleet's summed requests and bytes per data source in it (JSON), for the fleet baseline | window × (volume.history + 2) |
//! | `P:fp:{FP}` | hash | `node|ID` → last window the node saw ID present FP, and whether ID's contract allows sharing | window × ttl_windows |
//! | `P:inv:D` (D: day of the write) | hash | `node|ID` → identity kind, contract, last seen | 2 days |
//! | `P:found:{K}` | string | the node that raised fleet finding K (dedup key) | `detectors.dedup_window` |
//! | `P:nodes:{K}` | set | the nodes that reported local finding K (NHI-001, NHI-031) | `detectors.dedup_window` |
//! | `P:keycheck` | string | HMAC of a fixed label under the fingerprint key | 30 days, refreshed |
//! | `P:epoch` | string | a random token the first node writes: a new one means the store was emptied | 30 days, refreshed |
//!
//! Values are absolute per node and window, never increments: a retried or repeated write
//! leaves the same value, and readers sum over the nodes.

use std::time::Duration;

use redis::{aio::ConnectionManager, AsyncCommands, Client};

use super::settings::FleetConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("fleet.password_file: {0}")]
    Password(crate::input::InputError),
    #[error("fleet.password_file {0} is empty")]
    EmptyPassword(String),
    #[error("fleet.tls.{what} {path}: {source}")]
    Tls {
        what: &'static str,
        path: String,
        source: crate::input::InputError,
    },
    #[error("fleet store at {url}: {message}")]
    Store { url: String, message: String },
}

/// The store's address and credentials, read once at start (a changed password file needs a
/// restart, like the fingerprint key).
#[derive(Clone)]
pub struct Target {
    client: Client,
    /// The URL as configured (it carries no password: `validate` refuses one).
    pub url: String,
    timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.url)
    }
}

impl Target {
    pub fn new(cfg: &FleetConfig) -> Result<Target, ConnectError> {
        let url = cfg.url.clone().unwrap_or_default();
        let store_err = |e: redis::RedisError| ConnectError::Store {
            url: url.clone(),
            message: describe(&e),
        };
        let mut info: redis::ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(store_err)?;
        if let Some(p) = &cfg.password_file {
            let text = crate::input::read_text(p, 4096, "a password file")
                .map_err(ConnectError::Password)?;
            let pw = text.lines().next().unwrap_or("").trim_end_matches('\r');
            if pw.is_empty() {
                return Err(ConnectError::EmptyPassword(p.display().to_string()));
            }
            info.redis.password = Some(pw.to_owned());
            info.redis.username = cfg.username.clone();
        }
        let read = |what: &'static str, p: &std::path::Path| {
            crate::input::read_text(p, 1 << 20, "a PEM file")
                .map(String::into_bytes)
                .map_err(|source| ConnectError::Tls {
                    what,
                    path: p.display().to_string(),
                    source,
                })
        };
        let client = if url.starts_with("rediss://") {
            let root_cert = cfg.tls.ca.as_deref().map(|p| read("ca", p)).transpose()?;
            let client_tls = match (&cfg.tls.cert, &cfg.tls.key) {
                (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                    client_cert: read("cert", c)?,
                    client_key: read("key", k)?,
                }),
                _ => None,
            };
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .map_err(store_err)?
        } else {
            Client::open(info).map_err(store_err)?
        };
        Ok(Target {
            client,
            url,
            timeout: cfg.timeout,
        })
    }

    /// One connection that reconnects by itself; each command gives up after `fleet.timeout`.
    pub async fn connect(&self) -> Result<ConnectionManager, String> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(self.timeout.as_millis() as u64);
        match tokio::time::timeout(
            self.timeout * 3,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout * 3)
            )),
        }
    }
}

/// A store error as an operator reads it: the server's own words for refusals (WRONGPASS,
/// NOAUTH, NOPERM), never a command's arguments.
pub fn describe(e: &redis::RedisError) -> String {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return "the store refused the password of fleet.password_file (with fleet.username if set): WRONGPASS".to_owned();
    }
    match e.code().unwrap_or("") {
        "WRONGPASS" => {
            "the store refused fleet.username/fleet.password_file (WRONGPASS)".to_owned()
        }
        "NOAUTH" => "the store requires a password: set fleet.password_file (NOAUTH)".to_owned(),
        "NOPERM" => {
            "the ACL user lacks a command or key the fleet needs (NOPERM): see README, Fleet"
                .to_owned()
        }
        _ => e.to_string(),
    }
}

/// Keys, all under `prefix`. Identity ids and fingerprints come from our own formats, but a
/// brace would move the hash tag: one is replaced, keeping the key unique per value.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
}

fn tag(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['{', '}']) {
        v.replace('{', "%7B").replace('}', "%7D").into()
    } else {
        v.into()
    }
}

impl Keys {
    pub fn window(&self, id: &str, w: i64) -> String {
        format!("{}:w:{{{}}}:{w}", self.prefix, tag(id))
    }
    pub fn hour_bytes(&self, id: &str, hour: i64) -> String {
        format!("{}:hb:{{{}}}:{hour}", self.prefix, tag(id))
    }
    pub fn history(&self, id: &str) -> String {
        format!("{}:h:{{{}}}", self.prefix, tag(id))
    }
    pub fn fingerprint(&self, fp: &str) -> String {
        format!("{}:fp:{{{}}}", self.prefix, tag(fp))
    }
    pub fn inventory(&self, day: i64) -> String {
        format!("{}:inv:{day}", self.prefix)
    }
    pub fn found(&self, dedup: &str) -> String {
        format!("{}:found:{{{dedup}}}", self.prefix)
    }
    pub fn reporters(&self, dedup: &str) -> String {
        format!("{}:nodes:{{{dedup}}}", self.prefix)
    }
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }
    pub fn keycheck(&self) -> String {
        format!("{}:keycheck", self.prefix)
    }
}

/// Sets a field only while the hash holds fewer than `cap` fields (or already has it), and
/// refreshes the key's TTL: bounded under adversarial cardinality, atomic on the server.
/// Returns 1 when written, 0 when the cap refused it.
pub const CAPPED_HSET: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 1
end
return 0
";

/// The SHA1 EVALSHA names `CAPPED_HSET` by.
pub fn capped_hset_sha() -> String {
    redis::Script::new(CAPPED_HSET).get_hash().to_owned()
}

/// A short, stable name for a fingerprint key, from its check value (an HMAC of a fixed public
/// label under the key): what an operator compares across nodes, never the key.
pub fn key_id(check: &str) -> String {
    let hex = check.rsplit(':').next().unwrap_or(check);
    hex.chars().take(16).collect()
}

/// Key and field separator in `node|ID` fields (`fleet.node` may not contain it).
pub const SEP: char = '|';

/// The fingerprint-key check value, written once per prefix: a node with another key reads a
/// different value.
pub async fn key_check(
    c: &mut ConnectionManager,
    keys: &Keys,
    mine: &str,
) -> Result<KeyCheck, redis::RedisError> {
    let k = keys.keycheck();
    let set: Option<String> = redis::cmd("SET")
        .arg(&k)
        .arg(mine)
        .arg("NX")
        .arg("EX")
        .arg(30 * 86_400)
        .query_async(c)
        .await?;
    if set.is_some() {
        return Ok(KeyCheck::Fresh);
    }
    let theirs: Option<String> = c.get(&k).await?;
    match theirs {
        Some(t) if t == mine => {
            let _: () = c.expire(&k, 30 * 86_400).await?;
            Ok(KeyCheck::Same)
        }
        Some(t) => Ok(KeyCheck::Different(t)),
        // Expired between the two commands: the next check writes it.
        None => Ok(KeyCheck::Fresh),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// No node had written it: this store is new or was emptied.
    Fresh,
    Same,
    /// Another node's fingerprint key differs: fingerprints would not compare. Holds the
    /// store's check value (an HMAC of a public label: it identifies the key, never reveals it).
    Different(String),
}

/// The store's incarnation: the token the first node wrote (`mine` when it is this one). A
/// different token than last time means the store was emptied or replaced: every node writes
/// its windows and its claims again.
pub async fn epoch(
    c: &mut ConnectionManager,
    keys: &Keys,
    mine: &str,
) -> Result<String, redis::RedisError> {
    let k = keys.epoch();
    // The capped write's script rides along: a restarted store forgot it, and EVALSHA then
    // saves resending its text with every field.
    let (_, _, theirs, _): (Option<String>, i64, Option<String>, String) = redis::pipe()
        .cmd("SET")
        .arg(&k)
        .arg(mine)
        .arg("NX")
        .arg("EX")
        .arg(30 * 86_400)
        .cmd("EXPIRE")
        .arg(&k)
        .arg(30 * 86_400)
        .cmd("GET")
        .arg(&k)
        .cmd("SCRIPT")
        .arg("LOAD")
        .arg(CAPPED_HSET)
        .query_async(c)
        .await?;
    Ok(theirs.unwrap_or_else(|| mine.to_owned()))
}
