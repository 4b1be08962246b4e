//! Rules reloads: takes the rules paths and SIGHUP, gives each new valid `RuleSet` to the pipeline; a bad reload is logged and counted and the last good rules stay.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::SyncSender,
        Arc,
    },
    time::{Duration, SystemTime},
};

use super::{files::rules_files, load_paths, telemetry::RulesTelemetry, RuleSet};

/// What the rules files look like on disk: (path, modified, length) of every file the loader would
/// read, as the loader lists them (`rules_files`), so a change is noticed exactly where it changes
/// the rules.
pub(super) fn signature(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    rules_files(paths)
        .files
        .into_iter()
        .map(|p| match std::fs::metadata(&p) {
            Ok(m) => (p, m.modified().ok(), m.len()),
            Err(_) => (p, None, 0),
        })
        .collect()
}

/// Loads the paths that exist; none existing is an empty rule set (every identity ungoverned).
fn load_present(paths: &[PathBuf]) -> Result<RuleSet, Vec<super::RuleError>> {
    let present: Vec<PathBuf> = paths.iter().filter(|p| p.exists()).cloned().collect();
    if present.is_empty() {
        Ok(RuleSet::default())
    } else {
        load_paths(&present)
    }
}

/// Loads the rules at start. Paths that do not exist yet give an empty rule set (every identity
/// is then ungoverned) and a warning; invalid rules are an error.
pub fn initial(
    paths: &[PathBuf],
    metrics: &RulesTelemetry,
) -> Result<RuleSet, Vec<super::RuleError>> {
    for p in paths.iter().filter(|p| !p.exists()) {
        tracing::warn!(path = %p.display(), "rules path does not exist (yet): no contracts from it; it is loaded when it appears");
    }
    let set = load_present(paths);
    match &set {
        Ok(s) => {
            for w in &s.warnings {
                tracing::warn!("rules: {w}");
            }
            metrics.load(Some(s));
        }
        Err(_) => metrics.load(None),
    }
    set
}

/// Polls the rules files every `interval` and reloads on change or when `hup` is set.
pub fn spawn(
    paths: Vec<PathBuf>,
    interval: Duration,
    hup: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    metrics: RulesTelemetry,
    tx: SyncSender<RuleSet>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("nhiwatch-rules".into())
        .spawn(move || {
            let mut seen = signature(&paths);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                let now = signature(&paths);
                let asked = hup.swap(false, Ordering::Relaxed);
                if now == seen && !asked {
                    continue;
                }
                seen = now;
                match load_present(&paths) {
                    Ok(set) => {
                        for w in &set.warnings {
                            tracing::warn!("rules: {w}");
                        }
                        tracing::info!(
                            contracts = set.contracts.len(),
                            data_sources = set.data_sources.len(),
                            trigger = if asked { "SIGHUP" } else { "file change" },
                            "rules reloaded"
                        );
                        metrics.load(Some(&set));
                        if tx.send(set).is_err() {
                            return;
                        }
                    }
                    Err(errors) => {
                        for e in &errors {
                            tracing::error!("rules: {e}");
                        }
                        tracing::error!(
                            errors = errors.len(),
                            "rules reload refused: the last good rules stay in force"
                        );
                        metrics.load(None);
                    }
                }
                // What parsing allocated (all of it, for a refused load) is free now.
                crate::input::release_freed_memory();
            }
        })
}
