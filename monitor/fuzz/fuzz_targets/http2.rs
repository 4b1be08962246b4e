#![no_main]
//! Arbitrary HTTP/2 chunks (both directions, split anywhere, with capture gaps) after a valid preface → Http2Conn, checking its invariants.
//!
//! Input: records of `[flags, len_lo, len_hi, gap]` followed by up to `len`
//! captured bytes. flags bit 0: direction (1 = read); bit 1: the call has
//! `gap` uncaptured bytes after the captured ones (×64 when bit 2 is set).

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use nhiwatch::protocol::http2::Http2Conn;
use nhiwatch::protocol::{
    Anomaly, CallSink, Chunk, Direction, Exchange, ExchangeEnd, Limits, RequestHead, RequestSummary,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Default)]
struct Sink {
    requests: usize,
    with_request: usize,
    streams: HashSet<u32>,
}

impl CallSink for Sink {
    fn request(&mut self, head: &RequestHead<'_>) -> RequestSummary {
        self.requests += 1;
        // Pseudo-headers never reach the regular headers.
        assert!(head.headers.iter().all(|h| !h.name.starts_with(b":")));
        RequestSummary {
            method: String::from_utf8_lossy(head.method).into_owned(),
            path: String::from_utf8_lossy(head.path).into_owned(),
            ..Default::default()
        }
    }
    fn exchange(&mut self, ex: Exchange) {
        // Client streams only, and one exchange per stream.
        assert!(ex.stream % 2 == 1, "stream {}", ex.stream);
        assert!(self.streams.insert(ex.stream), "stream {} twice", ex.stream);
        if let Some(s) = ex.status {
            assert!((200..1000).contains(&s), "status {s}");
            assert!(ex.response_ns.is_some());
        }
        self.with_request += usize::from(ex.request.is_some());
    }
    fn anomaly(&mut self, _: Anomaly) {}
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_head_bytes: 1024,
        max_in_flight: 4,
    };
    // Frame header, largest kept payload and largest header block, per side.
    let bound = 2 * (9 + (limits.max_head_bytes + 261) + limits.max_head_bytes);
    let mut conn = Http2Conn::new(limits);
    let mut sink = Sink::default();
    let mut ns = 0u64;
    let mut feed = |conn: &mut Http2Conn, sink: &mut Sink, dir, bytes: &[u8], gap: u32| {
        ns += 1;
        conn.feed(
            &Chunk {
                ktime_ns: ns,
                direction: dir,
                len: bytes.len() as u32 + gap,
                data: bytes,
            },
            sink,
        );
        assert!(conn.buffered() <= bound, "buffered {}", conn.buffered());
    };
    feed(&mut conn, &mut sink, Direction::Write, PREFACE, 0);
    let mut rest = data;
    while let [flags, lo, hi, gap, tail @ ..] = rest {
        let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        let dir = if flags & 1 == 0 {
            Direction::Write
        } else {
            Direction::Read
        };
        let gap = match (flags & 2 != 0, flags & 4 != 0) {
            (false, _) => 0,
            (true, false) => u32::from(*gap),
            (true, true) => u32::from(*gap) * 64,
        };
        feed(&mut conn, &mut sink, dir, bytes, gap);
    }
    conn.finish(ExchangeEnd::Aborted, &mut sink);
    assert!(conn.is_done());
    assert_eq!(conn.buffered(), 0);
    // Every request handed to the sink leaves in exactly one exchange.
    assert_eq!(sink.requests, sink.with_request);
});
