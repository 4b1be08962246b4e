//! `cargo xtask`: installs what the project needs, then builds, runs, tests and benchmarks nhiwatch.

mod bench;
mod fuzz;

pub use xtask::is_root;
use xtask::{deps, image};

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark nhiwatch"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the system packages nhiwatch needs (clang, llvm, libbpf-dev, bpftool).
    Deps {
        /// Also install what the tests and benchmarks need (nginx, gnutls-bin, libbpf-tools, bpftrace …).
        #[arg(long)]
        all: bool,
    },
    /// Install what is missing, build (release) and run the monitor on this host
    /// with the bundled default configuration. Extra arguments go to `nhiwatch run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what tests need and run every test: formatting, lints, unit tests,
    /// then the privileged end-to-end tests that load the real probes (root).
    Test {
        /// Only run end-to-end tests whose name contains this.
        filter: Option<String>,
    },
    /// Measure overhead and throughput side by side with peers; writes BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Build the container image `nhiwatch:<version>` (release binary, deploy/container/Containerfile)
    /// with podman, installing podman, runc and debootstrap if missing; prints its size.
    Image {
        /// The runtime base: `auto` (the public debian:bookworm-slim when it can be pulled, else a
        /// Debian bookworm bootstrapped here from the Debian archive), `public`, `local`, or an
        /// image reference.
        #[arg(long, default_value = "auto")]
        base: String,
        /// Image name and tag.
        #[arg(long, default_value = concat!("localhost/nhiwatch:", env!("CARGO_PKG_VERSION")))]
        tag: String,
        /// Put this daemon binary in the image instead of building the release one.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Fuzz the protocol parsers (HTTP/1, HTTP/2 + HPACK, JWT, DNS) with cargo-fuzz.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Only this target.
        target: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Deps { all } => deps::ensure(if all {
            deps::Set::All
        } else {
            deps::Set::Build
        }),
        Cmd::Run { args } => {
            deps::ensure(deps::Set::Build)?;
            cargo(&["build", "--release", "-p", "nhiwatch"])?;
            let bin = root.join("target/release/nhiwatch");
            // The bundled defaults, with the repository's example contracts as the rules.
            let cfg = root.join("target/xtask-run.yaml");
            std::fs::write(
                &cfg,
                format!(
                    "# Written by `cargo xtask run`: the bundled defaults plus the repository's rules.\nrules: [{}]\n",
                    root.join("rules").display()
                ),
            )
            .with_context(|| format!("writing {}", cfg.display()))?;
            let mut cmd = privileged(&bin);
            cmd.arg("run").arg("--config").arg(&cfg).args(&args);
            eprintln!("xtask: running {cmd:?}");
            let status = cmd.status().context("starting nhiwatch")?;
            if !status.success() {
                bail!("nhiwatch exited with {status}");
            }
            Ok(())
        }
        Cmd::Test { filter } => test(&root, filter),
        Cmd::Image { base, tag, binary } => {
            deps::ensure(deps::Set::Build)?;
            deps::ensure_list(&deps::CONTAINERS.iter().collect::<Vec<_>>())?;
            let binary = match binary {
                Some(b) => b,
                None => {
                    cargo(&["build", "--release", "-p", "nhiwatch"])?;
                    target_dir(&root).join("release/nhiwatch")
                }
            };
            let podman = image::Podman::new(&root);
            let base = image::resolve_base(&podman, &image::cache_dir(&root), &base)?;
            let built = image::build(&podman, &root, &binary, &base, &tag, &[])?;
            println!(
                "xtask: built {} ({}) on {base}: {:.1} MiB",
                built.tag,
                &built.id[..12.min(built.id.len())],
                built.size as f64 / (1024.0 * 1024.0)
            );
            Ok(())
        }
        Cmd::Fuzz { seconds, target } => fuzz::run(&root, seconds, target.as_deref()),
        Cmd::Bench(args) => {
            deps::ensure(deps::Set::All)?;
            bench::run(&root, args)
        }
    }
}

fn test(root: &Path, filter: Option<String>) -> Result<()> {
    deps::ensure(deps::Set::All)?;
    cargo(&["fmt", "--all", "--", "--check"])
        .context("formatting differs: run `cargo fmt --all`")?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["build", "-p", "nhiwatch"])?;
    let mut tally = Tally::default();
    // Unprivileged: unit tests, decoder, ABI and CO-RE object checks.
    let mut unit = Command::new(cargo_bin());
    unit.args(["test", "-p", "nhiwatch", "-p", "xtask"]);
    run_counted(&mut unit, &mut tally)?;
    // Each parser's fuzz target, briefly: a crash fails the run.
    fuzz::run_brief(root, 15)?;
    // Privileged: the real probes against real clients and servers.
    let bin = root.join("target/debug/nhiwatch");
    let mut args = vec!["test", "-p", "nhiwatch-e2e", "--", "--test-threads=1"];
    if let Some(f) = filter.as_deref() {
        args.push(f);
    }
    let mut cmd = if is_root() {
        let mut c = Command::new(cargo_bin());
        c.args(&args);
        c
    } else if has_sudo() {
        eprintln!("xtask: end-to-end tests load BPF programs: running them with sudo");
        let mut c = Command::new("sudo");
        c.args([
            "-E",
            "env",
            &format!("PATH={}", std::env::var("PATH").unwrap_or_default()),
        ]);
        c.arg(cargo_bin()).args(&args);
        c
    } else {
        bail!("the end-to-end tests load BPF programs and need root: run `sudo cargo xtask test`");
    };
    cmd.env("NHIWATCH_BIN", &bin);
    let r = run_counted(&mut cmd, &mut tally);
    // One closing line over every test binary, so a reader of the log's end sees the whole run.
    println!(
        "xtask test: {} passed, {} failed",
        tally.passed, tally.failed
    );
    r
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

/// Runs a `cargo test`, echoing its output, and adds up its "test result" lines.
fn run_counted(cmd: &mut Command, tally: &mut Tally) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            tally.passed += num("passed");
            tally.failed += num("failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!(
            "xtask test: {} passed, {} failed",
            tally.passed,
            tally.failed.max(1)
        );
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(cargo_bin()).args(args))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn has_sudo() -> bool {
    Command::new("sudo")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The command, through sudo when we are not root.
pub fn privileged(bin: &Path) -> Command {
    if is_root() {
        Command::new(bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg(bin);
        c
    }
}
