//! The scenario corpus: takes each `tests/scenarios/NAME/` (observations, expected findings, optional rules and config), replays it through the real binary and passes only on exactly the expected findings, twice alike, with no secret in the output.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;
use serde_json::{Map, Value};

/// The rule catalogue of d-spec.md: the corpus must expect each of them somewhere.
const CATALOGUE: &[&str] = &[
    "NHI-001", "NHI-002", "NHI-003", "NHI-010", "NHI-011", "NHI-012", "NHI-020", "NHI-021",
    "NHI-030", "NHI-031", "NHI-040", "NHI-041", "NHI-050", "NHI-051", "NHI-052", "NHI-053",
    "NHI-054", "NHI-055", "NHI-056", "NHI-057", "NHI-058", "NHI-059", "NHI-060",
];

/// `expected.yaml` of one scenario.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    description: String,
    /// Opened findings, as a multiset; empty: the scenario must raise nothing at all.
    findings: Vec<ExpectedFinding>,
    /// Strings (fake secrets) that must appear in no output line.
    #[serde(default)]
    never: Vec<String>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ExpectedFinding {
    rule: String,
    identity: String,
    /// Total occurrences: the count of the finding's summary line, or 1 without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    /// Fields that must be present and equal; nested objects compare as subsets too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    evidence: Option<Map<String, Value>>,
}

/// One opened finding of a replay, with the count its summary line (if any) gave it.
#[derive(Debug)]
struct Reported {
    rule: String,
    identity: String,
    evidence: Value,
    count: u64,
    summary: String,
}

struct Scenario {
    name: String,
    dir: PathBuf,
    expected: Expected,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios")
}

fn load_corpus() -> Vec<Scenario> {
    let root = corpus_dir();
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| p.join("observations.jsonl").is_file())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let name = dir
                .file_name()
                .expect("scenario dir name")
                .to_string_lossy()
                .into_owned();
            let path = dir.join("expected.yaml");
            let text =
                fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let expected: Expected = serde_yaml_ng::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Scenario {
                name,
                dir,
                expected,
            }
        })
        .collect()
}

/// Runs `nhiwatch replay` in a fresh directory (so no state of an earlier run is found).
fn replay(s: &Scenario, run: &str) -> Result<(String, String), String> {
    replay_with(s, run, &[])
}

fn replay_with(s: &Scenario, run: &str, extra: &[&str]) -> Result<(String, String), String> {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("scenarios")
        .join(&s.name)
        .join(run);
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let rules = if s.dir.join("rules").is_dir() {
        s.dir.join("rules")
    } else {
        corpus_dir().join("../../rules")
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nhiwatch"));
    cmd.current_dir(&scratch)
        .arg("replay")
        .arg("--rules")
        .arg(&rules);
    let config = s.dir.join("config.yaml");
    if config.is_file() {
        cmd.arg("--config").arg(&config);
    }
    cmd.args(extra).arg(s.dir.join("observations.jsonl"));
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run nhiwatch: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!(
            "`nhiwatch replay` failed ({}); stderr:\n{}",
            out.status,
            tail(&stderr, 40)
        ));
    }
    Ok((stdout, stderr))
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Opened findings of a replay's stdout; a summary line sets the count of the opened finding it closes.
fn parse_findings(stdout: &str) -> Result<Vec<Reported>, String> {
    let mut found: Vec<Reported> = Vec::new();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    for (n, line) in stdout
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |what: &str| format!("stdout line {}: {what}: {line}", n + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| at(&format!("not JSON ({e})")))?;
        if v["kind"] != "finding" {
            return Err(at("not a finding (kind != \"finding\")"));
        }
        let field = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let (Some(rule), Some(identity), Some(key)) = (
            field("/rule/id"),
            field("/identity/id"),
            field("/dedup_key"),
        ) else {
            return Err(at("rule.id, identity.id or dedup_key missing"));
        };
        match v["phase"].as_str() {
            Some("opened") => {
                open.insert(key, found.len());
                found.push(Reported {
                    rule,
                    identity,
                    evidence: v.get("evidence").cloned().unwrap_or(Value::Null),
                    count: 1,
                    summary: field("/summary").unwrap_or_default(),
                });
            }
            Some("summary") => {
                let i = *open
                    .get(&key)
                    .ok_or_else(|| at("summary without an opened finding before it"))?;
                let f = &mut found[i];
                if (f.rule.as_str(), f.identity.as_str()) != (rule.as_str(), identity.as_str()) {
                    return Err(at(
                        "summary names another rule or identity than its opened line",
                    ));
                }
                f.count = v["count"]
                    .as_u64()
                    .ok_or_else(|| at("summary without a count"))?;
            }
            _ => return Err(at("phase is neither opened nor summary")),
        }
    }
    Ok(found)
}

