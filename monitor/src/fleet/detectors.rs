//! The fleet detectors: take every node's share of one identity's window (or of one fingerprint) as read from the store, give candidate findings the nodes could not raise alone.
//!
//! A fleet finding is raised only where no single node's share would raise the local one
//! (each node under the limit, each node's data sources an allowed combination, the
//! identities sharing a fingerprint not all seen by one node), so a local finding and a fleet
//! finding never describe the same episode.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    detect::{
        compiled::Compiled,
        finding::{Evidence, Rule},
    },
    identity::WorkloadIdentity,
};

/// One node's absolute counts for one identity and window (the value under its field).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// Requests per data source.
    #[serde(default, rename = "r")]
    pub requests: BTreeMap<String, u64>,
    /// Request + response bytes per data source.
    #[serde(default, rename = "b")]
    pub bytes: BTreeMap<String, u64>,
}

/// A finding before the fleet-wide claim.
#[derive(Debug)]
pub struct Candidate {
    pub rule: Rule,
    /// What the dedup key is computed over, with `key`: an identity id or a fingerprint.
    pub subject: String,
    pub key: String,
    pub summary: String,
    pub identity: Arc<WorkloadIdentity>,
    pub contract: Option<usize>,
    pub evidence: Evidence,
}

/// NHI-041 over the fleet: a contract's `requests_per_minute` (scaled to `fleet.window`)
/// exceeded by the sum over the nodes while every node alone stays within it.
pub fn limits(
    rules: &Compiled,
    identity: &Arc<WorkloadIdentity>,
    contract: Option<usize>,
    shares: &[(String, Share)],
    window_secs: u64,
) -> Vec<Candidate> {
    let Some(c) = contract.and_then(|i| rules.contracts.get(i)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (&ds, &(rpm, _)) in &c.limits {
        let Some(rpm) = rpm else { continue };
        let name = rules.ds_name(ds);
        let limit = rpm.saturating_mul(window_secs) / 60;
        let per_node: Vec<(&str, u64)> = shares
            .iter()
            .filter_map(|(n, s)| s.requests.get(name).map(|r| (n.as_str(), *r)))
            .filter(|(_, r)| *r > 0)
            .collect();
        let total: u64 = per_node.iter().map(|(_, r)| r).sum();
        if total <= limit || per_node.iter().any(|(_, r)| *r > limit) {
            continue;
        }
        let nodes: Vec<String> = per_node.iter().map(|(n, _)| (*n).to_owned()).collect();
        out.push(Candidate {
            rule: Rule::LimitExceeded,
            subject: identity.id.clone(),
            key: format!("{name}:requests"),
            summary: format!(
                "{} made {total} requests to {name} within {window_secs}s across {} nodes ({}), above its contract's limit of {limit}; no node alone exceeded it",
                identity.id,
                nodes.len(),
                per_node
                    .iter()
                    .map(|(n, r)| format!("{n}: {r}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            identity: identity.clone(),
            contract,
            evidence: Evidence {
                data_source: Some(name.to_owned()),
                metric: Some("requests".into()),
                observed: Some(total as f64),
                limit: Some(limit as f64),
                expected: Some(limit as f64),
                window_seconds: Some(window_secs),
                nodes,
                ..Evidence::default()
            },
        });
    }
    out
}

/// NHI-041 over the fleet for bytes: a contract's `bytesPerHour`, over one clock hour (as the
/// node-local limit counts it), exceeded by the sum of every node's bytes in that hour while
/// every node alone stays within it. `hour` holds each node's absolute bytes per data source
/// in the hour (`P:hb:{ID}:H`).
pub fn hourly_bytes(
    rules: &Compiled,
    identity: &Arc<WorkloadIdentity>,
    contract: Option<usize>,
    hour: &[(String, BTreeMap<String, u64>)],
) -> Vec<Candidate> {
    let Some(c) = contract.and_then(|i| rules.contracts.get(i)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (&ds, &(_, bph)) in &c.limits {
        let Some(limit) = bph else { continue };
        let name = rules.ds_name(ds);
        let per_node: Vec<(&str, u64)> = hour
            .iter()
            .filter_map(|(n, b)| b.get(name).map(|v| (n.as_str(), *v)))
            .filter(|(_, v)| *v > 0)
            .collect();
        let total: u64 = per_node.iter().map(|(_, v)| v).sum();
        if total <= limit || per_node.iter().any(|(_, v)| *v > limit) {
            continue;
        }
        let nodes: Vec<String> = per_node.iter().map(|(n, _)| (*n).to_owned()).collect();
        out.push(Candidate {
            rule: Rule::LimitExceeded,
            subject: identity.id.clone(),
            key: format!("{name}:bytes"),
            summary: format!(
                "{} moved {total} bytes to and from {name} within the hour across {} nodes ({}), above its contract's limit of {limit} bytes per hour; no node alone exceeded it",
                identity.id,
                nodes.len(),
                per_node
                    .iter()
                    .map(|(n, v)| format!("{n}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            identity: identity.clone(),
            contract,
            evidence: Evidence {
                data_source: Some(name.to_owned()),
                metric: Some("bytes".into()),
                observed: Some(total as f64),
                limit: Some(limit as f64),
                expected: Some(limit as f64),
                window_seconds: Some(3600),
                nodes,
                ..Evidence::default()
            },
        });
    }
    out
}

/// NHI-030 over the fleet: the union of the data sources the identity's replicas touched in
/// one window is no combination its contract allows, while each node's own set is.
pub fn combination(
    rules: &Compiled,
    identity: &Arc<WorkloadIdentity>,
    contract: Option<usize>,
    shares: &[(String, Share)],
    window_secs: u64,
) -> Option<Candidate> {
    let c = contract.and_then(|i| rules.contracts.get(i))?;
    if c.combinations.is_empty() {
        return None;
    }
    let allowed = |set: &[&str]| {
        set.len() < 2
            || c.combinations.iter().any(|combo| {
                set.iter()
                    .all(|n| combo.iter().any(|d| rules.ds_name(*d) == *n))
            })
    };
    let mut union: Vec<&str> = shares
        .iter()
        .flat_map(|(_, s)| s.requests.keys().map(String::as_str))
        .collect();
    union.sort_unstable();
    union.dedup();
    if allowed(&union) {
        return None;
    }
    let each_allowed = shares.iter().all(|(_, s)| {
        let set: Vec<&str> = s.requests.keys().map(String::as_str).collect();
        allowed(&set)
    });
    if !each_allowed {
        return None;
    }
    let nodes: Vec<String> = shares
        .iter()
        .filter(|(_, s)| !s.requests.is_empty())
        .map(|(n, _)| n.clone())
        .collect();
    let by_node: Vec<String> = shares
        .iter()
        .filter(|(_, s)| !s.requests.is_empty())
        .map(|(n, s)| {
            format!(
                "{n}: {}",
                s.requests.keys().cloned().collect::<Vec<_>>().join("+")
            )
        })
        .collect();
    let names: Vec<String> = union.iter().map(|s| (*s).to_owned()).collect();
    Some(Candidate {
        rule: Rule::CombinationNotAllowed,
        subject: identity.id.clone(),
        key: names.join("+"),
        summary: format!(
            "replicas of {} together touched {} within {window_secs}s ({}); no combination of its contract allows that",
            identity.id,
            names.join(", "),
            by_node.join("; ")
        ),
        identity: identity.clone(),
        contract,
        evidence: Evidence {
            data_sources: names,
            window_seconds: Some(window_secs),
            allowed: c
                .combinations
                .iter()
                .map(|combo| {
                    combo
                        .iter()
                        .map(|d| rules.ds_name(*d))
                        .collect::<Vec<_>>()
                        .join("+")
                })
                .collect(),
            nodes,
            ..Evidence::default()
        },
    })
}

/// Who presented one fingerprint, from its hash: (node, identity, sharing allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presenter {
    pub node: String,
    pub identity: String,
    pub sharing_allowed: bool,
}

/// NHI-050 (NHI-055 for a JWT) over the fleet: one fingerprint presented by two identities or
/// more, not all of them seen by one node (that node raised it locally), and not every one of
/// them allowed to share.
pub fn shared(
    identity: &Arc<WorkloadIdentity>,
    contract: Option<usize>,
    kind: &str,
    fingerprint: &str,
    presenters: &[Presenter],
) -> Option<Candidate> {
    let mut ids: Vec<&str> = presenters.iter().map(|p| p.identity.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() < 2 {
        return None;
    }
    if presenters.iter().all(|p| p.sharing_allowed) {
        return None;
    }
    let mut nodes: Vec<&str> = presenters.iter().map(|p| p.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let one_node_saw_all = nodes.iter().any(|n| {
        ids.iter()
            .all(|i| presenters.iter().any(|p| p.node == *n && p.identity == *i))
    });
    if one_node_saw_all {
        return None;
    }
    let rule = if kind == "jwt" {
        Rule::TokenReplayed
    } else {
        Rule::SharedCredential
    };
    let who: Vec<String> = ids
        .iter()
        .map(|i| {
            let on: Vec<&str> = presenters
                .iter()
                .filter(|p| p.identity == *i)
                .map(|p| p.node.as_str())
                .collect();
            format!("{i} (on {})", on.join(", "))
        })
        .collect();
    Some(Candidate {
        rule,
        subject: fingerprint.to_owned(),
        key: String::new(),
        summary: format!(
            "one {kind} credential is presented by {} identities on different nodes: {}",
            ids.len(),
            who.join(", ")
        ),
        identity: identity.clone(),
        contract,
        evidence: Evidence {
            credential: Some(crate::detect::finding::CredentialRef {
                kind: kind.to_owned(),
                fingerprint: fingerprint.to_owned(),
                vendor: None,
                token_type: None,
                ttl_seconds: None,
                expires_at: None,
            }),
            identities: ids.iter().map(|s| (*s).to_owned()).collect(),
            nodes: nodes.iter().map(|s| (*s).to_owned()).collect(),
            ..Evidence::default()
        },
    })
}

/// What a fleet volume is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Requests,
    Bytes,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Requests => "requests",
            Metric::Bytes => "bytes",
        }
    }

    /// One node's count of this metric for `ds` in its share.
    pub fn of(self, s: &Share, ds: &str) -> Option<u64> {
        match self {
            Metric::Requests => s.requests.get(ds).copied(),
            Metric::Bytes => s.bytes.get(ds).copied(),
        }
    }

    fn words(self) -> &'static str {
        match self {
            Metric::Requests => "requests",
            Metric::Bytes => "bytes of traffic",
        }
    }
}

/// The fleet's total of one window (the value under a window in `P:h:{ID}`): requests and
/// bytes per data source, summed over the nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    #[serde(default, rename = "r")]
    pub requests: BTreeMap<String, u64>,
    #[serde(default, rename = "b")]
    pub bytes: BTreeMap<String, u64>,
}

impl Totals {
    /// A history value as written; one from before bytes were kept (requests only) still reads.
    pub fn parse(v: &str) -> Option<Totals> {
        // The old value's numbers are no maps, so the two never read as each other.
        if let Ok(requests) = serde_json::from_str::<BTreeMap<String, u64>>(v) {
            return Some(Totals {
                requests,
                bytes: BTreeMap::new(),
            });
        }
        serde_json::from_str(v).ok()
    }

    pub fn get(&self, metric: Metric) -> &BTreeMap<String, u64> {
        match metric {
            Metric::Requests => &self.requests,
            Metric::Bytes => &self.bytes,
        }
    }
}

/// NHI-040 over the fleet: an identity's requests (or bytes) to a data source in one window,
/// summed over the nodes, far above the fleet's own history of such sums (median + k·MAD of
/// the last `history` windows, after `warmup` of them, at least `min_requests` or `min_bytes`),
/// while no node alone is above that threshold. `history` holds the fleet totals of earlier
/// windows (window → count), the first key being the identity's first window.
#[allow(clippy::too_many_arguments)]
pub fn spike(
    cfg: &crate::detect::volume::VolumeConfig,
    metric: Metric,
    identity: &Arc<WorkloadIdentity>,
    contract: Option<usize>,
    ds: &str,
    w: i64,
    history: &BTreeMap<i64, u64>,
    shares: &[(String, Share)],
    window_secs: u64,
) -> Option<Candidate> {
    let first = *history.keys().next()?;
    let from = first.max(w - cfg.history as i64);
    if w - from < cfg.warmup.max(1) as i64 {
        return None;
    }
    let mut past: Vec<f64> = (from..w)
        .map(|x| history.get(&x).copied().unwrap_or(0) as f64)
        .collect();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let m = median(&mut past);
    let mut dev: Vec<f64> = past.iter().map(|x| (x - m).abs()).collect();
    let mad = median(&mut dev);
    // As the node-local baseline: a flat history must not make one extra call (or 10 % more
    // bytes) a spike.
    let (spread, floor) = match metric {
        Metric::Requests => (m.sqrt(), cfg.min_requests),
        Metric::Bytes => (0.1 * m, cfg.min_bytes),
    };
    let sd = (1.4826 * mad).max(spread).max(1.0);
    let threshold = ((m + cfg.sensitivity * sd).ceil() as u64).max(floor);
    let per_node: Vec<(&str, u64)> = shares
        .iter()
        .filter_map(|(n, s)| metric.of(s, ds).map(|r| (n.as_str(), r)))
        .filter(|(_, r)| *r > 0)
        .collect();
    let total: u64 = per_node.iter().map(|(_, r)| r).sum();
    if total <= threshold || per_node.iter().any(|(_, r)| *r > threshold) {
        return None;
    }
    let nodes: Vec<String> = per_node.iter().map(|(n, _)| (*n).to_owned()).collect();
    Some(Candidate {
        rule: Rule::VolumeSpike,
        subject: identity.id.clone(),
        key: format!("{ds}:{}", metric.name()),
        summary: format!(
            "{} made {total} {} to {ds} within {window_secs}s across {} nodes ({}), far above the fleet's usual {m:.0} (threshold {threshold}); no node alone exceeded it",
            identity.id,
            metric.words(),
            nodes.len(),
            per_node
                .iter()
                .map(|(n, r)| format!("{n}: {r}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        identity: identity.clone(),
        contract,
        evidence: Evidence {
            data_source: Some(ds.to_owned()),
            metric: Some(metric.name().into()),
            observed: Some(total as f64),
            expected: Some(m),
            limit: Some(threshold as f64),
            window_seconds: Some(window_secs),
            nodes,
            ..Evidence::default()
        },
    })
}
