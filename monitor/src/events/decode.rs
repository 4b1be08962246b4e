//! Raw ring-buffer records → typed events, checking every length; never panics on bad input.

use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::*;
use crate::probes::abi::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {have} bytes is shorter than the {need} its kind {kind} needs")]
    Truncated { kind: u16, need: usize, have: usize },
    #[error("record header claims {claimed} bytes but {have} arrived")]
    SizeMismatch { claimed: u32, have: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("record of kind {kind} has variable part of {len} bytes, beyond its end")]
    BadLength { kind: u16, len: u32 },
    #[error("record of kind {kind} names TLS library {lib}, unknown to this build")]
    UnknownTlsLibrary { kind: u16, lib: u8 },
    #[error("file-open record with path flags {flags:#x}: neither an argument nor dentry names")]
    UnknownOpenPath { flags: u16 },
}

impl DecodeError {
    /// Short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::SizeMismatch { .. } => "size_mismatch",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::BadLength { .. } => "bad_length",
            DecodeError::UnknownTlsLibrary { .. } => "unknown_tls_library",
            DecodeError::UnknownOpenPath { .. } => "unknown_open_path",
        }
    }
}

/// Reads a `T` from the start of `buf` if it is long enough (no alignment needed).
fn read<T: Copy>(buf: &[u8], kind: u16) -> Result<T, DecodeError> {
    if buf.len() < size_of::<T>() {
        return Err(DecodeError::Truncated {
            kind,
            need: size_of::<T>(),
            have: buf.len(),
        });
    }
    // SAFETY: length checked above; T is a bindgen POD struct valid for any bits.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// The `len` bytes that follow a fixed `T` in the record.
fn tail<T>(rec: &[u8], len: u32, kind: u16) -> Result<&[u8], DecodeError> {
    let start = size_of::<T>();
    let end = start.checked_add(len as usize).filter(|&e| e <= rec.len());
    match end {
        Some(end) => Ok(&rec[start..end]),
        None => Err(DecodeError::BadLength { kind, len }),
    }
}

/// The kernel's `enum nw_tls_lib`: a value this build does not know is an error, not a guess.
fn tls_library(lib: u8, kind: u16) -> Result<TlsLibrary, DecodeError> {
    match u32::from(lib) {
        NW_TLS_OPENSSL => Ok(TlsLibrary::OpenSsl),
        NW_TLS_GNUTLS => Ok(TlsLibrary::GnuTls),
        NW_TLS_PLAIN => Ok(TlsLibrary::Cleartext),
        NW_TLS_GO => Ok(TlsLibrary::Go),
        _ => Err(DecodeError::UnknownTlsLibrary { kind, lib }),
    }
}

fn header(h: &nw_header) -> Header {
    Header {
        ktime_ns: h.ktime_ns,
        pid: h.pid,
        tid: h.tid,
        cgroup_id: h.cgroup_id,
    }
}

/// Decodes one ring-buffer record. The returned event borrows `buf`.
pub fn decode(buf: &[u8]) -> Result<Event<'_>, DecodeError> {
    let h: nw_header = read(buf, 0)?;
    let kind = h.kind;
    if (h.size as usize) > buf.len() || (h.size as usize) < size_of::<nw_header>() {
        return Err(DecodeError::SizeMismatch {
            claimed: h.size,
            have: buf.len(),
        });
    }
    let rec = &buf[..h.size as usize];
    let Some(k) = EventKind::from_raw(kind as u32) else {
        return Err(DecodeError::UnknownKind(kind));
    };
    Ok(match k {
        EventKind::Exec => {
            let e: nw_exec = read(rec, kind)?;
            Event::Exec(Exec {
                hdr: header(&e.hdr),
                ppid: e.ppid,
                uid: e.uid,
                gid: e.gid,
                start_time_ns: e.start_time_ns,
                comm: comm(rec, std::mem::offset_of!(nw_exec, comm)),
                filename: tail::<nw_exec>(rec, e.filename_len, kind)?,
            })
        }
        EventKind::Fork => {
            let f: nw_fork = read(rec, kind)?;
            Event::Fork(Fork {
                hdr: header(&f.hdr),
                ppid: f.ppid,
                uid: f.uid,
                start_time_ns: f.start_time_ns,
                comm: comm(rec, std::mem::offset_of!(nw_fork, comm)),
            })
        }
        EventKind::Exit => {
            let x: nw_exit = read(rec, kind)?;
            Event::Exit(Exit {
                hdr: header(&x.hdr),
                exit_code: x.exit_code,
                start_time_ns: x.start_time_ns,
            })
        }
        EventKind::FileOpen => {
            let o: nw_file_open = read(rec, kind)?;
            let raw = tail::<nw_file_open>(rec, o.path_len, kind)?;
            let flags = u32::from(o.hdr.flags);
            let path = match flags & (NW_F_OPEN_PATH_ARG | NW_F_OPEN_PATH_DENTRY) {
                NW_F_OPEN_PATH_ARG => OpenPath::Argument(raw),
                NW_F_OPEN_PATH_DENTRY => {
                    OpenPath::Dentries(raw.split(|&b| b == 0).filter(|s| !s.is_empty()).collect())
                }
                _ => return Err(DecodeError::UnknownOpenPath { flags: o.hdr.flags }),
            };
            Event::FileOpen(FileOpen {
                hdr: header(&o.hdr),
                result: o.result,
                open_flags: o.open_flags,
                watch_id: o.watch_id,
                ino: o.ino,
                dev: o.dev,
                path,
            })
        }
        EventKind::TcpConnect | EventKind::TcpClose => {
            let t: nw_tcp = read(rec, kind)?;
            let flags = u32::from(t.hdr.flags);
            let (saddr, daddr) = if flags & NW_F_TCP_IPV6 != 0 {
                (
                    IpAddr::V6(Ipv6Addr::from(t.saddr)),
                    IpAddr::V6(Ipv6Addr::from(t.daddr)),
                )
            } else {
                let s: [u8; 4] = t.saddr[..4].try_into().unwrap_or_default();
                let d: [u8; 4] = t.daddr[..4].try_into().unwrap_or_default();
                (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)))
            };
            let tcp = Tcp {
                hdr: header(&t.hdr),
                sock: t.sock,
                saddr,
                sport: t.sport,
                daddr,
                dport: t.dport,
                bytes_sent: t.bytes_sent,
                bytes_received: t.bytes_received,
                start_ns: t.start_ns,
                failed: flags & NW_F_TCP_FAILED != 0,
            };
            if k == EventKind::TcpConnect {
                Event::TcpConnect(tcp)
            } else {
                Event::TcpClose(tcp)
            }
        }
        EventKind::TlsData => {
            let t: nw_tls_data = read(rec, kind)?;
            if t.captured > t.len {
                return Err(DecodeError::BadLength {
                    kind,
                    len: t.captured,
                });
            }
            let library = tls_library(t.lib, kind)?;
            let direction = if u32::from(t.hdr.flags) & NW_F_TLS_READ != 0 {
                Direction::Read
            } else {
                Direction::Write
            };
            Event::TlsData(TlsData {
                hdr: header(&t.hdr),
                session: t.session,
                sock: t.sock,
                direction,
                library,
                inbound: library == TlsLibrary::Cleartext
                    && u32::from(t.hdr.flags) & NW_F_TLS_INBOUND != 0,
                len: t.len,
                plaintext: tail::<nw_tls_data>(rec, t.captured, kind)?,
            })
        }
        EventKind::DnsAnswer => {
            let d: nw_dns_answer = read(rec, kind)?;
            if d.captured > d.len || d.captured as usize > d.data.len() {
                return Err(DecodeError::BadLength {
                    kind,
                    len: d.captured,
                });
            }
            let start = std::mem::offset_of!(nw_dns_answer, data);
            Event::DnsAnswer(DnsMessage {
                hdr: header(&d.hdr),
                ipv6: u32::from(d.hdr.flags) & NW_F_DNS_IPV6 != 0,
                len: d.len,
                message: rec.get(start..start + d.captured as usize).ok_or(
                    DecodeError::BadLength {
                        kind,
                        len: d.captured,
                    },
                )?,
            })
        }
        EventKind::TlsSni => {
            let t: nw_tls_sni = read(rec, kind)?;
            if t.name_len as usize > t.name.len() {
                return Err(DecodeError::BadLength {
                    kind,
                    len: t.name_len,
                });
            }
            let start = std::mem::offset_of!(nw_tls_sni, name);
            Event::TlsSni(TlsSni {
                hdr: header(&t.hdr),
                session: t.session,
                library: tls_library(t.lib, kind)?,
                name: rec.get(start..start + t.name_len as usize).ok_or(
                    DecodeError::BadLength {
                        kind,
                        len: t.name_len,
                    },
                )?,
            })
        }
    })
}

