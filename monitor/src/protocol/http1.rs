//! One client-side HTTP/1.x connection's TLS plaintext (request writes, response reads) → request heads for the sink and FIFO-paired exchanges with status, sizes and times.
//!
//! Only heads are buffered (up to `Limits::max_head_bytes` per direction);
//! bodies are skipped by their framing. When capture gaps or bad bytes make a
//! direction lose its place in the stream, the exchanges that could be
//! affected leave as `Desync` and that direction waits for an unambiguous
//! message start: a write beginning with a request line, a read beginning
//! with `HTTP/1.`.

use std::collections::VecDeque;

use super::{
    Anomaly, CallSink, Chunk, Direction, Exchange, ExchangeEnd, Header, Limits, Protocol,
    RequestHead, RequestSummary,
};

/// Headers handed to httparse per head; a head with more is an anomaly, not a reallocation.
const MAX_HEADERS: usize = 128;

pub struct Http1Conn {
    limits: Limits,
    done: bool,
    /// A head (either direction) parsed once. Garbage before that means the
    /// connection is not HTTP/1 at all (nothing to resync to: stop); garbage
    /// after it is one bad message on a live connection (resync).
    seen_message: bool,
    next_seq: u64,
    /// Requests in the order they were written; responses pair with them FIFO.
    in_flight: VecDeque<Pending>,
    /// Responses still owed to requests evicted before their response began:
    /// they are read and dropped so later responses keep their partner.
    orphans: usize,
    req: ReqSide,
    resp: RespSide,
    /// Set by a `101 Switching Protocols` to h2c: the server's bytes after the 101's head in
    /// the same read (its SETTINGS, the upgraded request's response), for the HTTP/2 parser.
    h2c: Option<SwitchedToH2c>,
}

/// What an `Upgrade: h2c` switch leaves for the HTTP/2 parser that takes the connection over.
pub struct SwitchedToH2c {
    pub ktime_ns: u64,
    /// The server's bytes after the 101 in the read that carried it, and that read's bytes
    /// not captured after them (a gap the HTTP/2 parser resynchronises over).
    pub tail: Vec<u8>,
    pub tail_gap: u64,
}

/// One request and what has been seen of its response.
struct Pending {
    seq: u64,
    request: Option<RequestSummary>,
    request_ns: u64,
    request_bytes: u64,
    /// The request body is still being written: emitting now would cut its size.
    request_open: bool,
    method: MethodKind,
    response: Progress,
    status: Option<u16>,
    response_ns: Option<u64>,
    response_bytes: u64,
    desync: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MethodKind {
    Head,
    Connect,
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Progress {
    Waiting,
    Started,
    Done,
}

struct ReqSide {
    state: ReqState,
    head: Vec<u8>,
    /// Kernel time of the chunk with the head's first byte; None between messages.
    head_ns: Option<u64>,
    /// The head began while lost and its request line is not yet confirmed:
    /// if it turns out not to be a request, go back to waiting quietly.
    tentative: bool,
}

enum ReqState {
    Head,
    Body { seq: u64, body: Body },
    Lost,
}

struct RespSide {
    state: RespState,
    head: Vec<u8>,
    head_ns: Option<u64>,
    /// Whose response the bytes being read are; kept across 1xx interim heads.
    target: Target,
    /// While lost: requests with a lower seq may have had their response (or
    /// part of it) in bytes that were skipped, so they cannot be paired any more.
    doubt_below: u64,
}

enum RespState {
    Head,
    Body(Body),
    Lost,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Unset,
    Entry(u64),
    /// Read and dropped: owed to an evicted request, or nobody asked for it.
    Orphan,
}

/// How a body ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Body {
    Length(u64),
    Chunked(Chunked),
    /// Response without Content-Length or chunked coding: ends when the connection closes.
    UntilClose,
}

/// Position inside chunked coding; advanced byte by byte so a chunk boundary may fall anywhere.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Chunked {
    /// In a chunk-size line; `ext` once past the hex digits (whitespace, `;extension`).
    Size {
        size: u64,
        digits: bool,
        ext: bool,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer section after the last chunk; `empty` while the current line has no content.
    Trailer {
        empty: bool,
    },
}

/// Outcome of feeding bytes to a head buffer.
enum HeadStep<T> {
    /// Everything given was buffered; the head goes on.
    More,
    /// Head of `len` bytes in total, `consumed` of them from the bytes just given.
    Done {
        len: usize,
        consumed: usize,
        info: T,
    },
    Failed(&'static str),
}

enum Parsed<T> {
    Complete(usize, T),
    Partial,
    Error(&'static str),
}

struct ReqInfo {
    summary: RequestSummary,
    method: MethodKind,
    body: Result<Option<Body>, &'static str>,
}

struct RespInfo {
    status: u16,
    /// `Upgrade: h2c` (on a 101: the connection goes on as HTTP/2, RFC 7540 §3.2).
    upgrade_h2c: bool,
    /// Framing from the headers alone; HEAD/204/304 override it.
    body: Result<Option<Body>, &'static str>,
}

impl Http1Conn {
    pub fn new(limits: Limits) -> Http1Conn {
        Http1Conn {
            limits,
            done: false,
            seen_message: false,
            next_seq: 1,
            in_flight: VecDeque::new(),
            orphans: 0,
            req: ReqSide::new(),
            resp: RespSide::new(),
            h2c: None,
        }
    }

    /// After a 101 to h2c (`is_done()` then holds): what the HTTP/2 parser starts from.
    pub fn take_h2c_switch(&mut self) -> Option<SwitchedToH2c> {
        self.h2c.take()
    }

    /// One TLS call's plaintext. Client side: Direction::Write = request bytes, Direction::Read = response bytes.
    pub fn feed(&mut self, chunk: &Chunk<'_>, sink: &mut dyn CallSink) {
        if self.done {
            return;
        }
        match chunk.direction {
            Direction::Write => self.feed_request(chunk, sink),
            Direction::Read => self.feed_response(chunk, sink),
        }
    }

    /// The connection ended (or is evicted/timed out): exchanges in flight leave with `end`.
    ///
    /// A response delimited by the connection close that was being read is
    /// Complete when `end` is `Aborted` (the connection did close, which is
    /// exactly how such a body ends); on `Timeout` or `Desync` it is not known
    /// to be whole and leaves with `end`. The parser is reset afterwards.
    pub fn finish(&mut self, end: ExchangeEnd, sink: &mut dyn CallSink) {
        let close_delimited = match self.resp.state {
            RespState::Body(Body::UntilClose) => self.resp.target,
            _ => Target::Unset,
        };
        for p in self.in_flight.drain(..) {
            let this_end = if p.desync {
                ExchangeEnd::Desync
            } else if p.response == Progress::Done
                || (close_delimited == Target::Entry(p.seq) && end == ExchangeEnd::Aborted)
            {
                ExchangeEnd::Complete
            } else {
                end
            };
            emit(p, this_end, sink);
        }
        self.orphans = 0;
        self.req = ReqSide::new();
        self.resp = RespSide::new();
    }

    /// Heap bytes currently buffered (the session table enforces a global bound with it).
    ///
    /// These are the two head buffers, each at most `max_head_bytes`. The
    /// minimised summaries of requests in flight (at most `max_in_flight`) are
    /// not counted.
    pub fn buffered(&self) -> usize {
        self.req.head.capacity() + self.resp.head.capacity()
    }

