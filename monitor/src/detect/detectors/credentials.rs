//! Credentials: takes the credentials presented with an API call, the request and who else presented them, gives NHI-050 (shared credential), NHI-051 (kind not allowed), NHI-052 (legacy credential), NHI-053 (token lifetime too long), NHI-054 (expired token), NHI-055 (token replayed by another identity), NHI-056 (audience mismatch), NHI-057 (audience missing), NHI-058 (scope beyond the contract) and NHI-059 (rotation overdue).

use super::{Cx, Seen, Subject};
use crate::{
    detect::{
        audience,
        finding::{CredentialRef, Evidence, Rule},
        learn,
    },
    events::observation::{rfc3339_ns, CredentialSeen, JwtSeen},
};

#[inline(always)]
pub(in crate::detect) fn detect(cx: &mut Cx<'_>, id: &mut Subject<'_>, seen: &Seen<'_>) {
    for (i, cred) in seen.credentials.iter().enumerate() {
        judge(cx, id.contract, cred, seen.shared(i));
        if let Some(j) = &cred.jwt {
            token(cx, id.contract, cred, j, seen);
        }
        if seen.overdue(i) {
            rotation(cx, id.contract, cred);
        }
    }
}

fn cref(cred: &CredentialSeen) -> CredentialRef {
    CredentialRef {
        kind: cred.kind.clone(),
        fingerprint: cred.fingerprint.clone(),
        vendor: cred.vendor.clone(),
        token_type: cred.token_type.clone(),
        ttl_seconds: cred.jwt.as_ref().and_then(|j| j.ttl_seconds),
        expires_at: cred
            .jwt
            .as_ref()
            .and_then(|j| j.exp)
            .map(|e| rfc3339_ns::format(e.saturating_mul(1_000_000_000))),
    }
}

/// Most audiences and scopes judged per token: what the parser keeps (`MAX_AUD`, `MAX_SCOPES`),
/// so that a hand-written recording cannot make one observation cost more.
const MAX_JUDGED: usize = 64;

