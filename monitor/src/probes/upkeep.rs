//! Sensor upkeep thread: TLS library discovery for new processes, watch-table refresh, kernel counters → metrics.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    path::PathBuf,
    sync::{mpsc::Receiver, mpsc::RecvTimeoutError},
    time::{Duration, Instant},
};

use super::{
    abi::*,
    telemetry::SensorTelemetry,
    tls_hold::{kernel_dev, HOLD_DEADLINE},
    Sensors,
};
use crate::events::EventKind;

/// What the pipeline (and the hold reader) ask of the upkeep thread.
#[derive(Debug, Clone, Copy)]
pub enum UpkeepRequest {
    /// A process exec'd: look for TLS libraries in its mappings.
    ScanProcess(u32),
    /// A process maps a TLS library file not probed yet, and may be held until it is.
    TlsLibrary(nw_tls_hold),
    /// A process exited: the Go file it ran loses its probes if nobody runs it any more.
    ProcessExit(u32),
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
const COVERAGE_FIRST: Duration = Duration::from_secs(2);
/// Pending scans at most; beyond that requests are dropped and counted.
const MAX_PENDING: usize = 16384;
/// How long a Go file keeps its probes after its last process exited: a program run again
/// and again (a cron job, a probe loop) keeps them instead of paying attach and teardown each
/// time (teardown takes the kernel ≈ 0.1–0.2 s per uprobe, see `handoff.rs`).
pub const GO_DETACH_AFTER: Duration = Duration::from_secs(3);

pub struct Upkeep {
    sensors: Sensors,
    metrics: SensorTelemetry,
    proc_root: PathBuf,
    last_counters: Vec<Vec<u64>>,
    published: usize,
    /// Dropped when the upkeep thread ends, which ends the coverage thread.
    coverage_stop: Option<std::sync::mpsc::Sender<()>>,
    /// Go files whose last process exited, and when to release their probes if still unused.
    detach_due: Vec<(Instant, super::tls_libs::FileKey)>,
}

impl Upkeep {
    pub fn new(sensors: Sensors, metrics: SensorTelemetry, proc_root: PathBuf) -> Upkeep {
        let mut u = Upkeep {
            sensors,
            metrics,
            proc_root,
            last_counters: Vec::new(),
            published: 0,
            coverage_stop: None,
            detach_due: Vec::new(),
        };
        u.publish_statuses();
        u.export_counters();
        u
    }

    /// Every running process (their libraries were mapped before we started).
    fn running_pids(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    fn scan(&mut self, pid: u32) {
        for t in self.sensors.tls.scan_process(&self.proc_root, pid) {
            self.attach_and_mark(&t);
        }
        self.publish_statuses();
    }

    /// Attaches to a library file and tells the kernel side it no longer needs holding for.
    fn attach_and_mark(&mut self, t: &super::tls_libs::TlsTarget) {
        self.sensors.attach_tls(t);
        // The key of the file inspected (and attached through its open descriptor), which
        // stays right when the path it was found under is gone.
        let (dev, ino) = t.key;
        self.sensors.hold.mark_done(kernel_dev(dev), ino);
    }

    /// Marks every TLS library found so far (at start) as done: their users are not held.
    pub fn mark_known_libraries(&mut self) {
        let known: Vec<(u64, u64)> = self.sensors.tls.tls_files().collect();
        for (dev, ino) in known {
            self.sensors.hold.mark_done(kernel_dev(dev), ino);
        }
    }

    /// A process maps a library file not probed yet (and may be stopped): attach, then continue it.
    fn on_tls_library(&mut self, r: nw_tls_hold) {
        let base = self.proc_root.join(r.pid.to_string());
        let fd_path = base.join("fd").join(r.fd.to_string());
        // The path inside the process's root names the file in statuses and logs; the
        // descriptor itself (the kernel follows the link) when that is not the same file.
        let path = match std::fs::read_link(&fd_path) {
            Ok(link) if link.is_absolute() => {
                let inside = base
                    .join("root")
                    .join(link.strip_prefix("/").unwrap_or(&link));
                if same_file(&inside, &fd_path) {
                    inside
                } else {
                    fd_path
                }
            }
            _ => fd_path,
        };
        match self.sensors.tls.consider(&path) {
            Some(t) => self.attach_and_mark(&t),
            // Seen before under another name or not a TLS library; or already gone: look at
            // the process's mappings instead.
            None if !path.exists() => self.scan(r.pid),
            None => {}
        }
        self.publish_statuses();
        self.sensors.hold.mark_done(r.dev, r.ino);
        if r.held != 0 {
            if let Some(waited) = self.sensors.hold.release(r.pid) {
                self.metrics.hold().continued("released", waited);
            }
        }
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
            let health =
                super::health::sensor_health(&self.sensors.statuses, &self.sensors.disabled);
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

    /// Looks at every running process once, then serves requests until the pipeline hangs up.
    pub fn run(mut self, rx: Receiver<UpkeepRequest>) {
        // Holding starts now, with the libraries found at start marked as probed.
        self.mark_known_libraries();
        self.sensors.hold.beat();
        let mut due: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
        // Processes that started before us go through the queue, so that a process held at a
        // new library is served between them rather than after all of them.
        let start = Instant::now();
        for pid in self.running_pids() {
            due.push(Reverse((start, pid)));
        }
        let mut next_counters = Instant::now() + COUNTER_PERIOD;
        self.start_coverage();
        let mut next_watch = Instant::now() + WATCH_PERIOD;
        loop {
            let now = Instant::now();
            while due.peek().is_some_and(|Reverse((t, _))| *t <= now) {
                let Reverse((_, pid)) = due.pop().expect("peeked");
                self.scan(pid);
                while let Ok(req) = rx.try_recv() {
                    self.handle(req, &mut due);
                }
                if Instant::now() >= next_counters {
                    self.tick();
                    next_counters = Instant::now() + COUNTER_PERIOD;
                }
            }
            if now >= next_counters {
                self.tick();
                next_counters = now + COUNTER_PERIOD;
            }
            if self.detach_due.iter().any(|(t, _)| *t <= now) {
                self.detach_idle(now);
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
                .min(next_counters)
                .min(
                    self.detach_due
                        .iter()
                        .map(|(t, _)| *t)
                        .min()
                        .unwrap_or(next_counters),
                );
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(req) => self.handle(req, &mut due),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.release_held();
                    self.export_counters();
                    return;
                }
            }
        }
    }
}

impl Upkeep {
    fn handle(&mut self, req: UpkeepRequest, due: &mut BinaryHeap<Reverse<(Instant, u32)>>) {
        match req {
            UpkeepRequest::TlsLibrary(r) => self.on_tls_library(r),
            UpkeepRequest::ProcessExit(pid) => {
                if let Some(key) = self.sensors.process_exited(pid) {
                    self.detach_due
                        .push((Instant::now() + GO_DETACH_AFTER, key));
                }
            }
            UpkeepRequest::ScanProcess(pid) => {
                if due.len() + SCAN_DELAYS.len() > MAX_PENDING {
                    self.metrics.scan_pending_full.inc();
                    return;
                }
                let t = Instant::now();
                for d in SCAN_DELAYS {
                    due.push(Reverse((t + d, pid)));
                }
            }
        }
    }

