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
/// A head buffer that grew beyond this is freed after its head instead of kept for the next one.
const KEEP_HEAD_CAPACITY: usize = 4096;

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
        }
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
        self.req.state = ReqState::Lost;
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
                            self.response_parsed(len as u64, info, started, sink);
                            if self.done {
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

fn release(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_HEAD_CAPACITY {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
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
