//! Test records of a hospital's clinical AI workloads, as the detectors would have left them.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::UNIX_EPOCH,
};

use crate::{
    contracts::{load_paths, load_texts, RuleSet},
    detect::state::{CredentialRecord, CredentialUse, IdentityRecord, SecretUsage, Usage},
    identity::{IdentityKind, WorkloadIdentity},
};

pub const DAY: i64 = 86_400;
pub const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const JWT_FP: &str = "hmac-sha256:0123456789abcdef0123456789abcdef";
pub const ANTHROPIC_KEY_FP: &str = "hmac-sha256:fedcba9876543210fedcba9876543210";

pub fn t(rfc3339: &str) -> i64 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn now() -> i64 {
    t("2026-11-23T10:00:00Z")
}

pub fn rules_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules"))
}

pub fn shipped_rules() -> RuleSet {
    load_paths(&[rules_dir()]).unwrap()
}

pub fn data_sources_text() -> String {
    std::fs::read_to_string(rules_dir().join("data-sources.yaml")).unwrap()
}

/// The shipped data sources plus the given documents.
pub fn rules_with(extra: &str) -> RuleSet {
    load_texts(&[
        (rules_dir().join("data-sources.yaml"), data_sources_text()),
        (PathBuf::from("extra.yaml"), extra.to_owned()),
    ])
    .unwrap_or_else(|e| panic!("{e:#?}\n{extra}"))
}

pub fn k8s(ns: &str, sa: &str) -> WorkloadIdentity {
    WorkloadIdentity {
        id: format!("spiffe://clinic.example/ns/{ns}/sa/{sa}"),
        kind: IdentityKind::Kubernetes,
        namespace: Some(ns.into()),
        service_account: Some(sa.into()),
        pod: Some(format!("{sa}-7d9f4c-x2x9q")),
        pod_uid: Some("5f1e6c1a-0000-4000-8000-000000000001".into()),
        container: Some("app".into()),
        container_id: None,
        image: Some(format!("registry.clinic.example/{sa}:1.4.2")),
        owner: Some(format!("Deployment/{sa}")),
        unit: None,
        uid: Some(10001),
        user: None,
        exe: None,
        node: "node-1".into(),
    }
}

pub fn used(first: i64, last: i64, count: u64) -> Usage {
    Usage {
        first_seen: first,
        last_seen: last,
        count,
    }
}

pub fn empty_record(identity: WorkloadIdentity, first: i64, last: i64) -> IdentityRecord {
    IdentityRecord {
        identity,
        contract: None,
        first_seen: first,
        last_seen: last,
        executables: BTreeMap::new(),
        data_sources: BTreeMap::new(),
        methods: BTreeMap::new(),
        secrets: BTreeMap::new(),
        destinations: BTreeMap::new(),
        credentials: BTreeMap::new(),
        peak_requests_per_minute: BTreeMap::new(),
        scopes: BTreeMap::new(),
        pairs: BTreeSet::new(),
        volume: BTreeMap::new(),
        dropped: 0,
    }
}

fn secret(usage: Usage, exes: &[&str]) -> SecretUsage {
    SecretUsage {
        usage,
        executables: exes.iter().map(|s| s.to_string()).collect(),
    }
}

fn cred(
    kind: &str,
    vendor: Option<&str>,
    long_lived: bool,
    ttl: Option<i64>,
    u: Usage,
) -> CredentialUse {
    CredentialUse {
        kind: kind.into(),
        vendor: vendor.map(Into::into),
        long_lived: Some(long_lived),
        max_ttl_seconds: ttl,
        usage: u,
    }
}

/// Governed by `med-summarizer`; has not read patient demographics for 60 days.
pub fn med_summarizer() -> IdentityRecord {
    let (first, now) = (now() - 120 * DAY, now());
    let recent = used(first, now - 3600, 9_000);
    let old = used(first, now - 60 * DAY, 40);
    let mut r = empty_record(k8s("clinical-ai", "med-summarizer"), first, now - 60);
    r.identity.exe = Some("/app/summarizer".into());
    r.contract = Some("med-summarizer".into());
    r.executables.insert("/app/summarizer".into(), recent);
    for ds in ["ehr-medications", "llm-anthropic", "k8s-sa-token"] {
        r.data_sources.insert(ds.into(), recent);
    }
    r.data_sources.insert("ehr-patients".into(), old);
    r.methods.insert("ehr-medications GET".into(), recent);
    r.methods.insert("llm-anthropic POST".into(), recent);
    r.methods.insert("ehr-patients GET".into(), old);
    r.secrets
        .insert(TOKEN.into(), secret(recent, &["/app/summarizer"]));
    r.destinations.insert(
        "otel-collector.observability.svc.cluster.local".into(),
        recent,
    );
    r.credentials
        .insert(JWT_FP.into(), cred("jwt", None, false, Some(3600), recent));
    r.credentials.insert(
        ANTHROPIC_KEY_FP.into(),
        cred("api_key", Some("anthropic"), true, None, recent),
    );
    r.peak_requests_per_minute
        .insert("ehr-medications".into(), 180);
    r.peak_requests_per_minute
        .insert("llm-anthropic".into(), 30);
    r.pairs
        .insert(("ehr-medications".into(), "llm-anthropic".into()));
    r
}

