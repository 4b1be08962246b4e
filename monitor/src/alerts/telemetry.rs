//! Alert delivery metrics: takes per-sink events from the router and the workers, gives the `nhiwatch_alert*` series (routed, sent, failures, dropped by reason, suppressed by rule, queue, spool bytes, up, latency).

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use crate::{
    detect::finding::Rule,
    metrics::{LatencyQuantiles, Registry, StageTelemetry},
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

/// received: findings handed to the router; emitted: alerts a receiver accepted (any sink);
/// errors: failed delivery attempts; dropped{reason}: alerts that will never reach a sink
/// (rate_limited, spool_full, rejected, too_large, spool_error).
pub struct AlertTelemetry {
    pub stage: StageTelemetry,
    /// Kernel timestamp → alert written to a sink, by `sink`.
    pub latency: Arc<LatencyQuantiles>,
    routed: Family<SinkLabel, Counter>,
    sent: Family<SinkLabel, Counter>,
    failures: Family<SinkLabel, Counter>,
    dropped: Family<SinkReasonLabel, Counter>,
    suppressed: Family<RuleLabel, Counter>,
    limiter_untracked: Counter,
    queue: Family<SinkLabel, Gauge>,
    spool_bytes: Family<SinkLabel, Gauge>,
    up: Family<SinkLabel, Gauge>,
    /// Each sink's two halves of `up`, shared by every [`SinkMetrics`] of the sink.
    up_parts: std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::Mutex<UpParts>>>>,
}

/// Whether the sink delivers (its worker's last send or health check) and whether its spool
/// takes alerts (the router's last append).
#[derive(Debug, Clone, Copy)]
struct UpParts {
    delivering: bool,
    spooling: bool,
}

/// `alert_sink_up`: 1 only while the sink both delivers and can spool. The worker and the
/// router each own one half, so neither hides the other's failure.
#[derive(Clone)]
pub struct SinkUp {
    gauge: Gauge,
    parts: Arc<std::sync::Mutex<UpParts>>,
}

impl SinkUp {
    fn update(&self, f: impl FnOnce(&mut UpParts)) {
        // Under the lock, so two threads never publish each other's stale halves.
        let mut p = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p);
        self.gauge.set(i64::from(p.delivering && p.spooling));
    }

    /// The worker: the receiver took the last batch or answered the health check (or not).
    pub fn delivering(&self, ok: bool) {
        self.update(|p| p.delivering = ok);
    }

    /// The router: the last append to the spool succeeded (or failed: disk full, I/O error …).
    pub fn spooling(&self, ok: bool) {
        self.update(|p| p.spooling = ok);
    }

    pub fn get(&self) -> i64 {
        self.gauge.get()
    }
}

/// One sink's series, resolved once so the hot path touches atomics only.
#[derive(Clone)]
pub struct SinkMetrics {
    pub routed: Counter,
    sent: Counter,
    failures: Counter,
    stage: StageTelemetry,
    pub queue: Gauge,
    pub spool_bytes: Gauge,
    pub up: SinkUp,
}

pub const DROP_REASONS: [&str; 4] = ["spool_full", "rejected", "too_large", "spool_error"];

/// A drop counter of one sink and reason that also counts in the stage's `dropped`.
#[derive(Clone)]
pub struct Dropped {
    sink: Counter,
    stage: Counter,
}

impl Dropped {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.sink.inc_by(n);
        self.stage.inc_by(n);
    }

    /// This sink's count.
    pub fn get(&self) -> u64 {
        self.sink.get()
    }
}

impl SinkMetrics {
    /// `n` alerts the receiver accepted.
    pub fn sent(&self, n: u64) {
        self.sent.inc_by(n);
        self.stage.emitted.inc_by(n);
    }

    /// A failed delivery attempt (the batch stays spooled).
    pub fn failure(&self) {
        self.failures.inc();
        self.stage.errors.inc();
    }

    pub fn sent_total(&self) -> u64 {
        self.sent.get()
    }

    pub fn failures_total(&self) -> u64 {
        self.failures.get()
    }
}

impl AlertTelemetry {
    pub fn register(registry: &Registry) -> AlertTelemetry {
        let t = AlertTelemetry {
            stage: registry.stage("alerts"),
            latency: registry.summary(
                "alert_latency_seconds",
                "Kernel timestamp to alert written to the sink, by sink, since the start",
                "sink",
            ),
            routed: Family::default(),
            sent: Family::default(),
            failures: Family::default(),
            dropped: Family::default(),
            suppressed: Family::default(),
            limiter_untracked: Counter::default(),
            queue: Family::default(),
            spool_bytes: Family::default(),
            up: Family::default(),
            up_parts: Default::default(),
        };
        let _ = t.stage.dropped("rate_limited");
        for reason in DROP_REASONS {
            let _ = t.stage.dropped(reason);
        }
        t.register_families(registry);
        t
    }

    fn register_families(&self, registry: &Registry) {
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
            "1 when the sink's last delivery or health check succeeded and its spool can be written",
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
            stage: self.stage.clone(),
            queue: self.queue.get_or_create(&l).clone(),
            spool_bytes: self.spool_bytes.get_or_create(&l).clone(),
            up: SinkUp {
                gauge: self.up.get_or_create(&l).clone(),
                parts: self
                    .up_parts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(name.to_owned())
                    .or_insert_with(|| {
                        Arc::new(std::sync::Mutex::new(UpParts {
                            delivering: true,
                            spooling: true,
                        }))
                    })
                    .clone(),
            },
        }
    }

    pub fn dropped(&self, sink: &str, reason: &'static str) -> Dropped {
        Dropped {
            sink: self
                .dropped
                .get_or_create(&SinkReasonLabel {
                    sink: sink.into(),
                    reason: reason.into(),
                })
                .clone(),
            stage: self.stage.dropped(reason),
        }
    }

    pub fn limiter_untracked(&self) -> Counter {
        self.limiter_untracked.clone()
    }

    /// An alert held back by the rate limit.
    pub fn suppressed(&self, rule: Rule) {
        self.suppressed
            .get_or_create(&RuleLabel {
                rule: rule.id().into(),
            })
            .inc();
        self.stage.dropped("rate_limited").inc();
    }
}
