//! Governance: takes every observation's identity and its contract, gives NHI-001 (no contract; by default only for identities that matter, `detectors.ungoverned.report`), NHI-002 (contract expired), NHI-003 (contract without owner) and NHI-060 (break-glass identity active), each at most once per identity per `ungoverned_window`.

use super::{Cx, Seen, Subject};
use crate::detect::{
    compiled::CompiledContract,
    finding::{self, Candidate, Evidence, Rule},
    UngovernedReport,
};

/// Findings about the identity itself rather than one access.
#[inline(always)]
pub(in crate::detect) fn detect(cx: &mut Cx<'_>, id: &mut Subject<'_>, _: &Seen<'_>) {
    match cx.contract(id.contract) {
        None => ungoverned(cx, id),
        Some(c) if c.ownerless || c.break_glass || c.expires_at.is_some_and(|e| cx.t >= e) => {
            governed(cx, c)
        }
        Some(_) => {}
    }
}

fn ungoverned(cx: &mut Cx<'_>, id: &mut Subject<'_>) {
    // Identities that only ran and connected are still learned (the inventory lists them); the
    // finding waits for the first activity that makes one matter, if ever.
    if !id.significant && cx.cfg.ungoverned.report == UngovernedReport::Significant {
        return;
    }
    let who = cx.who();
    // Hashing the id costs as much as the rest of an ungoverned identity's observation.
    let h = *id
        .ungoverned_key
        .get_or_insert_with(|| finding::dedup_key(who, Rule::Ungoverned, &[]));
    if cx.identity_fresh(Rule::Ungoverned, h) {
        let cand = Candidate {
            rule: Rule::Ungoverned,
            summary: format!("{who} is active but no access contract governs it"),
            contract: None,
            evidence: Evidence::default(),
        };
        cx.identity_open(h, cand);
    }
}

fn governed(cx: &mut Cx<'_>, c: &CompiledContract) {
    let who = cx.who();
    let expired = c.expires_at.is_some_and(|e| cx.t >= e);
    for (rule, applies) in [
        (Rule::ContractExpired, expired),
        (Rule::ContractWithoutOwner, c.ownerless),
        (Rule::BreakGlass, c.break_glass),
    ] {
        if !applies {
            continue;
        }
        let h = finding::dedup_key(who, rule, &[&c.reference.version]);
        if !cx.identity_fresh(rule, h) {
            continue;
        }
        let name = &c.reference.name;
        let (summary, evidence) = match rule {
            Rule::ContractExpired => {
                let day = c.expires.map(|d| d.to_string()).unwrap_or_default();
                (
                    format!("{who} is active under contract {name} which expired on {day}"),
                    Evidence {
                        expired_on: Some(day),
                        ..Evidence::default()
                    },
                )
            }
            Rule::ContractWithoutOwner => (
                format!("{who} is active under contract {name} which names no owner"),
                Evidence::default(),
            ),
            _ => (
                format!("break-glass identity {who} is active (contract {name})"),
                Evidence::default(),
            ),
        };
        let cand = Candidate {
            rule,
            summary,
            contract: Some(c.reference.clone()),
            evidence,
        };
        cx.identity_open(h, cand);
    }
}
