//! TLS data and cleartext socket data, socket closes and exits → finished exchanges with the session they belong to (the interpret stage), and which processes are proxies whose calls are someone else's.

use std::{collections::HashSet, time::Instant};

use super::{
    api_call::Transport,
    credentials::Fingerprinter,
    minimise,
    names::DestinationNames,
    sessions::{ClosedSession, Role, SessionInfo, SessionKey, SessionStats, SessionTable},
    settings::ApiCallConfig,
    telemetry::ApiTelemetry,
    Anomaly, CallSink, Chunk, Exchange, Limits, RequestHead, RequestSummary,
};
use crate::{
    events::{TlsData, TlsLibrary},
    metrics::Registry,
};

/// Processes remembered as HTTP servers; beyond it the set starts over (a proxy serves again
/// at its next inbound request and is remembered again).
const MAX_SERVERS: usize = 65536;

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
    /// Processes seen serving HTTP (an inbound request on an accepted connection, or a TLS
    /// session they read a request on).
    servers: HashSet<u32>,
    /// `api_calls.proxy_executables`: names of proxies whose outbound calls forward someone's.
    proxies: Vec<String>,
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
            servers: HashSet::new(),
            proxies: cfg.proxy_executables.clone(),
        }
    }

    /// Whether a call from this process forwards a request it received: it is a listed proxy
    /// (by executable file name or comm) and has served HTTP. Such calls are the client's,
    /// which the client's own capture already reported: they are dropped (`proxied`).
    pub fn forwards(&self, pid: u32, exe: &str, comm: &str) -> bool {
        if !self.servers.contains(&pid) {
            return false;
        }
        let base = exe.rsplit('/').next().unwrap_or(exe);
        self.proxies.iter().any(|p| p == base || p == comm)
    }

    /// Counts a call dropped by [`Self::forwards`].
    pub fn proxied(&self) {
        self.telemetry.proxied.inc();
    }

    fn served(&mut self, pid: u32) {
        if self.servers.len() >= MAX_SERVERS && !self.servers.contains(&pid) {
            self.servers.clear();
        }
        self.servers.insert(pid);
    }

    /// One TLS call's plaintext, or one socket call's cleartext. Finished exchanges are appended to `out`.
    pub fn tls(&mut self, t: &TlsData<'_>, now_unix: i64, out: &mut Vec<Finished>) -> Role {
        self.telemetry.stage.received.inc();
        if t.inbound {
            // The kernel sends one look at each accepted connection that opened with a
            // request: the process serves HTTP there; not a call of its own.
            self.telemetry.skipped_inbound();
            self.served(t.hdr.pid);
            return Role::Server;
        }
        let transport = match t.library {
            TlsLibrary::Cleartext => Transport::Tcp,
            TlsLibrary::OpenSsl | TlsLibrary::GnuTls | TlsLibrary::Go => Transport::Tls,
        };
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
        let role = self.sessions.feed_from(
            transport,
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
        if role == Role::Server {
            self.served(t.hdr.pid);
        }
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
        self.servers.remove(&pid);
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
