//! Syslog transport: takes batches of outgoing alerts, gives RFC 5424 messages, octet-counted (RFC 6587 / RFC 5425), over TCP or TLS.

use std::{
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    task::Poll,
    time::{Duration, UNIX_EPOCH},
};

use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

use super::tls::TlsClientConfig;
use super::SinkError;
use crate::{alerts::Outgoing, detect::finding::Severity};

/// Our SD-ID: `name@enterprise`, 32473 being the enterprise number RFC 5612 reserves for documentation.
const SD_ID: &str = "nhiwatch@32473";
/// RFC 5424 field limits (octets).
const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const MSGID_MAX: usize = 32;
/// How long a fresh TLS 1.3 connection is watched for the server refusing our certificate (see `connect`).
const TLS13_SETTLE: Duration = Duration::from_millis(200);

fn default_app_name() -> String {
    "nhiwatch".into()
}

fn default_facility() -> u8 {
    10
}

#[derive(Clone, Debug, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `host:port` (`[v6]:port` for IPv6 literals).
    pub address: String,
    /// Absent → plain TCP (RFC 6587 octet counting); present → RFC 5425 TLS.
    #[serde(default)]
    pub tls: Option<TlsClientConfig>,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// 0..23; default 10 (authpriv: security/authorization messages).
    #[serde(default = "default_facility")]
    pub facility: u8,
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn fd(&self) -> RawFd {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    /// Whether the server has gone: it closed (EOF, TLS close_notify), reset, or sent a TLS alert.
    ///
    /// A syslog receiver never sends application data, so anything readable is either the end of
    /// the connection or (TLS) handshake leftovers such as session tickets, which rustls consumes.
    async fn peer_gone(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        let gone = std::future::poll_fn(|cx| {
            // Bounded: a server flooding us with bytes is treated as alive, not spun on.
            for _ in 0..16 {
                let mut rb = ReadBuf::new(&mut buf);
                let r = match self {
                    Conn::Tcp(s) => Pin::new(s).poll_read(cx, &mut rb),
                    Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, &mut rb),
                };
                match r {
                    Poll::Pending => return Poll::Ready(false),
                    Poll::Ready(Err(_)) => return Poll::Ready(true),
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(true),
                    Poll::Ready(Ok(())) => {}
                }
            }
            Poll::Ready(false)
        })
        .await;
        // The runtime learns of a FIN only when its reactor next turns; the kernel knows now.
        gone || kernel_says_closed(self.fd())
    }

    /// Whether the server goes within `settle`; answers as soon as it does.
    async fn gone_within(&mut self, settle: Duration) -> bool {
        let until = tokio::time::Instant::now() + settle;
        loop {
            if self.peer_gone().await {
                return true;
            }
            let tcp = match self {
                Conn::Tcp(s) => &*s,
                Conn::Tls(s) => s.get_ref().0,
            };
            match tokio::time::timeout_at(until, tcp.readable()).await {
                Err(_) => return false,
                Ok(Err(_)) => return true,
                Ok(Ok(())) => {}
            }
        }
    }
}

/// A non-blocking peek at the socket: true on EOF (peer closed, nothing unread) or a socket error.
fn kernel_says_closed(fd: RawFd) -> bool {
    let mut b = 0u8;
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call; one byte
    // is peeked into a local buffer.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => {
            let e = std::io::Error::last_os_error();
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            )
        }
    }
}

/// A syslog receiver over TCP or TLS; one connection, opened when first needed and kept.
pub struct SyslogSink {
    address: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    hostname: String,
    app_name: String,
    facility: u8,
    procid: u32,
    timeout: Duration,
    /// [`TLS13_SETTLE`]; tests that need a refusal seen however slow the machine lengthen it.
    tls13_settle: Duration,
    conn: Option<Conn>,
}

/// `host:port` → host (brackets removed) after checking the form.
fn parse_address(address: &str) -> Result<String, SinkError> {
    let bad = |why: &str| SinkError::Config(format!("syslog address {address:?}: {why}"));
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("the port must be 1..65535")),
    }
    let host = match host.strip_prefix('[') {
        Some(h) => h
            .strip_suffix(']')
            .ok_or_else(|| bad("unclosed '[' around the IPv6 address"))?,
        None if host.contains(':') => {
            return Err(bad("write IPv6 addresses in brackets: [::1]:6514"))
        }
        None => host,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(bad("the host is empty or malformed"));
    }
    Ok(host.to_owned())
}

impl SyslogSink {
    /// Checks the address, facility and TLS files now; connects on the first `send` or `check`.
    pub fn new(
        cfg: &SyslogConfig,
        hostname: &str,
        timeout: Duration,
    ) -> Result<SyslogSink, SinkError> {
        let host = parse_address(&cfg.address)?;
        if cfg.facility > 23 {
            return Err(SinkError::Config(format!(
                "syslog facility {} is out of range 0..23",
                cfg.facility
            )));
        }
        let tls = match &cfg.tls {
            None => None,
            Some(t) => {
                let name = t.server_name.clone().unwrap_or(host);
                let server_name = ServerName::try_from(name.clone()).map_err(|e| {
                    SinkError::Config(format!("syslog tls server name {name:?}: {e}"))
                })?;
                Some((TlsConnector::from(t.rustls()?), server_name))
            }
        };
        Ok(SyslogSink {
            address: cfg.address.clone(),
            tls,
            hostname: header_field(hostname, HOSTNAME_MAX),
            app_name: header_field(&cfg.app_name, APP_NAME_MAX),
            facility: cfg.facility,
            procid: std::process::id(),
            timeout,
            tls13_settle: TLS13_SETTLE,
            conn: None,
        })
    }

