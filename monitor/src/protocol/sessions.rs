//! TLS and cleartext socket chunks keyed by (pid, library session or socket) → the HTTP parser of that connection; bounded, idle-expired.
//!
//! A session's role and protocol are told from its first bytes: a client
//! writes a request line or the HTTP/2 preface, a server reads one. Only
//! client sessions are parsed (the mission is about outbound calls); server
//! sessions and non-HTTP protocols are remembered cheaply so that their later
//! chunks cost a lookup, and counted.

use std::collections::HashMap;

use super::{
    api_call::Transport, http1::Http1Conn, http2::Http2Conn, CallSink, Chunk, Direction,
    ExchangeEnd, Limits,
};

/// A TLS session: the process and the library's session object address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub pid: u32,
    pub session: u64,
}

/// What the table knows about a session besides its parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    pub key: SessionKey,
    /// Socket the library used (0 when it uses memory BIOs, like node).
    pub sock: u64,
    pub cgroup_id: u64,
    pub last_ns: u64,
    /// What carried the bytes: a TLS library, or cleartext on the socket.
    pub transport: Transport,
}

/// What a session turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Not enough bytes seen yet.
    Detecting,
    Http1Client,
    Http2Client,
    /// The process serves HTTP on this session (inbound calls are not API calls of this identity).
    Server,
    /// TLS carrying something other than HTTP, or an HTTP connection joined mid-stream.
    Other,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Detecting,
        Role::Http1Client,
        Role::Http2Client,
        Role::Server,
        Role::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Detecting => "detecting",
            Role::Http1Client => "http1_client",
            Role::Http2Client => "http2_client",
            Role::Server => "server",
            Role::Other => "other",
        }
    }
}

enum Parser {
    /// First write was shorter than needed to decide: its bytes, at most PREFACE.len().
    Detecting(Vec<u8>),
    Http1(Box<Http1Conn>),
    Http2(Box<Http2Conn>),
    Server,
    Other,
}

impl Parser {
    fn role(&self) -> Role {
        match self {
            Parser::Detecting(_) => Role::Detecting,
            Parser::Http1(_) => Role::Http1Client,
            Parser::Http2(_) => Role::Http2Client,
            Parser::Server => Role::Server,
            Parser::Other => Role::Other,
        }
    }

    fn buffered(&self) -> usize {
        match self {
            Parser::Detecting(b) => b.len(),
            Parser::Http1(p) => p.buffered(),
            Parser::Http2(p) => p.buffered(),
            Parser::Server | Parser::Other => 0,
        }
    }

    fn finish(&mut self, end: ExchangeEnd, sink: &mut dyn CallSink) {
        match self {
            Parser::Http1(p) => p.finish(end, sink),
            Parser::Http2(p) => p.finish(end, sink),
            _ => {}
        }
    }
}

struct Session {
    info: SessionInfo,
    parser: Parser,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a direction say.
#[derive(Debug, PartialEq, Eq)]
enum Opening {
    Http2Preface,
    Http1Request,
    /// Could still become either: more bytes needed.
    Undecided,
    NotHttp,
}

fn opening(data: &[u8]) -> Opening {
    if data.len() >= PREFACE.len() {
        if data.starts_with(PREFACE) {
            return Opening::Http2Preface;
        }
    } else if PREFACE.starts_with(data) {
        return Opening::Undecided;
    }
    // A request line: an upper-case method token followed by a space.
    let token = data
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-' || **b == b'_')
        .count();
    match data.get(token) {
        Some(b' ') if (3..=16).contains(&token) => Opening::Http1Request,
        None if token == data.len() && token <= 16 => Opening::Undecided,
        _ => Opening::NotHttp,
    }
}

/// Counters of the table, exported as metrics by the pipeline.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// Sessions dropped to stay within max_sessions or max_buffered_bytes.
    pub evicted: u64,
    /// Sessions closed for idleness.
    pub expired: u64,
    /// Chunks of server or non-HTTP sessions, skipped.
    pub skipped_chunks: u64,
}

