//! `cargo xtask bench`: measures nhiwatch on this machine, in one run, side by side with a bare
//! baseline and with peer tools, and writes BENCHMARKS.md.
//!
//! 1. open()/close() on unwatched paths: bare, nhiwatch, libbpf-tools opensnoop.
//! 2. HTTPS requests through OpenSSL (curl → nginx): bare, an empty uprobe floor (bpftrace),
//!    nhiwatch, bpftrace sslsnoop.bt.
//! 3. The highest watched-file event rate the daemon, pinned to one CPU, drains without loss.
//! 4. Userspace stage costs without the kernel.
//! 5. Alert latency from the kernel's timestamp to the sink write (file, HTTPS webhook, syslog/TLS).
//! 6. Detector memory at scale (peak RSS with the default caps).
//! 7. read()/write() storms on a pipe and a file, and cleartext HTTP keep-alive requests: bare,
//!    an empty-tracepoint floor (bpftrace), nhiwatch's sockets sensor.
//! 9. HTTPS requests from a Go client (crypto/tls): bare, an empty uprobe at the same entries
//!    and RET sites (libbpf), nhiwatch; and the attach cost of a new ~20 MB Go binary.
//!
//! Overhead variants run in alternation (bare, A, B, bare, A, B …) so drift of a noisy machine
//! hits every variant alike; each tool is started fresh, waited for until attached, and stopped
//! before the next variant. Everything started is stopped on drop, also on error.

mod alerts;
mod event_rate;
mod fleet;
mod go_tls;
mod memory;
mod open_loop;
mod socket_io;
mod stats;
mod sys;
mod tls_loop;
mod userspace;

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use sys::{Proc, TempDir};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rounds of the alternating overhead benchmarks (each variant runs once per round).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// How long one bare workload run should take, in seconds (sets the iteration counts).
    #[arg(long, default_value_t = 1.5)]
    run_secs: f64,
    /// Run only these benchmarks (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Which>,
    /// Report file, relative to the workspace root.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Which {
    /// open()/close() overhead on unwatched paths.
    Open,
    /// HTTPS request overhead through OpenSSL uprobes.
    Tls,
    /// Zero-loss event rate of the daemon on one CPU.
    Rate,
    /// Userspace stage costs without the kernel (identity resolution, drain).
    Userspace,
    /// Alert latency from the kernel timestamp to the sink write.
    Alerts,
    /// Detector memory at scale (peak RSS, default caps).
    Memory,
    /// Fleet store overhead per node (issue J): store commands, bytes, CPU.
    Fleet,
    /// read()/write() storms and cleartext HTTP through the sockets sensor.
    Sockets,
    /// HTTPS from a Go client through the Go TLS probes, and Go attach cost.
    Go,
}

/// Command names of other tracers whose probes would fire during our measurements.
const TRACERS: &[&str] = &[
    "nhiwatch",
    "bpftrace",
    "opensnoop",
    "execsnoop",
    "tcpstates",
    "tcplife",
    "sslsniff",
];

/// The CPU the tools of the overhead benchmarks are pinned to; the workloads run on the last
/// CPU, so a tool's own user-space work stays off the measured path (and is counted apart).
const TOOL_CPU: Option<usize> = Some(0);

/// Command names of monitors and servers that, running beside the benchmark, add noise.
const NEIGHBOURS: &[&str] = &[
    "nhiwatch",
    "bpftrace",
    "opensnoop",
    "execsnoop",
    "tcpstates",
    "tcplife",
    "nginx",
    "cargo",
    "rustc",
];

