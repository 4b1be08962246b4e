//! The `--events` JSON lines: takes kernel events, API calls and learnt names with their identity and process, gives one metadata-only object per line (never plaintext).

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use serde::Serialize;

use crate::{
    context::{
        flows::{Flow, FlowTable},
        process_table::{ProcessInfo, ProcessTable},
    },
    events::{Direction, Event, Exec, FileOpen, OpenPath, TlsData, TlsLibrary},
    identity::{Attributed, IdentityView},
    probes::watch::{path_of, WatchTarget},
    protocol::names::DestinationNames,
};

/// What an event's line needs besides the event: the tables the pipeline keeps.
pub struct EventContext<'a> {
    pub clock: &'a crate::events::Clock,
    pub procs: &'a ProcessTable,
    pub flows: &'a FlowTable,
    pub watch_targets: &'a Arc<RwLock<Vec<WatchTarget>>>,
    pub names: Option<&'a DestinationNames>,
}

#[derive(Serialize)]
pub struct ProcessView<'a> {
    /// `known`, or `unknown` when neither an exec/fork event nor the /proc scan saw it.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum Detail<'a> {
    Exec {
        filename: Cow<'a, str>,
        ppid: u32,
        uid: u32,
        gid: u32,
    },
    Fork {
        ppid: u32,
        uid: u32,
    },
    Exit {
        exit_code: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    FileOpen {
        path: String,
        result: i64,
        flags: u32,
        matched_by: &'static str,
        watch: Cow<'a, str>,
    },
    Tcp {
        flow: u64,
        src: String,
        dst: String,
        /// The name this cgroup resolved through DNS for `dst`'s address.
        #[serde(skip_serializing_if = "Option::is_none")]
        dst_name: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_sent: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_received: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        duration_ms: Option<f64>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        failed: bool,
    },
    /// Metadata only: the plaintext itself never reaches output.
    Tls {
        direction: &'static str,
        library: &'static str,
        /// `tls`, or `tcp` for cleartext read or written on a TCP socket.
        transport: &'static str,
        len: u32,
        captured: usize,
        flow: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        dst: Option<String>,
    },
    /// DNS answers and SNI are output by `names_record`, never through here.
    Names {},
}

/// What a DNS answer or a TLS SNI taught about destination names.
#[derive(Serialize)]
#[serde(untagged)]
pub enum NameDetail {
    Dns {
        query: String,
        addresses: Vec<std::net::IpAddr>,
        ttl: u32,
    },
    Sni {
        server_name: String,
    },
}

#[derive(Serialize)]
pub struct EventRecord<'a> {
    pub time: String,
    pub kind: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub identity: IdentityView<'a>,
    pub process: ProcessView<'a>,
    #[serde(flatten)]
    pub detail: Detail<'a>,
}

/// What `--events` prints for observations derived from kernel records (API
/// calls, names learnt): the common fields, then the observation's own.
#[derive(Serialize)]
pub struct ObservationRecord<'a, D: Serialize> {
    pub time: String,
    pub kind: &'static str,
    pub pid: u32,
    pub cgroup_id: u64,
    pub identity: IdentityView<'a>,
    pub process: ProcessView<'a>,
    #[serde(flatten)]
    pub detail: D,
}

/// An `--events` line held until its identity is known: serialized now exactly as the direct
/// path prints it, and cut around the identity's value, so that releasing it changes that value
/// and nothing else. (Replacing the identity in a `serde_json::Value` instead would print every
/// key sorted, unlike every other line.)
pub struct HeldLine {
    line: String,
    /// Byte range of the identity's value in `line`; None (never seen) prints the line as held.
    identity: Option<std::ops::Range<usize>>,
}

impl HeldLine {
    /// `rec` carries `identity` as its `identity` field. None only when `rec` cannot be
    /// serialized, which the direct path would not print either.
    pub fn new<T: Serialize>(rec: &T, identity: &IdentityView<'_>) -> Option<HeldLine> {
        let line = serde_json::to_string(rec).ok()?;
        let value = serde_json::to_string(identity).ok()?;
        // The first `"identity":` is the record's own key: the fields before it are numbers and
        // fixed words, and a string could hold the text only with its quotes escaped.
        const KEY: &str = "\"identity\":";
        let identity = line
            .find(KEY)
            .map(|at| at + KEY.len()..at + KEY.len() + value.len())
            .filter(|r| line.get(r.clone()) == Some(value.as_str()));
        Some(HeldLine { line, identity })
    }

