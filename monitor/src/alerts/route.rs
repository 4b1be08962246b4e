//! Alert routing in the pipeline thread: takes findings, rate-limits them per (identity, rule), writes each to the spool of every sink whose minimum severity it meets, and raises NHI-090 (held back) and NHI-091 (spool full or unwritable).

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;

use super::{
    episode::{Episode, Log, SUMMARY_EVERY},
    sinks::Transport,
    spool::{Spool, SpoolError},
    telemetry::{AlertTelemetry, Dropped, SinkUp},
    worker, AlertsConfig, Format, Outgoing, RateLimitConfig,
};
use crate::{
    detect::finding::{dedup_key, Evidence, Finding, Phase, Rule, RuleRef, Severity},
    identity::WorkloadIdentity,
};

/// Keys the rate limiter tracks at most; beyond it new keys pass unlimited (and are counted).
const LIMITER_KEYS: usize = 100_000;

struct Entry {
    start: i64,
    sent: u32,
    held: u64,
    worst: Severity,
    identity: Arc<WorkloadIdentity>,
}

/// Fixed windows per (identity, rule), timed by the findings' own clock so replays agree.
pub struct RateLimiter {
    window_ns: i64,
    max: u32,
    entries: HashMap<(String, String), Entry>,
    /// Findings let through unlimited because the table was full.
    untracked: Counter,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig, untracked: Counter) -> RateLimiter {
        RateLimiter {
            window_ns: i64::try_from(cfg.window.as_nanos())
                .unwrap_or(i64::MAX)
                .max(1),
            max: cfg.max,
            entries: HashMap::new(),
            untracked,
        }
    }

    /// Whether `f` goes out. Summaries (one per dedup window) and the router's own alerts always do.
    pub fn allow(&mut self, f: &Finding) -> bool {
        if self.max == 0
            || f.phase == Phase::Summary
            || f.rule.id == Rule::AlertsRateLimited.id()
            || f.rule.id == Rule::AlertSpoolFull.id()
        {
            return true;
        }
        let key = (f.identity.id.clone(), f.rule.id.clone());
        let len = self.entries.len();
        let Some(e) = (match self.entries.get_mut(&key) {
            Some(e) => Some(e),
            None if len < LIMITER_KEYS => Some(self.entries.entry(key).or_insert(Entry {
                start: f.time,
                sent: 0,
                held: 0,
                worst: f.severity,
                identity: f.identity.clone(),
            })),
            None => None,
        }) else {
            if self.untracked.inc() == 0 {
                tracing::warn!(keys = LIMITER_KEYS, "the alert rate limiter tracks its maximum of (identity, rule) keys; alerts for new ones pass unlimited until windows close (nhiwatch_alert_rate_limit_untracked_total)");
            }
            return true;
        };
        if e.sent < self.max {
            e.sent += 1;
            return true;
        }
        e.held += 1;
        e.worst = e.worst.max(f.severity);
        false
    }

    /// Closes the windows that ended by `now`; each that held alerts back leaves an NHI-090.
    pub fn expire(&mut self, now: i64, out: &mut Vec<Finding>) {
        let window = self.window_ns;
        let max = self.max;
        self.entries.retain(|(_, rule), e| {
            if now.saturating_sub(e.start) < window {
                return true;
            }
            if e.held > 0 {
                out.push(held_back(e, rule, window, max));
            }
            false
        });
    }

    pub fn finish(&mut self, out: &mut Vec<Finding>) {
        self.expire(i64::MAX, out);
    }
}

fn held_back(e: &Entry, rule: &str, window_ns: i64, max: u32) -> Finding {
    let r = Rule::AlertsRateLimited;
    let window_s = (window_ns / 1_000_000_000).max(0) as u64;
    let start = e.start.to_string();
    Finding {
        kind: "finding".into(),
        time: e.start.saturating_add(window_ns),
        last_seen: e.start.saturating_add(window_ns),
        rule: RuleRef {
            id: r.id().into(),
            name: r.name().into(),
        },
        // As severe as the worst alert held back, so severity routing still lets it through.
        severity: e.worst,
        summary: format!(
            "{} more {rule} alerts for {} held back by the rate limit ({max} per {window_s} s)",
            e.held, e.identity.id
        ),
        identity: e.identity.clone(),
        contract: None,
        evidence: Evidence {
            metric: Some(format!("alerts:{rule}")),
            observed: Some(e.held as f64),
            limit: Some(f64::from(max)),
            window_seconds: Some(window_s),
            ..Evidence::default()
        },
        count: e.held,
        phase: Phase::Opened,
        dedup_key: format!(
            "{:016x}",
            dedup_key(&e.identity.id, r, &[rule, "@", &start])
        ),
    }
}

