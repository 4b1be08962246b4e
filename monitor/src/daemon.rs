//! The daemon's wiring: takes the configuration, builds every stage with its settings and telemetry, connects them, runs until a signal, and shuts down in order.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;

use crate::{
    config::Config,
    context::process_table::ProcessTable,
    identity::{cgroups::CgroupResolver, IdentityResolver, IdentityTelemetry},
    metrics::Registry,
    output::{JsonLines, Stdout},
    pipeline::{telemetry::PipelineTelemetry, Pipeline},
    probes::{reader, upkeep::Upkeep, SensorTelemetry, Sensors},
};

/// Runs the monitor with `cfg` until SIGINT/SIGTERM; `events` prints every event, `record`
/// appends every observation to a file.
pub fn run(cfg: Config, events: bool, record: Option<PathBuf>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("nhiwatch")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cfg, events, record))
}

/// Invalid rules as one error, every problem on its own line (FILE:LINE:COLUMN: …).
pub(crate) fn rules_error(errors: Vec<crate::contracts::RuleError>) -> anyhow::Error {
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("invalid rules ({} errors):\n{}", all.len(), all.join("\n"))
}

async fn run_async(mut cfg: Config, events: bool, record: Option<PathBuf>) -> anyhow::Result<()> {
    // Every stage registers its handles here as it is built; the endpoint serves them.
    let metrics = Arc::new(Registry::new());
    let telemetry = PipelineTelemetry::register(&metrics, cfg.metrics.identity_series);
    let rules_telemetry = crate::contracts::RulesTelemetry::register(&metrics);
    // Rules first: invalid contracts stop the start before any probe is loaded.
    let rules =
        crate::contracts::watch::initial(&cfg.rules, &rules_telemetry).map_err(rules_error)?;
    // Installed before anything else so SIGHUP never takes the default action (terminate).
    let hup = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut s = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let hup = hup.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading rules");
                hup.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    if let Some(addr) = cfg.metrics.listen {
        // Bind before loading probes so a port clash is reported before anything attaches.
        let m = metrics.clone();
        let server = tokio::spawn(crate::metrics::serve(addr, m));
        tokio::time::sleep(Duration::from_millis(20)).await;
        if server.is_finished() {
            return server.await?.context("metrics endpoint");
        }
        tracing::info!(%addr, "metrics endpoint listening (/metrics, /healthz, /readyz)");
    }

    // Files of data sources are watched like secrets (data sources added by a later reload are
    // watched from the next start).
    for p in crate::contracts::watch_patterns(&rules) {
        if !cfg.sensors.files.watch.contains(&p) {
            tracing::debug!(pattern = %p, "watching a file data source");
            cfg.sensors.files.watch.push(p);
        }
    }
    let (mut sensors, ring) = Sensors::load(&cfg.sensors)?;
    let hold_ring = sensors.hold_ring.take();
    let attached = sensors
        .statuses
        .iter()
        .filter(|s| s.error.is_none())
        .count();
    let failed = sensors.statuses.len() - attached;
    let watch_targets = sensors.watch_targets.clone();

    let mut procs = ProcessTable::new(
        cfg.sensors.process_table_capacity,
        cfg.sensors.exited_linger_ms.saturating_mul(1_000_000),
    );
    let seeded = procs.scan_proc(std::path::Path::new("/proc"), &crate::cgroup_v2_root());

    let (tx, rx) = std::sync::mpsc::sync_channel(4096);
    let sensor_telemetry =
        SensorTelemetry::register(&metrics, telemetry.userspace_dropped_family());
    // New TLS library files reach the upkeep thread at once: a held process waits for them.
    let hold_reader = match hold_ring {
        Some(r) if cfg.sensors.tls.holds() => {
            let held = sensors
                .hold
                .take_held_handle()
                .context("the TLS hold's list of held processes")?;
            Some(
                crate::probes::tls_hold::spawn_reader(
                    r,
                    held,
                    tx.clone(),
                    sensor_telemetry.hold().clone(),
                )
                .context("starting the TLS hold reader")?,
            )
        }
        _ => None,
    };
    let upkeep = Upkeep::new(sensors, sensor_telemetry, PathBuf::from("/proc"));
    let upkeep_thread = std::thread::Builder::new()
        .name("nhiwatch-upkeep".into())
        .spawn(move || upkeep.run(rx))
        .context("starting the upkeep thread")?;

    let identity = start_identity(&cfg, &telemetry.identity)?;
    let hold = Duration::from_millis(cfg.identity.pending_hold_ms);
    // The fleet's shared key (a Secret on every node) when configured, else this node's own.
    let fingerprints = match cfg.fleet.shared_key().map_err(|e| anyhow::anyhow!(e))? {
        Some(key) => crate::protocol::credentials::Fingerprinter::from_key(key),
        None => crate::protocol::credentials::Fingerprinter::load_or_create(&cfg.state_dir)
            .with_context(|| {
                format!(
                    "credential fingerprint key in state_dir {}",
                    cfg.state_dir.display()
                )
            })?,
    };
    // Every node's fingerprints compare only under one key: the fleet checks that they share it.
    let fleet_key = cfg
        .fleet
        .enabled()
        .then(|| fingerprints.fingerprint(crate::fleet::KEY_CHECK_LABEL));
    let api = crate::protocol::ApiCallStage::new(&cfg.api_calls, fingerprints, &metrics);
    let record_dropped = telemetry.userspace_dropped("record_output");
    // Standard output is one sink for `--events` and for findings (`alerts.stdout`): buffered
    // and flushed once per batch with events, line by line for findings alone.
    let stdout = events.then(|| {
        Stdout::new(JsonLines::new(
            Box::new(std::io::BufWriter::with_capacity(
                64 << 10,
                std::io::stdout(),
            )),
            telemetry.output.clone(),
            telemetry.userspace_dropped("event_output"),
        ))
    });
    let findings_stdout = cfg.alerts.stdout.then(|| {
        stdout.clone().unwrap_or_else(|| {
            Stdout::new(JsonLines::new(
                Box::new(std::io::LineWriter::new(std::io::stdout())),
                telemetry.output.clone(),
                telemetry.userspace_dropped("event_output"),
            ))
        })
    });
    let findings = start_findings(
        &cfg,
        rules,
        FindingsOutputs {
            record,
            record_dropped,
            stdout: findings_stdout,
        },
        &metrics,
        hup,
        rules_telemetry,
        fleet_key,
    )?;
    let mut pipeline = Pipeline::new(
        procs,
        watch_targets,
        telemetry,
        Some(tx),
        None,
        identity,
        hold,
    )
    .with_api_calls(api);
    if let Some(out) = stdout {
        pipeline = pipeline.with_events(out);
    }
    let mut pipeline = pipeline.with_findings(findings.stage);
    metrics.set_ready();
    tracing::info!(
        attached,
        failed,
        processes = seeded,
        ready = metrics.is_ready(),
        "nhiwatch running"
    );

    // The pipeline gets a thread and a single-threaded runtime of its own: the ring's readiness,
    // the poll timer and the pipeline then live on one thread, so a poll tick is one wake-up and
    // not a hand-off from a runtime worker (idle CPU, BENCHMARKS.md), and the sinks' workers and
    // the metrics server on the shared runtime never queue behind a batch of records.
    let poll = Duration::from_millis(cfg.sensors.poll_interval_ms);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("nhiwatch-pipeline".into())
        .spawn(move || {
            let run = || -> anyhow::Result<Pipeline> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the pipeline's runtime")?;
                rt.block_on(reader::run(ring, poll, &mut pipeline, async {
                    let _ = stop_rx.await;
                }))
                .context("reading the kernel ring buffer")?;
                pipeline.finish();
                Ok(pipeline)
            };
            let _ = done_tx.send(run());
        })
        .context("starting the pipeline thread")?;
    let ended = tokio::select! {
        r = &mut done_rx => r,
        () = shutdown() => {
            let _ = stop_tx.send(());
            done_rx.await
        }
    };
    let mut pipeline = ended.context("the pipeline thread panicked")??;
    let alerts = pipeline.findings_stage().and_then(|s| s.take_alerts());
    drop(pipeline);
    if let Some(a) = alerts {
        a.stop().await;
    }
    findings
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // The reader holds a sender: the upkeep thread ends (continuing anyone held) once it is gone.
    drop(hold_reader);
    let _ = upkeep_thread.join();
    tracing::info!("nhiwatch stopped");
    Ok(())
}

