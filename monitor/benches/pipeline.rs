//! Userspace costs without the kernel: cached identity resolution per event, and decode +
//! pipeline throughput on synthetic records (the daemon's drain capacity on one core).
//! Also TLS plaintext → API calls (sessions, HTTP/1 and HTTP/2 parsers, minimisation, credential
//! fingerprints) in MB/s of plaintext and calls/s.
//! Prints `name: value unit` lines; `cargo xtask bench` copies them into BENCHMARKS.md.

use std::{
    hint::black_box,
    mem::size_of,
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use nhiwatch::{
    context::process_table::ProcessTable,
    identity::{cgroups::CgroupResolver, IdentityConfig, IdentityResolver},
    metrics::Registry,
    pipeline::{telemetry::PipelineTelemetry, Pipeline},
    probes::{abi::*, reader::RecordHandler},
    protocol::{credentials::Fingerprinter, ApiCallConfig, ApiCallStage},
};

fn bytes<T>(v: &T) -> Vec<u8> {
    // SAFETY: reading the bytes of a POD struct.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn resolver() -> IdentityResolver {
    IdentityResolver::new(
        IdentityConfig::default(),
        "bench-node".into(),
        CgroupResolver::new(Path::new(nhiwatch::CGROUP_V2_ROOT), 1024),
        None,
        None,
    )
}

/// This thread's CPU time (s): on a machine shared with other work, rates by CPU time move far
/// less than rates by the wall clock, which count the time other processes held the core.
fn cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// Records are filled field by field, as the kernel does.
#[allow(clippy::field_reassign_with_default)]
fn main() {
    // Cached identity of a known process in the root cgroup.
    let mut procs = ProcessTable::new(1 << 16, 1);
    procs.scan_proc(Path::new("/proc"), Path::new(nhiwatch::CGROUP_V2_ROOT));
    let me = procs
        .get(std::process::id())
        .cloned()
        .expect("self in /proc");
    // NHIWATCH_BENCH=api_calls runs only the API call part (for profiling).
    if std::env::var("NHIWATCH_BENCH").is_ok_and(|v| v == "api_calls") {
        return api_call_benches(&me);
    }
    if std::env::var("NHIWATCH_BENCH").is_ok_and(|v| v == "replay") {
        return replay_benches();
    }
    let mut r = resolver();
    r.resolve(me.cgroup_id, Some(&me));
    const N: u32 = 2_000_000;
    let mut runs = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..N {
            black_box(r.resolve(black_box(me.cgroup_id), Some(&me)));
        }
        runs.push(t.elapsed().as_nanos() as f64 / f64::from(N));
    }
    println!("identity_resolve_cached: {:.1} ns/event", median(runs));

    // A batch of TCP connect/close and file-open records through decode → tables → identity → metrics.
    let mut recs: Vec<Vec<u8>> = Vec::new();
    for i in 0..4096u64 {
        let mut t = nw_tcp::default();
        t.hdr = nw_header {
            kind: (if i % 2 == 0 {
                NW_EVENT_TCP_CONNECT
            } else {
                NW_EVENT_TCP_CLOSE
            }) as u16,
            flags: 0,
            size: size_of::<nw_tcp>() as u32,
            ktime_ns: i,
            pid: me.pid,
            tid: me.pid,
            cgroup_id: me.cgroup_id,
        };
        t.sock = 0xffff_0000_0000 + i / 2;
        t.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[10, 0, 0, (i % 200) as u8]);
        t.sport = 40000;
        t.dport = 443;
        recs.push(bytes(&t));
    }
    let metrics = Registry::new();
    let mut p = Pipeline::new(
        procs,
        Arc::new(RwLock::new(Vec::new())),
        PipelineTelemetry::register(&metrics, 500),
        None,
        None,
        resolver(),
        Duration::ZERO,
    );
    let mut runs = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..100 {
            for r in &recs {
                p.record(black_box(r));
            }
            p.batch_done();
        }
        runs.push((100 * recs.len()) as f64 / t.elapsed().as_secs_f64());
    }
    println!("pipeline_drain_one_core: {:.0} events/s", median(runs));
    api_call_benches(&me);
    replay_benches();
}

