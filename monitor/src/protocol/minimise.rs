//! Request heads → request summaries: method, clean authority, templated path, query keys, gRPC method, credentials.

use super::credentials::{self, Fingerprinter};
use super::{GrpcMethod, RequestHead, RequestSummary};

/// Longest method kept; anything longer or odder is `OTHER`.
pub const MAX_METHOD: usize = 16;
pub const MAX_AUTHORITY: usize = 255;
pub const MAX_QUERY_KEYS: usize = 32;
pub const MAX_QUERY_KEY_CHARS: usize = 64;
pub const MAX_TEMPLATE: usize = 512;
pub const MAX_SEGMENTS: usize = 32;
/// A segment longer than this is an identifier, whatever it looks like.
const MAX_WORD: usize = 40;
const ID: &str = "{id}";
const ELLIPSIS: &str = "/…";

/// Reduces a request head to what may be kept (see [`RequestSummary`]).
pub fn summarise(head: &RequestHead<'_>, fp: &Fingerprinter, now_unix: i64) -> RequestSummary {
    let method = method(head.method);
    let mut authority = head.authority.and_then(clean_authority);
    let target = head.path;
    // Drop the fragment first: it never reaches servers on purpose, and must not
    // be read as part of the query.
    let target = target.split(|&b| b == b'#').next().unwrap_or_default();
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (target.get(..q).unwrap_or_default(), target.get(q + 1..)),
        None => (target, None),
    };
    let path = if method == "CONNECT" && !path.starts_with(b"/") {
        // authority-form: the target *is* the authority.
        authority = authority.or_else(|| clean_authority(path));
        &b""[..]
    } else if let Some(rest) = absolute_form(path) {
        // absolute-form (to proxies): `http://host/path`.
        let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        authority = authority.or_else(|| rest.get(..slash).and_then(clean_authority));
        rest.get(slash..).unwrap_or_default()
    } else {
        path
    };

    let grpc = grpc_method(head, path);
    let path = match &grpc {
        Some(g) => format!("/{}/{}", g.service, g.method),
        None => template_bytes(path),
    };
    RequestSummary {
        method,
        authority,
        path,
        query_keys: query.map(query_keys).unwrap_or_default(),
        grpc,
        credentials: credentials::classify(head.headers, fp, now_unix),
    }
}

/// The path with every identifier-like segment replaced by `{id}`.
pub fn template_path(raw_path_without_query: &str) -> String {
    template_bytes(raw_path_without_query.as_bytes())
}

fn method(m: &[u8]) -> String {
    // Letters only: a method is a word, never a place for data.
    if !m.is_empty()
        && m.len() <= MAX_METHOD
        && m.iter()
            .all(|&b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
    {
        String::from_utf8_lossy(m).to_ascii_uppercase()
    } else {
        "OTHER".to_string()
    }
}

fn clean_authority(raw: &[u8]) -> Option<String> {
    // Userinfo (`user:password@`) is a credential, never a destination.
    let host = match raw.iter().rposition(|&b| b == b'@') {
        Some(at) => raw.get(at + 1..)?,
        None => raw,
    };
    let ok =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']' | b'_');
    (!host.is_empty() && host.len() <= MAX_AUTHORITY && host.iter().all(ok))
        .then(|| String::from_utf8_lossy(host).to_ascii_lowercase())
}

fn absolute_form(path: &[u8]) -> Option<&[u8]> {
    let sep = path.windows(3).position(|w| w == b"://")?;
    let scheme = path.get(..sep)?;
    (!scheme.is_empty()
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
    .then(|| path.get(sep + 3..))
    .flatten()
}

fn grpc_method(head: &RequestHead<'_>, path: &[u8]) -> Option<GrpcMethod> {
    let grpc = head.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case(b"content-type")
            && h.value.len() >= 16
            && h.value
                .get(..16)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"application/grpc"))
    });
    if !grpc {
        return None;
    }
    let rest = path.strip_prefix(b"/")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let (service, method) = (rest.get(..slash)?, rest.get(slash + 1..)?);
    // Protobuf identifiers: service and method names are code, not data.
    let ident = |s: &[u8], dots: bool| {
        !s.is_empty()
            && s.len() <= 255
            && s.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || (dots && b == b'.'))
    };
    (ident(service, true) && ident(method, false)).then(|| GrpcMethod {
        service: String::from_utf8_lossy(service).into_owned(),
        method: String::from_utf8_lossy(method).into_owned(),
    })
}

