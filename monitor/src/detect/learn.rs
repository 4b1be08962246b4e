//! What an observation shows about its identity: takes the observation and the identity's state, records the executables, data sources, methods, secrets, destinations and credentials it used (and who else presented each credential), and gives the observation classified once for the detectors.

use std::{collections::BTreeMap, sync::Arc};

use super::{
    compiled::{Compiled, DsId},
    detectors::{Call, FileRead, Seen},
    engine::{Caches, IdState},
    hot::{self, Hot, HotCred, InlineKey},
    sightings::Sightings,
    state::{CredentialUse, IdentityRecord, SecretUsage, Usage},
    MAX_CREDENTIALS, MAX_KEYS,
};
use crate::events::observation::{Activity, CredentialSeen, Observation};

/// Records what `o` shows about its identity (`st`) and classifies it for the detectors.
pub(super) fn learn<'o>(
    rules: &Compiled,
    caches: &mut Caches,
    creds: &mut Sightings,
    st: &mut IdState,
    o: &'o Observation,
    secs: i64,
    default_max_key_age: i64,
) -> Seen<'o> {
    let (record, hot) = (&mut st.record, &mut st.hot);
    if let Some(exe) = &o.exe {
        touch_exe(record, hot, exe, secs);
    }
    let mut seen = Seen::default();
    if !st.significant {
        st.significant = significant(rules, o);
    }
    match &o.activity {
        Activity::Exec => {}
        // A failed open read nothing: it is in the events, not a finding.
        Activity::FileOpen { result, .. } if *result < 0 => {}
        Activity::FileOpen { path, .. } => {
            let exe = o.exe.as_deref();
            secret(record, secs, exe.unwrap_or("?"), path);
            let (ds, grant) = caches.file_rules(rules, st.contract, path);
            if let Some(d) = ds {
                touch_ds(record, hot, rules, d, secs);
            }
            seen.file = Some(FileRead {
                path,
                exe,
                ds,
                grant,
            });
        }
        Activity::Connect { name, .. } => {
            if let Some(host) = name {
                destination(rules, record, host, secs);
                seen.destination = Some(host);
            }
        }
        Activity::ApiCall(call) => {
            seen.credentials = &call.credentials;
            seen.request = Some(call);
            let max_age = st
                .contract
                .and_then(|c| rules.contracts.get(c))
                .and_then(|c| c.max_key_age)
                .unwrap_or(default_max_key_age);
            // Credentials this identity presents for the first time: their scopes are recorded
            // once, not on every call.
            let mut new_tokens = 0u64;
            for (i, cred) in call.credentials.iter().enumerate() {
                if credential(record, hot, cred, secs)
                    && cred.jwt.as_ref().is_some_and(|j| !j.scope.is_empty())
                {
                    new_tokens |= 1 << i.min(63);
                }
                let (shared, first_seen) = creds.sight(&st.key, cred, secs);
                if shared {
                    seen.shared |= 1 << i.min(63);
                }
                if secs.saturating_sub(first_seen) > max_age && is_static(cred) {
                    seen.overdue |= 1 << i.min(63);
                }
            }
            let Some(host) = call.host.as_deref() else {
                return seen;
            };
            let Some(ds) = caches.classify(rules, host, &call.path) else {
                destination(rules, record, host, secs);
                seen.destination = Some(host);
                return seen;
            };
            let name: &str = rules.ds_name(ds);
            touch_ds(record, hot, rules, ds, secs);
            let method = call.method.as_deref().unwrap_or("?");
            touch_method(record, hot, name, ds, method, secs);
            if new_tokens != 0 {
                scopes(record, name, &call.credentials, new_tokens, secs);
            }
            seen.call = Some(Call {
                call,
                host,
                ds,
                method,
            });
        }
    }
    seen
}

/// A static credential: one that lives until someone rotates it (an API key, a Basic password,
/// a long-lived bearer token, an AKIA access key, a JWT without `exp`), not a token that expires
/// by itself.
pub(super) fn is_static(c: &CredentialSeen) -> bool {
    match c.kind.as_str() {
        "jwt" => c.jwt.as_ref().is_some_and(|j| j.exp.is_none()),
        "api_key" | "basic" => c.long_lived != Some(false),
        _ => c.long_lived == Some(true),
    }
}

