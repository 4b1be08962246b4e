//! One sink's delivery loop: takes alerts from its spool in order, gives them to the transport in batches, retries with capped exponential backoff and jitter, acknowledges only what was delivered, and keeps the sink's health and metrics.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;

use super::telemetry::{AlertTelemetry, SinkMetrics};
use super::{
    episode::{Episode, Log, SUMMARY_EVERY},
    sinks::{SinkConfig, SinkError, Transport},
    spool::{Spool, SpoolError},
};

/// Good sends at a 413-lowered batch size before a doubled one is tried: a receiver whose limit
/// really is lower then costs one refused request in this many.
const CAP_PROBE_AFTER: u32 = 16;

/// How often an idle sink's receiver is checked (the `alert_sink_up` gauge).
const HEALTH_INTERVAL: Duration = Duration::from_secs(10);

type SyncJob = tokio::task::JoinHandle<Result<(), super::spool::SpoolError>>;

/// Starts syncing the spool on a blocking thread: an fdatasync can take tens of milliseconds on a
/// busy disk, and neither the runtime's workers, the pipeline nor this sink's deliveries should
/// wait for it (they did: every sink stalled together at each sync, BENCHMARKS.md benchmark 5).
fn start_sync(spool: &Arc<Spool>) -> SyncJob {
    let s = spool.clone();
    tokio::task::spawn_blocking(move || s.sync())
}

async fn finish_sync(job: SyncJob, name: &str, writes: &mut Episode) {
    match job.await {
        Ok(Ok(())) => spool_written(writes, name),
        Ok(Err(e)) => spool_not_written(writes, name, &e, "spool sync failed"),
        Err(e) => tracing::warn!(sink = %name, error = %e, "spool sync did not run"),
    }
}

/// A sync or cursor write failed (a full or failing disk): logged once per episode, then at
/// most once a minute, as every batch and every sync would fail alike.
fn spool_not_written(writes: &mut Episode, name: &str, e: &SpoolError, what: &str) {
    match writes.failed() {
        Log::Start => {
            tracing::warn!(sink = %name, error = %e, "{what}: delivered alerts may be sent again after a restart")
        }
        Log::Summary { failures, since } => {
            tracing::warn!(sink = %name, error = %e, failures, since = %since, "{what}: {failures} more failures since {since}")
        }
        Log::Quiet => {}
    }
}

fn spool_written(writes: &mut Episode, name: &str) {
    if let Some(failures) = writes.succeeded() {
        tracing::info!(sink = %name, failures, "spool sync and cursor written again");
    }
}

pub struct Settings {
    name: String,
    batch_max: usize,
    retry_initial: Duration,
    retry_max: Duration,
    timeout: Duration,
    /// How often the spool is pushed to the disk (fdatasync, cursor).
    pub sync_interval: Duration,
}

impl From<&SinkConfig> for Settings {
    fn from(c: &SinkConfig) -> Settings {
        Settings {
            name: c.name.clone(),
            batch_max: c.batch_max,
            retry_initial: c.retry_initial,
            retry_max: c.retry_max,
            timeout: c.timeout,
            sync_interval: Duration::from_secs(5),
        }
    }
}