fn query_keys(query: &[u8]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for pair in query.split(|&b| b == b'&') {
        if keys.len() == MAX_QUERY_KEYS {
            break;
        }
        let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
        if key.is_empty() {
            continue;
        }
        // Form encoding: `+` is a space.
        let key: Vec<u8> = key
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let decoded = urlencoding::decode_binary(&key);
        // A key can itself be data (`?8812`, `?sk_live_…`): same rules as a path segment.
        let mut kept = match segment(&decoded, false) {
            Segment::Keep => String::from_utf8_lossy(&decoded).into_owned(),
            Segment::Id => ID.to_string(),
            Segment::Affixed(s) => s,
        };
        if kept.len() > MAX_QUERY_KEY_CHARS {
            kept = ID.to_string();
        }
        if !keys.contains(&kept) {
            keys.push(kept);
        }
    }
    keys
}

fn template_bytes(path: &[u8]) -> String {
    let mut out = String::new();
    // FHIR: the segment after a resource type (`Patient`) or `_history` is an id,
    // whatever it looks like.
    let mut id_next = false;
    for (i, raw) in path.split(|&b| b == b'/').enumerate() {
        if i > MAX_SEGMENTS {
            out.push_str(ELLIPSIS);
            break;
        }
        let decoded = urlencoding::decode_binary(raw);
        let kind = segment(&decoded, id_next);
        let piece = match &kind {
            Segment::Keep => std::str::from_utf8(&decoded).unwrap_or(ID),
            Segment::Id => ID,
            Segment::Affixed(s) => s.as_str(),
        };
        let sep = usize::from(i > 0);
        if out.len() + sep + piece.len() > MAX_TEMPLATE - ELLIPSIS.len() {
            out.push_str(ELLIPSIS);
            break;
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(piece);
        id_next = matches!(kind, Segment::Keep)
            && (resource_type(&decoded) || decoded.as_ref() == b"_history");
    }
    out
}

enum Segment {
    Keep,
    Id,
    /// `{id}` with a kept suffix: `{id}:generateContent`, `{id}.json`.
    Affixed(String),
}

fn segment(s: &[u8], id_next: bool) -> Segment {
    if s.is_empty() {
        return Segment::Keep;
    }
    if id_next {
        // `Patient/_search`, `Patient/$everything`: operations are not ids.
        let op = matches!(s.first(), Some(b'_' | b'$'))
            && s.len() <= MAX_WORD
            && s.iter()
                .skip(1)
                .all(|b| b.is_ascii_alphabetic() || *b == b'-' || *b == b'_');
        return if op { Segment::Keep } else { Segment::Id };
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-._~$:!,;=+*'()[]@".contains(b);
    if !s.iter().all(allowed) {
        return Segment::Id;
    }
    if s.contains(&b'@') {
        // E-mail addresses, `user@host`: people, whatever follows.
        return Segment::Id;
    }
    if version(s) {
        return Segment::Keep;
    }
    // Custom methods (Google AIP-136): `models/gemini-1.5-pro:generateContent`.
    if let Some(colon) = s.iter().rposition(|&b| b == b':') {
        let (base, verb) = (
            s.get(..colon).unwrap_or_default(),
            s.get(colon + 1..).unwrap_or_default(),
        );
        if !base.is_empty() && word(verb) {
            return match identifier(base) {
                true => Segment::Affixed(format!("{ID}:{}", String::from_utf8_lossy(verb))),
                false if base.contains(&b':') => Segment::Id,
                false => Segment::Keep,
            };
        }
    }
    // File extensions: `8812.json` → `{id}.json`.
    if let Some(dot) = s.iter().rposition(|&b| b == b'.') {
        let (base, ext) = (
            s.get(..dot).unwrap_or_default(),
            s.get(dot + 1..).unwrap_or_default(),
        );
        if !base.is_empty()
            && (1..=5).contains(&ext.len())
            && ext.iter().all(u8::is_ascii_alphabetic)
        {
            return match identifier(base) {
                true => Segment::Affixed(format!("{ID}.{}", String::from_utf8_lossy(ext))),
                false => Segment::Keep,
            };
        }
    }
    if identifier(s) {
        Segment::Id
    } else {
        Segment::Keep
    }
}

/// Whether a segment of allowed characters names a thing rather than a kind of thing.
fn identifier(s: &[u8]) -> bool {
    let digits = s.iter().filter(|b| b.is_ascii_digit()).count();
    let longest_digit_run = s
        .split(|b| !b.is_ascii_digit())
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    let upper = s.iter().filter(|b| b.is_ascii_uppercase()).count();
    let lower = s.iter().filter(|b| b.is_ascii_lowercase()).count();
    s.len() > MAX_WORD
        || digits == s.len()
        // Numbers, dates (`2024-05-03`), phone numbers: never three digits in a row.
        || longest_digit_run >= 3
        || (digits > 0 && s.len() >= 6)
        || (s.len() >= 8 && digits > 0 && s.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-'))
        || s.contains(&b'@')
        // Random base64: letters of both cases in roughly equal measure, unlike camelCase words.
        || (s.len() >= 16 && upper * 4 >= s.len() && lower * 4 >= s.len())
}

/// API versions: `v1`, `v2beta1`, `v1.0`, `v1p1beta1`, and FHIR releases.
fn version(s: &[u8]) -> bool {
    // HAPI FHIR serves its releases under `baseR4`, `baseDstu3`.
    let release = s.strip_prefix(b"base").unwrap_or(s);
    if matches!(
        release,
        b"R4" | b"R4B" | b"R5" | b"R6" | b"STU3" | b"DSTU2" | b"DSTU1" | b"Dstu3" | b"Dstu2"
    ) {
        return true;
    }
    let Some(rest) = s.strip_prefix(b"v").or_else(|| s.strip_prefix(b"V")) else {
        return false;
    };
    if s.len() > 12 || !rest.first().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    // Runs of at most two digits, separated by letters or dots.
    rest.split(|b| !b.is_ascii_digit())
        .all(|run| run.len() <= 2)
        && rest
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || *b == b'.')
}

/// A custom-method verb or a plain word: letters only, bounded.
fn word(s: &[u8]) -> bool {
    !s.is_empty() && s.len() <= MAX_WORD && s.iter().all(u8::is_ascii_alphabetic)
}

/// A FHIR resource type: `Patient`, `MedicationRequest` (capitalised, letters only).
fn resource_type(s: &[u8]) -> bool {
    s.len() >= 2
        && s.first().is_some_and(u8::is_ascii_uppercase)
        && s.iter().all(u8::is_ascii_alphabetic)
        && s.iter().any(u8::is_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::credentials::CredentialKind;
    use crate::protocol::{Header, Protocol};
    use proptest::prelude::*;

    fn fp() -> Fingerprinter {
        Fingerprinter::from_key([3; 32])
    }

    fn head<'a>(
        method: &'a [u8],
        authority: Option<&'a [u8]>,
        path: &'a [u8],
        headers: &'a [Header<'a>],
    ) -> RequestHead<'a> {
        RequestHead {
            protocol: Protocol::Http1,
            method,
            authority,
            path,
            headers,
        }
    }

    #[test]
    fn path_templates() {
        let cases = [
            // FHIR
            (
                "/fhir/R4/Patient/8812/Observation",
                "/fhir/R4/Patient/{id}/Observation",
            ),
            ("/Patient/pat-7f3a", "/Patient/{id}"),
            ("/Patient/abc", "/Patient/{id}"),
            ("/fhir/Patient/_search", "/fhir/Patient/_search"),
            ("/Patient/8812/$everything", "/Patient/{id}/$everything"),
            ("/Patient/$match", "/Patient/$match"),
            (
                "/baseR4/Patient/8812/_history/3",
                "/baseR4/Patient/{id}/_history/{id}",
            ),
            ("/Observation/_history/abc", "/Observation/_history/{id}"),
            (
                "/fhir/STU3/MedicationRequest/0f8fad5b-d9cb-469f-a165-70867728950e",
                "/fhir/STU3/MedicationRequest/{id}",
            ),
            ("/metadata", "/metadata"),
            // LLM APIs
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/messages", "/v1/messages"),
            ("/v1/embeddings", "/v1/embeddings"),
            (
                "/openai/deployments/my-gpt4/chat/completions",
                "/openai/deployments/{id}/chat/completions",
            ),
            (
                "/v1beta/models/gemini-1.5-pro:generateContent",
                "/v1beta/models/{id}:generateContent",
            ),
            ("/v1/models/gpt-4o", "/v1/models/{id}"),
            (
                "/v1/threads/thread_abc123XYZdef456ghi/runs",
                "/v1/threads/{id}/runs",
            ),
            (
                "/v2beta1/projects/acme/agent:detectIntent",
                "/v2beta1/projects/acme/agent:detectIntent",
            ),
            // GitHub
            (
                "/repos/owner/repo/issues/123",
                "/repos/owner/repo/issues/{id}",
            ),
            (
                "/repos/owner/repo/commits/9fceb02d0ae598e95dc970b74767f19372d61af8",
                "/repos/owner/repo/commits/{id}",
            ),
            // S3
            ("/bucket/key.txt", "/bucket/key.txt"),
            ("/bucket/2024-05-03/report.csv", "/bucket/{id}/report.csv"),
            ("/files/8812.json", "/files/{id}.json"),
            // Generic identifiers
            ("/users/alice@example.com", "/users/{id}"),
            ("/users/alice%40example.com/profile", "/users/{id}/profile"),
            ("/orders/ord_1Nv0FGQ9RKHgCVdK", "/orders/{id}"),
            ("/t/QWxhZGRpbjpvcGVuU2VzYW1lQWxhZGRpbg", "/t/{id}"),
            // Hex needs a digit: letters-only hex is a word (`facade`, `deadbeef`).
            ("/a/deadbeefcafe", "/a/deadbeefcafe"),
            ("/a/d0c5", "/a/d0c5"),
            ("/items/%31%32%33", "/items/{id}"),
            ("/x/ab%20cd", "/x/{id}"),
            ("/x/caf%C3%A9", "/x/{id}"),
            ("/api/v1.0/status", "/api/v1.0/status"),
            ("/oauth/token", "/oauth/token"),
            (
                "/apis/apps/v1/namespaces/default/deployments",
                "/apis/apps/v1/namespaces/default/deployments",
            ),
            ("/", "/"),
            ("", ""),
            ("*", "*"),
            ("/a//b/", "/a//b/"),
            ("/getAccessTokenForUser", "/getAccessTokenForUser"),
            ("/aBcDeFgHiJkLmNoPqR", "/{id}"),
        ];
        for (raw, want) in cases {
            assert_eq!(template_path(raw), want, "{raw}");
        }
    }

    #[test]
    fn template_caps() {
        let many = "/a".repeat(100);
        let t = template_path(&many);
        assert_eq!(t.matches('/').count(), MAX_SEGMENTS + 1);
        assert!(t.ends_with("/…"));
        let long = "/abcdefghijklmnopqrstuvwxyz-abcdefghijkl".repeat(30);
        let t = template_path(&long);
        assert!(t.len() <= MAX_TEMPLATE && t.ends_with("/…"), "{}", t.len());
    }

    #[test]
    fn summary_of_an_azure_openai_call() {
        let headers = [
            Header {
                name: b"Content-Type",
                value: b"application/json",
            },
            Header {
                name: b"api-key",
                value: b"0123456789abcdef0123456789abcdef",
            },
        ];
        let h = head(
            b"POST",
            Some(b"Contoso.OpenAI.Azure.com"),
            b"/openai/deployments/my-gpt4/chat/completions?api-version=2024-02-01&api-version=2024-06-01&user=alice#frag",
            &headers,
        );
        let s = summarise(&h, &fp(), 0);
        assert_eq!(s.method, "POST");
        assert_eq!(s.authority.as_deref(), Some("contoso.openai.azure.com"));
        assert_eq!(s.path, "/openai/deployments/{id}/chat/completions");
        assert_eq!(s.query_keys, vec!["api-version", "user"]);
        assert_eq!(s.grpc, None);
        assert_eq!(s.credentials.len(), 1);
        assert_eq!(s.credentials[0].kind, CredentialKind::ApiKey);
        let json = serde_json::to_string(&s).unwrap();
        for leak in ["2024-02-01", "alice", "frag", "0123456789abcdef"] {
            assert!(
                !json.contains(leak) && !format!("{s:?}").contains(leak),
                "{leak} in {json}"
            );
        }
    }

    #[test]
    fn query_keys_rules() {
        let h = |p: &'static [u8]| summarise(&head(b"GET", None, p, &[]), &fp(), 0).query_keys;
        assert_eq!(
            h(b"/search?q=secret&page%5Bsize%5D=10&q=again&&=x&flag"),
            vec!["q", "page[size]", "flag"]
        );
        assert_eq!(
            h(b"/x?8812=1&sk_live_FAKEfakeFAKEfake0000&token=abc"),
            vec!["{id}", "token"]
        );
        assert_eq!(h(b"/x?first+name=bob"), vec!["{id}"]);
        let many: String = (0..100)
            .map(|i| format!("k{}=v&", (b'a' + (i % 26) as u8) as char))
            .collect::<String>();
        let many = format!(
            "/x?{many}{}",
            (0..100)
                .map(|i| format!(
                    "key_{}{}=1&",
                    (b'a' + (i / 26) as u8) as char,
                    (b'a' + (i % 26) as u8) as char
                ))
                .collect::<String>()
        );
        let keys = summarise(&head(b"GET", None, many.as_bytes(), &[]), &fp(), 0).query_keys;
        assert_eq!(keys.len(), MAX_QUERY_KEYS);
        assert!(keys.iter().all(|k| k.len() <= MAX_QUERY_KEY_CHARS));
        assert!(h(b"/x").is_empty() && h(b"/x?").is_empty());
    }

    #[test]
    fn methods_and_authorities() {
        let s = |m: &'static [u8], a: Option<&'static [u8]>| {
            let r = summarise(&head(m, a, b"/", &[]), &fp(), 0);
            (r.method, r.authority)
        };
        assert_eq!(
            s(b"get", Some(b"API.Example.COM:8443")),
            ("GET".into(), Some("api.example.com:8443".into()))
        );
        assert_eq!(
            s(b"PROPFIND", Some(b"user:pa55w0rd@db.internal")),
            ("PROPFIND".into(), Some("db.internal".into()))
        );
        assert_eq!(
            s(b"G3T", Some(b"[::1]:443")),
            ("OTHER".into(), Some("[::1]:443".into()))
        );
        assert_eq!(
            s(b"AVERYLONGMETHODNAME", Some(b"bad host")),
            ("OTHER".into(), None)
        );
        assert_eq!(s(b"", Some(b"")), ("OTHER".into(), None));
        assert_eq!(s(b"GET", Some("h\u{e9}llo".as_bytes())).1, None);
        let too_long = vec![b'a'; 256];
        let r = summarise(&head(b"GET", Some(&too_long), b"/", &[]), &fp(), 0);
        assert_eq!(r.authority, None);
        // Proxy forms.
        let r = summarise(
            &head(
                b"GET",
                None,
                b"http://user:pw@Proxy.Example:3128/v1/items/12345?k=v",
                &[],
            ),
            &fp(),
            0,
        );
        assert_eq!(
            (r.authority.as_deref(), r.path.as_str(), r.query_keys.len()),
            (Some("proxy.example:3128"), "/v1/items/{id}", 1)
        );
        let r = summarise(
            &head(b"CONNECT", None, b"api.openai.com:443", &[]),
            &fp(),
            0,
        );
        assert_eq!(
            (r.authority.as_deref(), r.path.as_str()),
            (Some("api.openai.com:443"), "")
        );
    }

    #[test]
    fn grpc_methods() {
        let headers = [
            Header {
                name: b"content-type",
                value: b"application/grpc+proto",
            },
            Header {
                name: b"te",
                value: b"trailers",
            },
        ];
        let mut h = head(
            b"POST",
            Some(b"localhost:50051"),
            b"/helloworld.v1.Greeter/SayHello",
            &headers,
        );
        h.protocol = Protocol::Http2;
        let s = summarise(&h, &fp(), 0);
        assert_eq!(
            s.grpc,
            Some(GrpcMethod {
                service: "helloworld.v1.Greeter".into(),
                method: "SayHello".into()
            })
        );
        assert_eq!(s.path, "/helloworld.v1.Greeter/SayHello");
        // Not gRPC without the content type, and not a method path with more segments.
        let s = summarise(
            &head(b"POST", None, b"/helloworld.v1.Greeter/SayHello", &[]),
            &fp(),
            0,
        );
        assert_eq!(s.grpc, None);
        let s = summarise(&head(b"POST", None, b"/a/b/12345", &headers), &fp(), 0);
        assert_eq!((s.grpc, s.path.as_str()), (None, "/a/b/{id}"));
    }

    #[test]
    fn credentials_are_classified() {
        let headers = [Header {
            name: b"authorization",
            value: b"Bearer ghp_FAKEfake0123456789FAKEfake0123456789",
        }];
        let s = summarise(
            &head(b"GET", Some(b"api.github.com"), b"/user", &headers),
            &fp(),
            0,
        );
        assert_eq!(s.credentials.len(), 1);
        assert_eq!(s.credentials[0].token_type, Some("github_classic_pat"));
    }

    fn longest_digit_run(s: &str) -> usize {
        s.split(|c: char| !c.is_ascii_digit())
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    proptest! {
        #[test]
        fn template_never_panics_nor_keeps_numbers(path in proptest::collection::vec(any::<u8>(), 0..600)) {
            let t = template_bytes(&path);
            prop_assert!(t.len() <= MAX_TEMPLATE);
            prop_assert!(longest_digit_run(&t) < 3, "{t}");
        }

        #[test]
        fn digit_bearing_segments_are_templated(segs in proptest::collection::vec("[a-zA-Z0-9%._:@-]{0,12}[0-9]{1,6}[a-zA-Z0-9%._:@-]{0,12}", 1..10)) {
            let path = format!("/{}", segs.join("/"));
            let t = template_path(&path);
            prop_assert!(longest_digit_run(&t) < 3, "{path} → {t}");
        }

        #[test]
        fn summarise_never_panics(
            method in proptest::collection::vec(any::<u8>(), 0..20),
            authority in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            path in proptest::collection::vec(any::<u8>(), 0..300),
            names in proptest::collection::vec(prop_oneof![Just(b"authorization".to_vec()), Just(b"x-api-key".to_vec()), Just(b"content-type".to_vec()), proptest::collection::vec(any::<u8>(), 0..12)], 0..4),
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 4),
        ) {
            let headers: Vec<Header<'_>> = names.iter().zip(&values).map(|(n, v)| Header { name: n, value: v }).collect();
            let s = summarise(&head(&method, authority.as_deref(), &path, &headers), &fp(), 0);
            prop_assert!(s.method.len() <= MAX_METHOD || s.method == "OTHER");
            prop_assert!(s.authority.as_ref().is_none_or(|a| a.len() <= MAX_AUTHORITY));
            prop_assert!(s.query_keys.len() <= MAX_QUERY_KEYS);
            prop_assert!(s.query_keys.iter().all(|k| k.len() <= MAX_QUERY_KEY_CHARS && longest_digit_run(k) < 3));
            prop_assert!(s.grpc.is_some() || longest_digit_run(&s.path) < 3);
        }
    }
}
