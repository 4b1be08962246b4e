//! Tests of the state database on real files in temporary directories.

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt};

use super::*;
use crate::{
    detect::state::{CredentialUse, Usage},
    identity::{IdentityKind, WorkloadIdentity},
};

fn identity(name: &str, last_seen: i64) -> IdentityRecord {
    let id = WorkloadIdentity {
        id: format!("spiffe://clinic.example/ns/clinical-ai/sa/{name}"),
        kind: IdentityKind::Kubernetes,
        namespace: Some("clinical-ai".into()),
        service_account: Some(name.into()),
        pod: Some(format!("{name}-7d9f")),
        pod_uid: None,
        container: None,
        container_id: None,
        image: None,
        owner: None,
        unit: None,
        uid: None,
        user: None,
        exe: Some("/app/summarizer".into()),
        node: "node-1".into(),
    };
    IdentityRecord {
        identity: id,
        contract: Some("med-summarizer".into()),
        first_seen: 1_795_000_000,
        last_seen,
        executables: [("/app/summarizer".into(), Usage::new(last_seen))].into(),
        data_sources: [("ehr-medications".into(), Usage::new(last_seen))].into(),
        methods: [("ehr-medications GET".into(), Usage::new(last_seen))].into(),
        secrets: BTreeMap::new(),
        destinations: BTreeMap::new(),
        credentials: [(
            "hmac-sha256:0123456789abcdef".into(),
            CredentialUse {
                kind: "jwt".into(),
                vendor: None,
                long_lived: Some(false),
                max_ttl_seconds: Some(3600),
                usage: Usage::new(last_seen),
            },
        )]
        .into(),
        peak_requests_per_minute: [("ehr-medications".into(), 42)].into(),
        scopes: [("ehr-patients patient/*.read".into(), Usage::new(5))].into(),
        pairs: [("ehr-medications".into(), "llm-anthropic".into())].into(),
        volume: BTreeMap::new(),
        dropped: 0,
    }
}

fn credential(fp: &str, last_seen: i64) -> CredentialRecord {
    CredentialRecord {
        fingerprint: format!("hmac-sha256:{fp}"),
        kind: "api_key".into(),
        vendor: Some("anthropic".into()),
        long_lived: Some(true),
        first_seen: 1_795_000_000,
        last_seen,
        identities: [(
            "spiffe://clinic.example/ns/clinical-ai/sa/med-summarizer".into(),
            last_seen,
        )]
        .into(),
    }
}

fn ids(l: &Loaded<IdentityRecord>) -> Vec<&str> {
    l.items.iter().map(|r| r.identity.id.as_str()).collect()
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    let (a, b) = (identity("b-second", 20), identity("a-first", 10));
    let (c1, c2) = (credential("aa", 5), credential("bb", 6));
    s.save(&[&a, &b], &[&c1, &c2], &[], &[]).unwrap();
    let l = s.load_identities().unwrap();
    assert_eq!(l.skipped, 0);
    assert_eq!(l.items, vec![b, a]);
    let c = s.load_credentials().unwrap();
    assert_eq!((c.items, c.skipped), (vec![c1, c2], 0));
}

#[test]
fn reopen_after_drop_upsert_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("nested/state");
    {
        let mut s = Store::open(&state).unwrap();
        let (a, b) = (identity("a", 10), identity("b", 11));
        s.save(&[&a, &b], &[&credential("aa", 1)], &[], &[])
            .unwrap();
        s.set_meta("rules_version", "sha256:1a2b").unwrap();
    }
    let mut s = Store::open(&state).unwrap();
    assert_eq!(
        s.meta("rules_version").unwrap().as_deref(),
        Some("sha256:1a2b")
    );
    assert_eq!(s.meta("absent").unwrap(), None);
    let mut a = identity("a", 99);
    a.contract = None;
    s.save(
        &[&a],
        &[],
        &["spiffe://clinic.example/ns/clinical-ai/sa/b"],
        &["hmac-sha256:aa"],
    )
    .unwrap();
    drop(s);
    let s = Store::open(&state).unwrap();
    let l = s.load_identities().unwrap();
    assert_eq!(l.items, vec![a]);
    assert!(s.load_credentials().unwrap().items.is_empty());
}

