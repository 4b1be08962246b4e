//! The detector families: each takes one observation as the engine classified it (`Seen`), the identity's state (`Subject`) and the shared context (`Cx`), and gives candidate findings to the engine's deduplication; one file per family, one signature for all.

// To add a rule: a row in the catalogue (`finding::Rule`, naming its family) and its check in
// that family's file. To add a family: its file here, a `Family` variant and a row in
// `DETECTORS`.

pub(super) mod access;
pub(super) mod combination;
pub(super) mod credentials;
pub(super) mod governance;
pub(super) mod secrets;
pub mod volume;

use std::sync::Arc;

use super::{
    compiled::{Compiled, CompiledContract, DsId},
    engine::{Caches, Others},
    finding::{self, Candidate, ContractRef, Deduper, Evidence, Family, Finding, Rule},
    hot::Hot,
    sightings::{Sighting, Sightings},
    state::IdentityRecord,
    DetectConfig, FxStd,
};
use crate::{
    contracts::Classification,
    events::observation::{ApiCallSeen, CredentialSeen},
    identity::WorkloadIdentity,
};

/// The one signature of every family's detector.
pub(super) type Detect = fn(&mut Cx<'_>, &mut Subject<'_>, &Seen<'_>);

/// Every family, in the order they judge an observation; the order of the findings one
/// observation raises follows it.
pub(super) const DETECTORS: [(Family, Detect); 6] = [
    (Family::Governance, governance::detect),
    (Family::Credentials, credentials::detect),
    (Family::Access, access::detect),
    (Family::Secrets, secrets::detect),
    (Family::Combination, combination::detect),
    (Family::Volume, volume::detect),
];

/// Judges one observation with every family. Each family's `detect` only checks whether the
/// observation concerns it and is inlined here, so the families cost no call where they have
/// nothing to judge.
#[inline(always)]
pub(super) fn run(cx: &mut Cx<'_>, subject: &mut Subject<'_>, seen: &Seen<'_>) {
    for (family, detect) in DETECTORS {
        cx.family = family;
        detect(cx, subject, seen);
    }
}

/// One observation as the engine classified it. At most one of `file`, `destination` and `call`
/// is set.
#[derive(Default)]
pub(super) struct Seen<'o> {
    /// A file opened (successfully).
    pub file: Option<FileRead<'o>>,
    /// A host reached outside any API call to a data source: a named connection, or an API call
    /// no data source claims.
    pub destination: Option<&'o str>,
    /// An API call to a data source.
    pub call: Option<Call<'o>>,
    /// Credentials presented with an API call.
    pub credentials: &'o [CredentialSeen],
    /// Bit `i`: other identities presented credential `i` too (bit 63 stands for all from the
    /// 63rd on), so that the common unshared credential costs no second lookup.
    pub shared: u64,
    /// The API call the credentials came with (classified or not).
    pub request: Option<&'o ApiCallSeen>,
    /// Bit `i`: credential `i` is static and was first seen longer ago than its maximum key age
    /// (bit 63 for all from the 63rd on).
    pub overdue: u64,
}

impl Seen<'_> {
    /// Whether other identities may have presented credential `i` too.
    pub fn shared(&self, i: usize) -> bool {
        self.shared & (1 << i.min(63)) != 0
    }

    /// Whether credential `i` is static and in use beyond its maximum age.
    pub fn overdue(&self, i: usize) -> bool {
        self.overdue & (1 << i.min(63)) != 0
    }
}

pub(super) struct FileRead<'o> {
    pub path: &'o str,
    pub exe: Option<&'o str>,
    pub ds: Option<DsId>,
    /// The index of the contract's `secrets` grant covering the file.
    pub grant: Option<usize>,
}

pub(super) struct Call<'o> {
    pub call: &'o ApiCallSeen,
    /// Lowercase, no port.
    pub host: &'o str,
    pub ds: DsId,
    /// `?` when the call had none.
    pub method: &'o str,
}

