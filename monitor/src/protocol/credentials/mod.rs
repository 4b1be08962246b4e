//! Request headers → credential summaries: kind, vendor hint, lifetime, non-secret claims and a keyed fingerprint.

mod fingerprint;
mod jwt;
mod vendor;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::Serialize;

use super::Header;
pub use fingerprint::{FingerprintError, Fingerprinter, KEY_FILE};
pub use jwt::{decode_jwt_claims, LONG_LIVED_AFTER_SECONDS, MAX_AUD, MAX_CLAIM_CHARS, MAX_SCOPES};
use vendor::Format;

/// What is kept of one credential. The secret itself never leaves the parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialSummary {
    pub kind: CredentialKind,
    /// Header that carried it, lowercase (`authorization`, `x-api-key`, …).
    pub header: String,
    /// Issuer of a recognised token format (`github`, `slack`, `stripe`, `openai`, `anthropic`, `google`, `aws`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<&'static str>,
    /// Recognised format (`github_classic_pat`, `aws_access_key`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    /// Static/long-term (true) or short-lived (false); None when it cannot be told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_lived: Option<bool>,
    /// `hmac-sha256:` + 32 hex digits of HMAC-SHA-256(deployment key, secret).
    pub fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtClaims>,
    /// Basic auth: the user name only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// AWS SigV4: the access key id (an identifier AWS itself logs, not a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// Bearer JWT (claims decoded without verification).
    Jwt,
    /// Bearer (or `token`) with an opaque value.
    Bearer,
    Basic,
    /// A key in an API-key header (`x-api-key`, `api-key`, `x-goog-api-key`, …).
    ApiKey,
    AwsSigv4,
}

impl CredentialKind {
    pub const ALL: [CredentialKind; 5] = [
        CredentialKind::Jwt,
        CredentialKind::Bearer,
        CredentialKind::Basic,
        CredentialKind::ApiKey,
        CredentialKind::AwsSigv4,
    ];

    /// The serialized name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            CredentialKind::Jwt => "jwt",
            CredentialKind::Bearer => "bearer",
            CredentialKind::Basic => "basic",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::AwsSigv4 => "aws_sigv4",
        }
    }
}

/// Non-secret JWT claims. Strings are length-capped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct JwtClaims {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aud: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Granted scopes (`scope`, space-separated, or `scp`), distinct, at most `MAX_SCOPES`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Some scopes were left out (over `MAX_SCOPES`, or one longer than `MAX_CLAIM_CHARS`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub scope_truncated: bool,
    /// exp − iat, when both are present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// exp before the time the request was seen.
    pub expired: bool,
}

/// Headers whose whole value is a key, with the vendor the header itself implies
/// (a recognised token prefix overrides it).
const API_KEY_HEADERS: &[(&str, Option<&str>)] = &[
    ("x-api-key", None),
    ("api-key", None),
    ("apikey", None),
    ("x-api-token", None),
    ("x-access-token", None),
    ("x-auth-token", None),
    ("x-goog-api-key", Some("google")),
    ("x-functions-key", Some("microsoft")),
    ("ocp-apim-subscription-key", Some("microsoft")),
    ("private-token", Some("gitlab")),
    ("job-token", Some("gitlab")),
    ("x-vault-token", Some("hashicorp")),
    ("x-consul-token", Some("hashicorp")),
    ("x-nomad-token", Some("hashicorp")),
    ("dd-api-key", Some("datadog")),
    ("x-dd-api-key", Some("datadog")),
    ("x-shopify-access-token", Some("shopify")),
    ("x-algolia-api-key", Some("algolia")),
    ("x-honeycomb-team", Some("honeycomb")),
];

/// Schemes whose value is a per-request proof or a handshake step, not a
/// reusable credential: a fingerprint of it would differ on every request.
const PROOF_SCHEMES: &[&str] = &[
    "digest",
    "negotiate",
    "ntlm",
    "kerberos",
    "hoba",
    "mutual",
    "scram-sha-1",
    "scram-sha-256",
];

