//! Tests of inventory and suggest with realistic hospital records and the shipped rules.

use std::time::Duration;

use super::fixtures::*;
use super::*;
use crate::contracts::load_str;

fn row<'a>(rows: &'a [InventoryRow], sa_or_unit: &str) -> &'a InventoryRow {
    rows.iter()
        .find(|r| r.id.ends_with(sa_or_unit))
        .unwrap_or_else(|| panic!("no row for {sa_or_unit}"))
}

#[test]
fn inventory_resolves_contracts_against_the_current_rules() {
    let rules = shipped_rules();
    let mut cohort = cohort_builder();
    // Recorded under a contract that the rules no longer have.
    cohort.contract = Some("research-2025".into());
    let ids = [claims_batch(), med_summarizer(), cohort];
    let creds = [shared_anthropic_key()];
    let rows = inventory(&ids, &creds, Some(&rules), now());

    let order: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);

    let med = row(&rows, "med-summarizer");
    assert_eq!(med.contract.as_deref(), Some("med-summarizer"));
    assert_eq!(med.status, Status::Governed);
    assert_eq!(med.owner.as_deref(), Some("clinical-ai@example.org"));
    assert_eq!(
        med.purpose.as_deref(),
        Some("Summarise medication lists for clinicians")
    );
    let table = render_inventory_table(&rows);
    assert!(
        table.lines().next().unwrap().ends_with("PURPOSE")
            && table.contains("Summarise medication lists for clinicians"),
        "{table}"
    );
    assert_eq!(
        med.data_sources,
        [
            "ehr-medications",
            "ehr-patients",
            "k8s-sa-token",
            "llm-anthropic"
        ]
    );
    assert_eq!(med.last_seen, "2026-11-23T09:59:00Z");
    assert_eq!(med.first_seen, "2026-07-26T10:00:00Z");
    let key = med
        .credentials
        .iter()
        .find(|c| c.fingerprint == ANTHROPIC_KEY_FP)
        .unwrap();
    assert_eq!(
        (key.kind.as_str(), key.long_lived, key.shared_with),
        ("api_key", Some(true), 1)
    );
    let jwt = med
        .credentials
        .iter()
        .find(|c| c.fingerprint == JWT_FP)
        .unwrap();
    assert_eq!(jwt.shared_with, 0);

    let cohort = row(&rows, "cohort-builder");
    assert_eq!(
        (cohort.contract.as_deref(), cohort.status),
        (None, Status::Ungoverned)
    );
    assert_eq!(cohort.owner, None);

    // Governed by selectors (systemd unit + unix user).
    let batch = row(&rows, "claims-batch");
    assert_eq!(batch.contract.as_deref(), Some("claims-batch"));
    assert_eq!(batch.status, Status::Governed);
    assert_eq!(batch.unit.as_deref(), Some("claims-batch.service"));
    assert_eq!(batch.uid, Some(1017));
}

#[test]
fn inventory_without_rules_uses_the_recorded_contract() {
    let mut cohort = cohort_builder();
    cohort.contract = Some("research-2025".into());
    let rows = inventory(&[cohort, med_summarizer()], &[], None, now());
    let c = row(&rows, "cohort-builder");
    assert_eq!(
        (c.contract.as_deref(), c.status),
        (Some("research-2025"), Status::Governed)
    );
    let m = row(&rows, "med-summarizer");
    assert_eq!(m.owner, None);
    // Without the credential records nothing is known to be shared.
    assert!(m.credentials.iter().all(|c| c.shared_with == 0));
}

#[test]
fn expiry_is_the_end_of_the_day_utc() {
    let rules = shipped_rules();
    let ids = [claims_batch()]; // claims-batch expires 2026-12-31
    let at = |s: &str| inventory(&ids, &[], Some(&rules), t(s))[0].status;
    assert_eq!(at("2026-12-31T23:59:59Z"), Status::Governed);
    assert_eq!(at("2027-01-01T00:00:00Z"), Status::Expired);
    assert!(!expired(None, i64::MAX));
}

