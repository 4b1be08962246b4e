//! TLS data, socket closes and exits → finished exchanges with the session they belong to (the interpret stage for TLS).

use std::time::Instant;

use super::{
    credentials::Fingerprinter,
    minimise,
    names::DestinationNames,
    sessions::{ClosedSession, Role, SessionInfo, SessionKey, SessionStats, SessionTable},
    settings::ApiCallConfig,
    telemetry::ApiTelemetry,
    Anomaly, CallSink, Chunk, Exchange, Limits, RequestHead, RequestSummary,
};
use crate::{events::TlsData, metrics::Registry};

/// A finished (or abandoned) exchange and the TLS session it came from.
pub struct Finished {
    pub info: SessionInfo,
    pub exchange: Exchange,
}

/// Receives what the parsers find; request heads are minimised here, at once.
struct Collector {
    fp: Fingerprinter,
    /// Wall-clock seconds of the chunk being parsed (JWT expiry is judged at it).
    now_unix: i64,
    exchanges: Vec<Exchange>,
    anomalies: Vec<Anomaly>,
}

impl CallSink for Collector {
    fn request(&mut self, head: &RequestHead<'_>) -> RequestSummary {
        minimise::summarise(head, &self.fp, self.now_unix)
    }

    fn exchange(&mut self, ex: Exchange) {
        self.exchanges.push(ex);
    }

    fn anomaly(&mut self, anomaly: Anomaly) {
        self.anomalies.push(anomaly);
    }
}

pub struct ApiCallStage {
    sessions: SessionTable,
    /// Names learnt from TLS SNI and DNS answers, for calls without a Host.
    pub names: DestinationNames,
    collector: Collector,
    closed: Vec<ClosedSession>,
    last_expiry: Instant,
    /// Stats already reported as metrics.
    reported: SessionStats,
    telemetry: ApiTelemetry,
}

impl ApiCallStage {
    pub fn new(cfg: &ApiCallConfig, fp: Fingerprinter, registry: &Registry) -> ApiCallStage {
        let limits = Limits {
            max_head_bytes: cfg.max_head_bytes,
            max_in_flight: cfg.max_in_flight,
        };
        ApiCallStage {
            sessions: SessionTable::new(
                limits,
                cfg.max_sessions,
                cfg.max_buffered_bytes,
                cfg.session_idle_seconds.saturating_mul(1_000_000_000),
            ),
            names: DestinationNames::new(cfg.max_dns_names),
            collector: Collector {
                fp,
                now_unix: 0,
                exchanges: Vec::new(),
                anomalies: Vec::new(),
            },
            closed: Vec::new(),
            last_expiry: Instant::now(),
            reported: SessionStats::default(),
            telemetry: ApiTelemetry::register(registry),
        }
    }

    /// One TLS call's plaintext. Finished exchanges are appended to `out`.
    pub fn tls(&mut self, t: &TlsData<'_>, now_unix: i64, out: &mut Vec<Finished>) -> Role {
        let key = SessionKey {
            pid: t.hdr.pid,
            session: t.session,
        };
        let chunk = Chunk {
            ktime_ns: t.hdr.ktime_ns,
            direction: t.direction,
            len: t.len,
            data: t.plaintext,
        };
        self.collector.now_unix = now_unix;
        self.telemetry.stage.received.inc();
        let role = self.sessions.feed(
            key,
            t.sock,
            t.hdr.cgroup_id,
            &chunk,
            &mut self.collector,
            &mut self.closed,
        );
        if !self.collector.exchanges.is_empty() {
            if let Some(info) = self.sessions.info(&key) {
                let t = &self.telemetry;
                out.extend(self.collector.exchanges.drain(..).map(|exchange| {
                    t.call(&exchange);
                    Finished { info, exchange }
                }));
            }
        }
        self.finish_closed(out);
        role
    }

    /// The TCP connection under a session closed.
    pub fn sock_closed(&mut self, sock: u64, out: &mut Vec<Finished>) {
        if let Some(c) = self.sessions.close_sock(sock) {
            self.closed.push(c);
        }
        self.finish_closed(out);
    }

    pub fn process_exited(&mut self, pid: u32, out: &mut Vec<Finished>) {
        self.names.forget_pid(pid);
        let closed = self.sessions.close_pid(pid);
        self.closed.extend(closed);
        self.finish_closed(out);
    }

    /// Closes idle sessions, at most once a second.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Finished>) {
        if self.last_expiry.elapsed().as_secs() < 1 {
            return;
        }
        self.last_expiry = Instant::now();
        self.names.expire(now_ns);
        let closed = self.sessions.expire(now_ns);
        self.closed.extend(closed);
        self.finish_closed(out);
    }

    fn finish_closed(&mut self, out: &mut Vec<Finished>) {
        while let Some(mut c) = self.closed.pop() {
            c.finish(&mut self.collector);
            let info = c.info;
            let t = &self.telemetry;
            out.extend(self.collector.exchanges.drain(..).map(|exchange| {
                t.call(&exchange);
                Finished { info, exchange }
            }));
        }
    }

    /// Publishes what the parsers found wrong and the sessions' counters and sizes (once per
    /// batch: the parsers collect anomalies without touching a label map).
    pub fn report(&mut self) {
        self.telemetry.anomalies(self.collector.anomalies.drain(..));
        let now = self.sessions.stats();
        let d = SessionStats {
            evicted: now.evicted - self.reported.evicted,
            expired: now.expired - self.reported.expired,
            skipped_chunks: now.skipped_chunks - self.reported.skipped_chunks,
        };
        self.reported = now;
        self.telemetry
            .sessions(&d, self.sessions.roles(), self.sessions.buffered());
    }

    /// The stage's metric handles (for what the daemon parses beside HTTP: DNS, server names).
    pub fn telemetry(&self) -> &ApiTelemetry {
        &self.telemetry
    }

    pub fn buffered(&self) -> usize {
        self.sessions.buffered()
    }
}
