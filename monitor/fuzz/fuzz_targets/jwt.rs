#![no_main]
//! Arbitrary bytes → `decode_jwt_claims` and `classify` on credential headers: caps hold, fingerprints cover exactly the secret, no output echoes it.

use nhiwatch::protocol::credentials::{
    classify, decode_jwt_claims, CredentialKind, CredentialSummary, Fingerprinter, JwtClaims,
    MAX_AUD, MAX_CLAIM_CHARS, MAX_SCOPES,
};
use nhiwatch::protocol::Header;

const NOW: i64 = 1_735_700_000;
const NAMES: &[&[u8]] = &[
    b"authorization",
    b"Authorization",
    b"proxy-authorization",
    b"x-api-key",
    b"X-Goog-Api-Key",
    b"private-token",
    b"x-vault-token",
    b"cookie",
];
const SCHEMES: &[&[u8]] = &[
    b"",
    b"Bearer ",
    b"bearer\t ",
    b"token ",
    b"Basic ",
    b"AWS4-HMAC-SHA256 ",
    b"SSWS ",
    b"Custom ",
    b"Digest ",
];
/// Below this, a token can coincide with an innocent output string (`RS256`).
const ECHO_MIN: usize = 12;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

fn trim(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

fn check_claims(c: &JwtClaims) -> Vec<&str> {
    let strings: Vec<&str> = [&c.alg, &c.iss, &c.sub, &c.jti]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .chain(c.aud.iter().map(String::as_str))
        .chain(c.scope.iter().map(String::as_str))
        .collect();
    for s in &strings {
        assert!(s.chars().count() <= MAX_CLAIM_CHARS);
    }
    assert!(c.aud.len() <= MAX_AUD);
    assert!(c.scope.len() <= MAX_SCOPES);
    assert!(c.alg.is_some(), "a JWT without alg was accepted");
    if let (Some(e), Some(i)) = (c.exp, c.iat) {
        assert_eq!(c.ttl_seconds, e.checked_sub(i));
    } else {
        assert_eq!(c.ttl_seconds, None);
    }
    assert_eq!(c.expired, c.exp.is_some_and(|e| e < NOW));
    strings
}

fn no_echo(secret: &[u8], c: &CredentialSummary) {
    if secret.len() < ECHO_MIN {
        return;
    }
    // The fuzzer learns our fixed output text (field names, vendor names) and
    // feeds it back as a "secret": only text that came from the input counts.
    let skeleton = CredentialSummary {
        username: None,
        access_key_id: None,
        jwt: c.jwt.as_ref().map(|_| JwtClaims::default()),
        ..c.clone()
    };
    let fixed = [
        serde_json::to_vec(&skeleton).unwrap(),
        format!("{skeleton:?}").into_bytes(),
    ];
    if fixed.iter().any(|f| contains(f, secret)) {
        return;
    }
    let json = serde_json::to_vec(c).unwrap();
    let debug = format!("{c:?}");
    assert!(!contains(&json, secret), "secret echoed in JSON");
    assert!(
        !contains(debug.as_bytes(), secret),
        "secret echoed in Debug"
    );
    // Escaping in JSON/Debug could hide an echo: check the raw strings too.
    let mut strings: Vec<&str> = c.jwt.as_ref().map(check_claims).unwrap_or_default();
    strings.extend(c.username.as_deref());
    strings.extend(c.access_key_id.as_deref());
    for s in strings {
        assert!(!contains(s.as_bytes(), secret), "secret echoed in a field");
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(c) = decode_jwt_claims(data, NOW) {
        assert_eq!(data.iter().filter(|&&b| b == b'.').count(), 2);
        check_claims(&c);
        if data.len() >= ECHO_MIN {
            let json = serde_json::to_vec(&c).unwrap();
            assert!(!contains(&json, data), "token echoed in its claims");
        }
    }

    let fp = Fingerprinter::from_key([0x5a; 32]);
    let (sel, token) = data.split_at(data.len().min(2));
    let name = NAMES[usize::from(sel.first().copied().unwrap_or(0)) % NAMES.len()];
    let scheme = SCHEMES[usize::from(sel.get(1).copied().unwrap_or(0)) % SCHEMES.len()];
    let value = [scheme, token].concat();
    let out = classify(
        &[Header {
            name,
            value: &value,
        }],
        &fp,
        NOW,
    );
    assert!(out.len() <= 1);
    if name == b"cookie" {
        assert!(out.is_empty(), "cookies are out of scope");
    }
    for c in &out {
        let hex = c
            .fingerprint
            .strip_prefix("hmac-sha256:")
            .expect("fingerprint prefix");
        assert!(hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert!(c
            .username
            .as_ref()
            .is_none_or(|u| u.chars().count() <= MAX_CLAIM_CHARS));
        assert_eq!(c.kind == CredentialKind::Jwt, c.jwt.is_some());
        // The only free-text field besides the checked ones: it must be the header name.
        assert_eq!(c.header.as_bytes(), name.to_ascii_lowercase());
        let bearer =
            name.eq_ignore_ascii_case(b"authorization") && scheme.eq_ignore_ascii_case(b"bearer ");
        if bearer {
            // The fingerprint covers the token and nothing else, so every client sending it agrees.
            assert_eq!(c.fingerprint, fp.fingerprint(trim(token)));
        }
        no_echo(token, c);
        no_echo(&value, c);
    }
});
