//! Plaintext of one client HTTP/2 connection (both directions) → request heads to a [`CallSink`] and one [`Exchange`] per stream.
//
// HPACK is `loona-hpack` (the maintained fork of `hpack`): it returns errors
// instead of panicking on hostile blocks, bounds its integers, and exposes the
// two knobs RFC 7541 needs (the allowed maximum from SETTINGS and the current
// size). Its only asserts are reachable through `set_max_table_size` above
// the allowed maximum, which this module never does, so no `catch_unwind`.
// The dynamic tables hold header values (an indexed `authorization` among
// them) for the life of the connection, exactly as the peers do; this module
// never prints them and has no derived Debug.

use std::collections::BTreeMap;

use loona_hpack::Decoder;

use super::{
    Anomaly, CallSink, Chunk, Direction, Exchange, ExchangeEnd, Header, Limits, Protocol,
    RequestHead, RequestSummary,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
const MAX_FRAME_SIZE_LIMIT: u32 = (1 << 24) - 1;
/// SETTINGS_HEADER_TABLE_SIZE before any SETTINGS (RFC 9113 §6.5.2).
const DEFAULT_TABLE_SIZE: usize = 4096;
/// Largest dynamic table mirrored per direction, whatever a peer advertises:
/// a size update above it fails the block, which the partial-table recovery
/// below handles safely.
const MAX_TABLE_SIZE: usize = 64 * 1024;
/// SETTINGS entries read per frame; real peers send fewer than ten.
const MAX_SETTINGS_BYTES: usize = 6 * 64;
/// New streams may appear inside a lost stretch; a resync candidate naming a
/// client stream further ahead than this is not believed.
const MAX_STREAM_LEAP: u32 = 2 * 1024;
/// Write-side gaps remembered for attributing responses.
const MAX_LOST_WINDOWS: usize = 8;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// Client side of one HTTP/2 connection: two frame streams, two HPACK
/// decoders, and the streams in flight.
pub struct Http2Conn {
    limits: Limits,
    /// `[write, read]`.
    sides: [Side; 2],
    streams: BTreeMap<u32, Stream>,
    /// Highest client stream id seen opening (ids only grow, RFC 9113 §5.1.1).
    last_client_stream: u32,
    /// Client stream ids (exclusive bounds) that may have opened inside a
    /// write-side gap: a response on one of them is counted, not dropped.
    /// An open window has `u32::MAX` as its upper bound. Bounded.
    lost_windows: Vec<(u32, u32)>,
    goaway: bool,
    /// Not HTTP/2 (bad preface) or already finished.
    dead: bool,
}

impl std::fmt::Debug for Http2Conn {
    // Counts only: the decoders hold header values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Conn")
            .field("streams", &self.streams.len())
            .field("buffered", &self.buffered())
            .field(
                "hpack_partial",
                &[self.sides[0].hpack.partial, self.sides[1].hpack.partial],
            )
            .field("goaway", &self.goaway)
            .field("dead", &self.dead)
            .finish()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Client preface bytes matched so far (write side only).
    Preface(usize),
    Header,
    Payload,
    /// Sync lost: bytes are dropped until a chunk starts with a plausible frame.
    Lost,
}

#[derive(Clone, Copy)]
struct FrameHeader {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
    /// The reserved bit, which senders must leave clear.
    reserved: bool,
}

impl FrameHeader {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *b;
        let id = u32::from_be_bytes([s0, s1, s2, s3]);
        FrameHeader {
            len: u32::from_be_bytes([0, l0, l1, l2]),
            kind,
            flags,
            stream: id & 0x7fff_ffff,
            reserved: id & 0x8000_0000 != 0,
        }
    }
}

/// One direction's frame parser and HPACK decoder.
struct Side {
    phase: Phase,
    hdr: [u8; FRAME_HEADER_LEN],
    hdr_len: usize,
    /// Kernel time of the chunk holding the first byte of the current frame.
    hdr_ns: u64,
    frame: FrameHeader,
    remaining: u32,
    /// Payload bytes of the current frame worth keeping (header blocks,
    /// SETTINGS, GOAWAY's last stream id); the rest is skipped unbuffered.
    keep: usize,
    payload: Vec<u8>,
    /// A header block waiting for its CONTINUATION frames.
    block: Option<Block>,
    hpack: Hpack,
    /// Largest frame this side may send: what the other peer advertised.
    max_frame_size: u32,
}

struct Block {
    stream: u32,
    push: bool,
    end_stream: bool,
    ns: u64,
    buf: Vec<u8>,
    /// Payload bytes of the block's frames, counted for the stream.
    wire: u64,
    /// Why the block cannot be decoded, when it cannot.
    broken: Option<&'static str>,
}

struct Hpack {
    decoder: Decoder<'static>,
    /// Current table size (4096, or the last size update decoded).
    table_max: usize,
    /// What the decoding peer allows (its SETTINGS_HEADER_TABLE_SIZE), capped.
    bound: usize,
    /// The table was rebuilt after a loss: it holds only entries inserted since.
    partial: bool,
}

struct Stream {
    request: Option<RequestSummary>,
    request_ns: u64,
    request_bytes: u64,
    status: Option<u16>,
    response_ns: Option<u64>,
    response_bytes: u64,
    /// A non-informational response head arrived (decoded or not).
    head_seen: bool,
    /// The client sent END_STREAM: later write-side losses cannot touch it.
    req_ended: bool,
    desync: bool,
}

/// A decoded header list, owned for the duration of one block.
type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

enum Decoded {
    Headers(HeaderList),
    /// Not decodable (lost, too large, or HPACK failure): fields unknown.
    Unknown,
}

impl Hpack {
    fn new() -> Hpack {
        Hpack::fresh(DEFAULT_TABLE_SIZE, DEFAULT_TABLE_SIZE, false)
    }

    fn fresh(table_max: usize, bound: usize, partial: bool) -> Hpack {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(bound);
        let table_max = table_max.min(bound);
        decoder.set_max_table_size(table_max);
        Hpack {
            decoder,
            table_max,
            bound,
            partial,
        }
    }

    // Why a rebuilt table is safe to trust (RFC 7541 §4.4: eviction is
    // oldest-first). After a loss the real table is [entries inserted since
    // the loss, newest first] followed by whatever older entries survive.
    // A fresh table fed the same blocks holds a newest-first prefix of the
    // same post-loss entries: with the same maximum size it evicts a
    // post-loss entry no later than the real table does, because the real
    // table spends room on older entries too and evicts those first. So an
    // index that lands inside our table names the very entry the encoder
    // meant; an index that named anything else (an entry we never saw) lands
    // past our end and fails with "index out of bounds" — it can never
    // decode to a wrong value. A block that decodes is therefore exact; one
    // that fails is counted and its fields are left unknown. A failure part
    // way through a block means the real table took insertions ours did not,
    // so the table is rebuilt again from that point.
    fn lost(&mut self) {
        *self = Hpack::fresh(self.table_max, self.bound, true);
    }

    fn set_bound(&mut self, advertised: u32) {
        self.bound = usize::try_from(advertised)
            .unwrap_or(MAX_TABLE_SIZE)
            .min(MAX_TABLE_SIZE);
        // The current size changes only when the encoder says so with a
        // size update in its next block (RFC 7541 §4.2, §6.3).
        self.decoder.set_max_allowed_table_size(self.bound);
    }

    /// Ok(None) when the block decoded but its header list was too large to keep.
    fn decode(&mut self, block: &[u8], max_list: usize) -> Result<Option<HeaderList>, ()> {
        let (update, emptied) = leading_size_update(block);
        let mut list: HeaderList = Vec::new();
        let mut total = 0usize;
        let mut over = false;
        // Decoding goes on after the list is too large: the table must see
        // every insertion to stay in step.
        let r = self.decoder.decode_with_cb(block, |n, v| {
            total = total.saturating_add(n.len() + v.len() + 32);
            if total <= max_list {
                list.push((n.into_owned(), v.into_owned()));
            } else {
                over = true;
            }
        });
        match r {
            Ok(()) => {
                if let Some(size) = update {
                    self.table_max = size;
                }
                // A size update to 0 empties the real table too: known again.
                self.partial &= !emptied;
                Ok(if over { None } else { Some(list) })
            }
            Err(_) => Err(()),
        }
    }
}

/// The last dynamic table size update at the start of a block (the only
/// place RFC 7541 §4.2 allows them), so a rebuilt table gets the same size,
/// and whether one of them was 0 (which empties the table).
fn leading_size_update(block: &[u8]) -> (Option<usize>, bool) {
    let mut pos = 0;
    let mut last = None;
    let mut emptied = false;
    while let Some(&b) = block.get(pos) {
        if b & 0xe0 != 0x20 {
            break;
        }
        let Some((v, n)) = block.get(pos..).and_then(|rest| hpack_int(rest, 5)) else {
            break;
        };
        last = Some(v);
        emptied |= v == 0;
        pos += n;
    }
    (last, emptied)
}

