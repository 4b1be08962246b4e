//! Credential sightings across identities, kept compact: takes each credential presented (fingerprint, kind, who), gives who else presented it, and the `CredentialRecord`s the state database stores.

// One entry per distinct fingerprint, up to `max_credentials` (262,144 by default): at that count
// every byte of an entry is a quarter MiB. So the fingerprint is its 16 bytes (the canonical
// `hmac-sha256:` + 32 hex digits), the kind an index, the first identity the engine's own
// interned id (`Arc<str>`, no copy), and what is rare (more identities, a vendor, a kind or
// fingerprint in another form) sits behind one optional box.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{
    state::{CredentialRecord, MAX_SHARERS},
    FxStd,
};
use crate::events::observation::CredentialSeen;

const PREFIX: &str = "hmac-sha256:";

/// A credential fingerprint as a map key: the 16 bytes of a canonical fingerprint, or for any
/// other form (replayed files may carry anything) the first 16 bytes of its SHA-256, with the
/// text kept in the entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Fp([u8; 16]);

impl Fp {
    /// The key of `s`, and whether `s` is canonical (then `Fp::text` gives it back).
    pub fn of(s: &str) -> (Fp, bool) {
        if let Some(b) = s.strip_prefix(PREFIX).and_then(parse_hex) {
            return (Fp(b), true);
        }
        let d = Sha256::digest(s.as_bytes());
        let mut b = [0; 16];
        b.copy_from_slice(&d[..16]);
        (Fp(b), false)
    }

    fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(PREFIX.len() + 32);
        s.push_str(PREFIX);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// 32 lowercase hex digits (as the fingerprinter writes them) → 16 bytes.
fn parse_hex(s: &str) -> Option<[u8; 16]> {
    let s = s.as_bytes();
    if s.len() != 32 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; 16];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Credential kinds the protocol stage names; others are kept as text in `Extra`.
const KINDS: [&str; 5] = ["jwt", "bearer", "basic", "api_key", "aws_sigv4"];
const OTHER_KIND: u8 = u8::MAX;

/// One fingerprint's sightings.
pub(super) struct Sighting {
    first_seen: i64,
    last_seen: i64,
    /// The first identity that presented it, and its last sighting (Unix seconds).
    first: (Arc<str>, i64),
    extra: Option<Box<Extra>>,
    /// Index into `KINDS`, or `OTHER_KIND` (the text is in `extra`).
    kind: u8,
    long_lived: Option<bool>,
    /// Listed in `Sightings::dirty`.
    dirty: bool,
}

/// What few credentials need.
#[derive(Default)]
struct Extra {
    /// Identities after the first, up to `MAX_SHARERS` in all.
    others: Vec<(Arc<str>, i64)>,
    vendor: Option<Box<str>>,
    kind: Option<Box<str>>,
    /// The fingerprint's text when it is not canonical.
    fingerprint: Option<Box<str>>,
}

impl Sighting {
    fn new(fp: &str, canonical: bool, cred: &CredentialSeen, who: Arc<str>, secs: i64) -> Self {
        let kind = KINDS.iter().position(|k| *k == cred.kind);
        let mut extra = Extra::default();
        if kind.is_none() {
            extra.kind = Some(cred.kind.as_str().into());
        }
        extra.vendor = cred.vendor.as_deref().map(Into::into);
        if !canonical {
            extra.fingerprint = Some(fp.into());
        }
        let rare = kind.is_none() || extra.vendor.is_some() || !canonical;
        Sighting {
            first_seen: secs,
            last_seen: secs,
            first: (who, secs),
            extra: rare.then(|| Box::new(extra)),
            kind: kind.map_or(OTHER_KIND, |k| k as u8),
            long_lived: cred.long_lived,
            dirty: false,
        }
    }

    /// When anyone first presented it (Unix seconds).
    pub(super) fn first_seen(&self) -> i64 {
        self.first_seen
    }

    /// Every identity that presented it, with its last sighting.
    pub(super) fn identities(&self) -> impl Iterator<Item = (&str, i64)> {
        let others = self.extra.as_ref().map_or(&[][..], |e| &e.others[..]);
        std::iter::once((&*self.first.0, self.first.1))
            .chain(others.iter().map(|(i, t)| (&**i, *t)))
    }

    fn kind(&self) -> &str {
        match KINDS.get(usize::from(self.kind)) {
            Some(k) => k,
            None => self
                .extra
                .as_ref()
                .and_then(|e| e.kind.as_deref())
                .unwrap_or(""),
        }
    }

