//! Findings: the rule catalogue (stable ids, names, severities, families), the finding record, and deduplication per (identity, rule, evidence key) with counts.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{events::observation::rfc3339_ns, identity::WorkloadIdentity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// The detector family that raises a rule: one file under `detect/detectors/` each, except
/// `Alerts`, whose rules the alert router raises about the alerts themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Governance,
    Credentials,
    Access,
    Secrets,
    Combination,
    Volume,
    Alerts,
}

/// How a rule decides, as OCSF's analytic types name it (1 Rule, 2 Behavioral, 3 Statistical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Analytic {
    /// Against what the contract says.
    Rule,
    /// Against what the identity did before.
    Behavioral,
    /// Against a learned statistical baseline.
    Statistical,
}

impl Analytic {
    pub fn type_id(self) -> u8 {
        match self {
            Analytic::Rule => 1,
            Analytic::Behavioral => 2,
            Analytic::Statistical => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Analytic::Rule => "Rule",
            Analytic::Behavioral => "Behavioral",
            Analytic::Statistical => "Statistical",
        }
    }
}

macro_rules! rules {
    ($($v:ident = $id:literal, $name:literal, $sev:ident, $family:ident, $analytic:ident, $title:literal;)*) => {
        /// Every rule nhiwatch can raise. Ids never change meaning.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rule { $($v,)* }

        impl Rule {
            pub const ALL: &'static [Rule] = &[$(Rule::$v,)*];
            pub fn id(self) -> &'static str { match self { $(Rule::$v => $id,)* } }
            pub fn name(self) -> &'static str { match self { $(Rule::$v => $name,)* } }
            pub fn severity(self) -> Severity { match self { $(Rule::$v => Severity::$sev,)* } }
            pub fn family(self) -> Family { match self { $(Rule::$v => Family::$family,)* } }
            pub fn analytic(self) -> Analytic { match self { $(Rule::$v => Analytic::$analytic,)* } }
            pub fn title(self) -> &'static str { match self { $(Rule::$v => $title,)* } }
            pub fn from_id(id: &str) -> Option<Rule> {
                match id { $($id => Some(Rule::$v),)* _ => None }
            }
        }
    };
}

