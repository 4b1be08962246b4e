//! Where the daemon's own output lives: the `--events` views and the JSON-lines writer that prints events and findings to stdout.

pub mod events;

use std::io::Write;

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

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}
