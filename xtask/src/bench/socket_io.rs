//! Benchmark 7: the cost the sockets sensor adds to read()/write() that are not followed
//! connections (a pipe and a file, 1 M-call storms) and to cleartext HTTP/1.1 requests on one
//! keep-alive connection, next to the floor of empty bpftrace programs on the same tracepoints;
//! and the rate of cleartext requests (h2load, HTTP/1.1 pipelined) parsed with no uncounted loss.

use std::{fmt::Write as _, fs, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};

use super::{stats, sys, Ctx, Section, SummaryRow, Tool, Variant};

/// Every syscall tracepoint the sockets sensor attaches to.
const TRACEPOINTS: [&str; 23] = [
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_exit_accept",
    "sys_exit_accept4",
    "sys_enter_close",
    "sys_enter_dup2",
    "sys_enter_dup3",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_writev",
    "sys_exit_writev",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
];

fn floor_script() -> String {
    let probes: Vec<String> = TRACEPOINTS
        .iter()
        .map(|t| format!("tracepoint:syscalls:{t}"))
        .collect();
    format!("{} {{ }}\n", probes.join(",\n"))
}

pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let ioloop = super::compile(&ctx.root, "ioloop", &[])?;
    let httploop = super::compile(&ctx.root, "httploop", &[])?;
    let cpu = ctx.nproc - 1;
    let file = ctx.tmp.path().join("ioloop.data");
    let storm = |kind: &str, n: u64| -> Result<f64> {
        let out = sys::output(
            Command::new("taskset")
                .args(["-c", &cpu.to_string()])
                .arg(&ioloop)
                .args([kind, &file.display().to_string(), &n.to_string()]),
        )?;
        // ns per write+read pair → per call
        out.split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
            .map(|x| x / 2.0)
            .with_context(|| format!("ioloop printed {out:?}"))
    };
    let probe = storm("pipe", 100_000)?;
    // 1 M calls = 500 000 write+read pairs per workload, as the issue asks, unless the
    // machine is so slow that run_secs caps it.
    let pairs = ((ctx.run_secs * 1e9 / (2.0 * probe)) as u64).clamp(50_000, 500_000);
    eprintln!("bench: bare pipe call ≈ {probe:.0} ns: {pairs} write+read pairs per run");

    let prefix = ctx.tmp.path().join("nginx-plain");
    let port = sys::free_port()?;
    write_nginx_prefix(&prefix, port)?;
    let mut nginx = ctx.spawn(
        "nginx-plain",
        Command::new("taskset")
            .args(["-c", &cpu.to_string(), "/usr/sbin/nginx", "-e"])
            .arg(prefix.join("logs/error.log"))
            .arg("-p")
            .arg(format!("{}/", prefix.display()))
            .arg("-c")
            .arg(prefix.join("nginx.conf")),
        std::process::Stdio::null(),
    )?;
    sys::wait_port(&mut nginx, port, Duration::from_secs(15))?;
    let http = |n: u64| -> Result<f64> {
        let out = sys::output(
            Command::new("taskset")
                .args(["-c", &cpu.to_string()])
                .arg(&httploop)
                .args([&port.to_string(), &n.to_string()]),
        )?;
        out.split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
            .with_context(|| format!("httploop printed {out:?}"))
    };
    let req_us = http(2000)?;
    let requests = ((ctx.run_secs * 1e6 / req_us) as u64).clamp(2000, 200_000);

    let floor = ctx.tmp.path().join("sockets-floor.bt");
    fs::write(&floor, floor_script())?;
    let variants = [
        Variant::bare(),
        Variant::with(
            "empty tracepoint floor (bpftrace)",
            Tool::Bpftrace {
                name: "bpftrace-floor".into(),
                script: floor,
            },
        ),
        Variant::with(
            "nhiwatch",
            Tool::Nhiwatch {
                config: ctx.bundled_config(),
            },
        ),
    ];
    let samples = ctx.alternate(&variants, "ns/call (pipe)", |_, _| {
        nginx.check_alive()?;
        Ok(vec![
            storm("pipe", pairs)?,
            storm("file", pairs)?,
            http(requests)?,
        ])
    })?;
    let rate = request_rate(ctx, port, cpu)?;
    nginx.check_alive()?;
    let pipe = stats::compare(&samples[0]);
    let filerows = stats::compare(&samples[1]);
    let httprows = stats::compare(&samples[2]);

    let worst = pipe[2].added.max(filerows[2].added);
    let limit = 150.0;
    let verdict = if worst <= limit {
        format!("**met**: {} ns/call at most", stats::num(worst, 0))
    } else {
        format!(
            "**not met**: {} ns/call, {} ns over the limit of {limit} ns",
            stats::num(worst, 0),
            stats::num(worst - limit, 0)
        )
    };
    let measured = format!(
        "pipe: nhiwatch +{} ns/call, empty floor +{} ns/call; file: nhiwatch +{} ns/call, floor \
         +{} ns/call",
        stats::num(pipe[2].added, 0),
        stats::num(pipe[1].added, 0),
        stats::num(filerows[2].added, 0),
        stats::num(filerows[1].added, 0),
    );
    let http_measured = format!(
        "nhiwatch +{} µs/request, empty floor +{} µs/request (bare {} µs/request)",
        stats::num(httprows[2].added, 1),
        stats::num(httprows[1].added, 1),
        stats::num(httprows[0].median, 1),
    );

    let mut body = String::new();
    let _ = writeln!(
        body,
        "Workloads, pinned to CPU {cpu}, the tools to CPU 0: `bench/ioloop.c` writes 64 bytes \
         (an HTTP request line, on purpose) to a pipe or a file and reads them back, {pairs} \
         times (2 × {pairs} calls); `bench/httploop.c` sends {requests} cleartext HTTP/1.1 \
         GETs on one keep-alive connection to nginx on loopback. nhiwatch runs with the bundled \
         configuration. The floor is bpftrace with empty bodies on the {} syscall tracepoints \
         the sockets sensor uses: what attaching there costs before any program does work.\n\n\
         On a pipe or a file nhiwatch's programs load the process's slot of `sock_tgid_filter` \
         (an array the verifier inlines) and leave: the process has no followed TCP connection. \
         On the HTTP connection every write and read is copied (up to `sensors.tls.capture_bytes`) \
         and sent to the daemon, which parses it into an api_call.\n",
        TRACEPOINTS.len()
    );
    body.push_str("\nPipe, per read() or write():\n\n");
    body.push_str(&stats::table(&pipe, "ns/call", 0));
    body.push_str("\nFile, per read() or write():\n\n");
    body.push_str(&stats::table(&filerows, "ns/call", 0));
    body.push_str("\nCleartext HTTP/1.1 keep-alive, per request:\n\n");
    body.push_str(&stats::table(&httprows, "µs/request", 1));
    let _ = writeln!(
        body,
        "\n**Target:** nhiwatch's added cost per unrelated call ≤ 150 ns. {measured}. \
         Verdict: {verdict}.\n\nKeep-alive HTTP: {http_measured}.\n"
    );
    body.push_str(&rate.body);
    body.push_str(&stats::raw(&pipe, 0));
    Ok(Section {
        title: String::new(),
        body,
        summary: vec![
            SummaryRow {
                target: "8a. read()/write() storm on a pipe and a file: nhiwatch added cost ≤ 150 \
                         ns/call"
                    .into(),
                measured,
                verdict,
            },
            SummaryRow {
                target: "8b. cleartext HTTP/1.1 keep-alive request: added cost (reported)".into(),
                measured: http_measured,
                verdict: "reported".into(),
            },
            SummaryRow {
                target: format!(
                    "8c. cleartext HTTP requests parsed: ≥ {}/s with zero uncounted loss",
                    stats::count(RATE_TARGET)
                ),
                measured: rate.measured,
                verdict: rate.verdict,
            },
        ],
    })
}

