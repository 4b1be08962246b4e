//! Alerts: takes findings, gives the shapes SIEMs ingest (OCSF 1.x Detection Finding; the native finding JSON as is).

pub mod ocsf;
pub mod sinks;
pub mod tls;

/// An alert as a sink sees it.
pub struct Outgoing {
    /// Finding time, ns since the Unix epoch (syslog TIMESTAMP, HEC `time`).
    pub time_ns: i64,
    /// Sent as soon as judged (latency is measured only for these).
    pub fresh: bool,
    pub severity: crate::detect::finding::Severity,
    /// "NHI-010"
    pub rule: String,
    /// Stable; receivers drop repeats with it (at-least-once delivery).
    pub dedup_key: String,
    /// ONE line of JSON already in the sink's format (OCSF or native), no newline.
    pub body: String,
}