/// Rules at scale: 200 data sources (HTTP hosts with path globs, and file trees), 1,000 contracts
/// (800 by SPIFFE ID, 200 by selectors), for 10,000 identities (one in ten ungoverned).
fn scale_rules() -> String {
    let mut y = String::new();
    for d in 0..200 {
        if d % 10 == 9 {
            y.push_str(&format!(
                "apiVersion: nhiwatch.dev/v1\nkind: DataSource\nmetadata: {{name: files-{d}}}\nspec:\n  classification: phi\n  match:\n    - file: /srv/data-{d}/**\n---\n"
            ));
        } else {
            y.push_str(&format!(
                "apiVersion: nhiwatch.dev/v1\nkind: DataSource\nmetadata: {{name: api-{d}}}\nspec:\n  classification: pii\n  match:\n    - host: svc-{d}.example.org\n      paths: [\"/v1/records*\", \"/v1/people/*\"]\n---\n"
            ));
        }
    }
    let ds = |i: usize| {
        let d = i % 200;
        if d % 10 == 9 {
            format!("files-{d}")
        } else {
            format!("api-{d}")
        }
    };
    for c in 0..1000 {
        let subject = if c < 800 {
            format!(
                "identity: spiffe://bench.example/ns/ns-{}/sa/sa-{c}",
                c % 50
            )
        } else {
            format!("selectors: [\"k8s:ns:ns-{}\", \"k8s:sa:sa-{c}\"]", c % 50)
        };
        let (a, b) = (ds(c), ds(c + 1));
        y.push_str(&format!(
            "apiVersion: nhiwatch.dev/v1\nkind: AccessContract\nmetadata: {{name: c-{c}}}\nspec:\n  {subject}\n  owner: team-{c}@example.org\n  purpose: bench\n  expires: 2099-12-31\n  allow:\n    dataSources: [{a}, {b}]\n    combinations: [[{a}, {b}]]\n    endpoints: [{{dataSource: {a}, methods: [GET, POST]}}]\n    secrets: [{{path: /var/run/secrets/**, executables: [/app/bin]}}]\n    destinations: [{{host: \"*.svc.cluster.local\"}}]\n    scopes: [{{dataSource: {a}, scopes: [\"records.*\"]}}, {{dataSource: {b}, scopes: [\"records.*\"]}}]\n  credentials: {{kinds: [jwt, api-key], maxTokenTtl: 1h}}\n  limits: [{{dataSource: {a}, requestsPerMinute: 100000}}]\n---\n"
        ));
    }
    y
}

