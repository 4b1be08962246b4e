//! The telemetry contract every stage keeps: received / emitted / errors / dropped{reason}, labelled by stage.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageReasonLabel {
    stage: &'static str,
    reason: &'static str,
}

/// The four families, shared by every stage.
#[derive(Default)]
pub(super) struct Families {
    received: Family<StageLabel, Counter>,
    emitted: Family<StageLabel, Counter>,
    errors: Family<StageLabel, Counter>,
    dropped: Family<StageReasonLabel, Counter>,
}

impl Families {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "stage_received",
            "Items a pipeline stage took in (kernel records, events, TLS chunks, observations, findings, rule loads), by stage",
            self.received.clone(),
        );
        registry.register(
            "stage_emitted",
            "Items a pipeline stage handed on (events, attributed events, API calls, findings, delivered alerts, rule sets), by stage",
            self.emitted.clone(),
        );
        registry.register(
            "stage_errors",
            "Items a pipeline stage could not process (bad records, unparsable traffic, failed sends, invalid rules), by stage",
            self.errors.clone(),
        );
        registry.register(
            "stage_dropped",
            "Items a pipeline stage dropped on purpose or under pressure, by stage and reason",
            self.dropped.clone(),
        );
    }

    pub(super) fn stage(&self, stage: &'static str) -> StageTelemetry {
        let l = StageLabel { stage };
        StageTelemetry {
            stage,
            received: self.received.get_or_create(&l).clone(),
            emitted: self.emitted.get_or_create(&l).clone(),
            errors: self.errors.get_or_create(&l).clone(),
            dropped: self.dropped.clone(),
        }
    }
}

/// One stage's share of the contract. The three totals are resolved once (an atomic each on the
/// hot path); drop reasons are few and fixed per stage, so `dropped` resolves them on use or, for
/// a hot reason, once through [`StageTelemetry::dropped`].
#[derive(Clone)]
pub struct StageTelemetry {
    stage: &'static str,
    pub received: Counter,
    pub emitted: Counter,
    pub errors: Counter,
    dropped: Family<StageReasonLabel, Counter>,
}

impl StageTelemetry {
    /// The counter of one drop reason (created at zero on first call, so call it at start for
    /// every reason the stage can give and dashboards see zeros instead of gaps).
    pub fn dropped(&self, reason: &'static str) -> Counter {
        self.dropped
            .get_or_create(&StageReasonLabel {
                stage: self.stage,
                reason,
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stages_share_four_families() {
        let r = super::super::Registry::new();
        let a = r.stage("decode");
        let b = r.stage("alerts");
        a.received.inc_by(3);
        a.emitted.inc_by(2);
        a.errors.inc();
        b.dropped("spool_full").inc();
        let text = r.render();
        for line in [
            "nhiwatch_stage_received_total{stage=\"decode\"} 3",
            "nhiwatch_stage_emitted_total{stage=\"decode\"} 2",
            "nhiwatch_stage_errors_total{stage=\"decode\"} 1",
            "nhiwatch_stage_received_total{stage=\"alerts\"} 0",
            "nhiwatch_stage_dropped_total{stage=\"alerts\",reason=\"spool_full\"} 1",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
