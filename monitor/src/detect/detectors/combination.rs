//! Combinations: takes the data sources an identity touches (API calls, data files) within `combination.window`, gives NHI-030 (a combination its contract does not allow) and, after `combination.learning`, NHI-031 (a pair never seen in its history, which it then learns).

use std::time::Duration;

use serde::Deserialize;

use super::{Cx, Seen, Subject};
use crate::detect::{
    compiled::DsId,
    finding::{Evidence, Rule},
    MAX_KEYS,
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CombinationConfig {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// From an identity's first sighting, pairs of data sources are learned, not reported.
    #[serde(with = "humantime_serde")]
    pub learning: Duration,
}

impl Default for CombinationConfig {
    fn default() -> Self {
        CombinationConfig {
            window: Duration::from_secs(600),
            learning: Duration::from_secs(86_400),
        }
    }
}

#[inline(always)]
pub(in crate::detect) fn detect(cx: &mut Cx<'_>, id: &mut Subject<'_>, seen: &Seen<'_>) {
    let ds = match (&seen.file, &seen.call) {
        // Credential files are secrets, not data: reading one combines nothing.
        (Some(f), _) => f.ds.filter(|&d| !cx.holds_credentials(d)),
        (_, Some(c)) => Some(c.ds),
        _ => None,
    };
    if let Some(ds) = ds {
        judge(cx, id, ds);
    }
}

fn judge(cx: &mut Cx<'_>, id: &mut Subject<'_>, ds: DsId) {
    let (contract, record, window) = (id.contract, &mut *id.record, &mut *id.window);
    let span = i64::try_from(cx.cfg.combination.window.as_nanos()).unwrap_or(i64::MAX);
    let t = cx.t;
    window.retain(|&(_, last)| t.saturating_sub(last) < span);
    if let Some(e) = window.iter_mut().find(|(d, _)| *d == ds) {
        e.1 = e.1.max(t);
        return;
    }
    let others: Vec<DsId> = window.iter().map(|(d, _)| *d).collect();
    window.push((ds, t));
    if others.is_empty() {
        return;
    }
    let mut set: Vec<DsId> = window.iter().map(|(d, _)| *d).collect();
    set.sort_unstable();
    let rules = cx.rules;
    let names =
        |s: &[DsId]| -> Vec<String> { s.iter().map(|d| rules.ds_name(*d).to_owned()).collect() };
    let set_names = names(&set);
    let who = cx.who();
    let new_name = rules.ds_name(ds).to_owned();
    if let Some(c) = cx.contract(contract) {
        if !c.combinations.is_empty()
            && !c
                .combinations
                .iter()
                .any(|combo| set.iter().all(|d| combo.binary_search(d).is_ok()))
        {
            let allowed: Vec<String> = c
                .combinations
                .iter()
                .map(|combo| names(combo).join("+"))
                .collect();
            cx.raise(
                Rule::CombinationNotAllowed,
                set_names.join("+"),
                format!(
                    "{who} touched {new_name} together with {} within {}; no combination of its contract allows that",
                    names(&others).join(", "),
                    humantime::format_duration(cx.cfg.combination.window)
                ),
                contract,
                Evidence {
                    data_sources: set_names.clone(),
                    data_source: Some(new_name.clone()),
                    window_seconds: Some(cx.cfg.combination.window.as_secs()),
                    allowed,
                    ..Evidence::default()
                },
            );
        }
    }
    let learning = i64::try_from(cx.cfg.combination.learning.as_secs()).unwrap_or(i64::MAX);
    let learned = cx.secs >= record.first_seen.saturating_add(learning);
    for o in others {
        let (a, b) = if rules.ds_name(o) < new_name.as_str() {
            (rules.ds_name(o).to_owned(), new_name.clone())
        } else {
            (new_name.clone(), rules.ds_name(o).to_owned())
        };
        let pair = (a, b);
        if record.pairs.contains(&pair) {
            continue;
        }
        if learned {
            cx.raise(
                Rule::CombinationUnseen,
                format!("{}+{}", pair.0, pair.1),
                format!(
                    "{who} touched {} and {} within {}, a combination not seen in its history",
                    pair.0,
                    pair.1,
                    humantime::format_duration(cx.cfg.combination.window)
                ),
                contract,
                Evidence {
                    data_sources: vec![pair.0.clone(), pair.1.clone()],
                    window_seconds: Some(cx.cfg.combination.window.as_secs()),
                    ..Evidence::default()
                },
            );
        }
        if record.pairs.len() < MAX_KEYS {
            record.pairs.insert(pair);
        } else {
            record.dropped += 1;
        }
    }
}
