//! Typed domain events decoded from kernel records (exec, fork, exit, file open, TCP, TLS data, DNS, SNI), the decoder, and the clock that dates them.

pub mod clock;
pub mod decode;
pub mod observation;
pub mod telemetry;

use std::net::IpAddr;

pub use clock::Clock;
pub use decode::{decode, DecodeError};

/// Fields every kernel record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Boot-clock nanoseconds when the kernel saw it.
    pub ktime_ns: u64,
    /// Process (thread-group) id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec<'a> {
    pub hdr: Header,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub start_time_ns: u64,
    pub comm: &'a [u8],
    /// The path handed to execve, as the process spelled it.
    pub filename: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork<'a> {
    /// `hdr.pid` is the child.
    pub hdr: Header,
    pub ppid: u32,
    pub uid: u32,
    pub start_time_ns: u64,
    pub comm: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub hdr: Header,
    /// Raw wait status: `code >> 8` for a normal exit, `code & 0x7f` the signal.
    pub exit_code: i32,
    pub start_time_ns: u64,
}

/// How the path of a watched open was learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenPath<'a> {
    /// The absolute path the process passed.
    Argument(&'a [u8]),
    /// Matched by inode: names from the opened file up to (not including) the
    /// watched directory, leaf first.
    Dentries(Vec<&'a [u8]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOpen<'a> {
    pub hdr: Header,
    /// File descriptor, or `-errno`.
    pub result: i64,
    pub open_flags: u32,
    pub watch_id: u32,
    pub ino: u64,
    pub dev: u32,
    pub path: OpenPath<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp {
    pub hdr: Header,
    /// Kernel socket address: a key, never shown.
    pub sock: u64,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Close only: bytes acknowledged by the peer.
    pub bytes_sent: u64,
    /// Close only: bytes received.
    pub bytes_received: u64,
    /// When connect() was called (boot clock).
    pub start_ns: u64,
    /// Close only: the connection never established.
    pub failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsLibrary {
    OpenSsl,
    GnuTls,
    /// crypto/tls in a Go program.
    Go,
    /// No TLS: the bytes a process wrote to or read from a TCP socket (the sockets sensor).
    Cleartext,
}

impl TlsLibrary {
    /// What carried the bytes: `tls`, or `tcp` for cleartext on a socket.
    pub fn transport(self) -> &'static str {
        match self {
            TlsLibrary::Cleartext => "tcp",
            TlsLibrary::OpenSsl | TlsLibrary::GnuTls | TlsLibrary::Go => "tls",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Plaintext the process sent.
    Write,
    /// Plaintext the process received.
    Read,
}

/// Plaintext of one TLS library call. The bytes are borrowed from the ring
/// buffer and must never be printed or stored.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsData<'a> {
    pub hdr: Header,
    pub session: u64,
    pub sock: u64,
    pub direction: Direction,
    pub library: TlsLibrary,
    /// Cleartext only: the first bytes read on an accepted connection, which opened with an
    /// HTTP request (the process serves HTTP there). Never parsed as a call.
    pub inbound: bool,
    /// Full length of the call; `plaintext` may be a prefix of it.
    pub len: u32,
    pub plaintext: &'a [u8],
}

impl std::fmt::Debug for TlsData<'_> {
    // Hand-written so that a `{:?}` anywhere can never print plaintext.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsData")
            .field("hdr", &self.hdr)
            .field("direction", &self.direction)
            .field("library", &self.library)
            .field("inbound", &self.inbound)
            .field("len", &self.len)
            .field("captured", &self.plaintext.len())
            .finish_non_exhaustive()
    }
}

/// A UDP datagram from port 53 delivered to a socket on this host: a DNS
/// response as some process received it. Not attributed to a process (it
/// arrives in softirq): `hdr.pid`/`hdr.tid` are 0, `hdr.cgroup_id` is the
/// receiving socket's cgroup.
#[derive(Clone, PartialEq, Eq)]
pub struct DnsMessage<'a> {
    pub hdr: Header,
    /// Whether it came over IPv6.
    pub ipv6: bool,
    /// Full DNS message length; `message` may be a prefix of it.
    pub len: u32,
    pub message: &'a [u8],
}

impl std::fmt::Debug for DnsMessage<'_> {
    // Lengths only, like every type that borrows captured bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsMessage")
            .field("hdr", &self.hdr)
            .field("ipv6", &self.ipv6)
            .field("len", &self.len)
            .field("captured", &self.message.len())
            .finish()
    }
}