/// The identity being judged: its contract and what the families remember about it.
pub(super) struct Subject<'a> {
    /// Index into the compiled contracts; None: ungoverned.
    pub contract: Option<usize>,
    pub record: &'a mut IdentityRecord,
    /// Data sources touched within the combination window: (data source, last touch).
    pub window: &'a mut Vec<(DsId, i64)>,
    pub hot: &'a mut Hot,
    /// Its NHI-001 dedup key (it depends on the id only).
    pub ungoverned_key: &'a mut Option<u64>,
    /// It presented a credential, opened a watched file or reached a data source, now or before.
    pub significant: bool,
}

/// What every detector shares while one observation is judged: the rules, the settings, the
/// engine's state it may read, and the deduplication its findings go through.
pub(super) struct Cx<'a> {
    pub rules: &'a Compiled,
    pub cfg: &'a DetectConfig,
    pub dedup: &'a mut Deduper,
    pub identity_dedup: &'a mut Deduper,
    pub creds: &'a Sightings,
    pub ids: &'a FxStd<Arc<str>, u32>,
    pub others: Others<'a>,
    pub caches: &'a mut Caches,
    pub out: &'a mut Vec<Finding>,
    /// The observation's time, ns and s since the epoch.
    pub t: i64,
    pub secs: i64,
    pub identity: &'a Arc<WorkloadIdentity>,
    /// The family judging, so that a rule filed under another family is caught in tests.
    pub family: Family,
}

impl<'a> Cx<'a> {
    fn contract(&self, c: Option<usize>) -> Option<&'a CompiledContract> {
        c.and_then(|i| self.rules.contracts.get(i))
    }

    fn reference(&self, c: Option<usize>) -> Option<ContractRef> {
        self.contract(c).map(|c| c.reference.clone())
    }

    fn who(&self) -> &'a str {
        &self.identity.id
    }

    fn check_family(&self, rule: Rule) {
        debug_assert_eq!(
            rule.family(),
            self.family,
            "{rule:?} is raised by another family than the catalogue says"
        );
    }

    /// Counts a repeat of (identity, `rule`, evidence key) if its window is open; otherwise
    /// returns what `open` needs. The key is given in parts so repeats build no string.
    fn fresh(&mut self, rule: Rule, key: &[&str]) -> Option<(Rule, u64)> {
        self.check_family(rule);
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

    /// `fresh` for findings about the identity itself, deduplicated per `ungoverned_window`;
    /// `h` is the finding's dedup key.
    fn identity_fresh(&mut self, rule: Rule, h: u64) -> bool {
        self.check_family(rule);
        !self.identity_dedup.repeat(self.t, h)
    }

    /// Opens a finding about the identity itself that `identity_fresh` found new.
    fn identity_open(&mut self, h: u64, c: Candidate) {
        self.identity_dedup
            .open(self.t, self.identity, h, c, self.out);
    }

    /// Whether contract number `i` (`c`) allows reaching `host`.
    fn host_allowed(&mut self, i: usize, c: &CompiledContract, host: &str) -> bool {
        self.caches.host_allowed(self.rules, i, c, host)
    }

    /// Which identities presented the credential `fingerprint` (this one included).
    fn sightings(&self, fingerprint: &str) -> Option<&'a Sighting> {
        self.creds.get(fingerprint)
    }

    /// The contract governing another identity, by its id.
    fn contract_of(&self, id: &str) -> Option<&'a CompiledContract> {
        let slot = *self.ids.get(id)?;
        self.contract(self.others.get(slot)?.contract)
    }

    /// Whether a data source holds credentials (files of it are secrets, not data).
    fn holds_credentials(&self, ds: DsId) -> bool {
        self.rules.classification(ds) == Some(Classification::Credentials)
    }
}

fn class_name(c: Classification) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each family of the catalogue (but the alert router's) has exactly one detector, and each
    /// detector a rule.
    #[test]
    fn every_family_has_one_detector() {
        for r in Rule::ALL {
            let n = DETECTORS.iter().filter(|(f, _)| *f == r.family()).count();
            let want = usize::from(r.family() != Family::Alerts);
            assert_eq!(n, want, "{r:?}");
        }
        for (f, _) in DETECTORS {
            assert!(Rule::ALL.iter().any(|r| r.family() == f), "{f:?}");
        }
    }
}