/// RFC 7541 §5.1 integer with an `n`-bit prefix: (value, bytes used).
fn hpack_int(buf: &[u8], n: u32) -> Option<(usize, usize)> {
    let mask = (1usize << n) - 1;
    let first = usize::from(*buf.first()?) & mask;
    if first < mask {
        return Some((first, 1));
    }
    let mut value = mask;
    for (i, &b) in buf.iter().enumerate().skip(1).take(4) {
        value = value.checked_add(usize::from(b & 0x7f) << (7 * (i - 1)))?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

impl Side {
    fn new(write: bool) -> Side {
        Side {
            phase: if write {
                Phase::Preface(0)
            } else {
                Phase::Header
            },
            hdr: [0; FRAME_HEADER_LEN],
            hdr_len: 0,
            hdr_ns: 0,
            frame: FrameHeader {
                len: 0,
                kind: 0,
                flags: 0,
                stream: 0,
                reserved: false,
            },
            remaining: 0,
            keep: 0,
            payload: Vec::new(),
            block: None,
            hpack: Hpack::new(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        }
    }
}

/// Overwrites before clearing: these buffers carry header values.
fn wipe(buf: &mut Vec<u8>) {
    buf.fill(0);
    buf.clear();
}

const WRITE: usize = 0;
const READ: usize = 1;

fn side_of(d: Direction) -> usize {
    match d {
        Direction::Write => WRITE,
        Direction::Read => READ,
    }
}

fn anomaly(sink: &mut dyn CallSink, reason: &'static str) {
    sink.anomaly(Anomaly {
        protocol: Protocol::Http2,
        reason,
    });
}

/// Strips padding and the priority fields off a HEADERS/PUSH_PROMISE payload.
fn fragment(payload: &[u8], flags: u8, fixed: usize) -> Option<&[u8]> {
    let (pad, rest) = if flags & FLAG_PADDED != 0 {
        let (&p, rest) = payload.split_first()?;
        (usize::from(p), rest)
    } else {
        (0, payload)
    };
    let rest = rest.get(fixed..)?;
    rest.get(..rest.len().checked_sub(pad)?)
}

impl Http2Conn {
    pub fn new(limits: Limits) -> Http2Conn {
        Http2Conn {
            limits,
            sides: [Side::new(true), Side::new(false)],
            streams: BTreeMap::new(),
            last_client_stream: 0,
            lost_windows: Vec::new(),
            goaway: false,
            dead: false,
        }
    }

    /// A connection an HTTP/1.1 `Upgrade: h2c` switched: stream 1 is the upgrading request,
    /// already reported as the HTTP/1 call (its response on stream 1 is read and dropped);
    /// the client's next write starts with the preface.
    pub fn upgraded(limits: Limits) -> Http2Conn {
        let mut c = Http2Conn::new(limits);
        c.last_client_stream = 1;
        c
    }

    /// One TLS call's plaintext. Client side: Direction::Write = client→server (starts with the connection preface), Read = server→client.
    pub fn feed(&mut self, chunk: &Chunk<'_>, sink: &mut dyn CallSink) {
        if self.dead {
            return;
        }
        let d = side_of(chunk.direction);
        let data = chunk.data;
        if self.sides[d].phase == Phase::Lost {
            // Writers start each TLS write at a frame boundary, so only a
            // chunk start is a candidate.
            if !self.plausible_resync(d, data) {
                return;
            }
            self.sides[d].phase = Phase::Header;
        }
        let mut pos = 0;
        while pos < data.len() && !self.dead {
            let rest = data.get(pos..).unwrap_or_default();
            match self.sides[d].phase {
                Phase::Preface(m) => {
                    let want = PREFACE.get(m..).unwrap_or_default();
                    let n = want.len().min(rest.len());
                    if rest.get(..n) != want.get(..n) {
                        anomaly(sink, "framing");
                        self.dead = true;
                        return;
                    }
                    pos += n;
                    self.sides[d].phase = if m + n == PREFACE.len() {
                        Phase::Header
                    } else {
                        Phase::Preface(m + n)
                    };
                }
                Phase::Header => {
                    let s = &mut self.sides[d];
                    if s.hdr_len == 0 {
                        s.hdr_ns = chunk.ktime_ns;
                    }
                    let n = (FRAME_HEADER_LEN - s.hdr_len).min(rest.len());
                    if let (Some(dst), Some(src)) =
                        (s.hdr.get_mut(s.hdr_len..s.hdr_len + n), rest.get(..n))
                    {
                        dst.copy_from_slice(src);
                    }
                    s.hdr_len += n;
                    pos += n;
                    if s.hdr_len == FRAME_HEADER_LEN {
                        s.hdr_len = 0;
                        let fh = FrameHeader::parse(&s.hdr);
                        self.on_frame_header(d, fh, sink);
                    }
                }
                Phase::Payload => {
                    let s = &mut self.sides[d];
                    let n = rest.len().min(s.remaining as usize);
                    let room = s.keep.saturating_sub(s.payload.len()).min(n);
                    s.payload
                        .extend_from_slice(rest.get(..room).unwrap_or_default());
                    s.remaining -= n as u32;
                    pos += n;
                    if s.remaining == 0 {
                        self.on_payload_end(d, sink);
                    }
                }
                Phase::Lost => return,
            }
        }
        let gap = chunk.gap();
        if gap > 0 && !self.dead {
            self.skip_gap(d, gap, sink);
        }
    }

    /// Connection ended/evicted/timed out: open streams leave with `end`.
    pub fn finish(&mut self, end: ExchangeEnd, sink: &mut dyn CallSink) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.emit(id, end, sink);
        }
        for s in &mut self.sides {
            s.hdr_len = 0;
            s.remaining = 0;
            wipe(&mut s.payload);
            if let Some(mut b) = s.block.take() {
                wipe(&mut b.buf);
            }
        }
        self.dead = true;
    }

    pub fn buffered(&self) -> usize {
        self.sides
            .iter()
            .map(|s| s.hdr_len + s.payload.len() + s.block.as_ref().map_or(0, |b| b.buf.len()))
            .sum()
    }

    /// GOAWAY fully processed with no streams left, or unrecoverable
    pub fn is_done(&self) -> bool {
        self.dead || (self.goaway && self.streams.is_empty())
    }

    /// Uncaptured bytes at the end of a chunk.
    fn skip_gap(&mut self, d: usize, gap: u64, sink: &mut dyn CallSink) {
        match self.sides[d].phase {
            Phase::Preface(m) => {
                let rest = (PREFACE.len() - m) as u64;
                if gap < rest {
                    self.sides[d].phase = Phase::Preface(m + gap as usize);
                } else if gap == rest {
                    self.sides[d].phase = Phase::Header;
                } else {
                    self.lose(d, sink);
                }
            }
            Phase::Header => self.lose(d, sink),
            Phase::Payload => {
                let remaining = u64::from(self.sides[d].remaining);
                if gap < remaining {
                    // Inside the payload: kept frames notice the shortfall at their end.
                    self.sides[d].remaining -= gap as u32;
                } else {
                    self.sides[d].remaining = 0;
                    self.on_payload_end(d, sink);
                    if gap > remaining {
                        self.lose(d, sink);
                    }
                }
            }
            Phase::Lost => {}
        }
    }

    /// This direction can no longer find its frame boundaries.
    fn lose(&mut self, d: usize, sink: &mut dyn CallSink) {
        anomaly(sink, "framing");
        if let Some(b) = self.sides[d].block.as_mut() {
            b.broken = Some("framing");
        }
        if self.sides[d].block.is_some() {
            self.end_block(d, sink);
        }
        let s = &mut self.sides[d];
        s.phase = Phase::Lost;
        s.hdr_len = 0;
        s.remaining = 0;
        wipe(&mut s.payload);
        // A lost stretch may have held header blocks that changed the table.
        s.hpack.lost();
        for st in self.streams.values_mut() {
            if d == READ || !st.req_ended {
                st.desync = true;
            }
        }
        if d == WRITE && self.lost_windows.last().is_none_or(|w| w.1 != u32::MAX) {
            if self.lost_windows.len() == MAX_LOST_WINDOWS {
                self.lost_windows.remove(0);
            }
            self.lost_windows.push((self.last_client_stream, u32::MAX));
        }
    }

    /// Whether a chunk start looks like frame boundaries: every frame header
    /// reachable inside the captured bytes must be sane.
    fn plausible_resync(&self, d: usize, data: &[u8]) -> bool {
        let mut off = 0usize;
        let mut checked = 0;
        while let Some(h) = data.get(off..off + FRAME_HEADER_LEN) {
            let mut b = [0u8; FRAME_HEADER_LEN];
            b.copy_from_slice(h);
            let fh = FrameHeader::parse(&b);
            if !self.plausible(d, fh, checked == 0) {
                return false;
            }
            checked += 1;
            off += FRAME_HEADER_LEN + fh.len as usize;
            if checked == 64 {
                break;
            }
        }
        checked > 0
    }

    fn plausible(&self, d: usize, fh: FrameHeader, first: bool) -> bool {
        let s = &self.sides[d];
        if fh.reserved || fh.len > s.max_frame_size || (first && fh.kind == CONTINUATION) {
            return false;
        }
        let (flags, on_stream, len_ok) = match fh.kind {
            DATA => (FLAG_END_STREAM | FLAG_PADDED, Some(true), true),
            HEADERS => (
                FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
                Some(true),
                true,
            ),
            PRIORITY => (0, Some(true), fh.len == 5),
            RST_STREAM => (0, Some(true), fh.len == 4),
            SETTINGS => (
                FLAG_ACK,
                Some(false),
                fh.len.is_multiple_of(6) && (fh.flags & FLAG_ACK == 0 || fh.len == 0),
            ),
            PUSH_PROMISE => (FLAG_END_HEADERS | FLAG_PADDED, Some(true), d == READ),
            PING => (FLAG_ACK, Some(false), fh.len == 8),
            GOAWAY => (0, Some(false), fh.len >= 8),
            WINDOW_UPDATE => (0, None, fh.len == 4),
            CONTINUATION => (FLAG_END_HEADERS, Some(true), true),
            _ => return false,
        };
        if fh.flags & !flags != 0 || !len_ok {
            return false;
        }
        match on_stream {
            Some(true) if fh.stream == 0 => return false,
            Some(false) if fh.stream != 0 => return false,
            _ => {}
        }
        let client_stream = fh.stream % 2 == 1;
        if d == WRITE && matches!(fh.kind, DATA | HEADERS | CONTINUATION) && !client_stream {
            return false;
        }
        !client_stream || fh.stream <= self.last_client_stream.saturating_add(MAX_STREAM_LEAP)
    }

    fn on_frame_header(&mut self, d: usize, fh: FrameHeader, sink: &mut dyn CallSink) {
        if fh.len > self.sides[d].max_frame_size {
            // A peer would have torn the connection down (FRAME_SIZE_ERROR);
            // for us it means the boundaries we track are wrong.
            self.lose(d, sink);
            return;
        }
        let pending = self.sides[d].block.as_ref().map(|b| b.stream);
        if let Some(stream) = pending {
            if fh.kind != CONTINUATION || fh.stream != stream {
                // RFC 9113 §6.2: nothing may come between a block's frames.
                anomaly(sink, "framing");
                if let Some(b) = self.sides[d].block.as_mut() {
                    b.broken = Some("hpack");
                }
                self.end_block(d, sink);
            }
        }
        if fh.stream != 0 && !matches!(fh.kind, HEADERS | CONTINUATION | PUSH_PROMISE) {
            if let Some(st) = self.streams.get_mut(&fh.stream) {
                let n = u64::from(fh.len);
                if d == WRITE {
                    st.request_bytes += n;
                } else {
                    st.response_bytes += n;
                }
            }
        }
        let head = self.limits.max_head_bytes;
        let keep = match fh.kind {
            // Pad length, priority fields and up to 255 bytes of padding.
            HEADERS => head.saturating_add(1 + 5 + 255),
            PUSH_PROMISE => head.saturating_add(1 + 4 + 255),
            CONTINUATION => head,
            SETTINGS if fh.flags & FLAG_ACK == 0 => MAX_SETTINGS_BYTES,
            GOAWAY => 8,
            _ => 0,
        };
        let s = &mut self.sides[d];
        s.frame = fh;
        s.remaining = fh.len;
        s.keep = keep.min(fh.len as usize);
        wipe(&mut s.payload);
        if fh.len == 0 {
            self.on_payload_end(d, sink);
        } else {
            s.phase = Phase::Payload;
        }
    }

    fn on_payload_end(&mut self, d: usize, sink: &mut dyn CallSink) {
        self.sides[d].phase = Phase::Header;
        let fh = self.sides[d].frame;
        let complete = self.sides[d].payload.len() == self.sides[d].keep;
        match fh.kind {
            DATA if fh.flags & FLAG_END_STREAM != 0 => self.on_end_stream(d, fh.stream, sink),
            HEADERS | PUSH_PROMISE => {
                let push = fh.kind == PUSH_PROMISE;
                let max_head = self.limits.max_head_bytes;
                let s = &mut self.sides[d];
                let too_big = fh.len as usize > s.keep;
                let mut block = Block {
                    stream: fh.stream,
                    push,
                    end_stream: !push && fh.flags & FLAG_END_STREAM != 0,
                    ns: s.hdr_ns,
                    buf: Vec::new(),
                    wire: u64::from(fh.len),
                    broken: None,
                };
                let fixed = match (push, fh.flags & FLAG_PRIORITY != 0) {
                    (true, _) => 4,
                    (false, true) => 5,
                    (false, false) => 0,
                };
                let frag = fragment(&s.payload, fh.flags, fixed);
                match frag {
                    _ if too_big => block.broken = Some("head_too_large"),
                    _ if !complete => block.broken = Some("hpack"),
                    Some(f) if f.len() <= max_head => block.buf.extend_from_slice(f),
                    Some(_) => block.broken = Some("head_too_large"),
                    None => block.broken = Some("framing"),
                }
                if block.broken == Some("framing") {
                    // Padding longer than the payload: count it here, as the
                    // table-loss anomaly is implied.
                    anomaly(sink, "framing");
                    block.broken = Some("hpack");
                }
                wipe(&mut s.payload);
                s.block = Some(block);
                if push {
                    anomaly(sink, "push_promise");
                }
                if fh.flags & FLAG_END_HEADERS != 0 {
                    self.end_block(d, sink);
                }
            }
            CONTINUATION => {
                let max = self.limits.max_head_bytes;
                let s = &mut self.sides[d];
                let too_big = fh.len as usize > s.keep;
                match s.block.as_mut() {
                    Some(b) => {
                        b.wire += u64::from(fh.len);
                        if too_big && b.broken.is_none() {
                            b.broken = Some("head_too_large");
                            wipe(&mut b.buf);
                        } else if !complete {
                            b.broken = b.broken.or(Some("hpack"));
                        } else if b.broken.is_none() {
                            if b.buf.len() + s.payload.len() <= max {
                                b.buf.extend_from_slice(&s.payload);
                            } else {
                                b.broken = Some("head_too_large");
                                wipe(&mut b.buf);
                            }
                        }
                        wipe(&mut s.payload);
                        if fh.flags & FLAG_END_HEADERS != 0 {
                            self.end_block(d, sink);
                        }
                    }
                    None => {
                        // The start of this block is not ours: its insertions are unknown.
                        wipe(&mut s.payload);
                        anomaly(sink, "framing");
                        anomaly(sink, "hpack");
                        s.hpack.lost();
                    }
                }
            }
            SETTINGS if fh.flags & FLAG_ACK == 0 => self.on_settings(d, complete),
            RST_STREAM => {
                if self.streams.contains_key(&fh.stream) {
                    self.emit(fh.stream, ExchangeEnd::Aborted, sink);
                }
            }
            GOAWAY => {
                self.goaway = true;
                let last = self.sides[d]
                    .payload
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(|b| u32::from_be_bytes(b) & 0x7fff_ffff);
                wipe(&mut self.sides[d].payload);
                // From the server, streams above its last processed id never ran.
                if let (READ, Some(last)) = (d, last) {
                    let gone: Vec<u32> = self
                        .streams
                        .range(last.saturating_add(1)..)
                        .map(|(&k, _)| k)
                        .collect();
                    for id in gone {
                        self.emit(id, ExchangeEnd::Aborted, sink);
                    }
                }
            }
            _ => wipe(&mut self.sides[d].payload),
        }
    }

    /// SETTINGS from side `d` bind what the other side sends.
    fn on_settings(&mut self, d: usize, complete: bool) {
        let other = 1 - d;
        let payload = std::mem::take(&mut self.sides[d].payload);
        for e in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([e[0], e[1]]);
            let v = u32::from_be_bytes([e[2], e[3], e[4], e[5]]);
            match id {
                SETTINGS_HEADER_TABLE_SIZE => self.sides[other].hpack.set_bound(v),
                SETTINGS_MAX_FRAME_SIZE => {
                    self.sides[other].max_frame_size =
                        v.clamp(DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT)
                }
                _ => {}
            }
        }
        if !complete {
            // Values may have been lost: assume the widest ones, so neither
            // resync nor HPACK rejects what the peer may legally send.
            self.sides[other].max_frame_size = MAX_FRAME_SIZE_LIMIT;
            self.sides[other].hpack.set_bound(MAX_TABLE_SIZE as u32);
        }
        self.sides[d].payload = payload;
        self.sides[d].payload.clear();
    }

    fn end_block(&mut self, d: usize, sink: &mut dyn CallSink) {
        let Some(mut block) = self.sides[d].block.take() else {
            return;
        };
        let max_list = self.limits.max_head_bytes.saturating_mul(2);
        let decoded = match block.broken {
            Some(reason) => {
                if reason != "framing" {
                    anomaly(sink, reason);
                }
                if reason != "hpack" && reason != "framing" {
                    anomaly(sink, "hpack");
                }
                self.sides[d].hpack.lost();
                Decoded::Unknown
            }
            None => match self.sides[d].hpack.decode(&block.buf, max_list) {
                Ok(Some(list)) => Decoded::Headers(list),
                Ok(None) => {
                    anomaly(sink, "head_too_large");
                    Decoded::Unknown
                }
                Err(()) => {
                    anomaly(sink, "hpack");
                    self.sides[d].hpack.lost();
                    Decoded::Unknown
                }
            },
        };
        wipe(&mut block.buf);
        if block.push {
            return;
        }
        if d == WRITE {
            self.on_request_block(&block, decoded, sink);
        } else {
            self.on_response_block(&block, decoded, sink);
        }
    }

    fn on_request_block(&mut self, block: &Block, decoded: Decoded, sink: &mut dyn CallSink) {
        let id = block.stream;
        if id.is_multiple_of(2) {
            anomaly(sink, "framing");
            return;
        }
        if let Some(st) = self.streams.get_mut(&id) {
            // Request trailers.
            st.request_bytes += block.wire;
            st.req_ended |= block.end_stream;
            return;
        }
        if id <= self.last_client_stream {
            // Closed, reset or evicted already.
            return;
        }
        self.last_client_stream = id;
        if let Some(w) = self.lost_windows.last_mut().filter(|w| w.1 == u32::MAX) {
            w.1 = id;
        }
        let request = match decoded {
            Decoded::Headers(list) => summarise(&list, sink),
            Decoded::Unknown => None,
        };
        self.open(
            id,
            Stream {
                request,
                request_ns: block.ns,
                request_bytes: block.wire,
                status: None,
                response_ns: None,
                response_bytes: 0,
                head_seen: false,
                req_ended: block.end_stream,
                desync: false,
            },
            sink,
        );
    }

    fn on_response_block(&mut self, block: &Block, decoded: Decoded, sink: &mut dyn CallSink) {
        let id = block.stream;
        if id.is_multiple_of(2) {
            return; // pushed stream
        }
        if !self.streams.contains_key(&id) {
            if !self.lost_windows.iter().any(|&(lo, hi)| lo < id && id < hi) {
                if id > self.last_client_stream {
                    anomaly(sink, "unexpected_response");
                }
                return; // otherwise reset or evicted already
            }
            // Its request fell into a write-side gap: count the call, guess
            // nothing. Raising the bounds keeps one exchange per stream id.
            self.last_client_stream = self.last_client_stream.max(id);
            for w in self
                .lost_windows
                .iter_mut()
                .filter(|w| w.0 < id && id < w.1)
            {
                w.0 = id;
            }
            self.open(
                id,
                Stream {
                    request: None,
                    request_ns: block.ns,
                    request_bytes: 0,
                    status: None,
                    response_ns: None,
                    response_bytes: 0,
                    head_seen: false,
                    req_ended: true,
                    desync: true,
                },
                sink,
            );
        }
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.response_bytes += block.wire;
        match decoded {
            Decoded::Headers(list) => match status_of(&list) {
                Some(code) if (100..200).contains(&code) => {}
                Some(code) if !st.head_seen => {
                    st.status = Some(code);
                    st.response_ns = Some(block.ns);
                    st.head_seen = true;
                }
                Some(_) => {}
                None if !st.head_seen => {
                    // Neither a response head nor trailers after one.
                    anomaly(sink, "bad_status_line");
                    st.desync = true;
                    st.head_seen = true;
                }
                None => {} // trailers (grpc-status)
            },
            Decoded::Unknown => {
                if !st.head_seen {
                    st.response_ns = Some(block.ns);
                    st.head_seen = true;
                }
                st.desync = true;
            }
        }
        if block.end_stream {
            self.emit(id, ExchangeEnd::Complete, sink);
        }
    }

    fn on_end_stream(&mut self, d: usize, id: u32, sink: &mut dyn CallSink) {
        if d == READ {
            if self.streams.contains_key(&id) {
                self.emit(id, ExchangeEnd::Complete, sink);
            }
        } else if let Some(st) = self.streams.get_mut(&id) {
            st.req_ended = true;
        }
    }

    fn open(&mut self, id: u32, st: Stream, sink: &mut dyn CallSink) {
        while self.streams.len() >= self.limits.max_in_flight.max(1) {
            let Some(&oldest) = self.streams.keys().next() else {
                break;
            };
            anomaly(sink, "too_many_streams");
            self.emit(oldest, ExchangeEnd::Aborted, sink);
        }
        self.streams.insert(id, st);
    }

    fn emit(&mut self, id: u32, end: ExchangeEnd, sink: &mut dyn CallSink) {
        let Some(st) = self.streams.remove(&id) else {
            return;
        };
        sink.exchange(Exchange {
            protocol: Protocol::Http2,
            stream: id,
            request: st.request,
            request_ns: st.request_ns,
            request_bytes: st.request_bytes,
            status: st.status,
            response_ns: st.response_ns,
            response_bytes: st.response_bytes,
            end: if st.desync { ExchangeEnd::Desync } else { end },
        });
    }
}

