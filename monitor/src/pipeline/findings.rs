//! Observations → detectors → findings in the daemon: runs the engine, hands findings to the alert router (and stdout), records observations, applies rule reloads.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::{mpsc::Receiver, Arc},
    time::Instant,
};

use crate::{
    alerts::Alerts,
    contracts::RuleSet,
    detect::{finding::Finding, telemetry::DetectTelemetry, Engine, EngineStats},
    events::observation::Observation,
    metrics::{LatencyQuantiles, Registry},
    output::Stdout,
};

pub struct FindingsStage {
    engine: Engine,
    metrics: DetectTelemetry,
    /// Kernel timestamp → finding judged, by `stage` ("finding").
    latency: Arc<LatencyQuantiles>,
    /// Observations that could not be written to the recording.
    record_dropped: prometheus_client::metrics::counter::Counter,
    /// Routes findings to the SIEM sinks; None sends them nowhere but stdout.
    alerts: Option<Alerts>,
    /// Scratch: what the engine and the router produced for the observation or tick at hand.
    pending: Vec<Finding>,
    /// Findings as native JSON lines on standard output (`alerts.stdout`).
    stdout: Option<Stdout>,
    record: Option<BufWriter<File>>,
    reloads: Option<Receiver<RuleSet>>,
    reported: EngineStats,
    last_evicted_findings: u64,
    store: Option<crate::store::Store>,
    /// The fleet worker (`fleet:`): fed every observation without waiting, its findings routed
    /// here like the engine's.
    fleet: Option<crate::fleet::worker::FleetHandle>,
    last_persist: Instant,
    persists: u64,
}