/// Every followed TLS session, bounded in count and in buffered bytes.
pub struct SessionTable {
    sessions: HashMap<SessionKey, Session>,
    by_sock: HashMap<u64, SessionKey>,
    limits: Limits,
    max_sessions: usize,
    max_buffered: usize,
    buffered: usize,
    idle_ns: u64,
    stats: SessionStats,
}

impl SessionTable {
    pub fn new(
        limits: Limits,
        max_sessions: usize,
        max_buffered: usize,
        idle_ns: u64,
    ) -> SessionTable {
        SessionTable {
            sessions: HashMap::new(),
            by_sock: HashMap::new(),
            limits,
            max_sessions: max_sessions.max(1),
            max_buffered,
            buffered: 0,
            idle_ns,
            stats: SessionStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn buffered(&self) -> usize {
        self.buffered
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Sessions by role, for a gauge.
    pub fn roles(&self) -> [(Role, usize); 5] {
        let mut out = Role::ALL.map(|r| (r, 0));
        for s in self.sessions.values() {
            let role = s.parser.role();
            if let Some(slot) = out.iter_mut().find(|(r, _)| *r == role) {
                slot.1 += 1;
            }
        }
        out
    }

    pub fn info(&self, key: &SessionKey) -> Option<SessionInfo> {
        self.sessions.get(key).map(|s| s.info)
    }

    /// Feeds one chunk to its session's parser; returns the session's role after it.
    ///
    /// Sessions dropped to stay within bounds are pushed to `evicted`; the
    /// caller finishes them (their open exchanges leave as `aborted`).
    #[cfg(test)]
    pub fn feed(
        &mut self,
        key: SessionKey,
        sock: u64,
        cgroup_id: u64,
        chunk: &Chunk<'_>,
        sink: &mut dyn CallSink,
        evicted: &mut Vec<ClosedSession>,
    ) -> Role {
        self.feed_from(Transport::Tls, key, sock, cgroup_id, chunk, sink, evicted)
    }

    /// [`Self::feed`] for a chunk that came over `transport`.
    #[allow(clippy::too_many_arguments)]
    pub fn feed_from(
        &mut self,
        transport: Transport,
        key: SessionKey,
        sock: u64,
        cgroup_id: u64,
        chunk: &Chunk<'_>,
        sink: &mut dyn CallSink,
        evicted: &mut Vec<ClosedSession>,
    ) -> Role {
        if !self.sessions.contains_key(&key) && self.sessions.len() >= self.max_sessions {
            // Drop an eighth of the table at once, least recently active first,
            // so that a flood of new sessions costs one scan per many inserts.
            let n = (self.max_sessions / 8).max(1);
            self.evict_oldest(n, evicted);
        }
        let limits = self.limits;
        let session = self.sessions.entry(key).or_insert_with(|| Session {
            info: SessionInfo {
                key,
                sock,
                cgroup_id,
                last_ns: chunk.ktime_ns,
                transport,
            },
            parser: Parser::Detecting(Vec::new()),
        });
        if sock != 0 && session.info.sock != sock {
            if session.info.sock != 0 {
                self.by_sock.remove(&session.info.sock);
            }
            session.info.sock = sock;
        }
        if sock != 0 {
            self.by_sock.insert(sock, key);
        }
        session.info.cgroup_id = cgroup_id;
        session.info.last_ns = session.info.last_ns.max(chunk.ktime_ns);
        let before = session.parser.buffered();
        Self::route(&mut session.parser, limits, chunk, sink, &mut self.stats);
        let after = session.parser.buffered();
        let role = session.parser.role();
        self.buffered = self.buffered - before.min(self.buffered) + after;
        if self.buffered > self.max_buffered {
            self.shed(key, evicted);
        }
        role
    }

    fn route(
        parser: &mut Parser,
        limits: Limits,
        chunk: &Chunk<'_>,
        sink: &mut dyn CallSink,
        stats: &mut SessionStats,
    ) {
        loop {
            match parser {
                Parser::Http1(p) => {
                    if p.is_done() {
                        *parser = Parser::Other;
                        continue;
                    }
                    p.feed(chunk, sink);
                    // `Upgrade: h2c` switched: the streams that follow are HTTP/2, starting
                    // with the server's bytes after the 101 in this very read.
                    if let Some(sw) = p.take_h2c_switch() {
                        let mut h2 = Http2Conn::upgraded(limits);
                        if !sw.tail.is_empty() || sw.tail_gap > 0 {
                            h2.feed(
                                &Chunk {
                                    ktime_ns: sw.ktime_ns,
                                    direction: Direction::Read,
                                    len: (sw.tail.len() as u64 + sw.tail_gap)
                                        .min(u64::from(u32::MAX))
                                        as u32,
                                    data: &sw.tail,
                                },
                                sink,
                            );
                        }
                        *parser = Parser::Http2(Box::new(h2));
                    }
                    return;
                }
                Parser::Http2(p) => {
                    if p.is_done() {
                        *parser = Parser::Other;
                        continue;
                    }
                    return p.feed(chunk, sink);
                }
                Parser::Server => {
                    stats.skipped_chunks += 1;
                    return;
                }
                Parser::Other => {
                    // HTTP/1 keep-alive connections joined mid-stream (e.g. open
                    // before the daemon started) become parseable at their next
                    // request: only a request line at a write's start is trusted.
                    if chunk.direction == Direction::Write
                        && chunk.gap() == 0
                        && opening(chunk.data) == Opening::Http1Request
                    {
                        *parser = Parser::Http1(Box::new(Http1Conn::new(limits)));
                        continue;
                    }
                    stats.skipped_chunks += 1;
                    return;
                }
                Parser::Detecting(pending) => {
                    if chunk.direction == Direction::Read {
                        // A server reads the request; a client's first read
                        // before any write means we joined mid-stream.
                        *parser = match opening(chunk.data) {
                            Opening::Http1Request | Opening::Http2Preface => Parser::Server,
                            _ if !pending.is_empty() => return,
                            _ => Parser::Other,
                        };
                        stats.skipped_chunks += 1;
                        return;
                    }
                    let complete = chunk.gap() == 0;
                    let held = pending.len();
                    let mut probe = std::mem::take(pending);
                    probe.extend_from_slice(&chunk.data[..chunk.data.len().min(PREFACE.len())]);
                    match opening(&probe) {
                        Opening::Http2Preface => {
                            *parser = Parser::Http2(Box::new(Http2Conn::new(limits)))
                        }
                        Opening::Http1Request => {
                            *parser = Parser::Http1(Box::new(Http1Conn::new(limits)))
                        }
                        // A first write split before the method's space or
                        // inside the preface: all of it is in `probe`; wait.
                        Opening::Undecided if complete && probe.len() < PREFACE.len() => {
                            *pending = probe;
                            return;
                        }
                        _ => {
                            *parser = Parser::Other;
                            stats.skipped_chunks += 1;
                            return;
                        }
                    }
                    // Replay what was held back, then parse this chunk.
                    if held > 0 {
                        let first = Chunk {
                            ktime_ns: chunk.ktime_ns,
                            direction: Direction::Write,
                            len: held as u32,
                            data: &probe[..held],
                        };
                        match parser {
                            Parser::Http1(p) => p.feed(&first, sink),
                            Parser::Http2(p) => p.feed(&first, sink),
                            _ => {}
                        }
                    }
                    continue;
                }
            }
        }
    }

    /// Ends the session that used this socket (its TCP connection closed).
    pub fn close_sock(&mut self, sock: u64) -> Option<ClosedSession> {
        let key = self.by_sock.remove(&sock)?;
        self.take(key, ExchangeEnd::Aborted)
    }

    /// Ends every session of an exited process.
    pub fn close_pid(&mut self, pid: u32) -> Vec<ClosedSession> {
        let keys: Vec<SessionKey> = self
            .sessions
            .keys()
            .filter(|k| k.pid == pid)
            .copied()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.take(k, ExchangeEnd::Aborted))
            .collect()
    }

    /// Ends sessions quiet for longer than the idle time.
    pub fn expire(&mut self, now_ns: u64) -> Vec<ClosedSession> {
        let idle = self.idle_ns;
        let keys: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.info.last_ns) > idle)
            .map(|(k, _)| *k)
            .collect();
        self.stats.expired += keys.len() as u64;
        keys.into_iter()
            .filter_map(|k| self.take(k, ExchangeEnd::Timeout))
            .collect()
    }

