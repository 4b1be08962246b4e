//! Replay: takes recorded observation files, runs them through the engine in record time, gives findings as JSON lines.

use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
};

use crate::detect::{finding::Finding, Engine};
use crate::events::observation::{Decoder, Observation};
use crate::input::{BoundedLines, Line, MAX_REPLAY_LINE_BYTES};

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
    #[error(transparent)]
    Input(crate::input::InputError),
}

/// Bad lines reported individually; the rest are only counted.
const BAD_SHOWN: usize = 20;

/// What is wrong with a line, without quoting it: serde's messages for values that do not fit
/// ("invalid type: string \"…\"", "unknown variant `…`") carry the line's own bytes, and a
/// file fed to replay need not be a recording free of secrets. What it expected is ours to show.
fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let msg = e.to_string();
    let msg = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m);
    // serde's own messages end in ", expected WHAT" where WHAT comes from our types; anything
    // else (custom messages, unknown keys) may quote the line, so only the category is shown.
    let standard = [
        "invalid type: ",
        "invalid value: ",
        "invalid length ",
        "unknown variant ",
        "unknown field ",
    ];
    let what = match e.classify() {
        // The name is one of our fields.
        Category::Data if msg.starts_with("missing field ") => msg.to_owned(),
        Category::Data => match msg.rsplit_once(", expected ") {
            Some((_, expected)) if standard.iter().any(|p| msg.starts_with(p)) => {
                format!("a value does not fit: expected {expected}")
            }
            _ => "a value does not fit the record".to_owned(),
        },
        Category::Syntax | Category::Eof | Category::Io => msg.to_owned(),
    };
    format!("{what} (column {})", e.column())
}

/// Feeds every observation of `files` (in file order) to `engine`, writes each finding as it is
/// raised, and closes all open windows at the end. A line that is not an observation is skipped
/// and reported, never fatal.
pub fn replay(
    engine: &mut Engine,
    files: &[PathBuf],
    format: crate::alerts::Format,
    out: &mut dyn Write,
) -> Result<ReplayStats, ReplayError> {
    replay_with(engine, files, format, out, None)
}

/// The fleet in a replay (`fleet:` in the configuration): each observation's node is its
/// identity's, and each window is written and judged when the recording moves past it.
pub struct FleetReplay {
    pub fleet: crate::fleet::Fleet,
    pub runtime: tokio::runtime::Runtime,
    last_window: Option<i64>,
}

impl FleetReplay {
    pub fn new(fleet: crate::fleet::Fleet) -> std::io::Result<FleetReplay> {
        Ok(FleetReplay {
            fleet,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            last_window: None,
        })
    }

    fn observe(&mut self, o: &Observation, found: &mut Vec<Finding>) {
        self.defer(found);
        let w = self.fleet.window_of(o.time);
        if self.last_window.is_some_and(|l| l != w) {
            self.runtime.block_on(self.fleet.flush(found));
        }
        self.last_window = Some(w);
        self.fleet.add(o);
    }

    fn finish(&mut self, found: &mut Vec<Finding>) {
        self.defer(found);
        self.runtime.block_on(self.fleet.flush_all(found));
    }

    /// The local findings the fleet raises once for every node (`fleet::DEDUPED_FLEET_WIDE`)
    /// leave `found` for the fleet-wide claim.
    fn defer(&mut self, found: &mut Vec<Finding>) {
        let (fleet, local): (Vec<Finding>, Vec<Finding>) = std::mem::take(found)
            .into_iter()
            .partition(crate::fleet::deduped_fleet_wide);
        *found = local;
        for f in fleet {
            self.fleet.defer(f);
        }
    }
}

