//! Fleet-wide detection: takes observations (and the compiled rules), gives findings judged over every node's share in a Redis-protocol store, raised once for the whole fleet.
//!
//! Each node aggregates its own absolute counts per identity and window, writes them under its
//! node name (a retried write changes nothing), reads every node's share back and judges the
//! sums (`detectors`). A finding is claimed with `SET NX` on its dedup key for
//! `detectors.dedup_window`: the node that wins raises it, the others stay quiet. The daemon
//! runs this on its own thread (`worker`), fed through a bounded queue; replay calls it inline.

mod detectors;
pub mod inventory;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod worker;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use redis::aio::ConnectionManager;

pub use self::settings::FleetConfig;
use self::{
    detectors::{Candidate, Metric, Presenter, Share, Totals},
    store::{KeyCheck, Keys, Target, SEP},
    telemetry::FleetTelemetry,
};
use crate::{
    detect::{
        compiled::Compiled,
        finding::{self, Finding, Phase, RuleRef},
    },
    events::observation::{Activity, Observation},
    identity::WorkloadIdentity,
};

/// The label whose HMAC under the fingerprint key every node compares (`P:keycheck`).
pub const KEY_CHECK_LABEL: &[u8] = b"nhiwatch fleet fingerprint-key check v1";

/// Rules the node-local engine judges alone (what a node sees is the whole evidence) but that
/// every node seeing the identity would raise: with `fleet:` they are claimed fleet-wide, so
/// one finding per episode goes out, naming the nodes that reported it.
pub const DEDUPED_FLEET_WIDE: [crate::detect::finding::Rule; 2] = [
    crate::detect::finding::Rule::Ungoverned,
    crate::detect::finding::Rule::CombinationUnseen,
];

/// Whether `f` is claimed fleet-wide before it is raised (`DEDUPED_FLEET_WIDE`).
pub fn deduped_fleet_wide(f: &Finding) -> bool {
    DEDUPED_FLEET_WIDE.iter().any(|r| r.id() == f.rule.id)
}

/// Local findings waiting for their claim; beyond it they go out unclaimed, as without `fleet:`.
const MAX_HELD: usize = 4096;

/// One node's view of one identity in one window.
struct Agg {
    identity: Arc<WorkloadIdentity>,
    contract: Option<usize>,
    share: Share,
    /// Fingerprint → credential kind.
    fingerprints: BTreeMap<String, String>,
    /// Changed since last written.
    dirty: bool,
}

/// Where a window's aggregate belongs: (node, identity id).
type AggKey = (Arc<str>, Arc<str>);

pub struct Fleet {
    cfg: FleetConfig,
    keys: Keys,
    target: Target,
    conn: Option<ConnectionManager>,
    rules: Arc<Compiled>,
    /// Fleet findings are claimed for this long (`detectors.dedup_window`).
    episode: Duration,
    default_node: String,
    /// Window number → aggregates, oldest first.
    windows: BTreeMap<i64, HashMap<AggKey, Agg>>,
    /// (clock hour, node and identity) → this node's absolute bytes per data source in the
    /// hour, for `bytesPerHour` (windows are kept for less than an hour); the current and the
    /// previous hour only.
    hours: HashMap<(i64, AggKey), BTreeMap<String, u64>>,
    /// Dedup keys this node raised or saw claimed → when the claim ends (observation clock).
    claimed: HashMap<String, i64>,
    /// This node's local findings of the rules in `DEDUPED_FLEET_WIDE`, waiting to be claimed
    /// fleet-wide at the next flush (bounded: `MAX_HELD`).
    held: Vec<Finding>,
    /// Local findings beyond `MAX_HELD`: out at the next flush, unclaimed.
    unclaimed: Vec<Finding>,
    /// Claimed by this node: raised at the first flush `gather` after the claim, naming every
    /// node that reported the episode meanwhile (key, when due).
    gathering: Vec<(Finding, String, i64)>,
    /// Episodes another node claimed first (local dedup key → claim end): this node's repeats
    /// and summaries of them stay quiet.
    lost: HashMap<String, i64>,
    /// The last flush (stop, end of a replay): gathered claims go out now.
    last_flush: bool,
    /// HMAC of `KEY_CHECK_LABEL`; None (replay) skips the check.
    key_check: Option<String>,
    /// The store's incarnation token when last written (`store::epoch`), and ours to offer.
    epoch: Option<String>,
    epoch_offer: String,
    mismatch: bool,
    /// The fleet's key id this node last raised NHI-092 about.
    mismatch_reported: Option<String>,
    /// The daemon itself, the identity of NHI-092 (`with_identity`).
    me: Option<Arc<WorkloadIdentity>>,
    up: Option<bool>,
    /// After a failed connect, no new attempt before this (a replay flushes at every window).
    retry_at: Option<std::time::Instant>,
    pub(crate) telemetry: FleetTelemetry,
    /// The baseline settings NHI-040 uses, with `fleet.window` as the bucket.
    volume: crate::detect::volume::VolumeConfig,
    now: i64,
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX).max(1)
}