/// `want` ⊆ `got`: objects by key (recursively), arrays element-wise with equal length, numbers by value.
fn subset(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, wv)| g.get(k).is_some_and(|gv| subset(wv, gv))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| subset(a, b))
        }
        (Value::Number(w), Value::Number(g)) => w.as_f64() == g.as_f64(),
        _ => want == got,
    }
}

fn matches(e: &ExpectedFinding, r: &Reported) -> bool {
    e.rule == r.rule
        && e.identity == r.identity
        && e.count.is_none_or(|c| c == r.count)
        && e.evidence
            .as_ref()
            .is_none_or(|ev| subset(&Value::Object(ev.clone()), &r.evidence))
}

/// Pairs expected with reported findings one to one (a maximum bipartite matching, so that a loose
/// pattern never steals the finding a stricter one needed). Returns the unpaired of each side.
fn pair_up(expected: &[ExpectedFinding], reported: &[Reported]) -> (Vec<usize>, Vec<usize>) {
    fn augment(
        e: usize,
        edges: &[Vec<usize>],
        seen: &mut [bool],
        owner: &mut [Option<usize>],
    ) -> bool {
        for &r in &edges[e] {
            if !seen[r] {
                seen[r] = true;
                if owner[r].is_none_or(|o| augment(o, edges, seen, owner)) {
                    owner[r] = Some(e);
                    return true;
                }
            }
        }
        false
    }
    let edges: Vec<Vec<usize>> = expected
        .iter()
        .map(|e| {
            (0..reported.len())
                .filter(|&r| matches(e, &reported[r]))
                .collect()
        })
        .collect();
    let mut owner: Vec<Option<usize>> = vec![None; reported.len()];
    let missing = (0..expected.len())
        .filter(|&e| !augment(e, &edges, &mut vec![false; reported.len()], &mut owner))
        .collect();
    let extra = (0..reported.len())
        .filter(|&r| owner[r].is_none())
        .collect();
    (missing, extra)
}

/// Everything wrong with one scenario's replay output, as readable lines (empty: it passed).
fn judge(expected: &Expected, stdout: &str) -> String {
    let reported = match parse_findings(stdout) {
        Ok(r) => r,
        Err(e) => return format!("  {e}\n"),
    };
    let (missing, extra) = pair_up(&expected.findings, &reported);
    let mut out = String::new();
    if !missing.is_empty() {
        out.push_str("  expected, not reported:\n");
        for &i in &missing {
            let e = &expected.findings[i];
            let _ = writeln!(
                out,
                "    - {}",
                serde_json::to_string(e).unwrap_or_default()
            );
        }
    }
    if !extra.is_empty() {
        out.push_str("  reported, not expected:\n");
        for &i in &extra {
            let r = &reported[i];
            let _ = writeln!(
                out,
                "    + {} {} count={} evidence={} ({})",
                r.rule, r.identity, r.count, r.evidence, r.summary
            );
        }
    }
    if !out.is_empty() {
        let _ = writeln!(out, "  all reported ({}):", reported.len());
        for r in &reported {
            let _ = writeln!(
                out,
                "    {} {} count={} evidence={}",
                r.rule, r.identity, r.count, r.evidence
            );
        }
    }
    out
}

