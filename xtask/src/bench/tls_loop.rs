//! Benchmark 2: the cost nhiwatch adds to HTTPS requests made through OpenSSL (a C client → nginx, one
//! keep-alive connection), next to the floor of an empty uprobe+uretprobe pair on the same
//! functions and to bpftrace's sslsnoop.bt.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{stats, sys, Ctx, Profile, Section, SummaryRow, Tool, Variant, HW_TRAP_SOURCE};

/// The OpenSSL functions nhiwatch probes (entry and return).
const SSL_FUNCS: [&str; 4] = ["SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"];

pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let (libssl, libcrypto) = find_openssl()?;
    eprintln!("bench: nginx's OpenSSL is {}", libssl.display());
    let client = super::compile(&ctx.root, "tlsloop", &[&libssl, &libcrypto])?;
    let cpu = ctx.nproc - 1;
    let prefix = ctx.tmp.path().join("nginx");
    let port = sys::free_port()?;
    write_nginx_prefix(&prefix, port)?;
    let mut nginx = ctx.spawn(
        "nginx",
        Command::new("taskset")
            .args(["-c", &cpu.to_string(), "/usr/sbin/nginx", "-e"])
            .arg(prefix.join("logs/error.log"))
            .arg("-p")
            .arg(format!("{}/", prefix.display()))
            .arg("-c")
            .arg(prefix.join("nginx.conf")),
        Stdio::null(),
    )?;
    sys::wait_port(&mut nginx, port, Duration::from_secs(15))?;
    let nginx_pid = nginx.pid();

    // Warm up, then size the runs.
    let client_run = |n: u64| -> Result<Run> { tlsloop(&client, cpu, port, n) };
    client_run(500)?;
    let probe = client_run(2000)?.wall_s * 1e6 / 2000.0;
    let n = ((ctx.run_secs * 1e6 / probe) as u64).clamp(2000, 200_000);
    let n = n.div_ceil(1000) * 1000;
    eprintln!("bench: bare request ≈ {probe:.0} µs: {n} requests per run");

    let calls = count_calls(ctx, &libssl, || client_run(2000).map(|_| 2000))?;

    let floor = ctx.tmp.path().join("uprobe-floor.bt");
    fs::write(&floor, floor_script(&libssl))?;
    let (sslsnoop, patched) = sslsnoop_copy(ctx.tmp.path())?;
    let variants = [
        Variant::bare(),
        Variant::with(
            "empty uprobe floor (bpftrace)",
            Tool::Bpftrace {
                name: "bpftrace-floor".into(),
                script: floor.clone(),
            },
        ),
        Variant::with(
            "nhiwatch",
            Tool::Nhiwatch {
                config: ctx.bundled_config(),
            },
        ),
        Variant::with(
            "sslsnoop.bt (bpftrace)",
            Tool::Bpftrace {
                name: "bpftrace-sslsnoop".into(),
                script: sslsnoop,
            },
        ),
    ];
    let samples = ctx.alternate(&variants, "µs/request", |_, tool| {
        nginx.check_alive()?;
        let server0 = sys::cpu_ns(nginx_pid)?;
        let tool0 = tool.map(sys::cpu_ns).transpose()?.unwrap_or(0);
        let r = client_run(n)?;
        let server = sys::cpu_ns(nginx_pid)?.saturating_sub(server0) as f64 / 1e9;
        let tool_cpu = match tool {
            Some(pid) => sys::cpu_ns(pid)?.saturating_sub(tool0) as f64 / 1e9,
            None => 0.0,
        };
        let per = |secs: f64| secs * 1e6 / n as f64;
        Ok(vec![
            per(r.wall_s),
            per(r.cpu_s + server + tool_cpu),
            per(tool_cpu),
        ])
    })?;
    let config = ctx.bundled_config();
    let profile = ctx.profile_nhiwatch(&config, "request", || {
        client_run(2000)?;
        Ok(2000)
    });
    // The floor's and the peer's programs too, for the projection to hardware: their trap
    // counts come from the same accounting (one uprobe program run = one trap).
    let mut peer_profile = |i: usize, label: &str| match &variants[i].tool {
        Some(t) => ctx.profile(t, label, "request", || {
            client_run(2000)?;
            Ok(2000)
        }),
        None => bail!("variant {i} runs no tool"),
    };
    let floor_profile = peer_profile(1, "floor");
    let ss_profile = peer_profile(3, "sslsnoop.bt");
    nginx.check_alive()?;
    nginx.stop()?;
    let rows = stats::compare(&samples[0]);
    let cpu_rows = stats::compare(&samples[1]);
    let tool_cpu: Vec<f64> = samples[2].iter().map(|(_, xs)| stats::median(xs)).collect();

    let (fl, nh, ss) = (rows[1].added, rows[2].added, rows[3].added);
    let (cfl, cnh, css) = (cpu_rows[1].added, cpu_rows[2].added, cpu_rows[3].added);
    let within = |nh: f64, fl: f64| nh <= fl * 1.10;
    let measured_floor = format!(
        "latency: nhiwatch +{} µs/request, floor +{} µs/request ({:.2}×); CPU incl. the tool: \
         nhiwatch +{} µs/request, floor +{} ({:.2}×); bare {} µs/request",
        stats::num(nh, 1),
        stats::num(fl, 1),
        nh / fl,
        stats::num(cnh, 1),
        stats::num(cfl, 1),
        cnh / cfl,
        stats::num(rows[0].median, 1)
    );
    let floor_margin = |v: &[f64]| (v[2] - v[0]) - 1.10 * (v[1] - v[0]);
    let lat_floor = stats::verdict(&stats::margins(&rows, floor_margin));
    let cpu_floor = stats::verdict(&stats::margins(&cpu_rows, floor_margin));
    let verdict_floor = if fl <= 0.0 {
        "inconclusive: the floor added no measurable latency in this run".to_owned()
    } else if within(nh, fl) {
        format!(
            "by latency {lat_floor}: {} µs/request under the limit of {} µs; by CPU incl. the \
             tool, {:.2}× the floor: {cpu_floor}",
            stats::num(fl * 1.10 - nh, 1),
            stats::num(fl * 1.10, 1),
            cnh / cfl
        )
    } else {
        format!(
            "by latency {lat_floor}: {} µs/request over the limit of {} µs (nhiwatch adds {:.0}% \
             more than the floor); by CPU incl. the tool, {:.2}× the floor: {cpu_floor}",
            stats::num(nh - fl * 1.10, 1),
            stats::num(fl * 1.10, 1),
            100.0 * (nh / fl - 1.0),
            cnh / cfl
        )
    };
    let measured_ss = format!(
        "latency: nhiwatch +{} µs/request, sslsnoop.bt +{}; CPU incl. the tool: nhiwatch +{}, \
         sslsnoop.bt +{}",
        stats::num(nh, 1),
        stats::num(ss, 1),
        stats::num(cnh, 1),
        stats::num(css, 1)
    );
    let ss_margin = |v: &[f64]| v[2] - v[3];
    let verdict_ss = format!(
        "by latency {}: nhiwatch {} µs/request {} sslsnoop.bt; by CPU incl. the tool's own \
         process {}: nhiwatch adds {:.0}% of sslsnoop.bt's",
        stats::verdict(&stats::margins(&rows, ss_margin)),
        stats::num((nh - ss).abs(), 1),
        if nh < ss { "below" } else { "above" },
        stats::verdict(&stats::margins(&cpu_rows, ss_margin)),
        100.0 * cnh / css
    );

    let mut body = String::new();
    let _ = writeln!(
        body,
        "Workload: nginx (`/usr/sbin/nginx`, its own prefix directory, one process, `access_log \
         off`, a self-signed RSA-2048 certificate, `return 200 \"ok\\n\"`) on 127.0.0.1:{port}, \
         and `bench/tlsloop.c`, a minimal client on the same OpenSSL: one TLS handshake, then \
         {n} keep-alive `GET` requests, each an `SSL_write` and `SSL_read`s until the \
         Content-Length body is in (every response checked for `200`). Only the request loop is \
         timed (no process start, no handshake). Client and server are both pinned to CPU \
         {cpu}, so a request is a strictly serial path through both; the tools are pinned to \
         CPU 0. \
         Both link the system OpenSSL ({}), so probes on it fire in both processes, in every \
         variant alike. (`curl https://…/[1-N]` over one keep-alive connection works too, but \
         most of its time per request is curl's own per-transfer work, which varied by ±10% \
         between runs in our trials and drowned the probe costs; this client's runs agree \
         within a few percent.)\n",
        libssl.display()
    );
    let _ = writeln!(
        body,
        "Variants: the **floor** is a bpftrace script with empty bodies `{{}}` on uprobe and \
         uretprobe of {} in that library — the cost of merely trapping on the functions nhiwatch \
         probes. nhiwatch runs with the bundled configuration (it also probes GnuTLS, and socket \
         send/receive tracepoints). **sslsnoop.bt** is bpftrace's `/usr/sbin/sslsnoop.bt` \
         (SSL_read, SSL_write and SSL_do_handshake with latency, plus libcrypto handshake \
         functions) with output to /dev/null.{}\n",
        SSL_FUNCS.join(", "),
        if patched {
            " Run as shipped, it does not stay attached under this load: within seconds it \
             loses perf-event descriptors (in our trials 12 → 6, or down to 2), so it would be \
             measured partly detached. This happened only while the script stores the `func` \
             builtin, which bpftrace 0.17 resolves to a symbol in user space; with `func` \
             replaced by `probe` (the probe's name, a constant) it stayed attached in every run. \
             The harness therefore runs such a copy: the same probes and essentially the same \
             kernel-side work, less user-space work. Every run of every tool is checked: a tool \
             that lost attachments or exited during a run has that run repeated (see the notes)."
        } else {
            ""
        }
    );
    if let Some(c) = &calls {
        let _ = writeln!(body, "{}", c.text);
    }
    let _ = writeln!(
        body,
        "**Latency** — wall time per request, as the client sees it:\n"
    );
    body.push_str(&stats::table(&rows, "µs/request", 1));
    let _ = writeln!(
        body,
        "\n**CPU** — CPU time per request of client + nginx + the tool's own process (each \
         process's run time over the timed loop; BPF programs run inside the probed processes, \
         so they are counted there). Median CPU of the tool's process alone: {}.\n",
        variants
            .iter()
            .zip(&tool_cpu)
            .skip(1)
            .map(|(v, c)| format!("{} {} µs/request", v.label, stats::num(*c, 2)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    body.push_str(&stats::table(&cpu_rows, "µs/request", 1));
    let projected = match (&profile, &floor_profile, &ss_profile) {
        (Ok(nh), Ok(fl), Ok(ss)) => Some(projection_row(nh, fl, ss)),
        _ => None,
    };
    let per_call = profile.as_ref().ok().map(per_call_row);
    let mut bpf_ns = None;
    match profile {
        Ok(Profile {
            table,
            ns_per_op: ns,
            ..
        }) => {
            bpf_ns = Some(ns);
            let _ = writeln!(
                body,
                "\nWhere nhiwatch's added cost goes — one more run of 2000 requests beside a fresh \
                 nhiwatch with `kernel.bpf_stats_enabled=1` (restored afterwards; the accounting \
                 adds two clock reads per program run, so this pass is not part of the \
                 measurements above). Its programs run for ≈ {:.1} µs per request, on top of the \
                 trapping cost the floor measures:\n",
                ns / 1000.0
            );
            body.push_str(&table);
        }
        Err(e) => ctx
            .notes
            .push(format!("TLS benchmark: BPF profiling pass failed: {e:#}")),
    }
    for (name, p) in [("the floor", &floor_profile), ("sslsnoop.bt", &ss_profile)] {
        match p {
            Ok(p) => {
                let _ = writeln!(body, "\n{name}'s programs in the same kind of pass:\n");
                body.push_str(&p.table);
            }
            Err(e) => ctx.notes.push(format!(
                "TLS benchmark: profiling pass of {name} failed: {e:#}"
            )),
        }
    }
    if let Some(row) = &projected {
        let _ = writeln!(
            body,
            "\n**Projected cost on hardware** (a projection, not a measurement): {}. {}.\n",
            row.measured, row.verdict
        );
    }
    if let Some(per_call) = calls.as_ref().map(|c| c.per_request) {
        if per_call > 0.0 && fl > 0.0 {
            ctx.uprobe_hit_us = Some(fl / per_call / 2.0);
            let _ = writeln!(
                body,
                "\nWith {per_call:.2} probed calls per request, the floor's added latency is ≈ \
                 {:.1} µs per probed call, ≈ {:.1} µs per probe hit (entry or return).",
                fl / per_call,
                fl / per_call / 2.0
            );
        }
    }
    if let Some(bpf_ns) = bpf_ns {
        let excess = nh - fl;
        let rest = if bpf_ns / 1000.0 >= excess {
            "That covers all of it, within the noise of the medians."
        } else {
            "The rest is outside the programs — presumably the syscall-tracepoint slow path every \
             syscall takes once any syscall tracepoint is enabled, and the BTF trampolines in \
             front of the socket send/receive tracepoints; an empty uprobe pays neither."
        };
        let _ = writeln!(
            body,
            "\nnhiwatch's latency above the floor is {} µs/request; its BPF programs take ≈ {:.1} \
             µs per request (the table above). {rest}",
            stats::num(excess, 1),
            bpf_ns / 1000.0
        );
    }
    let _ = writeln!(
        body,
        "\n**Target:** nhiwatch's added cost within 10% of the floor's. {measured_floor}. \
         Verdict: {verdict_floor}.\n\n**Target:** nhiwatch's added cost below sslsnoop.bt's. \
         {measured_ss}. Verdict: {verdict_ss}.\n"
    );
    body.push_str(&stats::raw(&rows, 1));
    body.push_str("\nCPU per request, per round:\n\n");
    body.push_str(
        stats::raw(&cpu_rows, 1).trim_start_matches("Per-round values, in run order:\n\n"),
    );
    Ok(Section {
        title: String::new(),
        body,
        summary: vec![
            SummaryRow {
                target: "2a. HTTPS via OpenSSL: nhiwatch added cost within 10% of an empty \
                         uprobe+uretprobe floor"
                    .into(),
                measured: measured_floor,
                verdict: verdict_floor,
            },
            SummaryRow {
                target: "2b. HTTPS via OpenSSL: nhiwatch added cost below sslsnoop.bt's".into(),
                measured: measured_ss,
                verdict: verdict_ss,
            },
        ]
        .into_iter()
        .chain(per_call)
        .chain(projected)
        .collect(),
    })
}

/// Issue 21 goal 1: the TLS programs and their socket tie-in per probed call (entry and return
/// together), against a third of the ≈ 1,550 ns the issue measured.
fn per_call_row(p: &Profile) -> SummaryRow {
    const LIMIT: f64 = 500.0;
    let calls = (p.traps_per_op / 2.0).max(1.0);
    let tls = p.ns_of(|n| n.starts_with("ssl_") || n.starts_with("handle_sock_"));
    let ns = tls / calls;
    let verdict = if ns <= LIMIT {
        "**met**".to_owned()
    } else {
        format!(
            "**missed** by {} ns ({:.2}× the limit). Tried (issue 21): the call state in task \
             storage instead of a hash keyed by thread, each thread's last session and socket \
             cached so the shared session map is touched only on a switch, and a server's \
             session sent once then only counted (same-sitting bpf_stats A/B: 1,532 → 858 ns per \
             call). Not tried yet: ring records reserved at the data's size, copying only what \
             the parser still needs once a head is parsed, batched wake-ups",
            stats::num(ns - LIMIT, 0),
            ns / LIMIT
        )
    };
    SummaryRow {
        target: "2c. BPF program time per probed TLS call, entry and return, socket tie-in \
                 included: ≤ 500 ns (issue 21 goal 1, a third of ≈ 1,550 ns)"
            .into(),
        measured: format!(
            "{} ns per call: `ssl_*` and `handle_sock_*` take {} ns per request over {:.1} probed \
             calls (table of benchmark 2); all of nhiwatch's programs, the cleartext sockets \
             sensor's syscall tracepoints and `dns_ingress` included, {} ns per request",
            stats::num(ns, 0),
            stats::num(tls, 0),
            calls,
            stats::num(p.ns_per_op, 0)
        ),
        verdict,
    }
}

struct Run {
    wall_s: f64,
    cpu_s: f64,
}

/// `n` requests with the C client pinned to `cpu`.
fn tlsloop(client: &Path, cpu: usize, port: u16, n: u64) -> Result<Run> {
    let out = sys::output(
        Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(client)
            .arg(port.to_string())
            .arg(n.to_string()),
    )?;
    let f: Vec<f64> = out
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() != 4 || f[1] as u64 != n {
        bail!("tlsloop printed {out:?}");
    }
    Ok(Run {
        wall_s: f[2],
        cpu_s: f[3],
    })
}

/// A copy of sslsnoop.bt that stays attached under load: the shipped script stores the `func`
/// builtin, and bpftrace 0.17 loses perf-event descriptors while resolving it in user space.
/// Returns the copy and whether anything was replaced.
fn sslsnoop_copy(dir: &Path) -> Result<(PathBuf, bool)> {
    let orig = Path::new("/usr/sbin/sslsnoop.bt");
    let text = fs::read_to_string(orig).with_context(|| format!("reading {}", orig.display()))?;
    let fixed = text.replace("= func;", "= probe;");
    let path = dir.join("sslsnoop.bt");
    fs::write(&path, &fixed)?;
    Ok((path, fixed != text))
}

/// Probed OpenSSL calls per request, and the sentence that reports them by process.
struct Calls {
    text: String,
    per_request: f64,
}

/// The libssl and libcrypto nginx loads, resolved to the real files.
fn find_openssl() -> Result<(PathBuf, PathBuf)> {
    let ldd = sys::output(Command::new("ldd").arg("/usr/sbin/nginx"))?;
    let find = |lib: &str| -> Result<PathBuf> {
        let p = ldd
            .lines()
            .find_map(|l| {
                let (name, rest) = l.trim().split_once(" => ")?;
                name.starts_with(lib)
                    .then(|| rest.split_whitespace().next().map(PathBuf::from))?
            })
            .with_context(|| format!("nginx does not link {lib}: {ldd}"))?;
        fs::canonicalize(&p).with_context(|| format!("{} not found", p.display()))
    };
    Ok((find("libssl.so")?, find("libcrypto.so")?))
}

pub(super) fn write_nginx_prefix(prefix: &Path, port: u16) -> Result<()> {
    for d in ["logs", "tmp"] {
        fs::create_dir_all(prefix.join(d))?;
    }
    let (cert, key) = (prefix.join("cert.pem"), prefix.join("key.pem"));
    sys::output(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=localhost", "-days", "1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )
    .context("making the self-signed certificate")?;
    let p = prefix.display();
    let conf = format!(
        "# Written by cargo xtask bench.
daemon off;
master_process off;
user root;
error_log {p}/logs/error.log warn;
pid {p}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 \"ok\\n\"; }}
    }}
}}
",
        cert = cert.display(),
        key = key.display()
    );
    fs::write(prefix.join("nginx.conf"), conf)?;
    Ok(())
}