    /// True once the connection stopped being HTTP/1 (101 Switching Protocols / CONNECT tunnel established, or unrecoverable); further chunks are ignored.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn feed_request(&mut self, chunk: &Chunk<'_>, sink: &mut dyn CallSink) {
        let data = chunk.data;
        let gap = chunk.gap();
        if matches!(self.req.state, ReqState::Lost) {
            // Skipped bytes are taken to be the rest of the lost message: a
            // client writes its next request only after the response, and that
            // write starts with the request line.
            if !starts_like_request(data) {
                return;
            }
            self.req.state = ReqState::Head;
            self.req.tentative = true;
        }
        let mut pos = 0;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            match &mut self.req.state {
                ReqState::Lost => return,
                ReqState::Head => {
                    let started = *self.req.head_ns.get_or_insert(chunk.ktime_ns);
                    let before = self.req.head.len() as u64;
                    let max = self.limits.max_head_bytes;
                    match head_step(&mut self.req.head, rest, max, |b| parse_request(b, sink)) {
                        HeadStep::More => {
                            // httparse has vouched for every complete line buffered.
                            if self.req.head.contains(&b'\n') {
                                self.req.tentative = false;
                            }
                            break;
                        }
                        HeadStep::Done {
                            len,
                            consumed,
                            info,
                        } => {
                            pos += consumed;
                            self.request_parsed(len as u64, info, started, sink);
                        }
                        HeadStep::Failed(reason) => {
                            let seen = before + rest.len() as u64 + gap;
                            self.request_head_lost(reason, seen, chunk.ktime_ns, sink);
                            return;
                        }
                    }
                }
                ReqState::Body { seq, body } => {
                    let seq = *seq;
                    match body.step(rest) {
                        Ok((n, done)) => {
                            pos += n;
                            self.add_request_bytes(seq, n as u64);
                            if done {
                                self.request_ended(seq, sink);
                            }
                        }
                        Err(()) => {
                            let seen = rest.len() as u64 + gap;
                            self.request_body_lost(seq, "chunked_framing", seen, sink);
                            return;
                        }
                    }
                }
            }
        }
        if gap > 0 {
            self.request_gap(gap, chunk.ktime_ns, sink);
        }
    }

    /// `gap` bytes after the captured data of a write were not captured.
    fn request_gap(&mut self, gap: u64, ktime_ns: u64, sink: &mut dyn CallSink) {
        match &mut self.req.state {
            ReqState::Lost => {}
            ReqState::Head => {
                let seen = self.req.head.len() as u64 + gap;
                self.request_head_lost("truncated_head", seen, ktime_ns, sink);
            }
            ReqState::Body { seq, body } => {
                let seq = *seq;
                match body.skip(gap) {
                    Ok((n, done)) => {
                        self.add_request_bytes(seq, n);
                        if done {
                            self.request_ended(seq, sink);
                            // What follows the body in the same call is the
                            // start of a request nobody saw.
                            let rest = gap.saturating_sub(n);
                            if rest > 0 {
                                let seen = rest;
                                self.request_head_lost("truncated_head", seen, ktime_ns, sink);
                            }
                        }
                    }
                    Err(()) => self.request_body_lost(seq, "chunked_framing", gap, sink),
                }
            }
        }
    }

    fn request_parsed(&mut self, len: u64, info: ReqInfo, started: u64, sink: &mut dyn CallSink) {
        self.seen_message = true;
        self.req.head_ns = None;
        self.req.tentative = false;
        let (body, bad) = match info.body {
            Ok(body) => (body, None),
            Err(reason) => (None, Some(reason)),
        };
        let seq = self.push(
            Pending {
                request: Some(info.summary),
                request_ns: started,
                request_bytes: len,
                request_open: body.is_some(),
                method: info.method,
                desync: bad.is_some(),
                ..Pending::blank()
            },
            sink,
        );
        self.req.state = match (bad, body) {
            (Some(reason), _) => {
                anomaly(sink, reason);
                ReqState::Lost
            }
            (None, Some(body)) => ReqState::Body { seq, body },
            (None, None) => ReqState::Head,
        };
    }

    /// A request head could not be read. Unless it was only a tentative
    /// resync, it still was a request: it gets an entry so that its response
    /// does not pair with the next one.
    fn request_head_lost(
        &mut self,
        reason: &'static str,
        seen: u64,
        ktime_ns: u64,
        sink: &mut dyn CallSink,
    ) {
        let started = self.req.head_ns.take().unwrap_or(ktime_ns);
        let tentative = std::mem::take(&mut self.req.tentative);
        release(&mut self.req.head);
        self.req.state = ReqState::Lost;
        if tentative {
            return;
        }
        if is_garbage(reason) && !self.seen_message {
            self.stop(reason, sink);
            return;
        }
        anomaly(sink, reason);
        self.push(
            Pending {
                request_ns: started,
                request_bytes: seen,
                desync: true,
                ..Pending::blank()
            },
            sink,
        );
    }

    fn request_body_lost(
        &mut self,
        seq: u64,
        reason: &'static str,
        seen: u64,
        sink: &mut dyn CallSink,
    ) {
        anomaly(sink, reason);
        if let Some(p) = self.entry(seq) {
            p.desync = true;
            p.request_bytes = p.request_bytes.saturating_add(seen);
        }
        self.request_ended(seq, sink);
        self.req.state = ReqState::Lost;
    }

    fn request_ended(&mut self, seq: u64, sink: &mut dyn CallSink) {
        if let Some(p) = self.entry(seq) {
            p.request_open = false;
        }
        self.req.state = ReqState::Head;
        self.emit_ready(sink);
    }

    fn add_request_bytes(&mut self, seq: u64, n: u64) {
        if let Some(p) = self.entry(seq) {
            p.request_bytes = p.request_bytes.saturating_add(n);
        }
    }

    fn feed_response(&mut self, chunk: &Chunk<'_>, sink: &mut dyn CallSink) {
        let data = chunk.data;
        let gap = chunk.gap();
        if matches!(self.resp.state, RespState::Lost) {
            if !data.starts_with(b"HTTP/1.") {
                // Any request written so far may have had its response begin
                // in these skipped bytes.
                self.resp.doubt_below = self.next_seq;
                return;
            }
            self.settle_doubt(sink);
            self.resp.state = RespState::Head;
            self.resp.target = Target::Unset;
        }
        let mut pos = 0;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            match &mut self.resp.state {
                RespState::Lost => return,
                RespState::Head => {
                    // Paired at its first byte: a request written after that
                    // cannot be what this response answers.
                    if self.resp.target == Target::Unset {
                        self.resp.target = self.pick_target(sink);
                    }
                    let started = *self.resp.head_ns.get_or_insert(chunk.ktime_ns);
                    let before = self.resp.head.len() as u64;
                    let max = self.limits.max_head_bytes;
                    match head_step(&mut self.resp.head, rest, max, parse_response) {
                        HeadStep::More => break,
                        HeadStep::Done {
                            len,
                            consumed,
                            info,
                        } => {
                            pos += consumed;
                            let h2c = info.status == 101 && info.upgrade_h2c;
                            self.response_parsed(len as u64, info, started, sink);
                            if self.done {
                                if h2c {
                                    let tail = data.get(pos..).unwrap_or_default().to_vec();
                                    self.h2c = Some(SwitchedToH2c {
                                        ktime_ns: chunk.ktime_ns,
                                        tail,
                                        tail_gap: gap,
                                    });
                                }
                                return;
                            }
                        }
                        HeadStep::Failed(reason) => {
                            let seen = before + rest.len() as u64 + gap;
                            self.response_lost(reason, seen, sink);
                            return;
                        }
                    }
                }
                RespState::Body(body) => match body.step(rest) {
                    Ok((n, done)) => {
                        pos += n;
                        self.add_response_bytes(n as u64);
                        if done {
                            self.response_ended(sink);
                        }
                    }
                    Err(()) => {
                        let seen = rest.len() as u64 + gap;
                        self.response_lost("chunked_framing", seen, sink);
                        return;
                    }
                },
            }
        }
        if gap > 0 {
            self.response_gap(gap, sink);
        }
    }

    fn response_gap(&mut self, gap: u64, sink: &mut dyn CallSink) {
        match &mut self.resp.state {
            RespState::Lost => {}
            RespState::Head => {
                let seen = self.resp.head.len() as u64 + gap;
                self.response_lost("truncated_head", seen, sink);
            }
            RespState::Body(body) => match body.skip(gap) {
                Ok((n, done)) => {
                    self.add_response_bytes(n);
                    if done {
                        self.response_ended(sink);
                        let rest = gap.saturating_sub(n);
                        if rest > 0 {
                            self.response_lost("truncated_head", rest, sink);
                        }
                    }
                }
                Err(()) => self.response_lost("chunked_framing", gap, sink),
            },
        }
    }