#[test]
fn every_scenario_gives_exactly_its_expected_findings() {
    let only = std::env::var("NHIWATCH_SCENARIO").ok();
    let corpus = load_corpus();
    let mut failures = String::new();
    let mut ran = 0;
    for s in corpus
        .iter()
        .filter(|s| only.as_deref().is_none_or(|o| s.name.contains(o)))
    {
        ran += 1;
        let mut problems = String::new();
        // The two runs go in parallel: a debug binary spends most of a run compiling the rules' globs.
        let (first, second) = std::thread::scope(|t| {
            let a = t.spawn(|| replay(s, "first"));
            let b = replay(s, "second");
            (a.join().expect("replay thread"), b)
        });
        match (first, second) {
            (Ok((out1, err1)), Ok((out2, err2))) => {
                problems.push_str(&judge(&s.expected, &out1));
                if err1.contains("not an observation") {
                    let _ = writeln!(problems, "  replay skipped lines:\n{}", tail(&err1, 10));
                }
                if out1 != out2 {
                    problems.push_str(
                        "  replay is not deterministic: two runs printed different findings\n",
                    );
                }
                for secret in &s.expected.never {
                    for (stream, text) in [("stdout", &out1), ("stderr", &err1), ("stderr", &err2)]
                    {
                        if text.contains(secret.as_str()) {
                            let _ = writeln!(problems, "  {stream} contains the secret {secret:?}");
                        }
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => problems.push_str(&format!("  {e}\n")),
        }
        if problems.is_empty() {
            eprintln!("scenario {}: ok", s.name);
        } else {
            eprintln!("scenario {}: FAILED", s.name);
            let _ = write!(
                failures,
                "\nscenario {} — {}\n{problems}",
                s.name, s.expected.description
            );
        }
    }
    assert!(ran > 0, "no scenario matched NHIWATCH_SCENARIO={only:?}");
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn corpus_covers_the_catalogue_with_benign_twins() {
    let corpus = load_corpus();
    let catalogue: BTreeSet<&str> = CATALOGUE.iter().copied().collect();
    let mut covered = BTreeSet::new();
    for s in &corpus {
        assert!(
            !s.expected.description.trim().is_empty(),
            "{}: empty description",
            s.name
        );
        for e in &s.expected.findings {
            assert!(
                catalogue.contains(e.rule.as_str()),
                "{}: unknown rule {}",
                s.name,
                e.rule
            );
            assert!(
                e.identity.starts_with("spiffe://"),
                "{}: {}",
                s.name,
                e.identity
            );
            covered.insert(e.rule.as_str());
        }
        // A never-string in the observations would make the secret check meaningless.
        let obs = fs::read_to_string(s.dir.join("observations.jsonl")).expect("observations");
        for secret in &s.expected.never {
            assert!(
                !obs.contains(secret.as_str()),
                "{}: observations hold the never-string {secret:?}",
                s.name
            );
        }
        for line in obs.lines() {
            serde_json::from_str::<nhiwatch::events::observation::Observation>(line)
                .unwrap_or_else(|e| panic!("{}: not an Observation ({e}): {line}", s.name));
        }
    }
    let uncovered: Vec<_> = catalogue.difference(&covered).collect();
    assert!(
        uncovered.is_empty(),
        "rules no scenario expects: {uncovered:?}"
    );
    let benign = corpus
        .iter()
        .filter(|s| s.expected.findings.is_empty())
        .count();
    assert!(
        benign * 3 >= corpus.len(),
        "only {benign} of {} scenarios are benign",
        corpus.len()
    );
}

#[test]
fn the_matcher_catches_missing_extra_and_miscounted_findings() {
    let line = |rule: &str, phase: &str, count: u64, key: &str, ev: &str| {
        format!(
            r#"{{"kind":"finding","rule":{{"id":"{rule}","name":"x"}},"identity":{{"id":"spiffe://t/a","kind":"unix","node":"n"}},"evidence":{ev},"count":{count},"phase":"{phase}","dedup_key":"{key}","summary":"s"}}"#
        )
    };
    let stdout = [
        line(
            "NHI-040",
            "opened",
            1,
            "k1",
            r#"{"metric":"bytes","observed":3.0,"credential":{"kind":"jwt","fingerprint":"f"}}"#,
        ),
        line("NHI-012", "opened", 1, "k2", r#"{"destination":"a"}"#),
        line("NHI-012", "summary", 4, "k2", r#"{"destination":"a"}"#),
    ]
    .join("\n");
    let exp = |y: &str| -> Expected { serde_yaml_ng::from_str(y).expect("yaml") };
    let ok = exp(r#"
description: d
findings:
  - {rule: NHI-012, identity: "spiffe://t/a", count: 4}
  - {rule: NHI-040, identity: "spiffe://t/a", evidence: {observed: 3, credential: {kind: jwt}}}
"#);
    assert_eq!(judge(&ok, &stdout), "");
    let miscounted = exp(r#"
description: d
findings:
  - {rule: NHI-012, identity: "spiffe://t/a", count: 1}
  - {rule: NHI-040, identity: "spiffe://t/a"}
"#);
    let j = judge(&miscounted, &stdout);
    assert!(
        j.contains("expected, not reported") && j.contains("+ NHI-012"),
        "{j}"
    );
    let too_few =
        exp("description: d\nfindings:\n  - {rule: NHI-040, identity: \"spiffe://t/a\"}\n");
    assert!(judge(&too_few, &stdout).contains("+ NHI-012"));
    let none = exp("description: d\nfindings: []\n");
    assert!(judge(&none, &stdout).contains("reported, not expected"));
    let wrong_evidence = exp(r#"
description: d
findings:
  - {rule: NHI-012, identity: "spiffe://t/a"}
  - {rule: NHI-040, identity: "spiffe://t/a", evidence: {credential: {kind: basic}}}
"#);
    assert!(judge(&wrong_evidence, &stdout).contains("expected, not reported"));
    let orphan = line("NHI-012", "summary", 2, "zz", "{}");
    assert!(judge(&none, &orphan).contains("summary without an opened finding"));
}

/// The OCSF shape the SIEM sinks send carries exactly the native findings: same order, rule,
/// dedup key, phase, severity and count, as Detection Findings (class 2004).
#[test]
fn ocsf_replay_is_the_native_replay_as_detection_findings() {
    let mut compared = 0;
    for s in load_corpus() {
        let (native, _) = replay(&s, "native").unwrap();
        let (ocsf, _) = replay_with(&s, "ocsf", &["--format", "ocsf"]).unwrap();
        let native: Vec<Value> = native
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ocsf: Vec<Value> = ocsf
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(native.len(), ocsf.len(), "{}", s.name);
        for (n, o) in native.iter().zip(&ocsf) {
            let ctx = format!("{}: {n}\n{o}", s.name);
            assert_eq!(o["class_uid"], 2004, "{ctx}");
            assert_eq!(
                o["finding_info"]["analytic"]["uid"], n["rule"]["id"],
                "{ctx}"
            );
            assert_eq!(o["finding_info"]["uid"], n["dedup_key"], "{ctx}");
            assert_eq!(o["count"], n["count"], "{ctx}");
            assert_eq!(o["actor"]["user"]["uid"], n["identity"]["id"], "{ctx}");
            let (activity, type_uid) = if n["phase"] == "opened" {
                (1, 200401)
            } else {
                (2, 200402)
            };
            assert_eq!(o["activity_id"], activity, "{ctx}");
            assert_eq!(o["type_uid"], type_uid, "{ctx}");
            let sev = ["info", "low", "medium", "high", "critical"]
                .iter()
                .position(|x| n["severity"] == *x)
                .unwrap() as u64
                + 1;
            assert_eq!(o["severity_id"], sev, "{ctx}");
            compared += 1;
        }
    }
    assert!(compared > 50, "only {compared} findings compared");
}
