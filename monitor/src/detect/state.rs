//! What detectors remember per identity and per credential (grants used, baselines, sightings): persisted by `store`, read by `inventory` and `suggest`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::identity::WorkloadIdentity;

/// First and last sighting (Unix seconds) and how often.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub first_seen: i64,
    pub last_seen: i64,
    pub count: u64,
}

impl Usage {
    pub fn new(t: i64) -> Usage {
        Usage {
            first_seen: t,
            last_seen: t,
            count: 1,
        }
    }

    pub fn touch(&mut self, t: i64) {
        self.first_seen = self.first_seen.min(t);
        self.last_seen = self.last_seen.max(t);
        self.count += 1;
    }
}

/// One identity's history: the inventory row, the grants it used, its learned baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The identity's attributes at its latest sighting.
    pub identity: WorkloadIdentity,
    /// The contract that governed it at its latest sighting (None: ungoverned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Executables seen acting as this identity.
    #[serde(default)]
    pub executables: BTreeMap<String, Usage>,
    #[serde(default)]
    pub data_sources: BTreeMap<String, Usage>,
    /// `DATA-SOURCE METHOD` (e.g. `ehr-medications GET`).
    #[serde(default)]
    pub methods: BTreeMap<String, Usage>,
    /// `DATA-SOURCE SCOPE`: the token scopes presented on calls to a data source, counted once
    /// per token (a new fingerprint), not per call.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scopes: BTreeMap<String, Usage>,
    /// Secret file path → which executables opened it.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretUsage>,
    /// Hosts reached that belong to no data source.
    #[serde(default)]
    pub destinations: BTreeMap<String, Usage>,
    /// Credential fingerprint → what it was.
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialUse>,
    /// Busiest minute per data source (requests), for suggested limits.
    #[serde(default)]
    pub peak_requests_per_minute: BTreeMap<String, u64>,
    /// Data-source pairs seen together within the combination window (the learned baseline).
    #[serde(default)]
    pub pairs: BTreeSet<(String, String)>,
    /// Per data source: request and byte volume history.
    #[serde(default)]
    pub volume: BTreeMap<String, VolumeBaseline>,
    /// Entries not remembered because a map was full.
    #[serde(default)]
    pub dropped: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretUsage {
    pub usage: Usage,
    pub executables: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialUse {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_lived: Option<bool>,
    /// Longest JWT lifetime seen with this fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_seconds: Option<i64>,
    pub usage: Usage,
}

/// Request and byte counts per time bucket: the current bucket and closed ones (newest last).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeBaseline {
    /// Start of the current bucket, ns since the epoch.
    pub bucket_start: i64,
    pub requests: u64,
    pub bytes: u64,
    pub history_requests: VecDeque<u64>,
    pub history_bytes: VecDeque<u64>,
    /// Thresholds computed when the current bucket opened (None during warm-up).
    pub threshold_requests: Option<u64>,
    pub threshold_bytes: Option<u64>,
    pub expected_requests: f64,
    pub expected_bytes: f64,
    /// Bit 0: requests flagged in this bucket; bit 1: bytes.
    pub flagged: u8,
    /// Fixed windows for the contract's limits.
    pub minute_start: i64,
    pub minute_requests: u64,
    pub hour_start: i64,
    pub hour_bytes: u64,
    pub limit_flagged: u8,
}

/// One credential fingerprint across identities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub fingerprint: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_lived: Option<bool>,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Identity id → last sighting (Unix seconds); at most `MAX_SHARERS`.
    pub identities: BTreeMap<String, i64>,
}

/// Identities remembered per credential; more are counted in findings, not kept.
pub const MAX_SHARERS: usize = 16;
