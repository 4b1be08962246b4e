//! Alert sinks: takes batches of outgoing alerts, gives them to a receiver (file, syslog, webhook).

pub mod syslog;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// At start: bad file, bad address … (the daemon refuses to start).
    #[error("{0}")]
    Config(String),
    /// Connect/IO/TLS/5xx/timeout: the worker retries the batch with backoff.
    #[error("{0}")]
    Transient(String),
    /// The receiver refused these alerts for good (HTTP 400 …): counted, dropped.
    #[error("{0}")]
    Rejected(String),
}
