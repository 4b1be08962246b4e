//! The rules files' YAML shape as serde types (what users write), before names are resolved.

use serde::Deserialize;

pub const API_VERSION: &str = "nhiwatch.dev/v1";

/// Read first, leniently, to learn which typed shape the document must have.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub api_version: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataSourceSpec {
    pub classification: Classification,
    #[serde(rename = "match")]
    pub matchers: Vec<MatcherSpec>,
    /// Token audiences (`aud`) this API accepts besides its URL and host: opaque ids such as
    /// `api://ehr-prod` or a client id.
    #[serde(default)]
    pub audiences: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Classification {
    Phi,
    Pii,
    Financial,
    Credentials,
    Telemetry,
    Internal,
    Public,
}

/// Either `{host, paths}` or `{file}`; one struct rather than an untagged enum so serde keeps
/// error locations and names the unknown key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatcherSpec {
    pub host: Option<String>,
    pub paths: Option<Vec<String>>,
    pub file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessContractSpec {
    pub identity: Option<String>,
    pub selectors: Option<Vec<String>>,
    #[serde(default)]
    pub owner: String,
    pub purpose: String,
    pub expires: Option<String>,
    #[serde(default)]
    pub allow: AllowSpec,
    #[serde(default)]
    pub credentials: CredentialsSpec,
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
    #[serde(default)]
    pub break_glass: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AllowSpec {
    #[serde(default)]
    pub data_sources: Vec<String>,
    #[serde(default)]
    pub combinations: Vec<Vec<String>>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    #[serde(default)]
    pub destinations: Vec<DestinationSpec>,
    #[serde(default)]
    pub scopes: Vec<ScopeSpec>,
}

/// The token scopes an identity may hold when it calls one data source (globs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScopeSpec {
    pub data_source: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    pub data_source: String,
    pub methods: Vec<Method>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretSpec {
    pub path: String,
    #[serde(default)]
    pub executables: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationSpec {
    pub host: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CredentialsSpec {
    #[serde(default)]
    pub kinds: Vec<CredentialKindSpec>,
    pub max_token_ttl: Option<String>,
    #[serde(default)]
    pub shared: Sharing,
    /// Every JWT must name an audience (`aud`).
    #[serde(default)]
    pub require_audience: bool,
    /// How long one static key may be in use (since nhiwatch first saw it).
    pub max_key_age: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKindSpec {
    Jwt,
    Bearer,
    Basic,
    ApiKey,
    AwsSigv4,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    #[default]
    Forbidden,
    Allowed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitSpec {
    pub data_source: String,
    pub requests_per_minute: Option<u64>,
    pub bytes_per_hour: Option<String>,
}