pub fn run(root: &Path, args: BenchArgs) -> Result<()> {
    if !crate::is_root() {
        bail!("the benchmarks load BPF programs and need root: run `sudo cargo xtask bench`");
    }
    if args.rounds == 0 || args.run_secs.is_nan() || args.run_secs <= 0.0 {
        bail!("--rounds and --run-secs must be positive");
    }
    let started = Instant::now();
    eprintln!("bench: building nhiwatch (release)");
    crate::cargo(&["build", "--release", "-p", "nhiwatch"])?;
    let out_dir = root.join("target/bench");
    let logs = out_dir.join("logs");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs)?;
    let openloop = compile(root, "openloop", &[])?;
    let openload = compile(root, "openload", &[])?;
    let machine = Machine::probe(root);
    if machine.nproc < 2 {
        bail!("the benchmarks pin workloads and the daemon to separate CPUs: 2 or more needed");
    }

    let mut ctx = Ctx {
        root: root.to_path_buf(),
        nhiwatch: cargo_target_dir(root).join("release/nhiwatch"),
        openloop,
        openload,
        tmp: TempDir::new()?,
        logs,
        rounds: args.rounds,
        run_secs: args.run_secs,
        nproc: machine.nproc,
        notes: Vec::new(),
        ours: sys::ancestors(),
        neighbours: BTreeSet::new(),
        loadavg: Vec::new(),
        log_seq: 0,
        current: String::new(),
        uprobe_hit_us: None,
    };
    let wants = |w: Which| args.only.is_empty() || args.only.contains(&w);
    type Bench = fn(&mut Ctx) -> Result<Section>;
    let benches: [(Which, &str, Bench); 9] = [
        (
            Which::Open,
            "1. open()/close() on unwatched paths",
            open_loop::run,
        ),
        (
            Which::Tls,
            "2. HTTPS requests through OpenSSL",
            tls_loop::run,
        ),
        (
            Which::Rate,
            "3. Event rate drained with zero loss (daemon on one CPU)",
            event_rate::run,
        ),
        (
            Which::Userspace,
            "4. Userspace stages without the kernel",
            userspace::run,
        ),
        (
            Which::Alerts,
            "5. Alert latency (kernel timestamp → sink write)",
            alerts::run,
        ),
        (Which::Memory, "6. Detector memory at scale", memory::run),
        (Which::Fleet, "7. Fleet", fleet::run),
        (
            Which::Sockets,
            "8. read()/write() storms and cleartext HTTP (sockets sensor)",
            socket_io::run,
        ),
        (
            Which::Go,
            "9. HTTPS requests from Go (crypto/tls) and Go attach cost",
            go_tls::run,
        ),
    ];
    let mut sections = Vec::new();
    let mut failed = Vec::new();
    for (which, title, bench) in benches {
        if !wants(which) {
            continue;
        }
        eprintln!("bench: === {title} ===");
        ctx.current = title.to_owned();
        ctx.note_load(title);
        let still = ctx.wait_quiet(Duration::from_secs(30));
        if !still.is_empty() {
            ctx.notes.push(format!(
                "{title}: started although other tracers were still running after 30 s: {}.",
                still.join(", ")
            ));
        }
        let t0 = Instant::now();
        match bench(&mut ctx) {
            Ok(mut s) => {
                s.title = title.to_owned();
                sections.push(s);
            }
            Err(e) => {
                eprintln!("bench: {title} failed: {e:#}");
                failed.push(title);
                sections.push(Section {
                    title: title.to_owned(),
                    body: format!("**This benchmark failed:**\n\n```\n{e:#}\n```\n"),
                    summary: vec![SummaryRow {
                        target: title.to_owned(),
                        measured: "—".into(),
                        verdict: "failed to run".into(),
                    }],
                });
            }
        }
        ctx.look_around();
        eprintln!("bench: {title}: {:.0} s", t0.elapsed().as_secs_f64());
    }
    ctx.note_load("end");
    let report = render(&machine, &args, &ctx, &sections, started.elapsed());
    let out = root.join(&args.out);
    fs::write(&out, report).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "bench: wrote {} ({:.0} s in all)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (relative to the workspace),
/// else `target/` in the workspace.
fn cargo_target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root.join("target"), |d| root.join(d))
}