/// A small xorshift for backoff jitter: sinks that failed together do not retry in lockstep.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        Jitter(seed | 1)
    }

    /// `d` scaled by a factor in [0.5, 1.0).
    fn spread(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let f = 0.5 + (self.0 % 1000) as f64 / 2000.0;
        d.mul_f64(f)
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Runs until `stop` carries a deadline and either the spool is empty or the deadline passed.
pub async fn run(
    set: Settings,
    mut transport: Transport,
    spool: Arc<Spool>,
    m: SinkMetrics,
    metrics: Arc<AlertTelemetry>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let mut reader = spool.reader();
    let mut backoff = set.retry_initial;
    let mut jitter = Jitter::new();
    let mut failing = false;
    let mut last_health = Instant::now();
    let mut last_sync = Instant::now();
    let mut syncing: Option<SyncJob> = None;
    let mut writes = Episode::new(SUMMARY_EVERY);
    // Alerts per send: `cap` is what the receiver's size limit allows (halved by a 413, doubled
    // again after CAP_PROBE_AFTER good sends at it, so one oversized alert or a receiver's
    // changed limit does not shrink batches for good), `limit` shrinks while a refused batch is
    // split to find the alert it refuses.
    let mut cap = set.batch_max;
    let mut limit = cap;
    let mut good_at_cap = 0u32;
    let mut refusals = Refusals::default();
    m.up.delivering(true);
    loop {
        if last_sync.elapsed() >= set.sync_interval
            && syncing.as_ref().is_none_or(|j| j.is_finished())
        {
            if let Some(job) = syncing.take() {
                finish_sync(job, &set.name, &mut writes).await;
            }
            last_sync = Instant::now();
            syncing = Some(start_sync(&spool));
        }
        let deadline = *stop.borrow();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut bad = 0;
        let batch = match reader.read(&spool, limit, &mut bad) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(sink = %set.name, error = %e, "reading the alert spool failed; retrying");
                reader.rewind(spool.acked());
                if wait(&mut stop, Duration::from_secs(1)).await && deadline.is_some() {
                    break;
                }
                continue;
            }
        };
        if bad > 0 {
            tracing::warn!(sink = %set.name, lines = bad, "damaged lines in the alert spool skipped");
            metrics.dropped(&set.name, "spool_error").inc_by(bad);
        }
        if batch.alerts.is_empty() {
            if batch.end > spool.acked() {
                let _ = spool.ack(batch.end, batch.lines, batch.bytes);
            }
            if deadline.is_some() {
                break;
            }
            let idle = HEALTH_INTERVAL
                .saturating_sub(last_health.elapsed())
                .min(set.sync_interval);
            tokio::select! {
                _ = spool.notify.notified() => {}
                r = stop.changed() => {
                    if r.is_err() {
                        // The router is gone without a stop: the daemon is going down.
                        break;
                    }
                }
                _ = tokio::time::sleep(idle) => {
                    if last_health.elapsed() < HEALTH_INTERVAL {
                        continue;
                    }
                    last_health = Instant::now();
                    let ok = matches!(
                        tokio::time::timeout(set.timeout, transport.check()).await,
                        Ok(Ok(()))
                    );
                    m.up.delivering(ok);
                }
            }
            continue;
        }
        let budget = match deadline {
            Some(d) => set.timeout.min(d.saturating_duration_since(Instant::now())),
            None => set.timeout,
        };
        let n = batch.alerts.len() as u64;
        let result = match tokio::time::timeout(budget, transport.send(&batch.alerts)).await {
            Ok(r) => r,
            Err(_) => Err(SinkError::Transient(format!(
                "no answer within {}",
                humantime::format_duration(budget)
            ))),
        };
        match result {
            Ok(()) => {
                let done = now_ns();
                for a in batch.alerts.iter().filter(|a| a.fresh) {
                    let ns = done.saturating_sub(a.time_ns).max(0) as u64;
                    metrics.latency.record(&set.name, ns);
                }
                match spool.ack(batch.end, batch.lines, batch.bytes) {
                    Ok(()) => {}
                    Err(e) => {
                        spool_not_written(&mut writes, &set.name, &e, "alert cursor not saved")
                    }
                }
                m.sent(n);
                m.up.delivering(true);
                last_health = Instant::now();
                if failing {
                    tracing::info!(sink = %set.name, "alert sink recovered");
                    failing = false;
                }
                backoff = set.retry_initial;
                if cap < set.batch_max && limit == cap {
                    good_at_cap += 1;
                    if good_at_cap >= CAP_PROBE_AFTER {
                        cap = (cap * 2).min(set.batch_max);
                        good_at_cap = 0;
                    }
                }
                limit = (limit * 2).min(cap);
            }
            Err(SinkError::TooLarge(e)) if n > 1 => {
                cap = (batch.alerts.len() / 2).max(1);
                limit = cap;
                good_at_cap = 0;
                tracing::warn!(sink = %set.name, alerts = n, error = %e, batch_max = cap, "receiver refused a batch as too large; sending smaller batches");
                reader.rewind(spool.acked());
            }
            Err(SinkError::Rejected(_)) if n > 1 => {
                // One bad alert must not take its batch with it: halve until it stands alone.
                limit = (batch.alerts.len() / 2).max(1);
                reader.rewind(spool.acked());
            }
            Err(e @ (SinkError::Rejected(_) | SinkError::TooLarge(_))) => {
                let reason = if matches!(e, SinkError::TooLarge(_)) {
                    "too_large"
                } else {
                    "rejected"
                };
                refusals.log(&set.name, reason, &e);
                let _ = spool.ack(batch.end, batch.lines, batch.bytes);
                metrics.dropped(&set.name, reason).inc_by(n);
            }
            Err(e) => {
                m.failure();
                m.up.delivering(false);
                if !failing || backoff >= set.retry_max {
                    tracing::warn!(sink = %set.name, error = %e, retry_in = %humantime::format_duration(backoff), pending = spool.pending().0, "alert delivery failed; alerts stay spooled");
                }
                failing = true;
                reader.rewind(spool.acked());
                let pause = jitter.spread(backoff);
                backoff = (backoff * 2).min(set.retry_max);
                let pause = match deadline {
                    Some(d) => pause.min(d.saturating_duration_since(Instant::now())),
                    None => pause,
                };
                wait(&mut stop, pause).await;
            }
        }
    }
    let (left, _) = spool.pending();
    if left > 0 {
        tracing::info!(sink = %set.name, alerts = left, "undelivered alerts stay spooled for the next start");
    }
    if let Some(job) = syncing.take() {
        finish_sync(job, &set.name, &mut writes).await;
    }
    finish_sync(start_sync(&spool), &set.name, &mut writes).await;
}

