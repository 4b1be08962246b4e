//! The detection engine: takes observations, keeps the state (identities, credential sightings, classification caches, open findings) and dispatches each observation to the detector families; gives findings and the learned records.

use std::{collections::HashSet, sync::Arc, time::Duration};

use super::{
    compiled::{Compiled, CompiledContract, DsId},
    detectors::{self, Cx, Subject},
    finding::{DedupChanges, Deduper, Family, Finding},
    hot::Hot,
    learn,
    sightings::Sightings,
    state::{CredentialRecord, IdentityRecord},
    DetectConfig, FxMap, FxStd,
};
use crate::{contracts::RuleSet, events::observation::Observation, identity::WorkloadIdentity};

/// Owned cache key, looked up by `KeyRef` without allocating.
#[derive(Hash, PartialEq, Eq)]
struct Key(usize, String, String);

#[derive(Hash)]
struct KeyRef<'a>(usize, &'a str, &'a str);

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2
    }
}

/// Memoised rule lookups (globs are regexes: each distinct input is matched once per rules).
#[derive(Default)]
pub(super) struct Caches {
    /// (_, host, path template) → data source.
    http: FxMap<Key, Option<DsId>>,
    /// (contract, host, _) → allowed.
    hosts: FxMap<Key, bool>,
    /// (contract or usize::MAX, file path, _) → (data source, index of the secrets grant).
    files: FxMap<Key, (Option<DsId>, Option<usize>)>,
    /// (contract, host, scope) → allowed by the contract's `allow.scopes` for that host.
    scopes: FxMap<Key, bool>,
}

impl Caches {
    fn clear(&mut self) {
        self.http.clear();
        self.hosts.clear();
        self.files.clear();
        self.scopes.clear();
    }

    fn bound(&mut self) {
        for n in [
            self.http.len(),
            self.hosts.len(),
            self.files.len(),
            self.scopes.len(),
        ] {
            if n >= CLASSIFY_CACHE {
                self.clear();
                return;
            }
        }
    }

    /// The data source of an API call to `host` and `path` (template).
    pub(super) fn classify(&mut self, rules: &Compiled, host: &str, path: &str) -> Option<DsId> {
        if let Some(d) = self.http.get(&KeyRef(0, host, path)) {
            return *d;
        }
        let d = rules.classify_http(host, path);
        self.bound();
        self.http
            .insert(Key(0, host.to_owned(), path.to_owned()), d);
        d
    }

    /// Whether contract number `contract` (`c`) allows reaching `host`.
    pub(super) fn host_allowed(
        &mut self,
        rules: &Compiled,
        contract: usize,
        c: &CompiledContract,
        host: &str,
    ) -> bool {
        if let Some(a) = self.hosts.get(&KeyRef(contract, host, "")) {
            return *a;
        }
        let a = c.host_allowed(rules, host);
        self.bound();
        self.hosts
            .insert(Key(contract, host.to_owned(), String::new()), a);
        a
    }

    /// A memoised verdict on `scope` at `host` under contract number `contract`; `judge` gives
    /// it the first time. A token carries the same scopes on every call: glob matching each
    /// time cost more than the lookup.
    pub(super) fn scope_allowed(
        &mut self,
        contract: usize,
        host: &str,
        scope: &str,
        judge: impl FnOnce() -> bool,
    ) -> bool {
        if let Some(a) = self.scopes.get(&KeyRef(contract, host, scope)) {
            return *a;
        }
        let a = judge();
        self.bound();
        self.scopes
            .insert(Key(contract, host.to_owned(), scope.to_owned()), a);
        a
    }

    /// The file's data source and the index of the contract's secrets grant covering it.
    pub(super) fn file_rules(
        &mut self,
        rules: &Compiled,
        contract: Option<usize>,
        path: &str,
    ) -> (Option<DsId>, Option<usize>) {
        let k = contract.unwrap_or(usize::MAX);
        if let Some(v) = self.files.get(&KeyRef(k, path, "")) {
            return *v;
        }
        let ds = rules.classify_file(path);
        let grant = contract
            .and_then(|i| rules.contracts.get(i))
            .and_then(|c| c.secrets.iter().position(|(g, _)| g.is_match(path)));
        self.bound();
        self.files
            .insert(Key(k, path.to_owned(), String::new()), (ds, grant));
        (ds, grant)
    }
}

