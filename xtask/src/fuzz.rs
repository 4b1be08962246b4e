//! Runs the protocol parsers' cargo-fuzz targets (monitor/fuzz) for a while each; installs cargo-fuzz when missing.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// Every target in monitor/fuzz/Cargo.toml.
pub const TARGETS: [&str; 7] = [
    "http1",
    "http2",
    "jwt",
    "dns",
    "rules",
    "observations",
    "labels",
];

/// The toolchain that builds the fuzz targets (sanitizers need nightly).
const TOOLCHAIN: &str = "+nightly";

fn cargo_fuzz_present() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn ensure_tools() -> Result<()> {
    let nightly = Command::new("cargo")
        .args([TOOLCHAIN, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        bail!("fuzzing needs a nightly toolchain (`rustup toolchain install nightly`)");
    }
    if !cargo_fuzz_present() {
        eprintln!("xtask: installing cargo-fuzz");
        crate::run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz@0.13.2"]))?;
    }
    Ok(())
}

/// The test command's brief run: a crash fails it; a machine that cannot build
/// fuzz targets at all (no nightly toolchain, cargo-fuzz not installable) is
/// reported loudly and skipped, since the parsers' unit and property tests still run.
pub fn run_brief(root: &Path, seconds: u64) -> Result<()> {
    if let Err(e) = ensure_tools() {
        eprintln!("xtask: WARNING: fuzz targets NOT run: {e:#}");
        return Ok(());
    }
    run(root, seconds, None)
}

/// Structured inputs start from real ones (the shipped rules, recorded scenarios), so 15 s
/// explore near valid documents rather than rediscovering YAML or JSON.
fn seed(root: &Path, target: &str, corpus: &Path) -> Result<()> {
    if std::fs::read_dir(corpus)?.next().is_some() {
        return Ok(());
    }
    let mut n = 0;
    let mut put = |text: &str| -> Result<()> {
        n += 1;
        std::fs::write(corpus.join(format!("seed-{n}")), text)?;
        Ok(())
    };
    match target {
        "rules" => {
            for f in ["rules/data-sources.yaml", "rules/contracts.yaml"] {
                put(&std::fs::read_to_string(root.join(f))?)?;
            }
        }
        "observations" => {
            let dir = root.join("tests/scenarios");
            let mut scenarios: Vec<_> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path().join("observations.jsonl")))
                .filter(|p| p.exists())
                .collect();
            scenarios.sort();
            for p in scenarios {
                let text = std::fs::read_to_string(&p)?;
                let head: Vec<&str> = text.lines().take(40).collect();
                put(&head.join("\n"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Fuzzes each target for `seconds`; any crash fails the run (its input is in
/// monitor/fuzz/artifacts/<target>/).
pub fn run(root: &Path, seconds: u64, only: Option<&str>) -> Result<()> {
    ensure_tools()?;
    let dir = root.join("monitor");
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        seed(root, target, &corpus)?;
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&dir)
            .args([TOOLCHAIN, "fuzz", "run", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ]);
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        // libFuzzer reports every new input; keep that in a log and show the totals.
        let log_path = root.join("target/fuzz-logs").join(format!("{target}.log"));
        std::fs::create_dir_all(log_path.parent().expect("has a parent"))?;
        let log = std::fs::File::create(&log_path)?;
        let status = cmd
            .stderr(log)
            .status()
            .with_context(|| format!("starting cargo fuzz for {target}"))?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            bail!(
                "fuzz target {target} failed ({status}): input in monitor/fuzz/artifacts/{target}/, log {}",
                log_path.display()
            );
        }
        for l in text
            .lines()
            .filter(|l| l.starts_with("stat::") || l.starts_with("Done "))
        {
            eprintln!("xtask: {target}: {l}");
        }
    }
    Ok(())
}
