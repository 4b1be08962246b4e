//! Where the daemon's own output lives: the `--events` views and the stdout sink that prints events and findings as JSON lines.

pub mod events;

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::metrics::StageTelemetry;

/// One JSON object per line to a writer (stdout), counting what could not be written.
pub struct JsonLines {
    out: Box<dyn Write + Send>,
    telemetry: StageTelemetry,
    /// The daemon's `userspace_dropped{reason="event_output"}`.
    dropped: Counter,
}

impl JsonLines {
    pub fn new(out: Box<dyn Write + Send>, telemetry: StageTelemetry, dropped: Counter) -> Self {
        JsonLines {
            out,
            telemetry,
            dropped,
        }
    }

    pub fn write<T: Serialize>(&mut self, rec: &T) {
        self.telemetry.received.inc();
        let ok =
            serde_json::to_writer(&mut self.out, rec).is_ok() && self.out.write_all(b"\n").is_ok();
        if ok {
            self.telemetry.emitted.inc();
        } else {
            self.telemetry.errors.inc();
            self.dropped.inc();
        }
    }

    /// A line already serialized (a released `events::HeldLine`), counted like the others.
    pub fn write_line(&mut self, line: &str) {
        self.telemetry.received.inc();
        let ok = self.out.write_all(line.as_bytes()).is_ok() && self.out.write_all(b"\n").is_ok();
        if ok {
            self.telemetry.emitted.inc();
        } else {
            self.telemetry.errors.inc();
            self.dropped.inc();
        }
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

/// Standard output as a sink: the pipeline's `--events` lines and the findings stage's findings
/// go through one writer, so a finding follows the events that raised it in the order they were
/// judged. Both write from the pipeline thread: the lock is never contended.
#[derive(Clone)]
pub struct Stdout(Arc<Mutex<JsonLines>>);

impl Stdout {
    pub fn new(lines: JsonLines) -> Stdout {
        Stdout(Arc::new(Mutex::new(lines)))
    }

    pub fn write<T: Serialize>(&self, rec: &T) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(rec);
    }

    pub fn write_line(&self, line: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_line(line);
    }

    pub fn flush(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}