#[test]
fn an_ownerless_contract_shows_as_no_owner() {
    let rules = rules_with(
        "apiVersion: nhiwatch.dev/v1
kind: AccessContract
metadata: {name: cohort}
spec:
  selectors: [k8s:ns:research]
  owner: \"\"
  purpose: Build research cohorts
  allow: {dataSources: [ehr-observations]}
",
    );
    assert!(!rules.warnings.is_empty());
    let rows = inventory(&[cohort_builder()], &[], Some(&rules), now());
    assert_eq!(rows[0].status, Status::NoOwner);
    assert_eq!(rows[0].contract.as_deref(), Some("cohort"));
    assert_eq!(rows[0].owner.as_deref(), Some(""));
}

#[test]
fn inventory_json_shape() {
    let rules = shipped_rules();
    let rows = inventory(
        &[med_summarizer(), cohort_builder()],
        &[shared_anthropic_key()],
        Some(&rules),
        now(),
    );
    let v: serde_json::Value = serde_json::to_value(&rows).unwrap();
    let med = &v[0];
    assert_eq!(
        med["id"],
        "spiffe://clinic.example/ns/clinical-ai/sa/med-summarizer"
    );
    assert_eq!(med["kind"], "kubernetes");
    assert_eq!(med["namespace"], "clinical-ai");
    assert_eq!(med["service_account"], "med-summarizer");
    assert_eq!(med["exe"], "/app/summarizer");
    assert_eq!(med["status"], "governed");
    assert!(med.get("unit").is_none());
    assert_eq!(med["credentials"][1]["shared_with"], 1);
    assert_eq!(med["credentials"][1]["kind"], "api_key");
    let cohort = &v[1];
    assert_eq!(cohort["status"], "ungoverned");
    assert!(cohort["contract"].is_null(), "{cohort}");
    let mut no_owner = rows[0].clone();
    no_owner.status = Status::NoOwner;
    assert_eq!(
        serde_json::to_value(no_owner).unwrap()["status"],
        "no-owner"
    );
}

