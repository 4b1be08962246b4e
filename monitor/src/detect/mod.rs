//! Access contracts and detectors: takes observations and the rules, gives findings, and keeps per-identity state for the inventory.

pub mod compiled;
pub mod finding;
mod hot;
pub mod state;
pub mod telemetry;
pub mod volume;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use self::{
    compiled::{method_matches, Compiled, CompiledContract, DsId},
    finding::{Candidate, ContractRef, CredentialRef, Deduper, Evidence, Finding, Rule},
    hot::{HotCred, InlineKey},
    state::{CredentialRecord, CredentialUse, IdentityRecord, SecretUsage, Usage, MAX_SHARERS},
    volume::{Excess, VolumeConfig},
};
use crate::{
    contracts::{Classification, RuleSet},
    events::observation::{rfc3339_ns, Activity, ApiCallSeen, CredentialSeen, Observation},
    identity::WorkloadIdentity,
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Repeats of one finding within this window only count.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Identity-level findings (ungoverned, expired, ownerless, break-glass) at most once per window.
    #[serde(with = "humantime_serde")]
    pub ungoverned_window: Duration,
    pub combination: CombinationConfig,
    pub volume: VolumeConfig,
    /// Identities and credentials kept in memory; the least recently seen are evicted beyond these.
    pub max_identities: usize,
    pub max_credentials: usize,
    /// Open (deduplicating) findings kept at once.
    pub max_open_findings: usize,
    /// How often learned state is written to the state database.
    #[serde(with = "humantime_serde")]
    pub persist_interval: Duration,
}

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

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            dedup_window: Duration::from_secs(600),
            ungoverned_window: Duration::from_secs(3600),
            combination: CombinationConfig::default(),
            volume: VolumeConfig::default(),
            max_identities: 65_536,
            max_credentials: 262_144,
            max_open_findings: 65_536,
            persist_interval: Duration::from_secs(30),
        }
    }
}

pub(crate) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        N(u64),
        S(String),
    }
    match S::deserialize(d)? {
        S::N(n) => Ok(n),
        S::S(s) => crate::contracts::parse_size(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("bad size {s:?}: expected e.g. 10MiB"))
        }),
    }
}

type FxMap<K, V> = hashbrown::HashMap<K, V, rustc_hash::FxBuildHasher>;
type FxStd<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

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
struct Caches {
    /// (_, host, path template) → data source.
    http: FxMap<Key, Option<DsId>>,
    /// (contract, host, _) → allowed.
    hosts: FxMap<Key, bool>,
    /// (contract or usize::MAX, file path, _) → (data source, index of the secrets grant).
    files: FxMap<Key, (Option<DsId>, Option<usize>)>,
}

impl Caches {
    fn clear(&mut self) {
        self.http.clear();
        self.hosts.clear();
        self.files.clear();
    }

    fn bound(&mut self) {
        for n in [self.http.len(), self.hosts.len(), self.files.len()] {
            if n >= CLASSIFY_CACHE {
                self.clear();
                return;
            }
        }
    }
}