// The catalogue: one row per rule. A new rule is a row here and its check in its family's file.
rules! {
    Ungoverned = "NHI-001", "ungoverned-identity", Medium, Governance, Rule, "Identity without an access contract";
    ContractExpired = "NHI-002", "contract-expired", High, Governance, Rule, "Access contract expired";
    ContractWithoutOwner = "NHI-003", "contract-without-owner", Low, Governance, Rule, "Access contract without an owner";
    UndeclaredDataSource = "NHI-010", "undeclared-data-source", High, Access, Rule, "Data source not declared in the contract";
    UndeclaredMethod = "NHI-011", "undeclared-method", Medium, Access, Rule, "Method not declared for the data source";
    UndeclaredDestination = "NHI-012", "undeclared-destination", Medium, Access, Rule, "Destination not declared in the contract";
    SecretReadNotAllowed = "NHI-020", "secret-read-not-allowed", High, Secrets, Rule, "Secret read without a grant";
    SecretReadUnexpectedExecutable = "NHI-021", "secret-read-unexpected-executable", Critical, Secrets, Rule, "Secret read by an executable the contract does not name";
    CombinationNotAllowed = "NHI-030", "combination-not-allowed", High, Combination, Rule, "Data sources combined beyond the contract";
    CombinationUnseen = "NHI-031", "combination-unseen", Medium, Combination, Behavioral, "Data-source combination never seen before";
    VolumeSpike = "NHI-040", "volume-spike", Medium, Volume, Statistical, "Volume far above the learned baseline";
    LimitExceeded = "NHI-041", "limit-exceeded", High, Volume, Rule, "Contract limit exceeded";
    SharedCredential = "NHI-050", "shared-credential", High, Credentials, Rule, "Credential shared by several identities";
    CredentialKindNotAllowed = "NHI-051", "credential-kind-not-allowed", Medium, Credentials, Rule, "Credential kind not allowed by the contract";
    LegacyCredential = "NHI-052", "legacy-credential", Medium, Credentials, Rule, "Legacy credential in use";
    TokenTtlTooLong = "NHI-053", "token-ttl-too-long", Medium, Credentials, Rule, "Token lifetime above the contract's maximum";
    ExpiredToken = "NHI-054", "expired-token", High, Credentials, Rule, "Expired token presented";
    TokenReplayed = "NHI-055", "token-replayed", Critical, Credentials, Rule, "Token presented by a second identity";
    AudienceMismatch = "NHI-056", "audience-mismatch", High, Credentials, Rule, "Token presented to a destination none of its audiences names";
    AudienceMissing = "NHI-057", "audience-missing", Medium, Credentials, Rule, "Token without an audience where the contract requires one";
    ScopeBeyondContract = "NHI-058", "scope-beyond-contract", Medium, Credentials, Rule, "Token scope beyond what the contract allows";
    RotationOverdue = "NHI-059", "rotation-overdue", Medium, Credentials, Rule, "Static credential in use longer than its maximum age";
    BreakGlass = "NHI-060", "break-glass-activity", High, Governance, Rule, "Break-glass identity active";
    AlertsRateLimited = "NHI-090", "alerts-rate-limited", Low, Alerts, Rule, "Alerts held back by the rate limit";
    AlertSpoolFull = "NHI-091", "alert-spool-full", High, Alerts, Rule, "Alert spool full: alerts for a sink dropped";
    FleetKeyMismatch = "NHI-092", "fleet-key-mismatch", High, Alerts, Rule, "Fleet node with another credential fingerprint key";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub id: String,
    pub name: String,
}

/// The contract that decided, pinned to the text in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractRef {
    pub name: String,
    pub version: String,
    pub file: String,
    pub line: usize,
    /// Who is accountable for the identity (absent: nobody, see NHI-003), and why it holds
    /// its access: what an auditor asks first. Findings saved before these were added have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRef {
    pub kind: String,
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// What was seen, metadata only. Which fields are set depends on the rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialRef>,
    /// Other identities seen with the same credential.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Fleet findings (`fleet:`): every node whose share of the store made the finding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_on: Option<String>,
    /// The token's audiences (`aud`), as it named them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The one scope a finding is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// When nhiwatch first saw the credential (RFC 3339): its age counts from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_in_use: Option<u64>,
    /// The age is a lower bound: the key may have been issued long before nhiwatch saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_is_lower_bound: Option<bool>,
    /// NHI-092: this node's fingerprint key id and the fleet's (names of the keys, from an
    /// HMAC of a public label, never the keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_key_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The first occurrence, emitted at once.
    Opened,
    /// The dedup window of a finding that repeated closed: `count` occurrences in all.
    Summary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: String,
    /// First occurrence.
    #[serde(with = "rfc3339_ns")]
    pub time: i64,
    #[serde(with = "rfc3339_ns")]
    pub last_seen: i64,
    pub rule: RuleRef,
    pub severity: Severity,
    pub summary: String,
    pub identity: Arc<WorkloadIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractRef>,
    pub evidence: Evidence,
    pub count: u64,
    pub phase: Phase,
    pub dedup_key: String,
}

/// A candidate finding before deduplication (built only for the first occurrence in a window).
pub struct Candidate {
    pub rule: Rule,
    pub summary: String,
    pub contract: Option<ContractRef>,
    pub evidence: Evidence,
}

/// Boxed: a finding is ≈ 750 B inline, and the table keeps room for up to twice its entries
/// (`max_open_findings`, 65,536 by default): inline, the empty slots alone would cost ≈ 50 MiB.
struct Open {
    finding: Box<Finding>,
    /// Listed in `Deduper::changed` since the last [`Deduper::saved`].
    dirty: bool,
}

