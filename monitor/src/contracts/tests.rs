//! Tests of the rules loader: shipped examples, multi-document files and every error kind.

use std::path::PathBuf;

use super::*;

/// Lines 1-8.
const DS: &str = "apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {name: ehr}
spec:
  classification: phi
  match:
    - host: fhir.example.org
      paths: [\"/R4/Medication*\"]
";

/// A data source then a contract whose spec body starts on line 14 with identity, owner,
/// purpose (lines 14-16); `extra` starts on line 17.
fn contract(extra: &str) -> String {
    format!(
        "{DS}---
apiVersion: nhiwatch.dev/v1
kind: AccessContract
metadata: {{name: c}}
spec:
  identity: spiffe://clinic.example/ns/a/sa/b
  owner: team@example.org
  purpose: Read medications
{extra}"
    )
}

fn errors(text: &str) -> Vec<String> {
    match load_str("r.yaml", text) {
        Ok(set) => panic!(
            "expected errors, loaded {} sources and {} contracts",
            set.data_sources.len(),
            set.contracts.len()
        ),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

/// Exactly one error, at `at` (`LINE:COLUMN`), saying `what` and hinting `hint`.
fn one(text: &str, at: &str, what: &str, hint: &str) {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    let msg = &e[0];
    assert!(msg.starts_with(&format!("r.yaml:{at}: ")), "{msg}");
    assert!(msg.contains(what), "{msg}");
    assert!(msg.contains("; expected "), "{msg}");
    assert!(msg.contains("; hint: ") && msg.contains(hint), "{msg}");
}

#[test]
fn shipped_rules_load_cleanly() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules"));
    let set = load_paths(&[dir]).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!(set.data_sources.len(), 10);
    assert_eq!(set.contracts.len(), 4);
    let c = |n: &str| set.contracts.iter().find(|c| c.name == n).unwrap();
    let med = c("med-summarizer");
    assert!(matches!(&med.subject, Subject::Identity(id) if id.ends_with("/sa/med-summarizer")));
    assert_eq!(
        med.expires,
        Some(Date {
            year: 2027,
            month: 3,
            day: 31
        })
    );
    assert_eq!(
        med.credentials.max_token_ttl,
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(
        med.credentials.kinds,
        vec![CredentialKind::Jwt, CredentialKind::ApiKey]
    );
    assert_eq!(med.limits[0].bytes_per_hour, Some(50 << 20));
    assert!(med.allow.secrets[0]
        .path
        .is_match("/var/run/secrets/kubernetes.io/serviceaccount/token"));
    assert!(med.allow.destinations[0].is_match("fhir.default.svc.cluster.local"));
    assert!(matches!(&c("claims-batch").subject, Subject::Selectors(r) if r.selectors.len() == 2));
    assert!(c("breakglass-admin").break_glass && !med.break_glass);
    let ds = |n: &str| set.data_sources.iter().find(|d| d.name == n).unwrap();
    let creds = ds("cloud-credentials");
    assert_eq!(creds.classification, Classification::Credentials);
    assert!(creds.matchers.iter().any(
        |m| matches!(m, Matcher::File { glob } if glob.is_match("/home/alice/.aws/credentials"))
    ));
    assert!(!creds.matchers.iter().any(|m| matches!(m, Matcher::File { glob } if glob.is_match("/home/alice/notes/.aws/credentials"))));
    let meds = ds("ehr-medications");
    assert!(meds.matchers.iter().any(|m| matches!(m, Matcher::Http { host, paths, .. }
        if host == "fhir.ehr.example.org" && paths.iter().any(|p| p.is_match("/R4/MedicationRequest?patient=1")))));
    assert_eq!(
        meds.origin.line, 6,
        "line of apiVersion after the header comments"
    );
}

#[test]
fn several_documents_and_markers() {
    let text = format!(
        "# header comment\n%YAML 1.2\n--- # first\n{DS}...\n--- \napiVersion: nhiwatch.dev/v1\nkind: DataSource\n\
         metadata: {{name: notes}}\nspec: {{classification: phi, match: [{{file: /srv/notes/**}}]}}\n---\n# trailing empty document\n"
    );
    let set = load_str("r.yaml", &text).unwrap();
    let lines: Vec<_> = set
        .data_sources
        .iter()
        .map(|d| (d.name.as_str(), d.origin.line))
        .collect();
    assert_eq!(lines, vec![("ehr", 4), ("notes", 14)]);
    // Errors in a later document are placed on that document's lines.
    let bad = text.replace("/srv/notes/**", "srv/notes/**");
    let e = errors(&bad);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("r.yaml:17:"), "{}", e[0]);
}

#[test]
fn every_error_is_collected_across_files() {
    let files = vec![
        (PathBuf::from("a.yaml"), DS.replace("phi", "secret")),
        (
            PathBuf::from("b.yaml"),
            contract("  allow: {dataSources: [ehr, nope]}\n")
                .replace("owner: team@example.org", "owner: \" \""),
        ),
    ];
    let e: Vec<String> = load_texts(&files)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("a.yaml:5:19: ") && e[0].contains("unknown variant `secret`"),
        "{}",
        e[0]
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("b.yaml:17:30: ") && m.contains("unknown data source \"nope\"")),
        "{e:#?}"
    );
}