    /// The line with the identity the event was finally attributed to (no newline).
    pub fn with_identity(&self, identity: &IdentityView<'_>) -> String {
        let (Some(r), Ok(value)) = (&self.identity, serde_json::to_string(identity)) else {
            return self.line.clone();
        };
        let mut out = String::with_capacity(self.line.len() + value.len());
        out.push_str(&self.line[..r.start]);
        out.push_str(&value);
        out.push_str(&self.line[r.end..]);
        out
    }
}

impl<'a> ProcessView<'a> {
    pub fn of(p: Option<&'a ProcessInfo>) -> ProcessView<'a> {
        ProcessView {
            status: if p.is_some() { "known" } else { "unknown" },
            exe: p.map(|p| &*p.exe),
            comm: p.map(|p| &*p.comm),
            uid: p.map(|p| p.uid),
            ppid: p.map(|p| p.ppid),
        }
    }
}

impl<'a> EventRecord<'a> {
    /// The `--events` line of a kernel event.
    pub fn new(
        ev: &'a Event<'_>,
        flow: Option<Flow>,
        attributed: &'a Attributed,
        cx: &'a EventContext<'a>,
    ) -> EventRecord<'a> {
        let hdr = *ev.header();
        // Only file events need the watch table: don't lock it for the others.
        let targets = match ev {
            Event::FileOpen(_) => cx
                .watch_targets
                .read()
                .map(|t| t.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let detail = match ev {
            Event::Exec(Exec {
                filename,
                ppid,
                uid,
                gid,
                ..
            }) => Detail::Exec {
                filename: String::from_utf8_lossy(filename),
                ppid: *ppid,
                uid: *uid,
                gid: *gid,
            },
            Event::Fork(f) => Detail::Fork {
                ppid: f.ppid,
                uid: f.uid,
            },
            Event::Exit(x) => Detail::Exit {
                exit_code: (x.exit_code >> 8) & 0xff,
                signal: (x.exit_code & 0x7f != 0).then_some(x.exit_code & 0x7f),
            },
            Event::FileOpen(FileOpen {
                result,
                open_flags,
                watch_id,
                path,
                ..
            }) => Detail::FileOpen {
                path: path_of(&targets, *watch_id, path),
                result: *result,
                flags: *open_flags,
                matched_by: match path {
                    OpenPath::Argument(_) => "path",
                    OpenPath::Dentries(_) => "inode",
                },
                watch: targets
                    .get(*watch_id as usize)
                    .map(|t| Cow::Owned(t.pattern.clone()))
                    .unwrap_or(Cow::Borrowed("?")),
            },
            Event::TcpConnect(t) | Event::TcpClose(t) => {
                let closing = matches!(ev, Event::TcpClose(_));
                // At close the kernel has already unbound the local port: the
                // tuple recorded at connect is the one users want.
                let (src, dst) = match flow {
                    Some(f) if !t.failed => (f.local, f.remote),
                    _ => (
                        SocketAddr::new(t.saddr, t.sport),
                        SocketAddr::new(t.daddr, t.dport),
                    ),
                };
                Detail::Tcp {
                    flow: flow.map_or(0, |f| f.id),
                    src: src.to_string(),
                    dst: dst.to_string(),
                    dst_name: cx
                        .names
                        .and_then(|n| n.resolve(hdr.cgroup_id, dst.ip(), hdr.ktime_ns)),
                    bytes_sent: closing.then_some(t.bytes_sent),
                    bytes_received: closing.then_some(t.bytes_received),
                    duration_ms: closing
                        .then(|| hdr.ktime_ns.saturating_sub(t.start_ns) as f64 / 1e6),
                    failed: t.failed,
                }
            }
            Event::TlsData(TlsData {
                sock,
                direction,
                library,
                len,
                plaintext,
                ..
            }) => {
                let flow = cx.flows.by_sock(*sock);
                Detail::Tls {
                    direction: match direction {
                        Direction::Write => "write",
                        Direction::Read => "read",
                    },
                    library: match library {
                        TlsLibrary::OpenSsl => "openssl",
                        TlsLibrary::GnuTls => "gnutls",
                        TlsLibrary::Go => "go",
                        TlsLibrary::Cleartext => "none",
                    },
                    transport: library.transport(),
                    len: *len,
                    captured: plaintext.len(),
                    flow: flow.map(|f| f.id),
                    dst: flow.map(|f| f.remote.to_string()),
                }
            }
            Event::DnsAnswer(_) | Event::TlsSni(_) => Detail::Names {},
        };
        let process = ProcessView::of(cx.procs.get(hdr.pid));
        EventRecord {
            time: humantime::format_rfc3339_nanos(cx.clock.wall(hdr.ktime_ns)).to_string(),
            kind: ev.kind().name(),
            pid: hdr.pid,
            tid: hdr.tid,
            cgroup_id: hdr.cgroup_id,
            identity: attributed.view(),
            process,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use super::*;
    use crate::{
        events::{Clock, Exit, Header},
        identity::{Attribution, IdentityKind, WorkloadIdentity},
    };

    /// Keys in the order they are printed, nested objects included (a `serde_json::Value`
    /// would sort them, so the text is read).
    fn key_sequence(line: &str) -> Vec<&str> {
        let b = line.as_bytes();
        let (mut keys, mut at, mut start, mut in_str) = (Vec::new(), 0, 0, false);
        while at < b.len() {
            match (in_str, b[at]) {
                (true, b'\\') => at += 1,
                (true, b'"') => {
                    in_str = false;
                    if b.get(at + 1) == Some(&b':') {
                        keys.push(&line[start..at]);
                    }
                }
                (false, b'"') => {
                    in_str = true;
                    start = at + 1;
                }
                _ => {}
            }
            at += 1;
        }
        keys
    }

    fn resolved() -> Attributed {
        Attributed {
            status: Attribution::Resolved,
            identity: Some(Arc::new(WorkloadIdentity {
                id: "spiffe://cluster.local/ns/billing/sa/claims-sync".into(),
                kind: IdentityKind::Kubernetes,
                namespace: Some("billing".into()),
                service_account: Some("claims-sync".into()),
                pod: Some("claims-sync-7d9".into()),
                pod_uid: Some("0d1c".into()),
                container: Some("sync".into()),
                container_id: Some("c0ffee".into()),
                image: None,
                owner: Some("ReplicaSet/claims-sync-rs".into()),
                unit: None,
                uid: None,
                user: None,
                exe: None,
                node: "node-1".into(),
            })),
            pod_uid: None,
            container_id: None,
        }
    }

    #[test]
    fn a_released_line_is_printed_like_a_direct_one() {
        let ev = Event::Exit(Exit {
            hdr: Header {
                ktime_ns: 5_000_000,
                pid: 42,
                tid: 42,
                cgroup_id: 7,
            },
            exit_code: 9,
            start_time_ns: 1,
        });
        let clock = Clock::now();
        let procs = ProcessTable::new(16, 1);
        let flows = FlowTable::new(16);
        let watch_targets = Arc::new(RwLock::new(Vec::new()));
        let cx = EventContext {
            clock: &clock,
            procs: &procs,
            flows: &flows,
            watch_targets: &watch_targets,
            names: None,
        };
        let pending = Attributed {
            status: Attribution::Pending,
            identity: None,
            pod_uid: Some("0d1c".into()),
            container_id: Some("c0ffee".into()),
        };
        let now = resolved();
        let held = HeldLine::new(&EventRecord::new(&ev, None, &pending, &cx), &pending.view())
            .expect("serializable")
            .with_identity(&now.view());
        let direct = serde_json::to_string(&EventRecord::new(&ev, None, &now, &cx)).unwrap();
        assert_eq!(key_sequence(&held), key_sequence(&direct));
        assert_eq!(held, direct);
        assert!(
            key_sequence(&direct).starts_with(&[
                "time",
                "kind",
                "pid",
                "tid",
                "cgroup_id",
                "identity"
            ]),
            "{direct}"
        );
    }
}
