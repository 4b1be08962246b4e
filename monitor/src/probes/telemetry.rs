//! The sensors' metrics: what attached where, kernel-side losses and anomalies, TLS targets, watched inodes.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use std::collections::BTreeMap;

use super::{cause::Cause, health::SensorHealth};
use crate::metrics::{LabelText, LatencyQuantiles, Readiness, Registry, StageTelemetry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LostLabel {
    kind: &'static str,
    cpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DegradedLabel {
    sensor: &'static str,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SensorLabel {
    sensor: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoverageLabel {
    stack: &'static str,
    covered: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabel {
    probe: LabelText,
    /// A library file: its path is chosen by whoever ships the process.
    target: LabelText,
}

/// The kernel side of the contract: dropped{ring_full} counts the events the kernel could not
/// queue, errors the kernel-side failures (reads, full maps); what did reach the ring is counted
/// by the decode stage.
pub struct SensorTelemetry {
    stage: StageTelemetry,
    ring_full: Counter,
    lost: Family<LostLabel, Counter>,
    anomalies: Family<ReasonLabel, Counter>,
    attached: Family<ProbeLabel, Gauge>,
    pub tls_targets: Gauge,
    pub watched_inodes: Gauge,
    coverage: Family<CoverageLabel, Gauge>,
    /// Scan requests dropped because the upkeep thread had too many pending.
    pub scan_pending_full: Counter,
    degraded: Family<DegradedLabel, Gauge>,
    disabled: Family<SensorLabel, Gauge>,
    readiness: Readiness,
    /// The last verdict published, by sensor: only changes are logged and re-labelled.
    last_health: BTreeMap<&'static str, Option<Cause>>,
    hold: HoldMetrics,
}

/// The hold's counters, shared by the upkeep thread and the hold reader.
#[derive(Clone)]
pub struct HoldMetrics {
    /// Library records the hold reader could not queue (the deadline continues those held).
    queue_full: Counter,
    holds: Family<OutcomeLabel, Counter>,
    seconds: std::sync::Arc<LatencyQuantiles>,
}

impl HoldMetrics {
    /// A process held at a new TLS library.
    pub fn held(&self) {
        self.holds
            .get_or_create(&OutcomeLabel { outcome: "held" })
            .inc();
    }

    /// A held process continued (`released`, `expired`, `stopped`) after `waited`.
    pub fn continued(&self, outcome: &'static str, waited: std::time::Duration) {
        self.holds.get_or_create(&OutcomeLabel { outcome }).inc();
        self.seconds
            .record(outcome, waited.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    pub fn queue_full(&self) {
        self.queue_full.inc();
    }
}

/// Kernel anomalies that mean a failure rather than a partial view.
const FAILURES: [&str; 4] = [
    "tls_read_failed",
    "path_read_failed",
    "map_full",
    "socket_read_failed",
];

impl SensorTelemetry {
    /// `userspace_dropped` is the daemon's family of queue drops, which the upkeep thread's
    /// pending scans report into.
    pub fn register(
        registry: &Registry,
        userspace_dropped: impl Fn(&'static str) -> Counter,
    ) -> SensorTelemetry {
        let stage = registry.stage("sensors");
        let t = SensorTelemetry {
            ring_full: stage.dropped("ring_full"),
            stage,
            lost: Family::default(),
            anomalies: Family::default(),
            attached: Family::default(),
            tls_targets: Gauge::default(),
            watched_inodes: Gauge::default(),
            coverage: Family::default(),
            scan_pending_full: userspace_dropped("tls_scan_pending_full"),
            degraded: Family::default(),
            disabled: Family::default(),
            readiness: registry.readiness(),
            last_health: BTreeMap::new(),
            hold: HoldMetrics {
                queue_full: userspace_dropped("tls_hold_queue_full"),
                holds: Family::default(),
                seconds: registry.summary(
                    "tls_hold_seconds",
                    "How long processes were held at a new TLS library, by how they were continued",
                    "outcome",
                ),
            },
        };
        registry.register(
            "sensor_degraded",
            "1 while the sensor is not attached, labelled with why (permission, kernel_feature, missing_file, other)",
            t.degraded.clone(),
        );
        registry.register(
            "sensor_disabled",
            "1 for a sensor the settings turn off (sensors.sockets.enabled: false, \
             sensors.tls.hold_new_libraries: false): not attached on purpose, never degraded",
            t.disabled.clone(),
        );
        registry.register(
            "tls_holds",
            "Processes held at a new TLS library (held) and continued: after the attach (released), \
             at the deadline (expired), or at stop (stopped)",
            t.hold.holds.clone(),
        );
        registry.register(
            "kernel_events_lost",
            "Events the kernel could not queue because the ring buffer was full, by kind and CPU",
            t.lost.clone(),
        );
        registry.register(
            "kernel_anomalies",
            "Kernel-side conditions worth knowing (truncated TLS capture, failed reads, full maps, unattributed sockets)",
            t.anomalies.clone(),
        );
        registry.register(
            "probe_attached",
            "1 if the probe is attached to the target, 0 if attaching failed",
            t.attached.clone(),
        );
        registry.register(
            "tls_targets",
            "Distinct TLS library files with uprobes attached",
            t.tls_targets.clone(),
        );
        registry.register(
            "tls_coverage",
            "Running processes with a TCP socket, by TLS stack and whether nhiwatch sees their \
             plaintext (`nhiwatch coverage` lists them)",
            t.coverage.clone(),
        );
        registry.register(
            "watched_inodes",
            "Watched directories and files matched by inode",
            t.watched_inodes.clone(),
        );
        t
    }

    /// The `tls_coverage` gauges, for the thread that computes them.
    pub fn coverage(&self) -> CoverageMetrics {
        CoverageMetrics(self.coverage.clone())
    }
}

/// `nhiwatch_tls_coverage`, owned by the coverage thread.
#[derive(Clone)]
pub struct CoverageMetrics(Family<CoverageLabel, Gauge>);

impl CoverageMetrics {
    /// Processes per TLS stack and coverage, from the last /proc pass.
    pub fn set(&self, counts: &[(super::coverage::Stack, bool, usize)]) {
        for (stack, covered, n) in counts {
            self.0
                .get_or_create(&CoverageLabel {
                    stack: stack.name(),
                    covered: if *covered { "true" } else { "false" },
                })
                .set(*n as i64);
        }
    }
}

impl SensorTelemetry {
    pub fn lost(&self, kind: &'static str, cpu: usize, n: u64) {
        self.lost
            .get_or_create(&LostLabel {
                kind,
                cpu: cpu.to_string(),
            })
            .inc_by(n);
        self.ring_full.inc_by(n);
    }

    pub fn anomaly(&self, reason: &'static str, n: u64) {
        self.anomalies
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
        if FAILURES.contains(&reason) {
            self.stage.errors.inc_by(n);
        }
    }

    /// Publishes each sensor's verdict (`sensor_degraded`, one log line per change) and keeps
    /// the daemon not ready while a sensor in `required` is not attached.
    pub fn health(&mut self, health: &[SensorHealth], required: &[String]) {
        let disabled: Vec<&str> = health
            .iter()
            .filter(|h| h.disabled)
            .map(|h| h.sensor)
            .collect();
        for h in health {
            if h.disabled {
                let gauge = self
                    .disabled
                    .get_or_create(&SensorLabel { sensor: h.sensor });
                if gauge.set(1) == 0 {
                    tracing::info!(sensor = h.sensor, "sensor disabled by the settings");
                }
                continue;
            }
            let now = h.failure.as_ref().map(|f| f.cause);
            let before = self.last_health.insert(h.sensor, now);
            if before == Some(now) {
                continue;
            }
            if let Some(Some(old)) = before {
                self.degraded
                    .get_or_create(&DegradedLabel {
                        sensor: h.sensor,
                        cause: old.name(),
                    })
                    .set(0);
            }
            let is_required = required.iter().any(|r| r == h.sensor);
            match &h.failure {
                Some(f) => {
                    self.degraded
                        .get_or_create(&DegradedLabel {
                            sensor: h.sensor,
                            cause: f.cause.name(),
                        })
                        .set(1);
                    tracing::warn!(sensor = h.sensor, required = is_required, cause = %f.cause, reason = %f.detail, "sensor degraded");
                }
                None if before.is_some() => {
                    tracing::info!(sensor = h.sensor, "sensor attached");
                }
                None => {}
            }
        }
        self.readiness.set_note(
            (!disabled.is_empty())
                .then(|| format!("sensors disabled by the settings: {}", disabled.join(", "))),
        );
        let missing = super::health::missing(health, required);
        self.readiness.set_blocked((!missing.is_empty()).then(|| {
            let each: Vec<String> = missing
                .iter()
                .map(|h| {
                    let f = h.failure.as_ref().expect("missing means failed");
                    format!("\n  {}: {f}", h.sensor)
                })
                .collect();
            format!(
                "required sensors not attached (sensors.required):{}",
                each.concat()
            )
        }));
    }

    /// The hold's counters.
    pub fn hold(&self) -> &HoldMetrics {
        &self.hold
    }

    /// A probe detached on purpose (its Go program's last process exited): its series goes.
    pub fn probe_gone(&self, probe: &str, target: &str) {
        self.attached.remove(&ProbeLabel {
            probe: probe.into(),
            target: target.into(),
        });
    }

    pub fn probe(&self, probe: &str, target: &str, attached: bool) {
        self.attached
            .get_or_create(&ProbeLabel {
                probe: probe.into(),
                target: target.into(),
            })
            .set(i64::from(attached));
    }
}