#[test]
fn yaml_shape_errors() {
    one(
        &contract("  breakGlas: true\n"),
        "17:3",
        "unknown field `breakGlas`",
        "camelCase",
    );
    one(
        &DS.replace("phi", "PHI"),
        "5:19",
        "unknown variant `PHI`",
        "lowercase",
    );
    one(
        &contract("  allow: {endpoints: [{dataSource: ehr, methods: [get]}]}\n"),
        "17:51",
        "unknown variant `get`",
        "uppercase",
    );
    one(
        &contract("").replace("  purpose: Read medications\n", ""),
        "14:3",
        "missing field `purpose`",
        "add the key",
    );
    one(
        &contract("  allow: {dataSources: ehr}\n"),
        "17:24",
        "invalid type",
        "a list is written",
    );
    one(
        &contract("  owner2: [unclosed\n"),
        "18:1",
        "did not find expected",
        "valid YAML",
    );
}

#[test]
fn header_errors() {
    one(
        &DS.replace("v1", "v2"),
        "1:1",
        "apiVersion \"nhiwatch.dev/v2\" is not supported",
        "only v1",
    );
    one(
        &DS.replace("kind: DataSource", "kind: Datasource"),
        "2:1",
        "unknown kind \"Datasource\"",
        "case-sensitive",
    );
    one(
        "kind: DataSource\n",
        "1:1",
        "no apiVersion",
        "start every document",
    );
    one(
        &DS.replace("{name: ehr}", "{name: EHR_Meds}"),
        "3:12",
        "not a valid name",
        "ehr-medications",
    );
}

#[test]
fn unknown_and_ungranted_data_sources() {
    one(
        &contract("  allow:\n    dataSources: [ehr, llm-x]\n"),
        "18:24",
        "unknown data source \"llm-x\"",
        "known data sources: ehr",
    );
    one(
        &contract("  limits: [{dataSource: ehr-meds, requestsPerMinute: 5}]\n"),
        "17:25",
        "unknown data source \"ehr-meds\"",
        "known data sources: ehr",
    );
    let text = format!("{DS}---\napiVersion: nhiwatch.dev/v1\nkind: DataSource\nmetadata: {{name: llm}}\nspec: {{classification: internal, match: [{{host: api.example.ai}}]}}\n---\n")
        + &contract("  allow:\n    dataSources: [ehr]\n    combinations: [[ehr, llm]]\n").replacen(DS, "", 1).replacen("---\n", "", 1);
    one(
        &text,
        "24:26",
        "combination names \"llm\", which allow.dataSources does not grant",
        "add llm to allow.dataSources",
    );
}

#[test]
fn duplicate_names() {
    let text = format!("{DS}---\n{DS}");
    one(
        &text,
        "12:18",
        "duplicate DataSource name \"ehr\"",
        "first defined at r.yaml:1",
    );
    let c = contract("");
    let body = c.split_once("---\n").unwrap().1;
    one(
        &format!("{c}---\n{body}"),
        "20:18",
        "duplicate AccessContract name \"c\"",
        "first defined at r.yaml:10",
    );
}

#[test]
fn overlapping_matchers() {
    let other = |m: &str| {
        format!("{DS}---\napiVersion: nhiwatch.dev/v1\nkind: DataSource\nmetadata: {{name: other}}\nspec:\n  classification: phi\n  match:\n{m}")
    };
    one(
        &other("    - host: FHIR.example.org\n      paths: [\"/R4/MedicationRequest*\"]\n"),
        "17:16",
        "overlaps \"/R4/Medication*\" of data source \"ehr\"",
        "\"ehr\" is defined at r.yaml:1",
    );
    // A host without paths claims every path.
    one(
        &other("    - host: fhir.example.org\n"),
        "16:13",
        "overlaps",
        "narrow one of the globs",
    );
    one(
        &format!(
            "{}    - file: /srv/exports/**\n",
            other("    - host: fhir.example.org\n      paths: [\"/R4/Patient*\"]\n      \n")
        )
        .replace(
            "      paths: [\"/R4/Medication*\"]\n",
            "      paths: [\"/R4/Medication*\"]\n    - file: /srv/exports/meds/*.json\n",
        ),
        "20:13",
        "matches \"/srv/exports/**\" on files, which overlaps \"/srv/exports/meds/*.json\"",
        "merge the two sources",
    );
    // Same host, disjoint paths; same glob in one source: both fine.
    assert!(load_str(
        "r.yaml",
        &other("    - host: fhir.example.org\n      paths: [\"/R4/Patient*\"]\n")
    )
    .is_ok());
}