struct Sink {
    name: String,
    format: Format,
    min_severity: Severity,
    max_bytes: u64,
    spool: Arc<Spool>,
    routed: Counter,
    queue: prometheus_client::metrics::gauge::Gauge,
    spool_bytes: prometheus_client::metrics::gauge::Gauge,
    dropped_full: Dropped,
    dropped_error: Dropped,
    /// Set while the spool is full, so one NHI-091 goes out per episode.
    full: bool,
    up: SinkUp,
    /// Appends failing (disk full, I/O error, read-only file system): the sink is down, one
    /// NHI-091 per episode, and the log says so once, then at most once a minute.
    unwritable: Episode,
    /// The first alert of the episode that could not be spooled, written before any later one
    /// and retried every `RETRY_HELD`: the episode ends as soon as the disk takes it, whether
    /// or not new alerts come.
    held: Option<Outgoing>,
    last_retry: Instant,
}

/// How often an alert held by an unwritable spool is tried again.
const RETRY_HELD: Duration = Duration::from_secs(2);

/// What became of an alert for one sink.
enum Spooled {
    Written,
    Full,
    /// Not written; `held` when it is kept for a retry, else dropped.
    Failed {
        error: SpoolError,
        held: bool,
    },
}

impl Sink {
    /// Appends `o` after the alert an earlier failure held, if any.
    fn append(&mut self, o: &Outgoing) -> Spooled {
        if let Some(h) = self.held.take() {
            match self.spool.append(&h) {
                Ok(()) => {
                    self.routed.inc();
                    self.writable();
                }
                Err(SpoolError::Full(_)) => {
                    self.held = Some(h);
                    return Spooled::Full;
                }
                Err(error) => {
                    self.held = Some(h);
                    return Spooled::Failed { error, held: false };
                }
            }
        }
        match self.spool.append(o) {
            Ok(()) => Spooled::Written,
            Err(SpoolError::Full(_)) => Spooled::Full,
            Err(error) => {
                let held = self.held.is_none();
                if held {
                    self.held = Some(o.clone());
                }
                Spooled::Failed { error, held }
            }
        }
    }

    /// A write succeeded: an unwritable episode ends.
    fn writable(&mut self) {
        if let Some(dropped) = self.unwritable.succeeded() {
            self.up.spooling(true);
            tracing::info!(sink = %self.name, dir = %self.spool.dir().display(), failed_writes = dropped, "alert spool written again: the sink is up");
        }
    }

    /// A write failed: the first of an episode marks the sink down and returns its NHI-091.
    fn unwritable(
        &mut self,
        e: &SpoolError,
        me: &Arc<WorkloadIdentity>,
        t: i64,
    ) -> Option<Finding> {
        let errno = match e {
            SpoolError::Io { source, .. } => source.raw_os_error(),
            SpoolError::Full(_) => None,
        };
        let dir = self.spool.dir().display().to_string();
        match self.unwritable.failed() {
            Log::Start => {
                self.up.spooling(false);
                tracing::warn!(sink = %self.name, dir = %dir, errno, error = %e, "alert spool cannot be written: the sink is down and its new alerts are dropped (nhiwatch_alerts_dropped_total reason spool_error) until a write succeeds");
                Some(spool_unwritable(me, &self.name, &dir, e, t))
            }
            Log::Summary { failures, since } => {
                tracing::warn!(sink = %self.name, dir = %dir, errno, error = %e, dropped = failures, since = %since, "{failures} alerts dropped for sink {} since {since}: its spool still cannot be written", self.name);
                None
            }
            Log::Quiet => None,
        }
    }
}

/// The alert side of the daemon: the router and its sinks' workers.
pub struct Alerts {
    sinks: Vec<Sink>,
    limiter: RateLimiter,
    metrics: Arc<AlertTelemetry>,
    /// The daemon itself, the identity of its own alerts (NHI-091).
    me: Arc<WorkloadIdentity>,
    internal: Vec<Finding>,
    stop: tokio::sync::watch::Sender<Option<Instant>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    last_expire: Instant,
    drain: Duration,
}

