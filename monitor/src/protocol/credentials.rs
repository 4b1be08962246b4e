//! Request headers → credential summaries: kind, vendor hint, lifetime, non-secret claims and a keyed fingerprint.

use serde::Serialize;

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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// exp − iat, when both are present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// exp before the time the request was seen.
    pub expired: bool,
}