/// Classification results remembered (host + path template → data source).
const CLASSIFY_CACHE: usize = 1 << 16;

pub(super) struct IdState {
    /// The key in `Engine::ids`, to remove it on eviction; credential sightings share it.
    pub(super) key: Arc<str>,
    pub(super) record: IdentityRecord,
    /// Index into the compiled contracts, for `rules_generation`.
    pub(super) contract: Option<usize>,
    rules_generation: u64,
    /// Data sources touched within the combination window: (data source, last touch).
    pub(super) window: Vec<(DsId, i64)>,
    /// The identity object last seen: the same one again needs no comparison.
    last: Option<Arc<WorkloadIdentity>>,
    /// Listed in `dirty_ids`. Only a dirty state's `hot` may differ from its record.
    dirty: bool,
    /// The record's entries this identity keeps touching, updated without comparing keys.
    pub(super) hot: Hot,
    /// Its NHI-001 dedup key (it depends on the id only).
    pub(super) ungoverned_key: Option<u64>,
    /// It did something that makes it matter without a contract (`learn::significant`).
    pub(super) significant: bool,
}

impl IdState {
    fn new(record: IdentityRecord) -> IdState {
        IdState {
            key: record.identity.id.as_str().into(),
            contract: None,
            rules_generation: 0,
            window: Vec::new(),
            last: None,
            dirty: false,
            hot: Hot::default(),
            ungoverned_key: None,
            significant: learn::significant_record(&record),
            record,
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default, Clone)]
pub struct EngineStats {
    pub observations: u64,
    pub identities_evicted: u64,
    pub credentials_evicted: u64,
    pub findings: u64,
}

pub struct Engine {
    cfg: DetectConfig,
    /// Shared so that many engines (fuzzing, benchmarks) can judge against one compiled set.
    rules: Arc<Compiled>,
    rules_generation: u64,
    /// Identity id → slot in `slots`. The states live in a slab so one observation costs one
    /// hash lookup, and judging one identity can still read the others (shared credentials).
    ids: FxStd<Arc<str>, u32>,
    /// The identity object (`Arc` address) → slot, for the object a slot saw last (`last`):
    /// stages hand the same `Arc` for one identity, so an observation finds its slot without
    /// hashing and comparing its id. An entry counts only while its slot's `last` is that very
    /// object (which keeps the address from being reused), so stale entries are harmless.
    by_object: FxStd<usize, u32>,
    /// None: free (listed in `free`).
    slots: Vec<Option<IdState>>,
    free: Vec<u32>,
    /// Credential fingerprint → who presented it (compact: see `sightings`).
    creds: Sightings,
    dedup: Deduper,
    identity_dedup: Deduper,
    caches: Caches,
    /// Slots changed since the last persist (each also flagged `dirty` in its state).
    dirty_ids: Vec<u32>,
    now: i64,
    pub stats: EngineStats,
}

impl Engine {
    pub fn new(rules: RuleSet, cfg: DetectConfig) -> Engine {
        Engine::with_compiled(Arc::new(Compiled::new(rules)), cfg)
    }

    /// An engine judging against rules compiled once.
    pub fn with_compiled(rules: Arc<Compiled>, cfg: DetectConfig) -> Engine {
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        Engine {
            dedup: Deduper::new(ns(cfg.dedup_window), cfg.max_open_findings),
            identity_dedup: Deduper::new(ns(cfg.ungoverned_window), cfg.max_open_findings),
            rules,
            rules_generation: 1,
            ids: FxStd::default(),
            by_object: FxStd::default(),
            slots: Vec::new(),
            free: Vec::new(),
            creds: Sightings::default(),
            caches: Caches::default(),
            dirty_ids: Vec::new(),
            now: 0,
            stats: EngineStats::default(),
            cfg,
        }
    }