/// Every credential in these request headers. `now_unix` decides JWT expiry.
///
/// Cookies are deliberately not parsed: session cookies belong to browsers and
/// people, their names are free-form, and telling a credential from a
/// preference cookie would be guesswork. AWS `x-amz-security-token` is part of
/// the SigV4 credential (the `ASIA` key id says it is temporary), not a second one;
/// presigned URLs carry theirs in the query string, whose values are never read.
pub fn classify(
    headers: &[Header<'_>],
    fp: &Fingerprinter,
    now_unix: i64,
) -> Vec<CredentialSummary> {
    let mut out = Vec::new();
    for h in headers {
        let value = trim(h.value);
        if value.is_empty() {
            continue;
        }
        let found = if h.name.eq_ignore_ascii_case(b"authorization") {
            authorization("authorization", value, fp, now_unix)
        } else if h.name.eq_ignore_ascii_case(b"proxy-authorization") {
            authorization("proxy-authorization", value, fp, now_unix)
        } else if let Some((name, vendor)) = API_KEY_HEADERS
            .iter()
            .find(|(n, _)| h.name.eq_ignore_ascii_case(n.as_bytes()))
        {
            Some(token(
                name,
                value,
                CredentialKind::ApiKey,
                *vendor,
                fp,
                now_unix,
            ))
        } else {
            None
        };
        out.extend(found);
    }
    out
}

fn authorization(
    header: &'static str,
    value: &[u8],
    fp: &Fingerprinter,
    now: i64,
) -> Option<CredentialSummary> {
    let Some(sp) = value.iter().position(|&b| b == b' ' || b == b'\t') else {
        // A bare value: some APIs take the token without a scheme.
        let is_scheme = |s: &&str| value.eq_ignore_ascii_case(s.as_bytes());
        if ["bearer", "token", "basic"].iter().any(is_scheme) || PROOF_SCHEMES.iter().any(is_scheme)
        {
            return None;
        }
        return Some(token(header, value, CredentialKind::Bearer, None, fp, now));
    };
    let (scheme, rest) = value.split_at(sp);
    let rest = trim(rest);
    let is = |s: &str| scheme.eq_ignore_ascii_case(s.as_bytes());
    if is("bearer") || is("token") {
        Some(token(header, rest, CredentialKind::Bearer, None, fp, now))
    } else if is("basic") {
        Some(basic(header, rest, fp))
    } else if is("aws4-hmac-sha256") || is("aws4-ecdsa-p256-sha256") {
        Some(sigv4(header, rest, fp))
    } else if PROOF_SCHEMES.iter().any(|s| is(s)) {
        None
    } else if is("ssws") {
        // Okta API tokens: static, expire only after 30 days unused.
        let mut c = token(header, rest, CredentialKind::Bearer, Some("okta"), fp, now);
        if c.token_type.is_none() {
            c.token_type = Some("okta_api_token");
            c.long_lived = Some(true);
        }
        Some(c)
    } else {
        // An unknown scheme still carries a credential; the scheme name itself is
        // not kept (it is free text chosen by the client).
        Some(token(header, rest, CredentialKind::Bearer, None, fp, now))
    }
}

/// A token value: a JWT when it decodes as one, else `kind` with the format its prefix announces.
fn token(
    header: &'static str,
    value: &[u8],
    kind: CredentialKind,
    header_vendor: Option<&'static str>,
    fp: &Fingerprinter,
    now: i64,
) -> CredentialSummary {
    let mut c = CredentialSummary::new(kind, header, fp.fingerprint(value));
    if let Some(claims) = decode_jwt_claims(value, now) {
        c.kind = CredentialKind::Jwt;
        c.long_lived = jwt::long_lived(&claims, now);
        match jwt::issuer(&claims) {
            Some((vendor, token_type)) => {
                c.vendor = Some(vendor);
                c.token_type = Some(token_type);
            }
            None => c.vendor = header_vendor,
        }
        c.jwt = Some(claims);
    } else if let Some(f) = vendor::by_prefix(value) {
        c.set_format(f);
    } else {
        c.vendor = header_vendor;
        // A key in an API-key header is static unless its format says otherwise;
        // an unrecognised bearer token could be anything.
        if kind == CredentialKind::ApiKey {
            c.long_lived = Some(true);
        }
    }
    c
}

/// Standard base64 with or without padding, as clients send it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn basic(header: &'static str, value: &[u8], fp: &Fingerprinter) -> CredentialSummary {
    let Ok(decoded) = B64.decode(value) else {
        // Still a credential, just not decodable: fingerprint what was sent.
        let mut c = CredentialSummary::new(CredentialKind::Basic, header, fp.fingerprint(value));
        c.long_lived = Some(true);
        return c;
    };
    let mut c = CredentialSummary::new(CredentialKind::Basic, header, fp.fingerprint(&decoded));
    c.long_lived = Some(true);
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return c;
    };
    let (user, pass) = decoded.split_at(colon);
    let pass = pass.get(1..).unwrap_or_default();
    if let Some(f) = vendor::by_prefix(pass) {
        // e.g. git over HTTPS: `x-access-token:ghs_…`, registries: `oauth2accesstoken:ya29.…`.
        c.set_format(f);
    } else if let Some(f) = vendor::by_prefix(user) {
        // The key in the user slot (Stripe's `-u sk_live_…:`): the "name" is the secret.
        c.set_format(f);
        return c;
    }
    if pass.is_empty() {
        // Nothing secret but the user name: it must be the key itself.
        return c;
    }
    c.username = Some(
        String::from_utf8_lossy(user)
            .chars()
            .take(MAX_CLAIM_CHARS)
            .collect(),
    );
    c
}