    /// Which TLS stack each process with a TCP socket uses (`nhiwatch_tls_coverage`), on a
    /// thread of its own: a pass reads every process's descriptors and new executables, which
    /// must not delay a process held at a new library.
    fn start_coverage(&mut self) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let metrics = self.metrics.coverage();
        let proc_root = self.proc_root.clone();
        let spawned = std::thread::Builder::new()
            .name("nw-coverage".into())
            .spawn(move || {
                let mut scanner = super::coverage::CoverageScanner::default();
                let mut wait = COVERAGE_FIRST;
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(wait) {
                    let procs = scanner.scan(&proc_root);
                    metrics.set(&super::coverage::counts(&procs));
                    wait = WATCH_PERIOD;
                }
            });
        match spawned {
            Ok(_) => self.coverage_stop = Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "TLS coverage thread not started: nhiwatch_tls_coverage stays empty")
            }
        }
    }

    /// Releases the probes of the Go files due (if nobody runs them again meanwhile).
    fn detach_idle(&mut self, now: Instant) {
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.detach_due)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.detach_due = later;
        for (_, key) in ready {
            for (probe, target) in self.sensors.detach_go_if_idle(key, &self.proc_root) {
                self.metrics.probe_gone(&probe, &target);
            }
        }
        self.metrics
            .tls_targets
            .set(self.sensors.tls_targets as i64);
    }

    /// Once a second: counters, the hold's heartbeat, and continuing anyone held too long.
    fn tick(&mut self) {
        self.export_counters();
        self.sensors.hold.beat();
        for waited in self.sensors.hold.sweep(HOLD_DEADLINE) {
            self.metrics.hold().continued("expired", waited);
        }
    }

    /// Nobody is held from now on, and everyone still held is continued.
    fn release_held(&mut self) {
        for waited in self.sensors.hold.release_all() {
            self.metrics.hold().continued("stopped", waited);
        }
    }
}

impl Drop for Upkeep {
    /// Also when the thread unwinds: no process may stay stopped because of us.
    fn drop(&mut self) {
        self.release_held();
    }
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn anomaly_name(slot: u32) -> Option<&'static str> {
    Some(match slot {
        NW_CNT_TLS_TRUNCATED => "tls_capture_truncated",
        NW_CNT_TLS_READ_FAIL => "tls_read_failed",
        NW_CNT_TLS_SERVER_SKIPPED => "tls_server_calls_skipped",
        NW_CNT_PATH_READ_FAIL => "path_read_failed",
        NW_CNT_TCP_UNATTRIBUTED => "tcp_unattributed",
        NW_CNT_MAP_FULL => "map_full",
        NW_CNT_SOCK_NOT_HTTP => "socket_not_http",
        NW_CNT_SOCK_INBOUND => "socket_inbound",
        NW_CNT_SOCK_TRUNCATED => "socket_capture_truncated",
        NW_CNT_SOCK_READ_FAIL => "socket_read_failed",
        NW_CNT_GO_SOCK_UNRESOLVED => "go_tls_socket_unresolved",
        NW_CNT_GO_RET_UNMATCHED => "go_tls_return_unmatched",
        _ => return None,
    })
}