/// A JWT's audience (NHI-056, NHI-057) and scopes (NHI-058) against where it went and what the
/// contract allows there.
fn token(
    cx: &mut Cx<'_>,
    contract: Option<usize>,
    cred: &CredentialSeen,
    j: &JwtSeen,
    seen: &Seen<'_>,
) {
    let Some(req) = seen.request else { return };
    let Some(host) = req.host.as_deref() else {
        return;
    };
    let c = cx.contract(contract);
    let ds = seen.call.as_ref().map(|call| call.ds);
    let aud = &j.aud[..j.aud.len().min(MAX_JUDGED)];
    if !aud.is_empty() {
        let rules = cx.rules;
        // The data source the call belongs to, or any serving the host (a path no data source
        // claims still reaches that API).
        let declared = |d| rules.audiences(d);
        let named = match ds {
            Some(d) => audience::names_destination(
                aud,
                host,
                &req.path,
                declared(d),
                &cx.cfg.credentials.kubernetes_api_hosts,
            ),
            None => {
                let mut any = rules.host_data_sources(host).peekable();
                if any.peek().is_none() {
                    audience::names_destination(
                        aud,
                        host,
                        &req.path,
                        &[],
                        &cx.cfg.credentials.kubernetes_api_hosts,
                    )
                } else {
                    any.any(|d| {
                        audience::names_destination(
                            aud,
                            host,
                            &req.path,
                            declared(d),
                            &cx.cfg.credentials.kubernetes_api_hosts,
                        )
                    })
                }
            }
        };
        if !named {
            let mut key: Vec<&str> = Vec::with_capacity(aud.len() * 2 + 1);
            key.push(host);
            for a in aud {
                key.push("\0");
                key.push(a);
            }
            if let Some(f) = cx.fresh(Rule::AudienceMismatch, &key) {
                let who = cx.who();
                let path = &req.path;
                cx.open(
                    f,
                    format!(
                        "{who} presented a token minted for {} to {host}{path}, which none of its audiences names",
                        aud.join(", ")
                    ),
                    contract,
                    Evidence {
                        credential: Some(cref(cred)),
                        destination: Some(host.to_owned()),
                        path: Some(path.clone()).filter(|p| !p.is_empty()),
                        method: req.method.clone(),
                        data_source: ds.map(|d| rules.ds_name(d).to_owned()),
                        audiences: aud.to_vec(),
                        ..Evidence::default()
                    },
                );
            }
        }
    } else if c.is_some_and(|c| c.require_audience) {
        let iss = j.iss.as_deref().unwrap_or("");
        if let Some(f) = cx.fresh(Rule::AudienceMissing, &[iss]) {
            let who = cx.who();
            let from = j
                .iss
                .as_deref()
                .map_or_else(String::new, |i| format!(" from {i}"));
            cx.open(
                f,
                format!("{who} presented a token{from} that names no audience to {host}; its contract requires audience-bound tokens"),
                contract,
                Evidence {
                    credential: Some(cref(cred)),
                    destination: Some(host.to_owned()),
                    data_source: ds.map(|d| cx.rules.ds_name(d).to_owned()),
                    ..Evidence::default()
                },
            );
        }
    }
    // Scopes: only where the contract lists them for a data source of this host. A token is
    // minted for a server, not for one of the data sources it serves (one SMART token reads
    // Patient and MedicationRequest alike), so the grants of every data source the host serves
    // count together.
    let Some(c) = c else { return };
    if c.scopes.is_empty() || j.scope.is_empty() {
        return;
    }
    let rules = cx.rules;
    let own = ds.and_then(|d| c.scopes.get(&d));
    // The grants of the host's other data sources, looked up only when the call's own data
    // source does not cover a scope (the common case costs one glob match per scope).
    let others = || {
        rules
            .host_data_sources(host)
            .filter(move |d| Some(*d) != ds)
            .filter_map(|d| c.scopes.get(&d))
    };
    if own.is_none() && others().next().is_none() {
        return;
    }
    let Some(ci) = contract else { return };
    for sc in j.scope.iter().take(MAX_JUDGED) {
        let allowed = cx.caches.scope_allowed(ci, host, sc, || {
            own.is_some_and(|(g, _)| g.is_match(sc.as_str()))
                || others().any(|(g, _)| g.is_match(sc.as_str()))
        });
        if allowed {
            continue;
        }
        let Some(f) = cx.fresh(Rule::ScopeBeyondContract, &[sc]) else {
            continue;
        };
        let who = cx.who();
        let mut allowed: Vec<String> = own
            .into_iter()
            .chain(others())
            .flat_map(|(_, v)| v.iter().cloned())
            .collect();
        allowed.sort();
        allowed.dedup();
        let name = ds.map(|d| rules.ds_name(d).to_owned());
        cx.open(
            f,
            format!(
                "{who} holds a token with scope {sc} at {host}; its contract allows {} there",
                allowed.join(", ")
            ),
            contract,
            Evidence {
                credential: Some(cref(cred)),
                data_source: name,
                destination: Some(host.to_owned()),
                scope: Some(sc.clone()),
                allowed,
                ..Evidence::default()
            },
        );
    }
}

/// A static credential in use longer than the maximum key age since nhiwatch first saw it
/// (NHI-059). `learn` flagged it; the age is checked again here from the sighting.
fn rotation(cx: &mut Cx<'_>, contract: Option<usize>, cred: &CredentialSeen) {
    let fp = cred.fingerprint.as_str();
    let Some(first) = cx.sightings(fp).map(|s| s.first_seen()) else {
        return;
    };
    let max = cx
        .contract(contract)
        .and_then(|c| c.max_key_age)
        .unwrap_or_else(|| {
            i64::try_from(cx.cfg.credentials.max_key_age.as_secs()).unwrap_or(i64::MAX)
        });
    let age = cx.secs.saturating_sub(first);
    if age <= max || !learn::is_static(cred) {
        return;
    }
    let Some(f) = cx.fresh(Rule::RotationOverdue, &[fp]) else {
        return;
    };
    let who = cx.who();
    let days = (age / 86_400) as u64;
    let max_days = max / 86_400;
    let first_seen = rfc3339_ns::format(first.saturating_mul(1_000_000_000));
    let what = match cred.kind.as_str() {
        "api_key" => "an API key",
        "basic" => "a Basic-auth password",
        "aws_sigv4" => "an AWS access key",
        "jwt" => "a token without expiry",
        _ => "a static token",
    };
    cx.open(
        f,
        format!(
            "{who} has used {what} for at least {days} days (first seen {first_seen}); it should be rotated every {max_days} days. The key may be older: nhiwatch counts from its first sighting"
        ),
        contract,
        Evidence {
            credential: Some(cref(cred)),
            first_seen: Some(first_seen),
            days_in_use: Some(days),
            age_is_lower_bound: Some(true),
            limit: Some(max_days as f64),
            ..Evidence::default()
        },
    );
}

