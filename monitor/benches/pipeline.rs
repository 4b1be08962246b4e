//! Userspace costs without the kernel: cached identity resolution per event, and decode +
//! pipeline throughput on synthetic records (the daemon's drain capacity on one core).
//! Prints `name: value unit` lines; `cargo xtask bench` copies them into BENCHMARKS.md.

use std::{
    hint::black_box,
    mem::size_of,
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use nhiwatch::{
    config::IdentityConfig,
    events::process_table::ProcessTable,
    identity::{cgroups::CgroupResolver, IdentityResolver},
    metrics::Metrics,
    pipeline::Pipeline,
    probes::{abi::*, reader::RecordHandler},
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
    let metrics = Arc::new(Metrics::new());
    let mut p = Pipeline::new(
        procs,
        Arc::new(RwLock::new(Vec::new())),
        metrics,
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
}