    fn take(&mut self, key: SessionKey, end: ExchangeEnd) -> Option<ClosedSession> {
        let s = self.sessions.remove(&key)?;
        if s.info.sock != 0 && self.by_sock.get(&s.info.sock) == Some(&key) {
            self.by_sock.remove(&s.info.sock);
        }
        self.buffered = self.buffered.saturating_sub(s.parser.buffered());
        Some(ClosedSession {
            info: s.info,
            parser: s.parser,
            end,
        })
    }

    fn evict_oldest(&mut self, n: usize, evicted: &mut Vec<ClosedSession>) {
        let mut by_age: Vec<(u64, SessionKey)> = self
            .sessions
            .iter()
            .map(|(k, s)| (s.info.last_ns, *k))
            .collect();
        by_age.sort_unstable_by_key(|(t, _)| *t);
        for (_, key) in by_age.into_iter().take(n) {
            if let Some(closed) = self.take(key, ExchangeEnd::Aborted) {
                self.stats.evicted += 1;
                evicted.push(closed);
            }
        }
    }

    /// Over the byte budget: drop the sessions holding the most, never `keep`
    /// unless it alone is over.
    fn shed(&mut self, keep: SessionKey, evicted: &mut Vec<ClosedSession>) {
        let mut by_size: Vec<(usize, SessionKey)> = self
            .sessions
            .iter()
            .map(|(k, s)| (s.parser.buffered(), *k))
            .filter(|(b, _)| *b > 0)
            .collect();
        by_size.sort_unstable_by_key(|(b, k)| (usize::MAX - b, *k == keep));
        for (_, key) in by_size {
            if self.buffered <= self.max_buffered {
                break;
            }
            if let Some(closed) = self.take(key, ExchangeEnd::Aborted) {
                self.stats.evicted += 1;
                evicted.push(closed);
            }
        }
    }
}