struct Findings {
    stage: crate::pipeline::findings::FindingsStage,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Where the findings stage writes besides the alert sinks.
struct FindingsOutputs {
    /// `--record`: every observation, for `nhiwatch replay`.
    record: Option<PathBuf>,
    record_dropped: prometheus_client::metrics::counter::Counter,
    /// Findings as JSON lines (`alerts.stdout`).
    stdout: Option<Stdout>,
}

/// The detectors with their learned state, outputs and rules watcher.
fn start_findings(
    cfg: &Config,
    rules: crate::contracts::RuleSet,
    out: FindingsOutputs,
    metrics: &Arc<Registry>,
    hup: Arc<std::sync::atomic::AtomicBool>,
    rules_telemetry: crate::contracts::RulesTelemetry,
    fleet_key: Option<String>,
) -> anyhow::Result<Findings> {
    let mut detectors = cfg.detectors.clone();
    // In a pod, the API server is the Service whose address the kubelet gives every container:
    // in-cluster clients dial that IP, so service-account tokens sent there match their
    // `kubernetes.default.svc` audience (NHI-056).
    if let Some(h) = std::env::var("KUBERNETES_SERVICE_HOST")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty() && h.len() <= 253)
    {
        if !detectors.credentials.kubernetes_api_hosts.contains(&h) {
            detectors.credentials.kubernetes_api_hosts.push(h);
        }
    }
    let mut engine = crate::detect::Engine::new(rules, detectors);
    let store = crate::store::Store::open(&cfg.state_dir)
        .with_context(|| format!("state database in {}", cfg.state_dir.display()))?;
    let ids = store.load_identities()?;
    let creds = store.load_credentials()?;
    if ids.skipped + creds.skipped > 0 {
        tracing::warn!(
            rows = ids.skipped + creds.skipped,
            "unreadable rows in the state database skipped"
        );
    }
    tracing::info!(
        identities = ids.items.len(),
        credentials = creds.items.len(),
        "learned state restored"
    );
    engine.restore(ids.items, creds.items);
    let (open, open_identity) = store.load_open()?;
    if open.skipped + open_identity.skipped > 0 {
        tracing::warn!(
            rows = open.skipped + open_identity.skipped,
            "unreadable open findings in the state database skipped"
        );
    }
    tracing::info!(
        findings = open.items.len() + open_identity.items.len(),
        "open findings restored: their windows close when due, repeats are not raised again"
    );
    engine.restore_open(open.items, open_identity.items);
    let stage_compiled = engine.compiled();
    let node = crate::identity::node_name(cfg.identity.node_name.as_deref());
    let me = crate::alerts::route::daemon_identity(&cfg.identity.trust_domain, &node);
    let alerts = crate::alerts::Alerts::start(
        &cfg.alerts,
        &cfg.state_dir,
        &node,
        Arc::new(me),
        Arc::new(crate::alerts::AlertTelemetry::register(metrics)),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::contracts::watch::spawn(
        cfg.rules.clone(),
        Duration::from_secs(2),
        hup,
        stop.clone(),
        rules_telemetry,
        tx,
    )
    .context("starting the rules watcher")?;
    let stage = crate::pipeline::findings::FindingsStage::new(
        engine,
        metrics,
        out.stdout,
        out.record,
        out.record_dropped,
    )
    .context("opening the record file")?
    .with_alerts(alerts)
    .with_reloads(rx)
    .with_store(store);
    let stage = match start_fleet(cfg, &stage_compiled, &node, fleet_key, metrics)? {
        Some(f) => stage.with_fleet(f),
        None => stage,
    };
    Ok(Findings { stage, stop })
}

/// Builds the identity resolver and, on Kubernetes, starts the pod metadata source.
/// The fleet worker when `fleet.url` is set. The store need not answer at start: local
/// detection never waits on it, and the worker connects when it can.
pub(crate) fn start_fleet(
    cfg: &Config,
    rules: &Arc<crate::detect::compiled::Compiled>,
    node: &str,
    key_check: Option<String>,
    metrics: &Arc<Registry>,
) -> anyhow::Result<Option<crate::fleet::worker::FleetHandle>> {
    if !cfg.fleet.enabled() {
        return Ok(None);
    }
    let telemetry = crate::fleet::telemetry::FleetTelemetry::register(metrics);
    let fleet = crate::fleet::Fleet::new(
        &cfg.fleet,
        rules.clone(),
        cfg.detectors.dedup_window,
        cfg.fleet.node.clone().unwrap_or_else(|| node.to_owned()),
        key_check,
        telemetry,
    )?
    .with_volume(cfg.detectors.volume.clone())
    .with_identity(Arc::new(crate::alerts::route::daemon_identity(
        &cfg.identity.trust_domain,
        node,
    )));
    tracing::info!(url = %cfg.fleet.url.as_deref().unwrap_or(""), prefix = %cfg.fleet.prefix, "fleet detection on");
    let handle = crate::fleet::worker::spawn(fleet, cfg.fleet.buffer, cfg.fleet.flush_interval)
        .context("starting the fleet worker")?;
    Ok(Some(handle))
}

fn start_identity(cfg: &Config, metrics: &IdentityTelemetry) -> anyhow::Result<IdentityResolver> {
    use crate::identity::kubernetes::{
        PodSource, PodSourceConfig, PodSourceKind, PodStore, PodStoreHandle,
    };
    let id = &cfg.identity;
    let node = crate::identity::node_name(id.node_name.as_deref());
    let root = crate::cgroup_v2_root();
    tracing::debug!(root = %root.display(), "cgroup v2 hierarchy");
    let cgroups = CgroupResolver::new(&root, 16384);
    let k = &id.kubernetes;
    let (pods, refresh) = if k.source == PodSourceKind::None {
        (None, None)
    } else {
        const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
        let existing = |p: &str| std::path::Path::new(p).exists().then(|| PathBuf::from(p));
        let url = match (&k.url, k.source) {
            (Some(u), _) => u.clone(),
            (None, PodSourceKind::Kubelet) => "https://127.0.0.1:10250".into(),
            (None, _) => match (std::env::var("KUBERNETES_SERVICE_HOST"), std::env::var("KUBERNETES_SERVICE_PORT")) {
                (Ok(h), Ok(p)) => format!("https://{h}:{p}"),
                _ => anyhow::bail!(
                    "identity.kubernetes.source is apiserver but no url is set and KUBERNETES_SERVICE_HOST is not in the environment"
                ),
            },
        };
        let handle = PodStoreHandle::new(PodStore::new(
            Duration::from_secs(k.deleted_pod_retention_seconds),
            65536,
        ));
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let source = PodSource::new(
            PodSourceConfig {
                kind: k.source,
                url: url.clone(),
                node_name: node.clone(),
                token_file: k
                    .token_file
                    .clone()
                    .or_else(|| existing(&format!("{SA}/token"))),
                ca_file: k
                    .ca_file
                    .clone()
                    .or_else(|| existing(&format!("{SA}/ca.crt"))),
                insecure_skip_verify: k.insecure_skip_verify,
                refresh: Duration::from_secs(k.refresh_seconds.max(1)),
            },
            handle.clone(),
            rx,
            metrics.pod_source_errors.clone(),
        )
        .context("pod metadata source")?;
        tracing::info!(source = ?k.source, %url, node = %node, "pod metadata source starting");
        tokio::spawn(source.run());
        (Some(handle), Some(tx))
    };
    let resolver = IdentityResolver::new(id.clone(), node, cgroups, pods, refresh);
    let c = &id.containers;
    if c.sockets.is_empty() {
        return Ok(resolver);
    }
    use crate::identity::containers::{
        socket_candidates, ContainerSource, ContainerStore, ContainerStoreHandle,
    };
    let store = ContainerStoreHandle::new(ContainerStore::new(16384));
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let sockets = socket_candidates(&c.sockets);
    tracing::info!(?sockets, "container metadata source starting");
    let source = ContainerSource {
        sockets,
        timeout: Duration::from_millis(c.timeout_ms),
        store: store.clone(),
        requests: rx,
        errors: metrics.pod_source_errors.clone(),
    };
    // A thread of its own, made from this one: capabilities are per thread, and only this one
    // had its permitted set made effective (the async workers predate that); reaching a socket
    // under /proc/1/root needs CAP_SYS_PTRACE.
    std::thread::Builder::new()
        .name("nhiwatch-containers".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(source.run()),
                Err(e) => tracing::error!("container metadata source: {e}"),
            }
        })
        .context("starting the container metadata thread")?;
    Ok(resolver.with_containers(store, tx))
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family the README, the dashboards and the deployment name, registered by the stages
    /// as the daemon builds them (a family registered twice, or a stage deadlocking on its own
    /// family while registering, fails here rather than in a running daemon).
    #[test]
    fn stages_register_every_family_users_rely_on() {
        let r = Registry::new();
        let t = PipelineTelemetry::register(&r, 10);
        crate::contracts::RulesTelemetry::register(&r).load(None);
        let _ = SensorTelemetry::register(&r, t.userspace_dropped_family());
        let _ = crate::protocol::telemetry::ApiTelemetry::register(&r);
        let _ = crate::detect::telemetry::DetectTelemetry::register(&r);
        let alerts = crate::alerts::AlertTelemetry::register(&r);
        let _ = alerts.sink("siem");
        let _ = r.summary("pipeline_latency_seconds", "kernel to finding", "stage");
        let fleet = crate::fleet::telemetry::FleetTelemetry::register(&r);
        fleet.commands("write", 1);
        t.calls_by_identity.inc("spiffe://t/a", "none");
        let text = r.render();
        let names = include_str!("../../dashboards/nhiwatch-overview.json").to_owned()
            + include_str!("../../dashboards/nhiwatch-identity.json")
            + include_str!("../../dashboards/nhiwatch-sensor-health.json")
            + include_str!("../../README.md");
        let mut wanted: Vec<&str> = names
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("nhiwatch_"))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        assert!(wanted.len() > 40, "{wanted:?}");
        for name in wanted {
            let family = ["_total", "_info", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} is not exported:\n{text}"
            );
        }
        for stage in [
            "decode",
            "identity",
            "output",
            "rules",
            "sensors",
            "api_calls",
            "detect",
            "alerts",
            "fleet",
        ] {
            assert!(
                text.contains(&format!(
                    "nhiwatch_stage_received_total{{stage=\"{stage}\"}}"
                )),
                "stage {stage}:\n{text}"
            );
        }
    }
}