/// Keys listed in `Deduper::changed` at most, beyond the capacity: more mean that most open
/// findings changed, and the next save writes them all instead.
const CHANGED_SLACK: usize = 1024;

/// Keeps one open finding per (identity, rule, key) for a window; repeats only count.
pub struct Deduper {
    window_ns: i64,
    capacity: usize,
    /// Keys are already FNV hashes: Fx only spreads them, SipHash would cost for nothing.
    open: HashMap<u64, Open, rustc_hash::FxBuildHasher>,
    /// (closes_at, hash) in arrival order; windows are equal so this is time order too.
    order: VecDeque<(i64, u64)>,
    pub evicted: u64,
    /// Keys opened, counted or closed since the last save to the state database (each open one
    /// also flagged `dirty`), so a save writes what changed, not every open window.
    changed: Vec<u64>,
    /// Too many changes piled up (no save for a long time): the next save replaces them all.
    rewrite: bool,
}

/// What changed in one deduplicator's open windows since its last save.
pub struct DedupChanges<'a> {
    /// Replace every saved window with `open` (`closed` is then empty).
    pub rewrite: bool,
    /// Windows opened or counted since: their findings, with the counts so far.
    pub open: Vec<&'a Finding>,
    /// Dedup keys (as in findings) of the windows closed since.
    pub closed: Vec<String>,
}

impl Deduper {
    pub fn new(window_ns: i64, capacity: usize) -> Deduper {
        Deduper {
            window_ns: window_ns.max(1),
            capacity: capacity.max(1),
            open: HashMap::default(),
            order: VecDeque::new(),
            evicted: 0,
            changed: Vec::new(),
            rewrite: false,
        }
    }

    /// Notes that window `h` opened, counted or closed, for the next save.
    fn touched(&mut self, h: u64) {
        if self.rewrite {
            return;
        }
        if self.changed.len() >= self.capacity.saturating_add(CHANGED_SLACK) {
            // Bounded whether or not anyone saves: the next save writes every window.
            self.changed = Vec::new();
            self.rewrite = true;
            return;
        }
        self.changed.push(h);
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Counts a repeat of the open finding `dedup_key` (from [`dedup_key`]) at `t`. False when
    /// none is open: then the caller builds the finding and calls [`Deduper::open`]. Repeats are
    /// the common case, so their summaries and evidence are never built.
    pub fn repeat(&mut self, t: i64, dedup_key: u64) -> bool {
        match self.open.get_mut(&dedup_key) {
            Some(o) => {
                o.finding.count += 1;
                o.finding.last_seen = o.finding.last_seen.max(t);
                if !o.dirty {
                    o.dirty = true;
                    self.touched(dedup_key);
                }
                true
            }
            None => false,
        }
    }

    /// Opens a finding no window holds yet (see [`Deduper::repeat`]) and pushes it to `out`.
    pub fn open(
        &mut self,
        t: i64,
        identity: &Arc<WorkloadIdentity>,
        dedup_key: u64,
        c: Candidate,
        out: &mut Vec<Finding>,
    ) {
        if self.open.len() >= self.capacity {
            // Close the oldest early rather than grow: its summary still goes out.
            if let Some((_, h)) = self.order.pop_front() {
                if let Some(o) = self.open.remove(&h) {
                    self.evicted += 1;
                    summary(o, out);
                    self.touched(h);
                }
            }
        }
        let finding = Finding {
            kind: "finding".into(),
            time: t,
            last_seen: t,
            rule: RuleRef {
                id: c.rule.id().into(),
                name: c.rule.name().into(),
            },
            severity: c.rule.severity(),
            summary: c.summary,
            identity: identity.clone(),
            contract: c.contract,
            evidence: c.evidence,
            count: 1,
            phase: Phase::Opened,
            dedup_key: format!("{dedup_key:016x}"),
        };
        out.push(finding.clone());
        let closes_at = t.saturating_add(self.window_ns);
        self.open.insert(
            dedup_key,
            Open {
                finding: Box::new(finding),
                dirty: true,
            },
        );
        self.order.push_back((closes_at, dedup_key));
        self.touched(dedup_key);
    }

    /// Records an occurrence of `c` under evidence key `key` at `t`; pushes the finding to `out`
    /// when it is new.
    pub fn raise(
        &mut self,
        t: i64,
        identity: &Arc<WorkloadIdentity>,
        key: &str,
        c: Candidate,
        out: &mut Vec<Finding>,
    ) {
        let h = dedup_key(&identity.id, c.rule, &[key]);
        if !self.repeat(t, h) {
            self.open(t, identity, h, c, out);
        }
    }

    /// Closes the windows that ended by `now`; repeated findings leave a summary.
    pub fn advance(&mut self, now: i64, out: &mut Vec<Finding>) {
        while let Some(&(at, h)) = self.order.front() {
            if at > now {
                break;
            }
            self.order.pop_front();
            if let Some(o) = self.open.remove(&h) {
                summary(o, out);
                self.touched(h);
            }
        }
    }

    /// Closes every window (end of a replay).
    pub fn finish(&mut self, out: &mut Vec<Finding>) {
        self.advance(i64::MAX, out);
    }

    /// What changed since the last [`Deduper::saved`], for the state database.
    pub fn changes(&self) -> DedupChanges<'_> {
        if self.rewrite {
            return DedupChanges {
                rewrite: true,
                open: self
                    .order
                    .iter()
                    .filter_map(|(_, h)| self.open.get(h))
                    .map(|o| &*o.finding)
                    .collect(),
                closed: Vec::new(),
            };
        }
        let mut keys = self.changed.clone();
        keys.sort_unstable();
        keys.dedup();
        let mut c = DedupChanges {
            rewrite: false,
            open: Vec::new(),
            closed: Vec::new(),
        };
        for h in keys {
            match self.open.get(&h) {
                Some(o) => c.open.push(&o.finding),
                None => c.closed.push(format!("{h:016x}")),
            }
        }
        c
    }

