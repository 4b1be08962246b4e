//! Compact JWS bytes → non-secret claims (decoded, never verified), capped in size, with lifetime and expiry.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::JwtClaims;

/// Longest string kept from a claim, in characters.
pub const MAX_CLAIM_CHARS: usize = 256;
/// Most audiences kept.
pub const MAX_AUD: usize = 16;
/// Most scopes kept. SMART on FHIR launches ask for a dozen or two; beyond 64 the rest are
/// dropped (and `scope_truncated` says so, so that a detector never judges a partial list as
/// the whole grant).
pub const MAX_SCOPES: usize = 64;
/// A token valid for longer than this is long-lived. One day separates the
/// minutes-to-hours tokens of OAuth/OIDC/STS from the static ones that
/// outlive a working day (legacy service-account tokens, hand-minted keys).
pub const LONG_LIVED_AFTER_SECONDS: i64 = 24 * 3600;

/// base64url, padding tolerated: some issuers pad, RFC 7515 says they should not.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Claims of a compact JWS (`header.payload.signature`) whose header is a JSON
/// object with `alg` and whose payload is a JSON object. `None` for anything else,
/// which the caller then treats as an opaque token. The signature is not checked.
pub fn decode_jwt_claims(token: &[u8], now_unix: i64) -> Option<JwtClaims> {
    let (header, payload) = split(token)?;
    let header = json_object(header)?;
    let alg = header.get("alg")?.as_str()?;
    let payload = json_object(payload)?;

    let exp = number(payload.get("exp"));
    let iat = number(payload.get("iat"));
    // OAuth's `scope` is one space-separated string; some issuers (Okta, Azure AD `scp`) send
    // a list or a space-joined string under `scp`.
    let (scope, scope_truncated) = match payload.get("scope").or_else(|| payload.get("scp")) {
        Some(Value::String(s)) => scopes(s.split_ascii_whitespace()),
        Some(Value::Array(a)) => scopes(a.iter().filter_map(Value::as_str)),
        _ => (Vec::new(), false),
    };
    let aud = match payload.get("aud") {
        Some(Value::String(s)) => vec![cap(s)],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .take(MAX_AUD)
            .map(cap)
            .collect(),
        _ => Vec::new(),
    };
    Some(JwtClaims {
        alg: Some(cap(alg)),
        iss: string(payload.get("iss")),
        sub: string(payload.get("sub")),
        aud,
        exp,
        iat,
        nbf: number(payload.get("nbf")),
        jti: string(payload.get("jti")),
        scope,
        scope_truncated,
        ttl_seconds: match (exp, iat) {
            (Some(e), Some(i)) => e.checked_sub(i),
            _ => None,
        },
        expired: exp.is_some_and(|e| e < now_unix),
    })
}

/// Whether the token is long-lived: no `exp` → yes (it never expires);
/// `exp − iat` (or, without `iat`, the life left at `now`) beyond one day → yes;
/// `exp − iat` within a day → no; only `exp`, within a day of `now` → cannot tell.
pub fn long_lived(c: &JwtClaims, now_unix: i64) -> Option<bool> {
    let Some(exp) = c.exp else {
        return Some(true);
    };
    match c.ttl_seconds {
        Some(ttl) => Some(ttl > LONG_LIVED_AFTER_SECONDS),
        None => match exp.checked_sub(now_unix) {
            Some(left) if left > LONG_LIVED_AFTER_SECONDS => Some(true),
            _ => None,
        },
    }
}

/// Vendor and token type told by well-known issuers, from the decoded claims.
pub fn issuer(c: &JwtClaims) -> Option<(&'static str, &'static str)> {
    let iss = c.iss.as_deref()?;
    let host = iss
        .strip_prefix("https://")
        .map(|rest| rest.split('/').next().unwrap_or(rest));
    Some(match (iss, host) {
        // Legacy (secret-based) Kubernetes service-account tokens: they never expire.
        ("kubernetes/serviceaccount", _) => ("kubernetes", "kubernetes_service_account_token"),
        (_, Some("kubernetes.default.svc" | "kubernetes.default.svc.cluster.local")) => {
            ("kubernetes", "kubernetes_service_account_token")
        }
        (_, Some("token.actions.githubusercontent.com")) => ("github", "github_actions_oidc_token"),
        (_, Some("accounts.google.com")) => ("google", "google_id_token"),
        (_, Some("sts.windows.net" | "login.microsoftonline.com")) => {
            ("microsoft", "entra_id_token")
        }
        (_, Some(h)) if h.starts_with("cognito-idp.") && h.ends_with(".amazonaws.com") => {
            ("aws", "cognito_token")
        }
        (_, Some(h)) if h.starts_with("oidc.eks.") && h.ends_with(".amazonaws.com") => {
            ("kubernetes", "kubernetes_service_account_token")
        }
        _ => return None,
    })
}

