//! The `identity:` settings (trust domain, SPIFFE ID templates, pod and container metadata sources, selectors) and their validation.

use std::path::PathBuf;

use serde::Deserialize;

use super::{kubernetes::PodSourceKind, selectors::SelectorRule, TEMPLATE_VARS};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub trust_domain: String,
    /// Defaults to `NODE_NAME`, then the hostname.
    pub node_name: Option<String>,
    pub templates: IdentityTemplates,
    /// How long an event of a pod whose metadata has not arrived is held back.
    pub pending_hold_ms: u64,
    pub kubernetes: KubernetesConfig,
    pub containers: ContainersConfig,
    pub selectors: Vec<SelectorRuleConfig>,
}

/// Standalone containers (podman, Docker, nerdctl without Kubernetes).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContainersConfig {
    /// Docker Engine API sockets (Docker's, or podman's `podman system service`), asked in
    /// order for a container's name, image and labels; each also under /proc/1/root when the
    /// daemon runs in a container. Empty: containers are named by their id alone.
    pub sockets: Vec<PathBuf>,
    /// How long one socket may take to answer.
    pub timeout_ms: u64,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        ContainersConfig {
            sockets: vec![
                PathBuf::from("/run/docker.sock"),
                PathBuf::from("/run/podman/podman.sock"),
            ],
            timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityTemplates {
    pub kubernetes: String,
    pub systemd: String,
    pub unix: String,
    pub container: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    pub source: PodSourceKind,
    /// Kubelet base URL (kubelet source) or API server URL (apiserver source;
    /// default from KUBERNETES_SERVICE_HOST/PORT).
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub refresh_seconds: u64,
    pub deleted_pod_retention_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelectorRuleConfig {
    pub selectors: Vec<String>,
    pub id: String,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            trust_domain: "cluster.local".into(),
            node_name: None,
            templates: IdentityTemplates::default(),
            pending_hold_ms: 5000,
            kubernetes: KubernetesConfig::default(),
            containers: ContainersConfig::default(),
            selectors: Vec::new(),
        }
    }
}

impl Default for IdentityTemplates {
    fn default() -> Self {
        IdentityTemplates {
            kubernetes: "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}".into(),
            systemd: "spiffe://{trust_domain}/node/{node}/unit/{unit}".into(),
            unix: "spiffe://{trust_domain}/node/{node}/uid/{uid}{exe}".into(),
            container: "spiffe://{trust_domain}/node/{node}/container/{name}".into(),
        }
    }
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            source: Default::default(),
            url: None,
            token_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            refresh_seconds: 10,
            deleted_pod_retention_seconds: 300,
        }
    }
}

impl IdentityConfig {
    /// Checks what serde cannot: the trust domain's shape, template placeholders, selectors.
    /// Messages name the key as it stands in the file (`identity.…`).
    pub fn validate(&self) -> Result<(), String> {
        use crate::bounds::count;
        // A zero hold attributes nothing late: every event of a new pod would leave as pending.
        count("identity.pending_hold_ms", self.pending_hold_ms, 1, 60_000)?;
        let k = &self.kubernetes;
        count(
            "identity.kubernetes.refresh_seconds",
            k.refresh_seconds,
            1,
            3600,
        )?;
        count(
            "identity.kubernetes.deleted_pod_retention_seconds",
            k.deleted_pod_retention_seconds,
            1,
            86_400,
        )?;
        count(
            "identity.containers.timeout_ms",
            self.containers.timeout_ms,
            10,
            60_000,
        )?;
        for s in &self.containers.sockets {
            if !s.is_absolute() {
                return Err(format!(
                    "identity.containers.sockets: {} must be an absolute path",
                    s.display()
                ));
            }
        }
        if self.trust_domain.is_empty() || self.trust_domain.contains(['/', ':', ' ']) {
            return Err(format!(
                "identity.trust_domain must be a DNS-like name, got {:?}",
                self.trust_domain
            ));
        }
        for (name, t) in [
            ("kubernetes", &self.templates.kubernetes),
            ("systemd", &self.templates.systemd),
            ("unix", &self.templates.unix),
            ("container", &self.templates.container),
        ] {
            if !t.starts_with("spiffe://") {
                return Err(format!(
                    "identity.templates.{name} must start with spiffe://, got {t:?}"
                ));
            }
            let mut rest = t.as_str();
            while let Some(open) = rest.find('{') {
                let close = rest[open..]
                    .find('}')
                    .ok_or_else(|| format!("identity.templates.{name}: unclosed '{{'"))?;
                let var = &rest[open + 1..open + close];
                if !TEMPLATE_VARS.contains(&var) {
                    return Err(format!(
                        "identity.templates.{name}: unknown placeholder {{{var}}}; known: {}",
                        TEMPLATE_VARS.join(", ")
                    ));
                }
                rest = &rest[open + close..];
            }
        }
        for (i, r) in self.selectors.iter().enumerate() {
            SelectorRule::parse(&r.selectors, &r.id)
                .map_err(|e| format!("identity.selectors[{i}]: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_settings_are_checked_and_named() {
        assert_eq!(IdentityConfig::default().validate(), Ok(()));
        let mut c = IdentityConfig::default();
        c.containers.timeout_ms = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("identity.containers.timeout_ms"));
        let mut c = IdentityConfig::default();
        c.containers.sockets = vec!["run/docker.sock".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .contains("identity.containers.sockets"));
        let mut c = IdentityConfig::default();
        c.templates.container = "spiffe://{trust_domain}/c/{bogus}".into();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("identity.templates.container"));
    }
}
