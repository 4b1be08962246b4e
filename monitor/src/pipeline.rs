//! The userspace pipeline for kernel records: decode → process/flow context → metrics and `--events` output.

use std::{
    borrow::Cow,
    collections::VecDeque,
    io::Write,
    net::SocketAddr,
    sync::{mpsc::SyncSender, Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use crate::{
    events::{
        api_call::{self, ApiCall},
        decode,
        flows::{Flow, FlowTable},
        observation::{Activity, ApiCallSeen, CredentialSeen, Observation},
        process_table::ProcessInfo,
        process_table::ProcessTable,
        Direction, Event, EventKind, Exec, FileOpen, OpenPath, TlsData, TlsLibrary,
    },
    identity::{
        inventory::Inventory, Attributed, Attribution, IdentityResolver, IdentityView,
        WorkloadIdentity,
    },
    metrics::{Metrics, ReasonLabel},
    probes::{reader::RecordHandler, watch::path_of, watch::WatchTarget},
};

pub mod api_calls;
pub mod findings;

use api_calls::{ApiCallStage, Finished};

/// Requests the pipeline sends to the sensor upkeep thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpkeepRequest {
    /// A process exec'd: look for TLS libraries in its mappings.
    ScanProcess(u32),
}

/// Converts kernel boot-clock timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    boot_to_unix_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let boot = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Clock {
            boot_to_unix_ns: unix - boot,
        }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        let unix = (i128::from(ktime_ns) + self.boot_to_unix_ns).max(0) as u64;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(unix)
    }
}

#[derive(Serialize)]
struct ProcessView<'a> {
    /// `known`, or `unknown` when neither an exec/fork event nor the /proc scan saw it.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exe: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ppid: Option<u32>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Detail<'a> {
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
enum NameDetail {
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
struct EventRecord<'a> {
    time: String,
    kind: &'static str,
    pid: u32,
    tid: u32,
    cgroup_id: u64,
    identity: IdentityView<'a>,
    process: ProcessView<'a>,
    #[serde(flatten)]
    detail: Detail<'a>,
}

/// What `--events` prints for observations derived from kernel records (API
/// calls, names learnt): the common fields, then the observation's own.
#[derive(Serialize)]
struct ObservationRecord<'a, D: Serialize> {
    time: String,
    kind: &'static str,
    pid: u32,
    cgroup_id: u64,
    identity: IdentityView<'a>,
    process: ProcessView<'a>,
    #[serde(flatten)]
    detail: D,
}

/// Stage state for everything above the kernel.
pub struct Pipeline {
    pub procs: ProcessTable,
    pub flows: FlowTable,
    watch_targets: Arc<RwLock<Vec<WatchTarget>>>,
    metrics: Arc<Metrics>,
    upkeep: Option<SyncSender<UpkeepRequest>>,
    out: Option<Box<dyn Write + Send>>,
    clock: Clock,
    pub identity: IdentityResolver,
    pub inventory: Inventory,
    held: VecDeque<Held>,
    hold: Duration,
    held_generation: u64,
    /// TLS plaintext → API calls; None leaves plaintext unparsed.
    api: Option<ApiCallStage>,
    /// Scratch: exchanges finished by the event being handled.
    finished: Vec<Finished>,
    /// Observations → contracts and detectors → findings; None judges nothing.
    findings: Option<findings::FindingsStage>,
    /// Standard output for findings when `--events` is off (with it, findings share `out`).
    findings_out: Option<Box<dyn Write + Send>>,
    /// When `batch_done` last ran: idle poll ticks do its timed work only every `IDLE_UPKEEP`.
    last_upkeep: Instant,
}

/// How often an idle pipeline expires sessions, releases held events, closes finding windows and
/// refreshes its gauges. Every timed duty is coarser than this (seconds), and a poll tick that
/// found records does all of it at once; skipping it on the other ticks is most of the idle CPU.
const IDLE_UPKEEP: Duration = Duration::from_millis(20);

