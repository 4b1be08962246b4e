//! Alerts: takes findings, gives the shapes SIEMs ingest (OCSF 1.x Detection Finding or the native finding JSON), routes them by severity and rate, and delivers them through durable per-sink spools.

mod episode;
pub mod ocsf;
pub mod route;
pub mod sinks;
pub mod spool;
pub mod telemetry;
mod worker;

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::detect::finding::{Finding, Phase, Severity};

pub use route::Alerts;
pub use telemetry::AlertTelemetry;

/// How an alert's body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// OCSF 1.x Detection Finding (class 2004).
    Ocsf,
    /// The finding as nhiwatch prints it on stdout.
    Native,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Ocsf => "ocsf",
            Format::Native => "native",
        }
    }

    /// One line of JSON. Findings hold metadata only (kinds, fingerprints, templates), so neither
    /// shape can carry a secret.
    pub fn render(self, f: &Finding) -> String {
        let r = match self {
            Format::Ocsf => serde_json::to_string(&ocsf::detection_finding(f)),
            Format::Native => serde_json::to_string(f),
        };
        // Serializing maps of strings and numbers into a String cannot fail.
        r.unwrap_or_default()
    }
}

/// One alert as a sink sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The finding's time, ns since the Unix epoch (syslog TIMESTAMP, HEC `time`).
    pub time_ns: i64,
    /// Sent as soon as it was judged (latency is measured only for these; summaries wait by design).
    pub fresh: bool,
    pub severity: Severity,
    pub rule: String,
    /// Stable per (identity, rule, evidence): receivers drop repeats with it (at-least-once delivery).
    pub dedup_key: String,
    /// One line of JSON in the sink's format, no newline.
    pub body: String,
}

impl Outgoing {
    pub fn new(f: &Finding, format: Format) -> Outgoing {
        Outgoing {
            time_ns: f.time,
            fresh: f.phase == Phase::Opened,
            severity: f.severity,
            rule: f.rule.id.clone(),
            dedup_key: f.dedup_key.clone(),
            body: format.render(f),
        }
    }

    /// The spool line: `TIME FRESH SEVERITY RULE DEDUP BODY\n`. The header fields never hold a
    /// space (numbers, fixed words, rule ids, hex keys) and the body is compact JSON, whose
    /// strings escape every newline.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_whitespace()).collect() };
        let _ = write!(
            out,
            "{} {} {} {} {} ",
            self.time_ns,
            u8::from(self.fresh),
            self.severity.name(),
            clean(&self.rule),
            clean(&self.dedup_key),
        );
        out.extend(
            self.body
                .bytes()
                .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
        out.push(b'\n');
    }

    pub fn decode(line: &str) -> Option<Outgoing> {
        let mut it = line.splitn(6, ' ');
        let time_ns = it.next()?.parse().ok()?;
        let fresh = match it.next()? {
            "1" => true,
            "0" => false,
            _ => return None,
        };
        let severity = match it.next()? {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        };
        let rule = it.next()?.to_owned();
        let dedup_key = it.next()?.to_owned();
        let body = it.next()?.to_owned();
        Some(Outgoing {
            time_ns,
            fresh,
            severity,
            rule,
            dedup_key,
            body,
        })
    }
}

/// `alerts:` in the daemon's configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Findings as native JSON lines on standard output (shared with `--events`).
    pub stdout: bool,
    pub rate_limit: RateLimitConfig,
    /// Per-sink spools live under this directory (relative to `state_dir`).
    pub spool_dir: PathBuf,
    /// At shutdown, sinks get this long to deliver what is spooled; the rest waits for the next start.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often spools are flushed to the disk (fdatasync). A daemon crash loses nothing
    /// spooled (the page cache keeps it); a power loss can lose what came since the last sync.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    pub sinks: Vec<sinks::SinkConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            stdout: true,
            rate_limit: RateLimitConfig::default(),
            spool_dir: PathBuf::from("spool"),
            drain_timeout: Duration::from_secs(5),
            sync_interval: Duration::from_secs(5),
            sinks: vec![sinks::SinkConfig::local_file()],
        }
    }
}

impl AlertsConfig {
    /// Each sink's settings, and that no two share a name (it names their spools and metrics).
    pub fn validate(&self) -> Result<(), String> {
        use crate::bounds::{duration, DAY, HOUR, MINUTE, SECOND};
        // `max: 0` turns the limit off; the window still needs a length to count in.
        duration(
            "alerts.rate_limit.window",
            self.rate_limit.window,
            SECOND,
            DAY,
        )?;
        // Zero is allowed: stop without waiting for receivers.
        duration(
            "alerts.drain_timeout",
            self.drain_timeout,
            Duration::ZERO,
            10 * MINUTE,
        )?;
        duration(
            "alerts.sync_interval",
            self.sync_interval,
            Duration::from_millis(10),
            HOUR,
        )?;
        let mut names = std::collections::HashSet::new();
        for sink in &self.sinks {
            sink.validate()?;
            if !names.insert(sink.name.as_str()) {
                return Err(format!("alerts.sinks: two sinks are named {:?}", sink.name));
            }
        }
        Ok(())
    }
}

/// At most `max` alerts per (identity, rule) in each `window`; what is held back is reported by
/// one NHI-090 summary per (identity, rule) when the window closes. `max: 0` turns it off.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub max: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            window: Duration::from_secs(60),
            max: 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_line_round_trips_and_is_one_line() {
        let o = Outgoing {
            time_ns: -5,
            fresh: false,
            severity: Severity::Critical,
            rule: "NHI-055".into(),
            dedup_key: "00aa".into(),
            body: "{\"a\":\"x y\\nz\",\"b\":\"é 漢\"}".into(),
        };
        let mut v = Vec::new();
        o.encode(&mut v);
        assert_eq!(v.iter().filter(|&&b| b == b'\n').count(), 1);
        let line = std::str::from_utf8(&v[..v.len() - 1]).unwrap();
        assert_eq!(Outgoing::decode(line), Some(o));
        assert_eq!(Outgoing::decode("1 2 high R K {}"), None);
        assert_eq!(Outgoing::decode("x 1 high R K {}"), None);
    }
}
