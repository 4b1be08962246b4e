//! Sink configuration and transports: takes a sink's YAML (common routing and delivery settings plus its type's own), gives a transport that sends a batch of alerts all or nothing.

pub mod file;
pub mod syslog;
pub mod tls;
pub mod webhook;

use std::{path::Path, time::Duration};

use serde::Deserialize;

use super::{Format, Outgoing};
use crate::detect::finding::Severity;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// At start: a bad file, address … (the daemon refuses to start).
    #[error("{0}")]
    Config(String),
    /// Connect, I/O, TLS, 5xx, timeout: the worker retries the batch with backoff.
    #[error("{0}")]
    Transient(String),
    /// The receiver refused these alerts for good (HTTP 400 …): the worker splits the batch to
    /// find the alert it refuses, and drops (and counts) only that one.
    #[error("{0}")]
    Rejected(String),
    /// The batch is over the receiver's size limit (HTTP 413): the worker sends smaller ones.
    #[error("{0}")]
    TooLarge(String),
}

/// One entry of `alerts.sinks`.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// Names the spool directory and the `sink` metrics label.
    pub name: String,
    pub format: Format,
    pub min_severity: Severity,
    /// Alerts per send.
    pub batch_max: usize,
    /// First retry delay; doubles (with jitter) up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Undelivered alerts kept on disk; beyond it new alerts for this sink are dropped, counted
    /// and reported by an NHI-091 alert on the other sinks.
    pub spool_max_bytes: u64,
    /// Per send and per connect.
    pub timeout: Duration,
    pub kind: SinkKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    File(file::FileConfig),
    Syslog(syslog::SyslogConfig),
    Webhook(webhook::WebhookConfig),
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::Syslog(_) => "syslog",
            SinkKind::Webhook(_) => "webhook",
        }
    }
}

#[derive(Deserialize)]
struct RawSink {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    min_severity: Option<Severity>,
    #[serde(default)]
    batch_max: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retry_max: Option<Duration>,
    #[serde(default)]
    spool_max_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    /// The type's own keys, parsed strictly once the type is known.
    #[serde(flatten)]
    rest: serde_yaml_ng::Mapping,
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = RawSink::deserialize(d)?;
        let rest = serde_yaml_ng::Value::Mapping(raw.rest);
        let err = |e: serde_yaml_ng::Error| {
            D::Error::custom(format!("sink {:?} ({}): {e}", raw.name, raw.kind))
        };
        let kind = match raw.kind.as_str() {
            "file" => SinkKind::File(serde_yaml_ng::from_value(rest).map_err(err)?),
            "syslog" => SinkKind::Syslog(serde_yaml_ng::from_value(rest).map_err(err)?),
            "webhook" => SinkKind::Webhook(serde_yaml_ng::from_value(rest).map_err(err)?),
            other => {
                return Err(D::Error::custom(format!(
                    "sink {:?}: unknown type {other:?} (file, syslog, webhook)",
                    raw.name
                )))
            }
        };
        let default_format = match kind {
            SinkKind::File(_) => Format::Native,
            _ => Format::Ocsf,
        };
        Ok(SinkConfig {
            format: raw.format.unwrap_or(default_format),
            min_severity: raw.min_severity.unwrap_or(Severity::Info),
            batch_max: raw.batch_max.unwrap_or(100),
            retry_initial: raw.retry_initial.unwrap_or(Duration::from_millis(250)),
            retry_max: raw.retry_max.unwrap_or(Duration::from_secs(30)),
            spool_max_bytes: raw.spool_max_bytes.unwrap_or(256 << 20),
            timeout: raw.timeout.unwrap_or(Duration::from_secs(10)),
            name: raw.name,
            kind,
        })
    }
}

impl SinkConfig {
    /// The bundled default: findings.jsonl under the state directory.
    pub fn local_file() -> SinkConfig {
        SinkConfig {
            name: "findings".into(),
            format: Format::Native,
            min_severity: Severity::Info,
            batch_max: 100,
            retry_initial: Duration::from_millis(250),
            retry_max: Duration::from_secs(30),
            spool_max_bytes: 256 << 20,
            timeout: Duration::from_secs(10),
            kind: SinkKind::File(file::FileConfig::default()),
        }
    }

    /// What `check-config` can tell without touching the network.
    pub fn validate(&self) -> Result<(), String> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "alerts.sinks: name {:?} must be 1-64 of [a-z0-9_-] (it names a directory and a metrics label)",
                self.name
            ));
        }
        let key = |k: &str| format!("alerts.sinks {:?}: {k}", self.name);
        crate::bounds::count(&key("batch_max"), self.batch_max, 1, 10_000)?;
        crate::bounds::duration(
            &key("timeout"),
            self.timeout,
            Duration::from_millis(100),
            crate::bounds::HOUR,
        )?;
        crate::bounds::duration(
            &key("retry_max"),
            self.retry_max,
            Duration::from_millis(1),
            crate::bounds::DAY,
        )?;
        match &self.kind {
            SinkKind::File(f) => f.validate().map_err(|e| key(&e))?,
            SinkKind::Webhook(w) => w.validate().map_err(|e| key(&e))?,
            SinkKind::Syslog(_) => {}
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(format!(
                "alerts.sinks {:?}: retry_initial must be > 0 and ≤ retry_max",
                self.name
            ));
        }
        if self.spool_max_bytes < 64 << 10 {
            return Err(format!(
                "alerts.sinks {:?}: spool_max_bytes must be at least 65536",
                self.name
            ));
        }
        Ok(())
    }
}

/// A sink's connection to its receiver.
pub enum Transport {
    File(file::FileSink),
    Syslog(syslog::SyslogSink),
    Webhook(webhook::WebhookSink),
}

impl Transport {
    /// Checks every file and address now, so a bad sink stops the start rather than failing later.
    pub fn open(
        cfg: &SinkConfig,
        state_dir: &Path,
        hostname: &str,
    ) -> Result<Transport, SinkError> {
        Ok(match &cfg.kind {
            SinkKind::File(c) => Transport::File(file::FileSink::open(c, state_dir)?),
            SinkKind::Syslog(c) => {
                Transport::Syslog(syslog::SyslogSink::new(c, hostname, cfg.timeout)?)
            }
            SinkKind::Webhook(c) => {
                Transport::Webhook(webhook::WebhookSink::new(c, hostname, cfg.timeout)?)
            }
        })
    }

    /// Sends the batch, all or nothing.
    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<(), SinkError> {
        match self {
            Transport::File(s) => s.send(batch),
            Transport::Syslog(s) => s.send(batch).await,
            Transport::Webhook(s) => s.send(batch).await,
        }
    }

    /// Whether the receiver can be reached (used while nothing is to be sent).
    pub async fn check(&mut self) -> Result<(), SinkError> {
        match self {
            Transport::File(s) => s.check(),
            Transport::Syslog(s) => s.check().await,
            Transport::Webhook(s) => s.check().await,
        }
    }
}