impl Fleet {
    pub fn new(
        cfg: &FleetConfig,
        rules: Arc<Compiled>,
        episode: Duration,
        default_node: String,
        key_check: Option<String>,
        telemetry: FleetTelemetry,
    ) -> Result<Fleet, store::ConnectError> {
        Ok(Fleet {
            target: Target::new(cfg)?,
            keys: Keys {
                prefix: cfg.prefix.clone(),
            },
            cfg: cfg.clone(),
            conn: None,
            rules,
            episode,
            default_node,
            windows: BTreeMap::new(),
            hours: HashMap::new(),
            held: Vec::new(),
            unclaimed: Vec::new(),
            gathering: Vec::new(),
            lost: HashMap::new(),
            last_flush: false,
            claimed: HashMap::new(),
            key_check,
            epoch: None,
            epoch_offer: {
                let mut b = [0u8; 16];
                let _ = getrandom::getrandom(&mut b);
                b.iter().map(|x| format!("{x:02x}")).collect()
            },
            mismatch: false,
            mismatch_reported: None,
            me: None,
            up: None,
            retry_at: None,
            telemetry,
            volume: crate::detect::volume::VolumeConfig::default(),
            now: 0,
        })
    }

    /// The fleet baseline judges with these (`detectors.volume`: history, warmup, sensitivity,
    /// min_requests), over `fleet.window`s.
    pub fn with_volume(mut self, volume: crate::detect::volume::VolumeConfig) -> Fleet {
        self.volume = volume;
        self
    }

    /// The daemon's own identity, which its NHI-092 (another fingerprint key) names.
    pub fn with_identity(mut self, me: Arc<WorkloadIdentity>) -> Fleet {
        self.me = Some(me);
        self
    }

    pub fn set_rules(&mut self, rules: Arc<Compiled>) {
        // Aggregates hold contract indices of the old rules.
        for w in self.windows.values_mut() {
            for a in w.values_mut() {
                a.contract = rules.contract_for(&a.identity, None);
            }
        }
        self.rules = rules;
    }

    pub fn window_of(&self, t: i64) -> i64 {
        t.div_euclid(ns(self.cfg.window))
    }

    /// The clock hour a window starts in (`bytesPerHour` counts clock hours, as the node-local limit).
    fn hour_of(&self, w: i64) -> i64 {
        w.saturating_mul(ns(self.cfg.window))
            .div_euclid(3_600_000_000_000)
    }

    fn node_of<'a>(&'a self, o: &'a Observation) -> &'a str {
        match &self.cfg.node {
            Some(n) => n,
            None if !o.identity.node.is_empty() => &o.identity.node,
            None => &self.default_node,
        }
    }