thread_local! {
    /// Scratch for `DATA-SOURCE METHOD` keys, so known ones cost no allocation.
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Entries kept per map of an identity record; more are counted in `dropped`.
const MAX_KEYS: usize = 512;

/// Classification results remembered (host + path template → data source).
const CLASSIFY_CACHE: usize = 1 << 16;

struct IdState {
    /// The key in `Engine::ids`, to remove it on eviction.
    key: Arc<str>,
    record: IdentityRecord,
    /// Index into the compiled contracts, for `rules_generation`.
    contract: Option<usize>,
    rules_generation: u64,
    /// Data sources touched within the combination window: (data source, last touch).
    window: Vec<(DsId, i64)>,
    /// The identity object last seen: the same one again needs no comparison.
    last: Option<Arc<WorkloadIdentity>>,
    /// Listed in `dirty_ids`. Only a dirty state's `hot` may differ from its record.
    dirty: bool,
    /// The record's entries this identity keeps touching, updated without comparing keys.
    hot: hot::Hot,
    /// Its NHI-001 dedup key (it depends on the id only).
    ungoverned_key: Option<u64>,
}

impl IdState {
    fn new(record: IdentityRecord) -> IdState {
        IdState {
            key: record.identity.id.as_str().into(),
            record,
            contract: None,
            rules_generation: 0,
            window: Vec::new(),
            last: None,
            dirty: false,
            hot: hot::Hot::default(),
            ungoverned_key: None,
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

/// One credential's record and whether it is listed in `Engine::dirty_creds`.
struct CredState {
    record: CredentialRecord,
    dirty: bool,
}

pub struct Engine {
    cfg: DetectConfig,
    /// Shared so that many engines (fuzzing, benchmarks) can judge against one compiled set.
    rules: Arc<Compiled>,
    rules_generation: u64,
    /// Identity id → slot in `slots`. The states live in a slab so one observation costs one
    /// hash lookup, and judging one identity can still read the others (shared credentials).
    ids: FxStd<Arc<str>, u32>,
    /// None: free (listed in `free`).
    slots: Vec<Option<IdState>>,
    free: Vec<u32>,
    creds: FxStd<String, CredState>,
    dedup: Deduper,
    identity_dedup: Deduper,
    caches: Caches,
    /// Slots changed since the last persist (each also flagged `dirty` in its state).
    dirty_ids: Vec<u32>,
    /// Credentials changed since the last persist (each also flagged `dirty`).
    dirty_creds: Vec<String>,
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
            slots: Vec::new(),
            free: Vec::new(),
            creds: FxStd::default(),
            caches: Caches::default(),
            dirty_ids: Vec::new(),
            dirty_creds: Vec::new(),
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
        for c in creds {
            self.creds.insert(
                c.fingerprint.clone(),
                CredState {
                    record: c,
                    dirty: false,
                },
            );
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
        for k in &self.dirty_creds {
            if let Some(c) = self.creds.get_mut(k) {
                c.dirty = false;
            }
        }
        let ids: Vec<&IdentityRecord> = self
            .dirty_ids
            .iter()
            .filter_map(|&s| self.slots.get(s as usize)?.as_ref().map(|st| &st.record))
            .collect();
        let creds: Vec<&CredentialRecord> = self
            .dirty_creds
            .iter()
            .filter_map(|k| self.creds.get(k).map(|c| &c.record))
            .collect();
        save(&ids, &creds)?;
        self.dirty_ids.clear();
        self.dirty_creds.clear();
        Ok(())
    }

    /// Mutable because cached entries are folded into the records first.
    pub fn records(&mut self) -> impl Iterator<Item = &IdentityRecord> {
        self.fold();
        self.slots.iter().flatten().map(|s| &s.record)
    }

    pub fn credential_records(&self) -> impl Iterator<Item = &CredentialRecord> {
        self.creds.values().map(|c| &c.record)
    }

    /// Closes dedup windows that ended by `now` (ns); repeated findings leave summaries.
    pub fn advance(&mut self, now: i64, out: &mut Vec<Finding>) {
        self.now = self.now.max(now);
        let before = out.len();
        self.dedup.advance(self.now, out);
        self.identity_dedup.advance(self.now, out);
        self.stats.findings += (out.len() - before) as u64;
    }

    /// Closes every window: the end of a replay, or shutdown.
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
        let mut cx = Cx {
            rules: &self.rules,
            cfg: &self.cfg,
            dedup: &mut self.dedup,
            identity_dedup: &mut self.identity_dedup,
            creds: &mut self.creds,
            dirty_creds: &mut self.dirty_creds,
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
        };
        let contract = st.contract;
        let (record, window, hot) = (&mut st.record, &mut st.window, &mut st.hot);
        cx.identity_level(contract, &mut st.ungoverned_key);
        match &o.activity {
            Activity::Exec => {}
            // A failed open read nothing: it is in the events, not a finding.
            Activity::FileOpen { result, .. } if *result < 0 => {}
            Activity::FileOpen { path, .. } => {
                cx.file_open(contract, record, window, hot, o.exe.as_deref(), path)
            }
            Activity::Connect { name, .. } => {
                if let Some(host) = name {
                    cx.destination(contract, record, host);
                }
            }
            Activity::ApiCall(call) => cx.api_call(contract, record, window, hot, call),
        }
        if !st.dirty {
            st.dirty = true;
            self.dirty_ids.push(slot as u32);
        }
        self.stats.findings += (out.len() - before) as u64;
        self.evict();
    }

    /// Finds or creates the identity's state, refreshes its attributes and contract; returns its slot.
    fn identity_state(&mut self, o: &Observation, secs: i64) -> u32 {
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
        if let Some(exe) = &o.exe {
            touch_exe(record, &mut st.hot, exe, secs);
        }
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
            let mut ages: Vec<(i64, String)> = self
                .creds
                .iter()
                .map(|(k, c)| (c.record.last_seen, k.clone()))
                .collect();
            ages.sort();
            let n = (self.creds.len() - self.cfg.max_credentials) + self.cfg.max_credentials / 8;
            let mut dirty_gone = false;
            let mut gone = HashSet::with_capacity_and_hasher(n, rustc_hash::FxBuildHasher);
            for (_, k) in ages.into_iter().take(n) {
                if let Some(c) = self.creds.remove(&k) {
                    dirty_gone |= c.dirty;
                }
                gone.insert(k);
                self.stats.credentials_evicted += 1;
            }
            if dirty_gone {
                self.dirty_creds.retain(|k| !gone.contains(k));
            }
        }
    }
}

/// The identity states other than the one being judged (around its slot).
struct Others<'a> {
    earlier: &'a [Option<IdState>],
    later: &'a [Option<IdState>],
    slot: usize,
}

impl Others<'_> {
    fn get(&self, slot: u32) -> Option<&IdState> {
        let s = slot as usize;
        match s.cmp(&self.slot) {
            std::cmp::Ordering::Less => self.earlier.get(s)?.as_ref(),
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => self.later.get(s - self.slot - 1)?.as_ref(),
        }
    }
}

