//! A DNS response message (UDP payload) → the name that was queried and the addresses it resolved to, CNAME chains followed.
//
// The wire format is parsed by `simple-dns` (small, one dependency, returns errors
// instead of panicking, rejects forward and looping compression pointers because
// every pointer must point strictly backwards). What is ours: deciding which
// answers belong to the question, and refusing names that are not hostnames.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use simple_dns::{rdata::RData, Name, Packet, PacketFlag, CLASS, OPCODE, RCODE};

/// Addresses kept from one response; more are dropped (a 512-byte message holds ~30).
pub const MAX_ADDRS: usize = 64;
/// CNAME hops followed from the queried name.
pub const MAX_CNAME_HOPS: usize = 16;
/// Longest hostname in text form (RFC 1035: 255 octets on the wire).
pub const MAX_NAME_LEN: usize = 253;

/// What a response said about the name a process asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The queried name, lowercase, without the trailing dot.
    pub query: String,
    /// A and AAAA records of the queried name or of its CNAME targets, in message
    /// order. Empty when the name exists but has no address of the asked type.
    pub addrs: Vec<ResolvedAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedAddr {
    pub ip: IpAddr,
    /// Seconds: the smallest TTL along the CNAME chain and of the address record,
    /// since the mapping is only as valid as its weakest link.
    pub ttl: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("message does not parse as DNS")]
    Malformed,
    #[error("message is a query, not a response")]
    NotResponse,
    #[error("response is truncated (TC bit or captured prefix)")]
    Truncated,
    #[error("response code {0} (not NOERROR)")]
    Rcode(u16),
    #[error("not a standard query with exactly one IN question")]
    Unsupported,
    #[error("queried name is not a hostname")]
    BadName,
}

impl DnsError {
    /// Short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DnsError::Malformed => "malformed",
            DnsError::NotResponse => "not_response",
            DnsError::Truncated => "truncated",
            DnsError::Rcode(_) => "rcode",
            DnsError::Unsupported => "unsupported",
            DnsError::BadName => "bad_name",
        }
    }
}

const HEADER_LEN: usize = 12;
/// Smallest question (root name, type, class) and resource record (root name,
/// type, class, ttl, rdlength) on the wire.
const MIN_QUESTION: usize = 5;
const MIN_RECORD: usize = 11;