/// Compiles bench/NAME.c into target/bench/NAME, with `extra` (libraries) after the source.
pub fn compile(root: &Path, name: &str, extra: &[&Path]) -> Result<PathBuf> {
    let src = root.join("bench").join(format!("{name}.c"));
    let bin = root.join("target/bench").join(name);
    crate::run(
        Command::new("cc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&bin)
            .arg(&src)
            .args(extra),
    )
    .with_context(|| format!("compiling {}", src.display()))?;
    Ok(bin)
}

/// What every benchmark shares: paths, the temporary directory, and what was observed on the way.
pub struct Ctx {
    pub root: PathBuf,
    pub nhiwatch: PathBuf,
    pub openloop: PathBuf,
    pub openload: PathBuf,
    pub tmp: TempDir,
    pub logs: PathBuf,
    pub rounds: usize,
    pub run_secs: f64,
    pub nproc: usize,
    /// Things a reader of the report should know (odd exits, retries).
    pub notes: Vec<String>,
    /// Pids we started, so they are not reported as neighbours.
    ours: Vec<u32>,
    neighbours: BTreeSet<String>,
    loadavg: Vec<(String, String)>,
    log_seq: usize,
    /// Title of the benchmark running now.
    current: String,
    /// µs per uprobe hit on the OpenSSL functions, as benchmark 2's floor works out.
    pub uprobe_hit_us: Option<f64>,
}

impl Ctx {
    /// A fresh stderr log file under target/bench/logs.
    pub fn log_path(&mut self, name: &str) -> PathBuf {
        self.log_seq += 1;
        self.logs.join(format!("{:03}-{name}.log", self.log_seq))
    }

    pub fn spawn(&mut self, name: &str, cmd: &mut Command, stdout: Stdio) -> Result<Proc> {
        let log = self.log_path(name);
        let p = Proc::spawn(name, cmd, stdout, Some(&log))?;
        self.ours.push(p.pid());
        Ok(p)
    }

    /// Remembers monitors and servers that other people run on this machine right now.
    pub fn look_around(&mut self) {
        for n in sys::foreign_processes(NEIGHBOURS, &self.ours) {
            self.neighbours.insert(n);
        }
    }

    fn note_load(&mut self, when: &str) {
        let l = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let l: Vec<&str> = l.split_whitespace().take(3).collect();
        self.loadavg.push((when.to_owned(), l.join(" ")));
    }

    /// Starts the daemon (optionally pinned to one CPU) and waits until /readyz says 200.
    pub fn start_daemon(&mut self, config: &Path, cpu: Option<usize>) -> Result<Daemon> {
        let addr = SocketAddr::from(([127, 0, 0, 1], sys::free_port()?));
        let mut cmd = match cpu {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", &c.to_string()]).arg(&self.nhiwatch);
                t
            }
            None => Command::new(&self.nhiwatch),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .arg("--metrics-addr")
            .arg(addr.to_string())
            .env("NHIWATCH_LOG", "info");
        let mut proc = self.spawn("nhiwatch", &mut cmd, Stdio::null())?;
        sys::wait_http_ok(&mut proc, addr, "/readyz", Duration::from_secs(60))?;
        Ok(Daemon { proc, addr })
    }

    /// Starts a variant's tool and waits until it is attached.
    pub fn start(&mut self, tool: &Tool) -> Result<Running> {
        self.look_around();
        let pinned = |bin: &str| -> Command {
            match TOOL_CPU {
                Some(c) => {
                    let mut t = Command::new("taskset");
                    t.args(["-c", &c.to_string(), bin]);
                    t
                }
                None => Command::new(bin),
            }
        };
        Ok(match tool {
            Tool::Nhiwatch { config } => Running::Daemon(self.start_daemon(config, TOOL_CPU)?),
            Tool::Opensnoop => {
                let mut p = self.spawn(
                    "opensnoop",
                    &mut pinned("/usr/sbin/opensnoop"),
                    Stdio::null(),
                )?;
                let n = sys::wait_attached(&mut p, Duration::from_secs(60))?;
                Running::Peer(p, n)
            }
            Tool::Bpftrace { name, script } => {
                let mut p =
                    self.spawn(name, pinned("/usr/bin/bpftrace").arg(script), Stdio::null())?;
                let n = sys::wait_attached(&mut p, Duration::from_secs(60))?;
                Running::Peer(p, n)
            }
            Tool::Command {
                name,
                program,
                args,
            } => {
                let mut cmd = pinned(&program.to_string_lossy());
                let mut p = self.spawn(name, cmd.args(args), Stdio::null())?;
                let n = sys::wait_attached(&mut p, Duration::from_secs(60))?;
                Running::Peer(p, n)
            }
        })
    }

    /// Other tracers (not ours) running right now.
    fn foreign_tracers(&self) -> Vec<String> {
        sys::foreign_processes(TRACERS, &self.ours)
    }

    /// Waits up to `max` for other people's tracers to exit: their probes would fire during
    /// every variant, bare included. Returns those still running.
    pub fn wait_quiet(&mut self, max: Duration) -> Vec<String> {
        let deadline = Instant::now() + max;
        let mut told = false;
        loop {
            let f = self.foreign_tracers();
            if f.is_empty() || Instant::now() > deadline {
                return f;
            }
            if !told {
                eprintln!(
                    "bench: waiting up to {max:?} for other tracers to exit: {}",
                    f.join(", ")
                );
                told = true;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Runs every variant once per round, in alternation. `measure` gets the pid of the
    /// variant's tool (if any) and returns one value per metric, the first being the one
    /// printed as progress. Returns, per metric, (variant label, values by round).
    pub fn alternate(
        &mut self,
        variants: &[Variant],
        unit: &str,
        mut measure: impl FnMut(&mut Ctx, Option<u32>) -> Result<Vec<f64>>,
    ) -> Result<Vec<Series>> {
        let mut by_metric: Vec<Series> = Vec::new();
        let mut tainted = Vec::new();
        for round in 1..=self.rounds {
            let mut seen: BTreeSet<String> = self
                .wait_quiet(Duration::from_secs(10))
                .into_iter()
                .collect();
            for (i, v) in variants.iter().enumerate() {
                // A tool that is gone by the end of its run was not attached for all of it:
                // the run is repeated (at most twice) and the reader told.
                let mut attempt = 1;
                let xs = loop {
                    let running = match &v.tool {
                        Some(t) => Some(self.start(t)?),
                        None => None,
                    };
                    let xs = measure(self, running.as_ref().map(Running::pid))?;
                    seen.extend(self.foreign_tracers());
                    let Some(r) = running else { break xs };
                    match r.finish(self) {
                        Ok(()) => break xs,
                        Err(e) if attempt < 3 => {
                            let first = format!("{e:#}");
                            let first = first.lines().next().unwrap_or("").to_owned();
                            eprintln!("bench:   {first}: repeating the run");
                            self.notes.push(format!(
                                "{}: {} — {first} during round {round}; that run was \
                                 repeated (log in target/bench/logs/).",
                                self.current, v.label
                            ));
                            attempt += 1;
                        }
                        Err(e) => return Err(e),
                    }
                };
                eprintln!(
                    "bench:   round {round}/{} {:<34} {:>10.2} {unit}",
                    self.rounds,
                    v.label,
                    xs.first().copied().unwrap_or(f64::NAN)
                );
                if by_metric.is_empty() {
                    by_metric = xs
                        .iter()
                        .map(|_| {
                            variants
                                .iter()
                                .map(|v| (v.label.clone(), Vec::new()))
                                .collect()
                        })
                        .collect();
                }
                for (m, x) in xs.into_iter().enumerate() {
                    if let Some(metric) = by_metric.get_mut(m) {
                        metric[i].1.push(x);
                    }
                }
            }
            if !seen.is_empty() {
                tainted.push(format!(
                    "round {round} ({})",
                    seen.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if !tainted.is_empty() {
            self.notes.push(format!(
                "{}: other people's tracers were running during {} of {} rounds; their probes \
                 fire in every variant of such a round, bare included: {}.",
                self.current,
                tainted.len(),
                self.rounds,
                tainted.join("; ")
            ));
        }
        Ok(by_metric)
    }

    /// Runs `workload` (which returns how many operations it did) once more beside a fresh
    /// nhiwatch with the kernel's BPF run-time accounting on, and tabulates what each of the
    /// daemon's programs cost per operation.
    pub fn profile_nhiwatch(
        &mut self,
        config: &Path,
        unit: &str,
        workload: impl FnOnce() -> Result<u64>,
    ) -> Result<Profile> {
        let tool = Tool::Nhiwatch {
            config: config.to_path_buf(),
        };
        self.profile(&tool, "nhiwatch", unit, workload)
    }

    /// The same for any tool (a peer, the empty-probe floor): its BPF programs' time per
    /// operation and how many of their runs were uprobe traps, for the projection to hardware.
    pub fn profile(
        &mut self,
        tool: &Tool,
        label: &str,
        unit: &str,
        workload: impl FnOnce() -> Result<u64>,
    ) -> Result<Profile> {
        let running = self.start(tool)?;
        let pid = running.pid();
        let before = sys::prog_stats(pid)?;
        let ops = {
            let _on = sys::BpfStats::enable()?;
            workload()?
        } as f64;
        let after = sys::prog_stats(pid)?;
        let names = sys::prog_names();
        running.finish(self)?;
        // (name, runs, ns, runs that were uprobe traps)
        let mut by_name: Vec<(String, u64, u64, u64)> = Vec::new();
        for p in &after {
            let b = before.iter().find(|b| b.id == p.id);
            let cnt = p.run_cnt - b.map_or(0, |b| b.run_cnt);
            let ns = p.run_time_ns - b.map_or(0, |b| b.run_time_ns);
            if cnt == 0 {
                continue;
            }
            let traps = if p.prog_type == sys::PROG_TYPE_KPROBE {
                cnt
            } else {
                0
            };
            let name = names
                .get(&p.id)
                .cloned()
                .unwrap_or_else(|| format!("id {}", p.id));
            match by_name.iter_mut().find(|e| e.0 == name) {
                Some(e) => {
                    e.1 += cnt;
                    e.2 += ns;
                    e.3 += traps;
                }
                None => by_name.push((name, cnt, ns, traps)),
            }
        }
        by_name.sort_by_key(|e| std::cmp::Reverse(e.2));
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| {label} BPF program | Runs per {unit} | ns per run | ns per {unit} |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|");
        let mut total = 0.0;
        let mut traps = 0.0;
        for (name, cnt, ns, tr) in &by_name {
            let per_op = *ns as f64 / ops;
            total += per_op;
            traps += *tr as f64 / ops;
            let _ = writeln!(
                t,
                "| `{name}` | {:.2} | {:.0} | {per_op:.0} |",
                *cnt as f64 / ops,
                *ns as f64 / *cnt as f64
            );
        }
        let _ = writeln!(t, "| **all** | | | **{total:.0}** |");
        Ok(Profile {
            table: t,
            ns_per_op: total,
            traps_per_op: traps,
        })
    }

    pub fn bundled_config(&self) -> PathBuf {
        self.root.join("config/nhiwatch.yaml")
    }
}

/// One metric of an alternating benchmark: (variant label, values by round) per variant.
pub type Series = Vec<(String, Vec<f64>)>;

/// A running daemon and its metrics address.
pub struct Daemon {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Daemon {
    /// Fails if the daemon died; otherwise stops it and notes an unclean exit.
    pub fn finish(mut self, ctx: &mut Ctx) -> Result<()> {
        self.proc.check_alive()?;
        let tail = self.proc.log_tail();
        let st = self.proc.stop()?;
        if !st.success() {
            ctx.notes.push(format!(
                "nhiwatch exited with {st} after SIGTERM (measurements kept).{tail}"
            ));
        }
        Ok(())
    }
}

/// A tool a variant runs beside the workload.
pub enum Tool {
    Nhiwatch {
        config: PathBuf,
    },
    Opensnoop,
    Bpftrace {
        name: String,
        script: PathBuf,
    },
    /// Any program that attaches BPF and holds it until SIGTERM (benchmark 9's floor loader).
    Command {
        name: String,
        program: PathBuf,
        args: Vec<std::ffi::OsString>,
    },
}

pub struct Variant {
    pub label: String,
    pub tool: Option<Tool>,
}

impl Variant {
    pub fn bare() -> Variant {
        Variant {
            label: "bare (no tracing)".into(),
            tool: None,
        }
    }

    pub fn with(label: &str, tool: Tool) -> Variant {
        Variant {
            label: label.into(),
            tool: Some(tool),
        }
    }
}

pub enum Running {
    Daemon(Daemon),
    /// A peer tool and the number of attachments it held once ready.
    Peer(Proc, usize),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Daemon(d) => d.proc.pid(),
            Running::Peer(p, _) => p.pid(),
        }
    }

    /// The tool must have survived the measurement; then it is stopped.
    fn finish(self, ctx: &mut Ctx) -> Result<()> {
        match self {
            Running::Daemon(d) => d.finish(ctx),
            Running::Peer(mut p, attached) => {
                p.check_alive()?;
                let now = sys::attachments(p.pid());
                if now < attached {
                    bail!(
                        "{} detached during the run ({now} of {attached} attachments left)",
                        p.name()
                    );
                }
                p.stop()?;
                Ok(())
            }
        }
    }
}

/// One benchmark's part of the report.
pub struct Section {
    pub title: String,
    pub body: String,
    pub summary: Vec<SummaryRow>,
}

/// What a tool's BPF programs cost per operation of a workload, from the kernel's accounting.
pub struct Profile {
    /// Markdown table, one row per program.
    pub table: String,
    /// Program run time per operation, ns.
    pub ns_per_op: f64,
    /// Uprobe/uretprobe program runs per operation: each one is a trap.
    pub traps_per_op: f64,
}

/// µs one uprobe trap costs on bare metal, for the projection rows: the middle of the 0.3–0.5
/// µs issue 21 gives for current x86 servers (on this nested VM benchmark 2's floor measures
/// several times that, which is why the projection uses a fixed figure and says so).
pub const HW_TRAP_US: f64 = 0.4;

/// Where HW_TRAP_US comes from, for the report.
pub const HW_TRAP_SOURCE: &str = "0.4 µs per uprobe trap: the middle of the 0.3–0.5 µs per \
     trap on bare-metal x86 that issue 21 uses (not measured here; this VM's own figure is in \
     benchmark 2)";

impl Profile {
    /// Program time per operation of the programs `keep` selects, read back from the table.
    pub fn ns_of(&self, keep: impl Fn(&str) -> bool) -> f64 {
        self.table
            .lines()
            .filter_map(|l| {
                let c: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = c.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                if !keep(name) {
                    return None;
                }
                let v: String = c
                    .get(4)?
                    .chars()
                    .filter(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                v.parse::<f64>().ok()
            })
            .sum()
    }

    /// Measured program time plus the traps priced at HW_TRAP_US, in ns per operation.
    pub fn projected_ns(&self) -> f64 {
        self.ns_per_op + self.traps_per_op * HW_TRAP_US * 1000.0
    }

    /// "X ns (programs P + T traps × 0.4 µs)".
    pub fn projection(&self, digits: usize) -> String {
        format!(
            "{} ns (programs {} + {:.2} traps × {HW_TRAP_US} µs)",
            stats::num(self.projected_ns(), digits),
            stats::num(self.ns_per_op, digits),
            self.traps_per_op
        )
    }
}

pub struct SummaryRow {
    pub target: String,
    pub measured: String,
    pub verdict: String,
}

struct Machine {
    date: String,
    nproc: usize,
    cpu_model: String,
    kernel: String,
    memory: String,
    commit: String,
    tools: Vec<(String, String)>,
}

impl Machine {
    fn probe(root: &Path) -> Machine {
        let first_line = |cmd: &mut Command| -> String {
            cmd.stdin(Stdio::null())
                .output()
                .ok()
                .map(|o| {
                    let s = if o.stdout.is_empty() {
                        o.stderr
                    } else {
                        o.stdout
                    };
                    String::from_utf8_lossy(&s)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default()
        };
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .map(str::trim)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let nproc = first_line(&mut Command::new("nproc"))
            .parse()
            .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut commit = first_line(Command::new("git").arg("-C").arg(root).args([
            "rev-parse",
            "--short",
            "HEAD",
        ]));
        let dirty = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        if dirty {
            commit.push_str(" + uncommitted changes");
        }
        let tools = [
            (
                "bpftrace",
                Command::new("/usr/bin/bpftrace").arg("--version"),
            ),
            ("nginx", Command::new("/usr/sbin/nginx").arg("-v")),
            ("curl", Command::new("curl").arg("--version")),
            ("OpenSSL", Command::new("openssl").arg("version")),
            ("cc", Command::new("cc").arg("--version")),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), first_line(c)))
        .collect();
        Machine {
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            nproc,
            cpu_model,
            kernel: first_line(Command::new("uname").arg("-r")),
            memory,
            commit,
            tools,
        }
    }
}

fn render(
    m: &Machine,
    args: &BenchArgs,
    ctx: &Ctx,
    sections: &[Section],
    took: Duration,
) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# nhiwatch benchmarks\n");
    let _ = writeln!(
        r,
        "Written by `cargo xtask bench` on {} (one run, {:.1} min). **All numbers come from a \
         2-core nested VM** (Firecracker-style guest inside another VM), where trapping is \
         expensive: a uprobe hit costs several µs (≈ 6.5 µs as measured earlier on this kind of \
         VM{}), against ≈ 0.3–0.5 µs on bare metal, and enabling syscall tracepoints adds ≈ 80 \
         ns to every syscall. Absolute costs are therefore far higher than on real hardware; \
         what carries over are the ratios against the bare baseline and against the peer tools \
         measured in the same run, side by side.\n",
        m.date,
        took.as_secs_f64() / 60.0,
        ctx.uprobe_hit_us
            .map(|u| format!(
                "; ≈ {u:.1} µs per hit on the OpenSSL functions in this run, from benchmark 2's \
                 empty-probe floor"
            ))
            .unwrap_or_default()
    );
    let _ = writeln!(r, "## Summary\n");
    let _ = writeln!(r, "| Target | Measured | Verdict |");
    let _ = writeln!(r, "|---|---|---|");
    for s in sections {
        for row in &s.summary {
            let _ = writeln!(r, "| {} | {} | {} |", row.target, row.measured, row.verdict);
        }
    }
    let _ = writeln!(r, "\n## Machine\n");
    let _ = writeln!(r, "- CPUs (`nproc`): {}", m.nproc);
    let _ = writeln!(r, "- CPU model (/proc/cpuinfo): {}", m.cpu_model);
    let _ = writeln!(r, "- Kernel (`uname -r`): {}", m.kernel);
    let _ = writeln!(r, "- Memory: {}", m.memory);
    let _ = writeln!(r, "- Date: {}", m.date);
    let _ = writeln!(r, "- nhiwatch commit: {}", m.commit);
    for (n, v) in &m.tools {
        let _ = writeln!(r, "- {n}: {v}");
    }
    let loads: Vec<String> = ctx
        .loadavg
        .iter()
        .map(|(w, l)| format!("{l} (before {w})"))
        .collect();
    let _ = writeln!(r, "- Load average (1/5/15 min): {}", loads.join("; "));
    if ctx.neighbours.is_empty() {
        let _ = writeln!(
            r,
            "- Other monitors, servers or builds seen running during the run: none."
        );
    } else {
        let n: Vec<&str> = ctx.neighbours.iter().map(String::as_str).collect();
        let _ = writeln!(
            r,
            "- Other monitors, servers or builds seen running during the run (not started by the \
             benchmark; they add noise, alike for every variant of a round): {}.",
            n.join(", ")
        );
    }
    let _ = writeln!(r, "\n## Method\n");
    let _ = writeln!(
        r,
        "- One command, `cargo xtask bench`, builds nhiwatch (release), compiles the C load \
         generators in `bench/` with `cc -O2`, runs every benchmark and writes this file. \
         Options: `--rounds N` (default 7; this run: {}), `--run-secs S` (default 1.5; this run: \
         {}), `--only open,tls,rate,userspace,alerts,memory,fleet,sockets,go`.",
        args.rounds, args.run_secs
    );
    let _ = writeln!(
        r,
        "- Overhead benchmarks (1 and 2) run their variants in alternation, `bare, A, B, …, bare, \
         A, B, …`, for {} rounds, so slow drift of the machine (other tenants, frequency, a \
         neighbour's build) hits every variant alike. Workloads are pinned to the last CPU and \
         the tools to CPU 0, so a tool's own user-space work (formatting, parsing) stays off the \
         measured path; benchmark 2 also reports CPU time including the tool's process. Each \
         round first waits (up to 10 s) for other people's tracers to exit, and rounds run beside \
         one anyway are listed in the notes. Before each run the variant's tool is \
         started fresh and waited for until attached (nhiwatch: `GET /readyz` answers 200; \
         bpftrace and opensnoop: their perf-event/bpf_link descriptors in /proc/PID/fd exist and \
         stay unchanged for 1 s); after the run it must still be alive and is stopped (SIGTERM) \
         before the next variant starts.",
        args.rounds
    );
    let _ = writeln!(
        r,
        "- The workload size is calibrated once, bare, so that a bare run takes about {} s; \
         every variant then runs the same count.",
        args.run_secs
    );
    let _ = writeln!(
        r,
        "- **Median** is over rounds. **Added vs bare** is the median over rounds of (variant − \
         bare run of the same round), and **ratio** the median of (variant / bare of the same \
         round): pairing with the neighbouring bare run cancels drift, so these can differ \
         slightly from the difference of the medians. Min – max shows the spread."
    );
    let _ = writeln!(
        r,
        "- nhiwatch runs as `nhiwatch run --config <yaml> --metrics-addr 127.0.0.1:<free port>` \
         (no `--events`, so nothing is printed per event), with the bundled \
         `config/nhiwatch.yaml` in benchmarks 1 and 2. Peer tools write their output to \
         /dev/null. Logs of every started process are kept in `target/bench/logs/`."
    );
    for s in sections {
        let _ = writeln!(r, "\n## {}\n", s.title);
        r.push_str(&s.body);
    }
    if !ctx.notes.is_empty() {
        let _ = writeln!(r, "\n## Notes from this run\n");
        for n in &ctx.notes {
            let _ = writeln!(r, "- {}", n.replace('\n', "\n  "));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::Profile;

    #[test]
    fn program_time_is_read_back_from_the_profile_table() {
        let p = Profile {
            table: "| nhiwatch BPF program | Runs per request | ns per run | ns per request |\n\
                    |---|---:|---:|---:|\n\
                    | `ssl_ret` | 5.00 | 450 | 2253 |\n\
                    | `handle_sock_recv` | 4.01 | 137 | 548 |\n\
                    | `dns_ingress` | 2.01 | 194 | 389 |\n\
                    | **all** | | | **3190** |\n"
                .into(),
            ns_per_op: 3190.0,
            traps_per_op: 10.0,
        };
        assert_eq!(
            p.ns_of(|n| n.starts_with("ssl_") || n.starts_with("handle_sock_")),
            2801.0
        );
        assert_eq!(p.ns_of(|_| true), 3190.0);
    }
}