/// The event-rate target of issue I: cleartext requests per second parsed into api_calls.
const RATE_TARGET: f64 = 100_000.0;
/// h2load's load: connections, HTTP/1.1 requests pipelined on each (one write carries several:
/// what a fast client does), requests per run.
const RATE_CONNS: u32 = 16;
const RATE_PIPELINE: u32 = 32;
const RATE_REQUESTS: u64 = 200_000;

struct Rate {
    body: String,
    measured: String,
    verdict: String,
}

/// One h2load run: (requests that succeeded, requests/s).
fn h2load(port: u16, cpu: usize, requests: u64) -> Result<(u64, f64)> {
    let out = sys::output(
        Command::new("taskset")
            .args(["-c", &cpu.to_string(), "h2load", "--h1", "-t", "1"])
            .args([
                "-c",
                &RATE_CONNS.to_string(),
                "-m",
                &RATE_PIPELINE.to_string(),
            ])
            .args(["-n", &requests.to_string()])
            .arg(format!("http://127.0.0.1:{port}/rate")),
    )?;
    let per_sec = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.parse::<f64>().ok())
        .with_context(|| format!("h2load printed no rate: {out:?}"))?;
    let succeeded = out
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|p| p.strip_suffix(" succeeded")))
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("h2load printed no request count: {out:?}"))?;
    Ok((succeeded, per_sec))
}

/// What the daemon says it parsed from h2load and what it says it lost.
#[derive(Default, Clone, Copy)]
struct RateCounters {
    calls: u64,
    lost_records: u64,
    parser_errors: u64,
    evicted: u64,
}

fn rate_counters(addr: std::net::SocketAddr) -> Result<RateCounters> {
    let (status, text) = sys::http_get(addr, "/metrics")?;
    anyhow::ensure!(status == 200, "GET /metrics answered {status}");
    let sum = super::event_rate::metric_sum;
    Ok(RateCounters {
        // By identity: other people's calls on this machine are not h2load's.
        calls: sum(&text, "nhiwatch_api_calls_by_identity_total", "/h2load\""),
        lost_records: sum(&text, "nhiwatch_kernel_events_lost_total", ""),
        parser_errors: sum(&text, "nhiwatch_stage_errors_total", "stage=\"api_calls\""),
        evicted: sum(&text, "nhiwatch_tls_sessions_evicted_total", ""),
    })
}