    fn record(&self, fp: &Fp) -> CredentialRecord {
        let extra = self.extra.as_deref();
        CredentialRecord {
            fingerprint: extra
                .and_then(|e| e.fingerprint.as_deref())
                .map_or_else(|| fp.text(), str::to_owned),
            kind: self.kind().to_owned(),
            vendor: extra.and_then(|e| e.vendor.as_deref()).map(str::to_owned),
            long_lived: self.long_lived,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            identities: self.identities().map(|(i, t)| (i.to_owned(), t)).collect(),
        }
    }
}

/// Every fingerprint's sightings, and which changed since the last persist.
#[derive(Default)]
pub(super) struct Sightings {
    map: FxStd<Fp, Sighting>,
    dirty: Vec<Fp>,
}

impl Sightings {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn get(&self, fingerprint: &str) -> Option<&Sighting> {
        self.map.get(&Fp::of(fingerprint).0)
    }

    /// Records that `who` presented `cred` at `secs`; gives whether other identities did too,
    /// and when the fingerprint was first seen by anyone (Unix seconds, restored across restarts).
    pub(super) fn sight(
        &mut self,
        who: &Arc<str>,
        cred: &CredentialSeen,
        secs: i64,
    ) -> (bool, i64) {
        let fp = cred.fingerprint.as_str();
        let (key, canonical) = Fp::of(fp);
        let s = self
            .map
            .entry(key)
            .or_insert_with(|| Sighting::new(fp, canonical, cred, who.clone(), secs));
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(key);
        }
        s.last_seen = s.last_seen.max(secs);
        // A recording replayed out of order, or a restored record, may hold a later first sighting.
        s.first_seen = s.first_seen.min(secs);
        let first_seen = s.first_seen;
        // The engine passes its interned id: the same pointer, as a rule, without reading the text.
        if Arc::ptr_eq(&s.first.0, who) || *s.first.0 == **who {
            s.first.1 = secs;
            return (
                s.extra.as_ref().is_some_and(|e| !e.others.is_empty()),
                first_seen,
            );
        }
        let extra = s.extra.get_or_insert_with(Box::default);
        let room = extra.others.len() + 1 < MAX_SHARERS;
        match extra
            .others
            .iter_mut()
            .find(|(i, _)| Arc::ptr_eq(i, who) || **i == **who)
        {
            Some(e) => e.1 = secs,
            None if room => extra.others.push((who.clone(), secs)),
            None => {}
        }
        (true, first_seen)
    }

    /// Restores a stored record; `intern` gives the engine's own copy of an identity id.
    pub(super) fn restore(&mut self, r: CredentialRecord, intern: impl Fn(&str) -> Arc<str>) {
        let (key, canonical) = Fp::of(&r.fingerprint);
        let mut ids = r.identities.into_iter();
        let Some((first, t)) = ids.next() else {
            return;
        };
        let cred = CredentialSeen {
            kind: r.kind,
            fingerprint: String::new(),
            vendor: r.vendor,
            token_type: None,
            long_lived: r.long_lived,
            access_key_id: None,
            username: None,
            jwt: None,
        };
        let mut s = Sighting::new(&r.fingerprint, canonical, &cred, intern(&first), t);
        s.first_seen = r.first_seen;
        s.last_seen = r.last_seen;
        let others: Vec<(Arc<str>, i64)> = ids.map(|(i, t)| (intern(&i), t)).collect();
        if !others.is_empty() {
            s.extra.get_or_insert_with(Box::default).others = others;
        }
        self.map.insert(key, s);
    }