impl Alerts {
    /// Opens every sink's transport and spool and starts its worker (inside the Tokio runtime).
    /// A bad sink (unreadable CA, bad address, unwritable spool) fails the start.
    pub fn start(
        cfg: &AlertsConfig,
        state_dir: &Path,
        hostname: &str,
        me: Arc<WorkloadIdentity>,
        metrics: Arc<AlertTelemetry>,
    ) -> Result<Alerts, String> {
        let (stop, stop_rx) = tokio::sync::watch::channel(None);
        let mut sinks = Vec::new();
        let mut workers = Vec::new();
        cfg.validate()?;
        for sc in &cfg.sinks {
            let transport = Transport::open(sc, state_dir, hostname)
                .map_err(|e| format!("alerts.sinks {:?}: {e}", sc.name))?;
            let dir = state_dir.join(&cfg.spool_dir).join(&sc.name);
            let spool = Arc::new(
                Spool::open(&dir, sc.spool_max_bytes)
                    .map_err(|e| format!("alerts.sinks {:?}: {e}", sc.name))?,
            );
            let (pending, _) = spool.pending();
            if pending > 0 {
                tracing::info!(sink = %sc.name, pending, "undelivered alerts from an earlier run will be sent");
            }
            let m = metrics.sink(&sc.name);
            sinks.push(Sink {
                name: sc.name.clone(),
                format: sc.format,
                min_severity: sc.min_severity,
                max_bytes: sc.spool_max_bytes,
                spool: spool.clone(),
                routed: m.routed.clone(),
                queue: m.queue.clone(),
                spool_bytes: m.spool_bytes.clone(),
                dropped_full: metrics.dropped(&sc.name, "spool_full"),
                dropped_error: metrics.dropped(&sc.name, "spool_error"),
                full: false,
                up: m.up.clone(),
                unwritable: Episode::new(SUMMARY_EVERY),
                held: None,
                last_retry: Instant::now(),
            });
            let mut settings = worker::Settings::from(sc);
            settings.sync_interval = cfg.sync_interval.max(Duration::from_millis(10));
            workers.push(tokio::spawn(worker::run(
                settings,
                transport,
                spool,
                m,
                metrics.clone(),
                stop_rx.clone(),
            )));
        }
        Ok(Alerts {
            sinks,
            limiter: RateLimiter::new(&cfg.rate_limit, metrics.limiter_untracked()),
            metrics,
            me,
            internal: Vec::new(),
            stop,
            workers,
            last_expire: Instant::now(),
            drain: cfg.drain_timeout,
        })
    }

    /// Rate-limits `findings[from..]` in place (what is held back is removed) and spools what
    /// remains to every sink it is severe enough for.
    pub fn route(&mut self, findings: &mut Vec<Finding>, from: usize) {
        self.metrics
            .stage
            .received
            .inc_by(findings.len().saturating_sub(from) as u64);
        let mut kept = from;
        for i in from..findings.len() {
            if !self.limiter.allow(&findings[i]) {
                if let Some(r) = Rule::from_id(&findings[i].rule.id) {
                    self.metrics.suppressed(r);
                }
                continue;
            }
            findings.swap(kept, i);
            kept += 1;
        }
        findings.truncate(kept);
        for f in &findings[from..] {
            let mut shaped: [Option<Outgoing>; 2] = [None, None];
            for s in &mut self.sinks {
                if f.severity < s.min_severity || about_sink(f, &self.me, &s.name) {
                    continue;
                }
                let slot = &mut shaped[s.format as usize];
                let o = slot.get_or_insert_with(|| Outgoing::new(f, s.format));
                match s.append(o) {
                    Spooled::Written => {
                        s.routed.inc();
                        s.writable();
                    }
                    Spooled::Full => {
                        s.dropped_full.inc();
                        if !s.full {
                            s.full = true;
                            tracing::error!(sink = %s.name, max_bytes = s.max_bytes, "alert spool full: new alerts for this sink are dropped until it drains");
                            self.internal
                                .push(spool_full(&self.me, &s.name, s.max_bytes, f.time));
                        }
                    }
                    Spooled::Failed { error, held } => {
                        if !held {
                            s.dropped_error.inc();
                        }
                        if let Some(down) = s.unwritable(&error, &self.me, f.time) {
                            self.internal.push(down);
                        }
                    }
                }
            }
        }
    }