    /// Writes every alert of the batch, all or nothing: any error drops the connection and is
    /// Transient (the worker retries the whole batch; receivers dedup with `dedup_key`).
    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<(), SinkError> {
        let mut wire = Vec::with_capacity(batch.iter().map(|o| o.body.len() + 160).sum());
        for o in batch {
            let msg = rfc5424(
                o,
                self.facility,
                &self.hostname,
                &self.app_name,
                self.procid,
            );
            wire.extend_from_slice(msg.len().to_string().as_bytes());
            wire.push(b' ');
            wire.extend_from_slice(msg.as_bytes());
        }
        let r = self.write(&wire).await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// Health: connects if not connected (or if the server has closed the connection).
    pub async fn check(&mut self) -> Result<(), SinkError> {
        self.ensure_connected().await.map(|_| ())
    }

    async fn write(&mut self, wire: &[u8]) -> Result<(), SinkError> {
        let timeout = self.timeout;
        let address = self.address.clone();
        let conn = self.ensure_connected().await?;
        // What this cannot see: bytes the kernel accepted after the last check but the server
        // never read (it died or closed in between, or dropped them from its own queue). RFC 5425
        // and RFC 6587 have no application-level acknowledgement (RELP would), so such a batch
        // counts as sent. The liveness check before each write narrows that window to the
        // moment of the write itself.
        match tokio::time::timeout(timeout, conn.write_all(wire)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError::Transient(format!(
                "syslog {address}: write: {e}"
            ))),
            Err(_) => Err(SinkError::Transient(format!(
                "syslog {address}: write timed out after {timeout:?}"
            ))),
        }
    }

    async fn ensure_connected(&mut self) -> Result<&mut Conn, SinkError> {
        if let Some(c) = self.conn.as_mut() {
            if c.peer_gone().await {
                tracing::debug!(address = %self.address, "syslog server closed the connection; reconnecting");
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            let c = match tokio::time::timeout(self.timeout, self.connect()).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(SinkError::Transient(format!(
                        "syslog {}: connect timed out after {:?}",
                        self.address, self.timeout
                    )))
                }
            };
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| SinkError::Transient("syslog: no connection".into()))
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        let err = |what: &str, e: std::io::Error| {
            SinkError::Transient(format!("syslog {}: {what}: {e}", self.address))
        };
        let tcp = TcpStream::connect(&self.address)
            .await
            .map_err(|e| err("connect", e))?;
        // Alerts are small and latency is measured: no Nagle delay.
        tcp.set_nodelay(true).map_err(|e| err("connect", e))?;
        let Some((connector, name)) = &self.tls else {
            return Ok(Conn::Tcp(tcp));
        };
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| err("TLS handshake", e))?;
        let tls13 = tls.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let mut conn = Conn::Tls(Box::new(tls));
        // In TLS 1.3 the client's handshake ends before the server has judged the client's
        // certificate; a refusal arrives as an alert afterwards. Waiting one short moment for it
        // turns "every batch silently lost" (a refused or missing client certificate) into an error.
        if tls13 && conn.gone_within(self.tls13_settle).await {
            return Err(SinkError::Transient(format!(
                "syslog {}: the server closed the TLS connection after the handshake (client certificate refused?)",
                self.address
            )));
        }
        Ok(conn)
    }
}

fn severity_code(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    }
}

/// A header field as RFC 5424 allows it: printable US-ASCII without spaces (others become `_`),
/// at most `max` octets, NILVALUE `-` when empty.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn sd_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 3339 UTC with microseconds; NILVALUE for a time before the epoch.
fn timestamp(time_ns: i64) -> String {
    match u64::try_from(time_ns) {
        Ok(ns) => {
            humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
        }
        Err(_) => "-".into(),
    }
}

/// One RFC 5424 message (without framing): header, our SD element, BOM + body.
pub fn rfc5424(o: &Outgoing, facility: u8, hostname: &str, app_name: &str, procid: u32) -> String {
    let pri = u16::from(facility.min(23)) * 8 + u16::from(severity_code(o.severity));
    format!(
        "<{pri}>1 {ts} {host} {app} {procid} {msgid} [{SD_ID} rule=\"{rule}\" severity=\"{sev}\" dedup_key=\"{key}\"] \u{feff}{body}",
        ts = timestamp(o.time_ns),
        host = header_field(hostname, HOSTNAME_MAX),
        app = header_field(app_name, APP_NAME_MAX),
        msgid = header_field(&o.rule, MSGID_MAX),
        rule = sd_value(&o.rule),
        sev = o.severity.name(),
        key = sd_value(&o.dedup_key),
        body = o.body,
    )
}

#[cfg(test)]
mod tests;
