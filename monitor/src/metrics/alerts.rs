//! Alert delivery metrics: takes per-sink events from the router and the workers, gives the `nhiwatch_alert*` series (routed, sent, failures, dropped by reason, suppressed by rule, queue, spool bytes, up).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkReasonLabel {
    pub sink: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Default)]
pub struct AlertMetrics {
    routed: Family<SinkLabel, Counter>,
    sent: Family<SinkLabel, Counter>,
    failures: Family<SinkLabel, Counter>,
    dropped: Family<SinkReasonLabel, Counter>,
    suppressed: Family<RuleLabel, Counter>,
    limiter_untracked: Counter,
    queue: Family<SinkLabel, Gauge>,
    spool_bytes: Family<SinkLabel, Gauge>,
    up: Family<SinkLabel, Gauge>,
}

/// One sink's series, resolved once so the hot path touches atomics only.
#[derive(Clone)]
pub struct SinkMetrics {
    pub routed: Counter,
    pub sent: Counter,
    pub failures: Counter,
    pub queue: Gauge,
    pub spool_bytes: Gauge,
    pub up: Gauge,
}

pub const DROP_REASONS: [&str; 4] = ["spool_full", "rejected", "too_large", "spool_error"];

impl AlertMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "alerts_routed",
            "Alerts written to a sink's spool for delivery",
            self.routed.clone(),
        );
        registry.register(
            "alerts_sent",
            "Alerts the sink's receiver accepted",
            self.sent.clone(),
        );
        registry.register(
            "alert_send_failures",
            "Failed delivery attempts (the batch stays spooled and is retried)",
            self.failures.clone(),
        );
        registry.register(
            "alerts_dropped",
            "Alerts that will never reach the sink, by reason (spool_full, rejected by the receiver, too_large for the receiver on its own, spool_error)",
            self.dropped.clone(),
        );
        registry.register(
            "alerts_suppressed",
            "Alerts held back by the per (identity, rule) rate limit, by rule (reported by NHI-090)",
            self.suppressed.clone(),
        );
        registry.register(
            "alert_rate_limit_untracked",
            "Alerts let through without a rate limit because the limiter already tracked its maximum of 100,000 (identity, rule) windows",
            self.limiter_untracked.clone(),
        );
        registry.register(
            "alert_queue_alerts",
            "Alerts spooled for the sink and not yet delivered",
            self.queue.clone(),
        );
        registry.register(
            "alert_spool_bytes",
            "Bytes of undelivered alerts in the sink's spool",
            self.spool_bytes.clone(),
        );
        registry.register(
            "alert_sink_up",
            "1 when the sink's last delivery or health check succeeded",
            self.up.clone(),
        );
    }

    /// Creates every series of the sink (zeros rather than gaps on dashboards).
    pub fn sink(&self, name: &str) -> SinkMetrics {
        let l = SinkLabel { sink: name.into() };
        for reason in DROP_REASONS {
            let _ = self.dropped(name, reason);
        }
        SinkMetrics {
            routed: self.routed.get_or_create(&l).clone(),
            sent: self.sent.get_or_create(&l).clone(),
            failures: self.failures.get_or_create(&l).clone(),
            queue: self.queue.get_or_create(&l).clone(),
            spool_bytes: self.spool_bytes.get_or_create(&l).clone(),
            up: self.up.get_or_create(&l).clone(),
        }
    }

    pub fn dropped(&self, sink: &str, reason: &str) -> Counter {
        self.dropped
            .get_or_create(&SinkReasonLabel {
                sink: sink.into(),
                reason: reason.into(),
            })
            .clone()
    }

    pub fn limiter_untracked(&self) -> Counter {
        self.limiter_untracked.clone()
    }

    pub fn suppressed(&self, rule: crate::detect::finding::Rule) -> Counter {
        self.suppressed
            .get_or_create(&RuleLabel {
                rule: rule.id().into(),
            })
            .clone()
    }
}
