//! The identity stage's metrics: attribution status of every event, events held for pod metadata, identities known, pod source errors.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use super::Attribution;
use crate::metrics::{Registry, StageTelemetry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

const ATTRIBUTIONS: [Attribution; 4] = [
    Attribution::Resolved,
    Attribution::Pending,
    Attribution::Host,
    Attribution::Unknown,
];

/// received: events to attribute; emitted: events reported with their attribution (at once or
/// after a hold); dropped{hold_expired}: held events whose pod never showed up (they still leave,
/// as pending); errors: failed pod metadata requests.
pub struct IdentityTelemetry {
    pub stage: StageTelemetry,
    /// Indexed like `ATTRIBUTIONS` (the enum's order).
    attributions: Vec<Counter>,
    after_hold: Vec<Counter>,
    pub hold_expired: Counter,
    pub identities: Gauge,
    pub held_events: Gauge,
    pub pod_source_errors: Counter,
    by_attribution: Family<StatusLabel, Gauge>,
    by_attribution_at: AtomicU64,
}

impl IdentityTelemetry {
    pub fn register(registry: &Registry) -> IdentityTelemetry {
        let stage = registry.stage("identity");
        let attributions = Family::<StatusLabel, Counter>::default();
        let after_hold = Family::<StatusLabel, Counter>::default();
        let resolve = |f: &Family<StatusLabel, Counter>| {
            ATTRIBUTIONS
                .iter()
                .map(|s| f.get_or_create(&StatusLabel { status: s.name() }).clone())
                .collect()
        };
        let t = IdentityTelemetry {
            attributions: resolve(&attributions),
            after_hold: resolve(&after_hold),
            hold_expired: stage.dropped("hold_expired"),
            // The stage's only errors: the same counter under its own long-standing name.
            pod_source_errors: stage.errors.clone(),
            identities: Gauge::default(),
            held_events: Gauge::default(),
            by_attribution: Family::default(),
            by_attribution_at: AtomicU64::new(0),
            stage,
        };
        registry.register(
            "attributions",
            "Events by identity attribution status when first seen",
            attributions,
        );
        registry.register(
            "held_attributions",
            "Events held for pod or container metadata, by the status they were finally reported with",
            after_hold,
        );
        registry.register(
            "identity_hold_expired",
            "Held events whose pod metadata never arrived within identity.pending_hold_ms",
            t.hold_expired.clone(),
        );
        registry.register(
            "identities",
            "Distinct identities in the inventory",
            t.identities.clone(),
        );
        registry.register(
            "held_events",
            "Events waiting for pod or container metadata",
            t.held_events.clone(),
        );
        registry.register(
            "pod_source_errors",
            "Failed requests for pod metadata (kubelet, API server) or container metadata (runtime sockets)",
            t.pod_source_errors.clone(),
        );
        registry.register(
            "identities_by_attribution",
            "Workloads by attribution status: resolved (identities in the inventory), pending (workloads whose events wait for pod metadata); host and unknown activity has no identity (see nhiwatch_attributions_total)",
            t.by_attribution.clone(),
        );
        t.set_identities_by_attribution(0, 0);
        t
    }

    /// An event attributed when first seen; a held one is emitted when released.
    pub fn attributed(&self, s: Attribution, held: bool) {
        self.stage.received.inc();
        self.attributions[s as usize].inc();
        if !held {
            self.stage.emitted.inc();
        }
    }

    /// A held event leaves with the status it ended with.
    pub fn released(&self, s: Attribution, expired: bool) {
        if expired {
            self.hold_expired.inc();
        }
        self.after_hold[s as usize].inc();
        self.stage.emitted.inc();
    }

    /// Whether the identities-by-attribution gauges are due for a refresh (once a second: counting
    /// the held workloads walks the hold queue). Claims the refresh when it returns true.
    pub fn identities_by_attribution_due(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.by_attribution_at.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1000
            && self
                .by_attribution_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub fn set_identities_by_attribution(&self, resolved: usize, pending: usize) {
        for (s, n) in [
            (Attribution::Resolved, resolved),
            (Attribution::Pending, pending),
        ] {
            self.by_attribution
                .get_or_create(&StatusLabel { status: s.name() })
                .set(n as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribution_series_exist_from_the_start() {
        let r = Registry::new();
        let t = IdentityTelemetry::register(&r);
        t.attributed(Attribution::Pending, true);
        t.released(Attribution::Unknown, true);
        t.set_identities_by_attribution(3, 1);
        let text = r.render();
        for line in [
            "nhiwatch_attributions_total{status=\"pending\"} 1",
            "nhiwatch_attributions_total{status=\"host\"} 0",
            "nhiwatch_held_attributions_total{status=\"unknown\"} 1",
            "nhiwatch_identity_hold_expired_total 1",
            "nhiwatch_identities_by_attribution{status=\"pending\"} 1",
            "nhiwatch_stage_received_total{stage=\"identity\"} 1",
            "nhiwatch_stage_emitted_total{stage=\"identity\"} 1",
            "nhiwatch_stage_dropped_total{stage=\"identity\",reason=\"hold_expired\"} 1",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