fn touch(
    map: &mut std::collections::BTreeMap<String, Usage>,
    dropped: &mut u64,
    key: &str,
    t: i64,
) {
    if let Some(u) = map.get_mut(key) {
        u.touch(t);
    } else if map.len() < MAX_KEYS {
        map.insert(key.to_owned(), Usage::new(t));
    } else {
        *dropped += 1;
    }
}

/// `touch` for the executable, through the identity's cached one.
fn touch_exe(record: &mut IdentityRecord, hot: &mut hot::Hot, exe: &Arc<str>, t: i64) {
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
fn touch_ds(record: &mut IdentityRecord, hot: &mut hot::Hot, rules: &Compiled, ds: DsId, t: i64) {
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
    hot: &mut hot::Hot,
    name: &str,
    ds: DsId,
    method: &str,
    t: i64,
) {
    let key = InlineKey::new(method);
    let mut slots = hot.ds(ds).zip(key).map(|(h, k)| (&mut h.methods, k));
    if let Some((methods, k)) = slots.as_mut() {
        if let Some((_, u)) = methods.iter_mut().flatten().find(|(m, _)| m == k) {
            u.touch(t);
            return;
        }
    }
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

/// One observation's context while it is judged.
struct Cx<'a> {
    rules: &'a Compiled,
    cfg: &'a DetectConfig,
    dedup: &'a mut Deduper,
    identity_dedup: &'a mut Deduper,
    creds: &'a mut FxStd<String, CredState>,
    dirty_creds: &'a mut Vec<String>,
    ids: &'a FxStd<Arc<str>, u32>,
    others: Others<'a>,
    caches: &'a mut Caches,
    out: &'a mut Vec<Finding>,
    t: i64,
    secs: i64,
    identity: &'a Arc<WorkloadIdentity>,
}

impl Cx<'_> {
    fn contract(&self, c: Option<usize>) -> Option<&CompiledContract> {
        c.and_then(|i| self.rules.contracts.get(i))
    }

    fn reference(&self, c: Option<usize>) -> Option<ContractRef> {
        self.contract(c).map(|c| c.reference.clone())
    }

    /// Counts a repeat of (identity, `rule`, evidence key) if its window is open; otherwise
    /// returns what `open` needs. The key is given in parts so repeats build no string.
    fn fresh(&mut self, rule: Rule, key: &[&str]) -> Option<(Rule, u64)> {
        let h = finding::dedup_key(&self.identity.id, rule, key);
        (!self.dedup.repeat(self.t, h)).then_some((rule, h))
    }

    /// For findings raised at most once per bucket or window change: builds them eagerly.
    fn raise(
        &mut self,
        rule: Rule,
        key: String,
        summary: String,
        contract: Option<usize>,
        evidence: Evidence,
    ) {
        if let Some(f) = self.fresh(rule, &[&key]) {
            self.open(f, summary, contract, evidence);
        }
    }

    /// Opens a finding `fresh` found new.
    fn open(
        &mut self,
        (rule, h): (Rule, u64),
        summary: String,
        contract: Option<usize>,
        evidence: Evidence,
    ) {
        let c = Candidate {
            rule,
            summary,
            contract: self.reference(contract),
            evidence,
        };
        self.dedup.open(self.t, self.identity, h, c, self.out);
    }

    fn who(&self) -> &str {
        &self.identity.id
    }

    /// Findings about the identity itself rather than one access.
    fn identity_level(&mut self, contract: Option<usize>, ungoverned_key: &mut Option<u64>) {
        let (t, identity) = (self.t, self.identity);
        let who: &str = &identity.id;
        let Some(c) = self.rules.contracts.get(contract.unwrap_or(usize::MAX)) else {
            // Hashing the id costs as much as the rest of an ungoverned identity's observation.
            let h = *ungoverned_key
                .get_or_insert_with(|| finding::dedup_key(who, Rule::Ungoverned, &[]));
            if !self.identity_dedup.repeat(t, h) {
                let cand = Candidate {
                    rule: Rule::Ungoverned,
                    summary: format!("{who} is active but no access contract governs it"),
                    contract: None,
                    evidence: Evidence::default(),
                };
                self.identity_dedup.open(t, identity, h, cand, self.out);
            }
            return;
        };
        let expired = c.expires_at.is_some_and(|e| t >= e);
        for (rule, applies) in [
            (Rule::ContractExpired, expired),
            (Rule::ContractWithoutOwner, c.ownerless),
            (Rule::BreakGlass, c.break_glass),
        ] {
            if !applies {
                continue;
            }
            let h = finding::dedup_key(who, rule, &[&c.reference.version]);
            if self.identity_dedup.repeat(t, h) {
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
            self.identity_dedup.open(t, identity, h, cand, self.out);
        }
    }

    fn file_open(
        &mut self,
        contract: Option<usize>,
        record: &mut IdentityRecord,
        window: &mut Vec<(DsId, i64)>,
        hot: &mut hot::Hot,
        exe: Option<&str>,
        path: &str,
    ) {
        let exe_s = exe.unwrap_or("?");
        let full = record.secrets.len() >= MAX_KEYS;
        match record.secrets.get_mut(path) {
            Some(s) => {
                s.usage.touch(self.secs);
                if s.executables.len() < 16 && !s.executables.contains(exe_s) {
                    s.executables.insert(exe_s.to_owned());
                }
            }
            None if !full => {
                record.secrets.insert(
                    path.to_owned(),
                    SecretUsage {
                        usage: Usage::new(self.secs),
                        executables: [exe_s.to_owned()].into(),
                    },
                );
            }
            None => record.dropped += 1,
        }
        let (ds, grant) = self.file_rules(contract, path);
        let identity = self.identity;
        let who: &str = &identity.id;
        let rules = self.rules;
        let c = contract.and_then(|i| rules.contracts.get(i));
        let grant = grant.and_then(|g| c.and_then(|c| c.secrets.get(g)));
        if let Some((_, exes)) = grant {
            let fresh = if !exes.is_empty() && !exes.iter().any(|e| Some(e.as_str()) == exe) {
                self.fresh(Rule::SecretReadUnexpectedExecutable, &[path, "\0", exe_s])
            } else {
                None
            };
            if let Some(f) = fresh {
                let allowed = exes.clone();
                self.open(
                    f,
                    format!(
                        "{exe_s} read {path} as {who}; the contract allows only {}",
                        allowed.join(", ")
                    ),
                    contract,
                    Evidence {
                        file: Some(path.to_owned()),
                        executable: Some(exe_s.to_owned()),
                        allowed,
                        data_source: ds.map(|d| self.rules.ds_name(d).to_owned()),
                        ..Evidence::default()
                    },
                );
            }
        } else {
            // A file of an allowed data source is allowed to any executable of the identity;
            // `secrets` grants are what restrict by executable.
            let data_access = ds
                .is_some_and(|d| self.rules.classification(d) != Some(Classification::Credentials));
            let allowed = matches!((ds, c), (Some(d), Some(c)) if c.is_allowed(d));
            let governed = c.is_some();
            let undeclared = match (ds, governed, allowed) {
                (Some(d), true, false) => self
                    .fresh(Rule::UndeclaredDataSource, &[rules.ds_name(d)])
                    .map(|f| (d, f)),
                _ => None,
            };
            if let Some((d, f)) = undeclared {
                let name = self.rules.ds_name(d).to_owned();
                self.open(
                    f,
                    format!("{who} read {path} of data source {name}, which its contract does not allow"),
                    contract,
                    Evidence {
                        data_source: Some(name),
                        classification: self.rules.classification(d).map(class_name),
                        file: Some(path.to_owned()),
                        executable: Some(exe_s.to_owned()),
                        ..Evidence::default()
                    },
                );
            }
            // Data files are secrets only when they hold credentials (or belong to no data
            // source: then they are watched because they are secrets). Ungoverned identities
            // reading data files are covered by NHI-001.
            let fresh = if !allowed && !data_access {
                self.fresh(Rule::SecretReadNotAllowed, &[path, "\0", exe_s])
            } else {
                None
            };
            if let Some(f) = fresh {
                let what = if governed {
                    "its contract grants no such secret"
                } else {
                    "no contract governs it"
                };
                self.open(
                    f,
                    format!("{exe_s} read secret {path} as {who}; {what}"),
                    contract,
                    Evidence {
                        file: Some(path.to_owned()),
                        executable: Some(exe_s.to_owned()),
                        data_source: ds.map(|d| self.rules.ds_name(d).to_owned()),
                        ..Evidence::default()
                    },
                );
            }
        }
        if let Some(d) = ds {
            touch_ds(record, hot, self.rules, d, self.secs);
            if self.rules.classification(d) != Some(Classification::Credentials) {
                self.combination(contract, record, window, d);
            }
        }
    }

    fn destination(&mut self, contract: Option<usize>, record: &mut IdentityRecord, host: &str) {
        let in_ds = self.rules.host_data_sources(host).next().is_some();
        if !in_ds {
            touch(
                &mut record.destinations,
                &mut record.dropped,
                host,
                self.secs,
            );
        }
        let rules = self.rules;
        let Some((i, c)) = contract.and_then(|i| Some((i, rules.contracts.get(i)?))) else {
            return;
        };
        if self.host_allowed(i, c, host) {
            return;
        }
        if let Some(f) = self.fresh(Rule::UndeclaredDestination, &[host]) {
            let who = self.who().to_owned();
            self.open(
                f,
                format!("{who} reached {host}, which its contract does not allow"),
                contract,
                Evidence {
                    destination: Some(host.to_owned()),
                    ..Evidence::default()
                },
            );
        }
    }

    fn classify(&mut self, host: &str, path: &str) -> Option<DsId> {
        if let Some(d) = self.caches.http.get(&KeyRef(0, host, path)) {
            return *d;
        }
        let d = self.rules.classify_http(host, path);
        self.caches.bound();
        self.caches
            .http
            .insert(Key(0, host.to_owned(), path.to_owned()), d);
        d
    }

    fn host_allowed(&mut self, contract: usize, c: &CompiledContract, host: &str) -> bool {
        if let Some(a) = self.caches.hosts.get(&KeyRef(contract, host, "")) {
            return *a;
        }
        let a = c.host_allowed(self.rules, host);
        self.caches.bound();
        self.caches
            .hosts
            .insert(Key(contract, host.to_owned(), String::new()), a);
        a
    }

    /// The file's data source and the index of the contract's secrets grant covering it.
    fn file_rules(&mut self, contract: Option<usize>, path: &str) -> (Option<DsId>, Option<usize>) {
        let k = contract.unwrap_or(usize::MAX);
        if let Some(v) = self.caches.files.get(&KeyRef(k, path, "")) {
            return *v;
        }
        let ds = self.rules.classify_file(path);
        let grant = self
            .contract(contract)
            .and_then(|c| c.secrets.iter().position(|(g, _)| g.is_match(path)));
        self.caches.bound();
        self.caches
            .files
            .insert(Key(k, path.to_owned(), String::new()), (ds, grant));
        (ds, grant)
    }

    fn api_call(
        &mut self,
        contract: Option<usize>,
        record: &mut IdentityRecord,
        window: &mut Vec<(DsId, i64)>,
        hot: &mut hot::Hot,
        call: &ApiCallSeen,
    ) {
        for cred in &call.credentials {
            self.credential(contract, record, hot, cred);
        }
        let Some(host) = call.host.as_deref() else {
            return;
        };
        let Some(ds) = self.classify(host, &call.path) else {
            return self.destination(contract, record, host);
        };
        let rules = self.rules;
        let name: &str = rules.ds_name(ds);
        touch_ds(record, hot, rules, ds, self.secs);
        let method = call.method.as_deref().unwrap_or("?");
        touch_method(record, hot, name, ds, method, self.secs);
        let identity = self.identity;
        let who: &str = &identity.id;
        if let Some(c) = contract.and_then(|i| rules.contracts.get(i)) {
            if !c.is_allowed(ds) {
                let Some(f) = self.fresh(Rule::UndeclaredDataSource, &[name]) else {
                    return self.after_call(contract, record, window, hot, ds, call);
                };
                self.open(
                    f,
                    format!("{who} called {method} {host}{} of data source {name}, which its contract does not allow", call.path),
                    contract,
                    Evidence {
                        data_source: Some(name.to_owned()),
                        classification: self.rules.classification(ds).map(class_name),
                        method: call.method.clone(),
                        path: Some(call.path.clone()),
                        destination: Some(host.to_owned()),
                        ..Evidence::default()
                    },
                );
            } else if let Some(ms) = c.methods.get(&ds) {
                let fresh = if !ms.iter().any(|m| method_matches(*m, method)) {
                    self.fresh(Rule::UndeclaredMethod, &[name, "\0", method])
                } else {
                    None
                };
                if let Some(f) = fresh {
                    let allowed: Vec<String> = ms
                        .iter()
                        .map(|m| format!("{m:?}").to_ascii_uppercase())
                        .collect();
                    self.open(
                        f,
                        format!(
                            "{who} called {method} on {name}; its contract allows {}",
                            allowed.join(", ")
                        ),
                        contract,
                        Evidence {
                            data_source: Some(name.to_owned()),
                            method: Some(method.to_owned()),
                            path: Some(call.path.clone()),
                            destination: Some(host.to_owned()),
                            allowed,
                            ..Evidence::default()
                        },
                    );
                }
            }
        }
        self.after_call(contract, record, window, hot, ds, call);
    }

    /// What every classified API call feeds: the combination window and the volume baselines.
    fn after_call(
        &mut self,
        contract: Option<usize>,
        record: &mut IdentityRecord,
        window: &mut Vec<(DsId, i64)>,
        hot: &mut hot::Hot,
        ds: DsId,
        call: &ApiCallSeen,
    ) {
        self.combination(contract, record, window, ds);
        let rules = self.rules;
        let name = rules.ds_name(ds);
        self.volume(
            contract,
            record,
            hot,
            ds,
            name,
            call.request_bytes + call.response_bytes,
        );
    }

    fn combination(
        &mut self,
        contract: Option<usize>,
        record: &mut IdentityRecord,
        window: &mut Vec<(DsId, i64)>,
        ds: DsId,
    ) {
        let span = i64::try_from(self.cfg.combination.window.as_nanos()).unwrap_or(i64::MAX);
        let t = self.t;
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
        let names = |s: &[DsId]| -> Vec<String> {
            s.iter()
                .map(|d| self.rules.ds_name(*d).to_owned())
                .collect()
        };
        let set_names = names(&set);
        let who = self.who().to_owned();
        let new_name = self.rules.ds_name(ds).to_owned();
        if let Some(c) = self.contract(contract) {
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
                self.raise(
                    Rule::CombinationNotAllowed,
                    set_names.join("+"),
                    format!(
                        "{who} touched {new_name} together with {} within {}; no combination of its contract allows that",
                        names(&others).join(", "),
                        humantime::format_duration(self.cfg.combination.window)
                    ),
                    contract,
                    Evidence {
                        data_sources: set_names.clone(),
                        data_source: Some(new_name.clone()),
                        window_seconds: Some(self.cfg.combination.window.as_secs()),
                        allowed,
                        ..Evidence::default()
                    },
                );
            }
        }
        let learning = i64::try_from(self.cfg.combination.learning.as_secs()).unwrap_or(i64::MAX);
        let learned = self.secs >= record.first_seen.saturating_add(learning);
        for o in others {
            let (a, b) = if self.rules.ds_name(o) < new_name.as_str() {
                (self.rules.ds_name(o).to_owned(), new_name.clone())
            } else {
                (new_name.clone(), self.rules.ds_name(o).to_owned())
            };
            let pair = (a, b);
            if record.pairs.contains(&pair) {
                continue;
            }
            if learned {
                self.raise(
                    Rule::CombinationUnseen,
                    format!("{}+{}", pair.0, pair.1),
                    format!(
                        "{who} touched {} and {} within {}, a combination not seen in its history",
                        pair.0,
                        pair.1,
                        humantime::format_duration(self.cfg.combination.window)
                    ),
                    contract,
                    Evidence {
                        data_sources: vec![pair.0.clone(), pair.1.clone()],
                        window_seconds: Some(self.cfg.combination.window.as_secs()),
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

    fn volume(
        &mut self,
        contract: Option<usize>,
        record: &mut IdentityRecord,
        hot: &mut hot::Hot,
        ds: DsId,
        name: &str,
        bytes: u64,
    ) {
        let limits = self
            .contract(contract)
            .and_then(|c| c.limits.get(&ds).copied());
        let mut h = hot.ds(ds);
        if let Some((v, peak)) = h.as_mut().and_then(|h| h.volume.as_mut()) {
            let spikes = v.add(&self.cfg.volume, self.t, 1, bytes);
            let over = match limits {
                Some((rpm, bph)) => v.limits(self.t, 1, bytes, rpm, bph),
                None => Vec::new(),
            };
            *peak = (*peak).max(v.current_requests());
            return self.volume_findings(contract, name, spikes, over);
        }
        if !record.volume.contains_key(name) {
            if record.volume.len() >= MAX_KEYS {
                record.dropped += 1;
                return;
            }
            record.volume.insert(name.to_owned(), Default::default());
        }
        let Some(v) = record.volume.get_mut(name) else {
            return;
        };
        let spikes = v.add(&self.cfg.volume, self.t, 1, bytes);
        let over = match limits {
            Some((rpm, bph)) => v.limits(self.t, 1, bytes, rpm, bph),
            None => Vec::new(),
        };
        let current = v.current_requests();
        // Per-minute peaks: with another bucket size the current bucket still approximates it.
        match record.peak_requests_per_minute.get_mut(name) {
            Some(p) => *p = (*p).max(current),
            None => {
                record
                    .peak_requests_per_minute
                    .insert(name.to_owned(), current);
            }
        }
        if let Some(h) = h {
            // From now on this data source's baseline is updated in the cache.
            let peak = record
                .peak_requests_per_minute
                .get(name)
                .copied()
                .unwrap_or(current);
            h.volume = Some((v.clone(), peak));
        }
        self.volume_findings(contract, name, spikes, over);
    }

    fn volume_findings(
        &mut self,
        contract: Option<usize>,
        name: &str,
        spikes: Vec<Excess>,
        over: Vec<Excess>,
    ) {
        if spikes.is_empty() && over.is_empty() {
            return;
        }
        let who = self.who().to_owned();
        for e in spikes {
            let Excess {
                metric,
                observed,
                expected,
                threshold,
                window_seconds,
            } = e;
            self.raise(
                Rule::VolumeSpike,
                format!("{name}\0{}", metric.name()),
                format!(
                    "{who} made {observed} {} to {name} within {window_seconds}s; its baseline is {expected:.0} (threshold {threshold})",
                    if metric == volume::Metric::Requests { "requests" } else { "bytes of traffic" }
                ),
                contract,
                Evidence {
                    data_source: Some(name.to_owned()),
                    metric: Some(metric.name().into()),
                    observed: Some(observed as f64),
                    expected: Some(expected),
                    limit: Some(threshold as f64),
                    window_seconds: Some(window_seconds),
                    ..Evidence::default()
                },
            );
        }
        for e in over {
            let Excess {
                metric,
                observed,
                threshold,
                window_seconds,
                ..
            } = e;
            self.raise(
                Rule::LimitExceeded,
                format!("{name}\0{}", metric.name()),
                format!(
                    "{who} exceeded its contract's limit of {threshold} {} per {} on {name}",
                    metric.name(),
                    if window_seconds == 60 {
                        "minute"
                    } else {
                        "hour"
                    }
                ),
                contract,
                Evidence {
                    data_source: Some(name.to_owned()),
                    metric: Some(metric.name().into()),
                    observed: Some(observed as f64),
                    expected: Some(threshold as f64),
                    limit: Some(threshold as f64),
                    window_seconds: Some(window_seconds),
                    ..Evidence::default()
                },
            );
        }
    }

    fn credential(
        &mut self,
        contract: Option<usize>,
        record: &mut IdentityRecord,
        hot: &mut hot::Hot,
        cred: &CredentialSeen,
    ) {
        let ttl = cred.jwt.as_ref().and_then(|j| j.ttl_seconds);
        let key = InlineKey::new(&cred.fingerprint);
        let cached = key.as_ref().and_then(|k| hot.cred(k));
        let full = record.credentials.len() >= MAX_KEYS;
        match cached {
            Some(c) => {
                c.usage.touch(self.secs);
                c.max_ttl_seconds = c.max_ttl_seconds.max(ttl);
            }
            None => self.credential_use(record, hot, key, cred, ttl, full),
        }
        self.credential_findings(contract, cred, ttl);
    }

    /// `credential`'s record update when the fingerprint is not cached (yet).
    fn credential_use(
        &mut self,
        record: &mut IdentityRecord,
        hot: &mut hot::Hot,
        key: Option<InlineKey<63>>,
        cred: &CredentialSeen,
        ttl: Option<i64>,
        full: bool,
    ) {
        match record.credentials.get_mut(&cred.fingerprint) {
            Some(u) => {
                u.usage.touch(self.secs);
                u.max_ttl_seconds = u.max_ttl_seconds.max(ttl);
            }
            None if !full => {
                record.credentials.insert(
                    cred.fingerprint.clone(),
                    CredentialUse {
                        kind: cred.kind.clone(),
                        vendor: cred.vendor.clone(),
                        long_lived: cred.long_lived,
                        max_ttl_seconds: ttl,
                        usage: Usage::new(self.secs),
                    },
                );
            }
            None => record.dropped += 1,
        }
        if let (Some(k), Some(u), false) = (
            key,
            record.credentials.get(&cred.fingerprint),
            hot.creds_full(),
        ) {
            hot.creds.push(HotCred {
                fingerprint: k,
                usage: u.usage,
                max_ttl_seconds: u.max_ttl_seconds,
            });
        }
    }

    fn credential_findings(
        &mut self,
        contract: Option<usize>,
        cred: &CredentialSeen,
        ttl: Option<i64>,
    ) {
        let identity = self.identity;
        let who: &str = &identity.id;
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
        let rules = self.rules;
        let kinds: &[&str] = contract
            .and_then(|i| rules.contracts.get(i))
            .map_or(&[], |c| c.kinds.as_slice());
        let kind = cred.kind.as_str();
        let kind_listed = kinds.contains(&kind);
        let fresh = if !kinds.is_empty() && !kind_listed {
            self.fresh(Rule::CredentialKindNotAllowed, &[kind])
        } else {
            None
        };
        if let Some(f) = fresh {
            self.open(
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
            (Some(what), false) => self.fresh(Rule::LegacyCredential, &[fp]).map(|f| (f, what)),
            _ => None,
        };
        if let Some((f, what)) = fresh {
            self.open(
                f,
                format!("{who} authenticates with {what}"),
                contract,
                ev(Evidence::default()),
            );
        }
        if let (Some(ttl), Some(max)) = (
            ttl,
            self.contract(contract)
                .and_then(|c| c.max_token_ttl_seconds()),
        ) {
            if let Some(f) = (ttl > max)
                .then(|| self.fresh(Rule::TokenTtlTooLong, &[fp]))
                .flatten()
            {
                self.open(
                    f,
                    format!("{who} presented a token valid for {ttl}s; its contract allows at most {max}s"),
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
            if let Some(f) = (exp < self.secs)
                .then(|| self.fresh(Rule::ExpiredToken, &[fp]))
                .flatten()
            {
                self.open(
                    f,
                    format!(
                        "{who} presented a token that expired {}s earlier",
                        self.secs.saturating_sub(exp)
                    ),
                    contract,
                    ev(Evidence::default()),
                );
            }
        }
        // Sightings across identities.
        let secs = self.secs;
        let c = match self.creds.get_mut(fp) {
            Some(c) => c,
            None => self
                .creds
                .entry(fp.to_owned())
                .or_insert_with(|| CredState {
                    record: CredentialRecord {
                        fingerprint: fp.to_owned(),
                        kind: cred.kind.clone(),
                        vendor: cred.vendor.clone(),
                        long_lived: cred.long_lived,
                        first_seen: secs,
                        last_seen: secs,
                        identities: Default::default(),
                    },
                    dirty: false,
                }),
        };
        if !c.dirty {
            c.dirty = true;
            self.dirty_creds.push(fp.to_owned());
        }
        let r = &mut c.record;
        r.last_seen = r.last_seen.max(secs);
        let room = r.identities.len() < MAX_SHARERS;
        match r.identities.get_mut(who) {
            Some(t) => *t = secs,
            None if room => {
                r.identities.insert(who.to_owned(), secs);
            }
            None => {}
        }
        let shared = r.identities.len() > 1 || !r.identities.contains_key(who);
        let others: Vec<String> = if shared {
            r.identities
                .keys()
                .filter(|k| k.as_str() != who)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if others.is_empty() {
            return;
        }
        if kind == "jwt" {
            let Some(f) = self.fresh(Rule::TokenReplayed, &[fp]) else {
                return;
            };
            self.open(
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
        let allowed_here = self.contract(contract).is_some_and(|c| c.shared_allowed);
        let allowed_there = others.iter().all(|o| {
            self.ids
                .get(o.as_str())
                .and_then(|&s| self.others.get(s)?.contract)
                .and_then(|i| self.rules.contracts.get(i))
                .is_some_and(|c| c.shared_allowed)
        });
        let fresh = if !(allowed_here && allowed_there) {
            self.fresh(Rule::SharedCredential, &[fp])
        } else {
            None
        };
        if let Some(f) = fresh {
            self.open(
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
}

impl CompiledContract {
    pub fn max_token_ttl_seconds(&self) -> Option<i64> {
        self.max_ttl_seconds
    }
}

fn class_name(c: Classification) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
