use std::sync::Arc;

use super::{
    finding::{self, Finding},
    state, DetectConfig, Engine, UngovernedReport, MAX_CREDENTIALS,
};
use crate::{
    contracts::RuleSet,
    events::observation::{Activity, ApiCallSeen, CredentialSeen, Observation},
    identity::WorkloadIdentity,
};

const S: i64 = 1_000_000_000;
const T0: i64 = 1_795_000_000 * S;

fn shipped() -> RuleSet {
    let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules"));
    crate::contracts::load_paths(&[dir]).unwrap()
}

fn k8s(ns: &str, sa: &str) -> Arc<WorkloadIdentity> {
    Arc::new(crate::report::fixtures::k8s(ns, sa))
}

fn call(id: &Arc<WorkloadIdentity>, t: i64, host: &str, path: &str, fp: &str) -> Observation {
    Observation {
        time: t,
        identity: id.clone(),
        labels: None,
        pid: 7,
        exe: Some("/app/summarizer".into()),
        activity: Activity::ApiCall(ApiCallSeen {
            host: Some(host.into()),
            method: Some("GET".into()),
            path: path.into(),
            status: Some(200),
            request_bytes: 100,
            response_bytes: 1000,
            credentials: vec![CredentialSeen {
                kind: "api_key".into(),
                fingerprint: fp.into(),
                vendor: None,
                token_type: None,
                long_lived: Some(true),
                access_key_id: None,
                username: None,
                jwt: None,
            }],
        }),
    }
}

fn rules_of(found: &[Finding]) -> Vec<&str> {
    found.iter().map(|f| f.rule.id.as_str()).collect()
}

#[test]
fn memory_stays_bounded_under_a_million_fingerprints() {
    let cfg = DetectConfig {
        max_credentials: 10_000,
        max_identities: 1_000,
        max_open_findings: 5_000,
        ..DetectConfig::default()
    };
    let mut e = Engine::new(shipped(), cfg);
    let id = k8s("clinical-ai", "med-summarizer");
    let mut out = Vec::new();
    for i in 0..1_000_000i64 {
        let o = call(
            &id,
            T0 + i * 1_000_000,
            "fhir.ehr.example.org",
            "/R4/Patient/{id}",
            &format!("hmac-sha256:{i:032x}"),
        );
        e.observe(&o, &mut out);
        out.clear();
    }
    assert!(e.credentials() <= 10_000, "{}", e.credentials());
    assert!(e.stats.credentials_evicted >= 990_000);
    // The identity's own record is bounded too: it keeps at most MAX_CREDENTIALS fingerprints.
    let r = e.records().next().unwrap();
    assert_eq!(r.credentials.len(), MAX_CREDENTIALS);
    assert!(r.dropped > 0);
    // The latest ones: rotating tokens show what is in use now (the first 8 stay cached).
    assert!(r
        .credentials
        .contains_key(&format!("hmac-sha256:{:032x}", 999_999)));
    assert!(r
        .credentials
        .contains_key(&format!("hmac-sha256:{:032x}", 0)));
    assert!(!r
        .credentials
        .contains_key(&format!("hmac-sha256:{:032x}", 100)));
    // Many identities: evicted beyond the limit, oldest first.
    for i in 0..5_000i64 {
        let o = call(
            &k8s("ns", &format!("sa-{i}")),
            T0 + (1_000 + i) * S,
            "x.example",
            "/",
            "hmac-sha256:00",
        );
        e.observe(&o, &mut out);
        out.clear();
    }
    assert!(e.identities() <= 1_000);
    assert!(e.records().any(|r| r.identity.id.ends_with("sa-4999")));
    assert!(e.open_findings() <= 10_000);
}