fn status_of(list: &HeaderList) -> Option<u16> {
    let (_, v) = list.iter().find(|(n, _)| n == b":status")?;
    let s = std::str::from_utf8(v).ok()?;
    let code: u16 = s.parse().ok()?;
    (s.len() == 3 && code >= 100).then_some(code)
}

/// Hands the head to the sink; None when the pseudo-headers are unusable.
fn summarise(list: &HeaderList, sink: &mut dyn CallSink) -> Option<RequestSummary> {
    let pseudo = |name: &[u8]| {
        list.iter()
            .find(|(n, _)| n.as_slice() == name)
            .map(|(_, v)| v.as_slice())
    };
    let method = pseudo(b":method");
    let path = pseudo(b":path");
    let authority = pseudo(b":authority").or_else(|| {
        list.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"host"))
            .map(|(_, v)| v.as_slice())
    });
    let (method, path) = match (method, path) {
        (Some(m), Some(p)) => (m, p),
        // CONNECT names only an authority (RFC 9113 §8.5).
        (Some(m), None) if m == b"CONNECT" => (m, &b""[..]),
        _ => {
            anomaly(sink, "bad_request_line");
            return None;
        }
    };
    let headers: Vec<Header<'_>> = list
        .iter()
        .filter(|(n, _)| !n.starts_with(b":"))
        .map(|(n, v)| Header { name: n, value: v })
        .collect();
    Some(sink.request(&RequestHead {
        protocol: Protocol::Http2,
        method,
        authority,
        path,
        headers: &headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::encoder::encode_integer;
    use proptest::prelude::*;

    #[derive(Default)]
    struct TestSink {
        exchanges: Vec<Exchange>,
        anomalies: Vec<&'static str>,
        /// Every head the sink saw, as (name, value) strings, pseudo-headers first.
        heads: Vec<Vec<(String, String)>>,
    }

    fn s(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    impl CallSink for TestSink {
        fn request(&mut self, head: &RequestHead<'_>) -> RequestSummary {
            let mut all = vec![
                (":method".to_string(), s(head.method)),
                (":path".to_string(), s(head.path)),
            ];
            all.extend(head.headers.iter().map(|h| (s(h.name), s(h.value))));
            self.heads.push(all);
            RequestSummary {
                method: s(head.method),
                authority: head.authority.map(s),
                path: s(head.path),
                ..Default::default()
            }
        }
        fn exchange(&mut self, ex: Exchange) {
            self.exchanges.push(ex);
        }
        fn anomaly(&mut self, anomaly: Anomaly) {
            assert_eq!(anomaly.protocol, Protocol::Http2);
            self.anomalies.push(anomaly.reason);
        }
    }

    impl TestSink {
        fn header(&self, head: usize, name: &str) -> Option<&str> {
            self.heads
                .get(head)?
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
        fn count(&self, reason: &str) -> usize {
            self.anomalies.iter().filter(|r| **r == reason).count()
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    // HPACK representations, as nghttp2 and Go's hpack emit them (raw strings).
    fn int(flags: u8, prefix: u8, v: usize) -> Vec<u8> {
        let mut b = encode_integer(v, prefix);
        b[0] |= flags;
        b
    }
    fn string(v: &str) -> Vec<u8> {
        let mut b = int(0, 7, v.len());
        b.extend(v.as_bytes());
        b
    }
    fn indexed(i: usize) -> Vec<u8> {
        int(0x80, 7, i)
    }
    /// Literal with incremental indexing, name from the table.
    fn inc(name: usize, v: &str) -> Vec<u8> {
        let mut b = int(0x40, 6, name);
        b.extend(string(v));
        b
    }
    /// Literal with incremental indexing, new name.
    fn inc_new(n: &str, v: &str) -> Vec<u8> {
        let mut b = vec![0x40];
        b.extend(string(n));
        b.extend(string(v));
        b
    }
    fn size_update(n: usize) -> Vec<u8> {
        int(0x20, 5, n)
    }
    fn block(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    const W: Direction = Direction::Write;
    const R: Direction = Direction::Read;

    fn client_start() -> Vec<u8> {
        // curl 7.88.1 / nghttp2 1.52: preface, SETTINGS (max streams 100,
        // window 32 MiB, no push), connection WINDOW_UPDATE.
        let mut b = PREFACE.to_vec();
        b.extend(frame(
            SETTINGS,
            0,
            0,
            &hex("000300000064 000402000000 000200000000"),
        ));
        b.extend(frame(WINDOW_UPDATE, 0, 0, &hex("01ff0001")));
        b
    }

    fn server_start() -> Vec<u8> {
        let mut b = frame(
            SETTINGS,
            0,
            0,
            &hex("000300000080 000400010000 000500ffffff"),
        );
        b.extend(frame(WINDOW_UPDATE, 0, 0, &hex("7fff0000")));
        b.extend(frame(SETTINGS, FLAG_ACK, 0, &[]));
        b
    }

    fn run_on(conn: &mut Http2Conn, steps: &[(Direction, u64, Vec<u8>)], sink: &mut TestSink) {
        for (dir, ns, data) in steps {
            conn.feed(
                &Chunk {
                    ktime_ns: *ns,
                    direction: *dir,
                    len: data.len() as u32,
                    data,
                },
                sink,
            );
        }
    }

    fn run(steps: &[(Direction, u64, Vec<u8>)]) -> (Http2Conn, TestSink) {
        let mut conn = Http2Conn::new(Limits::default());
        let mut sink = TestSink::default();
        run_on(&mut conn, steps, &mut sink);
        (conn, sink)
    }

    /// One chunk whose tail of `gap` bytes was not captured.
    fn feed_cut(
        conn: &mut Http2Conn,
        dir: Direction,
        ns: u64,
        data: &[u8],
        gap: usize,
        sink: &mut TestSink,
    ) {
        conn.feed(
            &Chunk {
                ktime_ns: ns,
                direction: dir,
                len: (data.len() + gap) as u32,
                data,
            },
            sink,
        );
    }

    const AUTH: &str = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzdmMtYSJ9.c2lnbmF0dXJl";

    /// curl --http2-prior-knowledge with two requests on one connection to
    /// nginx 1.22. Request 1 and both server flights are byte-for-byte what
    /// the wire carried (Huffman strings, nginx's indexed server/date/...);
    /// request 2 is what nghttp2 sends next: a Huffman path and dynamic-table
    /// indices for :authority, user-agent, accept and x-api-key, with
    /// authorization re-sent never-indexed.
    fn curl_nginx() -> Vec<(Direction, u64, Vec<u8>)> {
        let mut w1 = client_start();
        w1.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            1,
            &hex(
                "8204936358d262d4961e7822ff2294f65234c1d107ab86418b089d5c0b8170dc0bc0783f7a8825b650c3abbcf2e153032a2f2a\
                 1f08b0ba51d85b142facb3c78886d46cb9387bc81d26cafae5f597dc9cb21b51b2fb929d09e7bb2beb9054551d384127e65a3f\
                 4087f2b0eb32dd4beb8deab044cb4db8ebcf80719242cb",
            ),
        ));
        let body = b"{\"resourceType\":\"Patient\",\"id\":\"8812\"}\n";
        let mut r1 = server_start();
        r1.extend(frame(
            HEADERS,
            FLAG_END_HEADERS,
            1,
            &hex(
                "887689aa6355e580ae212e1f6196d07abe94132a693f75040138a045704d5c13ea62d1bf5f901d75d0620d263d4c4b39acff\
                 7d107abf5c023339",
            ),
        ));
        r1.extend(frame(DATA, FLAG_END_STREAM, 1, body));
        let mut w2 = frame(SETTINGS, FLAG_ACK, 0, &[]);
        w2.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            3,
            &hex(
                "8204996358d262d4961e78226354682d9dc6931eaff2221eda930041 86 c1 c0 bf\
                 1f08b0ba51d85b142facb3c78886d46cb9387bc81d26cafae5f597dc9cb21b51b2fb929d09e7bb2beb9054551d384127e65a3f\
                 be",
            ),
        ));
        let mut r2 = frame(HEADERS, FLAG_END_HEADERS, 3, &hex("88 c1 c0 bf be"));
        r2.extend(frame(DATA, FLAG_END_STREAM, 3, body));
        vec![
            (W, 1_000, w1),
            (R, 2_000, r1),
            (W, 3_000, w2),
            (R, 4_000, r2),
        ]
    }

    #[test]
    fn curl_two_requests_to_nginx() {
        let (conn, sink) = run(&curl_nginx());
        assert!(sink.anomalies.is_empty(), "{:?}", sink.anomalies);
        assert_eq!(sink.exchanges.len(), 2);
        let e1 = &sink.exchanges[0];
        let r1 = e1.request.as_ref().unwrap();
        assert_eq!(
            (
                r1.method.as_str(),
                r1.authority.as_deref(),
                r1.path.as_str()
            ),
            ("GET", Some("127.0.0.1:18081"), "/Patient/8812?_format=json")
        );
        assert_eq!(
            (
                e1.stream,
                e1.request_ns,
                e1.request_bytes,
                e1.status,
                e1.response_ns,
                e1.response_bytes,
                e1.end
            ),
            (
                1,
                1_000,
                125,
                Some(200),
                Some(2_000),
                58 + 39,
                ExchangeEnd::Complete
            )
        );
        let e2 = &sink.exchanges[1];
        let r2 = e2.request.as_ref().unwrap();
        assert_eq!(
            (r2.authority.as_deref(), r2.path.as_str()),
            (
                Some("127.0.0.1:18081"),
                "/Patient/8812/Observation?_count=10"
            )
        );
        assert_eq!(
            (
                e2.stream,
                e2.request_ns,
                e2.request_bytes,
                e2.status,
                e2.response_ns,
                e2.response_bytes
            ),
            (3, 3_000, 84, Some(200), Some(4_000), 5 + 39)
        );
        for head in 0..2 {
            assert_eq!(sink.header(head, "authorization"), Some(AUTH));
            assert_eq!(sink.header(head, "x-api-key"), Some("k-1234567890abcdef"));
            assert_eq!(sink.header(head, "user-agent"), Some("curl/7.88.1"));
            assert_eq!(sink.header(head, "accept"), Some("*/*"));
            // Pseudo-headers stay out of the regular headers.
            assert!(sink.heads[head]
                .iter()
                .skip(2)
                .all(|(n, _)| !n.starts_with(':')));
        }
        assert!(!conn.is_done());
        assert_eq!(conn.buffered(), 0);
    }

    #[test]
    fn rfc7541_huffman_requests_share_one_table() {
        // RFC 7541 C.4.1-C.4.3: Huffman literals, then references to them.
        let mut w = client_start();
        for (id, b) in [
            (1, "828684418cf1e3c2e5f23a6ba0ab90f4ff"),
            (3, "828684be5886a8eb10649cbf"),
            (5, "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"),
        ] {
            w.extend(frame(
                HEADERS,
                FLAG_END_STREAM | FLAG_END_HEADERS,
                id,
                &hex(b),
            ));
        }
        let mut r = server_start();
        for id in [1, 3, 5] {
            r.extend(frame(
                HEADERS,
                FLAG_END_STREAM | FLAG_END_HEADERS,
                id,
                &hex("89"),
            )); // 204
        }
        let (_, sink) = run(&[(W, 1, w), (R, 2, r)]);
        assert!(sink.anomalies.is_empty(), "{:?}", sink.anomalies);
        let got: Vec<_> = sink
            .exchanges
            .iter()
            .map(|e| {
                let r = e.request.as_ref().unwrap();
                (
                    e.stream,
                    r.authority.clone().unwrap(),
                    r.path.clone(),
                    e.status,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "www.example.com".into(), "/".into(), Some(204)),
                (3, "www.example.com".into(), "/".into(), Some(204)),
                (5, "www.example.com".into(), "/index.html".into(), Some(204)),
            ]
        );
        assert_eq!(sink.header(1, "cache-control"), Some("no-cache"));
        assert_eq!(sink.header(2, "custom-key"), Some("custom-value"));
    }

    /// grpc-go style unary calls: Go's encoder indexes everything that fits,
    /// so the second call sends `authorization` as a dynamic-table index.
    fn grpc_call(id: u32, first: bool) -> (Vec<u8>, Vec<u8>) {
        let req_block = if first {
            block(&[
                indexed(3), // :method POST
                indexed(7), // :scheme https
                inc(4, "/helloworld.Greeter/SayHello"),
                inc(1, "greeter.internal:443"),
                inc(31, "application/grpc"),
                inc(58, "grpc-go/1.64.0"),
                inc_new("te", "trailers"),
                inc(23, "Bearer grpc-token-1"),
            ])
        } else {
            // Table: 62 authorization, 63 te, 64 user-agent, 65 content-type,
            // 66 :authority, 67 :path.
            block(&[
                indexed(3),
                indexed(7),
                indexed(67),
                indexed(66),
                indexed(65),
                indexed(64),
                indexed(63),
                indexed(62),
            ])
        };
        let msg = hex("0000000007 0a05776f726c64");
        let mut w = frame(HEADERS, FLAG_END_HEADERS, id, &req_block);
        w.extend(frame(DATA, FLAG_END_STREAM, id, &msg));
        let (head, trailers) = if first {
            (
                block(&[indexed(8), inc(31, "application/grpc")]),
                block(&[inc_new("grpc-status", "0"), inc_new("grpc-message", "")]),
            )
        } else {
            // Table: 62 grpc-message, 63 grpc-status, 64 content-type.
            (
                block(&[indexed(8), indexed(64)]),
                block(&[indexed(63), indexed(62)]),
            )
        };
        let mut r = frame(HEADERS, FLAG_END_HEADERS, id, &head);
        r.extend(frame(
            DATA,
            0,
            id,
            &hex("000000000d 0a0b48656c6c6f20776f726c64"),
        ));
        r.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            id,
            &trailers,
        ));
        (w, r)
    }

    #[test]
    fn grpc_unary_calls_end_at_trailers() {
        let (w1, r1) = grpc_call(1, true);
        let w1_payload = (w1.len() - 2 * FRAME_HEADER_LEN) as u64;
        let (w3, r3) = grpc_call(3, false);
        let mut start = client_start();
        start.extend(w1);
        let mut rs = server_start();
        // The response head and data arrive first; trailers in a later read.
        let cut = r1.len() - (FRAME_HEADER_LEN + 20);
        rs.extend(&r1[..cut]);
        let steps = vec![
            (W, 10, start),
            (R, 20, rs),
            (R, 25, r1[cut..].to_vec()),
            (W, 30, w3),
            (R, 40, r3),
        ];
        let (_, sink) = run(&steps);
        assert!(sink.anomalies.is_empty(), "{:?}", sink.anomalies);
        assert_eq!(sink.exchanges.len(), 2);
        for (i, e) in sink.exchanges.iter().enumerate() {
            let r = e.request.as_ref().unwrap();
            assert_eq!(r.method, "POST");
            assert_eq!(r.path, "/helloworld.Greeter/SayHello");
            assert_eq!(r.authority.as_deref(), Some("greeter.internal:443"));
            assert_eq!(e.status, Some(200));
            assert_eq!(e.end, ExchangeEnd::Complete);
            assert_eq!(sink.header(i, "content-type"), Some("application/grpc"));
            assert_eq!(sink.header(i, "authorization"), Some("Bearer grpc-token-1"));
            assert_eq!(sink.header(i, "te"), Some("trailers"));
        }
        // The first call left with its trailers, not before.
        assert_eq!(sink.exchanges[0].response_ns, Some(20));
        assert_eq!(sink.exchanges[0].request_bytes, w1_payload);
    }

    #[test]
    fn interleaved_streams_continuation_padding_priority_and_reset() {
        let mut w = client_start();
        let b1 = block(&[
            indexed(2),
            indexed(7),
            inc(1, "api.example.com"),
            inc(4, "/v1/a"),
        ]);
        // Stream 1: HEADERS with PRIORITY and padding, split by a CONTINUATION.
        let mut p = vec![3u8]; // pad length
        p.extend([0, 0, 0, 0, 15]); // priority: depends on 0, weight 16
        p.extend(&b1[..4]);
        p.extend([0, 0, 0]);
        w.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_PADDED | FLAG_PRIORITY,
            1,
            &p,
        ));
        w.extend(frame(CONTINUATION, FLAG_END_HEADERS, 1, &b1[4..]));
        let b3 = block(&[indexed(3), indexed(7), indexed(63), inc(4, "/v1/b")]);
        w.extend(frame(HEADERS, FLAG_END_HEADERS, 3, &b3));
        let b5 = block(&[indexed(2), indexed(7), indexed(64), indexed(5)]);
        w.extend(frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 5, &b5));
        // Stream 3's body, padded.
        let mut body = vec![2u8];
        body.extend(b"{}");
        body.extend([0, 0]);
        w.extend(frame(DATA, FLAG_PADDED | FLAG_END_STREAM, 3, &body));

        let mut r = server_start();
        r.extend(frame(HEADERS, FLAG_END_HEADERS, 3, &hex("89"))); // 204 head, stream ends later
        r.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &hex("88")));
        r.extend(frame(DATA, 0, 1, &[b'x'; 100]));
        r.extend(frame(PING, 0, 0, &[0; 8]));
        r.extend(frame(DATA, FLAG_END_STREAM, 3, &[]));
        r.extend(frame(0xfa, 0, 0, b"unknown extension frame"));
        r.extend(frame(DATA, FLAG_END_STREAM, 1, &[b'y'; 50]));
        let w2 = frame(RST_STREAM, 0, 5, &hex("00000008"));
        let (conn, sink) = run(&[(W, 1, w), (R, 2, r), (W, 3, w2)]);
        assert!(sink.anomalies.is_empty(), "{:?}", sink.anomalies);
        let got: Vec<_> = sink
            .exchanges
            .iter()
            .map(|e| {
                let r = e.request.as_ref().unwrap();
                (
                    e.stream,
                    r.method.clone(),
                    r.authority.clone().unwrap(),
                    r.path.clone(),
                    e.status,
                    e.end,
                    e.response_bytes,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    3,
                    "POST".into(),
                    "api.example.com".into(),
                    "/v1/b".into(),
                    Some(204),
                    ExchangeEnd::Complete,
                    1
                ),
                (
                    1,
                    "GET".into(),
                    "api.example.com".into(),
                    "/v1/a".into(),
                    Some(200),
                    ExchangeEnd::Complete,
                    151
                ),
                (
                    5,
                    "GET".into(),
                    "api.example.com".into(),
                    "/index.html".into(),
                    None,
                    ExchangeEnd::Aborted,
                    0
                ),
            ]
        );
        assert_eq!(sink.exchanges[0].request_bytes, b3.len() as u64 + 5);
        assert_eq!(
            sink.exchanges[1].request_bytes,
            (p.len() + b1.len() - 4) as u64
        );
        assert_eq!(sink.exchanges[2].request_bytes, b5.len() as u64 + 4);
        assert_eq!(conn.buffered(), 0);
    }

    #[test]
    fn informational_heads_are_skipped() {
        let mut w = client_start();
        w.extend(frame(
            HEADERS,
            FLAG_END_HEADERS,
            1,
            &block(&[
                indexed(3),
                indexed(7),
                inc(1, "h"),
                inc(4, "/up"),
                inc_new("expect", "100-continue"),
            ]),
        ));
        let mut r = server_start();
        r.extend(frame(
            HEADERS,
            FLAG_END_HEADERS,
            1,
            &[int(0x00, 4, 8), string("100")].concat(),
        ));
        let w2 = frame(DATA, FLAG_END_STREAM, 1, b"data");
        let r2 = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &hex("89"));
        let (_, sink) = run(&[(W, 1, w), (R, 2, r), (W, 3, w2), (R, 4, r2)]);
        assert!(sink.anomalies.is_empty(), "{:?}", sink.anomalies);
        assert_eq!(sink.exchanges.len(), 1);
        assert_eq!(sink.exchanges[0].status, Some(204));
        assert_eq!(sink.exchanges[0].response_ns, Some(4));
    }

    #[test]
    fn gap_inside_data_keeps_sync() {
        let steps = curl_nginx();
        let mut conn = Http2Conn::new(Limits::default());
        let mut sink = TestSink::default();
        run_on(&mut conn, &steps[..1], &mut sink);
        // The first response with only 10 body bytes captured: the rest of
        // the DATA payload is a gap that ends exactly at the frame's end.
        let r1 = &steps[1].2;
        feed_cut(&mut conn, R, 2_000, &r1[..r1.len() - 29], 29, &mut sink);
        run_on(&mut conn, &steps[2..], &mut sink);
        assert!(sink.anomalies.is_empty(), "{:?}", sink.anomalies);
        assert_eq!(sink.exchanges.len(), 2);
        assert!(sink
            .exchanges
            .iter()
            .all(|e| e.end == ExchangeEnd::Complete && e.status == Some(200)));
        assert_eq!(sink.exchanges[0].response_bytes, 58 + 39);
    }

    #[test]
    fn gap_over_a_frame_header_resyncs_at_a_later_write() {
        let mut w = client_start();
        w.extend(frame(
            HEADERS,
            FLAG_END_HEADERS,
            1,
            &block(&[
                indexed(3),
                indexed(7),
                inc(1, "up.example"),
                inc(4, "/upload"),
            ]),
        ));
        let (mut conn, mut sink) = run(&[(W, 1, w)]);
        // A 100-byte DATA frame, then 40 more uncaptured bytes: the next
        // frame header (maybe stream 1's END_STREAM) is lost.
        let d = frame(DATA, 0, 1, &[7u8; 100]);
        feed_cut(&mut conn, W, 2, &d[..20], 80 + 40, &mut sink);
        assert_eq!(sink.anomalies, vec!["framing"]);
        // Garbage at a chunk start is not taken for a frame.
        feed_cut(&mut conn, W, 3, &hex("ffffff01ff00000001"), 0, &mut sink);
        // A fresh request using static entries only decodes after resync.
        let b = block(&[
            indexed(2),
            indexed(7),
            inc(1, "up.example"),
            inc(4, "/status"),
        ]);
        run_on(
            &mut conn,
            &[(
                W,
                4,
                frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 5, &b),
            )],
            &mut sink,
        );
        let mut r = server_start();
        r.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            5,
            &hex("88"),
        ));
        r.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            1,
            &hex("8c"),
        )); // 400
            // Stream 3 was opened inside the gap: counted, nothing guessed.
        r.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            3,
            &hex("89"),
        ));
        run_on(&mut conn, &[(R, 5, r)], &mut sink);
        assert_eq!(sink.anomalies, vec!["framing"]);
        let got: Vec<_> = sink
            .exchanges
            .iter()
            .map(|e| {
                (
                    e.stream,
                    e.request.as_ref().map(|r| r.path.clone()),
                    e.status,
                    e.end,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (5, Some("/status".into()), Some(200), ExchangeEnd::Complete),
                (1, Some("/upload".into()), Some(400), ExchangeEnd::Desync),
                (3, None, Some(204), ExchangeEnd::Desync),
            ]
        );
        assert!(format!("{conn:?}").contains("hpack_partial: [true, false]"));
    }

    /// Requests 1..: x-tenant inserted before the loss; stream 3's block is
    /// cut (it inserts x-trace); stream 5 inserts x-api-key after the loss.
    fn lost_block_conversation(conn: &mut Http2Conn, sink: &mut TestSink) {
        let mut w = client_start();
        w.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            1,
            &block(&[
                indexed(2),
                indexed(7),
                inc(1, "fhir.example"),
                inc(4, "/Patient"),
                inc_new("x-tenant", "acme"),
            ]),
        ));
        run_on(conn, &[(W, 1, w)], sink);
        // Real table now: 62 x-tenant, 63 :path /Patient, 64 :authority.
        let b3 = block(&[
            indexed(2),
            indexed(7),
            indexed(64),
            inc(4, "/Observation"),
            inc_new("x-trace", "t-77"),
        ]);
        let f3 = frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 3, &b3);
        feed_cut(
            conn,
            W,
            2,
            &f3[..FRAME_HEADER_LEN + 5],
            f3.len() - FRAME_HEADER_LEN - 5,
            sink,
        );
        // Real table: 62 x-trace, 63 :path /Observation, 64 x-tenant,
        // 65 :path /Patient, 66 :authority. Ours: empty, partial.
        let b5 = block(&[
            indexed(2),
            indexed(7),
            inc(1, "fhir.example"),
            inc(4, "/Encounter"),
            inc_new("x-api-key", "key-after-loss"),
        ]);
        run_on(
            conn,
            &[(
                W,
                3,
                frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 5, &b5),
            )],
            sink,
        );
        // Real: 62 x-api-key, 63 :path /Encounter, 64 :authority, 65 x-trace, ...
        // Ours: 62 x-api-key, 63 :path /Encounter, 64 :authority.
    }

    #[test]
    fn after_a_lost_block_entries_inserted_since_decode_exactly() {
        let mut conn = Http2Conn::new(Limits::default());
        let mut sink = TestSink::default();
        lost_block_conversation(&mut conn, &mut sink);
        assert_eq!(sink.anomalies, vec!["hpack"]);
        let b7 = block(&[
            indexed(2),
            indexed(7),
            indexed(64),
            indexed(63),
            indexed(62),
        ]);
        run_on(
            &mut conn,
            &[(
                W,
                4,
                frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 7, &b7),
            )],
            &mut sink,
        );
        assert_eq!(sink.anomalies, vec!["hpack"]);
        let last = sink.heads.len() - 1;
        assert_eq!(sink.header(last, ":path"), Some("/Encounter"));
        assert_eq!(sink.header(last, "x-api-key"), Some("key-after-loss"));
        let mut r = server_start();
        for id in [1, 3, 5, 7] {
            r.extend(frame(
                HEADERS,
                FLAG_END_STREAM | FLAG_END_HEADERS,
                id,
                &hex("88"),
            ));
        }
        run_on(&mut conn, &[(R, 5, r)], &mut sink);
        let got: Vec<_> = sink
            .exchanges
            .iter()
            .map(|e| {
                (
                    e.stream,
                    e.request
                        .as_ref()
                        .map(|r| (r.authority.clone().unwrap(), r.path.clone())),
                    e.status,
                )
            })
            .collect();
        let fhir = |p: &str| Some(("fhir.example".to_string(), p.to_string()));
        assert_eq!(
            got,
            vec![
                (1, fhir("/Patient"), Some(200)),
                // The cut block: counted, not guessed.
                (3, None, Some(200)),
                (5, fhir("/Encounter"), Some(200)),
                (7, fhir("/Encounter"), Some(200)),
            ]
        );
    }

    #[test]
    fn after_a_lost_block_an_older_entry_yields_no_request() {
        let mut conn = Http2Conn::new(Limits::default());
        let mut sink = TestSink::default();
        lost_block_conversation(&mut conn, &mut sink);
        // x-tenant sits at 66 in the real table; ours ends at 64. A decoder
        // that guessed would return a wrong header here.
        let b7 = block(&[
            indexed(2),
            indexed(7),
            indexed(64),
            inc(4, "/Claim"),
            indexed(66),
        ]);
        run_on(
            &mut conn,
            &[(
                W,
                4,
                frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 7, &b7),
            )],
            &mut sink,
        );
        assert_eq!(sink.anomalies, vec!["hpack", "hpack"]);
        // Stream 7 inserted :path /Claim in the real table before failing,
        // so the table was rebuilt again: /Encounter (now 65) is unknown...
        let b9 = block(&[indexed(2), indexed(7), inc(1, "fhir.example"), indexed(65)]);
        run_on(
            &mut conn,
            &[(
                W,
                5,
                frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 9, &b9),
            )],
            &mut sink,
        );
        // (which rebuilt it once more) while literals always decode.
        let b11 = block(&[
            indexed(2),
            indexed(7),
            inc(1, "fhir.example"),
            inc(4, "/Coverage"),
        ]);
        run_on(
            &mut conn,
            &[(
                W,
                6,
                frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 11, &b11),
            )],
            &mut sink,
        );
        conn.finish(ExchangeEnd::Aborted, &mut sink);
        let got: Vec<_> = sink
            .exchanges
            .iter()
            .map(|e| (e.stream, e.request.as_ref().map(|r| r.path.clone()), e.end))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Some("/Patient".into()), ExchangeEnd::Aborted),
                (3, None, ExchangeEnd::Aborted),
                (5, Some("/Encounter".into()), ExchangeEnd::Aborted),
                (7, None, ExchangeEnd::Aborted),
                (9, None, ExchangeEnd::Aborted),
                (11, Some("/Coverage".into()), ExchangeEnd::Aborted),
            ]
        );
        assert_eq!(sink.count("hpack"), 3);
        assert!(conn.is_done());
    }

    #[test]
    fn size_update_to_zero_makes_the_table_known_again() {
        let mut conn = Http2Conn::new(Limits::default());
        let mut sink = TestSink::default();
        lost_block_conversation(&mut conn, &mut sink);
        assert!(format!("{conn:?}").contains("hpack_partial: [true, false]"));
        let b = block(&[
            size_update(0),
            size_update(4096),
            indexed(2),
            indexed(7),
            inc(1, "fhir.example"),
            indexed(4),
        ]);
        run_on(
            &mut conn,
            &[(
                W,
                4,
                frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 7, &b),
            )],
            &mut sink,
        );
        assert!(format!("{conn:?}").contains("hpack_partial: [false, false]"));
    }

    #[test]
    fn response_side_desync_never_pairs_wrong_streams() {
        let mut w = client_start();
        for (id, p) in [(1, "/a"), (3, "/b")] {
            w.extend(frame(
                HEADERS,
                FLAG_END_STREAM | FLAG_END_HEADERS,
                id,
                &block(&[indexed(2), indexed(7), inc(1, "h"), inc(4, p)]),
            ));
        }
        let (mut conn, mut sink) = run(&[(W, 1, w)]);
        // Stream 1's response head is cut mid-block; then the frame after it lost.
        let mut r = server_start();
        let head1 = block(&[indexed(8), inc_new("x-served-by", "cache-1")]);
        r.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &head1));
        let cut = r.len() - 4;
        feed_cut(&mut conn, R, 2, &r[..cut], 4 + 30, &mut sink);
        // Stream 3's complete response after resync: static-only head decodes.
        let mut r2 = frame(HEADERS, FLAG_END_HEADERS, 3, &hex("89"));
        r2.extend(frame(DATA, FLAG_END_STREAM, 3, b"ok"));
        run_on(&mut conn, &[(R, 3, r2)], &mut sink);
        // Stream 1 ends with data only: its status stays unknown.
        run_on(
            &mut conn,
            &[(R, 4, frame(DATA, FLAG_END_STREAM, 1, b"late"))],
            &mut sink,
        );
        let got: Vec<_> = sink
            .exchanges
            .iter()
            .map(|e| (e.stream, e.status, e.end))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, Some(204), ExchangeEnd::Desync),
                (1, None, ExchangeEnd::Desync)
            ]
        );
        assert_eq!(sink.count("framing"), 1);
        assert!(sink.exchanges.iter().all(|e| e.request.is_some()));
    }

    #[test]
    fn settings_header_table_size_bounds_size_updates() {
        let req = |id: u32, parts: &[Vec<u8>]| {
            frame(
                HEADERS,
                FLAG_END_STREAM | FLAG_END_HEADERS,
                id,
                &block(parts),
            )
        };
        let big = "v".repeat(5000);
        // Without SETTINGS the server's decoder allows 4096: a larger update is a failure.
        let mut w = client_start();
        w.extend(req(
            1,
            &[
                size_update(8192),
                indexed(2),
                indexed(7),
                indexed(1),
                indexed(4),
            ],
        ));
        let (_, sink) = run(&[(W, 1, w)]);
        assert_eq!(sink.anomalies, vec!["hpack"]);
        // After the server advertised 65536 (after the first request), the
        // client's update to 8192 is legal and a 5000-byte entry stays indexed.
        let mut w = client_start();
        w.extend(req(
            1,
            &[indexed(2), indexed(7), inc(1, "a.example"), indexed(4)],
        ));
        let r = frame(SETTINGS, 0, 0, &hex("0001 00010000"));
        let w2 = [
            req(
                3,
                &[
                    size_update(8192),
                    indexed(2),
                    indexed(7),
                    indexed(62),
                    indexed(4),
                    inc_new("x-big", &big),
                ],
            ),
            req(
                5,
                &[indexed(2), indexed(7), indexed(63), indexed(4), indexed(62)],
            ),
        ]
        .concat();
        let (_, sink) = run(&[(W, 1, w), (R, 2, r), (W, 3, w2)]);
        assert!(sink.anomalies.is_empty(), "{:?}", sink.anomalies);
        assert_eq!(sink.header(2, "x-big"), Some(big.as_str()));
        assert_eq!(sink.heads.len(), 3);
    }

    #[test]
    fn goaway_aborts_unprocessed_streams_and_finishes() {
        let mut w = client_start();
        for id in [1, 3] {
            w.extend(frame(
                HEADERS,
                FLAG_END_STREAM | FLAG_END_HEADERS,
                id,
                &block(&[indexed(2), indexed(7), inc(1, "h"), indexed(4)]),
            ));
        }
        let mut r = server_start();
        r.extend(frame(GOAWAY, 0, 0, &hex("00000001 00000000 6465627567")));
        r.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            1,
            &hex("88"),
        ));
        let (conn, sink) = run(&[(W, 1, w), (R, 2, r)]);
        let got: Vec<_> = sink.exchanges.iter().map(|e| (e.stream, e.end)).collect();
        assert_eq!(
            got,
            vec![(3, ExchangeEnd::Aborted), (1, ExchangeEnd::Complete)]
        );
        assert!(conn.is_done());
    }

    #[test]
    fn too_many_streams_abort_the_oldest() {
        let mut w = client_start();
        for id in [1, 3, 5] {
            w.extend(frame(
                HEADERS,
                FLAG_END_STREAM | FLAG_END_HEADERS,
                id,
                &block(&[indexed(2), indexed(7), inc(1, "h"), indexed(4)]),
            ));
        }
        let mut conn = Http2Conn::new(Limits {
            max_head_bytes: 1024,
            max_in_flight: 2,
        });
        let mut sink = TestSink::default();
        run_on(&mut conn, &[(W, 1, w)], &mut sink);
        assert_eq!(sink.anomalies, vec!["too_many_streams"]);
        assert_eq!(
            sink.exchanges
                .iter()
                .map(|e| (e.stream, e.end))
                .collect::<Vec<_>>(),
            vec![(1, ExchangeEnd::Aborted)]
        );
        conn.finish(ExchangeEnd::Timeout, &mut sink);
        assert_eq!(
            sink.exchanges
                .iter()
                .map(|e| (e.stream, e.end))
                .collect::<Vec<_>>(),
            vec![
                (1, ExchangeEnd::Aborted),
                (3, ExchangeEnd::Timeout),
                (5, ExchangeEnd::Timeout)
            ]
        );
    }

    #[test]
    fn endless_continuation_is_bounded() {
        let limits = Limits {
            max_head_bytes: 4096,
            max_in_flight: 8,
        };
        let mut conn = Http2Conn::new(limits);
        let mut sink = TestSink::default();
        let mut w = client_start();
        w.extend(frame(
            HEADERS,
            0,
            1,
            &block(&[indexed(2), indexed(7), inc(1, "h"), indexed(4)]),
        ));
        run_on(&mut conn, &[(W, 1, w)], &mut sink);
        let cont = frame(CONTINUATION, 0, 1, &[0x40; 1000]);
        for i in 0..2000 {
            run_on(&mut conn, &[(W, 2 + i, cont.clone())], &mut sink);
            assert!(
                conn.buffered() <= 2 * limits.max_head_bytes + 300,
                "{}",
                conn.buffered()
            );
        }
        run_on(
            &mut conn,
            &[(
                W,
                9_999,
                frame(CONTINUATION, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &[]),
            )],
            &mut sink,
        );
        assert_eq!(sink.anomalies, vec!["head_too_large", "hpack"]);
        conn.finish(ExchangeEnd::Aborted, &mut sink);
        assert_eq!(sink.exchanges.len(), 1);
        assert_eq!(sink.exchanges[0].request, None);
        assert_eq!(sink.exchanges[0].request_bytes, 6 + 2_000_000);
        assert_eq!(conn.buffered(), 0);
    }

    #[test]
    fn header_list_amplification_is_capped() {
        // 1-byte indices to one 3000-byte entry: a 2 KB block would expand to 6 MB.
        let limits = Limits {
            max_head_bytes: 4096,
            max_in_flight: 8,
        };
        let mut w = client_start();
        w.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            1,
            &block(&[
                indexed(2),
                indexed(7),
                inc(1, "h"),
                indexed(4),
                inc_new("x", &"a".repeat(3000)),
            ]),
        ));
        let amp: Vec<u8> = [
            block(&[indexed(2), indexed(7), indexed(63), indexed(4)]),
            vec![0xbe; 2000],
        ]
        .concat();
        w.extend(frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 3, &amp));
        w.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            5,
            &block(&[
                indexed(2),
                indexed(7),
                indexed(63),
                inc(4, "/still-in-sync"),
            ]),
        ));
        let mut conn = Http2Conn::new(limits);
        let mut sink = TestSink::default();
        run_on(&mut conn, &[(W, 1, w)], &mut sink);
        conn.finish(ExchangeEnd::Aborted, &mut sink);
        assert_eq!(sink.anomalies, vec!["head_too_large"]);
        let paths: Vec<_> = sink
            .exchanges
            .iter()
            .map(|e| e.request.as_ref().map(|r| r.path.clone()))
            .collect();
        assert_eq!(
            paths,
            vec![Some("/".into()), None, Some("/still-in-sync".into())]
        );
    }

    #[test]
    fn finish_drops_a_partial_frame_header() {
        // Found by the fuzzer: 8 bytes of a frame header outlived finish().
        let mut w = client_start();
        w.extend(&frame(HEADERS, FLAG_END_HEADERS, 1, &[0x82])[..8]);
        let (mut conn, mut sink) = run(&[(W, 1, w)]);
        assert_eq!(conn.buffered(), 8);
        conn.finish(ExchangeEnd::Aborted, &mut sink);
        assert_eq!(conn.buffered(), 0);
        assert!(conn.is_done());
    }

    #[test]
    fn bad_preface_is_unrecoverable() {
        let (conn, sink) = run(&[(W, 1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())]);
        assert!(conn.is_done());
        assert_eq!(sink.anomalies, vec!["framing"]);
    }

    #[test]
    fn missing_pseudo_headers_are_counted() {
        let mut w = client_start();
        w.extend(frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            1,
            &block(&[indexed(7), inc(1, "h")]),
        ));
        let (mut conn, mut sink) = run(&[(W, 1, w)]);
        conn.finish(ExchangeEnd::Aborted, &mut sink);
        assert_eq!(sink.anomalies, vec!["bad_request_line"]);
        assert_eq!(sink.exchanges[0].request, None);
    }

    fn summary(sink: &TestSink) -> Vec<Exchange> {
        sink.exchanges.clone()
    }

    /// curl/nginx, gRPC and interleaved streams on one connection.
    fn conversation() -> Vec<(Direction, u64, Vec<u8>)> {
        let mut steps = curl_nginx();
        let (w5, r5) = grpc_call(5, true);
        let (w7, r7) = grpc_call(7, false);
        steps.push((W, 5_000, [w5, w7].concat()));
        steps.push((R, 6_000, [r7, r5].concat()));
        steps.push((
            W,
            7_000,
            frame(
                HEADERS,
                FLAG_END_HEADERS,
                9,
                &block(&[indexed(3), indexed(7), indexed(66), inc(4, "/upload")]),
            ),
        ));
        steps.push((W, 7_001, frame(DATA, FLAG_END_STREAM, 9, &[1; 300])));
        steps.push((R, 8_000, frame(RST_STREAM, 0, 9, &hex("00000002"))));
        steps
    }

    #[test]
    fn conversation_unsplit() {
        let (_, sink) = run(&conversation());
        assert!(sink.anomalies.is_empty(), "{:?}", sink.anomalies);
        let got: Vec<_> = sink.exchanges.iter().map(|e| (e.stream, e.end)).collect();
        assert_eq!(
            got,
            vec![
                (1, ExchangeEnd::Complete),
                (3, ExchangeEnd::Complete),
                (7, ExchangeEnd::Complete),
                (5, ExchangeEnd::Complete),
                (9, ExchangeEnd::Aborted),
            ]
        );
    }

    proptest! {
        #[test]
        fn arbitrary_splits_give_the_same_exchanges(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40)) {
            let steps = conversation();
            let (_, whole) = run(&steps);
            let total: usize = steps.iter().map(|s| s.2.len()).sum();
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(total)).collect();
            at.sort_unstable();
            let mut split = Vec::new();
            let mut base = 0;
            for (dir, ns, data) in &steps {
                let mut from = 0;
                for &c in at.iter().filter(|&&c| c > base && c < base + data.len()) {
                    split.push((*dir, *ns, data[from..c - base].to_vec()));
                    from = c - base;
                }
                split.push((*dir, *ns, data[from..].to_vec()));
                base += data.len();
            }
            let (conn, parts) = run(&split);
            prop_assert_eq!(summary(&parts), summary(&whole));
            prop_assert_eq!(&parts.heads, &whole.heads);
            prop_assert!(parts.anomalies.is_empty());
            prop_assert_eq!(conn.buffered(), 0);
        }

        #[test]
        fn arbitrary_gaps_never_misattribute(cut in any::<prop::sample::Index>(), gap in 1usize..400) {
            // A capture cut anywhere: every exchange that still carries a
            // request and a status carries the right ones.
            let steps = conversation();
            let (_, whole) = run(&steps);
            let total: usize = steps.iter().map(|s| s.2.len()).sum();
            let c = cut.index(total);
            let mut conn = Http2Conn::new(Limits::default());
            let mut sink = TestSink::default();
            let mut base = 0;
            for (dir, ns, data) in &steps {
                if c >= base && c < base + data.len() {
                    let keep = c - base;
                    let g = gap.min(data.len() - keep);
                    feed_cut(&mut conn, *dir, *ns, &data[..keep], g, &mut sink);
                    // What follows the gap in this write was not captured either.
                    let rest = &data[keep + g..];
                    if !rest.is_empty() {
                        feed_cut(&mut conn, *dir, *ns, &[], rest.len(), &mut sink);
                    }
                } else {
                    run_on(&mut conn, &[(*dir, *ns, data.clone())], &mut sink);
                }
                base += data.len();
            }
            conn.finish(ExchangeEnd::Aborted, &mut sink);
            for e in &sink.exchanges {
                let truth = whole.exchanges.iter().find(|w| w.stream == e.stream).unwrap();
                if let Some(r) = &e.request {
                    prop_assert_eq!(Some(r), truth.request.as_ref());
                }
                if e.status.is_some() {
                    prop_assert_eq!(e.status, truth.status);
                }
            }
        }
    }
}
