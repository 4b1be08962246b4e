//! The Prometheus registry that stages report into and the HTTP endpoint that serves it (/metrics, /healthz, /readyz); it knows no stage.
//!
//! Each stage owns its handles: it registers its families here when it is built and keeps the
//! counters it updates. Every stage also takes one [`StageTelemetry`] (the shared contract:
//! received / emitted / errors / dropped{reason}, labelled by `stage`), so a dashboard can follow
//! one event from the kernel to the SIEM and see where it was lost.

mod label;
pub mod latency;
mod stage;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
};

use prometheus_client::{encoding::text::encode, metrics::gauge::Gauge, registry::Metric};
use serde::Deserialize;

pub use label::{write_escaped, LabelText, MAX_LABEL_BYTES};
pub use latency::LatencyQuantiles;
pub use stage::StageTelemetry;

/// The `metrics:` settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
    /// Distinct (identity, data source) series of `nhiwatch_api_calls_by_identity_total`; 0 disables it.
    pub identity_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            identity_series: 500,
        }
    }
}

/// Every family the daemon exports, and its readiness. Stages register at start (a write lock,
/// taken a few dozen times in the daemon's life); a scrape takes the read lock; the hot path only
/// touches the atomics inside the handles the stages keep.
pub struct Registry {
    inner: RwLock<prometheus_client::registry::Registry>,
    /// Summaries written by hand (prometheus-client 0.23 has no summary type), in order.
    summaries: Mutex<Vec<Summary>>,
    stages: stage::Families,
    readiness: Readiness,
}

/// Whether the daemon is ready: it started, and no stage reported something that keeps it
/// from doing its job (the sensors: a required sensor not attached). A cheap handle: a stage
/// keeps a clone and reports from its own thread.
#[derive(Clone)]
pub struct Readiness(Arc<ReadinessState>);

struct ReadinessState {
    started: AtomicBool,
    /// Why not, for the 503 body; `None` when nothing is missing.
    blocked: Mutex<Option<String>>,
    /// A line added to the body either way (e.g. sensors turned off on purpose).
    note: Mutex<Option<String>>,
    /// `nhiwatch_ready`, 1 when `/readyz` answers 200.
    gauge: Gauge,
}

impl Readiness {
    fn new() -> Readiness {
        Readiness(Arc::new(ReadinessState {
            started: AtomicBool::new(false),
            blocked: Mutex::new(None),
            note: Mutex::new(None),
            gauge: Gauge::default(),
        }))
    }

    /// `Some(why)`: not ready, and `why` is what `/readyz` says; `None`: nothing is missing.
    pub fn set_blocked(&self, why: Option<String>) {
        *self.0.blocked.lock().unwrap_or_else(|e| e.into_inner()) = why;
        self.publish();
    }

    /// A line `/readyz` adds to its answer, ready or not; `None`: none.
    pub fn set_note(&self, note: Option<String>) {
        *self.0.note.lock().unwrap_or_else(|e| e.into_inner()) = note;
    }

    pub fn is_ready(&self) -> bool {
        self.answer().0
    }

    /// Ready or not, and the body `/readyz` answers with.
    pub fn answer(&self) -> (bool, String) {
        if !self.0.started.load(Ordering::Acquire) {
            return (false, "starting\n".into());
        }
        let note = match &*self.0.note.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(n) => format!("{n}\n"),
            None => String::new(),
        };
        match &*self.0.blocked.lock().unwrap_or_else(|e| e.into_inner()) {
            None => (true, format!("ready\n{note}")),
            Some(why) => (false, format!("not ready: {why}\n{note}")),
        }
    }

    fn publish(&self) {
        self.0.gauge.set(i64::from(self.is_ready()));
    }
}