/// A TLS client set the server name (SNI) of a session. The name is what the
/// process passed, unvalidated: check it before use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSni<'a> {
    pub hdr: Header,
    /// Same key as [`TlsData::session`].
    pub session: u64,
    pub library: TlsLibrary,
    pub name: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    Exec(Exec<'a>),
    Fork(Fork<'a>),
    Exit(Exit),
    FileOpen(FileOpen<'a>),
    TcpConnect(Tcp),
    TcpClose(Tcp),
    TlsData(TlsData<'a>),
    DnsAnswer(DnsMessage<'a>),
    TlsSni(TlsSni<'a>),
}

/// Event kinds, in the order of the kernel's enum (checked in decode's tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Exec,
    Fork,
    Exit,
    FileOpen,
    TcpConnect,
    TcpClose,
    TlsData,
    DnsAnswer,
    TlsSni,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
        EventKind::FileOpen,
        EventKind::TcpConnect,
        EventKind::TcpClose,
        EventKind::TlsData,
        EventKind::DnsAnswer,
        EventKind::TlsSni,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Exec => "exec",
            EventKind::Fork => "fork",
            EventKind::Exit => "exit",
            EventKind::FileOpen => "file_open",
            EventKind::TcpConnect => "tcp_connect",
            EventKind::TcpClose => "tcp_close",
            EventKind::TlsData => "tls_data",
            EventKind::DnsAnswer => "dns_answer",
            EventKind::TlsSni => "tls_sni",
        }
    }

    /// The kernel's `enum nw_event_kind` value.
    pub fn raw(self) -> u32 {
        use crate::probes::abi::*;
        match self {
            EventKind::Exec => NW_EVENT_EXEC,
            EventKind::Fork => NW_EVENT_FORK,
            EventKind::Exit => NW_EVENT_EXIT,
            EventKind::FileOpen => NW_EVENT_FILE_OPEN,
            EventKind::TcpConnect => NW_EVENT_TCP_CONNECT,
            EventKind::TcpClose => NW_EVENT_TCP_CLOSE,
            EventKind::TlsData => NW_EVENT_TLS_DATA,
            EventKind::DnsAnswer => NW_EVENT_DNS_ANSWER,
            EventKind::TlsSni => NW_EVENT_TLS_SNI,
        }
    }

    pub fn from_raw(raw: u32) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.raw() == raw)
    }
}

impl Event<'_> {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Exec(_) => EventKind::Exec,
            Event::Fork(_) => EventKind::Fork,
            Event::Exit(_) => EventKind::Exit,
            Event::FileOpen(_) => EventKind::FileOpen,
            Event::TcpConnect(_) => EventKind::TcpConnect,
            Event::TcpClose(_) => EventKind::TcpClose,
            Event::TlsData(_) => EventKind::TlsData,
            Event::DnsAnswer(_) => EventKind::DnsAnswer,
            Event::TlsSni(_) => EventKind::TlsSni,
        }
    }

    pub fn header(&self) -> &Header {
        match self {
            Event::Exec(e) => &e.hdr,
            Event::Fork(e) => &e.hdr,
            Event::Exit(e) => &e.hdr,
            Event::FileOpen(e) => &e.hdr,
            Event::TcpConnect(e) | Event::TcpClose(e) => &e.hdr,
            Event::TlsData(e) => &e.hdr,
            Event::DnsAnswer(e) => &e.hdr,
            Event::TlsSni(e) => &e.hdr,
        }
    }
}

/// Bytes up to the first NUL, for fixed-size C strings such as `comm`.
pub fn c_str(bytes: &[u8]) -> &[u8] {
    bytes.split(|&b| b == 0).next().unwrap_or_default()
}