    fn response_parsed(&mut self, len: u64, info: RespInfo, started: u64, sink: &mut dyn CallSink) {
        self.seen_message = true;
        self.resp.head_ns = None;
        if self.resp.target == Target::Unset {
            self.resp.target = self.pick_target(sink);
        }
        self.add_response_bytes(len);
        let status = info.status;
        let method = match self.target_entry() {
            Some(p) => p.method,
            None => MethodKind::Other,
        };
        let tunnel =
            status == 101 || (method == MethodKind::Connect && (200..300).contains(&status));
        if (100..200).contains(&status) && !tunnel {
            // Interim response: the final one follows for the same request.
            self.resp.state = RespState::Head;
            return;
        }
        if let Some(p) = self.target_entry() {
            p.status = Some(status);
            p.response_ns = Some(started);
        }
        if tunnel {
            self.response_ended(sink);
            self.done = true;
            release(&mut self.req.head);
            release(&mut self.resp.head);
            return;
        }
        let body = if method == MethodKind::Head || status == 204 || status == 304 {
            Ok(None)
        } else {
            info.body
        };
        match body {
            Ok(None) => self.response_ended(sink),
            Ok(Some(body)) => self.resp.state = RespState::Body(body),
            Err(reason) => self.response_lost(reason, 0, sink),
        }
    }

    fn response_ended(&mut self, sink: &mut dyn CallSink) {
        if let Some(p) = self.target_entry() {
            p.response = Progress::Done;
        }
        self.resp.target = Target::Unset;
        self.resp.state = RespState::Head;
        self.emit_ready(sink);
    }

    /// The response stream lost its place. The exchange it was reading is
    /// marked; every request written so far is in doubt until the stream
    /// finds a response start again.
    fn response_lost(&mut self, reason: &'static str, seen: u64, sink: &mut dyn CallSink) {
        if is_garbage(reason) && !self.seen_message {
            self.stop(reason, sink);
            return;
        }
        anomaly(sink, reason);
        if self.resp.target == Target::Unset {
            self.resp.target = self.pick_target(sink);
        }
        if let Some(p) = self.target_entry() {
            p.desync = true;
            p.response_bytes = p.response_bytes.saturating_add(seen);
        }
        self.resp.state = RespState::Lost;
        self.resp.target = Target::Unset;
        self.resp.head_ns = None;
        release(&mut self.resp.head);
        self.resp.doubt_below = self.next_seq;
        // Owed responses may have gone by in the lost bytes.
        self.orphans = 0;
    }

    fn add_response_bytes(&mut self, n: u64) {
        if let Some(p) = self.target_entry() {
            p.response_bytes = p.response_bytes.saturating_add(n);
        }
    }

    /// Who the response starting now belongs to: FIFO over requests written.
    fn pick_target(&mut self, sink: &mut dyn CallSink) -> Target {
        if self.orphans > 0 {
            self.orphans -= 1;
            return Target::Orphan;
        }
        match self
            .in_flight
            .iter_mut()
            .find(|p| p.response == Progress::Waiting)
        {
            Some(p) => {
                p.response = Progress::Started;
                Target::Entry(p.seq)
            }
            None => {
                anomaly(sink, "unexpected_response");
                Target::Orphan
            }
        }
    }

    fn target_entry(&mut self) -> Option<&mut Pending> {
        match self.resp.target {
            Target::Entry(seq) => self.entry(seq),
            Target::Unset | Target::Orphan => None,
        }
    }

    fn entry(&mut self, seq: u64) -> Option<&mut Pending> {
        self.in_flight.iter_mut().find(|p| p.seq == seq)
    }

    /// Requests whose response may have been (partly) in skipped bytes leave
    /// as Desync: their response can no longer be told apart from the next one.
    fn settle_doubt(&mut self, sink: &mut dyn CallSink) {
        let below = self.resp.doubt_below;
        for p in self.in_flight.iter_mut() {
            if p.seq < below && p.response != Progress::Done {
                p.response = Progress::Done;
                p.desync = true;
            }
        }
        self.emit_ready(sink);
    }

    /// Adds a request; returns its seq.
    fn push(&mut self, pending: Pending, sink: &mut dyn CallSink) -> u64 {
        if matches!(self.resp.state, RespState::Lost) {
            // HTTP/1 clients wait for a response before writing the next
            // request (unless pipelining): a new request means the responses
            // in doubt are over.
            self.settle_doubt(sink);
        }
        let cap = self.limits.max_in_flight.max(1);
        while self.in_flight.len() >= cap {
            let Some(oldest) = self.in_flight.pop_front() else {
                break;
            };
            anomaly(sink, "too_many_in_flight");
            let lost = matches!(self.resp.state, RespState::Lost);
            if oldest.response == Progress::Waiting && !(lost && oldest.seq < self.resp.doubt_below)
            {
                self.orphans += 1;
            }
            let end = if oldest.desync {
                ExchangeEnd::Desync
            } else if oldest.response == Progress::Done {
                ExchangeEnd::Complete
            } else {
                ExchangeEnd::Aborted
            };
            emit(oldest, end, sink);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.push_back(Pending { seq, ..pending });
        seq
    }

    /// Emits finished exchanges from the front, keeping FIFO order.
    fn emit_ready(&mut self, sink: &mut dyn CallSink) {
        while self
            .in_flight
            .front()
            .is_some_and(|p| p.response == Progress::Done && !p.request_open)
        {
            if let Some(p) = self.in_flight.pop_front() {
                let end = if p.desync {
                    ExchangeEnd::Desync
                } else {
                    ExchangeEnd::Complete
                };
                emit(p, end, sink);
            }
        }
    }

    /// Not HTTP/1 from the first byte: nothing to resync to.
    fn stop(&mut self, reason: &'static str, sink: &mut dyn CallSink) {
        anomaly(sink, reason);
        self.done = true;
        release(&mut self.req.head);
        release(&mut self.resp.head);
    }
}

impl std::fmt::Debug for Http1Conn {
    // The head buffers hold raw header values: lengths only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Conn")
            .field("done", &self.done)
            .field("in_flight", &self.in_flight.len())
            .field("request_head_buffered", &self.req.head.len())
            .field("response_head_buffered", &self.resp.head.len())
            .finish()
    }
}

impl Pending {
    fn blank() -> Pending {
        Pending {
            seq: 0,
            request: None,
            request_ns: 0,
            request_bytes: 0,
            request_open: false,
            method: MethodKind::Other,
            response: Progress::Waiting,
            status: None,
            response_ns: None,
            response_bytes: 0,
            desync: false,
        }
    }
}

impl ReqSide {
    fn new() -> ReqSide {
        ReqSide {
            state: ReqState::Head,
            head: Vec::new(),
            head_ns: None,
            tentative: false,
        }
    }
}

impl RespSide {
    fn new() -> RespSide {
        RespSide {
            state: RespState::Head,
            head: Vec::new(),
            head_ns: None,
            target: Target::Unset,
            doubt_below: 0,
        }
    }
}

impl Body {
    /// Consumes body bytes from the front of `data`: (bytes consumed, body finished).
    fn step(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            Body::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                Ok((n as usize, *left == 0))
            }
            Body::Chunked(c) => c.step(data),
            Body::UntilClose => Ok((data.len(), false)),
        }
    }

    /// Skips `gap` bytes nobody captured: (bytes that belonged to the body, body finished).
    /// Fails when the gap hides framing this body needs.
    fn skip(&mut self, gap: u64) -> Result<(u64, bool), ()> {
        match self {
            Body::Length(left) => {
                let n = (*left).min(gap);
                *left -= n;
                Ok((n, *left == 0))
            }
            Body::Chunked(c) => c.skip(gap).map(|()| (gap, false)),
            Body::UntilClose => Ok((gap, false)),
        }
    }
}

impl Chunked {
    fn start() -> Chunked {
        Chunked::Size {
            size: 0,
            digits: false,
            ext: false,
        }
    }

    fn after_size(size: u64) -> Chunked {
        if size == 0 {
            Chunked::Trailer { empty: true }
        } else {
            Chunked::Data(size)
        }
    }

