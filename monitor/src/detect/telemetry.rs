//! The detection stage's metrics: observations by kind, findings by rule, learned state sizes and evictions, state writes.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use super::finding::Rule;
use crate::metrics::{Registry, StageTelemetry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabel {
    rule: &'static str,
    name: &'static str,
    severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: &'static str,
}

/// received: observations; emitted: findings (first occurrences); dropped{evicted_*}: learned
/// state given up to stay within the memory bounds; errors: failed state writes.
pub struct DetectTelemetry {
    pub stage: StageTelemetry,
    /// `observations` resolved once per kind.
    observations: Vec<(&'static str, Counter)>,
    /// Indexed like `Rule::ALL`.
    findings: Vec<Counter>,
    pub identities: Gauge,
    pub credentials: Gauge,
    pub open_findings: Gauge,
    evictions: Family<WhatLabel, Counter>,
    state_writes: Family<ResultLabel, Counter>,
}

impl DetectTelemetry {
    pub fn register(registry: &Registry) -> DetectTelemetry {
        let observations = Family::<KindLabel, Counter>::default();
        let findings = Family::<FindingLabel, Counter>::default();
        let t = DetectTelemetry {
            stage: registry.stage("detect"),
            observations: ["exec", "file_open", "connect", "api_call"]
                .into_iter()
                .map(|kind| {
                    (
                        kind,
                        observations.get_or_create(&KindLabel { kind }).clone(),
                    )
                })
                .collect(),
            // Every rule has a series from the start, so dashboards and alerts see zeros, not gaps.
            findings: Rule::ALL
                .iter()
                .map(|r| {
                    findings
                        .get_or_create(&FindingLabel {
                            rule: r.id(),
                            name: r.name(),
                            severity: r.severity().name(),
                        })
                        .clone()
                })
                .collect(),
            identities: Gauge::default(),
            credentials: Gauge::default(),
            open_findings: Gauge::default(),
            evictions: Family::default(),
            state_writes: Family::default(),
        };
        registry.register(
            "observations",
            "Observations judged by the detectors, by kind (exec, file_open, connect, api_call)",
            observations,
        );
        registry.register(
            "findings",
            "Findings raised (first occurrences; repeats within the dedup window are counted in the finding), by rule and severity",
            findings,
        );
        registry.register(
            "detector_identities",
            "Identities whose history the detectors keep in memory",
            t.identities.clone(),
        );
        registry.register(
            "detector_credentials",
            "Credential fingerprints tracked across identities",
            t.credentials.clone(),
        );
        registry.register(
            "detector_open_findings",
            "Findings inside their dedup window",
            t.open_findings.clone(),
        );
        registry.register(
            "detector_evictions",
            "Entries dropped to keep detector memory bounded, by what (identity, credential, open_finding)",
            t.evictions.clone(),
        );
        registry.register(
            "state_writes",
            "Writes of learned state to the state database, by result",
            t.state_writes.clone(),
        );
        t
    }

    pub fn observation(&self, kind: &str) {
        self.stage.received.inc();
        if let Some((_, c)) = self.observations.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
    }

    /// A first occurrence of a finding.
    pub fn finding(&self, rule: Rule) {
        self.stage.emitted.inc();
        if let Some(i) = Rule::ALL.iter().position(|r| *r == rule) {
            self.findings[i].inc();
        }
    }

    /// `what`: identity, credential or open_finding.
    pub fn evicted(&self, what: &'static str, n: u64) {
        self.evictions.get_or_create(&WhatLabel { what }).inc_by(n);
        let reason = match what {
            "identity" => "evicted_identity",
            "credential" => "evicted_credential",
            _ => "evicted_open_finding",
        };
        self.stage.dropped(reason).inc_by(n);
    }

    pub fn state_write(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.state_writes
            .get_or_create(&ResultLabel { result })
            .inc();
        if !ok {
            self.stage.errors.inc();
        }
    }
}