/// An event whose pod metadata has not arrived, waiting to be re-attributed.
struct Held {
    deadline: Instant,
    cgroup_id: u64,
    proc: Option<ProcessInfo>,
    /// None for API calls, which are not kernel events.
    kind: Option<EventKind>,
    ktime_ns: u64,
    file: Option<String>,
    dest: Option<String>,
    record: Option<serde_json::Value>,
    /// What the detectors are to judge once the identity is known.
    pid: u32,
    activity: Option<Activity>,
}

/// Held events at most; beyond this they go out as `pending` rather than pile up.
const HELD_MAX: usize = 65536;

impl Pipeline {
    pub fn new(
        procs: ProcessTable,
        watch_targets: Arc<RwLock<Vec<WatchTarget>>>,
        metrics: Arc<Metrics>,
        upkeep: Option<SyncSender<UpkeepRequest>>,
        out: Option<Box<dyn Write + Send>>,
        identity: IdentityResolver,
        hold: Duration,
    ) -> Pipeline {
        Pipeline {
            api: None,
            finished: Vec::new(),
            findings: None,
            findings_out: None,
            identity,
            inventory: Inventory::new(16384),
            held: VecDeque::new(),
            hold,
            held_generation: 0,
            procs,
            flows: FlowTable::new(1 << 16),
            watch_targets,
            metrics,
            upkeep,
            out,
            clock: Clock::now(),
            last_upkeep: Instant::now(),
        }
    }

    /// Judges observations against the contracts with this stage.
    pub fn with_findings(mut self, stage: findings::FindingsStage) -> Pipeline {
        if stage.stdout && self.out.is_none() {
            self.findings_out = Some(Box::new(std::io::LineWriter::new(std::io::stdout())));
        }
        self.findings = Some(stage);
        self
    }

    pub fn findings_stage(&mut self) -> Option<&mut findings::FindingsStage> {
        self.findings.as_mut()
    }

    /// Hands one attributed activity to the detectors and prints what they found.
    fn observe(
        &mut self,
        identity: &Arc<WorkloadIdentity>,
        pid: u32,
        ktime_ns: u64,
        activity: Activity,
    ) {
        let Some(stage) = self.findings.as_mut() else {
            return;
        };
        let time = self
            .clock
            .wall(ktime_ns)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let labels = identity
            .pod_uid
            .as_deref()
            .and_then(|uid| self.identity.pod_labels(uid));
        let o = Observation {
            time,
            identity: identity.clone(),
            labels,
            pid,
            exe: self.procs.get(pid).map(|p| p.exe.clone()),
            activity,
        };
        stage.observe(&o);
        if let Activity::ApiCall(call) = &o.activity {
            let ds = call
                .host
                .as_deref()
                .and_then(|h| stage.engine().data_source_of_call(h, &call.path));
            self.metrics
                .calls_by_identity
                .inc(&identity.id, ds.unwrap_or("none"));
        }
        self.print_findings();
    }

