#![no_main]
//! Arbitrary bytes → protocol::dns::parse_response (whole and as a captured prefix) → DestinationNames.

use nhiwatch::protocol::{
    dns::{parse_response, DnsError, MAX_ADDRS, MAX_NAME_LEN},
    names::DestinationNames,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let whole = parse_response(data, data.len());
    if let Ok(a) = &whole {
        assert!(!a.query.is_empty() && a.query.len() <= MAX_NAME_LEN);
        assert!(a
            .query
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
        assert!(a.addrs.len() <= MAX_ADDRS);
        // Parsing is a pure function of the bytes.
        assert_eq!(parse_response(data, data.len()).as_ref(), Ok(a));

        let mut names = DestinationNames::new(MAX_ADDRS);
        names.record_dns(1, 0, a);
        for r in &a.addrs {
            // Every address of a fresh answer resolves to the queried name.
            assert_eq!(names.resolve(1, r.ip, 0), Some(a.query.as_str()));
        }
        assert!(names.len().0 <= a.addrs.len() && names.len().1 <= a.addrs.len());
        assert_eq!(names.evictions(), 0);
    }
    // A capture cut short of the message is never half-read.
    if !data.is_empty() {
        let cut = parse_response(&data[..data.len() - 1], data.len());
        assert!(matches!(
            cut,
            Err(DnsError::Truncated | DnsError::Malformed | DnsError::NotResponse)
        ));
    }
    // The SNI path takes what a process passed: any string.
    if let Ok(s) = std::str::from_utf8(data) {
        let mut names = DestinationNames::new(2);
        if names.record_sni(1, 2, s) {
            let expected = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
            assert_eq!(names.sni(1, 2), Some(expected.as_str()));
            assert!(expected.parse::<std::net::IpAddr>().is_err());
        }
    }
});