#[test]
fn table_is_aligned_and_escapes_control_characters() {
    let rules = shipped_rules();
    let mut evil = cohort_builder();
    evil.identity.id = "spiffe://clinic.example/ns/research/sa/x\u{1b}[2Jy".into();
    let rows = inventory(
        &[med_summarizer(), cohort_builder(), claims_batch(), evil],
        &[shared_anthropic_key()],
        Some(&rules),
        now(),
    );
    let table = render_inventory_table(&rows);
    assert!(!table.contains('\u{1b}'), "{table}");
    assert!(table.contains("x\\u{1b}[2Jy"), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    let col = |l: &str, w: &str| l.find(w).unwrap_or_else(|| panic!("{w} in {l}"));
    let status = col(lines[0], "STATUS");
    let seen = col(lines[0], "LAST SEEN");
    for (l, r) in lines[1..].iter().zip(&rows) {
        assert_eq!(col(l, r.status.name()), status, "{table}");
        assert_eq!(col(l, &r.last_seen), seen, "{table}");
        assert!(!l.ends_with(' '));
    }
    let med = lines
        .iter()
        .find(|l| l.contains("med-summarizer  "))
        .unwrap();
    assert!(
        med.contains("api_key:fedcba98 long-lived shared+1"),
        "{med}"
    );
    assert!(med.contains("clinical-ai@example.org"), "{med}");
    let cohort = lines.iter().find(|l| l.contains("cohort-builder")).unwrap();
    assert!(cohort.contains("ungoverned  -  "), "{cohort}");
}

#[test]
fn draft_for_an_ungoverned_identity_loads_and_then_governs_it() {
    let rules = shipped_rules();
    let rec = cohort_builder();
    let s = suggest(&rec, &rules, now(), 30);
    assert_eq!(s.contract, None);
    let y = &s.yaml;
    assert!(y.contains("owner: \"\"  # TODO"), "{y}");
    assert!(
        y.contains("genomics-vault"),
        "unknown data source not mentioned:\n{y}"
    );

    let doc = format!("{}\n---\n{y}", data_sources_text());
    let loaded = load_str("draft.yaml", &doc).unwrap_or_else(|e| panic!("{e:#?}\n{y}"));
    assert_eq!(loaded.contracts.len(), 1);
    let c = &loaded.contracts[0];
    assert_eq!(c.name, "cohort-builder");
    assert!(matches!(&c.subject, crate::contracts::Subject::Identity(i) if *i == rec.identity.id));
    assert_eq!(c.owner, "");
    assert!(c.purpose.starts_with("TODO"));
    assert_eq!(
        c.expires.map(|d| d.to_string()).as_deref(),
        Some("2027-02-21")
    );
    let a = &c.allow;
    assert_eq!(
        a.data_sources,
        [
            "ehr-observations",
            "ehr-patients",
            "k8s-sa-token",
            "llm-openai"
        ]
    );
    assert_eq!(a.combinations, vec![a.data_sources.clone()]);
    let eps: Vec<(&str, Vec<&str>)> = a
        .endpoints
        .iter()
        .map(|e| {
            (
                e.data_source.as_str(),
                e.methods.iter().map(|m| method_name(*m)).collect(),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("ehr-observations", vec!["GET"]),
            ("ehr-patients", vec!["GET", "HEAD"]),
            ("llm-openai", vec!["POST"]),
        ]
    );
    assert_eq!(a.secrets.len(), 1);
    assert!(a.secrets[0].path.is_match(TOKEN));
    assert_eq!(a.secrets[0].executables, ["/usr/bin/python3.12"]);
    assert_eq!(a.destinations.len(), 1);
    assert!(a.destinations[0].is_match("pypi.org"));
    let kinds: Vec<&str> = c
        .credentials
        .kinds
        .iter()
        .map(|k| credential_kind_name(*k))
        .collect();
    assert_eq!(kinds, ["jwt", "bearer", "api-key"]);
    // 3599 s rounds up to the minute.
    assert_eq!(c.credentials.max_token_ttl, Some(Duration::from_secs(3600)));
    let limits: Vec<(&str, Option<u64>)> = c
        .limits
        .iter()
        .map(|l| (l.data_source.as_str(), l.requests_per_minute))
        .collect();
    assert_eq!(
        limits,
        [
            ("ehr-observations", Some(80)),
            ("ehr-patients", Some(10)),
            ("llm-openai", Some(24))
        ]
    );

    // With the draft in the rules, the identity is governed by it and uses every grant.
    let again = suggest(&rec, &loaded, now(), 30);
    assert_eq!(again.contract.as_deref(), Some("cohort-builder"));
    assert!(again.unused.is_empty(), "{:?}", again.unused);
    assert!(again.yaml.contains("no unused grants"), "{}", again.yaml);
}

#[test]
fn draft_name_avoids_existing_contracts_and_loads_with_all_the_rules() {
    let rules = shipped_rules();
    // Same service account name as fitness-sync, but another namespace: not governed by it.
    let mut rec = empty_record(k8s("staging", "fitness-sync"), now() - DAY, now());
    rec.data_sources
        .insert("fitness-app".into(), used(now() - DAY, now(), 5));
    let s = suggest(&rec, &rules, now(), 30);
    assert_eq!(s.contract, None);
    assert!(s.yaml.contains("name: fitness-sync-draft"), "{}", s.yaml);
    let dir = rules_dir();
    crate::contracts::load_texts(&[
        (dir.join("data-sources.yaml"), data_sources_text()),
        (
            dir.join("contracts.yaml"),
            std::fs::read_to_string(dir.join("contracts.yaml")).unwrap(),
        ),
        (dir.join("draft.yaml"), s.yaml.clone()),
    ])
    .unwrap_or_else(|e| panic!("{e:#?}\n{}", s.yaml));
    // One data source: no combination, no endpoints, no credentials section.
    assert!(!s.yaml.contains("combinations"), "{}", s.yaml);
    assert!(!s.yaml.contains("credentials:"), "{}", s.yaml);
}

#[test]
fn draft_for_an_identity_that_did_nothing_yet_still_loads() {
    let rules = shipped_rules();
    let mut id = k8s("research", "Idle_Worker..9");
    id.service_account = Some("Idle_Worker..9".into());
    let rec = empty_record(id, now(), now());
    let s = suggest(&rec, &rules, now(), 30);
    assert!(s.yaml.contains("name: idle-worker-9\n"), "{}", s.yaml);
    assert!(s.yaml.contains("allow: {}"), "{}", s.yaml);
    let doc = format!("{}\n---\n{}", data_sources_text(), s.yaml);
    load_str("draft.yaml", &doc).unwrap_or_else(|e| panic!("{e:#?}\n{}", s.yaml));
}

#[test]
fn unused_grants_of_a_governed_identity() {
    let rules = shipped_rules();
    let s = suggest(&med_summarizer(), &rules, now(), 30);
    assert_eq!(s.contract.as_deref(), Some("med-summarizer"));
    assert_eq!(
        s.unused,
        ["dataSource ehr-patients: last used 2026-09-24T10:00:00Z"]
    );
    let y = &s.yaml;
    assert!(y.contains("1 grant unused in the last 30 days"), "{y}");
    assert!(y.contains("#   - dataSource ehr-patients"), "{y}");
    // The shrunk section drops ehr-patients everywhere and keeps what was used.
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(y).unwrap();
    let ds: Vec<&str> = v["allow"]["dataSources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(ds, ["ehr-medications", "llm-anthropic", "k8s-sa-token"]);
    assert_eq!(v["allow"]["combinations"].as_sequence().unwrap().len(), 1);
    assert_eq!(v["allow"]["endpoints"].as_sequence().unwrap().len(), 2);
    assert_eq!(v["allow"]["destinations"].as_sequence().unwrap().len(), 3);
    assert_eq!(
        v["allow"]["secrets"][0]["executables"][0],
        "/app/summarizer"
    );
    assert_eq!(v["credentials"]["kinds"][1], "api-key");
    assert_eq!(v["credentials"]["maxTokenTtl"], "1h");
    assert!(
        !y.contains("ehr-patients]") && !y.contains("dataSource: ehr-patients"),
        "{y}"
    );

    // Spliced into the contract, the shrunk sections load.
    let mut doc = String::from(
        "apiVersion: nhiwatch.dev/v1\nkind: AccessContract\nmetadata: {name: med-summarizer}\nspec:\n  identity: spiffe://clinic.example/ns/clinical-ai/sa/med-summarizer\n  owner: clinical-ai@example.org\n  purpose: Summarise medication lists\n",
    );
    for l in y.lines() {
        doc.push_str("  ");
        doc.push_str(l);
        doc.push('\n');
    }
    let shrunk = rules_with(&doc);
    assert_eq!(shrunk.contracts[0].allow.data_sources.len(), 3);
}

#[test]
fn longer_idle_grants_are_all_reported() {
    let rules = shipped_rules();
    let mut r = med_summarizer();
    let old = used(now() - 120 * DAY, now() - 45 * DAY, 3);
    r.methods.insert("llm-anthropic POST".into(), old);
    r.destinations.clear();
    if let Some(c) = r.credentials.get_mut(JWT_FP) {
        c.usage = old;
    }
    if let Some(s) = r.secrets.get_mut(TOKEN) {
        s.executables.insert("/bin/sh".into());
        s.executables.remove("/app/summarizer");
    }
    let s = suggest(&r, &rules, now(), 30);
    let has = |p: &str| s.unused.iter().any(|u| u.starts_with(p));
    assert!(has("dataSource ehr-patients"), "{:?}", s.unused);
    assert!(
        has("endpoint llm-anthropic POST: last used 2026-10-09"),
        "{:?}",
        s.unused
    );
    assert!(
        has("destination *.svc.cluster.local: never used"),
        "{:?}",
        s.unused
    );
    assert!(has("credential kind jwt: last used"), "{:?}", s.unused);
    assert!(
        has("secret /var/run/secrets/kubernetes.io/serviceaccount/token by /app/summarizer"),
        "{:?}",
        s.unused
    );
    // Still used: the data source's host counts for fhir.ehr.example.org.
    assert!(!has("destination fhir.ehr.example.org"), "{:?}", s.unused);
    assert!(!has("credential kind api-key"), "{:?}", s.unused);
    // An endpoint entry whose only method is idle is kept rather than emptied (= any method).
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&s.yaml).unwrap();
    let eps = v["allow"]["endpoints"].as_sequence().unwrap();
    assert!(eps
        .iter()
        .any(|e| e["dataSource"] == "llm-anthropic" && e["methods"][0] == "POST"));
    assert_eq!(v["credentials"]["kinds"].as_sequence().unwrap().len(), 1);
}

#[test]
fn break_glass_grants_are_not_shrunk() {
    let rules = shipped_rules();
    let rec = empty_record(
        k8s("platform", "breakglass-admin"),
        now() - 90 * DAY,
        now() - 80 * DAY,
    );
    let s = suggest(&rec, &rules, now(), 30);
    assert_eq!(s.contract.as_deref(), Some("breakglass-admin"));
    assert!(s.unused.is_empty());
    assert!(s.yaml.contains("break-glass"), "{}", s.yaml);
}

/// Scopes: a draft grants the scopes seen per data source; a review lists granted scopes no token
/// carried lately (matching by glob, across the data sources of one host, as the detector judges)
/// and keeps requireAudience and maxKeyAge in the sections it prints.
#[test]
fn scopes_are_drafted_and_unused_scopes_reviewed() {
    let mut rec = cohort_builder();
    let u = rec.data_sources["ehr-patients"];
    rec.scopes
        .insert("ehr-patients patient/Patient.read".into(), u);
    rec.scopes
        .insert("ehr-observations patient/Observation.read".into(), u);
    let s = suggest(&rec, &shipped_rules(), now(), 30);
    let doc = format!("{}\n---\n{}", data_sources_text(), s.yaml);
    let loaded = load_str("draft.yaml", &doc).unwrap_or_else(|e| panic!("{e:#?}\n{}", s.yaml));
    let scopes: Vec<(&str, &[String])> = loaded.contracts[0]
        .allow
        .scopes
        .iter()
        .map(|g| (g.data_source.as_str(), g.scopes.as_slice()))
        .collect();
    assert_eq!(
        scopes,
        [
            (
                "ehr-observations",
                &["patient/Observation.read".to_string()][..]
            ),
            ("ehr-patients", &["patient/Patient.read".to_string()][..]),
        ]
    );

    let mut rec = med_summarizer();
    let recent = rec.data_sources["ehr-medications"];
    // Recorded on a call to ehr-patients, granted under ehr-medications: the same FHIR host.
    rec.scopes
        .insert("ehr-patients patient/MedicationRequest.read".into(), recent);
    let rules = rules_with(
        "apiVersion: nhiwatch.dev/v1\nkind: AccessContract\nmetadata: {name: med-summarizer}\nspec:\n  identity: spiffe://clinic.example/ns/clinical-ai/sa/med-summarizer\n  owner: clinical-ai@example.org\n  purpose: Summarise medication lists\n  allow:\n    dataSources: [ehr-medications, ehr-patients, llm-anthropic]\n    scopes:\n      - {dataSource: ehr-medications, scopes: [\"patient/Medication*.read\", \"system/*.read\"]}\n      - {dataSource: ehr-patients, scopes: [\"patient/Patient.read\"]}\n  credentials: {kinds: [jwt, api-key], requireAudience: true, maxKeyAge: 60d}\n",
    );
    let s = suggest(&rec, &rules, now(), 30);
    let y = &s.yaml;
    assert!(
        s.unused
            .iter()
            .any(|u| u == "scope system/*.read on ehr-medications: never used"),
        "{:?}",
        s.unused
    );
    assert!(
        !s.unused.iter().any(|u| u.contains("Medication*")),
        "{:?}",
        s.unused
    );
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(y).unwrap();
    assert_eq!(
        v["allow"]["scopes"][0]["scopes"],
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[\"patient/Medication*.read\"]").unwrap(),
        "{y}"
    );
    assert_eq!(v["credentials"]["requireAudience"], true, "{y}");
    assert_eq!(v["credentials"]["maxKeyAge"], "60d", "{y}");
}
