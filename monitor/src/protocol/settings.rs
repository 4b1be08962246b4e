//! The `api_calls:` settings (session, buffer and in-flight limits of the TLS → API call stage) and their validation.

use serde::Deserialize;

/// Turning TLS plaintext into API calls.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiCallConfig {
    /// TLS sessions followed at once; the least recently active is dropped beyond it.
    pub max_sessions: usize,
    /// Head bytes buffered per session and direction (HTTP/1 heads, HTTP/2 header blocks).
    pub max_head_bytes: usize,
    /// Bytes buffered by all sessions together.
    pub max_buffered_bytes: usize,
    /// Requests in flight per connection (pipelining, HTTP/2 streams).
    pub max_in_flight: usize,
    /// A session quiet this long is closed; its open exchanges leave as `timeout`.
    pub session_idle_seconds: u64,
    /// Destination names remembered from DNS answers.
    pub max_dns_names: usize,
    /// Executables (file name, or comm) of proxies and mesh sidecars: once such a process has
    /// served HTTP, its outbound calls forward its clients' and are not reported again.
    pub proxy_executables: Vec<String>,
}

/// Proxies that forward calls made by the applications they serve (mesh sidecars, local
/// reverse proxies).
pub fn default_proxies() -> Vec<String> {
    ["envoy", "linkerd2-proxy", "nginx", "haproxy", "traefik"]
        .map(str::to_owned)
        .to_vec()
}

impl Default for ApiCallConfig {
    fn default() -> Self {
        ApiCallConfig {
            max_sessions: 16384,
            max_head_bytes: 32 * 1024,
            max_buffered_bytes: 64 << 20,
            max_in_flight: 128,
            session_idle_seconds: 300,
            max_dns_names: 65536,
            proxy_executables: default_proxies(),
        }
    }
}

impl ApiCallConfig {
    /// Messages name the key as it stands in the file (`api_calls.…`).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_sessions == 0 || self.max_in_flight == 0 || self.max_dns_names == 0 {
            return Err(
                "api_calls.max_sessions, max_in_flight and max_dns_names must be at least 1".into(),
            );
        }
        if self.max_head_bytes < 1024 || self.max_buffered_bytes < self.max_head_bytes * 2 {
            return Err(format!(
                "api_calls.max_head_bytes must be at least 1024 and max_buffered_bytes at least twice it, got {} and {}",
                self.max_head_bytes, self.max_buffered_bytes
            ));
        }
        use crate::bounds::count;
        count(
            "api_calls.proxy_executables (entries)",
            self.proxy_executables.len(),
            0,
            256,
        )?;
        if let Some(bad) = self
            .proxy_executables
            .iter()
            .find(|p| p.is_empty() || p.contains('/') || p.len() > 255)
        {
            return Err(format!(
                "api_calls.proxy_executables: `{bad}` must be an executable's file name (no `/`, 1..=255 bytes)"
            ));
        }
        count(
            "api_calls.session_idle_seconds",
            self.session_idle_seconds,
            1,
            86_400,
        )?;
        count("api_calls.max_sessions", self.max_sessions, 1, 1 << 20)?;
        count("api_calls.max_in_flight", self.max_in_flight, 1, 4096)?;
        count("api_calls.max_dns_names", self.max_dns_names, 1, 1 << 22)?;
        count(
            "api_calls.max_head_bytes",
            self.max_head_bytes,
            1024,
            1 << 20,
        )?;
        count(
            "api_calls.max_buffered_bytes",
            self.max_buffered_bytes,
            2 * self.max_head_bytes,
            1 << 30,
        )?;
        Ok(())
    }
}
