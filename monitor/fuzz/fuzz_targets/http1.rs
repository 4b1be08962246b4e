#![no_main]
//! Arbitrary bytes → a sequence of (direction, captured data, uncaptured gap) calls fed to `Http1Conn`, checking its invariants.
//!
//! Input: one byte of limits, then records `[ctl, n, (g), data[n]]`:
//! ctl bit 0 = read (else write), bit 1 = a gap byte `g` follows, bit 2 =
//! gap in units of 64 bytes. Kernel times increase by one per call.

use nhiwatch::protocol::http1::Http1Conn;
use nhiwatch::protocol::{
    Anomaly, CallSink, Chunk, Direction, Exchange, ExchangeEnd, Limits, RequestHead, RequestSummary,
};

#[derive(Default)]
struct Rec {
    requests: usize,
    exchanges: Vec<Exchange>,
    anomalies: usize,
}

impl CallSink for Rec {
    fn request(&mut self, head: &RequestHead<'_>) -> RequestSummary {
        self.requests += 1;
        RequestSummary {
            method: String::from_utf8_lossy(head.method).into_owned(),
            path: String::from_utf8_lossy(head.path).into_owned(),
            ..RequestSummary::default()
        }
    }
    fn exchange(&mut self, ex: Exchange) {
        self.exchanges.push(ex);
    }
    fn anomaly(&mut self, _: Anomaly) {
        self.anomalies += 1;
    }
}

struct Call<'a> {
    direction: Direction,
    data: &'a [u8],
    len: u32,
}

fn decode(mut input: &[u8]) -> Option<(Limits, Vec<Call<'_>>)> {
    let (&l, rest) = input.split_first()?;
    input = rest;
    let limits = Limits {
        max_head_bytes: 16 + usize::from(l & 0x3f) * 16,
        max_in_flight: 1 + usize::from(l >> 6),
    };
    let mut calls = Vec::new();
    while let [ctl, n, rest @ ..] = input {
        input = rest;
        let mut gap = 0u32;
        if ctl & 2 != 0 {
            let Some((&g, rest)) = input.split_first() else {
                break;
            };
            input = rest;
            gap = u32::from(g) * if ctl & 4 != 0 { 64 } else { 1 };
        }
        let (data, rest) = input.split_at(usize::from(*n).min(input.len()));
        input = rest;
        calls.push(Call {
            direction: if ctl & 1 != 0 {
                Direction::Read
            } else {
                Direction::Write
            },
            data,
            len: data.len() as u32 + gap,
        });
    }
    Some((limits, calls))
}

/// Feeds the calls, each cut into `pieces` parts at the same kernel time
/// (the uncaptured tail stays with the last part), then finishes.
fn run(limits: Limits, calls: &[Call<'_>], pieces: usize) -> Rec {
    let mut conn = Http1Conn::new(limits);
    let mut rec = Rec::default();
    for (i, call) in calls.iter().enumerate() {
        let cut = if pieces > 1 { call.data.len() / 2 } else { 0 };
        let (a, b) = call.data.split_at(cut);
        let parts = [(a, a.len() as u32), (b, call.len - a.len() as u32)];
        for (data, len) in parts.into_iter().filter(|p| p.1 > 0) {
            let chunk = Chunk {
                ktime_ns: 1_000 + i as u64,
                direction: call.direction,
                len,
                data,
            };
            conn.feed(&chunk, &mut rec);
            assert!(conn.buffered() <= 2 * limits.max_head_bytes);
        }
    }
    conn.finish(ExchangeEnd::Aborted, &mut rec);
    let emitted = rec.exchanges.len();
    conn.finish(ExchangeEnd::Aborted, &mut rec);
    assert_eq!(rec.exchanges.len(), emitted, "an exchange left twice");
    assert_eq!(conn.buffered(), 0);
    rec
}

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let Some((limits, calls)) = decode(input) else {
        return;
    };
    let rec = run(limits, &calls, 1);

    // Every request handed to the sink leaves exactly once.
    let with_request = rec.exchanges.iter().filter(|e| e.request.is_some()).count();
    assert_eq!(with_request, rec.requests);

    let wire = |d: Direction| -> u64 {
        calls
            .iter()
            .filter(|c| c.direction == d)
            .map(|c| u64::from(c.len))
            .sum()
    };
    let req_bytes: u64 = rec.exchanges.iter().map(|e| e.request_bytes).sum();
    let resp_bytes: u64 = rec.exchanges.iter().map(|e| e.response_bytes).sum();
    assert!(
        req_bytes <= wire(Direction::Write),
        "request bytes counted twice"
    );
    assert!(
        resp_bytes <= wire(Direction::Read),
        "response bytes counted twice"
    );

    for e in &rec.exchanges {
        // A response never pairs with a request written after it began.
        if let Some(resp) = e.response_ns {
            assert!(resp >= e.request_ns);
        }
        assert_eq!(e.status.is_some(), e.response_ns.is_some());
        if e.end == ExchangeEnd::Complete {
            assert!(e.status.is_some());
        }
    }

    // Without anomalies, where calls are cut must not matter.
    if rec.anomalies == 0 {
        let split = run(limits, &calls, 2);
        assert_eq!(split.anomalies, 0, "cutting calls caused an anomaly");
        assert_eq!(
            split.exchanges, rec.exchanges,
            "cutting calls changed the result"
        );
    }
});