fn sigv4(header: &'static str, value: &[u8], fp: &Fingerprinter) -> CredentialSummary {
    // `Credential=AKID/date/region/service/aws4_request, SignedHeaders=…, Signature=…`;
    // only the credential scope is read, the signature is never touched.
    let credential = value
        .split(|&b| b == b',')
        .map(trim)
        .find_map(|p| {
            let (key, value) = p.split_at(p.iter().position(|&b| b == b'=')?);
            key.eq_ignore_ascii_case(b"credential")
                .then(|| value.get(1..).unwrap_or_default())
        })
        .unwrap_or_default();
    let akid = credential.split(|&b| b == b'/').next().unwrap_or_default();
    let mut c = CredentialSummary::new(CredentialKind::AwsSigv4, header, String::new());
    c.vendor = Some("aws");
    // AWS documents key ids as 16–128 characters of [A-Z0-9].
    if (16..=128).contains(&akid.len())
        && akid
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        c.fingerprint = fp.fingerprint(akid);
        c.access_key_id = Some(String::from_utf8_lossy(akid).into_owned());
        if let Some(f) = vendor::by_prefix(akid).filter(|f| f.vendor == "aws") {
            c.set_format(f);
        }
    } else {
        c.fingerprint = fp.fingerprint(credential);
    }
    c
}

fn trim(v: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or_default()
}

impl CredentialSummary {
    fn new(kind: CredentialKind, header: &'static str, fingerprint: String) -> Self {
        CredentialSummary {
            kind,
            header: header.to_string(),
            vendor: None,
            token_type: None,
            long_lived: None,
            fingerprint,
            jwt: None,
            username: None,
            access_key_id: None,
        }
    }

    fn set_format(&mut self, f: Format) {
        self.vendor = Some(f.vendor);
        self.token_type = Some(f.token_type);
        self.long_lived = f.long_lived;
    }
}

#[cfg(test)]
mod tests {
    use super::jwt::tests::make_jwt;
    use super::*;

    const NOW: i64 = 1_735_700_000; // 2025-01-01
    fn fp() -> Fingerprinter {
        Fingerprinter::from_key([42; 32])
    }
    fn one(name: &str, value: &str) -> CredentialSummary {
        let h = [Header {
            name: name.as_bytes(),
            value: value.as_bytes(),
        }];
        let mut v = classify(&h, &fp(), NOW);
        assert_eq!(v.len(), 1, "{name}: {value:?} → {v:?}");
        v.remove(0)
    }
    fn none(name: &str, value: &str) {
        let h = [Header {
            name: name.as_bytes(),
            value: value.as_bytes(),
        }];
        assert!(classify(&h, &fp(), NOW).is_empty(), "{name}: {value:?}");
    }