fn floor_script(libssl: &Path) -> String {
    let l = libssl.display();
    let list = |kind: &str| -> String {
        SSL_FUNCS
            .iter()
            .map(|f| format!("{kind}:{l}:{f}"))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    format!(
        "// Written by cargo xtask bench: empty probes, the cost of trapping alone.\n{}\n{{}}\n\n{}\n{{}}\n",
        list("uprobe"),
        list("uretprobe")
    )
}

/// Counts the probed OpenSSL calls per request (by process) with a bpftrace counter, so the
/// floor can be read as a cost per probe hit. A failure here only loses that explanation.
fn count_calls(
    ctx: &mut Ctx,
    libssl: &Path,
    workload: impl FnOnce() -> Result<u64>,
) -> Result<Option<Calls>> {
    let script = ctx.tmp.path().join("count-calls.bt");
    let l = libssl.display();
    let probes: Vec<String> = SSL_FUNCS
        .iter()
        .map(|f| format!("uprobe:{l}:{f}"))
        .collect();
    fs::write(
        &script,
        format!(
            "{}\n{{ @calls[comm, probe] = count(); }}\n",
            probes.join(",\n")
        ),
    )?;
    let out_path = ctx.tmp.path().join("count-calls.out");
    let mut p = ctx.spawn(
        "bpftrace-count",
        Command::new("/usr/bin/bpftrace").arg(&script),
        Stdio::from(fs::File::create(&out_path)?),
    )?;
    if let Err(e) = sys::wait_attached(&mut p, Duration::from_secs(60)) {
        ctx.notes
            .push(format!("counting OpenSSL calls per request failed: {e:#}"));
        return Ok(None);
    }
    let n = workload()?;
    p.check_alive()?;
    p.stop()?;
    let text = fs::read_to_string(&out_path)?;
    // Lines like "@calls[tlsloop, uprobe:/usr/lib/x86_64-linux-gnu/libssl.so.3:SSL_write]: 2000".
    let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("@calls[") else {
            continue;
        };
        let Some((key, count)) = rest.split_once("]: ") else {
            continue;
        };
        let Some((comm, probe)) = key.split_once(", ") else {
            continue;
        };
        let func = probe.rsplit(':').next().unwrap_or(probe);
        let Ok(c) = count.trim().parse::<u64>() else {
            continue;
        };
        *by.entry((comm.to_owned(), func.to_owned())).or_default() += c;
    }
    let per = |comm: &str| -> Vec<String> {
        by.iter()
            .filter(|((c, _), _)| c == comm)
            .map(|((_, f), v)| format!("{f} {:.2}", *v as f64 / n as f64))
            .collect()
    };
    let ours: u64 = by
        .iter()
        .filter(|((c, _), _)| c == "tlsloop" || c == "nginx")
        .map(|(_, v)| v)
        .sum();
    let per_request = ours as f64 / n as f64;
    let text = format!(
        "Probed calls per request, counted once with a bpftrace counter over {n} requests: \
         client {}; nginx {} — {per_request:.2} calls, i.e. {:.2} probe hits (entry + return) \
         per request for the floor and for nhiwatch.\n",
        list_or_none(per("tlsloop")),
        list_or_none(per("nginx")),
        2.0 * per_request
    );
    Ok(Some(Calls { text, per_request }))
}

