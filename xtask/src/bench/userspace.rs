//! Benchmark 4: userspace stage costs without the kernel, from `cargo bench -p nhiwatch --bench pipeline`.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{Ctx, Section, SummaryRow};

pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let out = Command::new(crate::cargo_bin())
        .args(["bench", "-q", "-p", "nhiwatch", "--bench", "pipeline"])
        .current_dir(&ctx.root)
        .output()
        .context("running cargo bench")?;
    if !out.status.success() {
        bail!(
            "cargo bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .with_context(|| format!("{name} missing from the bench output:\n{text}"))
    };
    let resolve_ns = value("identity_resolve_cached")?;
    let drain = value("pipeline_drain_one_core")?;
    let body = format!(
        "Source: `monitor/benches/pipeline.rs`, run as `cargo bench -p nhiwatch --bench pipeline` (release, one thread, \
         median of 7 runs, no kernel involved, so this measures the daemon's own code).\n\n\
         | Measure | Median |\n|---|---:|\n\
         | Cached identity resolution (cgroup id + uid + exe → SPIFFE identity) | {resolve_ns:.0} ns/event |\n\
         | Decode + process/flow tables + identity + metrics, TCP records, no output | {drain:.0} events/s |\n\n\
         The second line is the daemon's drain capacity on one core when the kernel is not the limit: compare \
         benchmark 3, where the producer saturates first.\n"
    );
    Ok(Section {
        title: String::new(),
        body,
        summary: vec![
            SummaryRow {
                target: "4a. Cached identity resolution well under 1 µs/event".into(),
                measured: format!("{resolve_ns:.0} ns/event"),
                verdict: if resolve_ns < 1000.0 {
                    "**met**".into()
                } else {
                    "**missed**".into()
                },
            },
            SummaryRow {
                target:
                    "4b. Userspace pipeline not the bottleneck (≥ 300,000 events/s on one core)"
                        .into(),
                measured: format!("{drain:.0} events/s"),
                verdict: if drain >= 300_000.0 {
                    "**met**".into()
                } else {
                    "**missed**".into()
                },
            },
        ],
    })
}