/// Parses one DNS response. `full_len` is the message length on the wire when
/// `msg` may be a captured prefix of it (pass `msg.len()` otherwise): a cut
/// message is refused rather than half-read.
pub fn parse_response(msg: &[u8], full_len: usize) -> Result<DnsAnswer, DnsError> {
    let header = msg.get(..HEADER_LEN).ok_or(DnsError::Malformed)?;
    if header[2] & 0x80 == 0 {
        return Err(DnsError::NotResponse);
    }
    if header[2] & 0x02 != 0 || full_len > msg.len() {
        return Err(DnsError::Truncated);
    }
    // The parser reserves room for the counts the header claims: refuse counts
    // the message cannot hold before it allocates for them.
    let count = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
    let least = count(4) * MIN_QUESTION + (count(6) + count(8) + count(10)) * MIN_RECORD;
    if least > msg.len() - HEADER_LEN {
        return Err(DnsError::Malformed);
    }
    let packet = Packet::parse(msg).map_err(|_| DnsError::Malformed)?;
    if !packet.has_flags(PacketFlag::RESPONSE) {
        return Err(DnsError::NotResponse);
    }
    if packet.rcode() != RCODE::NoError {
        return Err(DnsError::Rcode(packet.rcode() as u16));
    }
    if packet.opcode() != OPCODE::StandardQuery {
        return Err(DnsError::Unsupported);
    }
    let [question] = packet.questions.as_slice() else {
        return Err(DnsError::Unsupported);
    };
    if question.qclass != simple_dns::QCLASS::CLASS(CLASS::IN) {
        return Err(DnsError::Unsupported);
    }
    let query = hostname(&question.qname).ok_or(DnsError::BadName)?;

    // Names that stand for the query, with the smallest TTL on the way to them.
    // Records may come in any order: repeat until no CNAME adds a name.
    let in_records = || {
        packet
            .answers
            .iter()
            .filter(|rr| rr.class == CLASS::IN)
            .filter_map(|rr| Some((hostname(&rr.name)?, rr)))
    };
    let mut aliases: HashMap<String, u32> = HashMap::from([(query.clone(), u32::MAX)]);
    for _ in 0..MAX_CNAME_HOPS {
        let mut grew = false;
        for (owner, rr) in in_records() {
            let RData::CNAME(target) = &rr.rdata else {
                continue;
            };
            let (Some(&ttl), Some(target)) = (aliases.get(&owner), hostname(&target.0)) else {
                continue;
            };
            let ttl = ttl.min(rr.ttl);
            match aliases.get_mut(&target) {
                Some(known) if *known <= ttl => {}
                Some(known) => {
                    *known = ttl;
                    grew = true;
                }
                None => {
                    aliases.insert(target, ttl);
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }

    let mut addrs = Vec::new();
    for (owner, rr) in in_records() {
        let ip = match &rr.rdata {
            RData::A(a) => IpAddr::V4(Ipv4Addr::from(a.address)),
            RData::AAAA(a) => IpAddr::V6(Ipv6Addr::from(a.address)),
            _ => continue,
        };
        let Some(&chain_ttl) = aliases.get(&owner) else {
            continue;
        };
        if addrs.len() == MAX_ADDRS {
            break;
        }
        addrs.push(ResolvedAddr {
            ip,
            ttl: chain_ttl.min(rr.ttl),
        });
    }
    Ok(DnsAnswer { query, addrs })
}

/// A name in text form if it is a hostname (letters, digits, `-`, `_` in labels
/// of 1..=63), lowercased. The root name and anything else are refused, so no
/// control character or escape ever reaches output.
fn hostname(name: &Name<'_>) -> Option<String> {
    let mut out = String::new();
    for label in name.as_bytes() {
        if label.is_empty()
            || label.len() > 63
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        if out.len() > MAX_NAME_LEN {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(msg: &[u8]) -> Result<DnsAnswer, DnsError> {
        parse_response(msg, msg.len())
    }

    fn ips(a: &DnsAnswer) -> Vec<(String, u32)> {
        a.addrs.iter().map(|r| (r.ip.to_string(), r.ttl)).collect()
    }

    /// example.com A, as a recursive resolver answers a query with EDNS (OPT echoed).
    const A_EXAMPLE: &[u8] = b"\
    \x9b\x2e\x81\x80\x00\x01\x00\x01\x00\x00\x00\x01\x07\x65\x78\x61\x6d\x70\x6c\x65\x03\x63\x6f\x6d\
    \x00\x00\x01\x00\x01\xc0\x0c\x00\x01\x00\x01\x00\x00\x0b\x5e\x00\x04\x5d\xb8\xd7\x0e\x00\x00\x29\
    \x02\x00\x00\x00\x00\x00\x00\x00";

    /// example.com AAAA.
    const AAAA_EXAMPLE: &[u8] = b"\
    \x1c\x44\x81\x80\x00\x01\x00\x01\x00\x00\x00\x01\x07\x65\x78\x61\x6d\x70\x6c\x65\x03\x63\x6f\x6d\
    \x00\x00\x1c\x00\x01\xc0\x0c\x00\x1c\x00\x01\x00\x00\x0c\x64\x00\x10\x26\x06\x28\x00\x02\x1f\xcb\
    \x07\x68\x20\x80\xda\xaf\x6b\x8b\x2c\x00\x00\x29\x02\x00\x00\x00\x00\x00\x00\x00";

    /// www.github.com CNAME github.com, github.com A: the CNAME target is a
    /// compression pointer into the middle of the question name (offset 0x10).
    const CNAME_GITHUB: &[u8] = b"\
    \x5d\x01\x81\x80\x00\x01\x00\x02\x00\x00\x00\x01\x03\x77\x77\x77\x06\x67\x69\x74\x68\x75\x62\x03\
    \x63\x6f\x6d\x00\x00\x01\x00\x01\xc0\x0c\x00\x05\x00\x01\x00\x00\x0e\x10\x00\x02\xc0\x10\xc0\x10\
    \x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x8c\x52\x79\x04\x00\x00\x29\x02\x00\x00\x00\x00\x00\x00\
    \x00";

    /// www.microsoft.com: three CNAME hops (edgekey → akadns → akamaiedge), each
    /// owner a pointer to the previous record's rdata, then the A record.
    const CNAME_CHAIN_MICROSOFT: &[u8] = b"\
    \x7a\x3f\x81\x80\x00\x01\x00\x04\x00\x00\x00\x00\x03\x77\x77\x77\x09\x6d\x69\x63\x72\x6f\x73\x6f\
    \x66\x74\x03\x63\x6f\x6d\x00\x00\x01\x00\x01\xc0\x0c\x00\x05\x00\x01\x00\x00\x0e\x10\x00\x23\x03\
    \x77\x77\x77\x09\x6d\x69\x63\x72\x6f\x73\x6f\x66\x74\x07\x63\x6f\x6d\x2d\x63\x2d\x33\x07\x65\x64\
    \x67\x65\x6b\x65\x79\x03\x6e\x65\x74\x00\xc0\x2f\x00\x05\x00\x01\x00\x00\x03\x84\x00\x3a\x03\x77\
    \x77\x77\x09\x6d\x69\x63\x72\x6f\x73\x6f\x66\x74\x07\x63\x6f\x6d\x2d\x63\x2d\x33\x07\x65\x64\x67\
    \x65\x6b\x65\x79\x03\x6e\x65\x74\x0b\x67\x6c\x6f\x62\x61\x6c\x72\x65\x64\x69\x72\x06\x61\x6b\x61\
    \x64\x6e\x73\x03\x6e\x65\x74\x00\xc0\x5e\x00\x05\x00\x01\x00\x00\x03\x84\x00\x1c\x06\x65\x31\x33\
    \x36\x37\x38\x04\x64\x73\x63\x62\x0a\x61\x6b\x61\x6d\x61\x69\x65\x64\x67\x65\x03\x6e\x65\x74\x00\
    \xc0\xa4\x00\x01\x00\x01\x00\x00\x00\x14\x00\x04\x17\x2d\xe8\xb1";

    /// debian.org NXDOMAIN, captured from this machine's resolver.
    const NXDOMAIN_DEBIAN: &[u8] = b"\
    \xab\xcd\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00\x06\x64\x65\x62\x69\x61\x6e\x03\x6f\x72\x67\x00\
    \x00\x01\x00\x01";

    #[test]
    fn a_record() {
        let a = parse(A_EXAMPLE).unwrap();
        assert_eq!(a.query, "example.com");
        assert_eq!(ips(&a), [("93.184.215.14".to_string(), 2910)]);
    }

    #[test]
    fn aaaa_record() {
        let a = parse(AAAA_EXAMPLE).unwrap();
        assert_eq!(a.query, "example.com");
        assert_eq!(
            ips(&a),
            [("2606:2800:21f:cb07:6820:80da:af6b:8b2c".to_string(), 3172)]
        );
    }

    #[test]
    fn cname_target_addresses_belong_to_the_query() {
        let a = parse(CNAME_GITHUB).unwrap();
        assert_eq!(a.query, "www.github.com");
        // TTL is the smaller of the CNAME's (3600) and the A's (60).
        assert_eq!(ips(&a), [("140.82.121.4".to_string(), 60)]);
    }

    #[test]
    fn three_hop_chain_is_followed() {
        let a = parse(CNAME_CHAIN_MICROSOFT).unwrap();
        assert_eq!(a.query, "www.microsoft.com");
        assert_eq!(ips(&a), [("23.45.232.177".to_string(), 20)]);
    }

    #[test]
    fn chain_ttl_is_the_weakest_link() {
        // Raise the A record's TTL above the CNAMEs': the chain's 900 s wins.
        let mut m = CNAME_CHAIN_MICROSOFT.to_vec();
        let at = m.len() - 10; // ttl of the last record
        m[at..at + 4].copy_from_slice(&100_000u32.to_be_bytes());
        assert_eq!(
            ips(&parse(&m).unwrap()),
            [("23.45.232.177".to_string(), 900)]
        );
    }

    #[test]
    fn chain_out_of_order_is_still_followed() {
        // A first, then the CNAME that leads to it.
        let mut m = CNAME_GITHUB[..32].to_vec();
        m[7] = 2;
        m[11] = 0;
        m.extend_from_slice(b"\xc0\x10\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x8c\x52\x79\x04");
        m.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x0e\x10\x00\x02\xc0\x10");
        let a = parse(&m).unwrap();
        assert_eq!(ips(&a), [("140.82.121.4".to_string(), 60)]);
    }

    #[test]
    fn unrelated_answers_are_ignored() {
        // github.com's A record, but the question was www.github.com and no CNAME joins them.
        let mut m = CNAME_GITHUB[..32].to_vec();
        m[7] = 1;
        m[11] = 0;
        m.extend_from_slice(b"\xc0\x10\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x8c\x52\x79\x04");
        let a = parse(&m).unwrap();
        assert_eq!(a.query, "www.github.com");
        assert!(a.addrs.is_empty());
    }

    #[test]
    fn query_case_is_folded() {
        // 0x20-randomised question (resolvers preserve the case the client sent).
        let mut m = A_EXAMPLE.to_vec();
        m[13] = b'E';
        m[23] = b'M';
        let a = parse(&m).unwrap();
        assert_eq!(a.query, "example.com");
        assert_eq!(a.addrs.len(), 1, "answer owner (pointer) still matches");
    }

    #[test]
    fn nxdomain_is_refused() {
        assert_eq!(parse(NXDOMAIN_DEBIAN), Err(DnsError::Rcode(3)));
    }

    #[test]
    fn servfail_is_refused() {
        let mut m = A_EXAMPLE.to_vec();
        m[3] = 0x82;
        assert_eq!(parse(&m), Err(DnsError::Rcode(2)));
    }

    #[test]
    fn queries_are_refused() {
        let mut m = A_EXAMPLE.to_vec();
        m[2] &= 0x7f;
        assert_eq!(parse(&m), Err(DnsError::NotResponse));
    }

    #[test]
    fn truncated_responses_are_refused() {
        let mut m = A_EXAMPLE.to_vec();
        m[2] |= 0x02; // TC: the client will retry over TCP
        assert_eq!(parse(&m), Err(DnsError::Truncated));
        // captured prefix of a longer message
        assert_eq!(
            parse_response(A_EXAMPLE, A_EXAMPLE.len() + 100),
            Err(DnsError::Truncated)
        );
        // and every cut of a real message fails instead of half-reading it
        for cut in 0..CNAME_CHAIN_MICROSOFT.len() {
            let r = parse(&CNAME_CHAIN_MICROSOFT[..cut]);
            assert!(r.is_err(), "cut at {cut}: {r:?}");
        }
    }

    #[test]
    fn looping_compression_pointer_is_an_error() {
        // The answer's owner name points at itself.
        let mut m = A_EXAMPLE[..29].to_vec();
        m[11] = 0;
        m.extend_from_slice(b"\xc0\x1d\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04");
        assert_eq!(parse(&m), Err(DnsError::Malformed));
        // Two pointers pointing at each other (the second one forward).
        let mut m = A_EXAMPLE[..29].to_vec();
        m[11] = 0;
        m.extend_from_slice(b"\xc0\x2d\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04");
        m.extend_from_slice(b"\xc0\x1d");
        assert_eq!(parse(&m), Err(DnsError::Malformed));
    }

    #[test]
    fn cname_loop_terminates() {
        // a.test CNAME b.test, b.test CNAME a.test, then an A for b.test.
        let mut m =
            b"\x00\x01\x81\x80\x00\x01\x00\x03\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01"
                .to_vec();
        m.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x04\x01b\xc0\x0e");
        m.extend_from_slice(b"\xc0\x24\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x02\xc0\x0c");
        m.extend_from_slice(b"\xc0\x24\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01");
        let a = parse(&m).unwrap();
        assert_eq!(a.query, "a.test");
        assert_eq!(ips(&a), [("10.0.0.1".to_string(), 60)]);
    }

    #[test]
    fn names_that_are_not_hostnames_are_refused() {
        let mut m = A_EXAMPLE.to_vec();
        m[14] = b'\n';
        assert_eq!(parse(&m), Err(DnsError::BadName));
        // root-name question
        let m = b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01";
        assert_eq!(parse(m), Err(DnsError::BadName));
    }

    #[test]
    fn impossible_counts_are_refused_before_parsing() {
        let mut m = A_EXAMPLE.to_vec();
        m[6] = 0xff;
        m[7] = 0xff;
        assert_eq!(parse(&m), Err(DnsError::Malformed));
        assert_eq!(parse(&[0x81; 11]), Err(DnsError::Malformed));
    }

    #[test]
    fn addresses_are_bounded() {
        let n = MAX_ADDRS + 10;
        let mut m = b"\x00\x01\x81\x80\x00\x01".to_vec();
        m.extend_from_slice(&(n as u16).to_be_bytes());
        m.extend_from_slice(b"\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01");
        for i in 0..n {
            m.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00");
            m.extend_from_slice(&(i as u16).to_be_bytes());
        }
        assert_eq!(parse(&m).unwrap().addrs.len(), MAX_ADDRS);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Ok(a) = parse(&data) {
                proptest::prop_assert!(a.query.len() <= MAX_NAME_LEN);
                proptest::prop_assert!(a.addrs.len() <= MAX_ADDRS);
            }
        }

        #[test]
        fn mutated_real_responses_never_panic(
            which in 0usize..4,
            edits in proptest::collection::vec((0usize..300, proptest::num::u8::ANY), 1..6),
        ) {
            let base = [A_EXAMPLE, AAAA_EXAMPLE, CNAME_GITHUB, CNAME_CHAIN_MICROSOFT][which];
            let mut m = base.to_vec();
            for (at, b) in edits {
                let i = at % m.len();
                m[i] = b;
            }
            if let Ok(a) = parse(&m) {
                proptest::prop_assert!(a.query.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
                for r in &a.addrs {
                    proptest::prop_assert!(r.ttl != u32::MAX);
                }
            }
        }
    }
}
