//! The userspace pipeline for kernel records: decode → process/flow context → identity → API calls → detectors, with `--events` output on the way.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{mpsc::SyncSender, Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::metrics::counter::Counter;

use crate::{
    context::{
        flows::FlowTable,
        process_table::{ProcessInfo, ProcessTable},
    },
    events::{
        clock::boot_ns,
        decode,
        observation::{Activity, ApiCallSeen, CredentialSeen, Observation},
        Clock, Event, EventKind,
    },
    identity::{inventory::Inventory, Attributed, Attribution, IdentityResolver, WorkloadIdentity},
    output::{
        events::{EventContext, EventRecord, HeldLine, NameDetail, ObservationRecord, ProcessView},
        Stdout,
    },
    probes::{reader::RecordHandler, upkeep::UpkeepRequest, watch::path_of, watch::WatchTarget},
    protocol::{
        api_call::{self, ApiCall},
        ApiCallStage, Finished,
    },
};

pub mod findings;
pub mod telemetry;

use telemetry::PipelineTelemetry;

/// Stage state for everything above the kernel.
pub struct Pipeline {
    pub procs: ProcessTable,
    pub flows: FlowTable,
    watch_targets: Arc<RwLock<Vec<WatchTarget>>>,
    metrics: PipelineTelemetry,
    upkeep: Option<SyncSender<UpkeepRequest>>,
    /// `--events`: every event as a JSON line on stdout.
    out: Option<Stdout>,
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
    /// Upkeep requests dropped because the upkeep thread's queue was full.
    scan_queue_full: Counter,
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
    /// What the inventory counts; None for API calls and names learnt, which it does not.
    kind: Option<EventKind>,
    ktime_ns: u64,
    file: Option<String>,
    dest: Option<String>,
    /// The `--events` line, printed like a direct one once the identity is known.
    record: Option<HeldLine>,
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
        metrics: PipelineTelemetry,
        upkeep: Option<SyncSender<UpkeepRequest>>,
        out: Option<Stdout>,
        identity: IdentityResolver,
        hold: Duration,
    ) -> Pipeline {
        Pipeline {
            scan_queue_full: metrics.userspace_dropped("tls_scan_queue_full"),
            api: None,
            finished: Vec::new(),
            findings: None,
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
    }

    /// Shutdown: open findings close (summaries are printed) and learned state is written.
    pub fn finish(&mut self) {
        if let Some(stage) = self.findings.as_mut() {
            stage.finish();
        }
        if let Some(out) = &self.out {
            out.flush();
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

    /// Writes every event as a JSON line (`--events`).
    pub fn with_events(mut self, out: Stdout) -> Pipeline {
        self.out = Some(out);
        self
    }

    /// Parses TLS plaintext into API calls with this stage.
    pub fn with_api_calls(mut self, api: ApiCallStage) -> Pipeline {
        self.api = Some(api);
        self
    }

    fn handle(&mut self, ev: &Event<'_>) {
        self.metrics.decode.decoded(ev.kind());
        if matches!(ev, Event::DnsAnswer(_) | Event::TlsSni(_)) {
            return self.learn_names(ev);
        }
        self.procs.apply(ev);
        let mut flow = None;
        match ev {
            Event::Exec(e) => {
                if let Some(tx) = &self.upkeep {
                    if tx.try_send(UpkeepRequest::ScanProcess(e.hdr.pid)).is_err() {
                        self.scan_queue_full.inc();
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
                // The upkeep thread detaches a Go program's probes when its last process is
                // gone; a dropped request only leaves them on (as before), so it is counted.
                if let Some(tx) = &self.upkeep {
                    if tx
                        .try_send(UpkeepRequest::ProcessExit(ev.header().pid))
                        .is_err()
                    {
                        self.scan_queue_full.inc();
                    }
                }
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
        let held = attributed.status == Attribution::Pending
            && !self.hold.is_zero()
            && self.held.len() < HELD_MAX;
        self.metrics.identity.attributed(attributed.status, held);
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
        if held {
            let record = self
                .out
                .is_some()
                .then(|| {
                    let cx = self.event_context();
                    let rec = EventRecord::new(ev, flow, &attributed, &cx);
                    HeldLine::new(&rec, &attributed.view())
                })
                .flatten();
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
        if let Some(out) = &self.out {
            out.write(&EventRecord::new(
                ev,
                flow,
                &attributed,
                &self.event_context(),
            ));
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
                        api.telemetry().anomaly("dns", e.reason());
                        return;
                    }
                }
            }
            Event::TlsSni(t) => {
                let name = String::from_utf8_lossy(t.name);
                if !api.names.record_sni(hdr.pid, t.session, &name) {
                    api.telemetry().anomaly("tls", "bad_server_name");
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
        let Some(out) = self.out.clone() else {
            return;
        };
        // DNS answers arrive in softirq: no pid, the receiving socket's cgroup.
        let proc = self.procs.get(hdr.pid).filter(|_| hdr.pid != 0);
        let attributed = self.identity.resolve(hdr.cgroup_id, proc);
        // Like every other event, a name learnt by a process whose pod is not known yet waits
        // for its metadata rather than leaving as `pending` for ever.
        let held = attributed.status == Attribution::Pending
            && !self.hold.is_zero()
            && self.held.len() < HELD_MAX;
        self.metrics.identity.attributed(attributed.status, held);
        let rec = ObservationRecord {
            time: humantime::format_rfc3339_nanos(self.clock.wall(hdr.ktime_ns)).to_string(),
            kind: ev.kind().name(),
            pid: hdr.pid,
            cgroup_id: hdr.cgroup_id,
            identity: attributed.view(),
            process: self.process_view(hdr.pid),
            detail,
        };
        if held {
            let record = HeldLine::new(&rec, &attributed.view());
            let proc = proc.cloned();
            self.held.push_back(Held {
                deadline: Instant::now() + self.hold,
                cgroup_id: hdr.cgroup_id,
                proc,
                kind: None,
                ktime_ns: hdr.ktime_ns,
                file: None,
                dest: None,
                record,
                pid: hdr.pid,
                activity: None,
            });
            return;
        }
        out.write(&rec);
    }

    /// Turns finished exchanges into API calls: flow, destination name, identity, output.
    fn emit_calls(&mut self, done: &mut Vec<Finished>) {
        for Finished { info, exchange } in done.drain(..) {
            // A proxy's upstream call forwards a client's request, which the client's own
            // capture (cleartext on the socket, or its TLS library) reported already.
            if let Some(api) = self.api.as_ref() {
                let proc = self.procs.get(info.key.pid);
                if api.forwards(
                    info.key.pid,
                    proc.map_or("", |p| &p.exe),
                    proc.map_or("", |p| &p.comm),
                ) {
                    api.proxied();
                    continue;
                }
            }
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
            let call = ApiCall::new(exchange, info.transport, flow, destination);
            let proc = self.procs.get(info.key.pid);
            let attributed = self.identity.resolve(info.cgroup_id, proc);
            if attributed.status == Attribution::Pending
                && !self.hold.is_zero()
                && self.held.len() < HELD_MAX
            {
                let record = self
                    .out
                    .is_some()
                    .then(|| {
                        let rec =
                            self.api_call_record(info.key.pid, info.cgroup_id, &call, &attributed);
                        HeldLine::new(&rec, &attributed.view())
                    })
                    .flatten();
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
            if let Some(out) = &self.out {
                out.write(&self.api_call_record(info.key.pid, info.cgroup_id, &call, &attributed));
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
        ProcessView::of(self.procs.get(pid))
    }

    fn event_context(&self) -> EventContext<'_> {
        EventContext {
            clock: &self.clock,
            procs: &self.procs,
            flows: &self.flows,
            watch_targets: &self.watch_targets,
            names: self.api.as_ref().map(|a| &a.names),
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
            let mut expired = false;
            if a.status == Attribution::Pending {
                if h.deadline > now {
                    keep.push_back(h);
                    continue;
                }
                a.status = Attribution::Unknown;
                expired = true;
            }
            self.metrics.identity.released(a.status, expired);
            if let (Some(id), Some(kind)) = (&a.identity, h.kind) {
                self.inventory.record(
                    &id.id,
                    kind,
                    h.ktime_ns,
                    h.file.as_deref(),
                    h.dest.as_deref(),
                );
            }
            if let (Some(line), Some(out)) = (h.record.take(), &self.out) {
                out.write_line(&line.with_identity(&a.view()));
            }
            if let (Some(id), Some(activity)) = (&a.identity, h.activity.take()) {
                self.observe(id, h.pid, h.ktime_ns, activity);
            }
        }
        self.held = keep;
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

impl RecordHandler for Pipeline {
    fn record(&mut self, rec: &[u8]) {
        match decode(rec) {
            Ok(ev) => self.handle(&ev),
            Err(e) => {
                self.metrics.decode.failed(&e);
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
            api.report();
        }
        self.release_held();
        if let Some(stage) = self.findings.as_mut() {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            stage.tick(now);
        }
        if let Some(out) = &self.out {
            out.flush();
        }
        self.metrics.processes.set(self.procs.len() as i64);
        let evicted = self.procs.evicted();
        let counted = self.metrics.process_evictions.get();
        self.metrics
            .process_evictions
            .inc_by(evicted.saturating_sub(counted));
        self.metrics.flows.set(self.flows.len() as i64);
        self.metrics
            .identity
            .identities
            .set(self.inventory.len() as i64);
        self.metrics
            .identity
            .held_events
            .set(self.held.len() as i64);
        if self.metrics.identity.identities_by_attribution_due() {
            let mut waiting: Vec<u64> = self.held.iter().map(|h| h.cgroup_id).collect();
            waiting.sort_unstable();
            waiting.dedup();
            self.metrics
                .identity
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