fn replay_benches() {
    use nhiwatch::{
        detect::{DetectConfig, Engine},
        events::observation::{
            Activity, ApiCallSeen, CredentialSeen, Decoder, JwtSeen, Observation,
        },
        identity::{IdentityKind, WorkloadIdentity},
    };
    let t0 = Instant::now();
    let rules = nhiwatch::contracts::load_str("bench.yaml", &scale_rules()).expect("bench rules");
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(rules.contracts.len(), 1000);
    let identities: Vec<Arc<WorkloadIdentity>> = (0..10_000)
        .map(|i| {
            // Ten identities per contract's namespace/SA pair; one in ten matches no contract.
            let c = i % 1000;
            let sa = if i % 10 == 7 {
                format!("other-{i}")
            } else {
                format!("sa-{c}")
            };
            let ns = format!("ns-{}", c % 50);
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
        })
        .collect();
    // NHIWATCH_BENCH_OBS: fewer observations for a short or profiled run (default 1,000,000).
    let n: usize = std::env::var("NHIWATCH_BENCH_OBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let exe: Arc<str> = "/app/bin".into();
    let obs: Vec<Observation> = (0..n)
        .map(|k| {
            let i = (k * 7919) % identities.len();
            let c = i % 1000;
            let activity = match k % 10 {
                0 => Activity::Exec,
                1 => Activity::FileOpen {
                    path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
                    result: 3,
                },
                2 => Activity::Connect {
                    address: "10.0.0.1:443".parse().unwrap(),
                    name: Some(format!("svc-{}.example.org", c % 200)),
                },
                _ => Activity::ApiCall(ApiCallSeen {
                    host: Some(format!("svc-{}.example.org", (c + k % 2) % 200)),
                    method: Some("GET".into()),
                    path: "/v1/records/{id}".into(),
                    status: Some(200),
                    request_bytes: 400,
                    response_bytes: 4000,
                    credentials: vec![CredentialSeen {
                        kind: "jwt".into(),
                        fingerprint: format!("hmac-sha256:{:032x}", i * 31 + k % 3),
                        vendor: None,
                        token_type: None,
                        long_lived: Some(false),
                        access_key_id: None,
                        username: None,
                        jwt: Some(JwtSeen {
                            iss: Some("https://kubernetes.default.svc".into()),
                            sub: None,
                            exp: Some(4_000_000_000),
                            iat: Some(4_000_000_000 - 3600),
                            jti: None,
                            ttl_seconds: Some(3600),
                            // The audience names the host called and the scope is inside the
                            // contract: the audience and scope checks run in full on every
                            // call and find nothing (issue K's rules cost, not their findings).
                            aud: vec![format!("https://svc-{}.example.org", (c + k % 2) % 200)],
                            scope: vec!["records.read".into()],
                            ..JwtSeen::default()
                        }),
                    }],
                }),
            };
            Observation {
                // 10,000 observations a second of record time.
                time: 1_795_000_000_000_000_000 + (k as i64) * 100_000,
                identity: identities[i].clone(),
                labels: None,
                pid: 1000 + i as u32,
                exe: Some(exe.clone()),
                activity,
            }
        })
        .collect();
    // All 10,000 identities in turn, and the same stream folded onto 100 identities (their
    // state stays in the CPU caches): the difference is memory latency, not computation.
    let engine_rate = |obs: &[Observation]| {
        let mut runs = Vec::new();
        let mut cpu_runs = Vec::new();
        let mut found = 0;
        for _ in 0..3 {
            let mut e = Engine::new(
                nhiwatch::contracts::load_str("bench.yaml", &scale_rules()).unwrap(),
                DetectConfig::default(),
            );
            let mut out = Vec::new();
            let (t, cpu) = (Instant::now(), cpu_secs());
            for o in obs {
                e.observe(black_box(o), &mut out);
                found += out.len();
                out.clear();
            }
            runs.push(obs.len() as f64 / t.elapsed().as_secs_f64());
            cpu_runs.push(obs.len() as f64 / (cpu_secs() - cpu));
        }
        black_box(found);
        (median(runs), median(cpu_runs))
    };
    let all = engine_rate(&obs);
    let hot: Vec<Observation> = obs
        .iter()
        .enumerate()
        .map(|(k, o)| {
            let mut o = o.clone();
            o.identity = identities[(k * 7919) % 100].clone();
            o
        })
        .collect();
    let hot_rate = engine_rate(&hot);
    drop(hot);
    println!("replay_rules_load: {load_ms:.0} ms");
    println!("replay_engine_one_core: {:.0} observations/s", all.0);
    println!(
        "replay_engine_hot_one_core: {:.0} observations/s",
        hot_rate.0
    );
    println!("replay_engine_one_core_cpu: {:.0} observations/s", all.1);
    println!(
        "replay_engine_hot_one_core_cpu: {:.0} observations/s",
        hot_rate.1
    );
    // From JSON lines, as `nhiwatch replay` reads them.
    let lines: Vec<String> = obs
        .iter()
        .take(n / 5)
        .map(|o| serde_json::to_string(o).unwrap())
        .collect();
    let mut runs = Vec::new();
    let mut cpu_runs = Vec::new();
    for _ in 0..3 {
        let mut e = Engine::new(
            nhiwatch::contracts::load_str("bench.yaml", &scale_rules()).unwrap(),
            DetectConfig::default(),
        );
        let mut out = Vec::new();
        let (t, cpu) = (Instant::now(), cpu_secs());
        // As `nhiwatch replay` reads lines: one decoder for the whole run.
        let mut decoder = Decoder::default();
        for l in &lines {
            let o = decoder.decode(black_box(l.as_bytes())).unwrap();
            e.observe(&o, &mut out);
            out.clear();
        }
        runs.push(lines.len() as f64 / t.elapsed().as_secs_f64());
        cpu_runs.push(lines.len() as f64 / (cpu_secs() - cpu));
    }
    println!("replay_json_one_core: {:.0} observations/s", median(runs));
    println!(
        "replay_json_one_core_cpu: {:.0} observations/s",
        median(cpu_runs)
    );
}

fn api_call_benches(me: &nhiwatch::context::process_table::ProcessInfo) {
    for (name, conversation) in [
        ("http1", http1_conversation()),
        ("http2", http2_conversation()),
    ] {
        let (mb_s, calls_s) = api_calls(me, &conversation);
        println!("api_calls_{name}_mb: {mb_s:.1} MB/s");
        println!("api_calls_{name}_calls: {calls_s:.0} calls/s");
    }
}

/// One TLS call of a client: (is_read, plaintext).
type Conversation = Vec<(bool, Vec<u8>)>;

const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2t1YmVybmV0ZXMuZGVmYXVsdC5zdmMiLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6Y2xpbmljYWwtYWk6bWVkLXN1bW1hcml6ZXIiLCJhdWQiOlsiZmhpciJdLCJleHAiOjQxMDI0NDQ4MDAsImlhdCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl";

/// 64 keep-alive requests with a JWT, answered with a 1 KiB JSON body.
fn http1_conversation() -> Conversation {
    let mut c = Vec::new();
    for i in 0..64 {
        c.push((
            false,
            format!(
                "GET /fhir/R4/Patient/{}/Observation?code=8867-4&_count=50 HTTP/1.1\r\nHost: fhir.clinic.example\r\n\
                 User-Agent: python-requests/2.31.0\r\nAccept: application/fhir+json\r\nAuthorization: Bearer {JWT}\r\n\r\n",
                8800 + i
            )
            .into_bytes(),
        ));
        let mut resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/fhir+json\r\nContent-Length: 1024\r\n\r\n".to_vec();
        resp.extend(std::iter::repeat_n(b'x', 1024));
        c.push((true, resp));
    }
    c
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK string literal, Huffman-encoded as curl/nghttp2, Go and gRPC send them.
fn hstr(s: &[u8]) -> Vec<u8> {
    let e = loona_hpack::huffman::encode(s);
    assert!(e.len() < 127, "one-byte length prefix");
    [vec![0x80 | e.len() as u8], e].concat()
}

/// An HTTP/2 connection with 64 requests, each answered with 1 KiB of DATA. Header
/// blocks are shaped like nghttp2's: Huffman strings, the first request's authority,
/// content type and API key added to the dynamic table and referenced by index after.
fn http2_conversation() -> Conversation {
    let mut c = vec![(
        false,
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            frame(4, 0, 0, &[]),
        ]
        .concat(),
    )];
    c.push((true, frame(4, 0, 0, &[])));
    for i in 0..64u32 {
        let stream = 1 + 2 * i;
        let path = format!("/v1/projects/p-{}/messages?beta=true", 1000 + i);
        // :method POST, :scheme https (static), then the rest.
        let mut block = vec![0x83, 0x87];
        if i == 0 {
            block.push(0x41); // :authority, incremental indexing → dynamic 64 after three inserts
            block.extend(hstr(b"api.llm.example"));
            block.push(0x04); // :path, without indexing
            block.extend(hstr(path.as_bytes()));
            block.push(0x5f); // content-type → 63
            block.extend(hstr(b"application/json"));
            block.push(0x40); // x-api-key, new name → 62
            block.extend(hstr(b"x-api-key"));
            block.extend(hstr(b"sk-ant-api03-benchmarkbenchmarkbenchmark"));
        } else {
            block.push(0x80 | 64);
            block.push(0x04);
            block.extend(hstr(path.as_bytes()));
            block.extend([0x80 | 63, 0x80 | 62]);
        }
        let mut w = frame(1, 0x4, stream, &block);
        w.extend(frame(0, 0x1, stream, &[b'{'; 512]));
        c.push((false, w));
        // :status 200 (static), content-type (dynamic 62 after the first response).
        let block = if i == 0 {
            [vec![0x88, 0x5f], hstr(b"application/json")].concat()
        } else {
            vec![0x88, 0x80 | 62]
        };
        let mut r = frame(1, 0x4, stream, &block);
        r.extend(frame(0, 0x1, stream, &[b'x'; 1024]));
        c.push((true, r));
    }
    c
}

/// Runs `conversation` over 16 concurrent sessions through the whole pipeline
/// (decode → sessions → parser → summary → ApiCall → metrics, no output).
/// One warm-up pass, then 7 timed passes, each over fresh sessions.
#[allow(clippy::field_reassign_with_default)] // filled field by field, as the kernel does
fn api_calls(
    me: &nhiwatch::context::process_table::ProcessInfo,
    conversation: &Conversation,
) -> (f64, f64) {
    const SESSIONS: u64 = 16;
    let records = |pass: u64| {
        let mut recs = Vec::new();
        for (i, (read, data)) in conversation.iter().enumerate() {
            for session in 0..SESSIONS {
                let mut t = nw_tls_data::default();
                t.hdr = nw_header {
                    kind: NW_EVENT_TLS_DATA as u16,
                    flags: if *read { NW_F_TLS_READ as u16 } else { 0 },
                    size: (size_of::<nw_tls_data>() + data.len()) as u32,
                    ktime_ns: pass * 1_000_000_000 + (i as u64) * 1000 + session,
                    pid: me.pid,
                    tid: me.pid,
                    cgroup_id: me.cgroup_id,
                };
                t.session = 0x5000 + pass * SESSIONS + session;
                t.len = data.len() as u32;
                t.captured = data.len() as u32;
                t.lib = NW_TLS_OPENSSL as u8;
                let mut r = bytes(&t);
                r.extend_from_slice(data);
                recs.push(r);
            }
        }
        recs
    };
    let plaintext: usize =
        conversation.iter().map(|(_, d)| d.len()).sum::<usize>() * SESSIONS as usize;
    // Both conversations hold 64 exchanges per session.
    let calls = 64 * SESSIONS as usize;
    let mut procs = ProcessTable::new(1 << 16, 1);
    procs.scan_proc(Path::new("/proc"), Path::new(nhiwatch::CGROUP_V2_ROOT));
    let metrics = Registry::new();
    let mut p = Pipeline::new(
        procs,
        Arc::new(RwLock::new(Vec::new())),
        PipelineTelemetry::register(&metrics, 500),
        None,
        None,
        resolver(),
        Duration::ZERO,
    )
    .with_api_calls(ApiCallStage::new(
        &ApiCallConfig::default(),
        Fingerprinter::from_key([7; 32]),
        &metrics,
    ));
    let mut runs = Vec::new();
    let mut call_runs = Vec::new();
    for pass in 0..8u64 {
        let recs = records(pass);
        let t = Instant::now();
        for r in &recs {
            p.record(black_box(r));
        }
        p.batch_done();
        let secs = t.elapsed().as_secs_f64();
        if pass > 0 {
            runs.push(plaintext as f64 / 1e6 / secs);
            call_runs.push(calls as f64 / secs);
        }
    }
    let seen: f64 = metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("nhiwatch_api_calls_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(seen as usize, calls * 8, "every call parsed");
    (median(runs), median(call_runs))
}
