//! Rules reloads: takes the rules paths and SIGHUP, gives each new valid `RuleSet` to the pipeline; a bad reload is logged and counted and the last good rules stay.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::SyncSender,
        Arc,
    },
    time::{Duration, SystemTime},
};

use super::{load_paths, telemetry::RulesTelemetry, RuleSet};

/// What the rules files look like on disk: (path, modified, length) of every file read.
fn signature(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    fn visit(p: &Path, out: &mut Vec<(PathBuf, Option<SystemTime>, u64)>) {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                if let Ok(rd) = std::fs::read_dir(p) {
                    let mut entries: Vec<PathBuf> =
                        rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                    entries.sort();
                    for e in entries {
                        let yaml = e.extension().is_some_and(|x| x == "yaml" || x == "yml");
                        if yaml || e.is_dir() {
                            visit(&e, out);
                        }
                    }
                }
            }
            Ok(m) => out.push((p.to_owned(), m.modified().ok(), m.len())),
            Err(_) => out.push((p.to_owned(), None, 0)),
        }
    }
    let mut out = Vec::new();
    for p in paths {
        visit(p, &mut out);
    }
    out
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
            }
        })
}
