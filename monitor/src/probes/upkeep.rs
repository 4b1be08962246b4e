//! Sensor upkeep thread: TLS library discovery for new processes, watch-table refresh, kernel counters → metrics.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    path::PathBuf,
    sync::{mpsc::Receiver, mpsc::RecvTimeoutError},
    time::{Duration, Instant},
};

use super::{abi::*, telemetry::SensorTelemetry, Sensors};
use crate::events::EventKind;

/// What the pipeline asks of the upkeep thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpkeepRequest {
    /// A process exec'd: look for TLS libraries in its mappings.
    ScanProcess(u32),
}

/// When to look at a new process's mappings again: the loader maps libraries
/// right after exec, and programs like python load libssl later with dlopen.
const SCAN_DELAYS: [Duration; 3] = [
    Duration::from_millis(0),
    Duration::from_millis(150),
    Duration::from_secs(2),
];
const COUNTER_PERIOD: Duration = Duration::from_secs(1);
const WATCH_PERIOD: Duration = Duration::from_secs(30);
/// Pending scans at most; beyond that requests are dropped and counted.
const MAX_PENDING: usize = 16384;

pub struct Upkeep {
    sensors: Sensors,
    metrics: SensorTelemetry,
    proc_root: PathBuf,
    last_counters: Vec<Vec<u64>>,
    published: usize,
}

impl Upkeep {
    pub fn new(sensors: Sensors, metrics: SensorTelemetry, proc_root: PathBuf) -> Upkeep {
        let mut u = Upkeep {
            sensors,
            metrics,
            proc_root,
            last_counters: Vec::new(),
            published: 0,
        };
        u.publish_statuses();
        u.export_counters();
        u
    }

    /// Looks at every running process once (libraries of processes that started before us).
    pub fn scan_all(&mut self) {
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return;
        };
        let pids: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for pid in pids {
            self.scan(pid);
        }
    }

    fn scan(&mut self, pid: u32) {
        for t in self.sensors.tls.scan_process(&self.proc_root, pid) {
            self.sensors.attach_tls(&t);
        }
        self.publish_statuses();
    }

    fn publish_statuses(&mut self) {
        for s in &self.sensors.statuses[self.published..] {
            self.metrics.probe(&s.probe, &s.target, s.error.is_none());
            match &s.error {
                None => tracing::debug!(probe = %s.probe, target = %s.target, "attached"),
                Some(e) => {
                    tracing::warn!(probe = %s.probe, target = %s.target, cause = %e.cause, error = %e.detail, "probe not attached")
                }
            }
        }
        if self.published < self.sensors.statuses.len() || self.published == 0 {
            let health = super::health::sensor_health(&self.sensors.statuses);
            self.metrics.health(&health, &self.sensors.required);
        }
        self.published = self.sensors.statuses.len();
        self.metrics
            .tls_targets
            .set(self.sensors.tls_targets as i64);
    }

    /// Adds what the kernel counted since last time to the Prometheus counters.
    pub fn export_counters(&mut self) {
        let now = self.sensors.read_counters();
        for (slot, cpus) in now.iter().enumerate() {
            for (cpu, &v) in cpus.iter().enumerate() {
                let before = self
                    .last_counters
                    .get(slot)
                    .and_then(|c| c.get(cpu))
                    .copied()
                    .unwrap_or(0);
                let delta = v.saturating_sub(before);
                if delta == 0 && !self.last_counters.is_empty() {
                    continue;
                }
                let slot = slot as u32;
                if let Some(kind) = EventKind::from_raw(slot) {
                    self.metrics.lost(kind.name(), cpu, delta);
                } else if let Some(reason) = anomaly_name(slot) {
                    self.metrics.anomaly(reason, delta);
                }
            }
        }
        self.last_counters = now;
    }

    /// Serves requests until the pipeline hangs up.
    pub fn run(mut self, rx: Receiver<UpkeepRequest>) {
        let mut due: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
        let mut next_counters = Instant::now() + COUNTER_PERIOD;
        let mut next_watch = Instant::now() + WATCH_PERIOD;
        loop {
            let now = Instant::now();
            while due.peek().is_some_and(|Reverse((t, _))| *t <= now) {
                let Reverse((_, pid)) = due.pop().expect("peeked");
                self.scan(pid);
            }
            if now >= next_counters {
                self.export_counters();
                next_counters = now + COUNTER_PERIOD;
            }
            if now >= next_watch {
                let stats = self.sensors.refresh_watches();
                self.metrics.watched_inodes.set(stats.inodes as i64);
                next_watch = now + WATCH_PERIOD;
            }
            let wake = due
                .peek()
                .map(|Reverse((t, _))| *t)
                .unwrap_or(next_counters)
                .min(next_counters);
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(UpkeepRequest::ScanProcess(pid)) => {
                    if due.len() + SCAN_DELAYS.len() > MAX_PENDING {
                        self.metrics.scan_pending_full.inc();
                        continue;
                    }
                    let t = Instant::now();
                    for d in SCAN_DELAYS {
                        due.push(Reverse((t + d, pid)));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.export_counters();
                    return;
                }
            }
        }
    }
}

fn anomaly_name(slot: u32) -> Option<&'static str> {
    Some(match slot {
        NW_CNT_TLS_TRUNCATED => "tls_capture_truncated",
        NW_CNT_TLS_READ_FAIL => "tls_read_failed",
        NW_CNT_PATH_READ_FAIL => "path_read_failed",
        NW_CNT_TCP_UNATTRIBUTED => "tcp_unattributed",
        NW_CNT_MAP_FULL => "map_full",
        _ => return None,
    })
}