    /// Adds one observation to this node's share of its window.
    pub fn add(&mut self, o: &Observation) {
        self.telemetry.stage.received.inc();
        self.now = self.now.max(o.time);
        let w = self.window_of(o.time);
        self.expire();
        if self
            .windows
            .first_key_value()
            .is_some_and(|(&first, _)| w < first)
            && w < self.window_of(self.now) - i64::from(self.cfg.ttl_windows)
        {
            // Older than anything the store still keeps.
            self.telemetry.expired_unwritten.inc();
            return;
        }
        let node: Arc<str> = self.node_of(o).into();
        let total: usize = self.windows.values().map(HashMap::len).sum();
        let rules = self.rules.clone();
        let window = self.windows.entry(w).or_default();
        let key: AggKey = (node, o.identity.id.as_str().into());
        let hour = w
            .saturating_mul(ns(self.cfg.window))
            .div_euclid(3_600_000_000_000);
        let hour_key = (hour, key.clone());
        let agg = match window.get_mut(&key) {
            Some(a) => a,
            None => {
                if total >= self.cfg.max_identities {
                    self.telemetry.capped.inc();
                    return;
                }
                window.entry(key).or_insert_with(|| Agg {
                    contract: rules.contract_for(&o.identity, o.labels.as_deref()),
                    identity: o.identity.clone(),
                    share: Share::default(),
                    fingerprints: BTreeMap::new(),
                    dirty: true,
                })
            }
        };
        agg.dirty = true;
        let Activity::ApiCall(call) = &o.activity else {
            return;
        };
        if let Some(ds) = call
            .host
            .as_deref()
            .and_then(|h| rules.classify_http(h, &call.path))
        {
            let name = rules.ds_name(ds);
            let s = &mut agg.share;
            if s.requests.contains_key(name)
                || s.requests.len() < self.cfg.max_data_sources_per_identity
            {
                let bytes = call.request_bytes + call.response_bytes;
                *s.requests.entry(name.to_owned()).or_default() += 1;
                *s.bytes.entry(name.to_owned()).or_default() += bytes;
                *self
                    .hours
                    .entry(hour_key)
                    .or_default()
                    .entry(name.to_owned())
                    .or_default() += bytes;
            } else {
                self.telemetry.capped.inc();
            }
        }
        for c in &call.credentials {
            if agg.fingerprints.contains_key(&c.fingerprint)
                || agg.fingerprints.len() < self.cfg.max_fingerprints_per_identity
            {
                agg.fingerprints
                    .entry(c.fingerprint.clone())
                    .or_insert_with(|| c.kind.clone());
            } else {
                self.telemetry.capped.inc();
            }
        }
    }

    /// Forgets windows the store no longer keeps; one never written is counted.
    fn expire(&mut self) {
        let oldest = self.window_of(self.now) - i64::from(self.cfg.ttl_windows);
        while let Some((&w, _)) = self.windows.first_key_value() {
            if w >= oldest {
                break;
            }
            if let Some((_, aggs)) = self.windows.pop_first() {
                let lost = aggs.values().filter(|a| a.dirty).count();
                self.telemetry.expired_unwritten.inc_by(lost as u64);
            }
        }
        let now = self.now;
        self.claimed.retain(|_, until| *until > now);
        self.lost.retain(|_, until| *until > now);
        let hour = self.hour_of(self.window_of(self.now));
        self.hours.retain(|(h, _), _| *h >= hour - 1);
    }

    /// A local finding of a rule in `DEDUPED_FLEET_WIDE`: claimed at the next flush, raised by
    /// the one node that claims it first. Beyond `MAX_HELD`, or a summary of an episode this
    /// node raised, it goes out at the next flush as it is.
    pub fn defer(&mut self, f: Finding) {
        if f.phase == Phase::Summary && self.lost.contains_key(&f.dedup_key) {
            return;
        }
        if self.held.len() >= MAX_HELD {
            self.unclaimed.push(f);
        } else {
            self.held.push(f);
        }
    }

    /// The store cannot dedup: held and gathered local findings go out as without `fleet:`
    /// (a claimed one names this node).
    fn release_local(&mut self, out: &mut Vec<Finding>) {
        out.append(&mut self.held);
        let me = self.my_node();
        for (mut f, _, _) in self.gathering.drain(..) {
            if f.evidence.nodes.is_empty() {
                f.evidence.nodes = vec![me.clone()];
            }
            out.push(f);
        }
    }

    fn my_node(&self) -> String {
        self.cfg
            .node
            .clone()
            .unwrap_or_else(|| self.default_node.clone())
    }

    /// The last flush (stop, end of a replay): claims still gathering are raised now.
    pub async fn flush_all(&mut self, out: &mut Vec<Finding>) {
        self.last_flush = true;
        self.flush(out).await;
        // Whatever the store could not take goes out as it is.
        self.release_local(out);
    }

    /// Whether the store answered at the last flush.
    pub fn is_up(&self) -> bool {
        self.up == Some(true)
    }

    /// Windows not yet written (for tests and the stop).
    pub fn pending(&self) -> usize {
        self.windows
            .values()
            .flat_map(HashMap::values)
            .filter(|a| a.dirty)
            .count()
    }

