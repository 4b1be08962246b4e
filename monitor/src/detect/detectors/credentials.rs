//! Credentials: takes the credentials presented with an API call and who else presented them, gives NHI-050 (shared credential), NHI-051 (kind not allowed), NHI-052 (legacy credential), NHI-053 (token lifetime too long), NHI-054 (expired token) and NHI-055 (token replayed by another identity).

use super::{Cx, Seen, Subject};
use crate::{
    detect::finding::{CredentialRef, Evidence, Rule},
    events::observation::{rfc3339_ns, CredentialSeen},
};

#[inline(always)]
pub(in crate::detect) fn detect(cx: &mut Cx<'_>, id: &mut Subject<'_>, seen: &Seen<'_>) {
    for (i, cred) in seen.credentials.iter().enumerate() {
        judge(cx, id.contract, cred, seen.shared(i));
    }
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