/// h2load against nginx alone, then beside nhiwatch (bundled configuration, on the tools' CPU):
/// requests h2load saw answered against the api_calls nhiwatch counted for h2load, and every
/// loss nhiwatch counts (ring-full records, parser errors, evicted sessions).
fn request_rate(ctx: &mut Ctx, port: u16, cpu: usize) -> Result<Rate> {
    let (_, bare) = h2load(port, cpu, RATE_REQUESTS / 4)?;
    eprintln!("bench: h2load alone: {bare:.0} requests/s");
    let config = ctx.bundled_config();
    let daemon = ctx.start_daemon(&config, Some(0))?;
    let before = rate_counters(daemon.addr)?;
    let (sent, per_sec) = h2load(port, cpu, RATE_REQUESTS)?;
    // Counters reach the endpoint about once a second: wait until the calls stop growing.
    let mut after = rate_counters(daemon.addr)?;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(1200));
        let next = rate_counters(daemon.addr)?;
        let settled = next.calls == after.calls && next.lost_records == after.lost_records;
        after = next;
        if settled && after.calls - before.calls >= sent {
            break;
        }
        if settled {
            // two equal reads in a row: nothing more is coming
            std::thread::sleep(Duration::from_millis(1200));
            let again = rate_counters(daemon.addr)?;
            if again.calls == after.calls {
                break;
            }
            after = again;
        }
    }
    daemon.finish(ctx)?;
    let calls = after.calls - before.calls;
    let lost = after.lost_records - before.lost_records;
    let errors = after.parser_errors - before.parser_errors;
    let evicted = after.evicted - before.evicted;
    let counted = lost + errors + evicted;
    // A lost ring record, a parser error or an evicted session may carry up to a pipeline's
    // worth of requests: what those cannot explain is lost without a count.
    let missing = sent.saturating_sub(calls);
    let uncounted = missing.saturating_sub(counted * u64::from(RATE_PIPELINE));
    let measured = format!(
        "{}/s sent by h2load beside nhiwatch ({}/s alone); {} of {} requests became api_calls, counted losses: {lost} ring records, {errors} parser errors, {evicted} evicted sessions",
        stats::count(per_sec),
        stats::count(bare),
        calls,
        sent,
    );
    let verdict = if uncounted > 0 {
        format!("**missed**: {uncounted} requests lost without a count")
    } else if per_sec >= RATE_TARGET && missing == 0 {
        format!("**met**: {}/s, every request parsed", stats::count(per_sec))
    } else if per_sec >= RATE_TARGET {
        format!("**met** with counted loss: {missing} requests not parsed, each loss counted")
    } else {
        format!(
            "**not demonstrated**: the load reached {}/s here (h2load alone: {}/s); no \
             uncounted loss at that rate",
            stats::count(per_sec),
            stats::count(bare)
        )
    };
    let body = format!(
        "\nCleartext request rate: `h2load --h1 -t 1 -c {RATE_CONNS} -m {RATE_PIPELINE}` ({RATE_CONNS} \
         connections, {RATE_PIPELINE} HTTP/1.1 requests pipelined on each) sends {RATE_REQUESTS} \
         GETs to the same nginx, pinned to CPU {cpu}, first alone, then with nhiwatch (bundled \
         configuration) on CPU 0. api_calls are read from \
         `nhiwatch_api_calls_by_identity_total` for h2load's identity (other processes' calls on \
         the machine do not count); losses from `nhiwatch_kernel_events_lost_total`, \
         `nhiwatch_stage_errors_total{{stage=\"api_calls\"}}` and \
         `nhiwatch_tls_sessions_evicted_total`. {measured}.\n"
    );
    Ok(Rate {
        body,
        measured,
        verdict,
    })
}

fn write_nginx_prefix(prefix: &Path, port: u16) -> Result<()> {
    for d in ["logs", "tmp"] {
        fs::create_dir_all(prefix.join(d))?;
    }
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
        listen 127.0.0.1:{port};
        location / {{ return 200 \"ok\\n\"; }}
    }}
}}
"
    );
    fs::write(prefix.join("nginx.conf"), conf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_lists_every_tracepoint_of_the_sockets_sensor() {
        let sensor = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitor/src/probes/sensors/sockets.rs"),
        )
        .unwrap();
        let script = floor_script();
        let mut n = 0;
        for tp in TRACEPOINTS {
            assert!(script.contains(&format!("tracepoint:syscalls:{tp}")));
            assert!(
                sensor.contains(&format!("\"{tp}\"")),
                "{tp} not in the sensor"
            );
            n += 1;
        }
        assert_eq!(sensor.matches("tp!(\"").count(), n);
    }
}