    fn step(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
        let mut i = 0;
        while let Some(rest) = data.get(i..).filter(|r| !r.is_empty()) {
            if let Chunked::Data(left) = *self {
                let n = left.min(rest.len() as u64);
                i += n as usize;
                *self = if left == n {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left - n)
                };
                continue;
            }
            let Some(&b) = rest.first() else { break };
            i += 1;
            *self = match *self {
                Chunked::Size { size, digits, ext } => match b {
                    b'\r' if digits => Chunked::SizeLf { size },
                    b'\n' if digits => Chunked::after_size(size),
                    // Extensions are skipped, whatever they say.
                    _ if ext => Chunked::Size { size, digits, ext },
                    b';' | b' ' | b'\t' if digits => Chunked::Size {
                        size,
                        digits,
                        ext: true,
                    },
                    _ => {
                        let digit = hex_value(b).ok_or(())?;
                        if size > u64::MAX >> 4 {
                            return Err(());
                        }
                        Chunked::Size {
                            size: size << 4 | u64::from(digit),
                            digits: true,
                            ext,
                        }
                    }
                },
                Chunked::SizeLf { size } if b == b'\n' => Chunked::after_size(size),
                Chunked::DataCr if b == b'\r' => Chunked::DataLf,
                Chunked::DataCr | Chunked::DataLf if b == b'\n' => Chunked::start(),
                Chunked::Trailer { empty } => match b {
                    b'\n' if empty => return Ok((i, true)),
                    b'\n' => Chunked::Trailer { empty: true },
                    b'\r' => Chunked::Trailer { empty },
                    _ => Chunked::Trailer { empty: false },
                },
                _ => return Err(()),
            };
        }
        Ok((i, false))
    }

    /// A gap is harmless only inside chunk data.
    fn skip(&mut self, gap: u64) -> Result<(), ()> {
        match *self {
            _ if gap == 0 => Ok(()),
            Chunked::Data(left) if gap < left => {
                *self = Chunked::Data(left - gap);
                Ok(())
            }
            Chunked::Data(left) if gap == left => {
                *self = Chunked::DataCr;
                Ok(())
            }
            _ => Err(()),
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Buffers head bytes (never beyond `max`) and parses when a head may have
/// ended. Bytes after the head are left to the caller, never buffered.
fn head_step<T>(
    buf: &mut Vec<u8>,
    data: &[u8],
    max: usize,
    parse: impl FnOnce(&[u8]) -> Parsed<T>,
) -> HeadStep<T> {
    let old = buf.len();
    let take = data.len().min(max.saturating_sub(old));
    let (new, _) = data.split_at(take);
    let over = take < data.len();
    // A head only ends at a line feed; each one is parsed as it arrives, so
    // the end can never hide in bytes buffered earlier.
    if old > 0 && !over && !new.contains(&b'\n') {
        append(buf, new, max);
        return HeadStep::More;
    }
    let parsed = if old == 0 {
        parse(new)
    } else {
        append(buf, new, max);
        parse(buf)
    };
    match parsed {
        Parsed::Complete(len, info) => match len.checked_sub(old) {
            Some(consumed) if consumed > 0 && consumed <= take => {
                release(buf);
                HeadStep::Done {
                    len,
                    consumed,
                    info,
                }
            }
            _ => HeadStep::Failed("bad_head"),
        },
        Parsed::Partial if over => HeadStep::Failed("head_too_large"),
        Parsed::Partial => {
            if old == 0 {
                append(buf, new, max);
            }
            HeadStep::More
        }
        Parsed::Error(reason) => HeadStep::Failed(reason),
    }
}

/// Appends with growth capped at `max`, so capacity never exceeds the head limit.
fn append(buf: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let need = buf.len() + bytes.len();
    if need > buf.capacity() {
        let want = buf.capacity().saturating_mul(2).max(256).min(max).max(need);
        buf.reserve_exact(want - buf.len());
    }
    buf.extend_from_slice(bytes);
}

/// Frees a head buffer: most heads arrive whole and never need one, so an
/// idle connection should hold nothing.
fn release(buf: &mut Vec<u8>) {
    *buf = Vec::new();
}

fn parse_request(buf: &[u8], sink: &mut dyn CallSink) -> Parsed<ReqInfo> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Error(request_error(e)),
    };
    let method = req.method.unwrap_or_default();
    let mut ours = [Header {
        name: &[],
        value: &[],
    }; MAX_HEADERS];
    for (slot, h) in ours.iter_mut().zip(req.headers.iter()) {
        *slot = Header {
            name: h.name.as_bytes(),
            value: h.value,
        };
    }
    let count = req.headers.len().min(MAX_HEADERS);
    let summary = sink.request(&RequestHead {
        protocol: Protocol::Http1,
        method: method.as_bytes(),
        authority: header(req.headers, "host"),
        path: req.path.unwrap_or_default().as_bytes(),
        headers: ours.get(..count).unwrap_or_default(),
    });
    let method = if method == "HEAD" {
        MethodKind::Head
    } else if method == "CONNECT" {
        MethodKind::Connect
    } else {
        MethodKind::Other
    };
    let body = match transfer_chunked(req.headers) {
        Some(true) => Ok(Some(Body::Chunked(Chunked::start()))),
        // A request cannot be delimited by closing: servers answer 400.
        Some(false) => Err("bad_transfer_encoding"),
        None => match content_length(req.headers) {
            Ok(Some(n)) if n > 0 => Ok(Some(Body::Length(n))),
            Ok(_) => Ok(None),
            Err(()) => Err("bad_content_length"),
        },
    };
    Parsed::Complete(
        len,
        ReqInfo {
            summary,
            method,
            body,
        },
    )
}

fn parse_response(buf: &[u8]) -> Parsed<RespInfo> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    // Responses reached the client already: accept what clients accept.
    let mut config = httparse::ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true);
    let len = match config.parse_response(&mut resp, buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Error("too_many_headers"),
        Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
            return Parsed::Error("bad_header");
        }
        Err(_) => return Parsed::Error("bad_status_line"),
    };
    let body = match transfer_chunked(resp.headers) {
        Some(true) => Ok(Some(Body::Chunked(Chunked::start()))),
        Some(false) => Ok(Some(Body::UntilClose)),
        None => match content_length(resp.headers) {
            Ok(Some(0)) => Ok(None),
            Ok(Some(n)) => Ok(Some(Body::Length(n))),
            Ok(None) => Ok(Some(Body::UntilClose)),
            Err(()) => Err("bad_content_length"),
        },
    };
    Parsed::Complete(
        len,
        RespInfo {
            status: resp.code.unwrap_or_default(),
            upgrade_h2c: resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("upgrade")
                    && h.value.trim_ascii().eq_ignore_ascii_case(b"h2c")
            }),
            body,
        },
    )
}

fn request_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::TooManyHeaders => "too_many_headers",
        httparse::Error::HeaderName | httparse::Error::HeaderValue => "bad_header",
        _ => "bad_request_line",
    }
}

/// Reasons that say the bytes are not HTTP/1 at all.
fn is_garbage(reason: &str) -> bool {
    matches!(reason, "bad_request_line" | "bad_status_line")
}

fn header<'b>(headers: &[httparse::Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Some(whether chunked is the final coding) when Transfer-Encoding is present.
fn transfer_chunked(headers: &[httparse::Header<'_>]) -> Option<bool> {
    let mut present = false;
    let mut last: &[u8] = &[];
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        present = true;
        for coding in h.value.split(|&b| b == b',').map(trim) {
            if !coding.is_empty() {
                last = coding;
            }
        }
    }
    present.then(|| last.eq_ignore_ascii_case(b"chunked"))
}

/// The Content-Length; repeated values (as headers or a list) must agree.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ()> {
    let mut found = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for item in h.value.split(|&b| b == b',').map(trim) {
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let value = item.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            match (value, found) {
                (None, _) => return Err(()),
                (Some(v), Some(f)) if v != f => return Err(()),
                (Some(v), _) => found = Some(v),
            }
        }
    }
    Ok(found)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(a), Some(b)) => s.get(a..=b).unwrap_or_default(),
        _ => &[],
    }
}

