//! The rules stage's metrics: loads and reloads by result, rules in force, when they were loaded.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use super::RuleSet;
use crate::metrics::{Registry, StageTelemetry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// received: loads tried; emitted: rule sets put in force; errors: loads refused (the last good
/// rules stay).
#[derive(Clone)]
pub struct RulesTelemetry {
    stage: StageTelemetry,
    ok: Counter,
    refused: Counter,
    loaded: Family<KindLabel, Gauge>,
    last_success: Gauge,
}

impl RulesTelemetry {
    pub fn register(registry: &Registry) -> RulesTelemetry {
        let reloads = Family::<ResultLabel, Counter>::default();
        // One statement each: a family's guard lives to the end of its statement, and a second
        // get_or_create on the same family inside it would wait for itself.
        let ok = reloads.get_or_create(&ResultLabel { result: "ok" }).clone();
        let refused = reloads
            .get_or_create(&ResultLabel { result: "error" })
            .clone();
        let t = RulesTelemetry {
            stage: registry.stage("rules"),
            ok,
            refused,
            loaded: Family::default(),
            last_success: Gauge::default(),
        };
        registry.register(
            "rules_reloads",
            "Rule (contract and data source) loads, by result; a failed reload keeps the last good rules",
            reloads,
        );
        registry.register(
            "rules_loaded",
            "Rules in force, by kind (contracts, data_sources)",
            t.loaded.clone(),
        );
        registry.register(
            "rules_last_success_timestamp_seconds",
            "When the rules in force were loaded",
            t.last_success.clone(),
        );
        t
    }

    /// A load: `Some(rules)` put in force, `None` refused.
    pub fn load(&self, set: Option<&RuleSet>) {
        self.stage.received.inc();
        let Some(set) = set else {
            self.refused.inc();
            self.stage.errors.inc();
            return;
        };
        self.ok.inc();
        self.stage.emitted.inc();
        for (kind, n) in [
            ("contracts", set.contracts.len()),
            ("data_sources", set.data_sources.len()),
        ] {
            self.loaded.get_or_create(&KindLabel { kind }).set(n as i64);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.last_success.set(now);
    }
}