    fn set_up(&mut self, up: bool, why: Option<&str>) {
        self.telemetry.up.set(i64::from(up));
        if self.up != Some(up) {
            match (up, why) {
                (true, _) => tracing::info!(url = %self.target.url, "fleet store answers"),
                (false, Some(e)) => tracing::warn!(url = %self.target.url, error = %e,
                    "fleet store unavailable: local detection continues, fleet counts wait in memory (bounded) until it answers"),
                (false, None) => {}
            }
            self.up = Some(up);
        }
    }

    /// Writes what changed, reads the fleet's sums back and judges them; findings this node
    /// claimed first go to `out`. A store that does not answer leaves everything for next time.
    pub async fn flush(&mut self, out: &mut Vec<Finding>) {
        self.expire();
        out.append(&mut self.unclaimed);
        let conn = match self.conn.take() {
            Some(c) => c,
            None => {
                if self.retry_at.is_some_and(|t| std::time::Instant::now() < t) {
                    self.release_local(out);
                    return;
                }
                match self.target.connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        self.retry_at = Some(std::time::Instant::now() + self.cfg.flush_interval);
                        self.telemetry.stage.errors.inc();
                        self.set_up(false, Some(&e));
                        self.release_local(out);
                        return;
                    }
                }
            }
        };
        self.conn = Some(conn.clone());
        let mut conn = conn;
        if let Err(e) = self.flush_on(&mut conn, out).await {
            self.telemetry.stage.errors.inc();
            self.set_up(false, Some(&store::describe(&e)));
            self.release_local(out);
        }
    }

    async fn flush_on(
        &mut self,
        c: &mut ConnectionManager,
        out: &mut Vec<Finding>,
    ) -> Result<(), redis::RedisError> {
        if let Some(mine) = self.key_check.clone() {
            match store::key_check(c, &self.keys, &mine).await? {
                KeyCheck::Different(theirs) => {
                    let (mine_id, theirs_id) = (store::key_id(&mine), store::key_id(&theirs));
                    if !self.mismatch {
                        tracing::error!(url = %self.target.url, prefix = %self.keys.prefix,
                            key_id = %mine_id, fleet_key_id = %theirs_id,
                            "the fleet store holds another fingerprint key's check: this node's credential fingerprints would not match the others'. Mount the same fingerprint key (the DaemonSet's Secret) on every node; until then this node writes nothing to the fleet");
                    }
                    if self.mismatch_reported.as_deref() != Some(theirs_id.as_str()) {
                        self.report_mismatch(c, &mine_id, &theirs_id, out).await?;
                        self.mismatch_reported = Some(theirs_id);
                    }
                    self.mismatch = true;
                    self.telemetry.key_mismatch.set(1);
                    let n = self.pending() as u64;
                    self.telemetry.withheld.inc_by(n);
                    for a in self.windows.values_mut().flat_map(HashMap::values_mut) {
                        a.dirty = false;
                    }
                    self.release_local(out);
                    self.set_up(true, None);
                    return Ok(());
                }
                KeyCheck::Fresh | KeyCheck::Same => {}
            }
            self.mismatch = false;
            self.mismatch_reported = None;
            self.telemetry.key_mismatch.set(0);
        }
        let epoch = store::epoch(c, &self.keys, &self.epoch_offer).await?;
        if self.epoch.as_ref().is_some_and(|e| *e != epoch) {
            tracing::warn!(url = %self.target.url,
                "the fleet store was emptied or replaced: writing this node's windows and claims again");
            for a in self.windows.values_mut().flat_map(HashMap::values_mut) {
                a.dirty = true;
            }
            self.reclaim(c).await?;
        }
        self.epoch = Some(epoch);
        self.claim_local(c, out).await?;
        let ttl_ms = self.cfg.ttl().as_millis() as u64;
        let window_secs = self.cfg.window.as_secs();
        // The inventory is keyed by the day of the write (the store's clock, as its TTLs), so
        // `inventory --fleet` finds a replayed recording's identities too.
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
            .div_euclid(86_400);
        let sha = store::capped_hset_sha();
        let mut pipe = redis::pipe();
        let mut written: Vec<(i64, AggKey)> = Vec::new();
        let mut evals = 0u64;
        let mut hour_writes = 0u64;
        // Past the end of the hour, for a node that writes the hour's last window late.
        let hour_ttl_ms = (2 * 3_600_000u64).max(ttl_ms);
        for (&w, aggs) in &self.windows {
            for (key, a) in aggs.iter().filter(|(_, a)| a.dirty) {
                let (node, id) = key;
                let k = self.keys.window(id, w);
                let value = serde_json::to_string(&a.share).unwrap_or_default();
                pipe.hset(&k, &**node, value).ignore();
                pipe.pexpire(&k, ttl_ms as i64).ignore();
                let hour = self.hour_of(w);
                if let Some(b) = self.hours.get(&(hour, key.clone())) {
                    let hk = self.keys.hour_bytes(id, hour);
                    pipe.hset(&hk, &**node, serde_json::to_string(b).unwrap_or_default())
                        .ignore();
                    pipe.pexpire(&hk, hour_ttl_ms as i64).ignore();
                    hour_writes += 2;
                }
                let sharing = a
                    .contract
                    .and_then(|i| self.rules.contracts.get(i))
                    .is_some_and(|c| c.shared_allowed);
                for fp in a.fingerprints.keys() {
                    pipe.cmd("EVALSHA")
                        .arg(&sha)
                        .arg(1)
                        .arg(self.keys.fingerprint(fp))
                        .arg(format!("{node}{SEP}{id}"))
                        .arg(format!("{w}:{}", u8::from(sharing)))
                        .arg(self.cfg.max_identities_per_fingerprint)
                        .arg(ttl_ms);
                    evals += 1;
                }
                let secs = (w * ns(self.cfg.window)).div_euclid(1_000_000_000);
                let row = inventory::Row {
                    kind: a.identity.kind,
                    contract: a
                        .contract
                        .and_then(|i| self.rules.contracts.get(i))
                        .map(|c| c.reference.name.clone()),
                    last_seen: secs,
                };
                pipe.cmd("EVALSHA")
                    .arg(&sha)
                    .arg(1)
                    .arg(self.keys.inventory(today))
                    .arg(format!("{node}{SEP}{id}"))
                    .arg(serde_json::to_string(&row).unwrap_or_default())
                    .arg(self.cfg.max_inventory)
                    .arg(2 * 86_400_000u64);
                evals += 1;
                written.push((w, key.clone()));
            }
        }
        if written.is_empty() {
            self.set_up(true, None);
            return Ok(());
        }
        let results: Vec<i64> = pipe.query_async(c).await?;
        self.telemetry
            .commands("write", written.len() as u64 * 2 + evals + hour_writes);
        let refused = results.iter().filter(|r| **r == 0).count() as u64;
        self.telemetry.capped.inc_by(refused);
        self.set_up(true, None);
        for (w, key) in &written {
            if let Some(a) = self.windows.get_mut(w).and_then(|m| m.get_mut(key)) {
                a.dirty = false;
            }
        }
        // Read back every node's share of what this node wrote, and who presented its fingerprints.
        let mut ids: BTreeSet<(i64, Arc<str>)> = BTreeSet::new();
        let mut fps: BTreeMap<String, (String, i64, AggKey)> = BTreeMap::new();
        for (w, key) in &written {
            ids.insert((*w, key.1.clone()));
            if let Some(a) = self.windows.get(w).and_then(|m| m.get(key)) {
                for (fp, kind) in &a.fingerprints {
                    fps.insert(fp.clone(), (kind.clone(), *w, key.clone()));
                }
            }
        }
        let mut pipe = redis::pipe();
        for (w, id) in &ids {
            pipe.hgetall(self.keys.window(id, *w));
        }
        for fp in fps.keys() {
            pipe.hgetall(self.keys.fingerprint(fp));
        }
        for (w, id) in &ids {
            pipe.hgetall(self.keys.hour_bytes(id, self.hour_of(*w)));
        }
        let read: Vec<Vec<(String, String)>> = pipe.query_async(c).await?;
        self.telemetry
            .commands("read", (2 * ids.len() + fps.len()) as u64);
        let mut candidates = Vec::new();
        let (id_reads, rest) = read.split_at(ids.len().min(read.len()));
        let (fp_reads, hour_reads) = rest.split_at(fps.len().min(rest.len()));
        // The fleet's totals per window go to the identity's history (the last writer's sum is
        // complete), which comes back for the baseline.
        let all_shares: Vec<Vec<(String, Share)>> = id_reads
            .iter()
            .map(|fields| {
                fields
                    .iter()
                    .filter_map(|(n, v)| Some((n.clone(), serde_json::from_str(v).ok()?)))
                    .collect()
            })
            .collect();
        let history_ttl = self.cfg.window.as_millis() as u64 * (self.volume.history as u64 + 2);
        let mut pipe = redis::pipe();
        for ((w, id), shares) in ids.iter().zip(&all_shares) {
            let mut totals = Totals::default();
            for (_, s) in shares {
                for (ds, r) in &s.requests {
                    *totals.requests.entry(ds.clone()).or_default() += r;
                }
                for (ds, b) in &s.bytes {
                    *totals.bytes.entry(ds.clone()).or_default() += b;
                }
            }
            let k = self.keys.history(id);
            pipe.hset(&k, *w, serde_json::to_string(&totals).unwrap_or_default())
                .ignore();
            // Bounded: the window that just left the history goes.
            pipe.hdel(&k, *w - self.volume.history as i64 - 1).ignore();
            pipe.pexpire(&k, history_ttl as i64).ignore();
            pipe.hgetall(&k);
        }
        let histories: Vec<Vec<(i64, String)>> = pipe.query_async(c).await?;
        self.telemetry.commands("write", ids.len() as u64 * 3);
        self.telemetry.commands("read", ids.len() as u64);
        for ((((w, id), shares), history), hour) in
            ids.iter().zip(&all_shares).zip(&histories).zip(hour_reads)
        {
            // Any node's aggregate of this identity gives its attributes and contract.
            let Some(a) = self
                .windows
                .get(w)
                .and_then(|m| m.iter().find(|((_, i), _)| i == id).map(|(_, a)| a))
            else {
                continue;
            };
            let mut per_ds: BTreeMap<(Metric, String), BTreeMap<i64, u64>> = BTreeMap::new();
            for (hw, v) in history {
                if *hw >= *w {
                    continue;
                }
                if let Some(t) = Totals::parse(v) {
                    for m in [Metric::Requests, Metric::Bytes] {
                        for (ds, n) in t.get(m) {
                            per_ds.entry((m, ds.clone())).or_default().insert(*hw, *n);
                        }
                    }
                }
            }
            // The identity's first window, for every data source: quiet ones count as zero.
            let first = history.iter().map(|(hw, _)| *hw).min().unwrap_or(*w);
            let dss: BTreeSet<&String> =
                shares.iter().flat_map(|(_, s)| s.requests.keys()).collect();
            for ds in dss {
                if first == *w {
                    continue;
                }
                for m in [Metric::Requests, Metric::Bytes] {
                    let mut h = per_ds.remove(&(m, ds.clone())).unwrap_or_default();
                    h.entry(first).or_insert(0);
                    candidates.extend(detectors::spike(
                        &self.volume,
                        m,
                        &a.identity,
                        a.contract,
                        ds,
                        *w,
                        &h,
                        shares,
                        window_secs,
                    ));
                }
            }
            let hour: Vec<(String, BTreeMap<String, u64>)> = hour
                .iter()
                .filter_map(|(n, v)| Some((n.clone(), serde_json::from_str(v).ok()?)))
                .collect();
            candidates.extend(detectors::hourly_bytes(
                &self.rules,
                &a.identity,
                a.contract,
                &hour,
            ));
            candidates.extend(detectors::limits(
                &self.rules,
                &a.identity,
                a.contract,
                shares,
                window_secs,
            ));
            candidates.extend(detectors::combination(
                &self.rules,
                &a.identity,
                a.contract,
                shares,
                window_secs,
            ));
        }
        let current = self.window_of(self.now);
        for ((fp, (kind, w, key)), fields) in fps.iter().zip(fp_reads) {
            let presenters: Vec<Presenter> = fields
                .iter()
                .filter_map(|(field, v)| {
                    let (node, identity) = field.split_once(SEP)?;
                    let (last, sharing) = v.split_once(':')?;
                    let last: i64 = last.parse().ok()?;
                    // Presented within the windows the store keeps.
                    (current - last <= i64::from(self.cfg.ttl_windows)).then(|| Presenter {
                        node: node.to_owned(),
                        identity: identity.to_owned(),
                        sharing_allowed: sharing == "1",
                    })
                })
                .collect();
            if let Some(a) = self.windows.get(w).and_then(|m| m.get(key)) {
                candidates.extend(detectors::shared(
                    &a.identity,
                    a.contract,
                    kind,
                    fp,
                    &presenters,
                ));
            }
        }
        self.claim(c, candidates, out).await
    }

    /// Raises each candidate this node claims first, fleet-wide, for the episode.
    async fn claim(
        &mut self,
        c: &mut ConnectionManager,
        candidates: Vec<Candidate>,
        out: &mut Vec<Finding>,
    ) -> Result<(), redis::RedisError> {
        let node = self
            .cfg
            .node
            .clone()
            .unwrap_or_else(|| self.default_node.clone());
        let fresh: Vec<(String, Candidate)> = candidates
            .into_iter()
            .map(|cand| {
                let h = finding::dedup_key(&cand.subject, cand.rule, &[&cand.key, "fleet"]);
                (format!("{h:016x}"), cand)
            })
            .filter(|(k, _)| !self.claimed.contains_key(k))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (k, _) in &fresh {
            pipe.cmd("SET")
                .arg(self.keys.found(k))
                .arg(&node)
                .arg("NX")
                .arg("PX")
                .arg(self.episode.as_millis() as u64);
        }
        let won: Vec<Option<String>> = pipe.query_async(c).await?;
        self.telemetry.commands("claim", fresh.len() as u64);
        let until = self.now.saturating_add(ns(self.episode));
        for ((k, cand), won) in fresh.into_iter().zip(won) {
            self.claimed.insert(k.clone(), until);
            if won.is_none() {
                continue;
            }
            self.telemetry.stage.emitted.inc();
            let contract = cand
                .contract
                .and_then(|i| self.rules.contracts.get(i))
                .map(|c| c.reference.clone());
            out.push(Finding {
                kind: "finding".into(),
                time: self.now,
                last_seen: self.now,
                rule: RuleRef {
                    id: cand.rule.id().into(),
                    name: cand.rule.name().into(),
                },
                severity: cand.rule.severity(),
                summary: cand.summary,
                identity: cand.identity,
                contract,
                evidence: cand.evidence,
                count: 1,
                phase: Phase::Opened,
                dedup_key: k,
            });
        }
        Ok(())
    }

    /// NHI-092 through the sinks: this node's fingerprint key differs from the fleet's. Once
    /// per node and pair of key ids (claimed in the store for the episode, so a restart does
    /// not repeat it); the ids name the keys, never the keys themselves.
    async fn report_mismatch(
        &mut self,
        c: &mut ConnectionManager,
        mine_id: &str,
        theirs_id: &str,
        out: &mut Vec<Finding>,
    ) -> Result<(), redis::RedisError> {
        let node = self.my_node();
        let rule = finding::Rule::FleetKeyMismatch;
        let k = format!(
            "{:016x}",
            finding::dedup_key(&node, rule, &[mine_id, theirs_id])
        );
        let won: Option<String> = redis::cmd("SET")
            .arg(self.keys.found(&k))
            .arg(&node)
            .arg("NX")
            .arg("PX")
            .arg(self.episode.as_millis() as u64)
            .query_async(c)
            .await?;
        self.telemetry.commands("claim", 1);
        if won.is_none() {
            return Ok(());
        }
        let identity = self.me.clone().unwrap_or_else(|| {
            Arc::new(WorkloadIdentity {
                id: format!("nhiwatch://node/{node}"),
                kind: crate::identity::IdentityKind::Unix,
                namespace: None,
                service_account: None,
                pod: None,
                pod_uid: None,
                container: None,
                container_id: None,
                image: None,
                owner: None,
                unit: None,
                uid: None,
                user: None,
                exe: None,
                node: node.clone(),
            })
        });
        let now = if self.now > 0 {
            self.now
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64)
        };
        out.push(Finding {
            kind: "finding".into(),
            time: now,
            last_seen: now,
            rule: RuleRef {
                id: rule.id().into(),
                name: rule.name().into(),
            },
            severity: rule.severity(),
            summary: format!(
                "node {node} has another credential fingerprint key (id {mine_id}) than the fleet (id {theirs_id}) in the store under prefix {}: its fingerprints cannot match the other nodes', so it shares nothing with the fleet. Mount the same fingerprint key (the DaemonSet's Secret, fleet.fingerprint_key_file) on every node",
                self.keys.prefix
            ),
            identity,
            contract: None,
            evidence: finding::Evidence {
                metric: Some("fingerprint_key_id".into()),
                key_id: Some(mine_id.to_owned()),
                fleet_key_id: Some(theirs_id.to_owned()),
                nodes: vec![node],
                ..finding::Evidence::default()
            },
            count: 1,
            phase: Phase::Opened,
            dedup_key: k,
        });
        self.telemetry.stage.emitted.inc();
        Ok(())
    }

    /// Claims the held local findings (`SET NX` on `P:found:{K}`, K their node-independent
    /// dedup key) and adds this node to the episode's reporters (`P:nodes:{K}`); raises the
    /// ones claimed a flush ago with every reporter in `evidence.nodes`.
    async fn claim_local(
        &mut self,
        c: &mut ConnectionManager,
        out: &mut Vec<Finding>,
    ) -> Result<(), redis::RedisError> {
        let node = self.my_node();
        let episode_ms = self.episode.as_millis() as u64;
        let held = std::mem::take(&mut self.held);
        let (summaries, opened): (Vec<Finding>, Vec<Finding>) =
            held.into_iter().partition(|f| f.phase == Phase::Summary);
        // A summary reaches here only from the node that raised the episode (or while unclaimed).
        out.extend(
            summaries
                .into_iter()
                .filter(|f| !self.lost.contains_key(&f.dedup_key)),
        );
        if !opened.is_empty() {
            let mut pipe = redis::pipe();
            for f in &opened {
                let k = self.keys.reporters(&f.dedup_key);
                pipe.sadd(&k, &node).ignore();
                pipe.pexpire(&k, episode_ms as i64).ignore();
                pipe.cmd("SET")
                    .arg(self.keys.found(&f.dedup_key))
                    .arg(&node)
                    .arg("NX")
                    .arg("PX")
                    .arg(episode_ms);
            }
            let won: Vec<Option<String>> = match pipe.query_async(c).await {
                Ok(w) => w,
                Err(e) => {
                    self.held = opened;
                    return Err(e);
                }
            };
            self.telemetry.commands("claim", 3 * opened.len() as u64);
            let due = self.now.saturating_add(ns(self.cfg.flush_interval));
            let until = self.now.saturating_add(ns(self.episode));
            for (f, won) in opened.into_iter().zip(won) {
                if won.is_some() {
                    let k = f.dedup_key.clone();
                    // Written again if the store comes back empty (`reclaim`).
                    self.claimed.insert(k.clone(), until);
                    self.gathering.push((f, k, due));
                } else {
                    self.lost.insert(f.dedup_key, until);
                }
            }
        }
        let (now, last) = (self.now, self.last_flush);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.gathering)
            .into_iter()
            .partition(|(_, _, due)| last || *due <= now);
        self.gathering = waiting;
        if ready.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (_, k, _) in &ready {
            pipe.smembers(self.keys.reporters(k));
        }
        let nodes: Vec<Vec<String>> = match pipe.query_async(c).await {
            Ok(n) => n,
            Err(e) => {
                self.gathering.extend(ready);
                return Err(e);
            }
        };
        self.telemetry.commands("read", ready.len() as u64);
        for ((mut f, _, _), mut n) in ready.into_iter().zip(nodes) {
            if !n.contains(&node) {
                n.push(node.clone());
            }
            n.sort();
            f.evidence.nodes = n;
            self.telemetry.stage.emitted.inc();
            out.push(f);
        }
        Ok(())
    }

    /// After the store was emptied: the claims this node knows of are written again, so no
    /// node raises an episode a second time.
    async fn reclaim(&mut self, c: &mut ConnectionManager) -> Result<(), redis::RedisError> {
        if self.claimed.is_empty() {
            return Ok(());
        }
        let node = self
            .cfg
            .node
            .clone()
            .unwrap_or_else(|| self.default_node.clone());
        let mut pipe = redis::pipe();
        for (k, until) in &self.claimed {
            let left = ((until - self.now) / 1_000_000).max(1);
            pipe.cmd("SET")
                .arg(self.keys.found(k))
                .arg(&node)
                .arg("NX")
                .arg("PX")
                .arg(left)
                .ignore();
        }
        pipe.query_async::<()>(c).await
    }
}