#[test]
fn bad_values() {
    one(
        &contract("  expires: 2027-02-30\n"),
        "17:3",
        "bad date \"2027-02-30\"",
        "expires: 2027-03-31",
    );
    one(
        &contract("  credentials: {maxTokenTtl: 1 fortnight}\n"),
        "17:17",
        "bad duration \"1 fortnight\"",
        "units: s, m, h, d",
    );
    one(
        &contract("  limits: [{dataSource: ehr, bytesPerHour: 50 mib}]\n"),
        "17:44",
        "bad size \"50 mib\"",
        "case-sensitive",
    );
    one(
        &contract("  limits: [{dataSource: ehr}]\n"),
        "17:25",
        "sets nothing",
        "set a limit",
    );
    one(
        &DS.replace("[\"/R4/Medication*\"]", "[\"/R4/Medication[\"]"),
        "8:16",
        "bad path glob",
        "close every [",
    );
    one(
        &DS.replace(
            "- host: fhir.example.org\n      paths: [\"/R4/Medication*\"]",
            "- file: ~/.aws/credentials",
        ),
        "7:13",
        "not absolute",
        "/home/*/.aws/**",
    );
    one(
        &DS.replace(
            "- host: fhir.example.org",
            "- host: fhir.example.org\n      file: /x",
        ),
        "8:7",
        "both host and file",
        "two list entries",
    );
    one(
        &contract("  allow:\n    secrets: [{path: /run/token, executables: [sh]}]\n"),
        "18:48",
        "executable \"sh\" is not an absolute path",
        "/usr/local/bin/",
    );
}

#[test]
fn identity_errors() {
    one(
        &contract("").replace("  identity: spiffe://clinic.example/ns/a/sa/b\n", ""),
        "13:1",
        "names no identity",
        "whom it governs",
    );
    one(
        &contract("  selectors: [k8s:ns:a]\n"),
        "17:3",
        "both identity and selectors",
        "keep identity",
    );
    one(
        &contract("").replace("spiffe://clinic.example/ns/a/sa/b", "clinic.example/sa/b"),
        "14:3",
        "is not a SPIFFE ID",
        "spiffe://",
    );
    let sel = |s: &str| {
        contract("").replace(
            "identity: spiffe://clinic.example/ns/a/sa/b",
            &format!("selectors: {s}"),
        )
    };
    one(
        &sel("[k8s:ns:a, k8s:namespace:b]"),
        "14:25",
        "bad selectors",
        "k8s:sa:med-summarizer",
    );
    one(
        &sel("[]"),
        "14:3",
        "at least one selector",
        "TYPE:KEY:VALUE",
    );
    assert!(load_str("r.yaml", &sel("[k8s:ns:a, \"k8s:pod-label:app:x\"]")).is_ok());
    // An ownerless contract loads (its activity becomes NHI-003) and is reported as a warning.
    for text in [
        contract("").replace("team@example.org", "\"\""),
        contract("").replace("  owner: team@example.org\n", ""),
    ] {
        let set = load_str("r.yaml", &text).unwrap();
        assert_eq!(set.contracts[0].owner, "");
        let w: Vec<String> = set.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].contains("has no owner") && w[0].contains("accountable"),
            "{w:#?}"
        );
    }
    let set = load_str("r.yaml", &contract("")).unwrap();
    assert!(set.warnings.is_empty());
    assert!(set.contracts[0].version.starts_with("sha256:"));
    assert_eq!(set.contracts[0].version.len(), 19);
    let other = load_str("r.yaml", &contract("").replace("team@", "other@")).unwrap();
    assert_ne!(other.contracts[0].version, set.contracts[0].version);
}