#[test]
fn read_only_sees_the_writers_commits_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Store::open(dir.path()).unwrap();
    w.save(&[&identity("a", 1)], &[], &[], &[]).unwrap();
    let mut r = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(ids(&r.load_identities().unwrap()).len(), 1);
    // The writer keeps going while the reader is open (WAL).
    w.save(&[&identity("b", 2)], &[], &[], &[]).unwrap();
    assert_eq!(
        ids(&r.load_identities().unwrap()),
        [
            "spiffe://clinic.example/ns/clinical-ai/sa/a",
            "spiffe://clinic.example/ns/clinical-ai/sa/b"
        ]
    );
    let err = r.save(&[&identity("c", 3)], &[], &[], &[]).unwrap_err();
    assert!(matches!(err, StoreError::Sqlite { .. }), "{err}");
    assert!(r.prune(0, 0).is_err());
    assert_eq!(ids(&w.load_identities().unwrap()).len(), 2);
    // After the writer closed (its WAL checkpointed and removed) a new reader still opens.
    drop((w, r));
    let r = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(ids(&r.load_identities().unwrap()).len(), 2);
}

#[test]
fn read_only_without_a_database_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_read_only(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Missing { .. }));
    assert!(
        msg.starts_with("no state database at ")
            && msg.contains("nhiwatch.db")
            && msg.ends_with("has the daemon run with this state_dir?"),
        "{msg}"
    );
    // Nothing was created by looking.
    assert!(!dir.path().join(FILE_NAME).exists());

    std::fs::write(dir.path().join(FILE_NAME), b"").unwrap();
    let err = Store::open_read_only(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Uninitialised { .. }), "{err}");
}

#[test]
fn corrupt_rows_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    s.save(&[&identity("good", 5)], &[&credential("ok", 5)], &[], &[])
        .unwrap();
    {
        let raw = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        raw.execute(
            "INSERT INTO identities VALUES ('spiffe://x/bad-json', 1, '{\"identity\":')",
            [],
        )
        .unwrap();
        raw.execute(
            "INSERT INTO identities VALUES ('spiffe://x/wrong-shape', 1, '{\"a\":1}')",
            [],
        )
        .unwrap();
        raw.execute(
            "INSERT INTO identities VALUES ('spiffe://x/blob', 1, x'00ff')",
            [],
        )
        .unwrap();
        raw.execute("INSERT INTO credentials VALUES ('fp', 1, 'null')", [])
            .unwrap();
    }
    let l = s.load_identities().unwrap();
    assert_eq!(ids(&l), ["spiffe://clinic.example/ns/clinical-ai/sa/good"]);
    assert_eq!(l.skipped, 3);
    let c = s.load_credentials().unwrap();
    assert_eq!((c.items.len(), c.skipped), (1, 1));
}

#[test]
fn prune_keeps_the_most_recently_seen() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    // Saved in an order unrelated to last_seen, so the result depends on last_seen alone.
    let recs: Vec<IdentityRecord> = [("c", 30), ("e", 50), ("a", 10), ("d", 40), ("b", 20)]
        .into_iter()
        .map(|(n, t)| identity(n, t))
        .collect();
    let creds: Vec<CredentialRecord> = [("x", 3), ("y", 1), ("z", 2)]
        .into_iter()
        .map(|(f, t)| credential(f, t))
        .collect();
    s.save(
        &recs.iter().collect::<Vec<_>>(),
        &creds.iter().collect::<Vec<_>>(),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(s.prune(2, 1).unwrap(), (3, 2));
    let mut left: Vec<i64> = s
        .load_identities()
        .unwrap()
        .items
        .iter()
        .map(|r| r.last_seen)
        .collect();
    left.sort();
    assert_eq!(left, [40, 50]);
    let c = s.load_credentials().unwrap().items;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].fingerprint, "hmac-sha256:x");
    assert_eq!(s.prune(10, 10).unwrap(), (0, 0));
    assert_eq!(s.prune(0, 0).unwrap(), (2, 1));
}

