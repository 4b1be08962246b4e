//! The fleet stage's metrics: takes the registry, gives the stage contract (`stage="fleet"`) plus whether the store answers, store writes and reads, and the fingerprint-key check.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use crate::metrics::{Registry, StageTelemetry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// received: observations handed to the fleet; emitted: fleet findings this node raised (the
/// fleet-wide first occurrence); errors: store commands that failed; dropped{reason}:
/// `buffer_full` (the pipeline did not wait), `expired_unwritten` (a window aged out while the
/// store was down), `cap` (a bounded key refused a field), `key_mismatch` (writes withheld).
#[derive(Clone)]
pub struct FleetTelemetry {
    pub stage: StageTelemetry,
    /// 1 while the store answers.
    pub up: Gauge,
    /// 1 while another node's fingerprint key differs from ours.
    pub key_mismatch: Gauge,
    commands: Family<OpLabel, Counter>,
    pub buffer_full: Counter,
    pub expired_unwritten: Counter,
    pub capped: Counter,
    pub withheld: Counter,
}

impl FleetTelemetry {
    pub fn register(registry: &Registry) -> FleetTelemetry {
        let stage = registry.stage("fleet");
        let t = FleetTelemetry {
            buffer_full: stage.dropped("buffer_full"),
            expired_unwritten: stage.dropped("expired_unwritten"),
            capped: stage.dropped("cap"),
            withheld: stage.dropped("key_mismatch"),
            stage,
            up: Gauge::default(),
            key_mismatch: Gauge::default(),
            commands: Family::default(),
        };
        registry.register(
            "fleet_up",
            "1 while the fleet store (fleet.url) answers, 0 while it does not",
            t.up.clone(),
        );
        registry.register(
            "fleet_key_mismatch",
            "1 while the fleet store holds another node's fingerprint-key check: fingerprints would not compare, so this node withholds its writes",
            t.key_mismatch.clone(),
        );
        registry.register(
            "fleet_commands",
            "Commands sent to the fleet store, by op (write, read, claim)",
            t.commands.clone(),
        );
        t
    }

    pub fn commands(&self, op: &'static str, n: u64) {
        self.commands.get_or_create(&OpLabel { op }).inc_by(n);
    }
}