    fn print_findings(&mut self) {
        let Some(stage) = self.findings.as_mut() else {
            return;
        };
        if stage.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut stage.pending);
        let out = match (self.out.as_mut(), self.findings_out.as_mut()) {
            (Some(o), _) | (None, Some(o)) => Some(o),
            _ => None,
        };
        if let Some(out) = out {
            for f in &pending {
                write_json(out, &self.metrics, f);
            }
        }
        if let Some(stage) = self.findings.as_mut() {
            stage.pending = pending;
            stage.pending.clear();
        }
    }

    /// Shutdown: open findings close (summaries are printed) and learned state is written.
    pub fn finish(&mut self) {
        if let Some(stage) = self.findings.as_mut() {
            stage.finish();
        }
        self.print_findings();
        for out in [self.out.as_mut(), self.findings_out.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = out.flush();
        }
    }

    /// What a kernel event means to the detectors, if anything.
    fn activity(&self, ev: &Event<'_>, file: Option<&str>) -> Option<Activity> {
        match ev {
            Event::Exec(_) => Some(Activity::Exec),
            Event::FileOpen(f) => Some(Activity::FileOpen {
                path: file?.to_owned(),
                result: f.result,
            }),
            Event::TcpConnect(t) if !t.failed => {
                let address = SocketAddr::new(t.daddr, t.dport);
                let name = self.api.as_ref().and_then(|a| {
                    a.names
                        .resolve(t.hdr.cgroup_id, t.daddr, t.hdr.ktime_ns)
                        .map(str::to_owned)
                });
                Some(Activity::Connect { address, name })
            }
            _ => None,
        }
    }

    /// Parses TLS plaintext into API calls with this stage.
    pub fn with_api_calls(mut self, api: ApiCallStage) -> Pipeline {
        self.api = Some(api);
        self
    }

    fn handle(&mut self, ev: &Event<'_>) {
        self.metrics.event(ev.kind()).inc();
        if matches!(ev, Event::DnsAnswer(_) | Event::TlsSni(_)) {
            return self.learn_names(ev);
        }
        self.procs.apply(ev);
        let mut flow = None;
        match ev {
            Event::Exec(e) => {
                if let Some(tx) = &self.upkeep {
                    if tx.try_send(UpkeepRequest::ScanProcess(e.hdr.pid)).is_err() {
                        self.metrics
                            .userspace_dropped
                            .get_or_create(&ReasonLabel {
                                reason: "tls_scan_queue_full".into(),
                            })
                            .inc();
                    }
                }
            }
            Event::TcpConnect(t) => flow = Some(self.flows.connect(t)),
            Event::TcpClose(t) => {
                // Calls still open on this connection end with it; they need
                // the flow, which closing forgets.
                let mut done = std::mem::take(&mut self.finished);
                if let Some(api) = self.api.as_mut() {
                    api.sock_closed(t.sock, &mut done);
                }
                self.emit_calls(&mut done);
                self.finished = done;
                flow = Some(self.flows.close(t));
            }
            Event::Exit(_) => {
                let mut done = std::mem::take(&mut self.finished);
                if let Some(api) = self.api.as_mut() {
                    api.process_exited(ev.header().pid, &mut done);
                }
                self.emit_calls(&mut done);
                self.finished = done;
            }
            Event::TlsData(t) => {
                let now_unix = self
                    .clock
                    .wall(t.hdr.ktime_ns)
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let mut done = std::mem::take(&mut self.finished);
                if let Some(api) = self.api.as_mut() {
                    api.tls(t, now_unix, &mut done);
                }
                self.emit_calls(&mut done);
                self.finished = done;
            }
            _ => {}
        }
        let hdr = *ev.header();
        let attributed = self
            .identity
            .resolve(hdr.cgroup_id, self.procs.get(hdr.pid));
        self.metrics.attribution(attributed.status).inc();
        // What the identity touched, for the inventory (file events are rare; connects name a destination).
        let file = match ev {
            Event::FileOpen(f) => {
                let t = self
                    .watch_targets
                    .read()
                    .map(|t| t.clone())
                    .unwrap_or_default();
                Some(path_of(&t, f.watch_id, &f.path))
            }
            _ => None,
        };
        let dest = match ev {
            Event::TcpConnect(t) => Some(SocketAddr::new(t.daddr, t.dport).to_string()),
            _ => None,
        };
        if attributed.status == Attribution::Pending
            && !self.hold.is_zero()
            && self.held.len() < HELD_MAX
        {
            let record = self.out.is_some().then(|| {
                let rec = self.event_record(ev, flow, &attributed);
                serde_json::to_value(&rec).unwrap_or_default()
            });
            let activity = self
                .findings
                .is_some()
                .then(|| self.activity(ev, file.as_deref()))
                .flatten();
            self.held.push_back(Held {
                deadline: Instant::now() + self.hold,
                cgroup_id: hdr.cgroup_id,
                proc: self.procs.get(hdr.pid).cloned(),
                kind: Some(ev.kind()),
                ktime_ns: hdr.ktime_ns,
                file,
                dest,
                record,
                pid: hdr.pid,
                activity,
            });
            return;
        }
        if let Some(id) = &attributed.identity {
            self.inventory.record(
                &id.id,
                ev.kind(),
                hdr.ktime_ns,
                file.as_deref(),
                dest.as_deref(),
            );
            if self.findings.is_some() {
                if let Some(a) = self.activity(ev, file.as_deref()) {
                    self.observe(id, hdr.pid, hdr.ktime_ns, a);
                }
            }
        }
        // The record borrows the tables; the writer is taken out meanwhile.
        if let Some(mut out) = self.out.take() {
            let rec = self.event_record(ev, flow, &attributed);
            write_json(&mut out, &self.metrics, &rec);
            self.out = Some(out);
        }
    }

    /// DNS answers and TLS server names: remembered for naming destinations, and output.
    fn learn_names(&mut self, ev: &Event<'_>) {
        let Some(api) = self.api.as_mut() else {
            return;
        };
        let hdr = *ev.header();
        let detail = match ev {
            Event::DnsAnswer(d) => {
                match crate::protocol::dns::parse_response(d.message, d.len as usize) {
                    Ok(answer) => {
                        api.names.record_dns(hdr.cgroup_id, hdr.ktime_ns, &answer);
                        NameDetail::Dns {
                            ttl: answer.addrs.iter().map(|a| a.ttl).min().unwrap_or(0),
                            addresses: answer.addrs.iter().map(|a| a.ip).collect(),
                            query: answer.query,
                        }
                    }
                    Err(e) => {
                        self.metrics
                            .api
                            .anomalies
                            .get_or_create(&crate::metrics::AnomalyLabel {
                                protocol: "dns".into(),
                                reason: e.reason().into(),
                            })
                            .inc();
                        return;
                    }
                }
            }
            Event::TlsSni(t) => {
                let name = String::from_utf8_lossy(t.name);
                if !api.names.record_sni(hdr.pid, t.session, &name) {
                    self.metrics
                        .api
                        .anomalies
                        .get_or_create(&crate::metrics::AnomalyLabel {
                            protocol: "tls".into(),
                            reason: "bad_server_name".into(),
                        })
                        .inc();
                    return;
                }
                NameDetail::Sni {
                    server_name: api
                        .names
                        .sni(hdr.pid, t.session)
                        .unwrap_or_default()
                        .to_owned(),
                }
            }
            _ => return,
        };
        let Some(mut out) = self.out.take() else {
            return;
        };
        // DNS answers arrive in softirq: no pid, the receiving socket's cgroup.
        let attributed = self.identity.resolve(
            hdr.cgroup_id,
            self.procs.get(hdr.pid).filter(|_| hdr.pid != 0),
        );
        let rec = ObservationRecord {
            time: humantime::format_rfc3339_nanos(self.clock.wall(hdr.ktime_ns)).to_string(),
            kind: ev.kind().name(),
            pid: hdr.pid,
            cgroup_id: hdr.cgroup_id,
            identity: attributed.view(),
            process: self.process_view(hdr.pid),
            detail,
        };
        write_json(&mut out, &self.metrics, &rec);
        self.out = Some(out);
    }

    /// Turns finished exchanges into API calls: flow, destination name, identity, output.
    fn emit_calls(&mut self, done: &mut Vec<Finished>) {
        for Finished { info, exchange } in done.drain(..) {
            let flow = self.flows.by_sock(info.sock).map(|f| (f.id, f.remote));
            let now_ns = info.last_ns;
            let authority = exchange
                .request
                .as_ref()
                .and_then(|r| r.authority.as_deref());
            let names = self.api.as_ref().map(|a| &a.names);
            let destination = api_call::destination(
                authority,
                names.and_then(|n| n.sni(info.key.pid, info.key.session)),
                |ip| {
                    names?
                        .resolve(info.cgroup_id, ip, now_ns)
                        .map(str::to_owned)
                },
                flow.map(|f| f.1),
            );
            let call = ApiCall::new(exchange, flow, destination);
            self.metrics.api_call(&call);
            let proc = self.procs.get(info.key.pid);
            let attributed = self.identity.resolve(info.cgroup_id, proc);
            if attributed.status == Attribution::Pending
                && !self.hold.is_zero()
                && self.held.len() < HELD_MAX
            {
                let record = self.out.is_some().then(|| {
                    let rec =
                        self.api_call_record(info.key.pid, info.cgroup_id, &call, &attributed);
                    serde_json::to_value(&rec).unwrap_or_default()
                });
                self.held.push_back(Held {
                    deadline: Instant::now() + self.hold,
                    cgroup_id: info.cgroup_id,
                    proc: proc.cloned(),
                    kind: None,
                    ktime_ns: call.ktime_ns,
                    file: None,
                    dest: None,
                    record,
                    pid: info.key.pid,
                    activity: self.findings.is_some().then(|| api_call_activity(&call)),
                });
                continue;
            }
            if let (Some(id), true) = (&attributed.identity, self.findings.is_some()) {
                self.observe(id, info.key.pid, call.ktime_ns, api_call_activity(&call));
            }
            if let Some(mut out) = self.out.take() {
                let rec = self.api_call_record(info.key.pid, info.cgroup_id, &call, &attributed);
                write_json(&mut out, &self.metrics, &rec);
                self.out = Some(out);
            }
        }
    }

    fn api_call_record<'a>(
        &'a self,
        pid: u32,
        cgroup_id: u64,
        call: &'a ApiCall,
        attributed: &'a Attributed,
    ) -> ObservationRecord<'a, &'a ApiCall> {
        ObservationRecord {
            time: humantime::format_rfc3339_nanos(self.clock.wall(call.ktime_ns)).to_string(),
            kind: "api_call",
            pid,
            cgroup_id,
            identity: attributed.view(),
            process: self.process_view(pid),
            detail: call,
        }
    }

    fn process_view(&self, pid: u32) -> ProcessView<'_> {
        let p = self.procs.get(pid);
        ProcessView {
            status: if p.is_some() { "known" } else { "unknown" },
            exe: p.map(|p| &*p.exe),
            comm: p.map(|p| &*p.comm),
            uid: p.map(|p| p.uid),
            ppid: p.map(|p| p.ppid),
        }
    }

    /// Re-attributes held events once pod metadata changed, and lets go of
    /// those whose hold expired (reported `unknown`, with the pod they belong to).
    pub fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let generation = self.identity.pods_generation();
        let changed = generation != self.held_generation;
        let now = Instant::now();
        if !changed && self.held.front().is_none_or(|h| h.deadline > now) {
            return;
        }
        self.held_generation = generation;
        let mut keep = VecDeque::with_capacity(self.held.len());
        while let Some(mut h) = self.held.pop_front() {
            let mut a = self.identity.resolve(h.cgroup_id, h.proc.as_ref());
            if a.status == Attribution::Pending {
                if h.deadline > now {
                    keep.push_back(h);
                    continue;
                }
                a.status = Attribution::Unknown;
                self.metrics.identity_hold_expired.inc();
            }
            self.metrics.attribution_after_hold(a.status).inc();
            if let (Some(id), Some(kind)) = (&a.identity, h.kind) {
                self.inventory.record(
                    &id.id,
                    kind,
                    h.ktime_ns,
                    h.file.as_deref(),
                    h.dest.as_deref(),
                );
            }
            if let Some(mut rec) = h.record.take() {
                rec["identity"] = serde_json::to_value(a.view()).unwrap_or_default();
                self.write(&rec);
            }
            if let (Some(id), Some(activity)) = (&a.identity, h.activity.take()) {
                self.observe(id, h.pid, h.ktime_ns, activity);
            }
        }
        self.held = keep;
    }

    fn write<T: Serialize>(&mut self, rec: &T) {
        if let Some(out) = self.out.as_mut() {
            write_json(out, &self.metrics, rec);
        }
    }

    fn event_record<'a>(
        &'a self,
        ev: &'a Event<'_>,
        flow: Option<Flow>,
        attributed: &'a Attributed,
    ) -> EventRecord<'a> {
        let hdr = *ev.header();
        // Only file events need the watch table: don't lock it for the others.
        let targets = match ev {
            Event::FileOpen(_) => self
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
                    dst_name: self
                        .api
                        .as_ref()
                        .and_then(|a| a.names.resolve(hdr.cgroup_id, dst.ip(), hdr.ktime_ns)),
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
                let flow = self.flows.by_sock(*sock);
                Detail::Tls {
                    direction: match direction {
                        Direction::Write => "write",
                        Direction::Read => "read",
                    },
                    library: match library {
                        TlsLibrary::OpenSsl => "openssl",
                        TlsLibrary::GnuTls => "gnutls",
                    },
                    len: *len,
                    captured: plaintext.len(),
                    flow: flow.map(|f| f.id),
                    dst: flow.map(|f| f.remote.to_string()),
                }
            }
            Event::DnsAnswer(_) | Event::TlsSni(_) => Detail::Names {},
        };
        let process = self.process_view(hdr.pid);
        EventRecord {
            time: humantime::format_rfc3339_nanos(self.clock.wall(hdr.ktime_ns)).to_string(),
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

/// An API call as the detectors see it: destination host (no port), method, template, sizes, credentials.
fn api_call_activity(call: &ApiCall) -> Activity {
    let host = call
        .destination
        .name
        .as_deref()
        .map(|n| strip_port(n).to_ascii_lowercase())
        .or_else(|| call.destination.address.map(|a| a.ip().to_string()));
    let req = call.request.as_ref();
    Activity::ApiCall(ApiCallSeen {
        host,
        method: req.map(|r| r.method.clone()),
        path: req.map(|r| r.path.clone()).unwrap_or_default(),
        status: call.status,
        request_bytes: call.request_bytes,
        response_bytes: call.response_bytes,
        credentials: req
            .map(|r| {
                r.credentials
                    .iter()
                    .map(CredentialSeen::from_summary)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// `host:443` → `host`, `[::1]:443` → `::1`; a bare IPv6 address stays whole.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// CLOCK_BOOTTIME, the clock of the kernel's timestamps.
fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn write_json<T: Serialize>(out: &mut Box<dyn Write + Send>, metrics: &Metrics, rec: &T) {
    let ok = serde_json::to_writer(&mut *out, rec).is_ok() && out.write_all(b"\n").is_ok();
    if !ok {
        metrics
            .userspace_dropped
            .get_or_create(&ReasonLabel {
                reason: "event_output".into(),
            })
            .inc();
    }
}

impl RecordHandler for Pipeline {
    fn record(&mut self, rec: &[u8]) {
        match decode(rec) {
            Ok(ev) => self.handle(&ev),
            Err(e) => {
                self.metrics
                    .decode_errors
                    .get_or_create(&ReasonLabel {
                        reason: e.reason().into(),
                    })
                    .inc();
                tracing::debug!(error = %e, "undecodable kernel record");
            }
        }
    }

    fn batch_done(&mut self) {
        self.last_upkeep = Instant::now();
        if let Some(api) = self.api.as_mut() {
            let mut done = std::mem::take(&mut self.finished);
            api.expire(boot_ns(), &mut done);
            self.emit_calls(&mut done);
            self.finished = done;
        }
        if let Some(api) = self.api.as_mut() {
            self.metrics.api_stage(api);
        }
        self.release_held();
        if let Some(stage) = self.findings.as_mut() {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            stage.tick(now);
        }
        self.print_findings();
        for out in [self.out.as_mut(), self.findings_out.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = out.flush();
        }
        self.metrics.processes.set(self.procs.len() as i64);
        self.metrics.flows.set(self.flows.len() as i64);
        self.metrics.identities.set(self.inventory.len() as i64);
        self.metrics.held_events.set(self.held.len() as i64);
        if self.metrics.identities_by_attribution_due() {
            let mut waiting: Vec<u64> = self.held.iter().map(|h| h.cgroup_id).collect();
            waiting.sort_unstable();
            waiting.dedup();
            self.metrics
                .set_identities_by_attribution(self.inventory.len(), waiting.len());
        }
    }

    fn tick(&mut self) {
        // Idle sessions must close, and held events leave, even when no events arrive.
        if self.last_upkeep.elapsed() >= IDLE_UPKEEP {
            self.batch_done();
        }
    }
}
