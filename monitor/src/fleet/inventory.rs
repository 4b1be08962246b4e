//! `inventory --fleet` and `suggest --fleet`: takes the fleet store's inventory and window keys, gives the fleet's identities with their nodes, contracts and data sources.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{
    detectors::Share,
    store::{Keys, Target, SEP},
    FleetConfig,
};
use crate::identity::IdentityKind;

/// The value under `node|ID` in `P:inv:D`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub kind: IdentityKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Unix seconds: the start of the last window the node saw the identity in.
    pub last_seen: i64,
}

/// One identity as the whole fleet saw it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetIdentity {
    pub identity: String,
    pub kind: IdentityKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    pub nodes: Vec<String>,
    #[serde(with = "crate::events::observation::rfc3339_ns")]
    pub last_seen: i64,
    /// Data sources and requests over the windows the store still keeps.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data_sources: BTreeMap<String, u64>,
}

/// Reads today's and yesterday's inventory (the days the store keeps).
pub async fn read(cfg: &FleetConfig, now_secs: i64) -> anyhow::Result<Vec<FleetIdentity>> {
    let target = Target::new(cfg)?;
    let mut c = target
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("fleet store at {}: {e}", target.url))?;
    let keys = Keys {
        prefix: cfg.prefix.clone(),
    };
    let day = now_secs.div_euclid(86_400);
    let mut by_id: BTreeMap<String, FleetIdentity> = BTreeMap::new();
    for d in [day - 1, day] {
        let rows: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys.inventory(d))
            .query_async(&mut c)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "fleet store at {}: {}",
                    target.url,
                    super::store::describe(&e)
                )
            })?;
        for (field, v) in rows {
            let Some((node, id)) = field.split_once(SEP) else {
                continue;
            };
            let Ok(row) = serde_json::from_str::<Row>(&v) else {
                continue;
            };
            let e = by_id.entry(id.to_owned()).or_insert_with(|| FleetIdentity {
                identity: id.to_owned(),
                kind: row.kind,
                contract: None,
                nodes: Vec::new(),
                last_seen: 0,
                data_sources: BTreeMap::new(),
            });
            if !e.nodes.iter().any(|n| n == node) {
                e.nodes.push(node.to_owned());
                e.nodes.sort();
            }
            let t = row.last_seen.saturating_mul(1_000_000_000);
            if t >= e.last_seen {
                e.last_seen = t;
                e.contract = row.contract;
            }
        }
    }
    // Data sources from the window keys still alive (SCAN: never blocks the store).
    let window_ns = i64::try_from(cfg.window.as_nanos())
        .unwrap_or(i64::MAX)
        .max(1);
    for (id, e) in by_id.iter_mut() {
        let last = e.last_seen.div_euclid(window_ns);
        let mut pipe = redis::pipe();
        let ws: Vec<i64> = (0..i64::from(cfg.ttl_windows)).map(|i| last - i).collect();
        for w in &ws {
            pipe.hgetall(keys.window(id, *w));
        }
        let read: Vec<Vec<(String, String)>> = pipe.query_async(&mut c).await.map_err(|e| {
            anyhow::anyhow!(
                "fleet store at {}: {}",
                target.url,
                super::store::describe(&e)
            )
        })?;
        for (_, v) in read.into_iter().flatten() {
            if let Ok(s) = serde_json::from_str::<Share>(&v) {
                for (ds, n) in s.requests {
                    *e.data_sources.entry(ds).or_default() += n;
                }
            }
        }
    }
    Ok(by_id.into_values().collect())
}

/// The table `inventory --fleet` prints.
pub fn render(rows: &[FleetIdentity]) -> String {
    let mut s = String::from("IDENTITY\tKIND\tCONTRACT\tNODES\tDATA SOURCES\tLAST SEEN\n");
    for r in rows {
        let kind = serde_json::to_value(r.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let ds: BTreeSet<&str> = r.data_sources.keys().map(String::as_str).collect();
        s.push_str(&format!(
            "{}\t{kind}\t{}\t{}\t{}\t{}\n",
            r.identity.escape_debug(),
            r.contract.as_deref().unwrap_or("-"),
            r.nodes.join(","),
            if ds.is_empty() {
                "-".to_owned()
            } else {
                ds.into_iter().collect::<Vec<_>>().join(",")
            },
            crate::events::observation::rfc3339_ns::format(r.last_seen)
        ));
    }
    s
}

/// `suggest --fleet`: this node's record of the identity (if any) with the data sources the
/// whole fleet saw it use.
pub fn merge(
    record: Option<crate::detect::state::IdentityRecord>,
    row: &FleetIdentity,
) -> crate::detect::state::IdentityRecord {
    use crate::detect::state::{IdentityRecord, Usage};
    let secs = row.last_seen.div_euclid(1_000_000_000);
    let mut r = record.unwrap_or_else(|| IdentityRecord {
        identity: crate::identity::WorkloadIdentity {
            id: row.identity.clone(),
            kind: row.kind,
            namespace: None,
            service_account: None,
            pod: None,
            pod_uid: None,
            container: None,
            container_id: None,
            image: None,
            owner: None,
            unit: None,
            uid: None,
            user: None,
            exe: None,
            node: row.nodes.first().cloned().unwrap_or_default(),
        },
        contract: row.contract.clone(),
        first_seen: secs,
        last_seen: secs,
        executables: Default::default(),
        data_sources: Default::default(),
        methods: Default::default(),
        scopes: Default::default(),
        secrets: Default::default(),
        destinations: Default::default(),
        credentials: Default::default(),
        peak_requests_per_minute: Default::default(),
        pairs: Default::default(),
        volume: Default::default(),
        dropped: 0,
    });
    r.last_seen = r.last_seen.max(secs);
    for (ds, n) in &row.data_sources {
        let u = r
            .data_sources
            .entry(ds.clone())
            .or_insert_with(|| Usage::new(secs));
        u.last_seen = u.last_seen.max(secs);
        u.count = u.count.max(*n);
    }
    r
}
