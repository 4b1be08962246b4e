//! Per-identity caches for the hot path: takes the record's map entries an identity keeps touching, gives them back by data-source index, pointer or inline key, and folds them into the record.

use std::sync::Arc;

use super::{
    compiled::{Compiled, DsId},
    state::{IdentityRecord, Usage, VolumeBaseline},
};

/// Data sources cached per identity; more go to the record's maps directly.
const DS: usize = 16;
/// Methods cached per data source, credentials per identity.
const METHODS: usize = 3;
const CREDS: usize = 8;

/// A short string kept inline, so comparing it touches no other memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InlineKey<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> InlineKey<N> {
    /// None when `s` is longer than `N`: such keys are simply not cached.
    pub fn new(s: &str) -> Option<Self> {
        let mut bytes = [0; N];
        bytes.get_mut(..s.len())?.copy_from_slice(s.as_bytes());
        Some(InlineKey {
            len: s.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// For comparisons on hot paths: no UTF-8 check.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Cached entries of one identity's record. Each caches a key already present in the record's
/// map (so the map's size bounds and `dropped` counts are decided there, once) and holds its
/// current value; the map's copy is stale until `fold`. Keys not cached take the maps' path.
#[derive(Default)]
pub struct Hot {
    /// The executable last seen (the observation's `Arc`, usually the very same pointer).
    pub exe: Option<(Arc<str>, Usage)>,
    pub ds: Vec<HotDs>,
    pub creds: Vec<HotCred>,
}

pub struct HotDs {
    pub ds: DsId,
    /// `data_sources` entry.
    pub usage: Option<Usage>,
    /// `methods` entries (`DATA-SOURCE METHOD`) by method.
    pub methods: [Option<(InlineKey<15>, Usage)>; METHODS],
    /// `volume` and `peak_requests_per_minute` entries.
    pub volume: Option<(VolumeBaseline, u64)>,
}

pub struct HotCred {
    /// `tag(fingerprint)`: entries of other credentials are passed over without reading their keys.
    pub tag: u64,
    pub fingerprint: InlineKey<63>,
    pub usage: Usage,
    pub max_ttl_seconds: Option<i64>,
}

/// A fingerprint's tag for `Hot::cred`.
pub fn tag(fingerprint: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(fingerprint.as_bytes())
}

impl Hot {
    /// The data source's entry; None when it is not cached and there is no room.
    pub fn ds(&mut self, ds: DsId) -> Option<&mut HotDs> {
        match self.ds.iter().position(|d| d.ds == ds) {
            Some(i) => self.ds.get_mut(i),
            None if self.ds.len() < DS => {
                self.ds.push(HotDs {
                    ds,
                    usage: None,
                    methods: [None; METHODS],
                    volume: None,
                });
                self.ds.last_mut()
            }
            None => None,
        }
    }

    /// The cached entry of `fingerprint` (whose `tag` is `tag`), compared as bytes: no key is
    /// built or copied for a lookup.
    pub fn cred(&mut self, tag: u64, fingerprint: &str) -> Option<&mut HotCred> {
        self.creds
            .iter_mut()
            .find(|c| c.tag == tag && c.fingerprint.as_bytes() == fingerprint.as_bytes())
    }

    pub fn creds_full(&self) -> bool {
        self.creds.len() >= CREDS
    }

    /// Writes every cached value into the record. Data-source indices are the current rules'.
    pub fn fold(&self, record: &mut IdentityRecord, rules: &Compiled) {
        if let Some((exe, u)) = &self.exe {
            if let Some(m) = record.executables.get_mut(&**exe) {
                *m = *u;
            }
        }
        for d in &self.ds {
            let name = rules.ds_name(d.ds);
            if let Some(u) = d.usage {
                if let Some(m) = record.data_sources.get_mut(name) {
                    *m = u;
                }
            }
            for (method, u) in d.methods.iter().flatten() {
                let key = format!("{name} {}", method.as_str());
                if let Some(m) = record.methods.get_mut(&key) {
                    *m = *u;
                }
            }
            if let Some((v, peak)) = &d.volume {
                if let Some(m) = record.volume.get_mut(name) {
                    m.clone_from(v);
                }
                if let Some(m) = record.peak_requests_per_minute.get_mut(name) {
                    *m = *peak;
                }
            }
        }
        for c in &self.creds {
            if let Some(m) = record.credentials.get_mut(c.fingerprint.as_str()) {
                m.usage = c.usage;
                m.max_ttl_seconds = c.max_ttl_seconds;
            }
        }
    }
}