/// Opens a file for appending, created 0600: findings and recordings describe what identities did.
fn append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl FindingsStage {
    /// `record` is opened here so a bad path fails the start, not later.
    pub fn new(
        engine: Engine,
        registry: &Registry,
        stdout: Option<Stdout>,
        record: Option<PathBuf>,
        record_dropped: prometheus_client::metrics::counter::Counter,
    ) -> std::io::Result<FindingsStage> {
        let metrics = DetectTelemetry::register(registry);
        let open = |p: &PathBuf| {
            append(p)
                .map(|f| BufWriter::with_capacity(64 << 10, f))
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        Ok(FindingsStage {
            alerts: None,
            record: record.as_ref().map(open).transpose()?,
            engine,
            latency: registry.summary(
                "pipeline_latency_seconds",
                "Kernel timestamp to finding judged, by stage, since the start",
                "stage",
            ),
            record_dropped,
            metrics,
            pending: Vec::new(),
            stdout,
            reloads: None,
            reported: EngineStats::default(),
            last_evicted_findings: 0,
            store: None,
            fleet: None,
            last_persist: Instant::now(),
            persists: 0,
        })
    }

    pub fn with_reloads(mut self, rx: Receiver<RuleSet>) -> FindingsStage {
        self.reloads = Some(rx);
        self
    }

    pub fn with_alerts(mut self, alerts: Alerts) -> FindingsStage {
        self.alerts = Some(alerts);
        self
    }

    /// The router, for its asynchronous shutdown once the last findings were routed.
    pub fn take_alerts(&mut self) -> Option<Alerts> {
        self.alerts.take()
    }

    /// Learned state is restored from and written to this store.
    pub fn with_store(mut self, store: crate::store::Store) -> FindingsStage {
        self.store = Some(store);
        self
    }

    pub fn with_fleet(mut self, fleet: crate::fleet::worker::FleetHandle) -> FindingsStage {
        self.fleet = Some(fleet);
        self
    }

    pub fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    pub fn observe(&mut self, o: &Observation) {
        self.metrics.observation(o.kind());
        if let Some(rec) = self.record.as_mut() {
            let ok = serde_json::to_writer(&mut *rec, o).is_ok() && rec.write_all(b"\n").is_ok();
            if !ok {
                self.record_dropped.inc();
            }
        }
        if let Some(f) = &self.fleet {
            f.observe(o);
        }
        let before = self.pending.len();
        self.engine.observe(o, &mut self.pending);
        if self.pending.len() > before {
            // Kernel timestamp → judged; first occurrences only (summaries wait for their window).
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            let ns = u64::try_from(now.saturating_sub(o.time)).unwrap_or(0);
            for f in &self.pending[before..] {
                if f.phase == crate::detect::finding::Phase::Opened {
                    self.latency.record("finding", ns);
                }
            }
            self.defer_to_fleet(before);
        }
        self.written(before);
    }

    /// With `fleet:`, the local findings every node would raise alike (`fleet::DEDUPED_FLEET_WIDE`)
    /// go to the fleet worker's claim instead, and come back through `drain` once claimed; a
    /// full queue leaves them here, raised as without `fleet:`.
    fn defer_to_fleet(&mut self, from: usize) {
        let Some(fleet) = &self.fleet else { return };
        let mut i = from;
        while i < self.pending.len() {
            if crate::fleet::deduped_fleet_wide(&self.pending[i]) {
                let f = self.pending.remove(i);
                if let Some(back) = fleet.defer(f) {
                    self.pending.insert(i, back);
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
    }

    /// Counts the findings from `pending[from..]` and routes them to the sinks and stdout (the
    /// rate limit may hold some back: they are reported by NHI-090).
    fn written(&mut self, from: usize) {
        for f in self.pending.get(from..).unwrap_or_default() {
            if f.phase == crate::detect::finding::Phase::Opened {
                if let Some(r) = crate::detect::finding::Rule::from_id(&f.rule.id) {
                    self.metrics.finding(r);
                }
            }
        }
        if let Some(a) = self.alerts.as_mut() {
            a.route(&mut self.pending, from);
        }
        if let Some(out) = &self.stdout {
            for f in self.pending.get(from..).unwrap_or_default() {
                out.write(f);
            }
        }
        self.pending.truncate(from);
    }

    /// Once per batch: new rules, closed dedup windows, metrics, flushes, periodic persistence.
    pub fn tick(&mut self, now_ns: i64) {
        if let Some(rx) = &self.reloads {
            let mut latest = None;
            while let Ok(set) = rx.try_recv() {
                latest = Some(set);
            }
            if let Some(set) = latest {
                self.engine.set_rules(set);
                if let Some(f) = &self.fleet {
                    f.set_rules(self.engine.compiled());
                }
                // The old rules were dropped just now, on this thread's arena.
                crate::input::release_freed_memory();
            }
        }
        let before = self.pending.len();
        self.engine.advance(now_ns, &mut self.pending);
        self.defer_to_fleet(before);
        if let Some(f) = &self.fleet {
            f.drain(&mut self.pending);
        }
        if let Some(a) = self.alerts.as_mut() {
            a.tick(now_ns, &mut self.pending);
        }
        self.written(before);
        self.update_metrics();
        if let Some(w) = self.record.as_mut() {
            let _ = w.flush();
        }
        if let Some(out) = &self.stdout {
            out.flush();
        }
        if self.last_persist.elapsed() >= self.engine_persist_interval() {
            let _ = self.persist();
        }
    }

    fn engine_persist_interval(&self) -> std::time::Duration {
        self.engine.config().persist_interval
    }

    fn update_metrics(&mut self) {
        let d = &self.metrics;
        d.identities.set(self.engine.identities() as i64);
        d.credentials.set(self.engine.credentials() as i64);
        d.open_findings.set(self.engine.open_findings() as i64);
        let s = self.engine.stats.clone();
        let evicted_findings = self.engine.evicted_findings();
        for (what, now, before) in [
            (
                "identity",
                s.identities_evicted,
                self.reported.identities_evicted,
            ),
            (
                "credential",
                s.credentials_evicted,
                self.reported.credentials_evicted,
            ),
            ("open_finding", evicted_findings, self.last_evicted_findings),
        ] {
            if now > before {
                d.evicted(what, now - before);
            }
        }
        self.reported = s;
        self.last_evicted_findings = evicted_findings;
    }

    /// Writes what changed to the state database; a failure is logged and counted, and retried
    /// next time. True when the open findings are saved.
    pub fn persist(&mut self) -> bool {
        self.last_persist = Instant::now();
        let Some(store) = self.store.as_mut() else {
            return false;
        };
        let (keep_ids, keep_creds) = (
            self.engine.config().max_identities,
            self.engine.config().max_credentials,
        );
        self.persists += 1;
        // The database is bounded like memory: what memory evicted ages out on disk too.
        let prune = self.persists % 20 == 1;
        let r = self.engine.persist(|ids, creds| {
            store.save(ids, creds, &[], &[])?;
            if prune {
                let (i, c) = store.prune(keep_ids, keep_creds)?;
                if i + c > 0 {
                    tracing::info!(
                        identities = i,
                        credentials = c,
                        "pruned the oldest learned state"
                    );
                }
            }
            Ok::<(), crate::store::StoreError>(())
        });
        if let Err(e) = &r {
            tracing::warn!(error = %e, "writing learned state failed; retrying at the next interval");
        }
        // The open findings' windows are learned state too: saved, a restart neither raises
        // them again nor closes them early.
        let open = self
            .engine
            .persist_open(|dedup, identity| store.save_open(dedup, identity));
        if let Err(e) = &open {
            tracing::warn!(error = %e, "writing the open findings failed; retrying at the next interval");
        }
        self.metrics.state_write(r.is_ok() && open.is_ok());
        open.is_ok()
    }

    /// Shutdown: persist, flush. Saved open findings stay open for the next start; with no
    /// state database, or one that cannot be written, they close now and their summaries go
    /// out rather than be lost.
    pub fn finish(&mut self) {
        let before = self.pending.len();
        if !self.persist() {
            self.engine.finish(&mut self.pending);
        }
        self.defer_to_fleet(before);
        if let Some(f) = self.fleet.as_mut() {
            f.stop(&mut self.pending);
        }
        if let Some(a) = self.alerts.as_mut() {
            a.finish(&mut self.pending);
        }
        self.written(before);
        if let Some(w) = self.record.as_mut() {
            let _ = w.flush();
        }
        if let Some(out) = &self.stdout {
            out.flush();
        }
    }
}
