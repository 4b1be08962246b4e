//! Benchmark 1: the cost nhiwatch adds to open()/close() of files it does not watch, next to
//! libbpf-tools opensnoop (which reports every open).

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context, Result};

use super::{stats, sys, Ctx, Profile, Section, SummaryRow, Tool, Variant, HW_TRAP_SOURCE};

pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let dir = ctx.tmp.path().join("unwatched");
    fs::create_dir_all(&dir)?;
    let file = dir.join("file");
    fs::write(&file, b"not a secret\n")?;
    let cpu = ctx.nproc - 1;

    let bin = ctx.openloop.clone();
    let probe = openloop(&bin, &file, 200_000, cpu)?;
    let n = ((ctx.run_secs * 1e9 / probe) as u64).clamp(100_000, 50_000_000);
    let n = n.div_ceil(10_000) * 10_000;
    eprintln!("bench: bare open+close ≈ {probe:.0} ns: {n} iterations per run");

    let variants = [
        Variant::bare(),
        Variant::with(
            "nhiwatch",
            Tool::Nhiwatch {
                config: ctx.bundled_config(),
            },
        ),
        Variant::with("opensnoop (libbpf-tools)", Tool::Opensnoop),
    ];
    let samples = ctx.alternate(&variants, "ns/op", |_, _| {
        Ok(vec![openloop(&bin, &file, n, cpu)?])
    })?;
    let rows = stats::compare(&samples[0]);

    let config = ctx.bundled_config();
    let profile = ctx.profile_nhiwatch(&config, "op", || {
        openloop(&bin, &file, n / 4, cpu)?;
        Ok(n / 4)
    });
    // The peer's programs too, for the projection to hardware.
    let peer_profile = ctx.profile(&Tool::Opensnoop, "opensnoop", "op", || {
        openloop(&bin, &file, n / 4, cpu)?;
        Ok(n / 4)
    });

    let (nh, os) = (rows[1].added, rows[2].added);
    let limit = os / 3.0;
    let measured = format!(
        "nhiwatch +{} ns/op, opensnoop +{} ns/op: nhiwatch adds {:.0}% of opensnoop's added cost \
         (bare {} ns/op)",
        stats::num(nh, 0),
        stats::num(os, 0),
        100.0 * nh / os,
        stats::num(rows[0].median, 0),
    );
    let margins = stats::margins(&rows, |v| (v[1] - v[0]) - (v[2] - v[0]) / 3.0);
    let verdict = if os <= 0.0 {
        "inconclusive: opensnoop added no measurable cost in this run".to_owned()
    } else if nh <= limit {
        format!(
            "{}: {} ns/op under the limit of {} ns/op",
            stats::verdict(&margins),
            stats::num(limit - nh, 0),
            stats::num(limit, 0)
        )
    } else {
        format!(
            "{}: {} ns/op over the limit of {} ns/op ({:.0}% over)",
            stats::verdict(&margins),
            stats::num(nh - limit, 0),
            stats::num(limit, 0),
            100.0 * (nh - limit) / limit
        )
    };

    let mut body = String::new();
    let _ = writeln!(
        body,
        "Workload: `bench/openloop.c` opens and closes one file, `{n}` times, in a directory \
         created for the run under {} — a path no watch pattern covers — and prints the mean \
         cost of one open()+close() pair. It is pinned to CPU {cpu} with `taskset`, the tools \
         to CPU 0. nhiwatch runs with the bundled configuration; opensnoop is \
         `/usr/sbin/opensnoop` with default options (it reports every open on the host) and \
         output to /dev/null.\n",
        std::env::temp_dir().display()
    );
    let _ = writeln!(body, "{}", what_nhiwatch_does());
    body.push_str(&stats::table(&rows, "ns/op", 0));
    let projected = match (&profile, &peer_profile) {
        (Ok(nh), Ok(os)) => Some(projection_row(nh, os)),
        _ => None,
    };
    let per_op = profile.as_ref().ok().map(per_op_row);
    match profile {
        Ok(Profile {
            table,
            ns_per_op: bpf_ns,
            ..
        }) => {
            let rest = if bpf_ns >= nh {
                "That is all of the added cost, within the noise of the medians.".to_owned()
            } else {
                format!(
                    "The other ≈ {:.0} ns are outside them: the syscall-tracepoint slow path \
                     that enabling any syscall tracepoint puts every syscall on (close() \
                     included), and calling the programs.",
                    nh - bpf_ns
                )
            };
            let _ = writeln!(
                body,
                "\nWhere nhiwatch's added cost goes — one more run of {} iterations beside a fresh \
                 nhiwatch with `kernel.bpf_stats_enabled=1` (restored afterwards; the accounting \
                 adds two clock reads per program run, so this pass is not part of the \
                 measurements above). Its programs run for ≈ {bpf_ns:.0} ns per open+close. \
                 {rest}\n",
                n / 4
            );
            body.push_str(&table);
        }
        Err(e) => ctx
            .notes
            .push(format!("open benchmark: BPF profiling pass failed: {e:#}")),
    }
    match &peer_profile {
        Ok(p) => {
            let _ = writeln!(
                body,
                "\nopensnoop's programs in the same kind of pass (it also sends every open to \
                 user space, which this table does not count):\n"
            );
            body.push_str(&p.table);
        }
        Err(e) => ctx.notes.push(format!(
            "open benchmark: opensnoop profiling pass failed: {e:#}"
        )),
    }
    if let Some(row) = &projected {
        let _ = writeln!(
            body,
            "\n**Projected cost on hardware** (a projection, not a measurement): {}. {}.\n",
            row.measured, row.verdict
        );
    }
    let _ = writeln!(
        body,
        "\n**Target:** nhiwatch's added cost ≤ 1/3 of opensnoop's added cost. {measured}. \
         Verdict: {verdict}.\n"
    );
    body.push_str(&stats::raw(&rows, 0));
    Ok(Section {
        title: String::new(),
        body,
        summary: [SummaryRow {
            target: "1. open()/close() on unwatched paths: nhiwatch added cost ≤ 1/3 of \
                     opensnoop's"
                .into(),
            measured,
            verdict,
        }]
        .into_iter()
        .chain(per_op)
        .chain(projected)
        .collect(),
    })
}