/// Logs dropped alerts at most every 10 s, with the count since the last line: a receiver that
/// refuses everything (a wrong format, say) would otherwise log once per alert.
#[derive(Default)]
struct Refusals {
    last: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn log(&mut self, sink: &str, reason: &str, e: &SinkError) {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        tracing::error!(sink = %sink, reason, alerts = self.unlogged, error = %e, "receiver refused alerts one by one; dropped");
        self.last = Some(Instant::now());
        self.unlogged = 0;
    }
}

/// Sleeps for `d` or until `stop` changes; true when it changed.
async fn wait(stop: &mut watch::Receiver<Option<Instant>>, d: Duration) -> bool {
    tokio::select! {
        r = stop.changed() => {
            if r.is_err() {
                tokio::time::sleep(d).await;
            }
            r.is_ok()
        }
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};

    use super::*;
    use crate::{
        alerts::{
            sinks::{webhook::WebhookConfig, SinkKind},
            Format, Outgoing,
        },
        detect::finding::Severity,
    };

    /// A receiver with two limits real ones have: at most 8 alerts or 2,000 bytes per request
    /// (413), and it refuses for good any batch holding an alert it cannot take (400).
    async fn hook(State(got): State<Arc<Mutex<Vec<Vec<u64>>>>>, body: Bytes) -> StatusCode {
        let alerts: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        if alerts.len() > 8 || body.len() > 2000 {
            return StatusCode::PAYLOAD_TOO_LARGE;
        }
        if alerts.iter().any(|a| a["poison"] == true) {
            return StatusCode::BAD_REQUEST;
        }
        let ns = alerts.iter().map(|a| a["n"].as_u64().unwrap()).collect();
        got.lock().unwrap().push(ns);
        StatusCode::OK
    }

    fn alert(n: u64, body: String) -> Outgoing {
        Outgoing {
            time_ns: n as i64,
            fresh: false,
            severity: Severity::High,
            rule: "NHI-010".into(),
            dedup_key: format!("{n:016x}"),
            body,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_batches_are_split_and_only_the_refused_alert_is_dropped() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(got.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&dir.path().join("spool"), 1 << 20).unwrap());
        const TOTAL: u64 = 200;
        let (poison, huge) = ([7, 30], 19);
        for n in 0..TOTAL {
            let body = if poison.contains(&n) {
                format!("{{\"n\":{n},\"poison\":true}}")
            } else if n == huge {
                format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(3000))
            } else {
                format!("{{\"n\":{n}}}")
            };
            spool.append(&alert(n, body)).unwrap();
        }
        let mut cfg = super::super::sinks::SinkConfig::local_file();
        cfg.name = "hook".into();
        cfg.format = Format::Native;
        cfg.batch_max = 50;
        // A timeout is a delivery failure, which the test counts: on a busy machine a loopback
        // POST must not run into it.
        cfg.timeout = Duration::from_secs(60);
        cfg.kind = SinkKind::Webhook(WebhookConfig {
            url: format!("http://127.0.0.1:{port}/hook"),
            body: Default::default(),
            token_file: None,
            tls: None,
            index: None,
            sourcetype: None,
            allow_insecure_http: true,
        });
        let transport = Transport::open(&cfg, dir.path(), "host").unwrap();
        let metrics = Arc::new(AlertTelemetry::register(&crate::metrics::Registry::new()));
        let m = metrics.sink("hook");
        // A deadline from the start: the worker delivers what is spooled, then returns (it
        // returns as soon as the spool is empty; the deadline only bounds a hung test).
        let (_tx, stop) = watch::channel(Some(Instant::now() + Duration::from_secs(300)));
        run(
            Settings::from(&cfg),
            transport,
            spool.clone(),
            m.clone(),
            metrics.clone(),
            stop,
        )
        .await;

        let got = got.lock().unwrap().clone();
        let delivered: Vec<u64> = got.iter().flatten().copied().collect();
        let expected: Vec<u64> = (0..TOTAL)
            .filter(|n| !poison.contains(n) && *n != huge)
            .collect();
        assert_eq!(delivered, expected, "every other alert, once, in order");
        assert!(got.iter().all(|b| b.len() <= 8), "{got:?}");
        // Alert 19 alone is over the byte limit: it drives the batch size down to 1 on its way
        // out, and the size must grow back to the receiver's real limit afterwards.
        assert!(
            got.iter().any(|b| b[0] > huge && b.len() >= 4),
            "batching resumes after the oversized alert: {got:?}"
        );
        assert_eq!(m.sent_total(), expected.len() as u64);
        assert_eq!(metrics.dropped("hook", "rejected").get(), 2);
        assert_eq!(metrics.dropped("hook", "too_large").get(), 1);
        assert_eq!(m.failures_total(), 0, "a refusal is not a delivery failure");
        assert_eq!(spool.pending().0, 0);
    }
}