    /// The changes [`Deduper::changes`] gave are in the state database.
    pub fn saved(&mut self) {
        if self.rewrite {
            self.open.values_mut().for_each(|o| o.dirty = false);
            self.rewrite = false;
        }
        for h in std::mem::take(&mut self.changed) {
            if let Some(o) = self.open.get_mut(&h) {
                o.dirty = false;
            }
        }
    }

    /// Re-opens windows saved by an earlier run (a restart does not raise their findings again).
    /// Each closes when it would have: one already due closes at the next `advance`, leaving its
    /// summary then. Beyond the capacity the newest are kept.
    pub fn restore(&mut self, mut findings: Vec<Finding>) {
        findings.retain(|f| f.phase == Phase::Opened);
        findings.sort_by_key(|f| f.time);
        let keep = self.capacity.saturating_sub(self.open.len());
        let skip = findings.len().saturating_sub(keep);
        // What is not restored must not stay saved either: the next save replaces everything.
        self.rewrite |= skip > 0;
        for f in findings.into_iter().skip(skip) {
            let Ok(h) = u64::from_str_radix(&f.dedup_key, 16) else {
                self.rewrite = true;
                continue;
            };
            if self.open.contains_key(&h) {
                continue;
            }
            let closes_at = f.time.saturating_add(self.window_ns);
            self.open.insert(
                h,
                Open {
                    finding: Box::new(f),
                    dirty: false,
                },
            );
            // Restored before anything new is opened, in time order: `order` stays sorted.
            self.order.push_back((closes_at, h));
        }
    }
}

fn summary(o: Open, out: &mut Vec<Finding>) {
    if o.finding.count > 1 {
        let mut f = *o.finding;
        f.phase = Phase::Summary;
        out.push(f);
    }
}

