//! Read-side reports: takes persisted identity and credential records and the rules, gives the inventory and contract suggestions.

mod inventory;
mod suggest;

pub use inventory::{inventory, render_inventory_table, InventoryCredential, InventoryRow, Status};
pub use suggest::{suggest, Suggestion};

use std::time::{Duration, UNIX_EPOCH};

use crate::{
    contracts::{AccessContract, CredentialKind, Date, Method, RuleSet, Subject},
    detect::state::IdentityRecord,
    identity::selectors::Attributes,
};

/// The contract the current rules give this identity: one naming its SPIFFE ID exactly wins over
/// selector contracts; among those, the first in rules order. Pod labels are not persisted, so
/// `k8s:pod-label` selectors cannot match here.
pub fn resolve_contract<'r>(
    rules: &'r RuleSet,
    record: &IdentityRecord,
) -> Option<&'r AccessContract> {
    let id = &record.identity;
    rules
        .contracts
        .iter()
        .find(|c| matches!(&c.subject, Subject::Identity(s) if *s == id.id))
        .or_else(|| {
            let attrs = Attributes { id, labels: None };
            rules
                .contracts
                .iter()
                .find(|c| matches!(&c.subject, Subject::Selectors(r) if r.matches(&attrs)))
        })
}

/// A contract is valid through the end of its `expires` day, UTC.
pub fn expired(expires: Option<Date>, now_unix: i64) -> bool {
    let Some(d) = expires else { return false };
    match humantime::parse_rfc3339(&format!("{d}T23:59:59Z")) {
        Ok(t) => t
            .duration_since(UNIX_EPOCH)
            .map(|e| now_unix > e.as_secs() as i64)
            .unwrap_or(true),
        // Only dates before 1970 fail to parse: long past.
        Err(_) => true,
    }
}

/// Unix seconds as `2026-11-23T10:00:00Z` (times before 1970 are clamped to it).
pub fn rfc3339(unix: i64) -> String {
    let secs = u64::try_from(unix).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The observation's credential kind (`api_key`) as the rules spell it (`api-key`).
pub fn credential_kind(observed: &str) -> Option<CredentialKind> {
    Some(match observed {
        "jwt" => CredentialKind::Jwt,
        "bearer" => CredentialKind::Bearer,
        "basic" => CredentialKind::Basic,
        "api_key" => CredentialKind::ApiKey,
        "aws_sigv4" => CredentialKind::AwsSigv4,
        _ => return None,
    })
}

pub fn credential_kind_name(k: CredentialKind) -> &'static str {
    match k {
        CredentialKind::Jwt => "jwt",
        CredentialKind::Bearer => "bearer",
        CredentialKind::Basic => "basic",
        CredentialKind::ApiKey => "api-key",
        CredentialKind::AwsSigv4 => "aws-sigv4",
    }
}

pub fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
        Method::Options => "OPTIONS",
    }
}

/// In the order contracts are written.
pub const METHODS: [Method; 7] = [
    Method::Get,
    Method::Head,
    Method::Post,
    Method::Put,
    Method::Patch,
    Method::Delete,
    Method::Options,
];

pub const CREDENTIAL_KINDS: [CredentialKind; 5] = [
    CredentialKind::Jwt,
    CredentialKind::Bearer,
    CredentialKind::Basic,
    CredentialKind::ApiKey,
    CredentialKind::AwsSigv4,
];

pub fn parse_method(s: &str) -> Option<Method> {
    METHODS.into_iter().find(|m| method_name(*m) == s)
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