/// Header and payload segments of exactly three base64url segments.
fn split(token: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = token.split(|&b| b == b'.');
    let header = parts.next()?;
    let payload = parts.next()?;
    let signature = parts.next()?;
    if parts.next().is_some() || header.is_empty() || payload.is_empty() {
        return None;
    }
    let b64url = |s: &[u8]| {
        s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    };
    (b64url(header) && b64url(payload) && b64url(signature)).then_some((header, payload))
}

fn json_object(segment: &[u8]) -> Option<Map<String, Value>> {
    let bytes = B64URL.decode(segment).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn cap(s: &str) -> String {
    s.chars().take(MAX_CLAIM_CHARS).collect()
}

fn string(v: Option<&Value>) -> Option<String> {
    v?.as_str().map(cap)
}

/// At most `MAX_SCOPES` distinct non-empty scopes, each capped; true when some were left out
/// or cut short (a cut scope is kept whole-or-not: it is dropped, never judged half-read).
fn scopes<'a>(items: impl Iterator<Item = &'a str>) -> (Vec<String>, bool) {
    let mut out: Vec<String> = Vec::new();
    let mut truncated = false;
    for s in items.map(str::trim).filter(|s| !s.is_empty()) {
        if s.chars().count() > MAX_CLAIM_CHARS || out.len() == MAX_SCOPES {
            truncated = true;
            continue;
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    (out, truncated)
}

/// NumericDate: integer seconds, or a float (some issuers send fractions).
fn number(v: Option<&Value>) -> Option<i64> {
    let n = v?.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // `as` saturates; only keep what fits without saturating.
    (f.is_finite() && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A compact JWS with the given header and payload JSON and a fake signature.
    pub(crate) fn make_jwt(header: &str, payload: &str, sig: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.{sig}", e.encode(header), e.encode(payload))
    }

    const SIG: &str = "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn string_aud_and_scope() {
        let t = make_jwt(
            r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#,
            r#"{"iss":"https://auth.example.com/","sub":"svc-billing","aud":"https://api.example.com","exp":1700003600,"iat":1700000000,"nbf":1700000000,"jti":"abc-123","scope":"read:patients write:notes"}"#,
            SIG,
        );
        let c = decode_jwt_claims(t.as_bytes(), 1700000100).unwrap();
        assert_eq!(c.alg.as_deref(), Some("RS256"));
        assert_eq!(c.iss.as_deref(), Some("https://auth.example.com/"));
        assert_eq!(c.sub.as_deref(), Some("svc-billing"));
        assert_eq!(c.aud, vec!["https://api.example.com".to_string()]);
        assert_eq!(
            (c.exp, c.iat, c.nbf),
            (Some(1700003600), Some(1700000000), Some(1700000000))
        );
        assert_eq!(c.jti.as_deref(), Some("abc-123"));
        assert_eq!(c.scope, ["read:patients", "write:notes"]);
        assert_eq!(c.ttl_seconds, Some(3600));
        assert!(!c.expired);
        assert_eq!(long_lived(&c, 1700000100), Some(false));
        // One second after exp it is expired.
        assert!(decode_jwt_claims(t.as_bytes(), 1700003601).unwrap().expired);
        assert!(!decode_jwt_claims(t.as_bytes(), 1700003600).unwrap().expired);
    }

    #[test]
    fn aud_array_and_scp_array() {
        let t = make_jwt(
            r#"{"alg":"ES256"}"#,
            r#"{"aud":["api://a","api://b",7,"api://c"],"scp":["openid","profile","email"],"exp":1.7000036e9,"iat":1700000000}"#,
            SIG,
        );
        let c = decode_jwt_claims(t.as_bytes(), 0).unwrap();
        assert_eq!(c.aud, vec!["api://a", "api://b", "api://c"]);
        assert_eq!(c.scope, ["openid", "profile", "email"]);
        assert!(!c.scope_truncated);
        assert_eq!(c.exp, Some(1700003600));
    }

    #[test]
    fn caps_strings_and_audiences() {
        let long = "é".repeat(1000);
        let auds: Vec<String> = (0..40).map(|i| format!("\"aud-{i}\"")).collect();
        let scp: Vec<String> = (0..200).map(|i| format!("\"scope{i}\"")).collect();
        let t = make_jwt(
            &format!(r#"{{"alg":"{long}"}}"#),
            &format!(
                r#"{{"sub":"{long}","aud":[{}],"scp":[{}]}}"#,
                auds.join(","),
                scp.join(",")
            ),
            SIG,
        );
        let c = decode_jwt_claims(t.as_bytes(), 0).unwrap();
        assert_eq!(c.alg.unwrap().chars().count(), MAX_CLAIM_CHARS);
        assert_eq!(c.sub.unwrap().chars().count(), MAX_CLAIM_CHARS);
        assert_eq!(c.aud.len(), MAX_AUD);
        assert_eq!(c.scope.len(), MAX_SCOPES);
        assert!(c.scope_truncated);
        // A scope longer than the cap is left out, not cut: half a scope is another scope.
        let t = make_jwt(
            r#"{"alg":"none"}"#,
            &format!(r#"{{"scope":"  a {long}  b a "}}"#),
            SIG,
        );
        let c = decode_jwt_claims(t.as_bytes(), 0).unwrap();
        assert_eq!(
            (c.scope, c.scope_truncated),
            (vec!["a".into(), "b".into()], true)
        );
    }

    #[test]
    fn lifetime_rules() {
        let claims = |p: &str| {
            decode_jwt_claims(make_jwt(r#"{"alg":"HS256"}"#, p, SIG).as_bytes(), 1000).unwrap()
        };
        // No exp: never expires.
        let c = claims(r#"{"sub":"x"}"#);
        assert_eq!(
            (c.exp, c.expired, long_lived(&c, 1000)),
            (None, false, Some(true))
        );
        // 90 days.
        let c = claims(r#"{"iat":0,"exp":7776000}"#);
        assert_eq!(long_lived(&c, 1000), Some(true));
        // Exactly one day is still short.
        let c = claims(r#"{"iat":0,"exp":86400}"#);
        assert_eq!(long_lived(&c, 1000), Some(false));
        // Only exp: a year left is long, an hour left cannot tell.
        assert_eq!(long_lived(&claims(r#"{"exp":31536000}"#), 1000), Some(true));
        assert_eq!(long_lived(&claims(r#"{"exp":4600}"#), 1000), None);
        // Absurd values do not overflow.
        let c = claims(r#"{"iat":-9223372036854775808,"exp":9223372036854775807}"#);
        assert_eq!(c.ttl_seconds, None);
        assert_eq!(long_lived(&c, i64::MIN), None);
    }

    #[test]
    fn kubernetes_legacy_token() {
        let t = make_jwt(
            r#"{"alg":"RS256","kid":""}"#,
            r#"{"iss":"kubernetes/serviceaccount","kubernetes.io/serviceaccount/namespace":"default","sub":"system:serviceaccount:default:builder"}"#,
            SIG,
        );
        let c = decode_jwt_claims(t.as_bytes(), 0).unwrap();
        assert_eq!(
            issuer(&c),
            Some(("kubernetes", "kubernetes_service_account_token"))
        );
        assert_eq!(long_lived(&c, 0), Some(true));
    }

    #[test]
    fn malformed_is_none() {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for bad in [
            "".to_string(),
            "..".to_string(),
            "abc".to_string(),
            "a.b".to_string(),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0".to_string(),
            format!(
                "{}.{}.sig.extra",
                e.encode(r#"{"alg":"none"}"#),
                e.encode("{}")
            ),
            // header without alg
            make_jwt(r#"{"typ":"JWT"}"#, "{}", SIG),
            // alg not a string
            make_jwt(r#"{"alg":1}"#, "{}", SIG),
            // payload not an object
            make_jwt(r#"{"alg":"HS256"}"#, "[1,2]", SIG),
            make_jwt(r#"{"alg":"HS256"}"#, "not json", SIG),
            // not base64url
            "eyJ!.eyJ.x".to_string(),
            format!("{}.{}.si+g/", e.encode(r#"{"alg":"none"}"#), e.encode("{}")),
            // truncated header JSON
            format!(
                "{}.{}.x",
                &e.encode(r#"{"alg":"HS256"}"#)[..10],
                e.encode("{}")
            ),
        ] {
            assert_eq!(decode_jwt_claims(bad.as_bytes(), 0), None, "{bad}");
        }
        // Unsigned (`alg: none`) tokens still decode: the claims are what was sent.
        assert!(decode_jwt_claims(
            format!("{}.{}.", e.encode(r#"{"alg":"none"}"#), e.encode("{}")).as_bytes(),
            0
        )
        .is_some());
    }
}
