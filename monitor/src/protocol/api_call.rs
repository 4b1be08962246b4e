//! The `ApiCall` observation: one request/response of an identity, with its destination, minimised request and credential summaries.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::{Exchange, ExchangeEnd, Protocol, RequestSummary};

/// How the destination's name was learnt, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NameSource {
    /// `Host` / `:authority` of the request.
    Authority,
    /// The server name the client asked for in its TLS handshake.
    Sni,
    /// A DNS answer this host's process received for the peer's address.
    Dns,
    /// No name: the peer's address.
    Ip,
    /// Neither a name nor an address (a TLS session on memory BIOs without Host).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub source: NameSource,
    /// Peer address of the TCP flow, when the TLS session is tied to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
}

/// What carried a call: a TLS library's plaintext, or cleartext written on a TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tls,
    Tcp,
}

/// One API call: metadata only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiCall {
    pub protocol: Protocol,
    pub transport: Transport,
    /// HTTP/2 stream id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<u64>,
    pub destination: Destination,
    /// Absent when the request head could not be decoded (counted as an anomaly).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Request start to response head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    pub end: ExchangeEnd,
    /// Kernel time of the request's first byte.
    #[serde(skip)]
    pub ktime_ns: u64,
}

impl ApiCall {
    pub fn new(
        ex: Exchange,
        transport: Transport,
        flow: Option<(u64, SocketAddr)>,
        destination: Destination,
    ) -> ApiCall {
        ApiCall {
            protocol: ex.protocol,
            transport,
            stream: (ex.protocol == Protocol::Http2).then_some(ex.stream),
            flow: flow.map(|f| f.0),
            destination,
            latency_ms: ex
                .response_ns
                .map(|r| r.saturating_sub(ex.request_ns) as f64 / 1e6),
            request: ex.request,
            status: ex.status,
            request_bytes: ex.request_bytes,
            response_bytes: ex.response_bytes,
            end: ex.end,
            ktime_ns: ex.request_ns,
        }
    }
}

/// The host part of an authority (`host:port`, `[v6]:port`).
pub fn authority_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Picks the best destination name: authority, SNI, DNS, address.
pub fn destination(
    authority: Option<&str>,
    sni: Option<&str>,
    dns: impl FnOnce(IpAddr) -> Option<String>,
    address: Option<SocketAddr>,
) -> Destination {
    let (name, source) = if let Some(a) = authority.filter(|a| !a.is_empty()) {
        (Some(authority_host(a).to_owned()), NameSource::Authority)
    } else if let Some(s) = sni {
        (Some(s.to_owned()), NameSource::Sni)
    } else if let Some(n) = address.and_then(|a| dns(a.ip())) {
        (Some(n), NameSource::Dns)
    } else if let Some(a) = address {
        (Some(a.ip().to_string()), NameSource::Ip)
    } else {
        (None, NameSource::Unknown)
    };
    Destination {
        name,
        source,
        address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_hosts() {
        assert_eq!(authority_host("fhir.example.org:8443"), "fhir.example.org");
        assert_eq!(authority_host("fhir.example.org"), "fhir.example.org");
        assert_eq!(authority_host("[::1]:443"), "::1");
        assert_eq!(authority_host("[::1]"), "::1");
    }

    #[test]
    fn names_are_chosen_best_first() {
        let addr: SocketAddr = "10.0.0.7:443".parse().unwrap();
        let dns = |_| Some("api.internal".to_owned());
        let d = destination(Some("a.example:443"), Some("sni.example"), dns, Some(addr));
        assert_eq!(
            (d.name.as_deref(), d.source),
            (Some("a.example"), NameSource::Authority)
        );
        let d = destination(None, Some("sni.example"), dns, Some(addr));
        assert_eq!(
            (d.name.as_deref(), d.source),
            (Some("sni.example"), NameSource::Sni)
        );
        let d = destination(None, None, dns, Some(addr));
        assert_eq!(
            (d.name.as_deref(), d.source),
            (Some("api.internal"), NameSource::Dns)
        );
        let d = destination(None, None, |_| None, Some(addr));
        assert_eq!(
            (d.name.as_deref(), d.source),
            (Some("10.0.0.7"), NameSource::Ip)
        );
        let d = destination(None, None, |_| None, None);
        assert_eq!((d.name, d.source), (None, NameSource::Unknown));
    }
}
