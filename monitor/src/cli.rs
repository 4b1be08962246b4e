//! Command line: parses arguments and runs the chosen command (the daemon's wiring is in `daemon`).

use std::{io::Write, net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    config::Config,
    daemon::{self, rules_error},
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
Needs a kernel with BTF (/sys/kernel/btf/vmlinux) and CAP_SYS_ADMIN, CAP_SYS_PTRACE, \
CAP_DAC_READ_SEARCH and CAP_KILL, as root or as any user holding them as ambient capabilities (e.g. \
`setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps +sys_admin,+sys_ptrace,+dac_read_search,+kill \
--ambient-caps +sys_admin,+sys_ptrace,+dac_read_search,+kill nhiwatch run`). With fewer, the sensors that \
cannot attach are named and /readyz answers 503 (sensors.required)."
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
    /// Monitor this host like `run` and append every observation (metadata only: identities,
    /// secret paths, destinations, API call templates, credential kinds and fingerprints) to FILE.
    Record {
        /// Observation file (JSON lines), appended to.
        file: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// List the identities seen (from the state database): contract status, owner, data sources,
    /// credentials, first and last seen.
    Inventory {
        /// Configuration file (for state_dir and rules).
        #[arg(long, short, env = "NHIWATCH_CONFIG")]
        config: Option<PathBuf>,
        /// State directory (default: the configuration's state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Rules to judge contract status by (default: the configuration's rules).
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The whole fleet's identities and their nodes, from the `fleet:` store, instead of
        /// this node's state database.
        #[arg(long)]
        fleet: bool,
    },
    /// List the running processes that have a TCP socket, the TLS stack each uses, and whether
    /// nhiwatch sees its plaintext (OpenSSL, GnuTLS, Go) or is blind to it, and why.
    Coverage {
        /// Where processes are listed (a host's /proc mounted elsewhere, in a container).
        #[arg(long, default_value = "/proc")]
        proc_root: PathBuf,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a draft contract for an ungoverned identity from what it actually did, or, for a
    /// governed one, the grants it has not used for DAYS days (least-privilege shrink).
    Suggest {
        /// SPIFFE ID of the identity.
        identity: String,
        #[arg(long, short, env = "NHIWATCH_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// A grant unused for this many days is proposed for removal.
        #[arg(long, default_value_t = 30)]
        unused_days: u32,
        /// Add what the identity did on every node (data sources, from the `fleet:` store) to
        /// this node's state.
        #[arg(long)]
        fleet: bool,
    },
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
    /// Start from, and write learned state back to, this state directory (default: start empty,
    /// keep nothing). Then `nhiwatch inventory --state-dir` shows what the replay saw.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Findings as nhiwatch prints them (native) or as the OCSF Detection Findings sinks send.
    #[arg(long, value_enum, default_value = "native")]
    pub format: ReplayFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReplayFormat {
    Native,
    Ocsf,
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
    /// Also append every observation (metadata only) to this file, for `nhiwatch replay`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!("nhiwatch: bad --log filter {:?} ({e}); using info", cli.log);
        tracing_subscriber::EnvFilter::new("info")
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_stderr());
    match cli.log_format {
        LogFormat::Text => b.with_writer(|| OneLine(std::io::stderr())).init(),
        LogFormat::Json => b.with_writer(std::io::stderr).json().init(),
    }
}

/// Text logs keep one event on one line: a value a process controls (a path, a library file, a
/// rules path from a ConfigMap) with a newline or carriage return in it cannot start a line of its
/// own that reads like the daemon's. tracing-subscriber sanitises ANSI escapes but not line breaks.
/// The formatter hands over each event whole, ending in its one newline; breaks before it are
/// written as `\n` and `\r`. (JSON logs escape them already.)
struct OneLine<W>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if !body.iter().any(|b| matches!(b, b'\n' | b'\r')) {
            return self.0.write_all(buf);
        }
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(b),
            }
        }
        out.extend_from_slice(end);
        self.0.write_all(&out)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `text` on one line: line breaks written as `\n` and `\r`, other control characters as `\u{..}`,
/// so that an error naming a hostile path cannot forge a line or a terminal escape.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out.into()
}