/// Whether `o` makes its identity matter even without a contract (NHI-001 by default): it
/// presented a credential, opened a watched file (secret watches and data-source files are
/// the only files observed), or reached a named data source (an API call it classifies as, or
/// a connection to a host that serves one). Starting processes and connecting elsewhere do not.
pub(super) fn significant(rules: &Compiled, o: &Observation) -> bool {
    match &o.activity {
        Activity::Exec => false,
        Activity::FileOpen { result, .. } => *result >= 0,
        Activity::Connect { name, .. } => name
            .as_deref()
            .is_some_and(|h| rules.host_data_sources(h).next().is_some()),
        Activity::ApiCall(call) => {
            !call.credentials.is_empty()
                || call
                    .host
                    .as_deref()
                    .is_some_and(|h| rules.classify_http(h, &call.path).is_some())
        }
    }
}

/// `significant` for a restored record: what it remembers having used.
pub(super) fn significant_record(r: &IdentityRecord) -> bool {
    !r.credentials.is_empty() || !r.secrets.is_empty() || !r.data_sources.is_empty()
}

/// A watched file opened: which executables read it.
fn secret(record: &mut IdentityRecord, secs: i64, exe: &str, path: &str) {
    let full = record.secrets.len() >= MAX_KEYS;
    match record.secrets.get_mut(path) {
        Some(s) => {
            s.usage.touch(secs);
            if s.executables.len() < 16 && !s.executables.contains(exe) {
                s.executables.insert(exe.to_owned());
            }
        }
        None if !full => {
            record.secrets.insert(
                path.to_owned(),
                SecretUsage {
                    usage: Usage::new(secs),
                    executables: [exe.to_owned()].into(),
                },
            );
        }
        None => record.dropped += 1,
    }
}

/// A host reached: remembered as a destination when no data source serves it.
fn destination(rules: &Compiled, record: &mut IdentityRecord, host: &str, secs: i64) {
    let in_ds = rules.host_data_sources(host).next().is_some();
    if !in_ds {
        touch(&mut record.destinations, &mut record.dropped, host, secs);
    }
}

/// The scopes of the tokens flagged in `new` (bit `i`: credential `i`), under the data source.
fn scopes(record: &mut IdentityRecord, ds: &str, creds: &[CredentialSeen], new: u64, t: i64) {
    let flagged = creds
        .iter()
        .enumerate()
        .filter(|(i, _)| new & (1 << (*i).min(63)) != 0);
    for (_, c) in flagged {
        for s in c.jwt.iter().flat_map(|j| j.scope.iter()).take(64) {
            let key = format!("{ds} {s}");
            touch(&mut record.scopes, &mut record.dropped, &key, t);
        }
    }
}

/// A credential presented: its use by this identity, through the identity's cached ones; true
/// when the identity presents this fingerprint for the first time (as far as its record knows).
fn credential(
    record: &mut IdentityRecord,
    hot: &mut Hot,
    cred: &CredentialSeen,
    secs: i64,
) -> bool {
    let ttl = cred.jwt.as_ref().and_then(|j| j.ttl_seconds);
    let tag = hot::tag(&cred.fingerprint);
    match hot.cred(tag, &cred.fingerprint) {
        Some(c) => {
            c.usage.touch(secs);
            c.max_ttl_seconds = c.max_ttl_seconds.max(ttl);
            false
        }
        None => {
            let full = record.credentials.len() >= MAX_CREDENTIALS;
            let key = InlineKey::new(&cred.fingerprint).map(|k| (tag, k));
            credential_use(secs, record, hot, key, cred, ttl, full)
        }
    }
}