/// A research notebook nobody wrote a contract for: patients and labs into OpenAI.
pub fn cohort_builder() -> IdentityRecord {
    let (first, now) = (now() - 10 * DAY, now());
    let u = used(first, now - 600, 1_200);
    let mut r = empty_record(k8s("research", "cohort-builder"), first, now - 600);
    r.identity.exe = Some("/usr/bin/python3.12".into());
    r.executables.insert("/usr/bin/python3.12".into(), u);
    for ds in [
        "ehr-observations",
        "ehr-patients",
        "llm-openai",
        "k8s-sa-token",
        "genomics-vault",
    ] {
        r.data_sources.insert(ds.into(), u);
    }
    for m in [
        "ehr-observations GET",
        "ehr-patients GET",
        "ehr-patients HEAD",
        "llm-openai POST",
    ] {
        r.methods.insert(m.into(), u);
    }
    r.secrets
        .insert(TOKEN.into(), secret(u, &["/usr/bin/python3.12"]));
    r.destinations.insert("pypi.org".into(), u);
    r.credentials
        .insert(JWT_FP.into(), cred("jwt", None, false, Some(3599), u));
    r.credentials.insert(
        "hmac-sha256:00000000000000000000000000000bea".into(),
        cred("bearer", None, false, None, u),
    );
    r.credentials.insert(
        "hmac-sha256:0000000000000000000000000000a0a1".into(),
        cred("api_key", Some("openai"), true, None, u),
    );
    r.peak_requests_per_minute
        .insert("ehr-observations".into(), 40);
    r.peak_requests_per_minute.insert("ehr-patients".into(), 3);
    r.peak_requests_per_minute.insert("llm-openai".into(), 12);
    r.pairs
        .insert(("ehr-observations".into(), "llm-openai".into()));
    r.pairs.insert(("ehr-patients".into(), "llm-openai".into()));
    r
}

/// The nightly claims batch on the billing host (a systemd identity, governed by selectors).
pub fn claims_batch() -> IdentityRecord {
    let id = WorkloadIdentity {
        id: "spiffe://clinic.example/host/billing-01/systemd/claims-batch".into(),
        kind: IdentityKind::Systemd,
        namespace: None,
        service_account: None,
        pod: None,
        pod_uid: None,
        container: None,
        container_id: None,
        image: None,
        owner: None,
        unit: Some("claims-batch.service".into()),
        uid: Some(1017),
        user: Some("billing".into()),
        exe: Some("/opt/claims/bin/batch".into()),
        node: "billing-01".into(),
    };
    let (first, last) = (now() - 30 * DAY, now() - 8 * 3600);
    let u = used(first, last, 300);
    let mut r = empty_record(id, first, last);
    r.contract = Some("claims-batch".into());
    r.data_sources.insert("payer-claims".into(), u);
    r.methods.insert("payer-claims POST".into(), u);
    r.credentials.insert(
        "hmac-sha256:b111111111111111111111111111111b".into(),
        cred("basic", None, true, None, u),
    );
    r
}

/// The Anthropic key, seen with med-summarizer and with a pod that should not have it.
pub fn shared_anthropic_key() -> CredentialRecord {
    CredentialRecord {
        fingerprint: ANTHROPIC_KEY_FP.into(),
        kind: "api_key".into(),
        vendor: Some("anthropic".into()),
        long_lived: Some(true),
        first_seen: now() - 120 * DAY,
        last_seen: now() - 3600,
        identities: [
            (
                "spiffe://clinic.example/ns/clinical-ai/sa/med-summarizer".to_string(),
                now() - 3600,
            ),
            (
                "spiffe://clinic.example/ns/patient-apps/sa/fitness-sync".to_string(),
                now() - 7200,
            ),
        ]
        .into(),
    }
}