/// Colour codes only for a person at a terminal: in a file or the journal they are noise that
/// breaks grep and log shippers. `NO_COLOR` (any non-empty value, no-color.org) turns them off.
fn colour_stderr() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
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
        Command::Record {
            file,
            run: mut args,
        } => {
            args.record = Some(file);
            run(args)
        }
        Command::Inventory {
            config,
            json,
            fleet: true,
            ..
        } => fleet_inventory(config, json),
        Command::Inventory {
            config,
            state_dir,
            rules,
            json,
            fleet: false,
        } => inventory(config, state_dir, rules, json),
        Command::Coverage { proc_root, json } => coverage(&proc_root, json),
        Command::Suggest {
            identity,
            config,
            state_dir,
            rules,
            unused_days,
            fleet,
        } => suggest(&identity, config, state_dir, rules, unused_days, fleet),
    }
}

fn coverage(proc_root: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let procs = crate::probes::coverage::CoverageScanner::default().scan(proc_root);
    let mut out = std::io::stdout().lock();
    if json {
        for p in &procs {
            writeln!(out, "{}", serde_json::to_string(p)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:>8}  {:<16} {:<16} {:<5} DETAIL",
        "PID", "COMM", "STACK", "SEEN"
    )?;
    for p in &procs {
        writeln!(
            out,
            "{:>8}  {:<16} {:<16} {:<5} {}",
            p.pid,
            one_line(&p.comm),
            p.stack.name(),
            if p.covered { "yes" } else { "no" },
            one_line(&format!("{} ({})", p.detail, p.exe))
        )?;
    }
    let blind = procs.iter().filter(|p| !p.covered).count();
    writeln!(
        out,
        "{} processes with TCP sockets, {} seen, {} blind",
        procs.len(),
        procs.len() - blind,
        blind
    )?;
    Ok(())
}

/// `run` and `record`: the configuration with the command line's overrides, then the daemon.
fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut cfg = config_or_bundled(&args.config)?;
    if let Some(a) = args.metrics_addr {
        cfg.metrics.listen = Some(a);
    }
    daemon::run(cfg, args.events, args.record)
}

fn config_or_bundled(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::bundled(),
    })
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Reads the learned state the daemon (or a replay) wrote.
fn load_state(
    cfg: &Config,
    state_dir: Option<PathBuf>,
) -> anyhow::Result<(
    Vec<crate::detect::state::IdentityRecord>,
    Vec<crate::detect::state::CredentialRecord>,
)> {
    let dir = state_dir.unwrap_or_else(|| cfg.state_dir.clone());
    let store = crate::store::Store::open_read_only(&dir)?;
    let ids = store.load_identities()?;
    let creds = store.load_credentials()?;
    if ids.skipped + creds.skipped > 0 {
        eprintln!(
            "warning: {} unreadable rows in {} skipped",
            ids.skipped + creds.skipped,
            store.path().display()
        );
    }
    Ok((ids.items, creds.items))
}

fn inventory(
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    rules: Vec<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = config_or_bundled(&config)?;
    let (ids, creds) = load_state(&cfg, state_dir)?;
    let paths = rules_paths(&cfg, rules);
    let present: Vec<PathBuf> = paths.into_iter().filter(|p| p.exists()).collect();
    let set = if present.is_empty() {
        None
    } else {
        Some(load_rules(&present)?)
    };
    let rows = crate::report::inventory(&ids, &creds, set.as_ref(), now_unix());
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", crate::report::render_inventory_table(&rows));
    }
    Ok(())
}

fn suggest(
    identity: &str,
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    rules: Vec<PathBuf>,
    unused_days: u32,
    fleet: bool,
) -> anyhow::Result<()> {
    let cfg = config_or_bundled(&config)?;
    // With --fleet this node need not have seen the identity, nor have a state database.
    let ids = match load_state(&cfg, state_dir) {
        Ok((ids, _)) => ids,
        Err(_) if fleet => Vec::new(),
        Err(e) => return Err(e),
    };
    let paths = rules_paths(&cfg, rules);
    let set = load_rules(&paths)?;
    let mut record = ids.into_iter().find(|r| r.identity.id == identity);
    if fleet {
        let rows = fleet_rows(&cfg)?;
        let Some(row) = rows.into_iter().find(|r| r.identity == identity) else {
            anyhow::bail!(
                "identity {identity:?} is not in the fleet store's inventory; `nhiwatch inventory --fleet` lists the ones that are"
            );
        };
        record = Some(crate::fleet::inventory::merge(record, &row));
    }
    let Some(record) = record else {
        anyhow::bail!(
            "identity {identity:?} has not been seen; `nhiwatch inventory` lists the ones that have"
        );
    };
    let s = crate::report::suggest(&record, &set, now_unix(), unused_days);
    print!("{}", s.yaml);
    Ok(())
}