#[test]
fn files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut s = Store::open(&state).unwrap();
    s.save(&[&identity("a", 1)], &[], &[], &[]).unwrap();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join(FILE_NAME)), 0o600);
    assert_eq!(mode(&state.join("nhiwatch.db-wal")), 0o600);
    drop(s);
    // A file loosened by hand is tightened again on open.
    std::fs::set_permissions(state.join(FILE_NAME), Permissions::from_mode(0o644)).unwrap();
    let _s = Store::open(&state).unwrap();
    assert_eq!(mode(&state.join(FILE_NAME)), 0o600);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    Connection::open(dir.path().join(FILE_NAME))
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    for err in [
        Store::open(dir.path()).unwrap_err(),
        Store::open_read_only(dir.path()).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                StoreError::NewerVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("schema version 2, newer than"), "{msg}");
    }
}

#[test]
fn a_file_that_is_not_a_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(FILE_NAME),
        b"this is not sqlite, just text....",
    )
    .unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Sqlite { .. }), "{err}");
}

/// Open findings saved by one run come back in the next: a repeat is not raised again, the
/// window closes when it is due with the counts of both runs, and closed windows leave the
/// database.
#[test]
fn open_findings_survive_a_restart() {
    use crate::detect::finding::{Candidate, Deduper, Evidence, Phase, Rule};
    let dir = tempfile::tempdir().unwrap();
    let who = std::sync::Arc::new(identity("summarizer", 0).identity);
    let cand = || Candidate {
        rule: Rule::UndeclaredDestination,
        summary: "s".into(),
        contract: None,
        evidence: Evidence::default(),
    };
    let s = 1_000_000_000i64;
    let mut out = Vec::new();
    let mut d = Deduper::new(60 * s, 100);
    let idd = Deduper::new(60 * s, 100);
    d.raise(s, &who, "a", cand(), &mut out);
    d.raise(2 * s, &who, "a", cand(), &mut out);
    d.raise(3 * s, &who, "b", cand(), &mut out);
    assert_eq!(out.len(), 2);
    {
        let mut store = Store::open(dir.path()).unwrap();
        store.save_open(&d.changes(), &idd.changes()).unwrap();
        d.saved();
        // Nothing changed since: nothing to write.
        let c = d.changes();
        assert!(c.open.is_empty() && c.closed.is_empty() && !c.rewrite);
    }
    let store = Store::open(dir.path()).unwrap();
    let (open, identity_open) = store.load_open().unwrap();
    assert_eq!((open.items.len(), open.skipped), (2, 0));
    assert!(identity_open.items.is_empty());
    let mut d2 = Deduper::new(60 * s, 100);
    d2.restore(open.items);
    out.clear();
    d2.raise(30 * s, &who, "a", cand(), &mut out);
    assert!(out.is_empty(), "a restored window is not raised again");
    d2.advance(60 * s, &mut out);
    assert!(out.is_empty(), "not due yet");
    d2.advance(61 * s, &mut out);
    assert_eq!(out.len(), 1, "only the repeated one summarises: {out:#?}");
    assert_eq!((out[0].phase, out[0].count), (Phase::Summary, 3));
    d2.advance(63 * s, &mut out);
    let mut store = Store::open(dir.path()).unwrap();
    let c = d2.changes();
    assert_eq!(c.closed.len(), 2, "both windows closed");
    store.save_open(&c, &idd.changes()).unwrap();
    assert!(store.load_open().unwrap().0.items.is_empty());
}