/// Issue 21 goal 2: program time per unwatched open()+close(), against a third of the ≈ 1,430 ns
/// the issue measured.
fn per_op_row(p: &Profile) -> SummaryRow {
    const LIMIT: f64 = 480.0;
    let files = p.ns_of(|n| n.ends_with("_openat") || n.ends_with("_open"));
    let verdict = if p.ns_per_op <= LIMIT {
        "**met**".to_owned()
    } else {
        format!(
            "**missed** by {} ns ({:.2}× the limit). Tried (issue 21): the exit's dentry walk \
             tests a per-inode bit set before any map lookup, and walks with plain loads when the \
             fd is in the task's 64 inline fd slots; the entry leaves after an 8-byte read when \
             the path's first component is no watch's (same-sitting A/B ≈ 0.55× per entry run). \
             A process whose fd table grew past 64 slots (any child of a parent holding a higher \
             fd, e.g. bash's fd 255) still takes the probe-read walk at exit: a BTF pointer to its \
             file needs the `bpf_rdonly_cast` kfunc (no ksym relocation in aya 0.14) or \
             fentry/kprobes (off on this kernel)",
            stats::num(p.ns_per_op - LIMIT, 0),
            p.ns_per_op / LIMIT
        )
    };
    SummaryRow {
        target: "1c. BPF program time per unwatched open()+close() ≤ 480 ns (issue 21 goal 2, a \
                 third of ≈ 1,430 ns)"
            .into(),
        measured: format!(
            "{} ns per open()+close(), of which the files sensor's open programs {} ns (table of \
             benchmark 1; the rest is the sockets sensor's close tracepoint)",
            stats::num(p.ns_per_op, 0),
            stats::num(files, 0)
        ),
        verdict,
    }
}

/// Benchmark 1's projection to hardware: program time plus traps at HW_TRAP_US (syscall
/// tracepoints do not trap, so for both tools this is their program time).
fn projection_row(nh: &Profile, os: &Profile) -> SummaryRow {
    let (a, b) = (nh.projected_ns(), os.projected_ns());
    SummaryRow {
        target: "1p. Projected cost on hardware per unwatched open()+close() (projection: \
                 BPF program time from `bpf_stats` + traps × 0.4 µs)"
            .into(),
        measured: format!(
            "nhiwatch {}, opensnoop {}; per-trap figure: {HW_TRAP_SOURCE}",
            nh.projection(0),
            os.projection(0)
        ),
        verdict: if b > 0.0 {
            format!(
                "projection: nhiwatch's programs cost {:.0}% of opensnoop's (opensnoop's user-space \
                 formatting of every open is not included)",
                100.0 * a / b
            )
        } else {
            "projection: opensnoop's programs did not run".into()
        },
    }
}

/// Runs the open loop pinned to `cpu`: ns per open+close pair.
fn openloop(bin: &Path, file: &Path, n: u64, cpu: usize) -> Result<f64> {
    let out = sys::output(
        Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(bin)
            .arg(file)
            .arg(n.to_string()),
    )?;
    out.split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .with_context(|| format!("openloop printed {out:?}"))
}

/// What nhiwatch's probes do on these opens.
fn what_nhiwatch_does() -> String {
    "On each of these opens nhiwatch's `sys_enter_openat` program copies the path and misses \
     in the watch-prefix trie, and its `sys_exit_openat` program reads the opened file through \
     the task's fd array and walks its parent dentries with plain loads, testing each \
     directory's inode against a bitmap of the watched inodes (a hash lookup only on a set bit) \
     — the path a relative open or a symlink into a secret directory would take. Nothing is \
     sent to user space. opensnoop sends every open to user space, which formats and prints \
     it.\n"
        .to_owned()
}
