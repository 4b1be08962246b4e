//! Prometheus metrics: counters and gauges every stage updates, served over HTTP with health probes.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{events::EventKind, identity::Attribution};

pub mod alerts;
pub mod latency;
pub use alerts::SinkMetrics;
pub use latency::LatencyQuantiles;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabel {
    pub kind: String,
    pub cpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabel {
    pub probe: String,
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Every metric the daemon exports. Cheap to clone handles are taken out at
/// start so the hot path only touches atomics.
pub struct Metrics {
    registry: Registry,
    pub events: Family<KindLabel, Counter>,
    /// Pre-resolved per-kind counters, indexed like `EventKind::ALL`.
    pub events_by_kind: Vec<Counter>,
    pub kernel_lost: Family<LostLabel, Counter>,
    pub kernel_anomalies: Family<ReasonLabel, Counter>,
    pub decode_errors: Family<ReasonLabel, Counter>,
    pub userspace_dropped: Family<ReasonLabel, Counter>,
    pub probe_attached: Family<ProbeLabel, Gauge>,
    pub tls_targets: Gauge,
    pub processes: Gauge,
    pub process_evictions: Counter,
    pub flows: Gauge,
    pub watched_inodes: Gauge,
    /// Events by attribution status, indexed like `ATTRIBUTIONS`.
    attributions: Vec<Counter>,
    /// Held events by the status they ended with.
    attributions_after_hold: Vec<Counter>,
    pub identity_hold_expired: Counter,
    pub identities: Gauge,
    pub held_events: Gauge,
    pub pod_source_errors: Counter,
    pub api: ApiMetrics,
    pub detect: DetectMetrics,
    pub alerts: alerts::AlertMetrics,
    /// Kernel timestamp → finding judged, by `stage` ("finding").
    pub pipeline_latency: LatencyQuantiles,
    /// Kernel timestamp → alert written to a sink, by `sink`.
    pub alert_latency: LatencyQuantiles,
    pub calls_by_identity: CallsByIdentity,
    /// Identities by attribution status (resolved, pending), refreshed at most once a second.
    identities_by_attribution: Family<StatusLabel, Gauge>,
    identities_by_attribution_at: AtomicU64,
    ready: AtomicBool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityCallLabel {
    pub identity: String,
    pub data_source: String,
}

/// API calls by workload identity × data source, with at most `limit` distinct pairs: later pairs
/// count under identity "other" (one series per data source), so a burst of short-lived identities
/// cannot blow up the scrape.
pub struct CallsByIdentity {
    limit: usize,
    family: Family<IdentityCallLabel, Counter>,
    admitted: Mutex<usize>,
}

/// The `identity` label of calls beyond `metrics.identity_series` (SPIFFE IDs never look like it).
pub const OTHER_IDENTITY: &str = "other";

impl CallsByIdentity {
    fn new(limit: usize) -> CallsByIdentity {
        CallsByIdentity {
            limit,
            family: Family::default(),
            admitted: Mutex::new(0),
        }
    }

    /// Counts one call; `data_source` is "none" for calls no data source classifies.
    pub fn inc(&self, identity: &str, data_source: &str) {
        if self.limit == 0 {
            return;
        }
        let mut label = IdentityCallLabel {
            identity: identity.to_owned(),
            data_source: data_source.to_owned(),
        };
        if let Some(c) = self.family.get(&label) {
            c.inc();
            return;
        }
        {
            let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
            if *admitted >= self.limit {
                label.identity = OTHER_IDENTITY.to_owned();
            } else {
                *admitted += 1;
            }
        }
        self.family.get_or_create(&label).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    pub protocol: String,
    pub end: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnomalyLabel {
    pub protocol: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: String,
}

/// The TLS → API call stage's counters; the per-call ones are resolved once so
/// that counting a call touches one atomic, not a label map.
#[derive(Default)]
pub struct ApiMetrics {
    /// `calls` by protocol × end, in `Protocol::ALL` × `ExchangeEnd::ALL` order.
    calls_by_label: Vec<Counter>,
    /// `credentials` in `CredentialKind::ALL` order.
    credentials_by_kind: Vec<Counter>,
    pub calls: Family<CallLabel, Counter>,
    pub anomalies: Family<AnomalyLabel, Counter>,
    pub credentials: Family<KindLabel, Counter>,
    pub sessions: Family<RoleLabel, Gauge>,
    pub sessions_evicted: Counter,
    pub sessions_expired: Counter,
    pub skipped_chunks: Counter,
    pub buffered_bytes: Gauge,
}

impl ApiMetrics {
    fn new() -> ApiMetrics {
        use crate::protocol::{CredentialKind, ExchangeEnd, Protocol};
        let mut m = ApiMetrics::default();
        for p in Protocol::ALL {
            for e in ExchangeEnd::ALL {
                let c = m
                    .calls
                    .get_or_create(&CallLabel {
                        protocol: p.name().into(),
                        end: e.name().into(),
                    })
                    .clone();
                m.calls_by_label.push(c);
            }
        }
        for k in CredentialKind::ALL {
            let c = m
                .credentials
                .get_or_create(&KindLabel {
                    kind: k.name().into(),
                })
                .clone();
            m.credentials_by_kind.push(c);
        }
        m
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "api_calls",
            "API calls parsed from TLS plaintext, by protocol and how they ended",
            self.calls.clone(),
        );
        registry.register(
            "protocol_anomalies",
            "TLS plaintext the HTTP parsers could not follow (truncated heads, lost HPACK state, framing), by protocol and reason",
            self.anomalies.clone(),
        );
        registry.register(
            "api_call_credentials",
            "Credentials seen in API calls, by kind",
            self.credentials.clone(),
        );
        registry.register(
            "tls_sessions",
            "TLS sessions followed, by role (HTTP client, server, other)",
            self.sessions.clone(),
        );
        registry.register(
            "tls_sessions_evicted",
            "TLS sessions dropped to stay within api_calls.max_sessions or max_buffered_bytes",
            self.sessions_evicted.clone(),
        );
        registry.register(
            "tls_sessions_expired",
            "TLS sessions closed after api_calls.session_idle_seconds without traffic",
            self.sessions_expired.clone(),
        );
        registry.register(
            "tls_chunks_skipped",
            "TLS reads and writes not parsed (server side, non-HTTP protocols)",
            self.skipped_chunks.clone(),
        );
        registry.register(
            "api_parser_buffered_bytes",
            "Bytes the HTTP parsers hold (heads, header blocks)",
            self.buffered_bytes.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabel {
    pub rule: String,
    pub name: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabel {
    pub what: String,
}

/// Contracts and detectors: findings, rule reloads, learned state.
#[derive(Default)]
pub struct DetectMetrics {
    pub observations: Family<KindLabel, Counter>,
    /// `observations` resolved once per kind: counting one touches an atomic, not a label map.
    observations_by_kind: Vec<(&'static str, Counter)>,
    pub findings: Family<FindingLabel, Counter>,
    pub rules_reloads: Family<ResultLabel, Counter>,
    pub rules_loaded: Family<KindLabel, Gauge>,
    pub rules_last_success: Gauge,
    pub identities: Gauge,
    pub credentials: Gauge,
    pub open_findings: Gauge,
    pub evictions: Family<WhatLabel, Counter>,
    pub state_writes: Family<ResultLabel, Counter>,
}

impl DetectMetrics {
    fn new() -> DetectMetrics {
        let mut m = DetectMetrics::default();
        for kind in ["exec", "file_open", "connect", "api_call"] {
            let c = m
                .observations
                .get_or_create(&KindLabel { kind: kind.into() })
                .clone();
            m.observations_by_kind.push((kind, c));
        }
        // Every rule has a series from the start, so dashboards and alerts see zeros, not gaps.
        for r in crate::detect::finding::Rule::ALL {
            m.finding(*r);
        }
        for result in ["ok", "error"] {
            let _ = m.rules_reloads.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        m
    }

    pub fn observation(&self, kind: &str) {
        if let Some((_, c)) = self.observations_by_kind.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
    }

    pub fn finding(&self, r: crate::detect::finding::Rule) -> Counter {
        self.findings
            .get_or_create(&FindingLabel {
                rule: r.id().into(),
                name: r.name().into(),
                severity: r.severity().name().into(),
            })
            .clone()
    }

    pub fn reload(&self, ok: bool, set: Option<&crate::contracts::RuleSet>) {
        self.rules_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
        if let Some(set) = set {
            for (kind, n) in [
                ("contracts", set.contracts.len()),
                ("data_sources", set.data_sources.len()),
            ] {
                self.rules_loaded
                    .get_or_create(&KindLabel { kind: kind.into() })
                    .set(n as i64);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            self.rules_last_success.set(now);
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "observations",
            "Observations judged by the detectors, by kind (exec, file_open, connect, api_call)",
            self.observations.clone(),
        );
        registry.register(
            "findings",
            "Findings raised (first occurrences; repeats within the dedup window are counted in the finding), by rule and severity",
            self.findings.clone(),
        );
        registry.register(
            "rules_reloads",
            "Rule (contract and data source) loads, by result; a failed reload keeps the last good rules",
            self.rules_reloads.clone(),
        );
        registry.register(
            "rules_loaded",
            "Rules in force, by kind (contracts, data_sources)",
            self.rules_loaded.clone(),
        );
        registry.register(
            "rules_last_success_timestamp_seconds",
            "When the rules in force were loaded",
            self.rules_last_success.clone(),
        );
        registry.register(
            "detector_identities",
            "Identities whose history the detectors keep in memory",
            self.identities.clone(),
        );
        registry.register(
            "detector_credentials",
            "Credential fingerprints tracked across identities",
            self.credentials.clone(),
        );
        registry.register(
            "detector_open_findings",
            "Findings inside their dedup window",
            self.open_findings.clone(),
        );
        registry.register(
            "detector_evictions",
            "Entries dropped to keep detector memory bounded, by what (identity, credential, open_finding)",
            self.evictions.clone(),
        );
        registry.register(
            "state_writes",
            "Writes of learned state to the state database, by result",
            self.state_writes.clone(),
        );
    }
}

const ATTRIBUTIONS: [Attribution; 4] = [
    Attribution::Resolved,
    Attribution::Pending,
    Attribution::Host,
    Attribution::Unknown,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_config(&crate::config::MetricsConfig::default())
    }

    pub fn with_config(cfg: &crate::config::MetricsConfig) -> Metrics {
        let mut registry = Registry::with_prefix("nhiwatch");
        let events = Family::<KindLabel, Counter>::default();
        registry.register(
            "events",
            "Kernel events received and decoded, by kind",
            events.clone(),
        );
        let events_by_kind = EventKind::ALL
            .iter()
            .map(|k| {
                events
                    .get_or_create(&KindLabel {
                        kind: k.name().into(),
                    })
                    .clone()
            })
            .collect();
        let kernel_lost = Family::<LostLabel, Counter>::default();
        registry.register(
            "kernel_events_lost",
            "Events the kernel could not queue because the ring buffer was full, by kind and CPU",
            kernel_lost.clone(),
        );
        let kernel_anomalies = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "kernel_anomalies",
            "Kernel-side conditions worth knowing (truncated TLS capture, failed reads, full maps, unattributed sockets)",
            kernel_anomalies.clone(),
        );
        let decode_errors = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "decode_errors",
            "Ring-buffer records that failed to decode",
            decode_errors.clone(),
        );
        let userspace_dropped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "userspace_dropped",
            "Work the daemon dropped because a queue was full",
            userspace_dropped.clone(),
        );
        let probe_attached = Family::<ProbeLabel, Gauge>::default();
        registry.register(
            "probe_attached",
            "1 if the probe is attached to the target, 0 if attaching failed",
            probe_attached.clone(),
        );
        let tls_targets = Gauge::default();
        registry.register(
            "tls_targets",
            "Distinct TLS library files with uprobes attached",
            tls_targets.clone(),
        );
        let processes = Gauge::default();
        registry.register(
            "processes",
            "Entries in the process table",
            processes.clone(),
        );
        let process_evictions = Counter::default();
        registry.register(
            "process_table_evictions",
            "Process table entries dropped because it was full",
            process_evictions.clone(),
        );
        let flows = Gauge::default();
        registry.register("flows", "Open outbound TCP flows tracked", flows.clone());
        let watched_inodes = Gauge::default();
        registry.register(
            "watched_inodes",
            "Watched directories and files matched by inode",
            watched_inodes.clone(),
        );
        let attr_family = Family::<StatusLabel, Counter>::default();
        registry.register(
            "attributions",
            "Events by identity attribution status when first seen",
            attr_family.clone(),
        );
        let attributions = ATTRIBUTIONS
            .iter()
            .map(|s| {
                attr_family
                    .get_or_create(&StatusLabel {
                        status: s.name().into(),
                    })
                    .clone()
            })
            .collect();
        let after_family = Family::<StatusLabel, Counter>::default();
        registry.register(
            "held_attributions",
            "Events held for pod metadata, by the status they were finally reported with",
            after_family.clone(),
        );
        let attributions_after_hold = ATTRIBUTIONS
            .iter()
            .map(|s| {
                after_family
                    .get_or_create(&StatusLabel {
                        status: s.name().into(),
                    })
                    .clone()
            })
            .collect();
        let identity_hold_expired = Counter::default();
        registry.register(
            "identity_hold_expired",
            "Held events whose pod metadata never arrived within identity.pending_hold_ms",
            identity_hold_expired.clone(),
        );
        let identities = Gauge::default();
        registry.register(
            "identities",
            "Distinct identities in the inventory",
            identities.clone(),
        );
        let held_events = Gauge::default();
        registry.register(
            "held_events",
            "Events waiting for pod metadata",
            held_events.clone(),
        );
        let pod_source_errors = Counter::default();
        registry.register(
            "pod_source_errors",
            "Failed requests to the kubelet or API server for pod metadata",
            pod_source_errors.clone(),
        );
        let api = ApiMetrics::new();
        api.register(&mut registry);
        let detect = DetectMetrics::new();
        detect.register(&mut registry);
        let calls_by_identity = CallsByIdentity::new(cfg.identity_series);
        if cfg.identity_series > 0 {
            registry.register(
                "api_calls_by_identity",
                "API calls by workload identity (SPIFFE ID) and data source (\"none\": unclassified); pairs beyond metrics.identity_series count under identity=\"other\"",
                calls_by_identity.family.clone(),
            );
        }
        let identities_by_attribution = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "identities_by_attribution",
            "Workloads by attribution status: resolved (identities in the inventory), pending (workloads whose events wait for pod metadata); host and unknown activity has no identity (see nhiwatch_attributions_total)",
            identities_by_attribution.clone(),
        );
        for s in [Attribution::Resolved, Attribution::Pending] {
            let _ = identities_by_attribution.get_or_create(&StatusLabel {
                status: s.name().into(),
            });
        }
        let alerts = alerts::AlertMetrics::default();
        alerts.register(&mut registry);
        registry.register(
            "build",
            "Build information",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        );
        Metrics {
            registry,
            events,
            events_by_kind,
            kernel_lost,
            kernel_anomalies,
            decode_errors,
            userspace_dropped,
            probe_attached,
            tls_targets,
            processes,
            process_evictions,
            flows,
            watched_inodes,
            attributions,
            attributions_after_hold,
            identity_hold_expired,
            identities,
            held_events,
            pod_source_errors,
            api,
            detect,
            alerts,
            pipeline_latency: LatencyQuantiles::new("stage"),
            alert_latency: LatencyQuantiles::new("sink"),
            calls_by_identity,
            identities_by_attribution,
            identities_by_attribution_at: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        }
    }

    /// Whether the identities-by-attribution gauges are due for a refresh (once a second: counting
    /// the held workloads walks the hold queue). Claims the refresh when it returns true.
    pub fn identities_by_attribution_due(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.identities_by_attribution_at.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1000
            && self
                .identities_by_attribution_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub fn set_identities_by_attribution(&self, resolved: usize, pending: usize) {
        for (s, n) in [
            (Attribution::Resolved, resolved),
            (Attribution::Pending, pending),
        ] {
            self.identities_by_attribution
                .get_or_create(&StatusLabel {
                    status: s.name().into(),
                })
                .set(n as i64);
        }
    }

    pub fn event(&self, kind: EventKind) -> &Counter {
        &self.events_by_kind[kind as usize]
    }

    pub fn attribution(&self, s: Attribution) -> &Counter {
        &self.attributions[s as usize]
    }

    pub fn attribution_after_hold(&self, s: Attribution) -> &Counter {
        &self.attributions_after_hold[s as usize]
    }

    pub fn set_probe(&self, probe: &str, target: &str, attached: bool) {
        self.probe_attached
            .get_or_create(&ProbeLabel {
                probe: probe.into(),
                target: target.into(),
            })
            .set(i64::from(attached));
    }

    pub fn api_call(&self, call: &crate::events::api_call::ApiCall) {
        let end = serde_json::to_value(call.end)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.api
            .calls
            .get_or_create(&CallLabel {
                protocol: call.protocol.name().into(),
                end,
            })
            .inc();
        for c in call.request.iter().flat_map(|r| &r.credentials) {
            let kind = serde_json::to_value(c.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            self.api
                .credentials
                .get_or_create(&KindLabel { kind })
                .inc();
        }
    }

    /// Takes the API call stage's anomalies and sizes.
    pub fn api_stage(&self, stage: &mut crate::pipeline::api_calls::ApiCallStage) {
        for a in stage.take_anomalies() {
            self.api
                .anomalies
                .get_or_create(&AnomalyLabel {
                    protocol: a.protocol.name().into(),
                    reason: a.reason.into(),
                })
                .inc();
        }
        let d = stage.take_stats_delta();
        self.api.sessions_evicted.inc_by(d.evicted);
        self.api.sessions_expired.inc_by(d.expired);
        self.api.skipped_chunks.inc_by(d.skipped_chunks);
        for (role, n) in stage.roles() {
            self.api
                .sessions
                .get_or_create(&RoleLabel {
                    role: role.name().into(),
                })
                .set(n as i64);
        }
        self.api.buffered_bytes.set(stage.buffered() as i64);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        // prometheus-client 0.23 has no summary type (a Collector could only label these gauges,
        // which Prometheus lints reject), so the latency summaries are written here, before `# EOF`.
        let eof = out.rfind("# EOF").unwrap_or(out.len());
        let mut summaries = String::new();
        self.pipeline_latency.encode(
            "nhiwatch_pipeline_latency_seconds",
            "Kernel timestamp to finding judged, by stage, since the start",
            &mut summaries,
        );
        self.alert_latency.encode(
            "nhiwatch_alert_latency_seconds",
            "Kernel timestamp to alert written to the sink, by sink, since the start",
            &mut summaries,
        );
        out.insert_str(eof, &summaries);
        out
    }
}

/// Serves /metrics, /healthz and /readyz until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use axum::{http::StatusCode, response::IntoResponse, routing::get, Router};
    let m = metrics.clone();
    let r = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    if r.is_ready() {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics endpoint: cannot listen on {addr}: {e}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.event(EventKind::Exec).inc();
        m.set_probe("exec", "kernel", true);
        let text = m.render();
        assert!(
            text.contains("nhiwatch_events_total{kind=\"exec\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nhiwatch_probe_attached{probe=\"exec\",target=\"kernel\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nhiwatch_build_info") || text.contains("nhiwatch_build{"),
            "{text}"
        );
    }

    #[test]
    fn calls_by_identity_are_bounded() {
        let cfg = crate::config::MetricsConfig {
            identity_series: 2,
            ..Default::default()
        };
        let m = Metrics::with_config(&cfg);
        m.calls_by_identity.inc("spiffe://t/a", "ehr");
        m.calls_by_identity.inc("spiffe://t/a", "ehr");
        m.calls_by_identity.inc("spiffe://t/a", "none");
        // The limit is reached: new pairs go to "other", known ones keep counting.
        m.calls_by_identity.inc("spiffe://t/b", "ehr");
        m.calls_by_identity.inc("spiffe://t/c", "ehr");
        m.calls_by_identity.inc("spiffe://t/a", "ehr");
        let text = m.render();
        for line in [
            "nhiwatch_api_calls_by_identity_total{identity=\"spiffe://t/a\",data_source=\"ehr\"} 3",
            "nhiwatch_api_calls_by_identity_total{identity=\"spiffe://t/a\",data_source=\"none\"} 1",
            "nhiwatch_api_calls_by_identity_total{identity=\"other\",data_source=\"ehr\"} 2",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        assert!(!text.contains("spiffe://t/b"), "{text}");

        let off = Metrics::with_config(&crate::config::MetricsConfig {
            identity_series: 0,
            ..Default::default()
        });
        off.calls_by_identity.inc("spiffe://t/a", "ehr");
        assert!(!off.render().contains("api_calls_by_identity"));
    }

    #[test]
    fn latency_summaries_come_before_eof() {
        let m = Metrics::new();
        m.pipeline_latency.record("finding", 1_500_000);
        m.set_identities_by_attribution(3, 1);
        let text = m.render();
        let summary = text
            .find("# TYPE nhiwatch_pipeline_latency_seconds summary")
            .expect("summary family");
        let eof = text.rfind("# EOF").expect("# EOF");
        assert!(summary < eof && text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("nhiwatch_pipeline_latency_seconds_count{stage=\"finding\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE nhiwatch_alert_latency_seconds summary"));
        assert!(
            text.contains("nhiwatch_identities_by_attribution{status=\"pending\"} 1"),
            "{text}"
        );
    }
}
