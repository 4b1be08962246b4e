//! Command line: parses arguments and runs the chosen command (the daemon's wiring lives here, not in main).

use std::{io::Write, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    config::Config,
    events::process_table::ProcessTable,
    identity::{cgroups::CgroupResolver, IdentityResolver},
    metrics::Metrics,
    pipeline::Pipeline,
    probes::{reader, upkeep::Upkeep, Sensors},
};

#[derive(Debug, Parser)]
#[command(
    name = "nhiwatch",
    version,
    about = "Runtime monitor for machine identities (service accounts, API keys, tokens, AI agents)",
    long_about = "nhiwatch watches, from the kernel, what machine identities do on a Linux host: which \
processes start, which secret files they open, which TCP flows they make, and the API calls inside \
their TLS traffic (read from the plaintext at the TLS library, never stored). Credentials are reduced \
to a kind and a keyed fingerprint; payload bytes are parsed and dropped.\n\n\
Needs root (or CAP_BPF + CAP_PERFMON) and a kernel with BTF (/sys/kernel/btf/vmlinux)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing syntax, e.g. `info` or `nhiwatch=debug`). Logs go to stderr.
    #[arg(long, global = true, env = "NHIWATCH_LOG", default_value = "info")]
    pub log: String,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and monitor this host until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Validate a configuration file and print what it would watch.
    CheckConfig {
        /// Configuration file (YAML).
        file: PathBuf,
    },
    /// Validate access contracts and data sources (files, or directories of *.yaml/*.yml).
    /// Prints every error as FILE:LINE:COLUMN and exits with status 2 if there is any.
    Check {
        /// Rules files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run recorded observations (from `nhiwatch record` or `run --record`) through identity →
    /// contracts → detectors, with time taken from the records, and print the findings as JSON
    /// lines. For forensics, for trying a contract before deploying it, and for tests.
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Observation files (JSON lines); `-` reads standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Rules files or directories (default: the configuration's `rules`).
    #[arg(long = "rules")]
    pub rules: Vec<PathBuf>,
    /// Configuration file for the `detectors` settings (default: the bundled one).
    #[arg(long, short, env = "NHIWATCH_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (YAML); without it the bundled defaults are used.
    #[arg(long, short, env = "NHIWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Write every event to stdout as one JSON object per line. Metadata only:
    /// TLS events show direction, length and flow, never bytes.
    #[arg(long)]
    pub events: bool,
    /// Prometheus endpoint address, overriding `metrics.listen` (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!("nhiwatch: bad --log filter {:?} ({e}); using info", cli.log);
        tracing_subscriber::EnvFilter::new("info")
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli);
    match cli.command {
        Command::Run(args) => run(args),
        Command::CheckConfig { file } => {
            let cfg = Config::load(&file)?;
            println!(
                "{}: ok ({} watch patterns)",
                file.display(),
                cfg.sensors.files.watch.len()
            );
            Ok(())
        }
        Command::Check { paths } => check(&paths),
        Command::Replay(args) => replay(args),
    }
}

fn load_rules(paths: &[PathBuf]) -> anyhow::Result<crate::contracts::RuleSet> {
    crate::contracts::load_paths(paths).map_err(|errors| {
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid rules ({} errors):\n{}", all.len(), all.join("\n"))
    })
}

/// `nhiwatch replay`: findings to stdout, a summary and bad lines to stderr.
fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::bundled(),
    };
    let rules_paths = if args.rules.is_empty() {
        cfg.rules.clone()
    } else {
        args.rules.clone()
    };
    let rules = load_rules(&rules_paths)?;
    let mut engine = crate::detect::Engine::new(rules, cfg.detectors.clone());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let stats = crate::detect::replay::replay(&mut engine, &args.files, &mut out)?;
    drop(out);
    for (file, line, e) in &stats.bad_lines {
        eprintln!("{}:{line}: not an observation: {e}", file.display());
    }
    eprintln!(
        "replayed {} observations ({} unreadable lines skipped): {} findings, {} identities",
        stats.observations,
        stats.bad_total,
        stats.findings,
        engine.identities()
    );
    Ok(())
}

/// `nhiwatch check`: exit status 2 on invalid rules, like a compiler, so scripts can tell it
/// from a crash (1).
fn check(paths: &[PathBuf]) -> anyhow::Result<()> {
    match crate::contracts::load_paths(paths) {
        Ok(set) => {
            for w in &set.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "ok: {} data sources, {} contracts",
                set.data_sources.len(),
                set.contracts.len()
            );
            Ok(())
        }
        Err(errors) => {
            let mut err = std::io::stderr().lock();
            for e in &errors {
                let _ = writeln!(err, "{e}");
            }
            let _ = writeln!(err, "{} error(s)", errors.len());
            std::process::exit(2);
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::bundled(),
    };
    if let Some(a) = args.metrics_addr {
        cfg.metrics.listen = Some(a);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("nhiwatch")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cfg, args.events))
}

async fn run_async(cfg: Config, events: bool) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
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

    let (sensors, ring) = Sensors::load(&cfg.sensors)?;
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
    let seeded = procs.scan_proc(
        std::path::Path::new("/proc"),
        std::path::Path::new(crate::CGROUP_V2_ROOT),
    );

    let (tx, rx) = std::sync::mpsc::sync_channel(4096);
    let upkeep = Upkeep::new(sensors, metrics.clone(), PathBuf::from("/proc"));
    let upkeep_thread = std::thread::Builder::new()
        .name("nhiwatch-upkeep".into())
        .spawn(move || {
            let mut u = upkeep;
            u.scan_all();
            u.run(rx);
        })
        .context("starting the upkeep thread")?;

    let out: Option<Box<dyn Write + Send>> = events.then(|| {
        Box::new(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stdout(),
        )) as _
    });
    let identity = start_identity(&cfg, &metrics)?;
    let hold = Duration::from_millis(cfg.identity.pending_hold_ms);
    let fingerprints = crate::protocol::credentials::Fingerprinter::load_or_create(&cfg.state_dir)
        .with_context(|| {
            format!(
                "credential fingerprint key in state_dir {}",
                cfg.state_dir.display()
            )
        })?;
    let api = crate::pipeline::api_calls::ApiCallStage::new(&cfg.api_calls, fingerprints);
    let mut pipeline = Pipeline::new(
        procs,
        watch_targets,
        metrics.clone(),
        Some(tx),
        out,
        identity,
        hold,
    )
    .with_api_calls(api);
    metrics.set_ready();
    tracing::info!(attached, failed, processes = seeded, "nhiwatch running");

    reader::run(
        ring,
        Duration::from_millis(cfg.sensors.poll_interval_ms),
        &mut pipeline,
        shutdown(),
    )
    .await?;
    drop(pipeline);
    let _ = upkeep_thread.join();
    tracing::info!("nhiwatch stopped");
    Ok(())
}

/// Builds the identity resolver and, on Kubernetes, starts the pod metadata source.
fn start_identity(cfg: &Config, metrics: &Metrics) -> anyhow::Result<IdentityResolver> {
    use crate::identity::kubernetes::{
        PodSource, PodSourceConfig, PodSourceKind, PodStore, PodStoreHandle,
    };
    let id = &cfg.identity;
    let node = crate::identity::node_name(id.node_name.as_deref());
    let cgroups = CgroupResolver::new(std::path::Path::new(crate::CGROUP_V2_ROOT), 16384);
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
    Ok(IdentityResolver::new(
        id.clone(),
        node,
        cgroups,
        pods,
        refresh,
    ))
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