    /// New rules take over at once; learned state stays.
    pub fn set_rules(&mut self, rules: RuleSet) {
        // Cached entries are keyed by the old rules' data-source indices.
        self.fold();
        for st in self.slots.iter_mut().flatten() {
            st.hot.ds.clear();
        }
        self.rules = Arc::new(Compiled::new(rules));
        self.rules_generation += 1;
        self.caches.clear();
    }

    /// The compiled rules in force, for stages that classify the same way (the fleet).
    pub fn compiled(&self) -> Arc<Compiled> {
        self.rules.clone()
    }

    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// Open findings closed early to stay within `max_open_findings`.
    pub fn evicted_findings(&self) -> u64 {
        self.dedup.evicted + self.identity_dedup.evicted
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules.set
    }

    pub fn identities(&self) -> usize {
        self.ids.len()
    }

    pub fn credentials(&self) -> usize {
        self.creds.len()
    }

    /// The data source an API call to `host` (lowercase, no port) and `path` (template) belongs to,
    /// as the detectors classify it; None when no data source claims it.
    pub fn data_source_of_call(&self, host: &str, path: &str) -> Option<&str> {
        let ds = match self.caches.http.get(&KeyRef(0, host, path)) {
            Some(d) => *d,
            None => self.rules.classify_http(host, path),
        };
        ds.map(|d| self.rules.ds_name(d))
    }

    pub fn open_findings(&self) -> usize {
        self.dedup.len() + self.identity_dedup.len()
    }