/// `shared`: whether other identities may have presented it too.
fn judge(cx: &mut Cx<'_>, contract: Option<usize>, cred: &CredentialSeen, shared: bool) {
    let ttl = cred.jwt.as_ref().and_then(|j| j.ttl_seconds);
    let who = cx.who();
    let cref = || CredentialRef {
        kind: cred.kind.clone(),
        fingerprint: cred.fingerprint.clone(),
        vendor: cred.vendor.clone(),
        token_type: cred.token_type.clone(),
        ttl_seconds: ttl,
        expires_at: cred
            .jwt
            .as_ref()
            .and_then(|j| j.exp)
            .map(|e| rfc3339_ns::format(e.saturating_mul(1_000_000_000))),
    };
    let ev = |extra: Evidence| Evidence {
        credential: Some(cref()),
        ..extra
    };
    let fp = cred.fingerprint.as_str();
    let c = cx.contract(contract);
    let kinds: &[&str] = c.map_or(&[], |c| c.kinds.as_slice());
    let kind = cred.kind.as_str();
    let kind_listed = kinds.contains(&kind);
    let fresh = if !kinds.is_empty() && !kind_listed {
        cx.fresh(Rule::CredentialKindNotAllowed, &[kind])
    } else {
        None
    };
    if let Some(f) = fresh {
        cx.open(
            f,
            format!(
                "{who} presented a credential of kind {kind}; its contract allows {}",
                kinds.join(", ")
            ),
            contract,
            ev(Evidence {
                allowed: kinds.iter().map(|k| k.to_string()).collect(),
                ..Evidence::default()
            }),
        );
    }
    let legacy = match kind {
        "basic" => Some("HTTP Basic authentication (a static password)"),
        "aws_sigv4" if cred.long_lived == Some(true) => Some("a long-term AWS access key"),
        _ => None,
    };
    let fresh = match (legacy, kind_listed) {
        (Some(what), false) => cx.fresh(Rule::LegacyCredential, &[fp]).map(|f| (f, what)),
        _ => None,
    };
    if let Some((f, what)) = fresh {
        cx.open(
            f,
            format!("{who} authenticates with {what}"),
            contract,
            ev(Evidence::default()),
        );
    }
    if let (Some(ttl), Some(max)) = (ttl, c.and_then(|c| c.max_ttl_seconds)) {
        if let Some(f) = (ttl > max)
            .then(|| cx.fresh(Rule::TokenTtlTooLong, &[fp]))
            .flatten()
        {
            cx.open(
                f,
                format!(
                    "{who} presented a token valid for {ttl}s; its contract allows at most {max}s"
                ),
                contract,
                ev(Evidence {
                    observed: Some(ttl as f64),
                    limit: Some(max as f64),
                    ..Evidence::default()
                }),
            );
        }
    }
    if let Some(exp) = cred.jwt.as_ref().and_then(|j| j.exp) {
        if let Some(f) = (exp < cx.secs)
            .then(|| cx.fresh(Rule::ExpiredToken, &[fp]))
            .flatten()
        {
            cx.open(
                f,
                format!(
                    "{who} presented a token that expired {}s earlier",
                    cx.secs.saturating_sub(exp)
                ),
                contract,
                ev(Evidence::default()),
            );
        }
    }
    // Sightings across identities (the engine has recorded this one's).
    if !shared {
        return;
    }
    let Some(r) = cx.sightings(fp) else {
        return;
    };
    let others: Vec<String> = r
        .identities()
        .map(|(i, _)| i)
        .filter(|i| *i != who)
        .map(str::to_owned)
        .collect();
    if others.is_empty() {
        return;
    }
    if kind == "jwt" {
        let Some(f) = cx.fresh(Rule::TokenReplayed, &[fp]) else {
            return;
        };
        cx.open(
            f,
            format!(
                "{who} presented a token already used by {}",
                others.join(", ")
            ),
            contract,
            ev(Evidence {
                identities: others,
                ..Evidence::default()
            }),
        );
        return;
    }
    let allowed_here = c.is_some_and(|c| c.shared_allowed);
    let allowed_there = others
        .iter()
        .all(|o| cx.contract_of(o).is_some_and(|c| c.shared_allowed));
    let fresh = if !(allowed_here && allowed_there) {
        cx.fresh(Rule::SharedCredential, &[fp])
    } else {
        None
    };
    if let Some(f) = fresh {
        cx.open(
            f,
            format!(
                "{who} uses a credential (kind {kind}) also used by {}",
                others.join(", ")
            ),
            contract,
            ev(Evidence {
                identities: others,
                ..Evidence::default()
            }),
        );
    }
}
