//! A `RuleSet` compiled for the hot path: data sources by index, host/path/file classification, and each contract's grants as lookups.

use std::collections::HashMap;

/// Small-key maps on the hot path: SipHash's DoS resistance buys nothing for rule-defined keys.
type Fx<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

use globset::{GlobMatcher, GlobSet, GlobSetBuilder};

use super::finding::ContractRef;
use crate::{
    contracts::{
        AccessContract, Classification, CredentialKind, Date, Matcher, Method, RuleSet, Sharing,
        Subject,
    },
    identity::{
        selectors::{Attributes, Selector},
        WorkloadIdentity,
    },
};

pub type DsId = u32;

pub struct Compiled {
    pub set: RuleSet,
    pub contracts: Vec<CompiledContract>,
    http: Vec<HttpRule>,
    /// Exact (glob-free) hosts → indices into `http`, so most calls never run a host glob.
    exact_hosts: Fx<String, Vec<usize>>,
    wild_hosts: Vec<usize>,
    files: GlobSet,
    file_ds: Vec<DsId>,
    by_identity: Fx<String, usize>,
    /// Selector contracts that name a namespace, by that namespace, and the others (both in file
    /// order): a new identity is tested against its namespace's contracts only, not all of them.
    by_namespace: Fx<String, Vec<usize>>,
    any_namespace: Vec<usize>,
    /// Per data source, the token audiences it declares (`audiences:`).
    audiences: Vec<Vec<String>>,
}

struct HttpRule {
    ds: DsId,
    wild: bool,
    /// Set for wildcard hosts; exact hosts are found through `exact_hosts`.
    host: Option<GlobMatcher>,
    paths: Vec<GlobMatcher>,
}

pub struct CompiledContract {
    pub reference: ContractRef,
    pub allowed: Vec<bool>,
    /// Each allowed combination as a sorted list of data sources.
    pub combinations: Vec<Vec<DsId>>,
    /// Data source → allowed methods (absent: any method).
    pub methods: Fx<DsId, Vec<Method>>,
    pub destinations: GlobSet,
    pub secrets: Vec<(GlobMatcher, Vec<String>)>,
    pub kinds: Vec<&'static str>,
    pub max_ttl_seconds: Option<i64>,
    pub shared_allowed: bool,
    pub require_audience: bool,
    /// `credentials.maxKeyAge` in seconds; None: the detectors' default.
    pub max_key_age: Option<i64>,
    /// Data source → the scope globs its tokens may carry there (absent: not judged).
    pub scopes: Fx<DsId, (GlobSet, Vec<String>)>,
    pub limits: Fx<DsId, (Option<u64>, Option<u64>)>,
    /// The first instant the contract no longer holds (end of its `expires` day, UTC), ns.
    pub expires_at: Option<i64>,
    pub expires: Option<Date>,
    pub break_glass: bool,
    pub ownerless: bool,
}