/// A write worth trying as a new request after losing sync: it starts with
/// an upper-case method and httparse has nothing against it so far.
fn starts_like_request(data: &[u8]) -> bool {
    if !data.first().is_some_and(u8::is_ascii_uppercase) {
        return false;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    !matches!(
        httparse::Request::new(&mut headers).parse(data),
        Err(e) if e != httparse::Error::TooManyHeaders
    )
}

fn anomaly(sink: &mut dyn CallSink, reason: &'static str) {
    sink.anomaly(Anomaly {
        protocol: Protocol::Http1,
        reason,
    });
}

fn emit(p: Pending, end: ExchangeEnd, sink: &mut dyn CallSink) {
    sink.exchange(Exchange {
        protocol: Protocol::Http1,
        stream: 0,
        request: p.request,
        request_ns: p.request_ns,
        request_bytes: p.request_bytes,
        status: p.status,
        response_ns: p.response_ns,
        response_bytes: p.response_bytes,
        end,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Records what the parser emits; the summary keeps the raw method and
    /// path (minimisation is not this module's job).
    #[derive(Default)]
    struct Rec {
        exchanges: Vec<Exchange>,
        anomalies: Vec<&'static str>,
        header_names: Vec<String>,
    }

    impl CallSink for Rec {
        fn request(&mut self, head: &RequestHead<'_>) -> RequestSummary {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            self.header_names = head.headers.iter().map(|h| text(h.name)).collect();
            RequestSummary {
                method: text(head.method),
                authority: head.authority.map(text),
                path: text(head.path),
                ..RequestSummary::default()
            }
        }
        fn exchange(&mut self, ex: Exchange) {
            assert_eq!(ex.protocol, Protocol::Http1);
            self.exchanges.push(ex);
        }
        fn anomaly(&mut self, anomaly: Anomaly) {
            self.anomalies.push(anomaly.reason);
        }
    }

    fn chunk(ktime_ns: u64, direction: Direction, data: &[u8]) -> Chunk<'_> {
        Chunk {
            ktime_ns,
            direction,
            len: data.len() as u32,
            data,
        }
    }
    fn w(ktime_ns: u64, data: &[u8]) -> Chunk<'_> {
        chunk(ktime_ns, Direction::Write, data)
    }
    fn r(ktime_ns: u64, data: &[u8]) -> Chunk<'_> {
        chunk(ktime_ns, Direction::Read, data)
    }
    /// A call of which only the first `captured` bytes were captured.
    fn cut(ktime_ns: u64, direction: Direction, data: &[u8], captured: usize) -> Chunk<'_> {
        Chunk {
            ktime_ns,
            direction,
            len: data.len() as u32,
            data: &data[..captured],
        }
    }

    fn summary(method: &str, authority: &str, path: &str) -> RequestSummary {
        RequestSummary {
            method: method.into(),
            authority: Some(authority.into()),
            path: path.into(),
            ..RequestSummary::default()
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ex(
        request: Option<RequestSummary>,
        request_ns: u64,
        request_bytes: usize,
        status: Option<u16>,
        response_ns: Option<u64>,
        response_bytes: usize,
        end: ExchangeEnd,
    ) -> Exchange {
        Exchange {
            protocol: Protocol::Http1,
            stream: 0,
            request,
            request_ns,
            request_bytes: request_bytes as u64,
            status,
            response_ns,
            response_bytes: response_bytes as u64,
            end,
        }
    }

    fn run(limits: Limits, chunks: &[Chunk<'_>]) -> (Http1Conn, Rec) {
        let mut conn = Http1Conn::new(limits);
        let mut rec = Rec::default();
        for c in chunks {
            conn.feed(c, &mut rec);
            assert!(conn.buffered() <= 2 * limits.max_head_bytes);
        }
        (conn, rec)
    }

    const CURL_GET: &[u8] = b"GET /fhir/R4/Patient/8812 HTTP/1.1\r\nHost: fhir.example.org\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nAuthorization: Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwic3ViIjoiYmlsbGluZy1zdmMifQ.c2lnbmF0dXJl\r\n\r\n";
    const NGINX_200: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 04 Jun 2024 10:00:00 GMT\r\nContent-Type: application/fhir+json\r\nContent-Length: 45\r\nConnection: keep-alive\r\n\r\n{\"resourceType\":\"Patient\",\"id\":\"8812\",\"a\":1}\n";
    const CURL_GET_2: &[u8] = b"GET /fhir/R4/Observation?patient=8812&code=8867-4 HTTP/1.1\r\nHost: fhir.example.org\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    const NGINX_404: &[u8] = b"HTTP/1.1 404 Not Found\r\nServer: nginx/1.22.1\r\nDate: Tue, 04 Jun 2024 10:00:01 GMT\r\nContent-Type: text/html\r\nContent-Length: 19\r\nConnection: keep-alive\r\n\r\n<h1>Not Found</h1>\n";
    const NGINX_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nTrailer: X-Checksum\r\n\r\n7\r\n{\"a\":1}\r\n1A;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Checksum: 0badc0de\r\n\r\n";

    fn fhir_get() -> RequestSummary {
        summary("GET", "fhir.example.org", "/fhir/R4/Patient/8812")
    }
    fn fhir_get_2() -> RequestSummary {
        summary(
            "GET",
            "fhir.example.org",
            "/fhir/R4/Observation?patient=8812&code=8867-4",
        )
    }

    #[test]
    fn curl_get_nginx_content_length() {
        let (conn, rec) = run(Limits::default(), &[w(100, CURL_GET), r(250, NGINX_200)]);
        assert_eq!(
            rec.exchanges,
            [ex(
                Some(fhir_get()),
                100,
                CURL_GET.len(),
                Some(200),
                Some(250),
                NGINX_200.len(),
                ExchangeEnd::Complete
            )]
        );
        assert!(rec.anomalies.is_empty());
        assert_eq!(
            rec.header_names,
            ["Host", "User-Agent", "Accept", "Authorization"]
        );
        assert_eq!(conn.buffered(), 0);
        assert!(!conn.is_done());
    }

    #[test]
    fn python_post_head_and_body_in_separate_writes() {
        // http.client sends the head with one write and the body with another.
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.example\r\nAccept-Encoding: identity\r\nContent-Length: {}\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-proj-AAAAAAAAAAAAAAAAAAAAAAAA\r\n\r\n",
            body.len()
        );
        let resp = b"HTTP/1.1 201 Created\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"id\":\"c1\"}\n";
        let (_, rec) = run(
            Limits::default(),
            &[w(10, head.as_bytes()), w(11, body), r(40, resp)],
        );
        assert_eq!(
            rec.exchanges,
            [ex(
                Some(summary(
                    "POST",
                    "api.openai.example",
                    "/v1/chat/completions"
                )),
                10,
                head.len() + body.len(),
                Some(201),
                Some(40),
                resp.len(),
                ExchangeEnd::Complete
            )]
        );
    }

    #[test]
    fn node_chunked_request_body_and_keep_alive() {
        // node's http module with no Content-Length streams the body chunked.
        let head = b"POST /api/v2/events HTTP/1.1\r\nContent-Type: application/json\r\nx-api-key: k_live_0123456789\r\nHost: events.example.com\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n";
        let part = b"1b\r\n{\"event\":\"login\",\"ok\":true}\r\n";
        let last = b"0\r\n\r\n";
        let resp = b"HTTP/1.1 204 No Content\r\nServer: nginx\r\nConnection: keep-alive\r\n\r\n";
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, head),
                w(2, part),
                w(3, last),
                r(9, resp),
                w(20, CURL_GET),
                r(30, NGINX_200),
            ],
        );
        assert!(rec.anomalies.is_empty(), "{:?}", rec.anomalies);
        assert_eq!(
            rec.exchanges,
            [
                ex(
                    Some(summary("POST", "events.example.com", "/api/v2/events")),
                    1,
                    head.len() + part.len() + last.len(),
                    Some(204),
                    Some(9),
                    resp.len(),
                    ExchangeEnd::Complete
                ),
                ex(
                    Some(fhir_get()),
                    20,
                    CURL_GET.len(),
                    Some(200),
                    Some(30),
                    NGINX_200.len(),
                    ExchangeEnd::Complete
                ),
            ]
        );
    }

    fn chunked_then_404(parts: &[&[u8]]) -> Rec {
        let mut chunks = vec![w(1, CURL_GET)];
        chunks.extend(parts.iter().map(|p| r(5, p)));
        chunks.push(w(10, CURL_GET_2));
        chunks.push(r(20, NGINX_404));
        run(Limits::default(), &chunks).1
    }

    fn chunked_then_404_expected() -> Vec<Exchange> {
        vec![
            ex(
                Some(fhir_get()),
                1,
                CURL_GET.len(),
                Some(200),
                Some(5),
                NGINX_CHUNKED.len(),
                ExchangeEnd::Complete,
            ),
            ex(
                Some(fhir_get_2()),
                10,
                CURL_GET_2.len(),
                Some(404),
                Some(20),
                NGINX_404.len(),
                ExchangeEnd::Complete,
            ),
        ]
    }

    #[test]
    fn chunked_response_with_trailers_split_anywhere() {
        for at in 0..=NGINX_CHUNKED.len() {
            let (a, b) = NGINX_CHUNKED.split_at(at);
            let rec = chunked_then_404(&[a, b]);
            assert!(
                rec.anomalies.is_empty(),
                "split at {at}: {:?}",
                rec.anomalies
            );
            assert_eq!(rec.exchanges, chunked_then_404_expected(), "split at {at}");
        }
        let bytes: Vec<&[u8]> = NGINX_CHUNKED.chunks(1).collect();
        let rec = chunked_then_404(&bytes);
        assert_eq!(rec.exchanges, chunked_then_404_expected());
    }

    #[test]
    fn head_request_response_has_no_body() {
        let head_req = b"HEAD /models/llama-3-8b.gguf HTTP/1.1\r\nHost: cdn.example.net\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
        let head_resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/octet-stream\r\nContent-Length: 4920000000\r\nAccept-Ranges: bytes\r\n\r\n";
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, head_req),
                r(2, head_resp),
                w(3, CURL_GET),
                r(4, NGINX_200),
            ],
        );
        assert_eq!(rec.exchanges.len(), 2);
        assert_eq!(rec.exchanges[0].response_bytes, head_resp.len() as u64);
        assert_eq!(rec.exchanges[0].end, ExchangeEnd::Complete);
        assert_eq!(rec.exchanges[1].status, Some(200));
        assert_eq!(rec.exchanges[1].request, Some(fhir_get()));
        assert_eq!(rec.exchanges[1].end, ExchangeEnd::Complete);
    }

    #[test]
    fn expect_100_continue() {
        let body = vec![b'x'; 2048];
        let head = b"POST /upload HTTP/1.1\r\nHost: files.example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nContent-Length: 2048\r\nContent-Type: application/octet-stream\r\nExpect: 100-continue\r\n\r\n";
        let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
        let done = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n\r\nok";
        let (_, rec) = run(
            Limits::default(),
            &[w(1, head), r(2, cont), w(3, &body), r(7, done)],
        );
        assert_eq!(
            rec.exchanges,
            [ex(
                Some(summary("POST", "files.example.com", "/upload")),
                1,
                head.len() + body.len(),
                Some(200),
                Some(7),
                cont.len() + done.len(),
                ExchangeEnd::Complete
            )]
        );
    }

    #[test]
    fn no_body_for_204_and_304_even_with_content_length() {
        let r204 = b"HTTP/1.1 204 No Content\r\nServer: nginx\r\n\r\n";
        let r304 = b"HTTP/1.1 304 Not Modified\r\nServer: nginx\r\nETag: \"6650a1-2e\"\r\nContent-Length: 5120\r\n\r\n";
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, CURL_GET),
                r(2, r204),
                w(3, CURL_GET),
                r(4, r304),
                w(5, CURL_GET_2),
                r(6, NGINX_404),
            ],
        );
        let got: Vec<_> = rec
            .exchanges
            .iter()
            .map(|e| (e.status, e.response_bytes, e.end))
            .collect();
        assert_eq!(
            got,
            [
                (Some(204), r204.len() as u64, ExchangeEnd::Complete),
                (Some(304), r304.len() as u64, ExchangeEnd::Complete),
                (Some(404), NGINX_404.len() as u64, ExchangeEnd::Complete),
            ]
        );
    }

    #[test]
    fn keep_alive_three_requests() {
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, CURL_GET),
                r(2, NGINX_200),
                w(3, CURL_GET_2),
                r(4, NGINX_404),
                w(5, CURL_GET),
                r(6, NGINX_CHUNKED),
            ],
        );
        let got: Vec<_> = rec
            .exchanges
            .iter()
            .map(|e| (e.request_ns, e.status, e.response_ns, e.end))
            .collect();
        assert_eq!(
            got,
            [
                (1, Some(200), Some(2), ExchangeEnd::Complete),
                (3, Some(404), Some(4), ExchangeEnd::Complete),
                (5, Some(200), Some(6), ExchangeEnd::Complete),
            ]
        );
    }

    #[test]
    fn pipelining_two_pairs_fifo() {
        let both = [CURL_GET, CURL_GET_2].concat();
        let answers = [NGINX_200, NGINX_404].concat();
        let (_, rec) = run(Limits::default(), &[w(1, &both), r(2, &answers)]);
        assert_eq!(
            rec.exchanges,
            [
                ex(
                    Some(fhir_get()),
                    1,
                    CURL_GET.len(),
                    Some(200),
                    Some(2),
                    NGINX_200.len(),
                    ExchangeEnd::Complete
                ),
                ex(
                    Some(fhir_get_2()),
                    1,
                    CURL_GET_2.len(),
                    Some(404),
                    Some(2),
                    NGINX_404.len(),
                    ExchangeEnd::Complete
                ),
            ]
        );
    }

    const CLOSE_DELIMITED: &[u8] =
        b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11.2\r\nContent-type: text/plain\r\n\r\n";

    #[test]
    fn read_until_close_is_complete_when_the_connection_closes() {
        for (end, expect) in [
            (ExchangeEnd::Aborted, ExchangeEnd::Complete),
            (ExchangeEnd::Timeout, ExchangeEnd::Timeout),
        ] {
            let (mut conn, mut rec) = run(
                Limits::default(),
                &[
                    w(1, CURL_GET),
                    r(2, CLOSE_DELIMITED),
                    r(3, b"line one\n"),
                    r(4, b"line two\n"),
                ],
            );
            assert!(rec.exchanges.is_empty());
            conn.finish(end, &mut rec);
            assert_eq!(
                rec.exchanges,
                [ex(
                    Some(fhir_get()),
                    1,
                    CURL_GET.len(),
                    Some(200),
                    Some(2),
                    CLOSE_DELIMITED.len() + 18,
                    expect
                )]
            );
            // Nothing is left to leave twice.
            conn.finish(end, &mut rec);
            assert_eq!(rec.exchanges.len(), 1);
        }
    }

    #[test]
    fn finish_aborts_exchanges_in_flight() {
        let (mut conn, mut rec) = run(Limits::default(), &[w(1, CURL_GET), r(2, &NGINX_200[..60])]);
        conn.finish(ExchangeEnd::Aborted, &mut rec);
        assert_eq!(
            rec.exchanges,
            [ex(
                Some(fhir_get()),
                1,
                CURL_GET.len(),
                None,
                None,
                0,
                ExchangeEnd::Aborted
            )]
        );
    }

    #[test]
    fn gap_in_content_length_body_stays_in_sync() {
        let mut big = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/octet-stream\r\nContent-Length: 10000\r\n\r\n".to_vec();
        let head_len = big.len();
        big.resize(head_len + 10_000, b'z');
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, CURL_GET),
                cut(2, Direction::Read, &big, 4096),
                w(3, CURL_GET_2),
                r(4, NGINX_404),
            ],
        );
        assert!(rec.anomalies.is_empty());
        assert_eq!(rec.exchanges.len(), 2);
        assert_eq!(rec.exchanges[0].response_bytes, big.len() as u64);
        assert_eq!(rec.exchanges[0].end, ExchangeEnd::Complete);
        assert_eq!(rec.exchanges[1].status, Some(404));
        assert_eq!(rec.exchanges[1].end, ExchangeEnd::Complete);
    }

    #[test]
    fn gap_in_request_head_desyncs_then_recovers_on_next_request() {
        let big = format!(
            "GET /dashboard HTTP/1.1\r\nHost: app.example.com\r\nCookie: session={}\r\nAccept: */*\r\n\r\n",
            "s".repeat(6000)
        );
        let (_, rec) = run(
            Limits::default(),
            &[
                cut(1, Direction::Write, big.as_bytes(), 4096),
                r(2, NGINX_200),
                w(3, CURL_GET_2),
                r(4, NGINX_404),
            ],
        );
        assert_eq!(rec.anomalies, ["truncated_head"]);
        assert_eq!(
            rec.exchanges,
            [
                ex(
                    None,
                    1,
                    big.len(),
                    Some(200),
                    Some(2),
                    NGINX_200.len(),
                    ExchangeEnd::Desync
                ),
                ex(
                    Some(fhir_get_2()),
                    3,
                    CURL_GET_2.len(),
                    Some(404),
                    Some(4),
                    NGINX_404.len(),
                    ExchangeEnd::Complete
                ),
            ]
        );
    }

    #[test]
    fn lost_request_body_is_skipped_until_a_request_line() {
        // The head is cut, so the body that follows cannot be framed; it is
        // skipped, and its bytes (JSON, form data) never pass for a request.
        let head = b"POST /v1/embeddings HTTP/1.1\r\nHost: api.example.ai\r\nContent-Type: application/json\r\nContent-Length: 25\r\nAuthorization: Bearer sk-ant-api03-AAAAAAAAAAAAAAAAAAAA\r\n\r\n";
        let (_, rec) = run(
            Limits::default(),
            &[
                cut(1, Direction::Write, head, 40),
                w(2, br#"{"input":"hello","n":1}  "#),
                w(3, b"POSTAL=1&code=2"),
                r(4, NGINX_200),
                w(5, CURL_GET_2),
                r(6, NGINX_404),
            ],
        );
        assert_eq!(rec.anomalies, ["truncated_head"]);
        let got: Vec<_> = rec
            .exchanges
            .iter()
            .map(|e| (e.request.is_some(), e.status, e.end))
            .collect();
        assert_eq!(
            got,
            [
                (false, Some(200), ExchangeEnd::Desync),
                (true, Some(404), ExchangeEnd::Complete)
            ]
        );
    }

    #[test]
    fn gap_in_response_head_desyncs_then_recovers() {
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, CURL_GET),
                cut(2, Direction::Read, NGINX_200, 30),
                // More of something nobody can frame any more: skipped.
                r(3, b"more body bytes"),
                w(4, CURL_GET_2),
                r(5, NGINX_404),
            ],
        );
        assert_eq!(rec.anomalies, ["truncated_head"]);
        assert_eq!(
            rec.exchanges,
            [
                ex(
                    Some(fhir_get()),
                    1,
                    CURL_GET.len(),
                    None,
                    None,
                    NGINX_200.len(),
                    ExchangeEnd::Desync
                ),
                ex(
                    Some(fhir_get_2()),
                    4,
                    CURL_GET_2.len(),
                    Some(404),
                    Some(5),
                    NGINX_404.len(),
                    ExchangeEnd::Complete
                ),
            ]
        );
    }

    #[test]
    fn gap_across_chunked_framing_desyncs_then_recovers() {
        // Captured up to the middle of the first chunk's data; the gap then
        // runs past it, over the next size line.
        let at = NGINX_CHUNKED
            .windows(4)
            .position(|w| w == b"{\"a\"")
            .unwrap()
            + 2;
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, CURL_GET),
                cut(2, Direction::Read, NGINX_CHUNKED, at),
                r(3, b"1\r\nx\r\n0\r\n\r\n"),
                w(4, CURL_GET_2),
                r(5, NGINX_404),
            ],
        );
        assert_eq!(rec.anomalies, ["chunked_framing"]);
        let got: Vec<_> = rec
            .exchanges
            .iter()
            .map(|e| (e.status, e.response_bytes, e.end))
            .collect();
        assert_eq!(
            got,
            [
                (Some(200), NGINX_CHUNKED.len() as u64, ExchangeEnd::Desync),
                (Some(404), NGINX_404.len() as u64, ExchangeEnd::Complete)
            ]
        );
    }

    #[test]
    fn gap_inside_chunk_data_stays_in_sync() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut resp = head.to_vec();
        resp.extend_from_slice(b"1000\r\n");
        resp.resize(resp.len() + 0x1000, b'q');
        let end = resp.len();
        resp.extend_from_slice(b"\r\n0\r\n\r\n");
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, CURL_GET),
                cut(2, Direction::Read, &resp[..end], head.len() + 100),
                r(3, &resp[end..]),
            ],
        );
        assert!(rec.anomalies.is_empty());
        assert_eq!(rec.exchanges.len(), 1);
        assert_eq!(rec.exchanges[0].response_bytes, resp.len() as u64);
        assert_eq!(rec.exchanges[0].end, ExchangeEnd::Complete);
    }

    #[test]
    fn head_too_large_is_skipped_and_bounded() {
        let limits = Limits {
            max_head_bytes: 200,
            max_in_flight: 8,
        };
        let big = format!(
            "GET /x HTTP/1.1\r\nHost: a.example\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(300)
        );
        let (conn, rec) = run(
            limits,
            &[
                w(1, &big.as_bytes()[..100]),
                w(2, &big.as_bytes()[100..]),
                r(
                    3,
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n",
                ),
                w(4, CURL_GET_2),
                r(5, NGINX_404),
            ],
        );
        assert_eq!(rec.anomalies, ["head_too_large"]);
        let got: Vec<_> = rec
            .exchanges
            .iter()
            .map(|e| (e.request.is_some(), e.status, e.end))
            .collect();
        assert_eq!(
            got,
            [
                (false, Some(431), ExchangeEnd::Desync),
                (true, Some(404), ExchangeEnd::Complete)
            ]
        );
        assert_eq!(conn.buffered(), 0);
    }

    #[test]
    fn too_many_in_flight_aborts_oldest_and_drops_its_response() {
        let limits = Limits {
            max_head_bytes: 4096,
            max_in_flight: 2,
        };
        let reqs = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n";
        let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nbHTTP/1.1 202 Accepted\r\nContent-Length: 1\r\n\r\nc";
        let (_, rec) = run(limits, &[w(1, reqs), r(2, resps)]);
        assert_eq!(rec.anomalies, ["too_many_in_flight"]);
        let got: Vec<_> = rec
            .exchanges
            .iter()
            .map(|e| (e.request.as_ref().unwrap().path.clone(), e.status, e.end))
            .collect();
        assert_eq!(
            got,
            [
                ("/a".to_string(), None, ExchangeEnd::Aborted),
                ("/b".to_string(), Some(201), ExchangeEnd::Complete),
                ("/c".to_string(), Some(202), ExchangeEnd::Complete),
            ]
        );
    }

    #[test]
    fn switching_protocols_ends_http1() {
        let upgrade = b"GET /ws HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello";
        let (mut conn, mut rec) = run(
            Limits::default(),
            &[w(1, upgrade), r(2, switch), w(3, CURL_GET), r(4, NGINX_200)],
        );
        assert!(conn.is_done());
        conn.finish(ExchangeEnd::Aborted, &mut rec);
        assert!(rec.anomalies.is_empty());
        assert_eq!(rec.exchanges.len(), 1);
        assert_eq!(rec.exchanges[0].status, Some(101));
        assert_eq!(rec.exchanges[0].end, ExchangeEnd::Complete);
        assert_eq!(conn.buffered(), 0);
    }

    #[test]
    fn connect_tunnel_ends_http1_but_a_refused_connect_does_not() {
        let connect = b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n";
        let refused =
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\nnope";
        let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
        let (conn, rec) = run(
            Limits::default(),
            &[w(1, connect), r(2, refused), w(3, connect), r(4, ok)],
        );
        assert!(conn.is_done());
        let got: Vec<_> = rec.exchanges.iter().map(|e| (e.status, e.end)).collect();
        assert_eq!(
            got,
            [
                (Some(407), ExchangeEnd::Complete),
                (Some(200), ExchangeEnd::Complete)
            ]
        );
    }

    #[test]
    fn garbage_at_connection_start_means_not_http1() {
        let client_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        let (mut conn, mut rec) = run(Limits::default(), &[w(1, client_hello)]);
        assert!(conn.is_done());
        assert_eq!(rec.anomalies, ["bad_request_line"]);
        conn.finish(ExchangeEnd::Aborted, &mut rec);
        assert!(rec.exchanges.is_empty());
    }

    #[test]
    fn garbage_mid_connection_resyncs_at_next_request() {
        let (conn, rec) = run(
            Limits::default(),
            &[
                w(1, CURL_GET),
                r(2, NGINX_200),
                w(3, b"GET /\x01bad HTTP/1.1\r\n\r\n"),
                r(4, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
                w(5, CURL_GET_2),
                r(6, NGINX_404),
            ],
        );
        assert!(!conn.is_done());
        assert_eq!(rec.anomalies, ["bad_request_line"]);
        let got: Vec<_> = rec
            .exchanges
            .iter()
            .map(|e| (e.request.is_some(), e.status, e.end))
            .collect();
        assert_eq!(
            got,
            [
                (true, Some(200), ExchangeEnd::Complete),
                (false, Some(400), ExchangeEnd::Desync),
                (true, Some(404), ExchangeEnd::Complete)
            ]
        );
    }

    #[test]
    fn garbage_response_resyncs_at_http1_read() {
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, CURL_GET),
                r(2, b"SSH-2.0-OpenSSH_9.2\r\n"),
                w(3, CURL_GET_2),
                r(4, NGINX_404),
            ],
        );
        assert_eq!(rec.anomalies, ["bad_status_line"]);
        let got: Vec<_> = rec.exchanges.iter().map(|e| (e.status, e.end)).collect();
        assert_eq!(
            got,
            [
                (None, ExchangeEnd::Desync),
                (Some(404), ExchangeEnd::Complete)
            ]
        );
    }

    #[test]
    fn response_nobody_asked_for_is_dropped() {
        let (_, rec) = run(
            Limits::default(),
            &[r(1, NGINX_404), w(2, CURL_GET), r(3, NGINX_200)],
        );
        assert_eq!(rec.anomalies, ["unexpected_response"]);
        assert_eq!(rec.exchanges.len(), 1);
        assert_eq!(rec.exchanges[0].status, Some(200));
        assert_eq!(rec.exchanges[0].request, Some(fhir_get()));
    }

    #[test]
    fn early_response_waits_for_the_request_body() {
        let head =
            b"PUT /bucket/big.bin HTTP/1.1\r\nHost: s3.example.com\r\nContent-Length: 100\r\n\r\n";
        let denied = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        let body = [b'b'; 100];
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, head),
                w(2, &body[..50]),
                r(3, denied),
                w(4, &body[50..]),
            ],
        );
        assert_eq!(rec.exchanges.len(), 1);
        assert_eq!(rec.exchanges[0].request_bytes, (head.len() + 100) as u64);
        assert_eq!(rec.exchanges[0].status, Some(403));
    }

    #[test]
    fn bad_framing_is_an_anomaly() {
        let cases: [(&[u8], &str); 3] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 12, 13\r\n\r\n",
                "bad_content_length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
                "chunked_framing",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcdXY",
                "chunked_framing",
            ),
        ];
        for (resp, reason) in cases {
            let (_, rec) = run(Limits::default(), &[w(1, CURL_GET), r(2, resp)]);
            assert_eq!(rec.anomalies, [reason]);
        }
        // Repeated, agreeing lengths are fine.
        let (_, rec) = run(
            Limits::default(),
            &[
                w(1, CURL_GET),
                r(
                    2,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok",
                ),
            ],
        );
        assert!(rec.anomalies.is_empty());
        assert_eq!(rec.exchanges.len(), 1);
    }

    #[test]
    fn debug_shows_no_plaintext() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut rec = Rec::default();
        conn.feed(&w(1, &CURL_GET[..150]), &mut rec);
        assert!(conn.buffered() > 0);
        let shown = format!("{conn:?}");
        assert!(
            !shown.contains("Bearer") && !shown.contains("eyJ"),
            "{shown}"
        );
    }

    /// One exchange of the conversation below: request bytes, response bytes,
    /// and where the final response head starts (after any 100 Continue).
    struct Turn {
        req: Vec<u8>,
        resp: Vec<u8>,
        final_at: usize,
        summary: RequestSummary,
        status: u16,
    }

    fn conversation() -> Vec<Turn> {
        let post_body = br#"{"model":"gpt-4o","messages":[]}"#;
        let mut post = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.example\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n",
            post_body.len()
        )
        .into_bytes();
        post.extend_from_slice(post_body);
        let upload = b"PUT /upload HTTP/1.1\r\nHost: files.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello".to_vec();
        let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
        let mut upload_resp = cont.to_vec();
        upload_resp.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let node = b"POST /api/v2/events HTTP/1.1\r\nHost: events.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec();
        let head = b"HEAD /big HTTP/1.1\r\nHost: cdn.example.net\r\n\r\n".to_vec();
        let mut close = CLOSE_DELIMITED.to_vec();
        close.extend_from_slice(b"until the very end\n");
        let turn = |req: Vec<u8>, resp: &[u8], final_at, summary, status| Turn {
            req,
            resp: resp.to_vec(),
            final_at,
            summary,
            status,
        };
        vec![
            turn(CURL_GET.to_vec(), NGINX_200, 0, fhir_get(), 200),
            turn(
                post,
                NGINX_CHUNKED,
                0,
                summary("POST", "api.openai.example", "/v1/chat/completions"),
                200,
            ),
            turn(
                head,
                b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n",
                0,
                summary("HEAD", "cdn.example.net", "/big"),
                200,
            ),
            turn(
                upload,
                &upload_resp,
                cont.len(),
                summary("PUT", "files.example.com", "/upload"),
                200,
            ),
            turn(
                node,
                b"HTTP/1.1 204 No Content\r\n\r\n",
                0,
                summary("POST", "events.example.com", "/api/v2/events"),
                204,
            ),
            turn(
                CURL_GET_2.to_vec(),
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                0,
                fhir_get_2(),
                304,
            ),
            turn(CURL_GET.to_vec(), NGINX_404, 0, fhir_get(), 404),
            turn(CURL_GET_2.to_vec(), &close, 0, fhir_get_2(), 200),
        ]
    }

    /// Cuts `len` bytes at the given points into (start, end) pieces.
    fn pieces(len: usize, cuts: &[prop::sample::Index]) -> Vec<(usize, usize)> {
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
        at.push(0);
        at.push(len);
        at.sort_unstable();
        at.dedup();
        at.windows(2).map(|w| (w[0], w[1])).collect()
    }

    proptest! {
        #[test]
        fn split_and_interleaved_conversation_matches(
            write_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
            read_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
            order in prop::collection::vec(any::<bool>(), 0..120),
        ) {
            let turns = conversation();
            let writes: Vec<u8> = turns.iter().flat_map(|t| t.req.clone()).collect();
            let reads: Vec<u8> = turns.iter().flat_map(|t| t.resp.clone()).collect();
            let mut req_start = vec![];
            let mut resp_start = vec![];
            let (mut wo, mut ro) = (0, 0);
            for t in &turns {
                req_start.push(wo);
                resp_start.push(ro);
                wo += t.req.len();
                ro += t.resp.len();
            }
            let wp = pieces(writes.len(), &write_cuts);
            let rp = pieces(reads.len(), &read_cuts);
            // A read can only hold response bytes whose request was fully written.
            let needs = |end: usize| {
                let i = resp_start.iter().rposition(|&s| s < end).unwrap_or(0);
                req_start[i] + turns[i].req.len()
            };
            let mut order = order.into_iter();
            let (mut wi, mut ri, mut written) = (0, 0, 0);
            let mut feed: Vec<(Direction, (usize, usize))> = vec![];
            while wi < wp.len() || ri < rp.len() {
                let can_read = ri < rp.len() && needs(rp[ri].1) <= written;
                let can_write = wi < wp.len();
                let read = if can_read && can_write { order.next().unwrap_or(false) } else { can_read };
                if read {
                    feed.push((Direction::Read, rp[ri]));
                    ri += 1;
                } else {
                    feed.push((Direction::Write, wp[wi]));
                    written = wp[wi].1;
                    wi += 1;
                }
            }
            let ktime = |dir: Direction, offset: usize| {
                feed.iter()
                    .position(|&(d, (s, e))| d == dir && s <= offset && offset < e)
                    .map_or(0, |i| 1000 + 10 * i as u64)
            };
            let mut conn = Http1Conn::new(Limits::default());
            let mut rec = Rec::default();
            for (i, &(dir, (s, e))) in feed.iter().enumerate() {
                let bytes = if dir == Direction::Write { &writes[s..e] } else { &reads[s..e] };
                conn.feed(&chunk(1000 + 10 * i as u64, dir, bytes), &mut rec);
            }
            conn.finish(ExchangeEnd::Aborted, &mut rec);
            let expected: Vec<Exchange> = turns
                .iter()
                .enumerate()
                .map(|(i, t)| ex(
                    Some(t.summary.clone()),
                    ktime(Direction::Write, req_start[i]),
                    t.req.len(),
                    Some(t.status),
                    Some(ktime(Direction::Read, resp_start[i] + t.final_at)),
                    t.resp.len(),
                    ExchangeEnd::Complete,
                ))
                .collect();
            prop_assert!(rec.anomalies.is_empty(), "{:?}", rec.anomalies);
            prop_assert_eq!(rec.exchanges, expected);
        }
    }
}