struct Summary {
    name: String,
    help: &'static str,
    quantiles: Arc<LatencyQuantiles>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        let mut inner = prometheus_client::registry::Registry::with_prefix("nhiwatch");
        inner.register(
            "build",
            "Build information",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        );
        let stages = stage::Families::default();
        stages.register(&mut inner);
        let readiness = Readiness::new();
        inner.register(
            "ready",
            "1 when /readyz answers 200: started, and every sensor in sensors.required attached",
            readiness.0.gauge.clone(),
        );
        Registry {
            inner: RwLock::new(inner),
            summaries: Mutex::new(Vec::new()),
            stages,
            readiness,
        }
    }

    /// Adds a family under `nhiwatch_NAME`; the caller keeps the (cheaply cloned) handle.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// The shared received / emitted / errors / dropped series of one stage.
    pub fn stage(&self, name: &'static str) -> StageTelemetry {
        self.stages.stage(name)
    }

    /// A latency summary `nhiwatch_NAME` labelled by `label`, exported after every other family.
    pub fn summary(
        &self,
        name: &str,
        help: &'static str,
        label: &'static str,
    ) -> Arc<LatencyQuantiles> {
        let quantiles = Arc::new(LatencyQuantiles::new(label));
        self.summaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Summary {
                name: format!("nhiwatch_{name}"),
                help,
                quantiles: quantiles.clone(),
            });
        quantiles
    }

    /// The daemon has started: ready from now on, unless a stage says otherwise.
    pub fn set_ready(&self) {
        self.readiness.0.started.store(true, Ordering::Release);
        self.readiness.publish();
    }

    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// The handle a stage reports what keeps the daemon from being ready through.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(
            &mut out,
            &self.inner.read().unwrap_or_else(|e| e.into_inner()),
        )
        .expect("writing to a String cannot fail");
        // The summaries go before `# EOF` (a Collector could only label gauges, which Prometheus
        // lints reject).
        let eof = out.rfind("# EOF").unwrap_or(out.len());
        let mut summaries = String::new();
        for s in self
            .summaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            s.quantiles.encode(&s.name, s.help, &mut summaries);
        }
        out.insert_str(eof, &summaries);
        out
    }
}

/// Serves /metrics, /healthz and /readyz until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Registry>) -> anyhow::Result<()> {
    use axum::{http::StatusCode, response::IntoResponse, routing::get, Router};
    let m = metrics.clone();
    let r = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    match r.readiness.answer() {
                        (true, body) => (StatusCode::OK, body).into_response(),
                        (false, body) => (StatusCode::SERVICE_UNAVAILABLE, body).into_response(),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics endpoint: cannot listen on {addr}: {e}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let r = Registry::new();
        let c = Counter::<u64>::default();
        r.register("events", "Kernel events", c.clone());
        c.inc();
        let g = Gauge::<i64>::default();
        r.register("processes", "Entries", g.clone());
        g.set(3);
        let text = r.render();
        assert!(text.contains("nhiwatch_events_total 1"), "{text}");
        assert!(text.contains("nhiwatch_processes 3"), "{text}");
        assert!(text.contains("nhiwatch_build_info{version="), "{text}");
    }

    #[test]
    fn latency_summaries_come_before_eof() {
        let r = Registry::new();
        let q = r.summary("pipeline_latency_seconds", "Kernel to finding", "stage");
        let _ = r.summary("alert_latency_seconds", "Kernel to sink", "sink");
        q.record("finding", 1_500_000);
        let text = r.render();
        let summary = text
            .find("# TYPE nhiwatch_pipeline_latency_seconds summary")
            .expect("summary family");
        let eof = text.rfind("# EOF").expect("# EOF");
        assert!(summary < eof && text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("nhiwatch_pipeline_latency_seconds_count{stage=\"finding\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE nhiwatch_alert_latency_seconds summary"));
    }

    #[test]
    fn readiness_starts_false() {
        let r = Registry::new();
        assert!(!r.is_ready());
        r.set_ready();
        assert!(r.is_ready());
    }

    #[test]
    fn a_blocked_stage_keeps_the_daemon_not_ready_and_says_why() {
        let r = Registry::new();
        let handle = r.readiness();
        handle.set_blocked(Some("required sensors not attached: files".into()));
        r.set_ready();
        assert!(!r.is_ready());
        let (ok, body) = handle.answer();
        assert!(!ok && body.contains("files"), "{body}");
        assert!(r.render().contains("nhiwatch_ready 0"));
        handle.set_blocked(None);
        assert!(r.is_ready());
        assert!(r.render().contains("nhiwatch_ready 1"));
    }
}