fn list_or_none(v: Vec<String>) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Benchmark 2's projection to hardware: each tool's program time per request plus its uprobe
/// traps per request at HW_TRAP_US.
fn projection_row(nh: &Profile, fl: &Profile, ss: &Profile) -> SummaryRow {
    let us = |p: &Profile| p.projected_ns() / 1000.0;
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}×", a / b)
        } else {
            "n/a".into()
        }
    };
    SummaryRow {
        target: "2p. Projected cost on hardware per HTTPS request (projection: BPF program time \
                 from `bpf_stats` + uprobe traps × 0.4 µs)"
            .into(),
        measured: format!(
            "nhiwatch {}, empty-probe floor {}, sslsnoop.bt {}; per-trap figure: {HW_TRAP_SOURCE}",
            nh.projection(0),
            fl.projection(0),
            ss.projection(0)
        ),
        verdict: format!(
            "projection: nhiwatch {} the floor, {} sslsnoop.bt",
            ratio(us(nh), us(fl)),
            ratio(us(nh), us(ss))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_script_probes_entry_and_return_of_each_function() {
        let s = floor_script(Path::new("/usr/lib/libssl.so.3"));
        for f in SSL_FUNCS {
            assert!(
                s.contains(&format!("uprobe:/usr/lib/libssl.so.3:{f}")),
                "{s}"
            );
            assert!(
                s.contains(&format!("uretprobe:/usr/lib/libssl.so.3:{f}")),
                "{s}"
            );
        }
        assert_eq!(s.matches("{}").count(), 2, "{s}");
    }
}
