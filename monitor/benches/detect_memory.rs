//! Detector memory at scale: feeds `detect::Engine` (default settings and caps) API calls from N identities presenting M distinct credential fingerprints, and prints the process's peak RSS.
//!
//! `cargo bench -p nhiwatch --bench detect_memory` (N = 10,000, M = 1,000,000); `-- N M` for
//! other sizes. Observations are generated one at a time and dropped after judging, so the peak
//! is the engine's state plus the process's own baseline (both printed). Prints `name: value unit`
//! lines; `cargo xtask bench` copies them into BENCHMARKS.md.

use std::{sync::Arc, time::Instant};

use nhiwatch::{
    contracts::RuleSet,
    detect::{DetectConfig, Engine},
    events::observation::{Activity, ApiCallSeen, CredentialSeen, Observation},
    identity::{IdentityKind, WorkloadIdentity},
};

/// A `VmHWM:` or `VmRSS:` line of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; numbers are the sizes.
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace('_', "").parse().ok())
        .collect();
    let n_ids = sizes.first().copied().unwrap_or(10_000);
    let n_fps = sizes.get(1).copied().unwrap_or(1_000_000);
    // Up to 100,000 identities are made once and shared, as the pipeline shares one `Arc` per
    // identity; beyond that each observation gets its own, so the generator's memory stays small.
    let made = n_ids.min(100_000);
    let identity = |i: usize| {
        let ns = format!("ns-{}", i % 50);
        let sa = format!("sa-{i}");
        Arc::new(WorkloadIdentity {
            id: format!("spiffe://bench.example/ns/{ns}/sa/{sa}"),
            kind: IdentityKind::Kubernetes,
            namespace: Some(ns),
            service_account: Some(sa),
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
            node: "bench-node".into(),
        })
    };
    let identities: Vec<Arc<WorkloadIdentity>> = (0..made).map(identity).collect();
    let exe: Arc<str> = "/app/bin".into();
    let base_kib = status_kib("VmRSS:");
    let mut engine = Engine::new(RuleSet::default(), DetectConfig::default());
    let mut out = Vec::new();
    let mut findings = 0usize;
    let t = Instant::now();
    // Fingerprint k belongs to identity k mod N: every identity presents M/N distinct ones
    // (rotating tokens), each once, 10,000 API calls a second of record time.
    for k in 0..n_fps {
        let i = k % n_ids;
        let o = Observation {
            time: 1_795_000_000_000_000_000 + (k as i64) * 100_000,
            identity: identities.get(i).cloned().unwrap_or_else(|| identity(i)),
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
        findings += out.len();
        out.clear();
    }
    let secs = t.elapsed().as_secs_f64();
    let peak_kib = status_kib("VmHWM:");
    let s = &engine.stats;
    println!("detect_memory_identities: {n_ids} identities");
    println!("detect_memory_fingerprints: {n_fps} fingerprints");
    println!(
        "detect_memory_peak_rss_mib: {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    println!(
        "detect_memory_base_rss_mib: {:.1} MiB",
        base_kib as f64 / 1024.0
    );
    println!(
        "detect_memory_kept: {} identities {} credentials",
        engine.identities(),
        engine.credentials()
    );
    println!(
        "detect_memory_evicted: {} identities {} credentials",
        s.identities_evicted, s.credentials_evicted
    );
    println!("detect_memory_findings: {findings} findings");
    println!(
        "detect_memory_rate: {:.0} observations/s",
        n_fps as f64 / secs
    );
}
