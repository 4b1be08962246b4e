//! `nhiwatch inventory`: takes identity and credential records (and the current rules), gives one row per identity with its governance status.

use std::collections::HashMap;

use serde::Serialize;

use super::{expired, resolve_contract, rfc3339};
use crate::{
    contracts::RuleSet,
    detect::state::{CredentialRecord, IdentityRecord},
    identity::IdentityKind,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Governed,
    Ungoverned,
    /// Governed by a contract past its `expires` date.
    Expired,
    /// Governed by a contract with an empty owner.
    NoOwner,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Governed => "governed",
            Status::Ungoverned => "ungoverned",
            Status::Expired => "expired",
            Status::NoOwner => "no-owner",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InventoryRow {
    pub id: String,
    pub kind: IdentityKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Null: no contract governs it.
    pub contract: Option<String>,
    pub status: Status,
    /// The contract's owner; null when ungoverned or when no rules were given to look it up.
    pub owner: Option<String>,
    /// Why the identity holds its access (the contract's `purpose`); null as `owner` is.
    pub purpose: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
    pub data_sources: Vec<String>,
    pub credentials: Vec<InventoryCredential>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InventoryCredential {
    pub kind: String,
    pub fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_lived: Option<bool>,
    /// Other identities seen with the same fingerprint (a lower bound past `MAX_SHARERS`).
    pub shared_with: usize,
}

/// One row per identity, sorted by id. With `rules`, the contract is resolved again so the
/// inventory reflects the rules as they are now, not as they were at the last sighting.
pub fn inventory(
    identities: &[IdentityRecord],
    credentials: &[CredentialRecord],
    rules: Option<&RuleSet>,
    now_unix: i64,
) -> Vec<InventoryRow> {
    let by_fp: HashMap<&str, &CredentialRecord> = credentials
        .iter()
        .map(|c| (c.fingerprint.as_str(), c))
        .collect();
    let mut rows: Vec<InventoryRow> = identities
        .iter()
        .map(|r| {
            let (contract, status, owner, purpose) = match rules {
                Some(rules) => match resolve_contract(rules, r) {
                    Some(c) => {
                        let status = if expired(c.expires, now_unix) {
                            Status::Expired
                        } else if c.owner.trim().is_empty() {
                            Status::NoOwner
                        } else {
                            Status::Governed
                        };
                        (
                            Some(c.name.clone()),
                            status,
                            Some(c.owner.clone()),
                            Some(c.purpose.trim().to_owned()),
                        )
                    }
                    None => (None, Status::Ungoverned, None, None),
                },
                None => match &r.contract {
                    Some(c) => (Some(c.clone()), Status::Governed, None, None),
                    None => (None, Status::Ungoverned, None, None),
                },
            };
            let id = &r.identity;
            InventoryRow {
                id: id.id.clone(),
                kind: id.kind,
                namespace: id.namespace.clone(),
                service_account: id.service_account.clone(),
                pod: id.pod.clone(),
                unit: id.unit.clone(),
                uid: id.uid,
                exe: id.exe.clone(),
                contract,
                status,
                owner,
                purpose,
                first_seen: rfc3339(r.first_seen),
                last_seen: rfc3339(r.last_seen),
                data_sources: r.data_sources.keys().cloned().collect(),
                credentials: r
                    .credentials
                    .iter()
                    .map(|(fp, u)| {
                        let rec = by_fp.get(fp.as_str());
                        InventoryCredential {
                            kind: u.kind.clone(),
                            fingerprint: fp.clone(),
                            long_lived: u.long_lived.or(rec.and_then(|c| c.long_lived)),
                            shared_with: rec.map_or(0, |c| {
                                c.identities.keys().filter(|i| **i != id.id).count()
                            }),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows
}

const HEADER: [&str; 9] = [
    "IDENTITY",
    "KIND",
    "STATUS",
    "CONTRACT",
    "OWNER",
    "LAST SEEN",
    "DATA SOURCES",
    "CREDENTIALS",
    // Last: the one free-text column, as long as its sentence.
    "PURPOSE",
];

/// Aligned columns, one line per identity, for a terminal.
pub fn render_inventory_table(rows: &[InventoryRow]) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            clean(s)
        }
    };
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            let creds: Vec<String> = r
                .credentials
                .iter()
                .map(|c| {
                    // The tail of the fingerprint is enough to tell credentials apart on screen.
                    let short: String = c
                        .fingerprint
                        .rsplit(':')
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(8)
                        .collect();
                    let mut s = format!("{}:{short}", c.kind);
                    if c.long_lived == Some(true) {
                        s.push_str(" long-lived");
                    }
                    if c.shared_with > 0 {
                        s.push_str(&format!(" shared+{}", c.shared_with));
                    }
                    s
                })
                .collect();
            [
                dash(&r.id),
                kind_name(r.kind).to_owned(),
                r.status.name().to_owned(),
                dash(r.contract.as_deref().unwrap_or("")),
                dash(r.owner.as_deref().unwrap_or("")),
                r.last_seen.clone(),
                dash(&r.data_sources.join(",")),
                dash(&creds.join(", ")),
                dash(r.purpose.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_owned);
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            line.extend(std::iter::repeat_n(' ', w - c.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn kind_name(k: IdentityKind) -> &'static str {
    match k {
        IdentityKind::Kubernetes => "kubernetes",
        IdentityKind::Container => "container",
        IdentityKind::Systemd => "systemd",
        IdentityKind::Unix => "unix",
    }
}

/// Names come from workloads (pod names, unit names): no terminal control sequences on screen.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
