#![no_main]
//! Arbitrary JSON lines → Observation → detectors with the shipped rules: never a panic, findings well-formed and bounded, replay deterministic.

use std::sync::{Arc, OnceLock};

use nhiwatch::{
    contracts::load_texts,
    detect::{compiled::Compiled, finding::Phase, DetectConfig, Engine},
    events::observation::Observation,
};

/// The shipped rules, compiled once (globs are regexes: compiling per input would be all the fuzzer does).
fn rules() -> Arc<Compiled> {
    static RULES: OnceLock<Arc<Compiled>> = OnceLock::new();
    RULES
        .get_or_init(|| {
            let files = vec![
                ("data-sources.yaml".into(), include_str!("../../../rules/data-sources.yaml").into()),
                ("contracts.yaml".into(), include_str!("../../../rules/contracts.yaml").into()),
            ];
            Arc::new(Compiled::new(load_texts(&files).expect("shipped rules load")))
        })
        .clone()
}

fn run(obs: &[Observation]) -> String {
    let cfg = DetectConfig {
        max_identities: 8,
        max_credentials: 8,
        max_open_findings: 16,
        ..DetectConfig::default()
    };
    let mut e = Engine::with_compiled(rules(), cfg);
    let mut out = Vec::new();
    for o in obs {
        e.observe(o, &mut out);
        assert!(e.identities() <= 8 && e.credentials() <= 8);
        assert!(e.open_findings() <= 32);
    }
    e.finish(&mut out);
    assert_eq!(e.open_findings(), 0);
    for f in &out {
        assert!(f.count >= 1 && f.last_seen >= f.time);
        // A finding opens with one occurrence; a summary exists only for repeats.
        match f.phase {
            Phase::Opened => assert_eq!(f.count, 1),
            Phase::Summary => assert!(f.count > 1),
        }
        assert_eq!(f.dedup_key.len(), 16);
        assert!(nhiwatch::detect::finding::Rule::from_id(&f.rule.id).is_some());
    }
    serde_json::to_string(&out).expect("findings serialise")
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let obs: Vec<Observation> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if obs.is_empty() {
        return;
    }
    // The same input gives the same findings (replay is deterministic).
    assert_eq!(run(&obs), run(&obs));
});