#[test]
fn state_survives_a_restart_and_a_reload() {
    let mut e = Engine::new(shipped(), DetectConfig::default());
    let a = k8s("clinical-ai", "med-summarizer");
    let mut out = Vec::new();
    e.observe(
        &call(
            &a,
            T0,
            "fhir.ehr.example.org",
            "/R4/Patient/{id}",
            "hmac-sha256:aa",
        ),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    let (mut ids, mut creds) = (Vec::new(), Vec::new());
    e.persist::<()>(|i, c| {
        ids = i.iter().map(|r| (*r).clone()).collect();
        creds = c.iter().map(|r| (*r).clone()).collect();
        Ok(())
    })
    .unwrap();
    assert_eq!((ids.len(), creds.len()), (1, 1));
    // Nothing changed since: nothing to write.
    e.persist::<()>(|i, c| {
        assert!(i.is_empty() && c.is_empty());
        Ok(())
    })
    .unwrap();
    // A new process with the restored state knows the credential's first user.
    let mut e2 = Engine::new(shipped(), DetectConfig::default());
    e2.restore(ids, creds);
    let b = k8s("patient-apps", "fitness-sync");
    e2.observe(
        &call(
            &b,
            T0 + S,
            "api.fitness.example.net",
            "/v1/users/{id}/sleep",
            "hmac-sha256:aa",
        ),
        &mut out,
    );
    assert!(rules_of(&out).contains(&"NHI-050"), "{out:?}");
    // New rules without fitness-sync's contract: the identity becomes ungoverned at its next activity.
    let text: String = ["data-sources.yaml", "contracts.yaml"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(format!("{}/../rules/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
        .replace("name: fitness-sync", "name: fitness-sync-old")
        .replace("k8s:sa:fitness-sync", "k8s:sa:renamed");
    e2.set_rules(crate::contracts::load_str("r.yaml", &text).unwrap());
    out.clear();
    e2.observe(
        &call(
            &b,
            T0 + 2 * S,
            "api.fitness.example.net",
            "/v1/users/{id}/sleep",
            "hmac-sha256:bb",
        ),
        &mut out,
    );
    assert_eq!(rules_of(&out), ["NHI-001"]);
}

#[test]
fn replay_is_deterministic_and_windows_close_at_the_end() {
    let a = k8s("patient-apps", "fitness-sync");
    let obs: Vec<Observation> = (0..50)
        .map(|i| {
            call(
                &a,
                T0 + i * S,
                "bh-notes.internal.example.org",
                "/notes/{id}",
                "hmac-sha256:cc",
            )
        })
        .collect();
    let run = || {
        let mut e = Engine::new(shipped(), DetectConfig::default());
        let mut out = Vec::new();
        for o in &obs {
            e.observe(o, &mut out);
        }
        e.finish(&mut out);
        serde_json::to_string(&out).unwrap()
    };
    let first = run();
    assert_eq!(first, run());
    let found: Vec<Finding> = serde_json::from_str(&first).unwrap();
    let summary: Vec<&Finding> = found
        .iter()
        .filter(|f| f.phase == finding::Phase::Summary)
        .collect();
    // api_key not allowed (51) and the undeclared data source (10), 50 times each.
    assert_eq!(summary.len(), 2, "{found:#?}");
    assert!(summary.iter().all(|f| f.count == 50));
    assert!(summary.iter().any(|f| f.rule.id == "NHI-010"));
}

/// The hot path updates cached entries; persist, records and reloads must see them all.
#[test]
fn cached_entries_fold_into_the_records() {
    let mut e = Engine::new(shipped(), DetectConfig::default());
    let a = k8s("clinical-ai", "med-summarizer");
    let exes: [Arc<str>; 2] = ["/app/a".into(), "/app/b".into()];
    let paths = ["/R4/Patient/{id}", "/R4/MedicationRequest/{id}"];
    let mut out = Vec::new();
    let mut saved = 0;
    for i in 0..300i64 {
        let mut o = call(
            &a,
            T0 + i * S,
            "fhir.ehr.example.org",
            paths[(i % 2) as usize],
            ["hmac-sha256:aa", "hmac-sha256:bb", "hmac-sha256:cc"][(i % 3) as usize],
        );
        // A fresh `Arc` each time for one executable, the same one for the other.
        o.exe = Some(if (i / 50) % 2 == 0 {
            exes[0].clone()
        } else {
            "/app/b".into()
        });
        if let Activity::ApiCall(c) = &mut o.activity {
            c.method = Some(if i % 4 == 0 { "POST" } else { "GET" }.into());
        }
        e.observe(&o, &mut out);
        if i == 100 {
            e.persist::<()>(|ids, _| {
                saved = ids[0].data_sources.values().map(|u| u.count).sum();
                Ok(())
            })
            .unwrap();
        }
        if i == 200 {
            e.set_rules(shipped());
        }
    }
    assert_eq!(saved, 101, "persist hands out folded records");
    let r = e.records().next().unwrap().clone();
    let count = |m: &std::collections::BTreeMap<String, state::Usage>, k: &str| m[k].count;
    assert_eq!(count(&r.executables, "/app/a"), 150);
    assert_eq!(count(&r.executables, "/app/b"), 150);
    assert_eq!(count(&r.data_sources, "ehr-patients"), 150);
    assert_eq!(count(&r.data_sources, "ehr-medications"), 150);
    assert_eq!(count(&r.methods, "ehr-patients POST"), 75);
    assert_eq!(count(&r.methods, "ehr-patients GET"), 75);
    assert_eq!(count(&r.methods, "ehr-medications GET"), 150);
    assert_eq!(r.data_sources["ehr-medications"].last_seen, T0 / S + 299);
    assert_eq!(r.executables["/app/b"].first_seen, T0 / S + 50);
    for fp in ["hmac-sha256:aa", "hmac-sha256:bb", "hmac-sha256:cc"] {
        assert_eq!(r.credentials[fp].usage.count, 100);
    }
    for ds in ["ehr-patients", "ehr-medications"] {
        let v = &r.volume[ds];
        let total = v.requests + v.history_requests.iter().sum::<u64>();
        assert_eq!(total, 150, "{ds}");
        assert_eq!(r.peak_requests_per_minute[ds], 30, "{ds}");
    }
}

/// A host process (uid + executable), as the identity stage names one outside Kubernetes.
fn host_process(exe: &str) -> Arc<WorkloadIdentity> {
    let mut w = crate::report::fixtures::k8s("x", "x");
    w.id = format!("spiffe://node.example/uid/1000{exe}");
    w.kind = crate::identity::IdentityKind::Unix;
    w.namespace = None;
    w.service_account = None;
    w.pod = None;
    w.uid = Some(1000);
    w.exe = Some(exe.into());
    Arc::new(w)
}

fn activity(id: &Arc<WorkloadIdentity>, t: i64, activity: Activity) -> Observation {
    Observation {
        time: t,
        identity: id.clone(),
        labels: None,
        pid: 9,
        exe: id.exe.as_deref().map(Into::into),
        activity,
    }
}

/// What a build host's processes do: start, connect to unnamed hosts, call an API without a
/// credential. None of it makes an identity matter.
fn busy_host_noise(id: &Arc<WorkloadIdentity>, t: i64) -> Vec<Observation> {
    vec![
        activity(id, t, Activity::Exec),
        activity(
            id,
            t + 1,
            Activity::Connect {
                address: "192.0.2.7:443".parse().unwrap(),
                name: Some("static.crates.example".into()),
            },
        ),
        activity(
            id,
            t + 2,
            Activity::Connect {
                address: "192.0.2.8:80".parse().unwrap(),
                name: None,
            },
        ),
        activity(
            id,
            t + 3,
            Activity::ApiCall(ApiCallSeen {
                host: Some("index.crates.example".into()),
                method: Some("GET".into()),
                path: "/config.json".into(),
                status: Some(200),
                request_bytes: 100,
                response_bytes: 1000,
                credentials: vec![],
            }),
        ),
        // A failed open of a watched file read nothing.
        activity(
            id,
            t + 4,
            Activity::FileOpen {
                path: "/etc/ssl/private/server.key".into(),
                result: -13,
            },
        ),
    ]
}

fn ungoverned_of(out: &[Finding]) -> Vec<&str> {
    out.iter()
        .filter(|f| f.rule.id == "NHI-001")
        .map(|f| f.identity.id.as_str())
        .collect()
}

/// Item 12 of issue 16: by default NHI-001 names only identities that matter; `report: all`
/// restores "every non-human identity is governed".
#[test]
fn ungoverned_reports_only_identities_that_matter_by_default() {
    let quiet = host_process("/usr/bin/sleep");
    let reader = host_process("/usr/bin/cat");
    let bearer = host_process("/usr/bin/curl");
    let to_ds = host_process("/usr/bin/nc");
    let ehr = host_process("/usr/bin/python3");
    let run = |report: UngovernedReport| {
        let cfg = DetectConfig {
            ungoverned: super::UngovernedConfig { report },
            ..DetectConfig::default()
        };
        let mut e = Engine::new(shipped(), cfg);
        let mut out = Vec::new();
        for (i, id) in [&quiet, &reader, &bearer, &to_ds, &ehr].iter().enumerate() {
            for o in busy_host_noise(id, T0 + i as i64 * S) {
                e.observe(&o, &mut out);
            }
        }
        let quiet_then = ungoverned_of(&out)
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let t = T0 + 10 * S;
        // A watched secret read.
        let read = Activity::FileOpen {
            path: "/etc/ssl/private/server.key".into(),
            result: 3,
        };
        e.observe(&activity(&reader, t, read), &mut out);
        // A bearer token presented to a host no data source claims.
        let mut c = call(&bearer, t, "example.net", "/", "hmac-sha256:dd");
        if let Activity::ApiCall(a) = &mut c.activity {
            a.credentials[0].kind = "bearer".into();
        }
        e.observe(&c, &mut out);
        // A connection to a host that serves a data source.
        let connect = Activity::Connect {
            address: "192.0.2.9:443".parse().unwrap(),
            name: Some("fhir.ehr.example.org".into()),
        };
        e.observe(&activity(&to_ds, t, connect), &mut out);
        // An API call to a data source, without a credential.
        let mut c = call(&ehr, t, "fhir.ehr.example.org", "/R4/Patient/{id}", "x");
        if let Activity::ApiCall(a) = &mut c.activity {
            a.credentials.clear();
        }
        e.observe(&c, &mut out);
        // Still quiet afterwards, and learned all the same: the inventory lists it.
        for o in busy_host_noise(&quiet, t + S) {
            e.observe(&o, &mut out);
        }
        let ids: Vec<String> = e.records().map(|r| r.identity.id.clone()).collect();
        assert!(ids.contains(&quiet.id), "{ids:?}");
        let all = ungoverned_of(&out)
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        (quiet_then, all)
    };
    let (before, all) = run(UngovernedReport::Significant);
    assert!(before.is_empty(), "raised for busy-host noise: {before:?}");
    let mut want = vec![
        reader.id.clone(),
        bearer.id.clone(),
        to_ds.id.clone(),
        ehr.id.clone(),
    ];
    assert_eq!(all, want, "one NHI-001 each for the identities that matter");
    // `all`: every identity at its first activity, the quiet one included.
    let (before, all) = run(UngovernedReport::All);
    want.insert(0, quiet.id.clone());
    assert_eq!(before, want);
    assert_eq!(all, want);
}

/// A restored identity that once used a credential or a secret still matters after a restart.
#[test]
fn a_restored_identity_that_mattered_still_does() {
    let reader = host_process("/usr/bin/cat");
    let quiet = host_process("/usr/bin/sleep");
    let mut r = crate::report::fixtures::empty_record((*reader).clone(), T0 / S, T0 / S);
    r.secrets
        .insert("/etc/ssl/private/server.key".into(), Default::default());
    let q = crate::report::fixtures::empty_record((*quiet).clone(), T0 / S, T0 / S);
    let mut e = Engine::new(shipped(), DetectConfig::default());
    e.restore(vec![r, q], vec![]);
    let mut out = Vec::new();
    e.observe(&activity(&reader, T0 + S, Activity::Exec), &mut out);
    e.observe(&activity(&quiet, T0 + S, Activity::Exec), &mut out);
    assert_eq!(ungoverned_of(&out), [reader.id.as_str()]);
}

#[test]
fn ungoverned_report_setting_parses() {
    let c: DetectConfig = serde_yaml_ng::from_str("ungoverned: {report: all}").unwrap();
    assert_eq!(c.ungoverned.report, UngovernedReport::All);
    let c: DetectConfig = serde_yaml_ng::from_str("{}").unwrap();
    assert_eq!(c.ungoverned.report, UngovernedReport::Significant);
    let e = serde_yaml_ng::from_str::<DetectConfig>("ungoverned: {report: some}").unwrap_err();
    assert!(e.to_string().contains("significant"), "{e}");
}

/// NHI-059 counts a key's age from its first sighting, which a restart restores from the state
/// database: a key first seen 100 days before is overdue at its first use after the restart; a
/// fresh one is not, nor is a token that expires by itself.
#[test]
fn rotation_age_counts_from_the_restored_first_sighting() {
    let id = k8s("clinical-ai", "med-summarizer");
    let old = "hmac-sha256:000000000000000000000000000000aa";
    let fresh = "hmac-sha256:000000000000000000000000000000bb";
    let mut e = Engine::new(shipped(), DetectConfig::default());
    let record = |fp: &str, first: i64| state::CredentialRecord {
        fingerprint: fp.into(),
        kind: "api_key".into(),
        vendor: None,
        long_lived: Some(true),
        first_seen: first,
        last_seen: first,
        identities: [(id.id.clone(), first)].into(),
    };
    let now = T0 / S;
    e.restore(
        Vec::new(),
        vec![
            record(old, now - 100 * 86_400),
            record(fresh, now - 89 * 86_400),
        ],
    );
    let mut out = Vec::new();
    e.observe(
        &call(&id, T0, "api.anthropic.com", "/v1/messages", old),
        &mut out,
    );
    e.observe(
        &call(&id, T0, "api.anthropic.com", "/v1/messages", fresh),
        &mut out,
    );
    let overdue: Vec<&Finding> = out.iter().filter(|f| f.rule.id == "NHI-059").collect();
    assert_eq!(overdue.len(), 1, "{:?}", rules_of(&out));
    let ev = &overdue[0].evidence;
    assert_eq!(ev.credential.as_ref().unwrap().fingerprint, old);
    assert_eq!(
        (ev.days_in_use, ev.age_is_lower_bound),
        (Some(100), Some(true))
    );
    assert_eq!(ev.limit, Some(90.0));
    // The deciding contract's owner and purpose travel with the finding.
    let c = overdue[0].contract.as_ref().unwrap();
    assert_eq!(c.owner.as_deref(), Some("clinical-ai@example.org"));
    assert_eq!(
        c.purpose.as_deref(),
        Some("Summarise medication lists for clinicians")
    );
    // A JWT with exp is not static, however old its fingerprint.
    let mut o = call(&id, T0 + S, "api.anthropic.com", "/v1/messages", old);
    if let Activity::ApiCall(c) = &mut o.activity {
        c.credentials[0].kind = "jwt".into();
        c.credentials[0].jwt = Some(crate::events::observation::JwtSeen {
            exp: Some(now + 3600),
            ..Default::default()
        });
    }
    let mut e2 = Engine::new(shipped(), DetectConfig::default());
    e2.restore(Vec::new(), vec![record(old, now - 100 * 86_400)]);
    let mut out = Vec::new();
    e2.observe(&o, &mut out);
    assert!(!rules_of(&out).contains(&"NHI-059"), "{:?}", rules_of(&out));
    // Without the restored sighting the key is new: nothing to say.
    let mut e3 = Engine::new(shipped(), DetectConfig::default());
    let mut out = Vec::new();
    e3.observe(
        &call(&id, T0, "api.anthropic.com", "/v1/messages", old),
        &mut out,
    );
    assert!(!rules_of(&out).contains(&"NHI-059"));
}

/// The engine finds a slot by the identity object's address (`Engine::by_object`): that shortcut
/// must still see new rules, and a new object of the same id must still update the record.
#[test]
fn the_same_identity_object_is_judged_again_after_a_reload_or_a_change() {
    let mut e = Engine::new(shipped(), DetectConfig::default());
    let id = k8s("clinical-ai", "med-summarizer");
    let fp = "hmac-sha256:000000000000000000000000000000aa";
    let at =
        |id: &Arc<WorkloadIdentity>, t| call(id, t, "fhir.ehr.example.org", "/R4/Patient/{id}", fp);
    let mut out = Vec::new();
    e.observe(&at(&id, T0), &mut out);
    e.observe(&at(&id, T0 + S), &mut out);
    assert!(!rules_of(&out).contains(&"NHI-001"), "{:?}", rules_of(&out));
    e.set_rules(RuleSet::default());
    out.clear();
    e.observe(&at(&id, T0 + 2 * S), &mut out);
    assert!(rules_of(&out).contains(&"NHI-001"), "{:?}", rules_of(&out));
    assert_eq!(
        e.records().next().unwrap().contract,
        None,
        "the contract is looked up again"
    );
    let mut moved = (*id).clone();
    moved.node = "another-node".into();
    e.observe(&at(&Arc::new(moved), T0 + 3 * S), &mut out);
    let r = e.records().next().unwrap();
    assert_eq!(
        (r.identity.node.as_str(), r.last_seen),
        ("another-node", T0 / S + 3)
    );
    assert_eq!(e.identities(), 1);
}
