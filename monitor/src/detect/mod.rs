//! Access contracts and detectors: takes observations and the rules, gives findings, and keeps per-identity state for the inventory.

// The engine keeps the state and dispatches; `learn` records what an observation shows about its
// identity and classifies it once, so that each family in `detectors/` only judges. The catalogue
// of rules, which every consumer reads, is `finding::Rule`.
mod audience;
pub mod compiled;
mod detectors;
mod engine;
pub mod finding;
mod hot;
mod learn;
mod sightings;
pub mod state;
pub mod telemetry;

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Deserializer};

use self::volume::VolumeConfig;
pub use self::{
    detectors::{combination::CombinationConfig, volume},
    engine::{Engine, EngineStats},
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Repeats of one finding within this window only count.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Identity-level findings (ungoverned, expired, ownerless, break-glass) at most once per window.
    #[serde(with = "humantime_serde")]
    pub ungoverned_window: Duration,
    pub combination: CombinationConfig,
    pub volume: VolumeConfig,
    pub ungoverned: UngovernedConfig,
    pub credentials: CredentialsConfig,
    /// Identities and credentials kept in memory; the least recently seen are evicted beyond these.
    pub max_identities: usize,
    pub max_credentials: usize,
    /// Open (deduplicating) findings kept at once.
    pub max_open_findings: usize,
    /// How often learned state is written to the state database.
    #[serde(with = "humantime_serde")]
    pub persist_interval: Duration,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            dedup_window: Duration::from_secs(600),
            ungoverned_window: Duration::from_secs(3600),
            combination: CombinationConfig::default(),
            volume: VolumeConfig::default(),
            ungoverned: UngovernedConfig::default(),
            credentials: CredentialsConfig::default(),
            // Each identity's state is a few KiB (its records' maps, cached entries, an open
            // NHI-001): 65,536 of them, churned, levelled off near 700 MiB RSS, too close to the
            // DaemonSet's 1 GiB. Far more than the identities active on one node at once; the
            // least recently seen are evicted (and stay in the state database).
            max_identities: 16_384,
            max_credentials: 262_144,
            max_open_findings: 65_536,
            persist_interval: Duration::from_secs(30),
        }
    }
}

/// `detectors.credentials`: credential hygiene beyond what contracts say.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// How long one static key may be in use where a contract sets no `maxKeyAge` (and for
    /// identities without a contract): 90 days is the common rotation baseline.
    #[serde(with = "humantime_serde")]
    pub max_key_age: Duration,
    /// Hosts (lowercase, as requests name them) that are the Kubernetes API server, besides
    /// `kubernetes`, `kubernetes.default` and `kubernetes.default.svc[.…]`. In-cluster clients
    /// reach it by its service IP; the daemon adds its own `KUBERNETES_SERVICE_HOST`.
    pub kubernetes_api_hosts: Vec<String>,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            max_key_age: Duration::from_secs(90 * 86_400),
            kubernetes_api_hosts: Vec::new(),
        }
    }
}

/// `detectors.ungoverned`: which identities without a contract NHI-001 reports.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UngovernedConfig {
    pub report: UngovernedReport,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UngovernedReport {
    /// Only identities that matter: that presented a credential, opened a watched file, or
    /// reached a data source (`learn::significant`). On a busy host every uid + executable is
    /// an identity (compilers, shells, `sleep`): reporting each buries the few that hold access.
    #[default]
    Significant,
    /// Every identity without a contract, from its first activity ("every non-human identity
    /// is governed").
    All,
}

impl DetectConfig {
    /// Ranges of the windows, intervals and caps: a zero window never deduplicates (or never
    /// judges), a zero interval writes state in a loop, a zero cap keeps nothing.
    /// Messages name the key as it stands in the file (`detectors.…`).
    pub fn validate(&self) -> Result<(), String> {
        use crate::bounds::{count, duration, DAY, HOUR, SECOND};
        duration("detectors.dedup_window", self.dedup_window, SECOND, 7 * DAY)?;
        duration(
            "detectors.ungoverned_window",
            self.ungoverned_window,
            SECOND,
            30 * DAY,
        )?;
        duration(
            "detectors.combination.window",
            self.combination.window,
            SECOND,
            7 * DAY,
        )?;
        // Zero learning is meaningful: judge pairs from the first sighting.
        duration(
            "detectors.combination.learning",
            self.combination.learning,
            std::time::Duration::ZERO,
            365 * DAY,
        )?;
        let v = &self.volume;
        duration("detectors.volume.bucket", v.bucket, SECOND, DAY)?;
        count("detectors.volume.history", v.history, 1, 10_000)?;
        count("detectors.volume.warmup", v.warmup, 1, v.history)?;
        if !(v.sensitivity.is_finite() && v.sensitivity > 0.0) {
            return Err(format!(
                "detectors.volume.sensitivity must be a positive number, got {}",
                v.sensitivity
            ));
        }
        duration(
            "detectors.credentials.max_key_age",
            self.credentials.max_key_age,
            DAY,
            3650 * DAY,
        )?;
        count(
            "detectors.credentials.kubernetes_api_hosts",
            self.credentials.kubernetes_api_hosts.len(),
            0,
            64,
        )?;
        if let Some(h) = self.credentials.kubernetes_api_hosts.iter().find(|h| {
            h.is_empty() || h.len() > 253 || h.contains(|c: char| c == '/' || c.is_whitespace())
        }) {
            return Err(format!(
                "detectors.credentials.kubernetes_api_hosts: {h:?} is not a host name or IP address"
            ));
        }
        count("detectors.max_identities", self.max_identities, 1, 16 << 20)?;
        count(
            "detectors.max_credentials",
            self.max_credentials,
            1,
            64 << 20,
        )?;
        count(
            "detectors.max_open_findings",
            self.max_open_findings,
            1,
            16 << 20,
        )?;
        duration(
            "detectors.persist_interval",
            self.persist_interval,
            SECOND,
            HOUR,
        )
    }
}

pub(crate) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        N(u64),
        S(String),
    }
    match S::deserialize(d)? {
        S::N(n) => Ok(n),
        S::S(s) => crate::contracts::parse_size(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("bad size {s:?}: expected e.g. 10MiB"))
        }),
    }
}

type FxMap<K, V> = hashbrown::HashMap<K, V, rustc_hash::FxBuildHasher>;
type FxStd<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Entries kept per map of an identity record; more are counted in `dropped`.
const MAX_KEYS: usize = 512;
/// Credential fingerprints kept per identity record; beyond it the least recently seen gives
/// way, counted in `dropped`. Fewer than `MAX_KEYS`: an identity whose tokens rotate presents a
/// new fingerprint each time, and with 10,000 identities each entry per identity costs ≈ 2.5 MiB.
const MAX_CREDENTIALS: usize = 32;

#[cfg(test)]
mod tests;