#[test]
fn paths_directories_and_missing_files() {
    let dir = std::env::temp_dir().join(format!("nhiwatch-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("b.yml"),
        contract("").split_once("---\n").unwrap().1,
    )
    .unwrap();
    std::fs::write(dir.join("a.yaml"), DS).unwrap();
    std::fs::write(dir.join("notes.txt"), "not rules").unwrap();
    let set = load_paths(std::slice::from_ref(&dir)).unwrap();
    assert_eq!((set.data_sources.len(), set.contracts.len()), (1, 1));
    assert_eq!(set.contracts[0].origin.file, dir.join("b.yml"));
    let missing = dir.join("missing.yaml");
    let e = load_paths(&[dir.clone(), missing.clone()]).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(
        e[0].to_string()
            .starts_with(&format!("{}:1:1: cannot read file", missing.display())),
        "{}",
        e[0]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The editor schema is written by hand: check it parses and that its enums are exactly what the
/// loader accepts (a schema value the loader rejects fails here; the counts come from exhaustive
/// matches, so a variant added in Rust breaks the build of this test until the schema follows). Full validation of the shipped
/// rules against it was done with Python's jsonschema; no light Rust validator was added for it.
#[test]
fn json_schema_agrees_with_the_loader() {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../rules/schema/nhiwatch-rules.schema.json"
    ));
    let schema: serde_json::Value = serde_json::from_str(text).unwrap();
    let values = |def: &str| -> Vec<String> {
        schema["$defs"][def]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("$defs.{def}.enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    fn all_parse<T: serde::de::DeserializeOwned + serde::Serialize>(vals: &[String], n: usize) {
        for v in vals {
            let t: T = serde_json::from_value(serde_json::Value::String(v.clone()))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(
                serde_json::to_value(&t).unwrap(),
                serde_json::Value::String(v.clone())
            );
        }
        assert_eq!(vals.len(), n, "{vals:?}");
    }
    use Classification as C;
    use CredentialKind as K;
    let classes = |c: C| match c {
        C::Phi
        | C::Pii
        | C::Financial
        | C::Credentials
        | C::Telemetry
        | C::Internal
        | C::Public => 7,
    };
    let methods = |m: Method| match m {
        Method::Get
        | Method::Head
        | Method::Post
        | Method::Put
        | Method::Patch
        | Method::Delete
        | Method::Options => 7,
    };
    let kinds = |k: K| match k {
        K::Jwt | K::Bearer | K::Basic | K::ApiKey | K::AwsSigv4 => 5,
    };
    let sharing = |s: Sharing| match s {
        Sharing::Forbidden | Sharing::Allowed => 2,
    };
    all_parse::<Classification>(&values("classification"), classes(C::Phi));
    all_parse::<Method>(&values("method"), methods(Method::Get));
    all_parse::<CredentialKind>(&values("credentialKind"), kinds(K::Jwt));
    all_parse::<Sharing>(&values("sharing"), sharing(Sharing::Allowed));
    assert_eq!(
        schema["properties"]["apiVersion"]["const"],
        schema::API_VERSION
    );
}

#[test]
fn file_data_sources_become_watch_patterns() {
    let text = r#"
apiVersion: nhiwatch.dev/v1
kind: DataSource
metadata: {name: a}
spec:
  classification: phi
  match:
    - file: /srv/exports/medications/**
    - file: /mnt/bh-archive/**/*.pdf
    - file: /etc/app/token
    - file: /data/*/notes/*.txt
    - host: example.org
"#;
    let set = load_str("r.yaml", text).unwrap();
    assert_eq!(
        watch_patterns(&set),
        [
            "/srv/exports/medications/",
            "/mnt/bh-archive/**/*.pdf",
            "/etc/app/token",
            "/data/"
        ]
    );
}

/// Runs `f` on its own thread and fails if it has not returned within 10 s, so a listing that
/// loops fails the test instead of hanging it.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{what} did not finish within 10 s: {e}"))
}

/// A rules directory `loopdir` holding `a.yaml` (a data source), `link.yml` (a symlink to a
/// contract outside it), `dir.yaml` (a symlink to itself: a directory with a rules name),
/// `sub/deep.yaml` (a second data source of the same name, an error if it were read) and the
/// given links, each `(name, target)`.
fn links_dir(links: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::symlink;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("loopdir");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir_all(root.path().join("outside")).unwrap();
    std::fs::write(dir.join("a.yaml"), DS).unwrap();
    std::fs::write(dir.join("sub/deep.yaml"), DS).unwrap();
    std::fs::write(
        root.path().join("outside/c.yml"),
        contract("").split_once("---\n").unwrap().1,
    )
    .unwrap();
    symlink("../outside/c.yml", dir.join("link.yml")).unwrap();
    symlink(".", dir.join("dir.yaml")).unwrap();
    for (name, target) in links {
        symlink(target, dir.join(name)).unwrap();
    }
    (root, dir)
}