fn comm(rec: &[u8], offset: usize) -> &[u8] {
    c_str(&rec[offset..offset + NW_COMM_LEN as usize])
}

#[cfg(test)]
// Records are built field by field, the way the kernel fills them.
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    fn hdr(kind: u32, size: usize) -> nw_header {
        nw_header {
            kind: kind as u16,
            flags: 0,
            size: size as u32,
            ktime_ns: 42,
            pid: 100,
            tid: 101,
            cgroup_id: 7,
        }
    }

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a POD struct.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn exec_record(filename: &[u8]) -> Vec<u8> {
        let mut e = nw_exec::default();
        e.hdr = hdr(NW_EVENT_EXEC, size_of::<nw_exec>() + filename.len());
        e.ppid = 1;
        e.uid = 1000;
        e.filename_len = filename.len() as u32;
        e.comm[..4].copy_from_slice(&[b'c' as i8, b'u' as i8, b'r' as i8, b'l' as i8]);
        let mut v = bytes(&e);
        v.extend_from_slice(filename);
        v
    }

    #[test]
    fn kinds_match_the_kernel_enum() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_raw(k.raw()), Some(k));
        }
        assert_eq!(EventKind::ALL.len() as u32 + 1, NW_EVENT_KIND_COUNT);
    }

    #[test]
    fn decodes_exec_with_filename() {
        let rec = exec_record(b"/usr/bin/curl");
        let Ok(Event::Exec(e)) = decode(&rec) else {
            panic!("not an exec")
        };
        assert_eq!(e.filename, b"/usr/bin/curl");
        assert_eq!(e.comm, b"curl");
        assert_eq!(e.ppid, 1);
        assert_eq!(e.hdr.pid, 100);
        assert_eq!(e.hdr.cgroup_id, 7);
    }

    #[test]
    fn ring_padding_after_the_record_is_ignored() {
        let mut rec = exec_record(b"/bin/true");
        rec.extend_from_slice(&[0xAA; 7]);
        let Ok(Event::Exec(e)) = decode(&rec) else {
            panic!("not an exec")
        };
        assert_eq!(e.filename, b"/bin/true");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let rec = exec_record(b"/usr/bin/python3");
        for cut in 0..rec.len() {
            assert!(decode(&rec[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn variable_length_beyond_the_record_is_rejected() {
        let mut e = nw_tls_data::default();
        e.hdr = hdr(NW_EVENT_TLS_DATA, size_of::<nw_tls_data>() + 4);
        e.lib = NW_TLS_OPENSSL as u8;
        e.len = 100;
        e.captured = 50; // claims more than the 4 that follow
        let mut v = bytes(&e);
        v.extend_from_slice(b"GET ");
        assert!(matches!(decode(&v), Err(DecodeError::BadLength { .. })));
        // captured larger than the call itself is nonsense too
        e.captured = 4;
        e.len = 2;
        let mut v = bytes(&e);
        v.extend_from_slice(b"GET ");
        assert!(matches!(decode(&v), Err(DecodeError::BadLength { .. })));
    }

    #[test]
    fn unknown_kind_is_reported() {
        let h = hdr(999, size_of::<nw_header>());
        assert_eq!(decode(&bytes(&h)), Err(DecodeError::UnknownKind(999)));
    }

    #[test]
    fn tls_debug_never_shows_plaintext() {
        let mut e = nw_tls_data::default();
        e.hdr = hdr(NW_EVENT_TLS_DATA, size_of::<nw_tls_data>() + 11);
        e.lib = NW_TLS_OPENSSL as u8;
        e.len = 11;
        e.captured = 11;
        let mut v = bytes(&e);
        v.extend_from_slice(b"Bearer s3cr");
        let ev = decode(&v).unwrap();
        let shown = format!("{ev:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("captured: 11"));
    }

    #[test]
    fn tcp_v4_addresses_and_flags() {
        let mut t = nw_tcp::default();
        t.hdr = hdr(NW_EVENT_TCP_CLOSE, size_of::<nw_tcp>());
        t.hdr.flags = NW_F_TCP_FAILED as u16;
        t.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        t.sport = 40000;
        t.dport = 443;
        t.bytes_sent = 5;
        let Ok(Event::TcpClose(c)) = decode(&bytes(&t)) else {
            panic!()
        };
        assert_eq!(c.saddr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(c.daddr.to_string(), "10.1.2.3");
        assert!(c.failed);
        assert_eq!(c.bytes_sent, 5);
    }

    #[test]
    fn dentry_paths_split_on_nul() {
        let names = b"token\0..data\0";
        let mut o = nw_file_open::default();
        o.hdr = hdr(NW_EVENT_FILE_OPEN, size_of::<nw_file_open>() + names.len());
        o.hdr.flags = NW_F_OPEN_PATH_DENTRY as u16;
        o.path_len = names.len() as u32;
        let mut v = bytes(&o);
        v.extend_from_slice(names);
        let Ok(Event::FileOpen(f)) = decode(&v) else {
            panic!()
        };
        assert_eq!(
            f.path,
            OpenPath::Dentries(vec![&b"token"[..], &b"..data"[..]])
        );
    }

    /// A library id the kernel may send one day (or a corrupt one) is counted, never guessed.
    #[test]
    fn unknown_tls_library_is_an_error_not_openssl() {
        let mut e = nw_tls_data::default();
        e.hdr = hdr(NW_EVENT_TLS_DATA, size_of::<nw_tls_data>() + 3);
        e.len = 3;
        e.captured = 3;
        let mut v = bytes(&e);
        v.extend_from_slice(b"GET");
        for lib in [0u8, 5, 255] {
            v[std::mem::offset_of!(nw_tls_data, lib)] = lib;
            let err = decode(&v).unwrap_err();
            assert_eq!(
                err,
                DecodeError::UnknownTlsLibrary {
                    kind: NW_EVENT_TLS_DATA as u16,
                    lib
                }
            );
            assert_eq!(err.reason(), "unknown_tls_library");
        }
        v[std::mem::offset_of!(nw_tls_data, lib)] = NW_TLS_GNUTLS as u8;
        let Ok(Event::TlsData(t)) = decode(&v) else {
            panic!("gnutls record")
        };
        assert_eq!(t.library, TlsLibrary::GnuTls);

        let mut s = nw_tls_sni::default();
        s.hdr = hdr(NW_EVENT_TLS_SNI, size_of::<nw_tls_sni>());
        s.lib = 9;
        assert_eq!(
            decode(&bytes(&s)).unwrap_err().reason(),
            "unknown_tls_library"
        );
    }

    #[test]
    fn open_record_without_a_known_path_kind_is_an_error() {
        let mut o = nw_file_open::default();
        o.hdr = hdr(NW_EVENT_FILE_OPEN, size_of::<nw_file_open>());
        for flags in [0, NW_F_OPEN_PATH_ARG | NW_F_OPEN_PATH_DENTRY] {
            o.hdr.flags = flags as u16;
            assert_eq!(
                decode(&bytes(&o)).unwrap_err().reason(),
                "unknown_open_path"
            );
        }
        o.hdr.flags = NW_F_OPEN_PATH_ARG as u16;
        assert!(matches!(decode(&bytes(&o)), Ok(Event::FileOpen(_))));
    }

    fn dns_record(message: &[u8], len: u32) -> Vec<u8> {
        let mut d = nw_dns_answer::default();
        d.hdr = hdr(NW_EVENT_DNS_ANSWER, size_of::<nw_dns_answer>());
        d.hdr.pid = 0;
        d.hdr.tid = 0;
        d.hdr.flags = NW_F_DNS_IPV6 as u16;
        d.len = len;
        d.captured = message.len() as u32;
        d.data[..message.len()].copy_from_slice(message);
        bytes(&d)
    }

    #[test]
    fn decodes_dns_answer_prefix() {
        let msg = b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00";
        let rec = dns_record(msg, 700);
        let Ok(Event::DnsAnswer(d)) = decode(&rec) else {
            panic!("not a dns answer")
        };
        assert_eq!(d.message, msg);
        assert_eq!(d.len, 700);
        assert!(d.ipv6);
        assert_eq!(d.hdr.cgroup_id, 7);
        assert_eq!(d.hdr.pid, 0);
        let shown = format!("{d:?}");
        assert!(shown.contains("captured: 12"), "{shown}");
        assert!(!shown.contains("18, 52"), "{shown}");
    }

    #[test]
    fn dns_answer_lengths_are_checked() {
        let mut d = nw_dns_answer::default();
        d.hdr = hdr(NW_EVENT_DNS_ANSWER, size_of::<nw_dns_answer>());
        d.len = 10;
        d.captured = 20; // more than the message
        assert!(matches!(
            decode(&bytes(&d)),
            Err(DecodeError::BadLength { .. })
        ));
        d.len = 4096;
        d.captured = NW_DNS_CAPTURE_MAX + 1; // more than the record holds
        assert!(matches!(
            decode(&bytes(&d)),
            Err(DecodeError::BadLength { .. })
        ));
        let rec = dns_record(b"abcdefghijkl", 12);
        for cut in 0..rec.len() {
            assert!(decode(&rec[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn decodes_tls_sni() {
        let mut t = nw_tls_sni::default();
        t.hdr = hdr(NW_EVENT_TLS_SNI, size_of::<nw_tls_sni>());
        t.session = 0xdead_beef;
        t.lib = NW_TLS_GNUTLS as u8;
        let name = b"api.example.com";
        for (i, &b) in name.iter().enumerate() {
            t.name[i] = b as _;
        }
        t.name_len = name.len() as u32;
        let rec = bytes(&t);
        let Ok(Event::TlsSni(s)) = decode(&rec) else {
            panic!("not sni")
        };
        assert_eq!(s.name, name);
        assert_eq!(s.session, 0xdead_beef);
        assert_eq!(s.library, TlsLibrary::GnuTls);
        assert_eq!(s.hdr.pid, 100);
        t.name_len = NW_SNI_MAX + 1;
        assert!(matches!(
            decode(&bytes(&t)),
            Err(DecodeError::BadLength { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&data);
        }

        #[test]
        fn arbitrary_headers_never_panic(kind in 0u16..10, size in 0u32..600, tail in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut h = hdr(u32::from(kind), 0);
            h.size = size;
            let mut v = bytes(&h);
            v.extend_from_slice(&tail);
            let _ = decode(&v);
        }
    }
}
