//! Replay: takes recorded observation files, runs them through the engine in record time, gives findings as JSON lines.

use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
};

use super::{finding::Finding, Engine};
use crate::events::observation::Observation;

#[derive(Debug, Default)]
pub struct ReplayStats {
    pub observations: u64,
    pub findings: u64,
    /// Lines that were not observations: (file, line, error), the first few only.
    pub bad_lines: Vec<(PathBuf, usize, String)>,
    pub bad_total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing findings: {0}")]
    Write(std::io::Error),
}

/// Bad lines reported individually; the rest are only counted.
const BAD_SHOWN: usize = 20;

/// Feeds every observation of `files` (in file order) to `engine`, writes each finding as it is
/// raised, and closes all open windows at the end. A line that is not an observation is skipped
/// and reported, never fatal.
pub fn replay(
    engine: &mut Engine,
    files: &[PathBuf],
    format: crate::alerts::Format,
    out: &mut dyn Write,
) -> Result<ReplayStats, ReplayError> {
    let mut stats = ReplayStats::default();
    let mut found: Vec<Finding> = Vec::new();
    for path in files {
        let reader: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            let f = std::fs::File::open(path).map_err(|source| ReplayError::Read {
                path: path.clone(),
                source,
            })?;
            Box::new(std::io::BufReader::new(f))
        };
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|source| ReplayError::Read {
                path: path.clone(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Observation>(&line) {
                Ok(o) => {
                    stats.observations += 1;
                    engine.observe(&o, &mut found);
                }
                Err(e) => {
                    stats.bad_total += 1;
                    if stats.bad_lines.len() < BAD_SHOWN {
                        stats.bad_lines.push((path.clone(), i + 1, e.to_string()));
                    }
                }
            }
            write(out, format, &mut found, &mut stats)?;
        }
    }
    engine.finish(&mut found);
    write(out, format, &mut found, &mut stats)?;
    out.flush().map_err(ReplayError::Write)?;
    Ok(stats)
}

fn write(
    out: &mut dyn Write,
    format: crate::alerts::Format,
    found: &mut Vec<Finding>,
    stats: &mut ReplayStats,
) -> Result<(), ReplayError> {
    for f in found.drain(..) {
        stats.findings += 1;
        out.write_all(format.render(&f).as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .map_err(ReplayError::Write)?;
    }
    Ok(())
}
