//! `cargo xtask bench`: placeholder replaced by the benchmark harness.

use std::path::Path;

use anyhow::Result;

#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn run(_root: &Path, _args: BenchArgs) -> Result<()> {
    anyhow::bail!("the benchmark harness is not written yet")
}