/// `credential`'s record update when the fingerprint is not cached (yet).
fn credential_use(
    secs: i64,
    record: &mut IdentityRecord,
    hot: &mut Hot,
    key: Option<(u64, InlineKey<63>)>,
    cred: &CredentialSeen,
    ttl: Option<i64>,
    full: bool,
) -> bool {
    let new = match record.credentials.get_mut(&cred.fingerprint) {
        Some(u) => {
            u.usage.touch(secs);
            u.max_ttl_seconds = u.max_ttl_seconds.max(ttl);
            false
        }
        None => {
            if full {
                // The least recently seen fingerprint gives way, so that an identity whose tokens
                // rotate shows its latest ones. Cached entries stay: their record copy is stale
                // and they are the ones in use.
                // Only an entry older than the best so far is checked against the cache: this
                // runs on every new fingerprint of a full identity (rotating tokens).
                let mut oldest: Option<(&String, i64)> = None;
                for (fp, u) in &record.credentials {
                    let t = u.usage.last_seen;
                    if oldest.is_none_or(|(_, best)| t < best)
                        && !hot
                            .creds
                            .iter()
                            .any(|h| h.fingerprint.as_bytes() == fp.as_bytes())
                    {
                        oldest = Some((fp, t));
                    }
                }
                let oldest = oldest.map(|(fp, _)| fp.clone());
                record.dropped += 1;
                match oldest {
                    Some(fp) => record.credentials.remove(&fp),
                    None => return true,
                };
            }
            record.credentials.insert(
                cred.fingerprint.clone(),
                CredentialUse {
                    kind: cred.kind.clone(),
                    vendor: cred.vendor.clone(),
                    long_lived: cred.long_lived,
                    max_ttl_seconds: ttl,
                    usage: Usage::new(secs),
                },
            );
            true
        }
    };
    if let (Some((tag, k)), Some(u), false) = (
        key,
        record.credentials.get(&cred.fingerprint),
        hot.creds_full(),
    ) {
        hot.creds.push(HotCred {
            tag,
            fingerprint: k,
            usage: u.usage,
            max_ttl_seconds: u.max_ttl_seconds,
        });
    }
    new
}

thread_local! {
    /// Scratch for `DATA-SOURCE METHOD` keys, so known ones cost no allocation.
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn touch(map: &mut BTreeMap<String, Usage>, dropped: &mut u64, key: &str, t: i64) {
    if let Some(u) = map.get_mut(key) {
        u.touch(t);
    } else if map.len() < MAX_KEYS {
        map.insert(key.to_owned(), Usage::new(t));
    } else {
        *dropped += 1;
    }
}

/// `touch` for the executable, through the identity's cached one.
fn touch_exe(record: &mut IdentityRecord, hot: &mut Hot, exe: &Arc<str>, t: i64) {
    if let Some((cached, u)) = &mut hot.exe {
        if Arc::ptr_eq(cached, exe) || **cached == **exe {
            u.touch(t);
            return;
        }
        // Another executable: the cached one goes back to the record.
        if let Some(m) = record.executables.get_mut(&**cached) {
            *m = *u;
        }
        hot.exe = None;
    }
    touch(&mut record.executables, &mut record.dropped, exe, t);
    if let Some(u) = record.executables.get(&**exe) {
        hot.exe = Some((exe.clone(), *u));
    }
}

/// `touch` for a data source's `data_sources` entry, through the identity's cache.
fn touch_ds(record: &mut IdentityRecord, hot: &mut Hot, rules: &Compiled, ds: DsId, t: i64) {
    let mut h = hot.ds(ds);
    if let Some(u) = h.as_mut().and_then(|h| h.usage.as_mut()) {
        u.touch(t);
        return;
    }
    let name = rules.ds_name(ds);
    touch(&mut record.data_sources, &mut record.dropped, name, t);
    if let (Some(h), Some(u)) = (h, record.data_sources.get(name)) {
        h.usage = Some(*u);
    }
}

/// `touch` for the `DATA-SOURCE METHOD` entry, through the data source's cached methods.
fn touch_method(
    record: &mut IdentityRecord,
    hot: &mut Hot,
    name: &str,
    ds: DsId,
    method: &str,
    t: i64,
) {
    let mut h = hot.ds(ds);
    if let Some(h) = h.as_mut() {
        // Compared as bytes: no key is built for a hit.
        if let Some((_, u)) = h
            .methods
            .iter_mut()
            .flatten()
            .find(|(m, _)| m.as_bytes() == method.as_bytes())
        {
            u.touch(t);
            return;
        }
    }
    let slots = h
        .zip(InlineKey::new(method))
        .map(|(h, k)| (&mut h.methods, k));
    // Known keys cost no allocation.
    SCRATCH.with_borrow_mut(|full| {
        full.clear();
        full.push_str(name);
        full.push(' ');
        full.push_str(method);
        touch(&mut record.methods, &mut record.dropped, full, t);
        let (Some((methods, k)), Some(u)) = (slots, record.methods.get(full.as_str())) else {
            return;
        };
        if let Some(free) = methods.iter_mut().find(|m| m.is_none()) {
            *free = Some((k, *u));
        }
    });
}
