//! Finding → OCSF 1.8 Detection Finding (class 2004): required attributes, the workload as a service actor, evidences, anomaly analyses, our extras under `unmapped`.

use serde_json::{json, Map, Value};

use crate::detect::finding::{Analytic, Finding, Phase, Rule, Severity};

pub const OCSF_VERSION: &str = "1.8.0";
const CLASS_UID: u32 = 2004;
const CATEGORY_UID: u32 = 2;

fn severity_id(s: Severity) -> u8 {
    match s {
        Severity::Info => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

/// OCSF analytic types: 1 Rule, 2 Behavioral, 3 Statistical.
/// From the catalogue; a rule id the catalogue does not know (a newer recording) is a Rule.
fn analytic_type(rule: Option<Rule>) -> (u8, &'static str) {
    let a = rule.map_or(Analytic::Rule, Rule::analytic);
    (a.type_id(), a.name())
}

fn ms(ns: i64) -> i64 {
    ns.div_euclid(1_000_000)
}

/// The OCSF event for one finding. `Opened` is activity 1 (Create); a `Summary` of the same
/// `dedup_key` is activity 2 (Update) with the final count.
pub fn detection_finding(f: &Finding) -> Value {
    let rule = Rule::from_id(&f.rule.id);
    let (activity_id, activity) = match f.phase {
        Phase::Opened => (1, "Create"),
        Phase::Summary => (2, "Update"),
    };
    let (analytic_type_id, analytic_type_name) = analytic_type(rule);
    let id = &f.identity;
    let ev = &f.evidence;

    let mut user = Map::new();
    user.insert("uid".into(), json!(id.id));
    user.insert(
        "name".into(),
        json!(id
            .service_account
            .as_deref()
            .or(id.unit.as_deref())
            .or(id.user.as_deref())
            .unwrap_or(&id.id)),
    );
    user.insert("type_id".into(), json!(4));
    user.insert("type".into(), json!("Service"));
    if let Some(c) = &ev.credential {
        // The keyed fingerprint identifies the credential; the secret never left the parser.
        user.insert(
            "programmatic_credentials".into(),
            json!([{"uid": c.fingerprint, "type": c.kind}]),
        );
    }
    let mut actor = Map::new();
    actor.insert("user".into(), Value::Object(user));
    if let Some(exe) = ev.executable.as_deref().or(id.exe.as_deref()) {
        actor.insert("process".into(), json!({"file": {"path": exe}}));
    }

    let mut evidence = Map::new();
    if let Some(m) = &ev.method {
        evidence.insert(
            "api".into(),
            json!({"operation": m, "request": {"uid": f.dedup_key}}),
        );
    }
    if let Some(d) = &ev.destination {
        evidence.insert("dst_endpoint".into(), json!({"hostname": d}));
    }
    if let Some(p) = &ev.file {
        evidence.insert("file".into(), json!({"path": p, "type_id": 1}));
    }
    evidence.insert(
        "data".into(),
        serde_json::to_value(ev).unwrap_or(Value::Null),
    );

    let mut resources = Vec::new();
    if let (Some(ns), Some(pod)) = (&id.namespace, &id.pod) {
        resources.push(json!({"type": "Pod", "name": pod, "namespace": ns, "uid": id.pod_uid}));
    }
    for d in ev.data_source.iter().chain(ev.data_sources.iter()) {
        if resources
            .iter()
            .any(|r| r["name"] == d.as_str() && r["type"] == "DataSource")
        {
            continue;
        }
        let mut r = json!({"type": "DataSource", "name": d});
        // The evidence's classification belongs to its single `data_source`, not to the others.
        if let (Some(c), true) = (&ev.classification, ev.data_source.as_ref() == Some(d)) {
            r["data_classification"] = json!(c);
        }
        resources.push(r);
    }

    let mut out = json!({
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("Detection Finding: {activity}"),
        "severity_id": severity_id(f.severity),
        "severity": capitalise(f.severity.name()),
        "status_id": 1,
        "status": "New",
        "is_alert": true,
        "time": ms(f.last_seen),
        "count": f.count,
        "message": f.summary,
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "nhiwatch", "vendor_name": "nhiwatch", "version": env!("CARGO_PKG_VERSION")},
            "correlation_uid": f.dedup_key,
            "log_name": "findings",
        },
        "finding_info": {
            "uid": f.dedup_key,
            "title": rule.map_or_else(|| f.rule.name.clone(), |r| r.title().to_owned()),
            "desc": f.summary,
            "types": [f.rule.name],
            "first_seen_time": ms(f.time),
            "last_seen_time": ms(f.last_seen),
            "analytic": {"uid": f.rule.id, "name": f.rule.name, "type_id": analytic_type_id, "type": analytic_type_name},
        },
        "actor": Value::Object(actor),
        "device": {"hostname": id.node, "type_id": 0},
        "evidences": [Value::Object(evidence)],
        "resources": resources,
        "unmapped": {
            "identity": serde_json::to_value(&*f.identity).unwrap_or(Value::Null),
            "contract": f.contract,
            "phase": f.phase,
        },
    });
    if let (Some(observed), Some(expected)) = (ev.observed, ev.expected) {
        out["anomaly_analyses"] = json!([{
            "analysis_targets": [{"name": ev.data_source, "type": "DataSource"}],
            "observations": [{"parameter": ev.metric, "value": observed.to_string(), "timeframe": {"duration": ev.window_seconds.map(|s| s * 1000)}}],
            "baselines": [{"observation_parameter": ev.metric, "observations": [{"parameter": ev.metric, "value": expected.to_string()}]}],
        }]);
    }
    out
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(line: &str) -> Finding {
        serde_json::from_str(line).unwrap()
    }

    const COMBO: &str = r#"{"kind":"finding","time":"2026-11-25T15:04:00.000000000Z","last_seen":"2026-11-25T15:04:00.000000000Z","rule":{"id":"NHI-030","name":"combination-not-allowed"},"severity":"high","summary":"fitness-sync touched mental-health-records together with fitness-app","identity":{"id":"spiffe://clinic.example/ns/patient-apps/sa/fitness-sync","kind":"kubernetes","namespace":"patient-apps","service_account":"fitness-sync","pod":"fitness-sync-84d5b7c9f-6hjkw","pod_uid":"e364eaef","node":"node-2"},"contract":{"name":"fitness-sync","version":"sha256:9ff2208834f3","file":"rules/contracts.yaml","line":62},"evidence":{"data_source":"mental-health-records","data_sources":["fitness-app","mental-health-records"],"window_seconds":600},"count":1,"phase":"opened","dedup_key":"755c108ed3e72e17"}"#;

    #[test]
    fn required_attributes_of_a_detection_finding() {
        let v = detection_finding(&finding(COMBO));
        for k in [
            "activity_id",
            "category_uid",
            "class_uid",
            "severity_id",
            "time",
            "type_uid",
            "metadata",
            "finding_info",
        ] {
            assert!(!v[k].is_null(), "{k} missing: {v:#}");
        }
        assert_eq!(v["class_uid"], 2004);
        assert_eq!(v["type_uid"], 200401);
        assert_eq!(v["severity_id"], 4);
        assert_eq!(v["time"], 1_795_619_040_000i64);
        assert_eq!(v["finding_info"]["uid"], "755c108ed3e72e17");
        assert_eq!(v["finding_info"]["analytic"]["uid"], "NHI-030");
        assert_eq!(v["finding_info"]["analytic"]["type_id"], 1);
        assert_eq!(
            v["actor"]["user"]["uid"],
            "spiffe://clinic.example/ns/patient-apps/sa/fitness-sync"
        );
        assert_eq!(v["actor"]["user"]["type_id"], 4);
        assert_eq!(v["unmapped"]["contract"]["version"], "sha256:9ff2208834f3");
        let names: Vec<&str> = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "fitness-sync-84d5b7c9f-6hjkw",
                "mental-health-records",
                "fitness-app"
            ]
        );
    }

    #[test]
    fn summaries_update_and_spikes_carry_the_baseline() {
        let line = COMBO
            .replace("\"phase\":\"opened\"", "\"phase\":\"summary\"")
            .replace("\"count\":1", "\"count\":7")
            .replace("NHI-030", "NHI-040")
            .replace("combination-not-allowed", "volume-spike")
            .replace(
                "\"window_seconds\":600",
                "\"window_seconds\":60,\"metric\":\"requests\",\"observed\":31.0,\"expected\":5.0",
            );
        let v = detection_finding(&finding(&line));
        assert_eq!(v["type_uid"], 200402);
        assert_eq!(v["count"], 7);
        assert_eq!(v["finding_info"]["analytic"]["type_id"], 3);
        assert_eq!(v["anomaly_analyses"][0]["observations"][0]["value"], "31");
        assert_eq!(
            v["anomaly_analyses"][0]["baselines"][0]["observations"][0]["value"],
            "5"
        );
    }
}
