//! Benchmark 4: userspace stage costs without the kernel, from `cargo bench -p nhiwatch --bench pipeline`.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{Ctx, Section, SummaryRow};

pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let out = Command::new(crate::cargo_bin())
        .args(["bench", "-q", "-p", "nhiwatch", "--bench", "pipeline"])
        .current_dir(&ctx.root)
        .output()
        .context("running cargo bench")?;
    if !out.status.success() {
        bail!(
            "cargo bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .with_context(|| format!("{name} missing from the bench output:\n{text}"))
    };
    let resolve_ns = value("identity_resolve_cached")?;
    let drain = value("pipeline_drain_one_core")?;
    let h1_mb = value("api_calls_http1_mb")?;
    let h1_calls = value("api_calls_http1_calls")?;
    let h2_mb = value("api_calls_http2_mb")?;
    let h2_calls = value("api_calls_http2_calls")?;
    let slowest = h1_calls.min(h2_calls);
    let rules_ms = value("replay_rules_load")?;
    let replay_all = value("replay_engine_one_core")?;
    let replay_hot = value("replay_engine_hot_one_core")?;
    let replay_json = value("replay_json_one_core")?;
    // The same runs by the bench thread's CPU time: on a shared machine the wall clock also
    // counts the time other processes held the core.
    let all_cpu = value("replay_engine_one_core_cpu")?;
    let hot_cpu = value("replay_engine_hot_one_core_cpu")?;
    let json_cpu = value("replay_json_one_core_cpu")?;
    let body = format!(
        "Source: `monitor/benches/pipeline.rs`, run as `cargo bench -p nhiwatch --bench pipeline` (release, one thread, \
         median of 7 runs, no kernel involved, so this measures the daemon's own code).\n\n\
         | Measure | Median |\n|---|---:|\n\
         | Cached identity resolution (cgroup id + uid + exe → SPIFFE identity) | {resolve_ns:.0} ns/event |\n\
         | Decode + process/flow tables + identity + metrics, TCP records, no output | {drain:.0} events/s |\n\n\
         The second line is the daemon's drain capacity on one core when the kernel is not the limit: compare \
         benchmark 3, where the producer saturates first.\n\n\
         **TLS plaintext → API calls** (decode → session table → HTTP parser → path template, query keys, \
         credential kind, JWT claims and HMAC fingerprint → `ApiCall` → metrics; no output), 16 concurrent \
         sessions × 64 keep-alive exchanges, full plaintext captured:\n\n\
         | Conversation | Plaintext | API calls |\n|---|---:|---:|\n\
         | HTTP/1.1: FHIR GETs with a JWT bearer, 1 KiB JSON responses | {h1_mb:.1} MB/s | {h1_calls:.0} calls/s |\n\
         | HTTP/2: LLM-style POSTs with an API key (Huffman strings as nghttp2 sends them, HPACK dynamic table in use), 1 KiB DATA responses | {h2_mb:.1} MB/s | {h2_calls:.0} calls/s |\n\n\
         HPACK is loona-hpack with nhiwatch's table-driven Huffman decoder (third_party/loona-hpack); \
         the upstream decoder rebuilds its code table for every string and managed 18,484 calls/s on this \
         conversation in a side-by-side run on 2026-11-23 (7.2× slower).\n\n\
         For scale: in benchmark 2 one core issues a traced HTTPS request every ≈ 105 µs (≈ 9,500 requests/s \
         per core, ≈ 19,000/s on both cores of this machine), so parsing on one core keeps up with several \
         times what the traced clients can produce here.\n\n\
         **Contracts and detectors** (`Engine::observe`: identity state, contract, data-source classification, \
         every detector, dedup; one core) with 1,000 contracts (800 by SPIFFE ID, 200 by selectors) over 200 \
         data sources, 10,000 identities, 1,000,000 observations (70% API calls with a JWT, 10% each exec, \
         secret open, connect):\n\n\
         | Measure | Median | by the thread's CPU time |\n|---|---:|---:|\n\
         | Loading and compiling the 1,200 rules documents | {rules_ms:.0} ms | |\n\
         | Observations judged, all 10,000 identities in turn | {replay_all:.0} observations/s | {all_cpu:.0} observations/s |\n\
         | The same stream folded onto 100 identities (their state stays in cache) | {replay_hot:.0} observations/s | {hot_cpu:.0} observations/s |\n\
         | `nhiwatch replay` path: JSON line → observation → engine (`observation::Decoder`, as `nhiwatch replay` reads) | {replay_json:.0} observations/s | {json_cpu:.0} observations/s |\n\n\
         **Why the 1,000,000/s target is missed** (perf with DWARF call graphs): about 2 µs of the ≈ 3 µs \
         per observation with 10,000 identities is memory latency — per observation roughly a dozen cold \
         cache lines (the identity's slot and id, its cached grants and combination window, the global \
         credential entry and its owner list, the contract's method and limit maps, the dedup entry); \
         folded onto 100 identities the same code does {replay_hot:.0}/s. Of the rest, string comparisons of \
         heap-stored ids (identity table, credential owner lists) are ≈ 15% and credential sighting \
         bookkeeping ≈ 20%; each of the 10,000 identities is also set up once per run (≈ 20 allocations \
         and a contract match). Next steps, by expected gain: skip the global credential update for an \
         identity's own unshared credential within the same second; small integer ids for identities so \
         tables compare numbers; methods and limits as vectors indexed by data source. For the daemon \
         this is ample — it sees at most as many observations as API calls, file opens and connects \
         (benchmark 2: ≈ 19,000 traced HTTPS requests/s on this machine); for replay, JSON parsing is the \
         larger cost (third line). Done since (issue L goal 3): an observation finds its identity's slot by \
         the address of its identity object rather than by hashing and comparing the id, credential owner \
         lists compare the interned id by pointer, cached fingerprints are found by a tag without building a \
         key, and the JSON reader reads each line in one pass (the derived reader buffered the whole line \
         because of `#[serde(flatten)]`) and shares one identity object per identity across lines.\n"
    );
    Ok(Section {
        title: String::new(),
        body,
        summary: vec![
            SummaryRow {
                target: "4a. Cached identity resolution well under 1 µs/event".into(),
                measured: format!("{resolve_ns:.0} ns/event"),
                verdict: if resolve_ns < 1000.0 {
                    "**met**".into()
                } else {
                    "**missed**".into()
                },
            },
            SummaryRow {
                target:
                    "4b. Userspace pipeline not the bottleneck (≥ 300,000 events/s on one core)"
                        .into(),
                measured: format!("{drain:.0} events/s"),
                verdict: if drain >= 300_000.0 {
                    "**met**".into()
                } else {
                    "**missed**".into()
                },
            },
            SummaryRow {
                target: "4c. API call parsing not the bottleneck (≥ 50,000 calls/s on one core, \
                         > 2.5× the traced HTTPS request rate of both cores in benchmark 2)"
                    .into(),
                measured: format!(
                    "HTTP/1.1 {h1_calls:.0} calls/s ({h1_mb:.0} MB/s), HTTP/2 {h2_calls:.0} calls/s ({h2_mb:.0} MB/s)"
                ),
                verdict: if slowest >= 50_000.0 {
                    "**met**".into()
                } else {
                    "**missed**".into()
                },
            },
            SummaryRow {
                target: "4d. Replay / detector throughput ≥ 1,000,000 observations/s on one core \
                         (1,000 contracts, 10,000 identities)"
                    .into(),
                measured: format!(
                    "{replay_all:.0} observations/s (100 identities: {replay_hot:.0}/s; from JSON: {replay_json:.0}/s)"
                ),
                verdict: if replay_all >= 1_000_000.0 {
                    "**met**".into()
                } else {
                    "**missed**".into()
                },
            },
        ],
    })
}
