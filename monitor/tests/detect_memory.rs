//! Detector memory at scale (issue 16 item 6), scaled down to a test: 1,000 identities presenting 100,000 distinct credential fingerprints through `detect::Engine` with the default caps must keep the process's peak RSS growth under a bound; the full size is `cargo bench -p nhiwatch --bench detect_memory`.
//!
//! One test in its own binary, so the peak (VmHWM) is this workload's alone.

use std::sync::Arc;

use nhiwatch::{
    contracts::RuleSet,
    detect::{DetectConfig, Engine},
    events::observation::{Activity, ApiCallSeen, CredentialSeen, Observation},
    identity::{IdentityKind, WorkloadIdentity},
};

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Peak RSS growth allowed, MiB. Measured on this workload: 121 MiB before the compact
/// credential state (main at cccb20c), 30 MiB after; the bound sits between with room for
/// allocator differences.
const BOUND_MIB: f64 = 48.0;

#[test]
fn a_hundred_thousand_fingerprints_stay_within_bound() {
    const IDS: usize = 1_000;
    const FPS: usize = 100_000;
    let identities: Vec<Arc<WorkloadIdentity>> = (0..IDS)
        .map(|i| {
            Arc::new(WorkloadIdentity {
                id: format!("spiffe://test.example/ns/ns-{}/sa/sa-{i}", i % 50),
                kind: IdentityKind::Kubernetes,
                namespace: Some(format!("ns-{}", i % 50)),
                service_account: Some(format!("sa-{i}")),
                pod: Some(format!("pod-{i}")),
                pod_uid: None,
                container: Some("app".into()),
                container_id: None,
                image: None,
                owner: None,
                unit: None,
                uid: None,
                user: None,
                exe: None,
                node: "test-node".into(),
            })
        })
        .collect();
    let exe: Arc<str> = "/app/bin".into();
    let base = status_kib("VmRSS:");
    let mut engine = Engine::new(RuleSet::default(), DetectConfig::default());
    let mut out = Vec::new();
    for k in 0..FPS {
        let i = k % IDS;
        let o = Observation {
            time: 1_795_000_000_000_000_000 + (k as i64) * 100_000,
            identity: identities[i].clone(),
            labels: None,
            pid: 1000 + i as u32,
            exe: Some(exe.clone()),
            activity: Activity::ApiCall(ApiCallSeen {
                host: Some(format!("api-{}.example.org", k % 20)),
                method: Some("GET".into()),
                path: "/v1/items/{id}".into(),
                status: Some(200),
                request_bytes: 400,
                response_bytes: 4000,
                credentials: vec![CredentialSeen {
                    kind: "bearer".into(),
                    fingerprint: format!("hmac-sha256:{:032x}", k as u128 * 0x9e37_79b9_7f4a_7c15),
                    vendor: None,
                    token_type: None,
                    long_lived: None,
                    access_key_id: None,
                    username: None,
                    jwt: None,
                }],
            }),
        };
        engine.observe(&o, &mut out);
        out.clear();
    }
    let grown = (status_kib("VmHWM:").saturating_sub(base)) as f64 / 1024.0;
    eprintln!(
        "peak RSS growth {grown:.1} MiB for {IDS} identities, {FPS} fingerprints ({} kept)",
        engine.credentials()
    );
    // Nothing was evicted at this size: the state is all there, only smaller.
    assert_eq!(engine.identities(), IDS);
    assert_eq!(engine.credentials(), FPS);
    assert!(
        grown <= BOUND_MIB,
        "detector state grew the peak RSS by {grown:.1} MiB (bound {BOUND_MIB} MiB)"
    );
}
