//! The decode stage's metrics: kernel records received, events decoded by kind, records that failed to decode.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use super::{DecodeError, EventKind};
use crate::metrics::{Registry, StageTelemetry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// received: ring-buffer records; emitted: events; errors: records that did not decode.
pub struct DecodeTelemetry {
    pub stage: StageTelemetry,
    /// Indexed like `EventKind::ALL`.
    by_kind: Vec<Counter>,
    errors: Family<ReasonLabel, Counter>,
}

impl DecodeTelemetry {
    pub fn register(registry: &Registry) -> DecodeTelemetry {
        let events = Family::<KindLabel, Counter>::default();
        let t = DecodeTelemetry {
            stage: registry.stage("decode"),
            by_kind: EventKind::ALL
                .iter()
                .map(|k| events.get_or_create(&KindLabel { kind: k.name() }).clone())
                .collect(),
            errors: Family::default(),
        };
        registry.register(
            "events",
            "Kernel events received and decoded, by kind",
            events,
        );
        registry.register(
            "decode_errors",
            "Ring-buffer records that failed to decode",
            t.errors.clone(),
        );
        t
    }

    pub fn decoded(&self, kind: EventKind) {
        self.stage.received.inc();
        self.stage.emitted.inc();
        self.by_kind[kind as usize].inc();
    }

    pub fn failed(&self, e: &DecodeError) {
        self.stage.received.inc();
        self.stage.errors.inc();
        self.errors
            .get_or_create(&ReasonLabel { reason: e.reason() })
            .inc();
    }
}