    /// Once per batch: held-back summaries and the router's own alerts go to `out` (the caller
    /// routes them like any finding), gauges are updated. Never touches the disk beyond appends:
    /// the workers sync their spools.
    pub fn tick(&mut self, now_ns: i64, out: &mut Vec<Finding>) {
        if self.last_expire.elapsed() >= Duration::from_secs(1) {
            self.last_expire = Instant::now();
            self.limiter.expire(now_ns, out);
        }
        for s in &mut self.sinks {
            if s.held.is_some() && s.last_retry.elapsed() >= RETRY_HELD {
                s.last_retry = Instant::now();
                retry_held(s);
            }
        }
        out.append(&mut self.internal);
        for s in &mut self.sinks {
            let (n, bytes) = s.spool.pending();
            // The episode ends once half the room is back, so a spool hovering at its limit
            // does not raise an alert per alert.
            if s.full && bytes < s.max_bytes / 2 {
                s.full = false;
                tracing::info!(sink = %s.name, "alert spool has room again");
            }
            s.queue.set(n as i64);
            s.spool_bytes.set(bytes as i64);
        }
    }

    /// Shutdown: the held-back summaries go to `out`; call [`Alerts::route`] on them, then [`Alerts::stop`].
    pub fn finish(&mut self, out: &mut Vec<Finding>) {
        self.limiter.finish(out);
        out.append(&mut self.internal);
        for s in &mut self.sinks {
            retry_held(s);
            if s.held.take().is_some() {
                s.dropped_error.inc();
            }
        }
    }

    /// Lets each worker deliver what is spooled for up to `drain_timeout`, then stops it; the
    /// rest stays spooled for the next start.
    pub async fn stop(self) {
        for s in &self.sinks {
            let _ = s.spool.sync();
        }
        let _ = self.stop.send(Some(Instant::now() + self.drain));
        for w in self.workers {
            let _ = w.await;
        }
    }
}

/// The daemon's own identity for its own alerts.
pub fn daemon_identity(trust_domain: &str, node: &str) -> WorkloadIdentity {
    WorkloadIdentity {
        id: format!("spiffe://{trust_domain}/node/{node}/nhiwatch"),
        kind: crate::identity::IdentityKind::Unix,
        namespace: None,
        service_account: None,
        pod: None,
        pod_uid: None,
        container: None,
        container_id: None,
        image: None,
        owner: None,
        unit: None,
        uid: Some(0),
        user: None,
        exe: std::env::current_exe()
            .ok()
            .map(|p| p.display().to_string()),
        node: node.to_owned(),
    }
}

/// The held alert of an unwritable spool, tried again: written, the episode ends.
fn retry_held(s: &mut Sink) {
    let Some(h) = s.held.take() else { return };
    match s.spool.append(&h) {
        Ok(()) => {
            s.routed.inc();
            s.writable();
        }
        Err(_) => s.held = Some(h),
    }
}

/// Whether `f` is the router's alert about sink `name` itself (NHI-091), which goes to the
/// other sinks only: that sink cannot take it.
fn about_sink(f: &Finding, me: &Arc<WorkloadIdentity>, name: &str) -> bool {
    Arc::ptr_eq(&f.identity, me)
        && f.rule.id == Rule::AlertSpoolFull.id()
        && f.evidence.destination.as_deref() == Some(name)
}

fn spool_unwritable(
    me: &Arc<WorkloadIdentity>,
    sink: &str,
    dir: &str,
    e: &SpoolError,
    t: i64,
) -> Finding {
    let evidence = Evidence {
        destination: Some(sink.to_owned()),
        metric: Some("spool_error".into()),
        file: Some(dir.to_owned()),
        ..Evidence::default()
    };
    let summary = format!(
        "the alert spool of sink {sink} cannot be written ({e}): the sink is down and its new alerts are dropped until a write succeeds"
    );
    spool_finding(me, sink, "!", t, summary, evidence)
}