    // Obviously fake but well-formed tokens (the shapes real clients send).
    const GHP: &str = "ghp_FAKEfake0123456789FAKEfake0123456789";
    const GH_FINE: &str =
        "github_pat_11FAKE0000_fakefakefakefakefakefakefakefakefakefakefakefakefakefakefake";
    const GHS: &str = "ghs_FAKEfake0123456789FAKEfake01234567";
    const SLACK: &str = "xoxb-0000000000-0000000000000-FAKEfakeFAKEfakeFAKEfake";
    const STRIPE: &str = "sk_live_FAKEfakeFAKEfakeFAKEfake00";
    const OPENAI: &str = "sk-proj-FAKEfakeFAKEfake_FAKEfakeFAKEfake-FAKEfake";
    const ANTHROPIC: &str = "sk-ant-api03-FAKEfakeFAKEfakeFAKEfake-FAKEfake-AAAA";
    const GOOGLE_KEY: &str = "AIzaFAKEfakeFAKEfakeFAKEfake000000000";
    const GOOGLE_OAUTH: &str = "ya29.a0FAKEfakeFAKEfakeFAKEfake";
    const GITLAB: &str = "glpat-FAKEfakeFAKEfake0000";
    const VAULT: &str = "hvs.CAESIFAKEfakeFAKEfakeFAKEfake";
    const NPM: &str = "npm_FAKEfakeFAKEfakeFAKEfakeFAKEfake0000";
    const HF: &str = "hf_FAKEfakeFAKEfakeFAKEfakeFAKEfake";
    const OPAQUE: &str = "0a1b2c3d4e5f-opaque-session-token-zz";
    const SIGNATURE: &str = "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024";