    /// The records changed since the last call, marked clean.
    pub(super) fn take_dirty(&mut self) -> Vec<CredentialRecord> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for k in self.dirty.drain(..) {
            if let Some(s) = self.map.get_mut(&k) {
                s.dirty = false;
                out.push(s.record(&k));
            }
        }
        out
    }

    /// Lists again records `take_dirty` gave that could not be written.
    pub(super) fn relist(&mut self, records: &[CredentialRecord]) {
        for r in records {
            let key = Fp::of(&r.fingerprint).0;
            if let Some(s) = self.map.get_mut(&key) {
                if !s.dirty {
                    s.dirty = true;
                    self.dirty.push(key);
                }
            }
        }
    }

    pub(super) fn records(&self) -> impl Iterator<Item = CredentialRecord> + '_ {
        self.map.iter().map(|(k, s)| s.record(k))
    }

    /// Evicts the `n` least recently seen; returns how many went. Only their last-seen times
    /// are copied (8 bytes each), not their keys.
    pub(super) fn evict_oldest(&mut self, n: usize) -> usize {
        if n == 0 || self.map.is_empty() {
            return 0;
        }
        let mut ages: Vec<i64> = self.map.values().map(|s| s.last_seen).collect();
        let n = n.min(ages.len());
        let (_, &mut cutoff, _) = ages.select_nth_unstable(n - 1);
        // Strictly older than the cutoff all go; of those at the cutoff, as many as still needed.
        let older = ages.iter().filter(|&&a| a < cutoff).count();
        drop(ages);
        let mut at_cutoff = n - older;
        let before = self.map.len();
        self.map.retain(|_, s| {
            if s.last_seen < cutoff {
                false
            } else if s.last_seen == cutoff && at_cutoff > 0 {
                at_cutoff -= 1;
                false
            } else {
                true
            }
        });
        let map = &self.map;
        self.dirty.retain(|k| map.contains_key(k));
        before - self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(kind: &str, fp: &str) -> CredentialSeen {
        CredentialSeen {
            kind: kind.into(),
            fingerprint: fp.into(),
            vendor: None,
            token_type: None,
            long_lived: Some(true),
            access_key_id: None,
            username: None,
            jwt: None,
        }
    }

    #[test]
    fn records_round_trip_in_every_form() {
        let a: Arc<str> = "spiffe://x/a".into();
        let b: Arc<str> = "spiffe://x/b".into();
        let canonical = "hmac-sha256:0123456789abcdef0123456789abcdef";
        let mut s = Sightings::default();
        assert_eq!(s.sight(&a, &cred("api_key", canonical), 5), (false, 5));
        assert_eq!(s.sight(&a, &cred("api_key", canonical), 6), (false, 5));
        assert_eq!(s.sight(&b, &cred("api_key", canonical), 7), (true, 5));
        // Forms the fingerprinter does not write: uppercase, short, another scheme, a new kind.
        for fp in [
            "hmac-sha256:0123456789ABCDEF0123456789ABCDEF",
            "hmac-sha256:aa",
            "x:1",
        ] {
            assert!(!s.sight(&a, &cred("weird", fp), 8).0);
        }
        let mut recs: Vec<CredentialRecord> = s.take_dirty();
        assert!(s.take_dirty().is_empty(), "marked clean");
        recs.sort_by(|x, y| x.fingerprint.cmp(&y.fingerprint));
        let fps: Vec<&str> = recs.iter().map(|r| r.fingerprint.as_str()).collect();
        assert_eq!(
            fps,
            [
                "hmac-sha256:0123456789ABCDEF0123456789ABCDEF",
                canonical,
                "hmac-sha256:aa",
                "x:1"
            ]
        );
        let r = &recs[1];
        assert_eq!(
            (r.kind.as_str(), r.first_seen, r.last_seen),
            ("api_key", 5, 7)
        );
        assert_eq!(
            r.identities
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>(),
            [("spiffe://x/a", 6), ("spiffe://x/b", 7)]
        );
        assert_eq!(recs[0].kind, "weird");
        // Restored records give the same records back.
        let mut t = Sightings::default();
        for r in recs.clone() {
            t.restore(r, |i: &str| Arc::from(i));
        }
        let mut again: Vec<CredentialRecord> = t.records().collect();
        again.sort_by(|x, y| x.fingerprint.cmp(&y.fingerprint));
        assert_eq!(again, recs);
    }

    #[test]
    fn sharers_are_bounded_and_eviction_takes_the_oldest() {
        let mut s = Sightings::default();
        let fp = "hmac-sha256:00000000000000000000000000000001";
        for i in 0..40 {
            s.sight(&Arc::from(format!("id-{i}")), &cred("jwt", fp), i);
        }
        assert_eq!(s.get(fp).unwrap().identities().count(), MAX_SHARERS);
        for i in 0..10 {
            let f = format!("hmac-sha256:{i:032x}");
            s.sight(&Arc::from("a"), &cred("jwt", &f), 100 + i);
        }
        assert_eq!(s.len(), 10);
        assert_eq!(s.evict_oldest(3), 3);
        assert_eq!(s.len(), 7);
        assert!(s.get(&format!("hmac-sha256:{:032x}", 2)).is_none());
        assert!(s.get(&format!("hmac-sha256:{:032x}", 3)).is_some());
        assert_eq!(s.take_dirty().len(), 7, "evicted ones are no longer listed");
    }
}