/// Stable across runs and hosts (FNV-1a, not the std hasher's random seed), so SIEMs can drop repeats.
/// The evidence key is the concatenation of `key`'s parts: FNV runs over bytes, so the parts need
/// not be joined into a string first.
pub fn dedup_key(identity: &str, rule: Rule, key: &[&str]) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    identity.hash(&mut h);
    rule.id().hash(&mut h);
    // As `str::hash` does for one string: its bytes, then 0xff.
    for part in key {
        h.write(part.as_bytes());
    }
    h.write_u8(0xff);
    h.finish()
}

/// Counts by rule for metrics and reports.
pub fn count_by_rule(findings: &[Finding]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for f in findings {
        *m.entry(f.rule.id.clone()).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKind;

    fn ident(id: &str) -> Arc<WorkloadIdentity> {
        Arc::new(WorkloadIdentity {
            id: id.into(),
            kind: IdentityKind::Unix,
            namespace: None,
            service_account: None,
            pod: None,
            pod_uid: None,
            container: None,
            container_id: None,
            image: None,
            owner: None,
            unit: None,
            uid: Some(1),
            user: None,
            exe: None,
            node: "n".into(),
        })
    }

    fn cand() -> Candidate {
        Candidate {
            rule: Rule::UndeclaredDestination,
            summary: "s".into(),
            contract: None,
            evidence: Evidence::default(),
        }
    }

    #[test]
    fn catalogue_is_consistent() {
        let mut ids: Vec<_> = Rule::ALL.iter().map(|r| r.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), Rule::ALL.len());
        for r in Rule::ALL {
            assert_eq!(Rule::from_id(r.id()), Some(*r));
        }
    }

    /// The README's table of rules is the catalogue: same ids, names and severities.
    #[test]
    fn readme_lists_the_catalogue() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for r in Rule::ALL {
            let row = format!("| {} {} | ", r.id(), r.name());
            let line = readme
                .lines()
                .find(|l| l.starts_with(&row))
                .unwrap_or_else(|| panic!("README.md has no row `{row}`"));
            let severity = line[row.len()..].split(" |").next().unwrap_or("");
            // NHI-090 takes the severity of the alerts it held back.
            assert!(
                severity == r.severity().name() || *r == Rule::AlertsRateLimited,
                "{line}"
            );
        }
    }

    #[test]
    fn repeats_count_and_summarise_once() {
        let a = ident("spiffe://x/a");
        let mut d = Deduper::new(10, 100);
        let mut out = Vec::new();
        for t in 0..5 {
            d.raise(t, &a, "k", cand(), &mut out);
        }
        d.raise(3, &a, "other", cand(), &mut out);
        d.raise(3, &ident("spiffe://x/b"), "k", cand(), &mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|f| f.phase == Phase::Opened && f.count == 1));
        assert_ne!(out[0].dedup_key, out[1].dedup_key);
        assert_ne!(out[0].dedup_key, out[2].dedup_key);
        out.clear();
        d.advance(9, &mut out);
        assert!(out.is_empty());
        d.advance(10, &mut out);
        assert_eq!(out.len(), 1, "only the repeated one summarises");
        assert_eq!((out[0].count, out[0].last_seen), (5, 4));
        assert_eq!(out[0].phase, Phase::Summary);
        // A new window opens a new finding with the same key.
        out.clear();
        d.raise(20, &a, "k", cand(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].dedup_key,
            format!(
                "{:016x}",
                dedup_key("spiffe://x/a", Rule::UndeclaredDestination, &["k"])
            )
        );
    }

    #[test]
    fn bounded() {
        let a = ident("spiffe://x/a");
        let mut d = Deduper::new(1_000, 4);
        let mut out = Vec::new();
        for i in 0..10 {
            d.raise(i, &a, &i.to_string(), cand(), &mut out);
        }
        assert_eq!(d.len(), 4);
        assert_eq!(d.evicted, 6);
    }
}