/// The loader, the watcher and `nhiwatch check` all read `files::rules_files`'s list: the
/// directory's own `*.yaml`/`*.yml` files, symlinked files included, nothing below it.
fn assert_one_listing(dir: PathBuf) {
    let want = vec![dir.join("a.yaml"), dir.join("link.yml")];
    let listed = within("rules_files", {
        let dir = dir.clone();
        move || files::rules_files(&[dir])
    });
    assert!(listed.errors.is_empty(), "{:?}", listed.errors);
    assert_eq!(listed.files, want);
    let watched = within("the watcher's signature", {
        let dir = dir.clone();
        move || watch::signature(&[dir])
    });
    let watched: Vec<PathBuf> = watched.into_iter().map(|(p, ..)| p).collect();
    assert_eq!(watched, want);
    let set = load_paths(std::slice::from_ref(&dir)).unwrap_or_else(|e| panic!("{e:?}"));
    let mut loaded: Vec<PathBuf> = Vec::new();
    let origins = set.data_sources.iter().map(|d| &d.origin);
    for o in origins.chain(set.contracts.iter().map(|c| &c.origin)) {
        if !loaded.contains(&o.file) {
            loaded.push(o.file.clone());
        }
    }
    assert_eq!(loaded, want);
}

#[test]
fn a_dot_link_in_the_rules_directory_is_not_followed() {
    let (_root, dir) = links_dir(&[("dot", ".")]);
    assert_one_listing(dir);
}

#[test]
fn a_link_back_to_the_rules_directory_is_not_followed() {
    let (_root, dir) = links_dir(&[("self", "../loopdir")]);
    assert_one_listing(dir);
}

/// Both links together made the old recursive watcher walk 2^40 paths.
#[test]
fn two_loops_in_the_rules_directory_do_not_multiply() {
    let (_root, dir) = links_dir(&[("dot", "."), ("self", "../loopdir")]);
    assert_one_listing(dir);
}

#[test]
fn a_file_named_directly_is_read_whatever_its_name() {
    let (root, dir) = links_dir(&[]);
    let notes = root.path().join("notes.txt");
    std::fs::write(&notes, "not rules").unwrap();
    let listed = files::rules_files(&[dir.clone(), notes.clone()]);
    assert_eq!(
        listed.files,
        [dir.join("a.yaml"), dir.join("link.yml"), notes]
    );
}

/// Credential hygiene keys: declared audiences, scope grants, requireAudience and maxKeyAge load,
/// and each bad value is one located error.
#[test]
fn credential_hygiene_keys() {
    let ds = DS.replace(
        "      paths: [\"/R4/Medication*\"]\n",
        "      paths: [\"/R4/Medication*\"]\n  audiences: [\"api://ehr-prod\"]\n",
    );
    let text = contract(
        "  allow:\n    dataSources: [ehr]\n    scopes: [{dataSource: ehr, scopes: [\"patient/*.read\", openid]}]\n  credentials: {requireAudience: true, maxKeyAge: 30d}\n",
    )
    .replacen(DS, &ds, 1);
    let set = load_str("r.yaml", &text).unwrap();
    assert_eq!(set.data_sources[0].audiences, ["api://ehr-prod"]);
    let c = &set.contracts[0];
    assert!(c.credentials.require_audience);
    assert_eq!(
        c.credentials.max_key_age,
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
    assert_eq!(c.allow.scopes[0].scopes, ["patient/*.read", "openid"]);
    let g = &c.allow.scopes[0].globs[0];
    assert!(g.is_match("patient/Observation.read"));
    assert!(!g.is_match("system/Observation.read") && !g.is_match("patient/a/b.read"));
    one(
        &contract("  credentials: {maxKeyAge: 2h}\n"),
        "17:17",
        "bad key age \"2h\"",
        "counted in days",
    );
    one(
        &contract("  allow:\n    scopes: [{dataSource: ehr, scopes: [a]}]\n"),
        "18:27",
        "scopes for \"ehr\", which allow.dataSources does not grant",
        "add ehr to allow.dataSources",
    );
    one(
        &contract(
            "  allow:\n    dataSources: [ehr]\n    scopes: [{dataSource: ehr, scopes: []}]\n",
        ),
        "19:27",
        "an empty scopes list",
        "not judge",
    );
    let e = errors(&DS.replace(
        "      paths: [\"/R4/Medication*\"]\n",
        "      paths: [\"/R4/Medication*\"]\n  audiences: [\"\"]\n",
    ));
    assert!(e[0].starts_with("r.yaml:9:3: an empty audience"), "{e:?}");
}
