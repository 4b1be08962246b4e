//! TLS plaintext chunks → API calls (HTTP/1.x, HTTP/2): minimised requests, credential summaries, exchanges.
//!
//! Data flows one way: `sessions` routes each chunk of a TLS session to the
//! parser of its protocol (`http1`, `http2`); a parser hands every request head
//! to a [`CallSink`], which reduces it at once to a [`RequestSummary`] (path
//! template, query keys, credential kind + keyed fingerprint) so that raw
//! header values never outlive the call that carried them; finished (or
//! abandoned) request/response pairs leave as [`Exchange`]s.

pub mod api_call;
pub mod credentials;
pub mod dns;
pub mod http1;
pub mod http2;
pub mod minimise;
pub mod names;
pub mod sessions;
pub mod settings;
pub mod stage;
pub mod telemetry;

use serde::Serialize;

pub use crate::events::Direction;
pub use credentials::{CredentialKind, CredentialSummary};
pub use settings::ApiCallConfig;
pub use stage::{ApiCallStage, Finished};

/// One TLS library call's plaintext, as the sensors delivered it.
#[derive(Clone, Copy)]
pub struct Chunk<'a> {
    pub ktime_ns: u64,
    pub direction: Direction,
    /// Full length of the call. `data` is a prefix of it: the `len - data.len()`
    /// bytes after it were not captured and must be skipped, not guessed.
    pub len: u32,
    pub data: &'a [u8],
}

impl Chunk<'_> {
    /// Bytes of this call that were not captured.
    pub fn gap(&self) -> u64 {
        u64::from(self.len).saturating_sub(self.data.len() as u64)
    }
}

impl std::fmt::Debug for Chunk<'_> {
    // Never print plaintext, even in a test failure.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("ktime_ns", &self.ktime_ns)
            .field("direction", &self.direction)
            .field("len", &self.len)
            .field("captured", &self.data.len())
            .finish()
    }
}

/// One request header as the parser decoded it. Borrowed: it dies with the chunk.
#[derive(Clone, Copy)]
pub struct Header<'a> {
    /// As sent (HTTP/2: lowercase; HTTP/1: any case). Compare case-insensitively.
    pub name: &'a [u8],
    pub value: &'a [u8],
}

/// A request head, borrowed from the parser's buffers. Only [`CallSink::request`] sees it.
#[derive(Clone, Copy)]
pub struct RequestHead<'a> {
    pub protocol: Protocol,
    pub method: &'a [u8],
    /// `Host` (HTTP/1) or `:authority` (HTTP/2), raw.
    pub authority: Option<&'a [u8]>,
    /// Request target as sent, query string included (raw).
    pub path: &'a [u8],
    /// All regular headers (HTTP/2 pseudo-headers excluded).
    pub headers: &'a [Header<'a>],
}

/// What is kept of a request: no query values, no identifiers, no secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RequestSummary {
    pub method: String,
    /// Host[:port], lowercased, userinfo dropped. None when the request named none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Path with identifiers templated (`/Patient/{id}/Observation`).
    pub path: String,
    /// Names of query parameters, in order of first appearance, values dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_keys: Vec<String>,
    /// gRPC `package.Service` and method, when the path has that shape and the
    /// content type says gRPC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMethod>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcMethod {
    pub service: String,
    pub method: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

/// One request and (when seen) its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub protocol: Protocol,
    /// HTTP/2 stream id; 0 for HTTP/1.
    pub stream: u32,
    /// `None` when the request head could not be decoded (e.g. HPACK state
    /// lost): the call is counted, its fields are not guessed.
    pub request: Option<RequestSummary>,
    /// Kernel time of the first byte of the request.
    pub request_ns: u64,
    /// Request bytes on the wire of the protocol (head + body; HTTP/2: frame
    /// payloads of the stream), counted from the full call lengths.
    pub request_bytes: u64,
    pub status: Option<u16>,
    /// Kernel time of the response head.
    pub response_ns: Option<u64>,
    pub response_bytes: u64,
    /// How the exchange ended.
    pub end: ExchangeEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeEnd {
    /// Response fully seen.
    Complete,
    /// Connection/session ended or was evicted before the response finished.
    Aborted,
    /// The parser lost sync inside this exchange; sizes are lower bounds.
    Desync,
    /// Flushed by the idle timeout (e.g. a long stream); sizes so far.
    Timeout,
}

impl ExchangeEnd {
    pub const ALL: [ExchangeEnd; 4] = [
        ExchangeEnd::Complete,
        ExchangeEnd::Aborted,
        ExchangeEnd::Desync,
        ExchangeEnd::Timeout,
    ];

    /// The serialized name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ExchangeEnd::Complete => "complete",
            ExchangeEnd::Aborted => "aborted",
            ExchangeEnd::Desync => "desync",
            ExchangeEnd::Timeout => "timeout",
        }
    }
}

/// Something a parser could not handle: counted, never guessed around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Anomaly {
    pub protocol: Protocol,
    /// Stable metric label: `truncated_head`, `hpack`, `framing`, `bad_request_line`,
    /// `bad_status_line`, `head_too_large`, `unexpected_response`, …
    pub reason: &'static str,
}

/// Where parsers send what they found.
pub trait CallSink {
    /// Reduces a request head to what may be kept. The head (with any secret in
    /// it) is dropped by the parser right after this returns.
    fn request(&mut self, head: &RequestHead<'_>) -> RequestSummary;
    fn exchange(&mut self, ex: Exchange);
    fn anomaly(&mut self, anomaly: Anomaly);
}

/// Parser limits, shared by both protocols.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request/response head (HTTP/1) or header block (HTTP/2) buffered.
    pub max_head_bytes: usize,
    /// Exchanges in flight per connection (pipelining, HTTP/2 streams).
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 32 * 1024,
            max_in_flight: 128,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_are_the_serialized_names() {
        let json = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        for e in ExchangeEnd::ALL {
            assert_eq!(json(serde_json::to_value(e).unwrap()), e.name());
        }
        for k in CredentialKind::ALL {
            assert_eq!(json(serde_json::to_value(k).unwrap()), k.name());
        }
        for p in Protocol::ALL {
            assert_eq!(json(serde_json::to_value(p).unwrap()), p.name());
        }
    }
}