/// [`replay`], with the fleet's findings too when `fleet` is given.
pub fn replay_with(
    engine: &mut Engine,
    files: &[PathBuf],
    format: crate::alerts::Format,
    out: &mut dyn Write,
    mut fleet: Option<&mut FleetReplay>,
) -> Result<ReplayStats, ReplayError> {
    let mut stats = ReplayStats::default();
    let mut found: Vec<Finding> = Vec::new();
    // Lines of one identity share its `Arc`, across files too.
    let mut decoder = Decoder::default();
    for path in files {
        let reader: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            // A regular file or a pipe (`<(zcat …)`); a device such as /dev/zero never ends.
            let f = crate::input::open_file(path, true).map_err(ReplayError::Input)?;
            Box::new(std::io::BufReader::new(f))
        };
        // Bytes, not `lines()`: a line that is not UTF-8 is one bad line, not the end of the replay.
        // Bounded: a line longer than 1 MiB is one bad line, skipped without being kept.
        let mut reader = BoundedLines::new(reader, MAX_REPLAY_LINE_BYTES);
        let mut line = Vec::new();
        let mut i = 0;
        loop {
            let got = reader
                .next_line(&mut line)
                .map_err(|source| ReplayError::Read {
                    path: path.clone(),
                    source,
                })?;
            if got == Line::End {
                break;
            }
            i += 1;
            if let Line::TooLong(n) = got {
                stats.bad_total += 1;
                if stats.bad_lines.len() < BAD_SHOWN {
                    stats.bad_lines.push((
                        path.clone(),
                        i,
                        format!(
                            "line {i} is {n} bytes, longer than the limit of {MAX_REPLAY_LINE_BYTES} bytes; skipped"
                        ),
                    ));
                }
                continue;
            }
            if line.trim_ascii().is_empty() {
                continue;
            }
            match decoder.decode(&line) {
                Ok(o) => {
                    stats.observations += 1;
                    engine.observe(&o, &mut found);
                    if let Some(f) = fleet.as_deref_mut() {
                        f.observe(&o, &mut found);
                    }
                }
                Err(e) => {
                    stats.bad_total += 1;
                    if stats.bad_lines.len() < BAD_SHOWN {
                        stats.bad_lines.push((path.clone(), i, describe(&e)));
                    }
                }
            }
            write(out, format, &mut found, &mut stats)?;
        }
    }
    engine.finish(&mut found);
    if let Some(f) = fleet {
        f.finish(&mut found);
    }
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

#[cfg(test)]
mod describe_tests {
    use super::*;

    fn err(line: &str) -> String {
        describe(&serde_json::from_str::<Observation>(line).unwrap_err())
    }

    #[test]
    fn bad_lines_are_described_without_their_values() {
        let secret = "sk-ant-api03-LEAKME";
        for line in [
            format!(r#"{{"time":"{secret}"}}"#),
            format!(r#"{{"time":1,"identity":{{"kind":"{secret}"}}}}"#),
            format!(r#"[{{"{secret}":1}}"#),
            format!(r#"{{"time": {secret}}}"#),
            // A value that imitates serde's own wording, in a custom message and a standard one.
            format!(r#"{{"time":"x, expected {secret}"}}"#),
            format!(r#"{{"time":1,"identity":{{"kind":"a, expected {secret}"}}}}"#),
        ] {
            let d = err(&line);
            assert!(!d.contains("LEAKME"), "{d}");
            assert!(d.contains("(column "), "{d}");
        }
        // Our own deserializers quote the value too ("bad time \"…\"").
        let d = err(r#"{"time":"LEAKME"}"#);
        assert_eq!(d, "a value does not fit the record (column 17)");
        let d = err(r#"{"time":1}"#);
        assert_eq!(d, "a value does not fit: expected a string (column 9)");
        assert!(err("{").contains("EOF"), "{}", err("{"));
    }

    #[test]
    fn a_line_that_is_not_utf8_is_one_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        std::fs::write(&p, b"\xff\xfe not json\n{\"nope\":1}\n").unwrap();
        let mut engine = Engine::new(
            crate::contracts::RuleSet::default(),
            crate::detect::DetectConfig::default(),
        );
        let stats = replay(
            &mut engine,
            &[p],
            crate::alerts::Format::Native,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(stats.bad_total, 2);
        assert_eq!(stats.bad_lines[0].1, 1);
        assert_eq!(stats.bad_lines[1].1, 2);
    }
}