    /// Puts a new identity state in a free slot (or a new one) and indexes it.
    fn insert(&mut self, st: IdState) -> u32 {
        let key = st.key.clone();
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(st);
                s
            }
            None => {
                self.slots.push(Some(st));
                (self.slots.len() - 1) as u32
            }
        };
        if let Some(old) = self.ids.insert(key, slot) {
            // A duplicate id (only in restored state): the later one replaces it, as before.
            self.slots[old as usize] = None;
            self.free.push(old);
        }
        slot
    }

    /// Restores learned state (from the state database), newest first up to the limits.
    pub fn restore(&mut self, mut ids: Vec<IdentityRecord>, mut creds: Vec<CredentialRecord>) {
        ids.sort_by_key(|r| std::cmp::Reverse(r.last_seen));
        ids.truncate(self.cfg.max_identities);
        for r in ids {
            self.insert(IdState::new(r));
        }
        creds.sort_by_key(|r| std::cmp::Reverse(r.last_seen));
        creds.truncate(self.cfg.max_credentials);
        let ids = &self.ids;
        // Ids of identities in memory are shared, not copied.
        let intern = |id: &str| {
            ids.get_key_value(id)
                .map_or_else(|| Arc::from(id), |(k, _)| k.clone())
        };
        for c in creds {
            self.creds.restore(c, intern);
        }
    }

    /// Brings the records of changed identities up to date with their cached entries.
    fn fold(&mut self) {
        for &s in &self.dirty_ids {
            if let Some(Some(st)) = self.slots.get_mut(s as usize) {
                st.hot.fold(&mut st.record, &self.rules);
            }
        }
    }

    /// Hands what changed since the last call to `save` (the state database).
    pub fn persist<E>(
        &mut self,
        save: impl FnOnce(&[&IdentityRecord], &[&CredentialRecord]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.fold();
        for &s in &self.dirty_ids {
            if let Some(Some(st)) = self.slots.get_mut(s as usize) {
                st.dirty = false;
            }
        }
        let ids: Vec<&IdentityRecord> = self
            .dirty_ids
            .iter()
            .filter_map(|&s| self.slots.get(s as usize)?.as_ref().map(|st| &st.record))
            .collect();
        let creds = self.creds.take_dirty();
        let refs: Vec<&CredentialRecord> = creds.iter().collect();
        if let Err(e) = save(&ids, &refs) {
            // Written next time.
            self.creds.relist(&creds);
            return Err(e);
        }
        self.dirty_ids.clear();
        Ok(())
    }

    /// Mutable because cached entries are folded into the records first.
    pub fn records(&mut self) -> impl Iterator<Item = &IdentityRecord> {
        self.fold();
        self.slots.iter().flatten().map(|s| &s.record)
    }

    /// Built from the compact sightings, one record at a time.
    pub fn credential_records(&self) -> impl Iterator<Item = CredentialRecord> + '_ {
        self.creds.records()
    }

    /// Closes dedup windows that ended by `now` (ns); repeated findings leave summaries.
    pub fn advance(&mut self, now: i64, out: &mut Vec<Finding>) {
        self.now = self.now.max(now);
        let before = out.len();
        self.dedup.advance(self.now, out);
        self.identity_dedup.advance(self.now, out);
        self.stats.findings += (out.len() - before) as u64;
    }

    /// Hands the open findings that changed since the last call to `save` (the state database):
    /// (deduplicated findings, identity-level findings). A stop saves them instead of closing
    /// them, so a restart neither raises them again nor summarises them early.
    pub fn persist_open<E>(
        &mut self,
        save: impl FnOnce(&DedupChanges<'_>, &DedupChanges<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        save(&self.dedup.changes(), &self.identity_dedup.changes())?;
        self.dedup.saved();
        self.identity_dedup.saved();
        Ok(())
    }

    /// Re-opens the windows an earlier run saved (see [`Engine::persist_open`]).
    pub fn restore_open(&mut self, findings: Vec<Finding>, identity_findings: Vec<Finding>) {
        self.dedup.restore(findings);
        self.identity_dedup.restore(identity_findings);
    }

    /// Closes every window: the end of a replay, or a stop with nowhere to save them.
    pub fn finish(&mut self, out: &mut Vec<Finding>) {
        let before = out.len();
        self.dedup.finish(out);
        self.identity_dedup.finish(out);
        self.stats.findings += (out.len() - before) as u64;
    }

    /// Judges one observation; findings it raises are appended to `out`.
    pub fn observe(&mut self, o: &Observation, out: &mut Vec<Finding>) {
        self.stats.observations += 1;
        self.advance(o.time, out);
        let before = out.len();
        let t = o.time;
        let secs = t.div_euclid(1_000_000_000);
        let slot = self.identity_state(o, secs) as usize;
        // The identity's own state is borrowed mutably; the others stay readable around it.
        let (earlier, rest) = self.slots.split_at_mut(slot);
        let Some((Some(st), later)) = rest.split_first_mut() else {
            return;
        };
        let rules: &Compiled = &self.rules;
        let max_key_age =
            i64::try_from(self.cfg.credentials.max_key_age.as_secs()).unwrap_or(i64::MAX);
        let seen = learn::learn(
            rules,
            &mut self.caches,
            &mut self.creds,
            st,
            o,
            secs,
            max_key_age,
        );
        let mut cx = Cx {
            rules,
            cfg: &self.cfg,
            dedup: &mut self.dedup,
            identity_dedup: &mut self.identity_dedup,
            creds: &self.creds,
            ids: &self.ids,
            others: Others {
                earlier,
                later,
                slot,
            },
            caches: &mut self.caches,
            out,
            t,
            secs,
            identity: &o.identity,
            family: Family::Governance,
        };
        let mut subject = Subject {
            contract: st.contract,
            record: &mut st.record,
            window: &mut st.window,
            hot: &mut st.hot,
            ungoverned_key: &mut st.ungoverned_key,
            significant: st.significant,
        };
        detectors::run(&mut cx, &mut subject, &seen);
        if !st.dirty {
            st.dirty = true;
            self.dirty_ids.push(slot as u32);
        }
        self.stats.findings += (out.len() - before) as u64;
        self.evict();
    }

    /// Finds or creates the identity's state, refreshes its attributes and contract; returns its slot.
    fn identity_state(&mut self, o: &Observation, secs: i64) -> u32 {
        let object = Arc::as_ptr(&o.identity) as usize;
        if let Some(&s) = self.by_object.get(&object) {
            if let Some(Some(st)) = self.slots.get_mut(s as usize) {
                if st
                    .last
                    .as_ref()
                    .is_some_and(|l| Arc::ptr_eq(l, &o.identity))
                    && st.rules_generation == self.rules_generation
                {
                    st.record.last_seen = st.record.last_seen.max(secs);
                    st.record.first_seen = st.record.first_seen.min(secs);
                    return s;
                }
            }
        }
        let slot = self.identity_slot(o, secs);
        if self.by_object.len() >= 2 * self.cfg.max_identities.max(self.slots.len()) {
            // Mostly stale (objects replaced or evicted): start over, the live ones come back.
            self.by_object.clear();
        }
        self.by_object.insert(object, slot);
        slot
    }

    /// `identity_state` by the identity's id.
    fn identity_slot(&mut self, o: &Observation, secs: i64) -> u32 {
        let slot = match self.ids.get(o.identity.id.as_str()) {
            Some(&s) => s,
            None => self.insert(IdState::new(IdentityRecord {
                identity: (*o.identity).clone(),
                contract: None,
                first_seen: secs,
                last_seen: secs,
                executables: Default::default(),
                data_sources: Default::default(),
                methods: Default::default(),
                secrets: Default::default(),
                destinations: Default::default(),
                credentials: Default::default(),
                peak_requests_per_minute: Default::default(),
                scopes: Default::default(),
                pairs: Default::default(),
                volume: Default::default(),
                dropped: 0,
            })),
        };
        let Some(Some(st)) = self.slots.get_mut(slot as usize) else {
            return slot;
        };
        let record = &mut st.record;
        if !st
            .last
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &o.identity))
        {
            if record.identity != *o.identity {
                record.identity = (*o.identity).clone();
                st.rules_generation = 0;
            }
            st.last = Some(o.identity.clone());
        }
        record.last_seen = record.last_seen.max(secs);
        record.first_seen = record.first_seen.min(secs);
        if st.rules_generation != self.rules_generation {
            st.contract = self.rules.contract_for(&o.identity, o.labels.as_deref());
            st.rules_generation = self.rules_generation;
            record.contract = st
                .contract
                .map(|i| self.rules.contracts[i].reference.name.clone());
        }
        slot
    }

    /// Keeps memory bounded: beyond the limits the least recently seen eighth goes.
    fn evict(&mut self) {
        if self.ids.len() > self.cfg.max_identities {
            let mut ages: Vec<(i64, &Arc<str>, u32)> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (s.record.last_seen, &s.key, i as u32)))
                .collect();
            ages.sort();
            let n = (self.ids.len() - self.cfg.max_identities) + self.cfg.max_identities / 8;
            let gone: Vec<u32> = ages.into_iter().take(n).map(|(_, _, s)| s).collect();
            let mut dirty_gone = false;
            for &s in &gone {
                if let Some(st) = self.slots[s as usize].take() {
                    self.ids.remove(&st.key);
                    dirty_gone |= st.dirty;
                    self.free.push(s);
                    self.stats.identities_evicted += 1;
                }
            }
            if dirty_gone {
                // A freed slot may be reused: it must not carry the evicted identity's listing.
                let gone: HashSet<u32, rustc_hash::FxBuildHasher> = gone.into_iter().collect();
                self.dirty_ids.retain(|s| !gone.contains(s));
            }
        }
        if self.creds.len() > self.cfg.max_credentials {
            let n = (self.creds.len() - self.cfg.max_credentials) + self.cfg.max_credentials / 8;
            self.stats.credentials_evicted += self.creds.evict_oldest(n) as u64;
        }
    }
}

/// The identity states other than the one being judged (around its slot).
pub(super) struct Others<'a> {
    earlier: &'a [Option<IdState>],
    later: &'a [Option<IdState>],
    slot: usize,
}

impl Others<'_> {
    pub(super) fn get(&self, slot: u32) -> Option<&IdState> {
        let s = slot as usize;
        match s.cmp(&self.slot) {
            std::cmp::Ordering::Less => self.earlier.get(s)?.as_ref(),
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => self.later.get(s - self.slot - 1)?.as_ref(),
        }
    }
}