    fn jwt() -> String {
        make_jwt(
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"iss":"https://login.example.com","sub":"svc-ingest","aud":["fhir-api","audit"],"exp":1735703600,"iat":1735700000,"jti":"j-1","scp":["patient/*.read","openid"]}"#,
            "c2lnbmF0dXJlLXNlY3JldC1wYXJ0LWRvLW5vdC1sZWFr",
        )
    }

    #[test]
    fn bearer_jwt() {
        let t = jwt();
        let c = one("Authorization", &format!("Bearer {t}"));
        assert_eq!(c.kind, CredentialKind::Jwt);
        assert_eq!(c.header, "authorization");
        assert_eq!(c.long_lived, Some(false));
        let j = c.jwt.as_ref().unwrap();
        assert_eq!(j.aud, vec!["fhir-api", "audit"]);
        assert_eq!(j.scope, ["patient/*.read", "openid"]);
        assert_eq!(j.ttl_seconds, Some(3600));
        assert!(!j.expired);
        assert_eq!(c.fingerprint, fp().fingerprint(t.as_bytes()));
        // Scheme is case-insensitive; HTTP/2 lowercase names; extra spaces.
        assert_eq!(one("authorization", &format!("bearer   {t} ")), c);
        // Expired at a later time.
        let h = [Header {
            name: b"authorization",
            value: format!("Bearer {t}").into_bytes().leak(),
        }];
        assert!(
            classify(&h, &fp(), 1735703601)[0]
                .jwt
                .as_ref()
                .unwrap()
                .expired
        );
    }

    #[test]
    fn kubernetes_jwt_in_api_key_header() {
        let t = make_jwt(
            r#"{"alg":"RS256"}"#,
            r#"{"iss":"kubernetes/serviceaccount","sub":"system:serviceaccount:ci:deployer"}"#,
            "AAAA",
        );
        let c = one("X-Auth-Token", &t);
        assert_eq!(c.kind, CredentialKind::Jwt);
        assert_eq!(c.header, "x-auth-token");
        assert_eq!(
            (c.vendor, c.token_type, c.long_lived),
            (
                Some("kubernetes"),
                Some("kubernetes_service_account_token"),
                Some(true)
            )
        );
    }

    #[test]
    fn malformed_jwt_is_opaque_bearer() {
        for v in [
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIi.x",
            "eyJ.eyJ.eyJ",
            "a.b.c",
            "eyJhbGciOiJub25lIn0.bm90IGpzb24.",
            "....",
        ] {
            let c = one("Authorization", &format!("Bearer {v}"));
            assert_eq!(
                (c.kind, c.jwt, c.vendor, c.long_lived),
                (CredentialKind::Bearer, None, None, None),
                "{v}"
            );
        }
    }

    #[test]
    fn vendor_bearer_tokens() {
        let cases: &[(&str, &str, &str, Option<bool>)] = &[
            (GHP, "github", "github_classic_pat", Some(true)),
            (GH_FINE, "github", "github_fine_grained_pat", Some(true)),
            (
                "gho_FAKEfake0123456789FAKEfake01234567",
                "github",
                "github_oauth_token",
                Some(true),
            ),
            (
                "ghu_FAKEfake0123456789FAKEfake01234567",
                "github",
                "github_app_user_token",
                Some(false),
            ),
            (GHS, "github", "github_app_installation_token", Some(false)),
            (
                "ghr_FAKEfake0123456789FAKEfake01234567",
                "github",
                "github_refresh_token",
                Some(true),
            ),
            (SLACK, "slack", "slack_bot_token", Some(true)),
            (
                "xoxp-0000000000-0000000000-FAKEfake",
                "slack",
                "slack_user_token",
                Some(true),
            ),
            ("xoxa-2-FAKEfake", "slack", "slack_workspace_token", None),
            (
                "xapp-1-A0000000-0000-FAKEfake",
                "slack",
                "slack_app_token",
                Some(true),
            ),
            (STRIPE, "stripe", "stripe_secret_key", Some(true)),
            (
                "rk_live_FAKEfakeFAKEfake",
                "stripe",
                "stripe_restricted_key",
                Some(true),
            ),
            (
                "sk_test_FAKEfakeFAKEfake",
                "stripe",
                "stripe_test_secret_key",
                Some(true),
            ),
            (OPENAI, "openai", "openai_project_key", Some(true)),
            (
                "sk-FAKEfakeFAKEfakeT3BlbkFJFAKEfake",
                "openai",
                "openai_api_key",
                Some(true),
            ),
            (ANTHROPIC, "anthropic", "anthropic_api_key", Some(true)),
            (GOOGLE_KEY, "google", "google_api_key", Some(true)),
            (
                GOOGLE_OAUTH,
                "google",
                "google_oauth_access_token",
                Some(false),
            ),
            (GITLAB, "gitlab", "gitlab_pat", Some(true)),
            (VAULT, "hashicorp", "vault_service_token", None),
            (
                "hvb.AAAAAQFAKEfake",
                "hashicorp",
                "vault_batch_token",
                Some(false),
            ),
            (NPM, "npm", "npm_access_token", Some(true)),
            (HF, "huggingface", "huggingface_token", Some(true)),
        ];
        for &(tok, vendor, ty, long) in cases {
            // GitHub's own clients send `token X`; everyone else `Bearer X`.
            for scheme in ["Bearer", "token"] {
                let c = one("Authorization", &format!("{scheme} {tok}"));
                assert_eq!(c.kind, CredentialKind::Bearer, "{tok}");
                assert_eq!(
                    (c.vendor, c.token_type, c.long_lived),
                    (Some(vendor), Some(ty), long),
                    "{tok}"
                );
                assert_eq!(c.fingerprint, fp().fingerprint(tok.as_bytes()));
            }
        }
        let c = one("Authorization", &format!("Bearer {OPAQUE}"));
        assert_eq!(
            (c.kind, c.vendor, c.token_type, c.long_lived),
            (CredentialKind::Bearer, None, None, None)
        );
    }

    #[test]
    fn api_key_headers() {
        let c = one("x-api-key", ANTHROPIC);
        assert_eq!(
            (c.kind, c.header.as_str(), c.vendor, c.long_lived),
            (
                CredentialKind::ApiKey,
                "x-api-key",
                Some("anthropic"),
                Some(true)
            )
        );
        let c = one("X-Goog-Api-Key", GOOGLE_KEY);
        assert_eq!(
            (c.vendor, c.token_type),
            (Some("google"), Some("google_api_key"))
        );
        let c = one("api-key", "0123456789abcdef0123456789abcdef");
        assert_eq!(
            (c.kind, c.vendor, c.token_type, c.long_lived),
            (CredentialKind::ApiKey, None, None, Some(true))
        );
        let c = one(
            "Ocp-Apim-Subscription-Key",
            "0123456789abcdef0123456789abcdef",
        );
        assert_eq!(c.vendor, Some("microsoft"));
        let c = one("PRIVATE-TOKEN", GITLAB);
        assert_eq!(
            (c.header.as_str(), c.vendor, c.token_type),
            ("private-token", Some("gitlab"), Some("gitlab_pat"))
        );
        // Vault TTLs are per token: the format says "cannot tell", not "static".
        let c = one("X-Vault-Token", VAULT);
        assert_eq!((c.vendor, c.long_lived), (Some("hashicorp"), None));
        for name in ["apikey", "x-functions-key", "x-auth-token"] {
            assert_eq!(one(name, OPAQUE).kind, CredentialKind::ApiKey);
        }
        // Same secret, different header and client: same fingerprint.
        assert_eq!(
            one("x-api-key", OPAQUE).fingerprint,
            one("Authorization", &format!("Bearer {OPAQUE}")).fingerprint
        );
        none("x-api-key", "   ");
        none("X-Request-Id", OPAQUE);
        none("Cookie", &format!("session={OPAQUE}"));
    }

    #[test]
    fn basic_auth() {
        // curl -u 'svc-backup:s3cr3t-passw0rd'
        let c = one(
            "Authorization",
            "Basic c3ZjLWJhY2t1cDpzM2NyM3QtcGFzc3cwcmQ=",
        );
        assert_eq!(
            (c.kind, c.username.as_deref(), c.long_lived),
            (CredentialKind::Basic, Some("svc-backup"), Some(true))
        );
        assert_eq!(
            c.fingerprint,
            fp().fingerprint(b"svc-backup:s3cr3t-passw0rd")
        );
        // Unpadded is accepted too.
        assert_eq!(
            one("Authorization", "basic c3ZjLWJhY2t1cDpzM2NyM3QtcGFzc3cwcmQ").fingerprint,
            c.fingerprint
        );
        // git over HTTPS with a GitHub App token as the password.
        let v = B64.encode(format!("x-access-token:{GHS}"));
        let c = one("Authorization", &format!("Basic {v}"));
        assert_eq!(
            (c.username.as_deref(), c.vendor, c.token_type, c.long_lived),
            (
                Some("x-access-token"),
                Some("github"),
                Some("github_app_installation_token"),
                Some(false)
            )
        );
        // Stripe style: the key is the user name, the password empty: no user name kept.
        let v = B64.encode(format!("{STRIPE}:"));
        let c = one("Authorization", &format!("Basic {v}"));
        assert_eq!((c.username, c.vendor), (None, Some("stripe")));
        let v = B64.encode("0123456789abcdef0123:");
        assert_eq!(one("Authorization", &format!("Basic {v}")).username, None);
        // Bad base64: still a Basic credential, fingerprint of what was sent, no user name.
        let c = one("Authorization", "Basic %%%not*base64%%%");
        assert_eq!(
            (c.kind, c.username.as_deref()),
            (CredentialKind::Basic, None)
        );
        assert_eq!(c.fingerprint, fp().fingerprint(b"%%%not*base64%%%"));
        // No colon after decoding.
        assert_eq!(
            one(
                "Authorization",
                &format!("Basic {}", B64.encode("justauser"))
            )
            .username,
            None
        );
        // Long user names are capped.
        let v = B64.encode(format!("{}:pw", "u".repeat(1000)));
        assert_eq!(
            one("Authorization", &format!("Basic {v}"))
                .username
                .unwrap()
                .len(),
            MAX_CLAIM_CHARS
        );
    }

    #[test]
    fn aws_sigv4() {
        // botocore, long-term key.
        let v = format!("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature={SIGNATURE}");
        let c = one("Authorization", &v);
        assert_eq!(c.kind, CredentialKind::AwsSigv4);
        assert_eq!(
            (c.vendor, c.token_type, c.long_lived),
            (Some("aws"), Some("aws_access_key"), Some(true))
        );
        assert_eq!(c.access_key_id.as_deref(), Some("AKIAIOSFODNN7EXAMPLE"));
        assert_eq!(c.fingerprint, fp().fingerprint(b"AKIAIOSFODNN7EXAMPLE"));
        // STS temporary credentials (with x-amz-security-token, which is not a second credential).
        let v = format!("AWS4-HMAC-SHA256 Credential=ASIAIOSFODNN7EXAMPLE/20250101/eu-west-1/sts/aws4_request,SignedHeaders=host;x-amz-date;x-amz-security-token,Signature={SIGNATURE}");
        let h = [
            Header {
                name: b"authorization",
                value: v.as_bytes(),
            },
            Header {
                name: b"x-amz-security-token",
                value: b"IQoJb3JpZ2luX2VjEFAKEFAKEFAKE",
            },
        ];
        let all = classify(&h, &fp(), NOW);
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].token_type, all[0].long_lived),
            (Some("aws_temporary_access_key"), Some(false))
        );
        // Garbage credential scope: no key id, still counted.
        let c = one(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=not/a/key, Signature=00",
        );
        assert_eq!(
            (c.kind, c.access_key_id, c.long_lived),
            (CredentialKind::AwsSigv4, None, None)
        );
    }

    #[test]
    fn other_schemes() {
        none("Authorization", "Digest username=\"svc\", realm=\"r\", nonce=\"abc\", response=\"6629fae49393a05397450978507c4ef1\"");
        none("Authorization", "Negotiate YIIFAKE");
        none("Authorization", "Bearer");
        none("Authorization", "");
        let c = one("Authorization", "SSWS 00FAKEfakeFAKEfakeFAKEfakeFAKEfake");
        assert_eq!(
            (c.vendor, c.token_type, c.long_lived),
            (Some("okta"), Some("okta_api_token"), Some(true))
        );
        // A bare token without a scheme.
        assert_eq!(
            one("Authorization", GHP).token_type,
            Some("github_classic_pat")
        );
        // An unknown scheme is still a credential, fingerprinted over its value.
        let c = one("Proxy-Authorization", &format!("Custom {OPAQUE}"));
        assert_eq!(
            (c.kind, c.header.as_str()),
            (CredentialKind::Bearer, "proxy-authorization")
        );
        assert_eq!(c.fingerprint, fp().fingerprint(OPAQUE.as_bytes()));
    }

    #[test]
    fn several_credentials_in_one_request() {
        let auth = format!("Bearer {GHP}");
        let h = [
            Header {
                name: b"Host",
                value: b"api.github.com",
            },
            Header {
                name: b"Authorization",
                value: auth.as_bytes(),
            },
            Header {
                name: b"X-Api-Key",
                value: HF.as_bytes(),
            },
        ];
        let v = classify(&h, &fp(), NOW);
        assert_eq!(
            v.iter().map(|c| c.vendor).collect::<Vec<_>>(),
            vec![Some("github"), Some("huggingface")]
        );
    }

    /// Nothing derived from a credential may carry its secret: not Debug, not JSON.
    #[test]
    fn no_secret_in_debug_or_json() {
        let t = jwt();
        let jwt_sig = t.rsplit('.').next().unwrap().to_string();
        let basic_pw = "s3cr3t-passw0rd";
        let cases: Vec<(String, String, Vec<String>)> = vec![
            ("Authorization".into(), format!("Bearer {t}"), vec![t.clone(), jwt_sig]),
            ("Authorization".into(), "Basic c3ZjLWJhY2t1cDpzM2NyM3QtcGFzc3cwcmQ=".into(), vec![basic_pw.into(), "c3ZjLWJhY2t1cDpzM2NyM3QtcGFzc3cwcmQ".into()]),
            ("Authorization".into(), format!("Basic {}", B64.encode(format!("{STRIPE}:"))), vec![STRIPE.into()]),
            ("Authorization".into(), format!("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={SIGNATURE}"), vec![SIGNATURE.into()]),
            ("Authorization".into(), format!("SSWS {OPAQUE}"), vec![OPAQUE.into()]),
        ]
        .into_iter()
        .chain(
            [GHP, GH_FINE, GHS, SLACK, STRIPE, OPENAI, ANTHROPIC, GOOGLE_KEY, GOOGLE_OAUTH, GITLAB, VAULT, NPM, HF, OPAQUE]
                .iter()
                .flat_map(|tok| {
                    // The part after the vendor prefix is the secret; the prefix is public.
                    let secret = tok.get(8..).unwrap().to_string();
                    [
                        ("Authorization".to_string(), format!("Bearer {tok}"), vec![tok.to_string(), secret.clone()]),
                        ("x-api-key".to_string(), tok.to_string(), vec![tok.to_string(), secret]),
                    ]
                }),
        )
        .collect();
        for (name, value, secrets) in cases {
            let c = one(&name, &value);
            let debug = format!("{c:?}");
            let json = serde_json::to_string(&c).unwrap();
            for s in &secrets {
                assert!(
                    !debug.contains(s.as_str()) && !json.contains(s.as_str()),
                    "{name} leaks {s}: {json}"
                );
            }
        }
    }
}
