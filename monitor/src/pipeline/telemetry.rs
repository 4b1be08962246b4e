//! The pipeline's own metrics (tables, queues, calls by identity) and the handles of the stages it runs in its thread.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use crate::{
    events::telemetry::DecodeTelemetry,
    identity::IdentityTelemetry,
    metrics::{LabelText, Registry, StageTelemetry},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityCallLabel {
    identity: LabelText,
    data_source: LabelText,
}

/// Handles of the stages that run on the pipeline thread, and the pipeline's own.
pub struct PipelineTelemetry {
    pub decode: DecodeTelemetry,
    pub identity: IdentityTelemetry,
    /// received: events and observations written; errors: writes that failed.
    pub output: StageTelemetry,
    pub processes: Gauge,
    pub process_evictions: Counter,
    pub flows: Gauge,
    userspace_dropped: Family<ReasonLabel, Counter>,
    pub calls_by_identity: CallsByIdentity,
}

impl PipelineTelemetry {
    /// `identity_series` bounds `nhiwatch_api_calls_by_identity_total` (0 disables it).
    pub fn register(registry: &Registry, identity_series: usize) -> PipelineTelemetry {
        let t = PipelineTelemetry {
            decode: DecodeTelemetry::register(registry),
            identity: IdentityTelemetry::register(registry),
            output: registry.stage("output"),
            processes: Gauge::default(),
            process_evictions: Counter::default(),
            flows: Gauge::default(),
            userspace_dropped: Family::default(),
            calls_by_identity: CallsByIdentity::new(identity_series),
        };
        registry.register(
            "userspace_dropped",
            "Work the daemon dropped because a queue was full",
            t.userspace_dropped.clone(),
        );
        registry.register(
            "processes",
            "Entries in the process table",
            t.processes.clone(),
        );
        registry.register(
            "process_table_evictions",
            "Process table entries dropped because it was full",
            t.process_evictions.clone(),
        );
        registry.register("flows", "Open outbound TCP flows tracked", t.flows.clone());
        if identity_series > 0 {
            registry.register(
                "api_calls_by_identity",
                "API calls by workload identity (SPIFFE ID) and data source (\"none\": unclassified); pairs beyond metrics.identity_series count under identity=\"other\"",
                t.calls_by_identity.family.clone(),
            );
        }
        t
    }

    /// Work dropped because a queue was full (`tls_scan_queue_full`, `event_output`, …).
    pub fn userspace_dropped(&self, reason: &'static str) -> Counter {
        self.userspace_dropped
            .get_or_create(&ReasonLabel { reason })
            .clone()
    }

    /// A fresh handle for another thread's drops (the upkeep thread's).
    pub fn userspace_dropped_family(&self) -> impl Fn(&'static str) -> Counter + use<> {
        let f = self.userspace_dropped.clone();
        move |reason| f.get_or_create(&ReasonLabel { reason }).clone()
    }
}

/// API calls by workload identity × data source, with at most `limit` distinct pairs: later pairs
/// count under identity "other" (one series per data source), so a burst of short-lived identities
/// cannot blow up the scrape.
pub struct CallsByIdentity {
    limit: usize,
    family: Family<IdentityCallLabel, Counter>,
    admitted: Arc<Mutex<usize>>,
}

/// The `identity` label of calls beyond `metrics.identity_series` (SPIFFE IDs never look like it).
pub const OTHER_IDENTITY: &str = "other";

impl CallsByIdentity {
    fn new(limit: usize) -> CallsByIdentity {
        CallsByIdentity {
            limit,
            family: Family::default(),
            admitted: Arc::new(Mutex::new(0)),
        }
    }

    /// Counts one call; `data_source` is "none" for calls no data source classifies.
    pub fn inc(&self, identity: &str, data_source: &str) {
        if self.limit == 0 {
            return;
        }
        let mut label = IdentityCallLabel {
            identity: identity.into(),
            data_source: data_source.into(),
        };
        if let Some(c) = self.family.get(&label) {
            c.inc();
            return;
        }
        {
            let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
            if *admitted >= self.limit {
                label.identity = OTHER_IDENTITY.into();
            } else {
                *admitted += 1;
            }
        }
        self.family.get_or_create(&label).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_by_identity_are_bounded() {
        let r = Registry::new();
        let t = PipelineTelemetry::register(&r, 2);
        let m = &t.calls_by_identity;
        m.inc("spiffe://t/a", "ehr");
        m.inc("spiffe://t/a", "ehr");
        m.inc("spiffe://t/a", "none");
        // The limit is reached: new pairs go to "other", known ones keep counting.
        m.inc("spiffe://t/b", "ehr");
        m.inc("spiffe://t/c", "ehr");
        m.inc("spiffe://t/a", "ehr");
        let text = r.render();
        for line in [
            "nhiwatch_api_calls_by_identity_total{identity=\"spiffe://t/a\",data_source=\"ehr\"} 3",
            "nhiwatch_api_calls_by_identity_total{identity=\"spiffe://t/a\",data_source=\"none\"} 1",
            "nhiwatch_api_calls_by_identity_total{identity=\"other\",data_source=\"ehr\"} 2",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        assert!(!text.contains("spiffe://t/b"), "{text}");

        let r = Registry::new();
        let off = PipelineTelemetry::register(&r, 0);
        off.calls_by_identity.inc("spiffe://t/a", "ehr");
        assert!(!r.render().contains("api_calls_by_identity"));
    }
}
