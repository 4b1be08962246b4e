//! The daemon's fleet worker: takes observations from the pipeline through a bounded queue (never waiting: a full queue drops and counts), gives the fleet findings back to the pipeline's alert hand-off.

use std::{
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    time::{Duration, Instant},
};

use super::{telemetry::FleetTelemetry, Fleet};
use crate::{
    detect::{compiled::Compiled, finding::Finding},
    events::observation::Observation,
};

enum Msg {
    Observation(Box<Observation>),
    /// A local finding claimed fleet-wide before it goes out (`DEDUPED_FLEET_WIDE`).
    Finding(Box<Finding>),
    Rules(Arc<Compiled>),
}

/// The pipeline's end: `observe` and `drain` never block.
pub struct FleetHandle {
    tx: Option<SyncSender<Msg>>,
    findings: Receiver<Finding>,
    telemetry: FleetTelemetry,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FleetHandle {
    pub fn observe(&self, o: &Observation) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Observation(Box::new(o.clone()))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.telemetry.buffer_full.inc();
            }
            Err(TrySendError::Disconnected(_)) => {
                self.telemetry.stage.errors.inc();
            }
        }
    }

    /// Hands a local finding of a rule in `fleet::DEDUPED_FLEET_WIDE` to the fleet-wide claim;
    /// gives it back when the queue is full (it then goes out as without `fleet:`).
    pub fn defer(&self, f: Finding) -> Option<Finding> {
        let Some(tx) = &self.tx else { return Some(f) };
        match tx.try_send(Msg::Finding(Box::new(f))) {
            Ok(()) => None,
            Err(
                TrySendError::Full(Msg::Finding(f)) | TrySendError::Disconnected(Msg::Finding(f)),
            ) => Some(*f),
            Err(_) => None,
        }
    }

    pub fn set_rules(&self, rules: Arc<Compiled>) {
        if let Some(tx) = &self.tx {
            // A full queue delays the new rules to the next reload; they are rare.
            let _ = tx.try_send(Msg::Rules(rules));
        }
    }

    /// Fleet findings raised since the last call.
    pub fn drain(&self, out: &mut Vec<Finding>) {
        while let Ok(f) = self.findings.try_recv() {
            out.push(f);
        }
    }

    /// Stops the worker after one last write (bounded by `fleet.timeout`), then hands what it
    /// raised meanwhile.
    pub fn stop(&mut self, out: &mut Vec<Finding>) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.drain(out);
    }
}

impl Drop for FleetHandle {
    fn drop(&mut self) {
        self.tx = None;
    }
}

/// Starts the worker thread with its own runtime.
pub fn spawn(mut fleet: Fleet, buffer: usize, flush: Duration) -> std::io::Result<FleetHandle> {
    let (tx, rx) = mpsc::sync_channel::<Msg>(buffer);
    let (ftx, frx) = mpsc::sync_channel::<Finding>(4096);
    let telemetry = fleet.telemetry.clone();
    let t = telemetry.clone();
    let thread = std::thread::Builder::new()
        .name("nhiwatch-fleet".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "fleet worker: no runtime; fleet detection is off");
                    return;
                }
            };
            let mut next = Instant::now() + flush;
            let mut found = Vec::new();
            loop {
                let wait = next.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(Msg::Observation(o)) => {
                        fleet.add(&o);
                        continue;
                    }
                    Ok(Msg::Finding(f)) => {
                        fleet.defer(*f);
                        continue;
                    }
                    Ok(Msg::Rules(r)) => {
                        fleet.set_rules(r);
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        rt.block_on(fleet.flush_all(&mut found));
                        send(&ftx, &mut found, &t);
                        return;
                    }
                }
                // The clock moves for a quiet node too: windows expire, claims end.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i64);
                fleet.now = fleet.now.max(now);
                rt.block_on(fleet.flush(&mut found));
                send(&ftx, &mut found, &t);
                next = Instant::now() + flush;
            }
        })?;
    Ok(FleetHandle {
        tx: Some(tx),
        findings: frx,
        telemetry,
        thread: Some(thread),
    })
}

fn send(tx: &SyncSender<Finding>, found: &mut Vec<Finding>, t: &FleetTelemetry) {
    for f in found.drain(..) {
        if tx.try_send(f).is_err() {
            t.stage.dropped("findings_full").inc();
        }
    }
}