impl Compiled {
    pub fn new(set: RuleSet) -> Compiled {
        let index: HashMap<&str, DsId> = set
            .data_sources
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.as_str(), i as DsId))
            .collect();
        let mut http = Vec::new();
        let mut exact_hosts: Fx<String, Vec<usize>> = Fx::default();
        let mut wild_hosts = Vec::new();
        let mut files = GlobSetBuilder::new();
        let mut file_ds = Vec::new();
        for (i, d) in set.data_sources.iter().enumerate() {
            for m in &d.matchers {
                match m {
                    Matcher::Http {
                        host,
                        host_glob,
                        paths,
                    } => {
                        let at = http.len();
                        let wild = host.contains(['*', '?', '[', '{']);
                        http.push(HttpRule {
                            ds: i as DsId,
                            wild,
                            host: host_glob.clone(),
                            paths: paths.clone(),
                        });
                        if wild {
                            wild_hosts.push(at);
                        } else {
                            exact_hosts.entry(host.clone()).or_default().push(at);
                        }
                    }
                    Matcher::File { glob } => {
                        files.add(glob.glob().clone());
                        file_ds.push(i as DsId);
                    }
                }
            }
        }
        let contracts: Vec<CompiledContract> = set
            .contracts
            .iter()
            .map(|c| compile_contract(c, &index, set.data_sources.len()))
            .collect();
        let mut by_identity = Fx::default();
        let mut by_namespace: Fx<String, Vec<usize>> = Fx::default();
        let mut any_namespace = Vec::new();
        for (i, c) in set.contracts.iter().enumerate() {
            match &c.subject {
                Subject::Identity(id) => {
                    by_identity.entry(id.clone()).or_insert(i);
                }
                Subject::Selectors(r) => {
                    let ns = r.selectors.iter().find_map(|s| match s {
                        Selector::K8sNamespace(ns) => Some(ns),
                        _ => None,
                    });
                    match ns {
                        Some(ns) => by_namespace.entry(ns.clone()).or_default().push(i),
                        None => any_namespace.push(i),
                    }
                }
            }
        }
        Compiled {
            contracts,
            http,
            exact_hosts,
            wild_hosts,
            files: files.build().unwrap_or_else(|_| GlobSet::empty()),
            file_ds,
            by_identity,
            by_namespace,
            any_namespace,
            audiences: set
                .data_sources
                .iter()
                .map(|d| d.audiences.clone())
                .collect(),
            set,
        }
    }

    /// The token audiences data source `ds` declares.
    pub fn audiences(&self, ds: DsId) -> &[String] {
        self.audiences.get(ds as usize).map_or(&[], Vec::as_slice)
    }

    pub fn ds_name(&self, ds: DsId) -> &str {
        self.set
            .data_sources
            .get(ds as usize)
            .map_or("?", |d| d.name.as_str())
    }

    pub fn classification(&self, ds: DsId) -> Option<Classification> {
        self.set
            .data_sources
            .get(ds as usize)
            .map(|d| d.classification)
    }

    /// The contract governing an identity: its SPIFFE ID named exactly, else the first contract
    /// (in file order) whose selectors all match.
    pub fn contract_for(
        &self,
        id: &WorkloadIdentity,
        labels: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Option<usize> {
        if let Some(&i) = self.by_identity.get(&id.id) {
            return Some(i);
        }
        let first = |candidates: &[usize]| {
            candidates.iter().copied().find(|&i| {
                matches!(&self.set.contracts[i].subject, Subject::Selectors(r) if r.matches(&Attributes { id, labels }))
            })
        };
        let in_namespace = id
            .namespace
            .as_deref()
            .and_then(|ns| self.by_namespace.get(ns))
            .and_then(|c| first(c));
        // A contract naming another namespace cannot match; of the rest, file order decides.
        match (in_namespace, first(&self.any_namespace)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The data source an HTTP request belongs to (first match in rules order).
    pub fn classify_http(&self, host: &str, path: &str) -> Option<DsId> {
        let path = if path.is_empty() { "/" } else { path };
        let exact = self.exact_hosts.get(host).into_iter().flatten();
        let mut best: Option<usize> = None;
        for &i in exact.chain(self.wild_hosts.iter()) {
            let r = &self.http[i];
            if best.is_some_and(|b| b < i)
                || (r.wild && !r.host.as_ref().is_some_and(|g| g.is_match(host)))
                || !r.paths.iter().any(|p| p.is_match(path))
            {
                continue;
            }
            best = Some(i);
        }
        best.map(|i| self.http[i].ds)
    }

    /// Whether any data source serves this host (on any path).
    pub fn host_data_sources<'a>(&'a self, host: &'a str) -> impl Iterator<Item = DsId> + 'a {
        let exact = self.exact_hosts.get(host).into_iter().flatten();
        exact
            .chain(
                self.wild_hosts.iter().filter(move |&&i| {
                    self.http[i].host.as_ref().is_some_and(|g| g.is_match(host))
                }),
            )
            .map(|&i| self.http[i].ds)
    }

    pub fn classify_file(&self, path: &str) -> Option<DsId> {
        self.files
            .matches(path)
            .into_iter()
            .min()
            .and_then(|i| self.file_ds.get(i).copied())
    }
}

impl CompiledContract {
    /// A host is allowed when `allow.destinations` names it or an allowed data source serves it.
    pub fn host_allowed(&self, compiled: &Compiled, host: &str) -> bool {
        self.destinations.is_match(host)
            || compiled
                .host_data_sources(host)
                .any(|d| self.allowed.get(d as usize).copied().unwrap_or(false))
    }

    pub fn is_allowed(&self, ds: DsId) -> bool {
        self.allowed.get(ds as usize).copied().unwrap_or(false)
    }
}

fn compile_contract(c: &AccessContract, index: &HashMap<&str, DsId>, n: usize) -> CompiledContract {
    let id = |name: &String| index.get(name.as_str()).copied();
    let mut allowed = vec![false; n];
    for d in c.allow.data_sources.iter().filter_map(id) {
        allowed[d as usize] = true;
    }
    let combinations = c
        .allow
        .combinations
        .iter()
        .map(|combo| {
            let mut v: Vec<DsId> = combo.iter().filter_map(id).collect();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    let mut methods: Fx<DsId, Vec<Method>> = Fx::default();
    for e in &c.allow.endpoints {
        if let Some(d) = id(&e.data_source) {
            methods
                .entry(d)
                .or_default()
                .extend(e.methods.iter().copied());
        }
    }
    let mut dest = GlobSetBuilder::new();
    for g in &c.allow.destinations {
        dest.add(g.glob().clone());
    }
    let mut scopes: Fx<DsId, (GlobSetBuilder, Vec<String>)> = Fx::default();
    for g in &c.allow.scopes {
        if let Some(d) = id(&g.data_source) {
            let e = scopes
                .entry(d)
                .or_insert_with(|| (GlobSetBuilder::new(), Vec::new()));
            for m in &g.globs {
                e.0.add(m.glob().clone());
            }
            e.1.extend(g.scopes.iter().cloned());
        }
    }
    let mut limits = Fx::default();
    for l in &c.limits {
        if let Some(d) = id(&l.data_source) {
            limits.insert(d, (l.requests_per_minute, l.bytes_per_hour));
        }
    }
    CompiledContract {
        reference: ContractRef {
            name: c.name.clone(),
            version: c.version.clone(),
            file: c.origin.file.display().to_string(),
            line: c.origin.line,
            owner: Some(c.owner.clone()).filter(|o| !o.is_empty()),
            purpose: Some(c.purpose.trim().to_owned()).filter(|p| !p.is_empty()),
        },
        allowed,
        combinations,
        methods,
        destinations: dest.build().unwrap_or_else(|_| GlobSet::empty()),
        secrets: c
            .allow
            .secrets
            .iter()
            .map(|s| (s.path.clone(), s.executables.clone()))
            .collect(),
        kinds: c.credentials.kinds.iter().map(|k| kind_name(*k)).collect(),
        max_ttl_seconds: c.credentials.max_token_ttl.map(|d| d.as_secs() as i64),
        shared_allowed: c.credentials.shared == Sharing::Allowed,
        require_audience: c.credentials.require_audience,
        max_key_age: c.credentials.max_key_age.map(|d| d.as_secs() as i64),
        scopes: scopes
            .into_iter()
            .map(|(d, (b, v))| (d, (b.build().unwrap_or_else(|_| GlobSet::empty()), v)))
            .collect(),
        limits,
        expires_at: c
            .expires
            .map(|d| (days_from_civil(d) + 1) * 86_400 * 1_000_000_000),
        expires: c.expires,
        break_glass: c.break_glass,
        ownerless: c.owner.is_empty(),
    }
}

/// The observation-side name of a contract's credential kind.
pub fn kind_name(k: CredentialKind) -> &'static str {
    match k {
        CredentialKind::Jwt => "jwt",
        CredentialKind::Bearer => "bearer",
        CredentialKind::Basic => "basic",
        CredentialKind::ApiKey => "api_key",
        CredentialKind::AwsSigv4 => "aws_sigv4",
    }
}

pub fn method_matches(m: Method, s: &str) -> bool {
    let name = match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
        Method::Options => "OPTIONS",
    };
    name == s
}

/// Days since 1970-01-01 (H. Hinnant's algorithm).
pub fn days_from_civil(d: Date) -> i64 {
    let (y, m, day) = (i64::from(d.year), i64::from(d.month), i64::from(d.day));
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Compiled {
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules"));
        Compiled::new(crate::contracts::load_paths(&[dir]).unwrap())
    }

    #[test]
    fn dates() {
        let d = |year, month, day| Date { year, month, day };
        assert_eq!(days_from_civil(d(1970, 1, 1)), 0);
        assert_eq!(days_from_civil(d(2000, 3, 1)), 11_017);
        assert_eq!(days_from_civil(d(2026, 11, 23)), 20_780);
    }

    #[test]
    fn classification_of_the_shipped_rules() {
        let c = shipped();
        let name = |d: Option<DsId>| d.map(|d| c.ds_name(d).to_owned());
        assert_eq!(
            name(c.classify_http("fhir.ehr.example.org", "/R4/MedicationRequest/{id}")).as_deref(),
            Some("ehr-medications")
        );
        assert_eq!(
            name(c.classify_http("fhir.ehr.example.org", "/R4/Patient")).as_deref(),
            Some("ehr-patients")
        );
        assert_eq!(
            c.classify_http("fhir.ehr.example.org", "/R4/Appointment/{id}"),
            None
        );
        assert_eq!(c.classify_http("example.com", "/R4/Patient"), None);
        assert_eq!(
            name(c.classify_http("bh-notes.internal.example.org", "/anything/{id}")).as_deref(),
            Some("mental-health-records")
        );
        assert_eq!(
            name(c.classify_file("/srv/mental-health/2026/note.txt")).as_deref(),
            Some("mental-health-records")
        );
        assert_eq!(
            name(c.classify_file("/var/run/secrets/kubernetes.io/serviceaccount/token")).as_deref(),
            Some("k8s-sa-token")
        );
        assert_eq!(c.classify_file("/etc/passwd"), None);
    }

    #[test]
    fn contracts_by_id_and_selectors() {
        let c = shipped();
        let mut id = crate::report::fixtures::k8s("clinical-ai", "med-summarizer");
        let name = |i: Option<usize>| i.map(|i| c.contracts[i].reference.name.clone());
        assert_eq!(
            name(c.contract_for(&id, None)).as_deref(),
            Some("med-summarizer")
        );
        id.id = "spiffe://clinic.example/ns/patient-apps/sa/fitness-sync".into();
        id.namespace = Some("patient-apps".into());
        id.service_account = Some("fitness-sync".into());
        assert_eq!(
            name(c.contract_for(&id, None)).as_deref(),
            Some("fitness-sync")
        );
        id.service_account = Some("other".into());
        assert_eq!(c.contract_for(&id, None), None);
        let med =
            &c.contracts[c.by_identity["spiffe://clinic.example/ns/clinical-ai/sa/med-summarizer"]];
        assert!(med.host_allowed(&c, "fhir.ehr.example.org"));
        assert!(med.host_allowed(&c, "kube-dns.kube-system.svc.cluster.local"));
        assert!(!med.host_allowed(&c, "api.openai.com"));
        assert_eq!(med.max_ttl_seconds, Some(3600));
    }

    #[test]
    fn selector_contracts_in_file_order_across_namespaces() {
        let contract = |name: &str, selectors: &str| {
            format!(
                "apiVersion: nhiwatch.dev/v1\nkind: AccessContract\nmetadata: {{name: {name}}}\nspec:\n  selectors: {selectors}\n  owner: o@example.org\n  purpose: test\n---\n"
            )
        };
        let any = contract("any-ns", "[\"k8s:sa:x\"]");
        let ns = contract("in-ns", "[\"k8s:ns:a\", \"k8s:sa:x\"]");
        let other = contract("other-ns", "[\"k8s:ns:b\", \"k8s:sa:x\"]");
        let mut id = crate::report::fixtures::k8s("a", "x");
        for (text, want) in [
            (format!("{other}{any}{ns}"), Some("any-ns")),
            (format!("{other}{ns}{any}"), Some("in-ns")),
            (format!("{other}{ns}"), Some("in-ns")),
        ] {
            let c = Compiled::new(crate::contracts::load_str("t.yaml", &text).unwrap());
            let got = c.contract_for(&id, None);
            assert_eq!(got.map(|i| c.contracts[i].reference.name.as_str()), want);
        }
        id.namespace = Some("c".into());
        let c =
            Compiled::new(crate::contracts::load_str("t.yaml", &format!("{other}{ns}")).unwrap());
        assert_eq!(c.contract_for(&id, None), None);
    }
}
