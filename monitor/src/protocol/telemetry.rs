//! The TLS → API call stage's metrics: calls by protocol and end, credentials by kind, parser anomalies, sessions and buffers.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use super::{
    sessions::{Role, SessionStats},
    Anomaly, CredentialKind, Exchange, ExchangeEnd, Protocol,
};
use crate::metrics::{Registry, StageTelemetry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabel {
    protocol: &'static str,
    end: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnomalyLabel {
    protocol: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

/// Handles of the stage; the per-call ones are resolved once so that counting a call touches
/// atomics, not a label map.
pub struct ApiTelemetry {
    /// received: TLS chunks, emitted: API calls, errors: anomalies, dropped: chunks not parsed.
    pub stage: StageTelemetry,
    /// `api_calls` in `Protocol::ALL` × `ExchangeEnd::ALL` order.
    calls: Vec<Counter>,
    /// `api_call_credentials` in `CredentialKind::ALL` order.
    credentials: Vec<Counter>,
    anomalies: Family<AnomalyLabel, Counter>,
    sessions: Family<RoleLabel, Gauge>,
    sessions_evicted: Counter,
    sessions_expired: Counter,
    skipped_chunks: Counter,
    skipped: Counter,
    /// Calls of a proxy that forwarded a request it received (the client's call is reported).
    pub proxied: Counter,
    buffered_bytes: Gauge,
}

impl ApiTelemetry {
    pub fn register(registry: &Registry) -> ApiTelemetry {
        let calls = Family::<CallLabel, Counter>::default();
        let credentials = Family::<KindLabel, Counter>::default();
        let stage = registry.stage("api_calls");
        let t = ApiTelemetry {
            skipped: stage.dropped("not_http_client"),
            proxied: stage.dropped("proxied"),
            stage,
            calls: Protocol::ALL
                .iter()
                .flat_map(|p| ExchangeEnd::ALL.iter().map(move |e| (p, e)))
                .map(|(p, e)| {
                    calls
                        .get_or_create(&CallLabel {
                            protocol: p.name(),
                            end: e.name(),
                        })
                        .clone()
                })
                .collect(),
            credentials: CredentialKind::ALL
                .iter()
                .map(|k| {
                    credentials
                        .get_or_create(&KindLabel { kind: k.name() })
                        .clone()
                })
                .collect(),
            anomalies: Family::default(),
            sessions: Family::default(),
            sessions_evicted: Counter::default(),
            sessions_expired: Counter::default(),
            skipped_chunks: Counter::default(),
            buffered_bytes: Gauge::default(),
        };
        registry.register(
            "api_calls",
            "API calls parsed from TLS plaintext, by protocol and how they ended",
            calls,
        );
        registry.register(
            "protocol_anomalies",
            "TLS plaintext the HTTP parsers could not follow (truncated heads, lost HPACK state, framing), by protocol and reason",
            t.anomalies.clone(),
        );
        registry.register(
            "api_call_credentials",
            "Credentials seen in API calls, by kind",
            credentials,
        );
        registry.register(
            "tls_sessions",
            "TLS sessions followed, by role (HTTP client, server, other)",
            t.sessions.clone(),
        );
        registry.register(
            "tls_sessions_evicted",
            "TLS sessions dropped to stay within api_calls.max_sessions or max_buffered_bytes",
            t.sessions_evicted.clone(),
        );
        registry.register(
            "tls_sessions_expired",
            "TLS sessions closed after api_calls.session_idle_seconds without traffic",
            t.sessions_expired.clone(),
        );
        registry.register(
            "tls_chunks_skipped",
            "TLS reads and writes not parsed (server side, non-HTTP protocols)",
            t.skipped_chunks.clone(),
        );
        registry.register(
            "api_parser_buffered_bytes",
            "Bytes the HTTP parsers hold (heads, header blocks)",
            t.buffered_bytes.clone(),
        );
        t
    }

    /// The first bytes of an inbound cleartext connection: server side, not parsed.
    pub(super) fn skipped_inbound(&self) {
        self.skipped.inc();
    }

    /// One finished exchange, about to leave as an API call.
    pub(super) fn call(&self, ex: &Exchange) {
        let p = Protocol::ALL.iter().position(|p| *p == ex.protocol);
        let e = ExchangeEnd::ALL.iter().position(|e| *e == ex.end);
        if let (Some(p), Some(e)) = (p, e) {
            self.calls[p * ExchangeEnd::ALL.len() + e].inc();
        }
        for c in ex.request.iter().flat_map(|r| &r.credentials) {
            if let Some(k) = CredentialKind::ALL.iter().position(|k| *k == c.kind) {
                self.credentials[k].inc();
            }
        }
        self.stage.emitted.inc();
    }

    /// Traffic a parser could not follow; `protocol` is `http1`, `http2`, `dns` or `tls`.
    pub fn anomaly(&self, protocol: &'static str, reason: &'static str) {
        self.anomalies
            .get_or_create(&AnomalyLabel { protocol, reason })
            .inc();
        self.stage.errors.inc();
    }

    pub(super) fn anomalies(&self, found: impl Iterator<Item = Anomaly>) {
        for a in found {
            self.anomaly(a.protocol.name(), a.reason);
        }
    }

    pub(super) fn sessions(&self, d: &SessionStats, roles: [(Role, usize); 5], buffered: usize) {
        self.sessions_evicted.inc_by(d.evicted);
        self.sessions_expired.inc_by(d.expired);
        self.skipped_chunks.inc_by(d.skipped_chunks);
        self.skipped.inc_by(d.skipped_chunks);
        for (role, n) in roles {
            self.sessions
                .get_or_create(&RoleLabel { role: role.name() })
                .set(n as i64);
        }
        self.buffered_bytes.set(buffered as i64);
    }
}