fn spool_full(me: &Arc<WorkloadIdentity>, sink: &str, max_bytes: u64, t: i64) -> Finding {
    let evidence = Evidence {
        destination: Some(sink.to_owned()),
        metric: Some("spool_bytes".into()),
        limit: Some(max_bytes as f64),
        ..Evidence::default()
    };
    let summary = format!(
        "the alert spool of sink {sink} is full ({max_bytes} bytes undelivered): its new alerts are dropped until it drains"
    );
    spool_finding(me, sink, "@", t, summary, evidence)
}

/// An NHI-091 about `sink`, opened at `t`; `episode` keeps a full spool's key apart from an
/// unwritable one's.
fn spool_finding(
    me: &Arc<WorkloadIdentity>,
    sink: &str,
    episode: &str,
    t: i64,
    summary: String,
    evidence: Evidence,
) -> Finding {
    let r = Rule::AlertSpoolFull;
    Finding {
        kind: "finding".into(),
        time: t,
        last_seen: t,
        rule: RuleRef {
            id: r.id().into(),
            name: r.name().into(),
        },
        severity: r.severity(),
        summary,
        identity: me.clone(),
        contract: None,
        evidence,
        count: 1,
        phase: Phase::Opened,
        dedup_key: format!(
            "{:016x}",
            dedup_key(&me.id, r, &[sink, episode, &t.to_string()])
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(id: &str, rule: Rule, t: i64) -> Finding {
        let mut me = daemon_identity("test", "n");
        me.id = id.into();
        Finding {
            kind: "finding".into(),
            time: t,
            last_seen: t,
            rule: RuleRef {
                id: rule.id().into(),
                name: rule.name().into(),
            },
            severity: rule.severity(),
            summary: String::new(),
            identity: Arc::new(me),
            contract: None,
            evidence: Evidence::default(),
            count: 1,
            phase: Phase::Opened,
            dedup_key: format!("{t:x}"),
        }
    }

    #[test]
    fn limits_per_identity_and_rule_and_reports_what_it_held() {
        let mut l = RateLimiter::new(
            &RateLimitConfig {
                window: Duration::from_secs(60),
                max: 3,
            },
            Counter::default(),
        );
        let s = 1_000_000_000i64;
        let mut passed = 0;
        for i in 0..10 {
            passed += l.allow(&finding("a", Rule::UndeclaredDestination, i * s)) as u32;
        }
        assert_eq!(passed, 3);
        // Another rule and another identity have their own budgets.
        assert!(l.allow(&finding("a", Rule::UndeclaredMethod, 5 * s)));
        assert!(l.allow(&finding("b", Rule::UndeclaredDestination, 5 * s)));
        // Summaries are never held.
        let mut sum = finding("a", Rule::UndeclaredDestination, 9 * s);
        sum.phase = Phase::Summary;
        assert!(l.allow(&sum));
        let mut out = Vec::new();
        l.expire(59 * s, &mut out);
        assert!(out.is_empty(), "window still open");
        l.expire(60 * s, &mut out);
        assert_eq!(out.len(), 1, "{out:#?}");
        let h = &out[0];
        assert_eq!(h.rule.id, "NHI-090");
        assert_eq!(h.count, 7);
        assert_eq!(h.identity.id, "a");
        assert_eq!(h.evidence.metric.as_deref(), Some("alerts:NHI-012"));
        assert_eq!(h.severity, Rule::UndeclaredDestination.severity());
        // A new window starts afresh.
        assert!(l.allow(&finding("a", Rule::UndeclaredDestination, 61 * s)));
        let mut off = RateLimiter::new(
            &RateLimitConfig {
                window: Duration::from_secs(60),
                max: 0,
            },
            Counter::default(),
        );
        assert!((0..100).all(|i| off.allow(&finding("a", Rule::UndeclaredDestination, i))));
    }

    #[test]
    fn a_full_table_lets_new_keys_through_and_counts_them() {
        let untracked = Counter::default();
        let cfg = RateLimitConfig {
            window: Duration::from_secs(60),
            max: 1,
        };
        let mut l = RateLimiter::new(&cfg, untracked.clone());
        let r = Rule::UndeclaredDestination;
        for i in 0..LIMITER_KEYS {
            assert!(l.allow(&finding(&i.to_string(), r, 0)));
        }
        assert!(!l.allow(&finding("0", r, 1)), "tracked keys stay limited");
        assert_eq!(untracked.get(), 0);
        assert!(l.allow(&finding("new", r, 1)));
        assert!(
            l.allow(&finding("new", r, 2)),
            "an untracked key is not limited"
        );
        assert_eq!(untracked.get(), 2);
        // Closed windows free the table.
        l.expire(60_000_000_000, &mut Vec::new());
        assert!(l.allow(&finding("new", r, 60_000_000_001)));
        assert!(!l.allow(&finding("new", r, 60_000_000_002)));
        assert_eq!(untracked.get(), 2);
    }
}

#[cfg(test)]
mod spool_full_tests {
    use super::*;
    use crate::alerts::sinks::{file::FileConfig, webhook, SinkConfig, SinkKind};

    fn sink(name: &str, kind: SinkKind, spool_max_bytes: u64) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            kind,
            spool_max_bytes,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(100),
            timeout: Duration::from_millis(200),
            ..SinkConfig::local_file()
        }
    }

    /// A receiver that never answers fills its spool: its alerts are dropped and counted, one
    /// NHI-091 per episode reaches the other sinks, and nothing else is held up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_spool_drops_counts_and_raises_nhi_091_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        // A port that is bound but never listens refuses every connection, for as long as the
        // test holds it (a fixed port could be taken by someone else).
        let refusing = tokio::net::TcpSocket::new_v4().unwrap();
        refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let down_url = format!("http://{}/hook", refusing.local_addr().unwrap());
        let cfg = AlertsConfig {
            stdout: false,
            rate_limit: RateLimitConfig {
                window: Duration::from_secs(60),
                max: 0,
            },
            spool_dir: "spool".into(),
            drain_timeout: Duration::from_millis(500),
            sync_interval: Duration::from_secs(1),
            sinks: vec![
                // Room for everything the test routes: the local spool must not fill however
                // slowly its worker drains it (a busy machine once let it fill).
                sink("local", SinkKind::File(FileConfig::default()), 16 << 20),
                sink(
                    "down",
                    SinkKind::Webhook(webhook::WebhookConfig {
                        url: down_url,
                        body: webhook::Body::Json,
                        token_file: None,
                        tls: None,
                        index: None,
                        sourcetype: None,
                        allow_insecure_http: true,
                    }),
                    64 << 10,
                ),
            ],
        };
        let metrics = Arc::new(AlertTelemetry::register(&crate::metrics::Registry::new()));
        let me = Arc::new(daemon_identity("test", "n1"));
        let mut a = Alerts::start(&cfg, dir.path(), "n1", me, metrics.clone()).unwrap();
        let mut findings: Vec<Finding> = (0..400)
            .map(|i| {
                let mut f = spool_full(&Arc::new(daemon_identity("t", "x")), "s", 1, i);
                f.rule = RuleRef {
                    id: Rule::UndeclaredDestination.id().into(),
                    name: Rule::UndeclaredDestination.name().into(),
                };
                f.summary = "x".repeat(300);
                f
            })
            .collect();
        a.route(&mut findings, 0);
        let dropped = metrics.dropped("down", "spool_full").get();
        assert!(dropped > 0, "the 64 KiB spool must fill");
        assert_eq!(metrics.dropped("local", "spool_full").get(), 0);
        let mut out = Vec::new();
        a.tick(0, &mut out);
        let full: Vec<_> = out.iter().filter(|f| f.rule.id == "NHI-091").collect();
        assert_eq!(full.len(), 1, "one alert per episode: {out:#?}");
        assert_eq!(full[0].evidence.destination.as_deref(), Some("down"));
        let routed_local = metrics.sink("local").routed.get();
        a.route(&mut out, 0);
        assert_eq!(metrics.sink("local").routed.get(), routed_local + 1);
        // The drain at stop is short (the down sink would retry for all of it): the local sink
        // delivers everything first, at whatever speed the machine allows.
        let sent = || metrics.sink("local").sent_total();
        let deadline = Instant::now() + Duration::from_secs(60);
        while sent() < routed_local + 1 {
            assert!(
                Instant::now() < deadline,
                "the local sink delivered {} of {} alerts in 60 s while the other sink was down",
                sent(),
                routed_local + 1
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a.stop().await;
        let local = std::fs::read_to_string(dir.path().join("findings.jsonl")).unwrap();
        assert_eq!(local.lines().count() as u64, routed_local + 1);
        assert!(local.contains("NHI-091"));
    }
}