/// A session taken out of the table; `finish` lets its open exchanges go.
pub struct ClosedSession {
    pub info: SessionInfo,
    parser: Parser,
    end: ExchangeEnd,
}

impl ClosedSession {
    pub fn finish(&mut self, sink: &mut dyn CallSink) {
        self.parser.finish(self.end, sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Anomaly, Exchange, RequestHead, RequestSummary};

    #[derive(Default)]
    struct Rec {
        exchanges: Vec<Exchange>,
        anomalies: Vec<Anomaly>,
    }

    impl CallSink for Rec {
        fn request(&mut self, head: &RequestHead<'_>) -> RequestSummary {
            RequestSummary {
                method: String::from_utf8_lossy(head.method).into_owned(),
                path: String::from_utf8_lossy(head.path).into_owned(),
                ..Default::default()
            }
        }
        fn exchange(&mut self, ex: Exchange) {
            self.exchanges.push(ex);
        }
        fn anomaly(&mut self, a: Anomaly) {
            self.anomalies.push(a);
        }
    }

    fn chunk(t: u64, direction: Direction, data: &[u8]) -> Chunk<'_> {
        Chunk {
            ktime_ns: t,
            direction,
            len: data.len() as u32,
            data,
        }
    }

    const KEY: SessionKey = SessionKey {
        pid: 7,
        session: 0xabc,
    };
    const REQ: &[u8] = b"GET /v1/models HTTP/1.1\r\nHost: api.example\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    fn table() -> SessionTable {
        SessionTable::new(Limits::default(), 4, 1 << 20, 1_000)
    }

    #[test]
    fn a_client_write_of_a_request_line_makes_an_http1_client() {
        let mut t = table();
        let mut rec = Rec::default();
        let mut ev = Vec::new();
        let r = t.feed(
            KEY,
            9,
            1,
            &chunk(1, Direction::Write, REQ),
            &mut rec,
            &mut ev,
        );
        assert_eq!(r, Role::Http1Client);
        t.feed(
            KEY,
            9,
            1,
            &chunk(2, Direction::Read, RESP),
            &mut rec,
            &mut ev,
        );
        assert_eq!(rec.exchanges.len(), 1);
        let ex = &rec.exchanges[0];
        assert_eq!(ex.status, Some(200));
        assert_eq!(ex.request.as_ref().unwrap().path, "/v1/models");
        assert!(ev.is_empty());
    }

    #[test]
    fn a_first_write_split_inside_the_method_is_held_then_parsed() {
        let mut t = table();
        let mut rec = Rec::default();
        let mut ev = Vec::new();
        let r = t.feed(
            KEY,
            9,
            1,
            &chunk(1, Direction::Write, &REQ[..2]),
            &mut rec,
            &mut ev,
        );
        assert_eq!(r, Role::Detecting);
        let r = t.feed(
            KEY,
            9,
            1,
            &chunk(2, Direction::Write, &REQ[2..]),
            &mut rec,
            &mut ev,
        );
        assert_eq!(r, Role::Http1Client);
        t.feed(
            KEY,
            9,
            1,
            &chunk(3, Direction::Read, RESP),
            &mut rec,
            &mut ev,
        );
        assert_eq!(rec.exchanges.len(), 1);
        assert_eq!(rec.exchanges[0].request.as_ref().unwrap().method, "GET");
        assert_eq!(rec.exchanges[0].request_bytes, REQ.len() as u64);
    }

    #[test]
    fn the_http2_preface_makes_an_http2_client() {
        let mut t = table();
        let mut rec = Rec::default();
        let mut ev = Vec::new();
        let r = t.feed(
            KEY,
            9,
            1,
            &chunk(1, Direction::Write, PREFACE),
            &mut rec,
            &mut ev,
        );
        assert_eq!(r, Role::Http2Client);
    }

    fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    #[test]
    fn an_upgrade_to_h2c_hands_the_connection_to_the_http2_parser() {
        // curl --http2 on http://, a Go x/net h2c server: the 101 arrives in the same read as
        // the server's SETTINGS and stream 1's answer (the upgraded request's).
        const UPGRADE: &[u8] =
            b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        let (settings, headers, data) = (4, 1, 0);
        let (end_stream, end_headers) = (1, 4);
        let mut switch =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec();
        switch.extend(h2_frame(settings, 0, 0, &[]));
        switch.extend(h2_frame(headers, end_headers, 1, &[0x88])); // :status 200
        switch.extend(h2_frame(data, end_stream, 1, b"ok"));
        let mut w2 = PREFACE.to_vec();
        w2.extend(h2_frame(settings, 0, 0, &[]));
        // :method GET, :scheme http, :path "/b", :authority "h" (literals without indexing)
        let mut block = vec![0x82, 0x86, 0x04, 2];
        block.extend(b"/b");
        block.extend([0x01, 1, b'h']);
        w2.extend(h2_frame(headers, end_headers | end_stream, 3, &block));
        let mut r2 = h2_frame(headers, end_headers, 3, &[0x88]);
        r2.extend(h2_frame(data, end_stream, 3, b"ok"));

        let mut t = table();
        let mut rec = Rec::default();
        let mut ev = Vec::new();
        for (i, (d, bytes)) in [
            (Direction::Write, UPGRADE),
            (Direction::Read, &switch[..]),
            (Direction::Write, &w2[..]),
            (Direction::Read, &r2[..]),
        ]
        .into_iter()
        .enumerate()
        {
            t.feed(KEY, 9, 1, &chunk(i as u64 + 1, d, bytes), &mut rec, &mut ev);
        }
        assert!(rec.anomalies.is_empty(), "{:?}", rec.anomalies);
        let got: Vec<_> = rec
            .exchanges
            .iter()
            .map(|e| {
                (
                    e.request.as_ref().unwrap().path.as_str(),
                    e.stream,
                    e.status,
                    e.end,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/a", 0, Some(101), ExchangeEnd::Complete),
                ("/b", 3, Some(200), ExchangeEnd::Complete)
            ]
        );
    }

    #[test]
    fn a_server_reading_a_request_is_skipped() {
        let mut t = table();
        let mut rec = Rec::default();
        let mut ev = Vec::new();
        let r = t.feed(
            KEY,
            9,
            1,
            &chunk(1, Direction::Read, REQ),
            &mut rec,
            &mut ev,
        );
        assert_eq!(r, Role::Server);
        t.feed(
            KEY,
            9,
            1,
            &chunk(2, Direction::Write, RESP),
            &mut rec,
            &mut ev,
        );
        assert!(rec.exchanges.is_empty());
        assert_eq!(t.stats().skipped_chunks, 2);
    }

    #[test]
    fn non_http_is_other_until_a_request_line_starts_a_write() {
        let mut t = table();
        let mut rec = Rec::default();
        let mut ev = Vec::new();
        let r = t.feed(
            KEY,
            9,
            1,
            &chunk(1, Direction::Write, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
            &mut rec,
            &mut ev,
        );
        assert_eq!(r, Role::Other);
        let r = t.feed(
            KEY,
            9,
            1,
            &chunk(2, Direction::Write, REQ),
            &mut rec,
            &mut ev,
        );
        assert_eq!(r, Role::Http1Client);
        t.feed(
            KEY,
            9,
            1,
            &chunk(3, Direction::Read, RESP),
            &mut rec,
            &mut ev,
        );
        assert_eq!(rec.exchanges.len(), 1);
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_least_recently_active() {
        let mut t = table();
        let mut rec = Rec::default();
        let mut ev = Vec::new();
        for i in 0..10u64 {
            let key = SessionKey { pid: 1, session: i };
            t.feed(
                key,
                100 + i,
                1,
                &chunk(i, Direction::Write, REQ),
                &mut rec,
                &mut ev,
            );
        }
        assert!(t.len() <= 4, "{}", t.len());
        assert_eq!(t.stats().evicted as usize, ev.len());
        assert!(
            ev.iter().all(|c| c.info.key.session < 9),
            "the newest stays"
        );
        for mut c in ev.drain(..) {
            c.finish(&mut rec);
        }
        assert!(rec.exchanges.iter().all(|e| e.end == ExchangeEnd::Aborted));
        assert!(
            !rec.exchanges.is_empty(),
            "in-flight requests leave as aborted"
        );
    }

    #[test]
    fn closing_the_socket_or_the_process_ends_its_sessions() {
        let mut t = table();
        let mut rec = Rec::default();
        let mut ev = Vec::new();
        t.feed(
            KEY,
            9,
            1,
            &chunk(1, Direction::Write, REQ),
            &mut rec,
            &mut ev,
        );
        let mut c = t.close_sock(9).expect("session on sock 9");
        c.finish(&mut rec);
        assert_eq!(rec.exchanges.len(), 1);
        assert_eq!(rec.exchanges[0].end, ExchangeEnd::Aborted);
        assert!(t.is_empty());
        t.feed(
            KEY,
            9,
            1,
            &chunk(1, Direction::Write, REQ),
            &mut rec,
            &mut ev,
        );
        assert_eq!(t.close_pid(7).len(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn idle_sessions_expire_with_their_open_exchanges_as_timeouts() {
        let mut t = table();
        let mut rec = Rec::default();
        let mut ev = Vec::new();
        t.feed(
            KEY,
            9,
            1,
            &chunk(10, Direction::Write, REQ),
            &mut rec,
            &mut ev,
        );
        assert!(t.expire(500).is_empty());
        let mut gone = t.expire(10 + 1_001);
        assert_eq!(gone.len(), 1);
        gone[0].finish(&mut rec);
        assert_eq!(rec.exchanges[0].end, ExchangeEnd::Timeout);
        assert_eq!(t.stats().expired, 1);
    }
}