fn fleet_rows(cfg: &Config) -> anyhow::Result<Vec<crate::fleet::inventory::FleetIdentity>> {
    if !cfg.fleet.enabled() {
        anyhow::bail!("--fleet needs a configuration with fleet.url (--config)");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::fleet::inventory::read(&cfg.fleet, now_unix()))
}

/// `inventory --fleet`: every identity the fleet's nodes saw in the last day, with its nodes.
fn fleet_inventory(config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let cfg = config_or_bundled(&config)?;
    let rows = fleet_rows(&cfg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", crate::fleet::inventory::render(&rows));
    }
    Ok(())
}

/// `--rules` when given, else the configuration's `rules`.
fn rules_paths(cfg: &Config, given: Vec<PathBuf>) -> Vec<PathBuf> {
    if given.is_empty() {
        cfg.rules.clone()
    } else {
        given
    }
}

fn load_rules(paths: &[PathBuf]) -> anyhow::Result<crate::contracts::RuleSet> {
    crate::contracts::load_paths(paths).map_err(rules_error)
}

/// `nhiwatch replay`: findings to stdout, a summary and bad lines to stderr.
fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let cfg = config_or_bundled(&args.config)?;
    let rules = load_rules(&rules_paths(&cfg, args.rules.clone()))?;
    let mut engine = crate::detect::Engine::new(rules, cfg.detectors.clone());
    let mut store = match &args.state_dir {
        Some(dir) => {
            let store = crate::store::Store::open(dir)?;
            let ids = store.load_identities()?;
            let creds = store.load_credentials()?;
            engine.restore(ids.items, creds.items);
            Some(store)
        }
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let format = match args.format {
        ReplayFormat::Native => crate::alerts::Format::Native,
        ReplayFormat::Ocsf => crate::alerts::Format::Ocsf,
    };
    let mut fleet = if cfg.fleet.enabled() {
        let registry = crate::metrics::Registry::new();
        let telemetry = crate::fleet::telemetry::FleetTelemetry::register(&registry);
        // No fingerprint-key check: the recordings' fingerprints were made on their nodes.
        let f = crate::fleet::Fleet::new(
            &cfg.fleet,
            engine.compiled(),
            cfg.detectors.dedup_window,
            crate::identity::node_name(cfg.fleet.node.as_deref()),
            None,
            telemetry.clone(),
        )?
        .with_volume(cfg.detectors.volume.clone());
        Some((crate::replay::FleetReplay::new(f)?, telemetry))
    } else {
        None
    };
    let stats = crate::replay::replay_with(
        &mut engine,
        &args.files,
        format,
        &mut out,
        fleet.as_mut().map(|(f, _)| f),
    )?;
    if let Some((f, t)) = &fleet {
        let pending = f.fleet.pending();
        if pending > 0 || t.up.get() == 0 {
            eprintln!(
                "warning: the fleet store at {} did not take this replay's counts ({} unwritten); fleet findings are incomplete",
                cfg.fleet.url.as_deref().unwrap_or(""),
                pending
            );
        }
    }
    drop(out);
    if let Some(store) = store.as_mut() {
        engine.persist(|ids, creds| store.save(ids, creds, &[], &[]))?;
    }
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::OneLine;

    #[test]
    fn an_error_stays_on_one_line() {
        assert_eq!(
            super::one_line("bad /x\nnhiwatch: forged\r\u{1b}[31m"),
            "bad /x\\nnhiwatch: forged\\r\\u{1b}[31m"
        );
        assert!(matches!(
            super::one_line("plain"),
            std::borrow::Cow::Borrowed("plain")
        ));
    }

    #[test]
    fn an_event_stays_on_one_line() {
        let mut out = OneLine(Vec::new());
        out.write_all(b"WARN path=/x\nERROR forged\r line\n")
            .unwrap();
        out.write_all(b"INFO plain\n").unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "WARN path=/x\\nERROR forged\\r line\nINFO plain\n"
        );
    }
}
