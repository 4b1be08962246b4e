//! Benchmark 9: takes a Go HTTPS keep-alive client, nginx and nhiwatch, gives the added cost per request against an empty uprobe at nhiwatch's own Go probe sites (entries of `(*tls.Conn).Read`/`Write`, RET sites of `Read`), per-program BPF time, and the exec-to-attached time of a new ~20 MB Go binary.

use std::{
    ffi::OsString,
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{stats, sys, tls_loop, Ctx, Profile, Section, SummaryRow, Tool, Variant};

/// The daemon's own Go binary inspection, compiled in here unchanged, so the floor is attached
/// at exactly the offsets nhiwatch computes (this kernel's bpftool cannot list the offsets of
/// the daemon's uprobe links).
#[allow(dead_code)]
#[path = "../../../monitor/src/probes/golang.rs"]
mod golang;

/// Debian bookworm's Go (golang-go); nhiwatch covers go1.17 and later.
const DEBIAN_GO: &str = "/usr/lib/go-1.19/bin/go";

/// The issue's target: nhiwatch's added cost at most this multiple of the floor's.
const LIMIT: f64 = 1.25;

/// Size the attach-cost binary is padded to (the issue asks for a ~20 MB Go binary).
const ATTACH_BYTES: u64 = 20 << 20;

/// Cold/cached exec runs of the attach-cost part.
const ATTACH_RUNS: usize = 7;

pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let client = build_goloop(ctx, None)?;
    let (floor_obj, floor_loader) = build_floor(ctx)?;
    let cpu = ctx.nproc - 1;
    let prefix = ctx.tmp.path().join("nginx-go");
    let port = sys::free_port()?;
    tls_loop::write_nginx_prefix(&prefix, port)?;
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

    let client_run = |n: u64| -> Result<Run> { goloop(&client, cpu, port, n) };
    client_run(500)?;
    let probe = client_run(2000)?.wall_s * 1e6 / 2000.0;
    let n = ((ctx.run_secs * 1e6 / probe) as u64).clamp(2000, 200_000);
    let n = n.div_ceil(1000) * 1000;
    eprintln!("bench: bare Go request ≈ {probe:.0} µs: {n} requests per run");

    // The places nhiwatch probes (tls_go.rs attaches the entries of Read and Write and every
    // RET site of Read), from the daemon's own inspection of this binary.
    let go = golang::inspect(&client)
        .map_err(|e| anyhow::anyhow!("{}: not probed by nhiwatch: {e}", client.display()))?;
    let mut sites = vec![go.read.entry, go.write.entry];
    sites.extend(&go.read.rets);
    let config = go_only_config(ctx)?;
    eprintln!(
        "bench: {} ({}): {} probe sites",
        client.display(),
        go.version,
        sites.len()
    );
    let mut floor_args: Vec<OsString> = vec![floor_obj.into(), client.clone().into()];
    floor_args.extend(sites.iter().map(|o| OsString::from(format!("{o:#x}"))));

    let variants = [
        Variant::bare(),
        Variant::with(
            "empty uprobe floor (libbpf)",
            Tool::Command {
                name: "gofloor".into(),
                program: floor_loader.clone(),
                args: floor_args.clone(),
            },
        ),
        Variant::with(
            "nhiwatch",
            Tool::Nhiwatch {
                config: config.clone(),
            },
        ),
    ];
    let mut lingering = Vec::new();
    let mut gave_up = false;
    let samples = ctx.alternate(&variants, "µs/request", |ctx, tool| {
        nginx.check_alive()?;
        if !tool.is_some_and(is_nhiwatch) && !gave_up {
            // A stopped nhiwatch hands its uprobe links to the kernel, which tears them down
            // one by one (≈ 0.1–0.2 s each here) after the daemon exited: until then they still
            // fire in the client and would be charged to the next variant.
            let waited = wait_probes_gone(Duration::from_secs(20));
            if waited > Duration::from_secs(20) {
                gave_up = true;
                ctx.notes.push(
                    "Go TLS benchmark: nhiwatch programs (Go TLS, OpenSSL or socket ones) were \
                     still loaded 20 s after ours stopped (another daemon on this machine?); \
                     from then on bare and floor runs went ahead without waiting."
                        .into(),
                );
            }
            lingering.push(waited.as_secs_f64());
        }
        if let Some(pid) = tool.filter(|p| is_nhiwatch(*p)) {
            // A fresh nhiwatch attaches when it sees the client exec: wait until its probes
            // are on the file, so the timed loop is probed throughout.
            wait_probed(pid, sites.len(), &client)?;
        }
        // An untimed run of the same size first, in every variant: the first client run after
        // an nhiwatch stopped measured ≈ 2× slower than the next (141 against 60–68
        // µs/request, its programs already unloaded), which made every bare run after round 1
        // look slower than the floor.
        client_run(n)?;
        let server0 = sys::cpu_ns(nginx_pid)?;
        let tool0 = tool.map(sys::cpu_ns).transpose()?.unwrap_or(0);
        let r = client_run(n)?;
        let server = sys::cpu_ns(nginx_pid)?.saturating_sub(server0) as f64 / 1e9;
        let tool_cpu = match tool {
            Some(pid) => sys::cpu_ns(pid)?.saturating_sub(tool0) as f64 / 1e9,
            None => 0.0,
        };
        let per = |secs: f64| secs * 1e6 / n as f64;
        Ok(vec![per(r.wall_s), per(r.cpu_s + server + tool_cpu)])
    })?;

    // BPF run time per request: the floor's one program, then nhiwatch's programs.
    let floor_profile = profile_floor(ctx, &floor_loader, &floor_args, || {
        client_run(2000)?;
        Ok(2000)
    });
    let profile = {
        let client = client.clone();
        let n_sites = sites.len();
        ctx.profile_nhiwatch(&config, "request", move || {
            // The profiling daemon is fresh too: let it attach first.
            let pid = our_daemon().context("the profiling nhiwatch is not running")?;
            wait_probed(pid, n_sites, &client)?;
            goloop(&client, cpu, port, 2000)?;
            Ok(2001)
        })
    };
    nginx.check_alive()?;
    nginx.stop()?;

    let attach = attach_cost(ctx);

    let rows = stats::compare(&samples[0]);
    let cpu_rows = stats::compare(&samples[1]);
    let (fl, nh) = (rows[1].added, rows[2].added);
    let (cfl, cnh) = (cpu_rows[1].added, cpu_rows[2].added);
    let measured = format!(
        "latency: nhiwatch +{} µs/request, floor +{} µs/request ({:.2}×); CPU incl. the tool: \
         nhiwatch +{}, floor +{} ({:.2}×); bare {} µs/request",
        stats::num(nh, 1),
        stats::num(fl, 1),
        nh / fl,
        stats::num(cnh, 1),
        stats::num(cfl, 1),
        cnh / cfl,
        stats::num(rows[0].median, 1)
    );
    let margin = |v: &[f64]| (v[2] - v[0]) - LIMIT * (v[1] - v[0]);
    let verdict = if fl <= 0.0 {
        "inconclusive: the floor added no measurable latency in this run".to_owned()
    } else {
        format!(
            "by latency {} ({:.2}× the floor, limit {LIMIT:.2}×); by CPU incl. the tool {} \
             ({:.2}×)",
            stats::verdict(&stats::margins(&rows, margin)),
            nh / fl,
            stats::verdict(&stats::margins(&cpu_rows, margin)),
            cnh / cfl
        )
    };

    let mut body = String::new();
    let _ = writeln!(
        body,
        "Workload: the same nginx as benchmark 2 (own prefix, `return 200 \"ok\\n\"`, on \
         127.0.0.1:{port}) and `bench/goloop`, a minimal Go client built with Debian's Go 1.19 \
         ({DEBIAN_GO}, `CGO_ENABLED=0`): one crypto/tls handshake, then {n} keep-alive `GET` \
         requests on that connection, each a `(*tls.Conn).Write` and buffered `(*tls.Conn).Read`s \
         until the Content-Length body is in (every status checked). Only the request loop is \
         timed. Client and nginx are pinned to CPU {cpu}, the tools to CPU 0, as in benchmark \
         2. nhiwatch runs with the Go sensor isolated, as the floor traps only in the Go \
         client: `sensors.tls.stacks: [go]` (nginx's OpenSSL is not probed; benchmark 2 \
         measures that) and `sensors.sockets.enabled: false` (the read/write tracepoints; \
         benchmark 7 measures those); its other sensors (process, files, tcp, dns) stay on.\n"
    );
    let _ = writeln!(
        body,
        "Variants: the **floor** is `bench/gofloor.c`, a libbpf loader of one empty BPF program \
         (`bench/gofloor.bpf.c`, `return 0`) attached as a uprobe at the {} file offsets where \
         nhiwatch attaches in this binary — computed by the daemon's own code \
         (`monitor/src/probes/golang.rs`, compiled into the benchmark), so both trap at exactly \
         the same instructions: the entries of `crypto/tls.(*Conn).Read` and `.Write` and every RET \
         instruction of `Read` (nhiwatch never uses uretprobes on Go code). Offsets: {}. \
         bpftrace 0.17 here cannot attach at offsets, hence the loader. nhiwatch runs with the \
         bundled configuration and the two settings above; a fresh daemon attaches when it sees the client's exec, so each \
         of its runs first starts the client idle and waits until its uprobes are on the file.\n",
        sites.len(),
        sites
            .iter()
            .map(|o| format!("`{o:#x}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        body,
        "A stopped nhiwatch leaves its uprobe links to the kernel, which detaches them one by \
         one after the daemon exited (`monitor/src/probes/handoff.rs`); until then they still \
         fire in the client. So every bare and floor run first waits until none of \
         nhiwatch's programs that fire here (`go_tls_*`, `ssl_*`, `sock_*`, `handle_sock_*`) is \
         loaded any more: median wait {} s, longest {} s \
         (a guard: so far they were always gone by then). The first client run after an \
         nhiwatch stopped was still ≈ 2× slower than the next in a manual check (141 against \
         60–68 µs/request, programs already unloaded), so every variant's timed run follows an \
         untimed run of the same size.\n",
        stats::num(stats::median(&lingering), 1),
        stats::num(lingering.iter().copied().fold(0.0, f64::max), 1)
    );
    let _ = writeln!(
        body,
        "Peers: none of the tools installed here can trace Go TLS: bpftrace's `sslsnoop.bt` and \
         libbpf-tools' `sslsniff` hook OpenSSL/GnuTLS/NSS symbols (a Go binary has none), and \
         bpftrace cannot attach at the instruction offsets Go needs. So there is no peer row.\n"
    );
    let _ = writeln!(
        body,
        "**Latency** — wall time per request, as the client sees it:\n"
    );
    body.push_str(&stats::table(&rows, "µs/request", 1));
    let _ = writeln!(
        body,
        "\n**CPU** — CPU time per request of client + nginx + the tool's own process:\n"
    );
    body.push_str(&stats::table(&cpu_rows, "µs/request", 1));
    match floor_profile {
        Ok((runs, ns)) => {
            let _ = writeln!(
                body,
                "\nThe floor's program, one more run of 2000 requests with \
                 `kernel.bpf_stats_enabled=1`: {runs:.2} runs (uprobe hits) per request, {ns:.0} \
                 ns per run inside the program; the rest of the floor's cost is the trap itself."
            );
            if fl > 0.0 && runs > 0.0 {
                let _ = writeln!(
                    body,
                    "That makes the floor ≈ {:.1} µs of latency per uprobe hit in this run.",
                    fl / runs
                );
            }
        }
        Err(e) => ctx.notes.push(format!(
            "Go TLS benchmark: floor profiling pass failed: {e:#}"
        )),
    }
    match profile {
        Ok(Profile {
            table,
            ns_per_op: ns,
            ..
        }) => {
            let _ = writeln!(
                body,
                "\nWhere nhiwatch's cost goes — one more run of 2000 requests beside a fresh \
                 nhiwatch with `kernel.bpf_stats_enabled=1` (not part of the measurements above; \
                 run_time_ns / run_cnt per program, from fdinfo). Its programs run for ≈ {:.1} µs \
                 per request (the Go probes in the client; nginx's OpenSSL and the socket \
                 tracepoints are off in this configuration, the other sensors' programs are \
                 listed if they ran):\n",
                ns / 1000.0
            );
            body.push_str(&table);
        }
        Err(e) => ctx.notes.push(format!(
            "Go TLS benchmark: BPF profiling pass failed: {e:#}"
        )),
    }
    let _ = writeln!(
        body,
        "\n**Target:** nhiwatch's added cost per request ≤ {LIMIT:.2}× the floor's. {measured}. \
         Verdict: {verdict}.\n"
    );
    body.push_str(&stats::raw(&rows, 1));
    body.push_str("\nCPU per request, per round:\n\n");
    body.push_str(
        stats::raw(&cpu_rows, 1).trim_start_matches("Per-round values, in run order:\n\n"),
    );

    let mut summary = vec![SummaryRow {
        target: format!(
            "9a. HTTPS from Go (crypto/tls): nhiwatch added cost ≤ {LIMIT:.2}× an empty uprobe \
             at the same entries and RET sites"
        ),
        measured,
        verdict,
    }];
    let _ = writeln!(body, "\n### Attach cost\n");
    match attach {
        Ok(a) => {
            body.push_str(&a.text);
            summary.push(SummaryRow {
                target: "9b. Go attach cost: exec of a new ~20 MB Go binary → its probes \
                         attached (cold; cached)"
                    .into(),
                measured: a.measured,
                verdict: "measured (no numeric target in the issue)".into(),
            });
        }
        Err(e) => {
            let _ = writeln!(body, "**This part failed:**\n\n```\n{e:#}\n```");
            summary.push(SummaryRow {
                target: "9b. Go attach cost".into(),
                measured: "—".into(),
                verdict: "failed to run".into(),
            });
        }
    }
    Ok(Section {
        title: String::new(),
        body,
        summary,
    })
}

struct Run {
    wall_s: f64,
    cpu_s: f64,
}

/// `n` requests with the Go client pinned to `cpu`.
fn goloop(client: &Path, cpu: usize, port: u16, n: u64) -> Result<Run> {
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
        bail!("goloop printed {out:?}");
    }
    Ok(Run {
        wall_s: f[2],
        cpu_s: f[3],
    })
}

fn go_cmd(ctx: &Ctx) -> Command {
    let go = ctx.root.join("target/go");
    let mut c = Command::new(DEBIAN_GO);
    c.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", go.join("cache"))
        .env("GOPATH", go.join("path"))
        .env("CGO_ENABLED", "0");
    c
}

/// Builds bench/goloop into target/bench/ (Go's own build cache, under target/go/, makes
/// repeated builds quick). With `pad`, a copy of the sources embeds that many bytes of
/// incompressible data, for the attach-cost binary.
fn build_goloop(ctx: &Ctx, pad: Option<(u64, &Path)>) -> Result<PathBuf> {
    if !Path::new(DEBIAN_GO).exists() {
        bail!("{DEBIAN_GO} missing: `cargo xtask deps` installs golang-go");
    }
    let src = ctx.root.join("bench/goloop");
    let (dir, out) = match pad {
        None => (src.clone(), ctx.root.join("target/bench/goloop")),
        Some((bytes, dir)) => {
            fs::create_dir_all(dir)?;
            for f in ["go.mod", "main.go"] {
                fs::copy(src.join(f), dir.join(f))?;
            }
            fs::write(dir.join("pad.bin"), noise(bytes))?;
            fs::write(
                dir.join("pad.go"),
                "package main\n\nimport (\n\t_ \"embed\"\n\t\"os\"\n)\n\n\
                 // Padding that makes the binary as big as a large Go service.\n\
                 //go:embed pad.bin\nvar pad []byte\n\n\
                 func init() {\n\tif os.Getenv(\"GOLOOP_PAD\") != \"\" {\n\t\tos.Stdout.Write(pad[:1])\n\t}\n}\n",
            )?;
            (dir.to_path_buf(), dir.join("goloop-big"))
        }
    };
    crate::run(
        go_cmd(ctx)
            .current_dir(&dir)
            .arg("build")
            .arg("-o")
            .arg(&out)
            .arg("."),
    )
    .with_context(|| format!("building {}", dir.display()))?;
    Ok(out)
}

/// Deterministic incompressible bytes (xorshift64).
fn noise(n: u64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n.div_ceil(8))
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .take(n as usize)
        .collect()
}

/// The bundled configuration with only the Go sensor's TLS probing and no socket sensor, so
/// that nhiwatch traps where the floor traps (the daemon overlays this file on its defaults).
fn go_only_config(ctx: &Ctx) -> Result<PathBuf> {
    let path = ctx.tmp.path().join("nhiwatch-go-only.yaml");
    fs::write(
        &path,
        "sensors:\n  tls:\n    stacks: [go]\n  sockets:\n    enabled: false\n",
    )?;
    Ok(path)
}

/// Compiles the floor: the empty BPF program (clang) and its libbpf loader (cc).
fn build_floor(ctx: &Ctx) -> Result<(PathBuf, PathBuf)> {
    let obj = ctx.root.join("target/bench/gofloor.bpf.o");
    let src = ctx.root.join("bench/gofloor.bpf.c");
    crate::run(
        Command::new("clang-19")
            .args(["-O2", "-g", "-target", "bpf"])
            .args(["-I/usr/include/x86_64-linux-gnu", "-c"])
            .arg(&src)
            .arg("-o")
            .arg(&obj),
    )
    .with_context(|| format!("compiling {}", src.display()))?;
    let loader = super::compile(&ctx.root, "gofloor", &[Path::new("-lbpf")])?;
    Ok((obj, loader))
}

/// Whether `pid` is an nhiwatch daemon (the variant's tool), not the floor's loader.
fn is_nhiwatch(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "nhiwatch")
}

/// Names (prefixes) of nhiwatch's BPF programs that fire in this workload: Go TLS in the
/// client, OpenSSL in nginx, socket syscalls in both.
const LINGERING: [&str; 4] = ["go_tls_", "ssl_", "sock_", "handle_sock"];

/// Waits until none of nhiwatch's programs that fire in this workload is loaded (any daemon's:
/// they would fire here too); returns how long that took (more than `max`: gave up).
fn wait_probes_gone(max: Duration) -> Duration {
    let t0 = Instant::now();
    while sys::prog_names()
        .values()
        .any(|n| LINGERING.iter().any(|p| n.starts_with(p)))
    {
        if t0.elapsed() > max {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

/// The nhiwatch this benchmark started (a child of this process).
fn our_daemon() -> Option<u32> {
    let me = std::process::id();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid …"
        let (comm, rest) = stat.split_once(") ")?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (comm.ends_with("(nhiwatch") && ppid == me).then_some(pid)
    })
}

/// Runs the client in its hold mode (no traffic) until daemon `pid` holds `sites` more BPF
/// links than before: its uprobes on the client are attached. An idle process, so that the
/// attach is waited for rather than raced; the runs that follow start within the daemon's
/// grace period (`GO_DETACH_AFTER`), so the probes stay on the file between them.
fn wait_probed(pid: u32, sites: usize, client: &Path) -> Result<()> {
    let base = sys::attachments(pid);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut p = hold(client)?;
    let r = loop {
        if sys::attachments(pid) >= base + sites {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "nhiwatch (pid {pid}) attached no {sites} uprobes to the Go client within 60 s \
                 ({} BPF links, {base} before)",
                sys::attachments(pid)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(p.stdin.take());
    p.wait()?;
    r
}

/// One run with the floor and `kernel.bpf_stats_enabled=1`: (program runs per request, ns per run).
fn profile_floor(
    ctx: &mut Ctx,
    loader: &Path,
    args: &[OsString],
    workload: impl FnOnce() -> Result<u64>,
) -> Result<(f64, f64)> {
    let mut p = ctx.spawn(
        "gofloor-profile",
        Command::new(loader).args(args),
        Stdio::null(),
    )?;
    sys::wait_attached(&mut p, Duration::from_secs(60))?;
    let before = sys::prog_stats(p.pid())?;
    let ops = {
        let _on = sys::BpfStats::enable()?;
        workload()?
    } as f64;
    let after = sys::prog_stats(p.pid())?;
    p.check_alive()?;
    p.stop()?;
    let (mut cnt, mut ns) = (0u64, 0u64);
    for a in &after {
        let b = before.iter().find(|b| b.id == a.id);
        cnt += a.run_cnt - b.map_or(0, |b| b.run_cnt);
        ns += a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
    }
    if cnt == 0 {
        bail!("the floor's program never ran");
    }
    Ok((cnt as f64 / ops, ns as f64 / cnt as f64))
}

struct Attach {
    text: String,
    measured: String,
}

/// Exec of a never-seen ~20 MB Go binary (a fresh copy: nhiwatch keys what it has examined by
/// device and inode) → `nhiwatch_probe_attached{…,target=<file>} 1` on /metrics; and the same
/// file again (cached).
fn attach_cost(ctx: &mut Ctx) -> Result<Attach> {
    let dir = ctx.root.join("target/bench/goattach");
    let small = fs::metadata(ctx.root.join("target/bench/goloop"))?.len();
    let big = build_goloop(ctx, Some((ATTACH_BYTES.saturating_sub(small), &dir)))?;
    let size = fs::metadata(&big)?.len();
    let config = ctx.bundled_config();
    let daemon = ctx.start_daemon(&config, super::TOOL_CPU)?;
    let addr = daemon.addr;
    let daemon_pid = daemon.proc.pid();
    let runs_dir = ctx.tmp.path().join("attach");
    fs::create_dir_all(&runs_dir)?;
    let mut cold = Vec::new();
    let mut cached = Vec::new();
    let sites = golang::inspect(&big)
        .map(|g| 2 + g.read.rets.len())
        .unwrap_or(0);
    let result = (|| -> Result<()> {
        for i in 0..ATTACH_RUNS {
            let file = runs_dir.join(format!("goapp-{i}"));
            fs::copy(&big, &file)?;
            if attached(addr, &file)? {
                bail!(
                    "{} counted as attached before its first exec",
                    file.display()
                );
            }
            cold.push(exec_until_attached(addr, &file)?);
            // The same file again: nhiwatch knows its (device, inode), and the uprobes are on
            // the inode already, so they are in place before the exec; the daemon adds none.
            let links = sys::attachments(daemon_pid);
            let t0 = Instant::now();
            let mut p = hold(&file)?;
            let ok = attached(addr, &file)?;
            cached.push(t0.elapsed().as_secs_f64() * 1e3);
            drop(p.stdin.take());
            p.wait()?;
            if !ok || sys::attachments(daemon_pid) != links {
                bail!(
                    "cached exec of {}: probes not simply in place",
                    file.display()
                );
            }
        }
        Ok(())
    })();
    daemon.finish(ctx)?;
    result?;
    let (mc, mk) = (stats::median(&cold), stats::median(&cached));
    let fmt = |xs: &[f64]| {
        xs.iter()
            .map(|x| stats::num(*x, 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let measured = format!(
        "cold: median {} ms (min {} – max {}) from exec to attached, {ATTACH_RUNS} runs; \
         cached: probes already in place at exec (0 ms of daemon work)",
        stats::num(mc, 1),
        stats::num(cold.iter().copied().fold(f64::INFINITY, f64::min), 1),
        stats::num(cold.iter().copied().fold(f64::NEG_INFINITY, f64::max), 1),
    );
    let text = format!(
        "The client above, padded with {} MiB of embedded incompressible data (`//go:embed`) to \
         a {:.1} MB binary ({} bytes; the padding is data, not code, so its `.gopclntab` — which \
         nhiwatch searches — is that of the {:.1} MB client). One nhiwatch (bundled \
         configuration, pinned to CPU 0) runs throughout. **Cold**: {ATTACH_RUNS} times, a \
         fresh copy of the binary (a new inode, never seen by the daemon; its pages are in the \
         page cache since it was just written) is executed and waits on stdin; the time is from \
         just before `exec` until `/metrics` (polled every 2 ms) shows \
         `nhiwatch_probe_attached{{…,target=\"/proc/<pid>/root<the copy>\"}} 1` for both Go \
         functions, which the daemon sets once all {sites} uprobes are attached. **Cached**: the same copy executed \
         again: nhiwatch remembers examined files by (device, inode) and uprobes live on the \
         inode, and a Go file keeps them for 3 s after its last process exited (then they are \
         released, and its next exec attaches them again from the cached inspection), so they are \
         in place before this exec (checked: the metric is already 1 and the daemon holds no more \
         BPF links after the exec) — the first TLS call of the new process \
         is seen, with no daemon work (the time until the metric check returned, {} ms median, \
         is the poll itself).\n\n\
         | | Median (ms) | Per run (ms) |\n|---|---:|---|\n\
         | cold (never-seen file) | {} | {} |\n| cached (same file again) | 0 (already attached) | \
         poll: {} |\n",
        (ATTACH_BYTES.saturating_sub(small)) >> 20,
        size as f64 / 1e6,
        size,
        small as f64 / 1e6,
        stats::num(mk, 1),
        stats::num(mc, 1),
        fmt(&cold),
        fmt(&cached),
    );
    Ok(Attach { text, measured })
}

/// Starts `file` in its hold mode (N = 0: no TLS traffic, waits for stdin to close).
fn hold(file: &Path) -> Result<std::process::Child> {
    Command::new(file)
        .args(["0", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", file.display()))
}

/// Whether every `nhiwatch_probe_attached` series for `file` is 1 (and there is one). The
/// daemon names the file as its process saw it: `/proc/<pid>/root<file>`.
fn attached(addr: SocketAddr, file: &Path) -> Result<bool> {
    let (_, body) = sys::http_get(addr, "/metrics")?;
    Ok(attached_in(&body, file))
}

fn attached_in(metrics: &str, file: &Path) -> bool {
    let path = file.to_string_lossy();
    let rooted = format!("/root{path}");
    let mut any = false;
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("nhiwatch_probe_attached{"))
    {
        let Some((labels, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let Some(target) = labels
            .split("target=\"")
            .nth(1)
            .and_then(|t| t.split('"').next())
        else {
            continue;
        };
        if target != path && !target.ends_with(&rooted) {
            continue;
        }
        if value.trim() != "1" {
            return false;
        }
        any = true;
    }
    any
}

/// Execs `file` (hold mode) and polls until its probes are attached: ms from exec.
fn exec_until_attached(addr: SocketAddr, file: &Path) -> Result<f64> {
    let t0 = Instant::now();
    let mut p = hold(file)?;
    let deadline = t0 + Duration::from_secs(30);
    let r = loop {
        if attached(addr, file)? {
            break Ok(t0.elapsed().as_secs_f64() * 1e3);
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "nhiwatch did not attach to {} within 30 s (nhiwatch_probe_attached)",
                file.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // Closing stdin ends the hold.
    drop(p.stdin.take());
    p.wait()?;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_needs_every_series_of_the_file_at_one() {
        let f = Path::new("/t/goapp-1");
        let m = "nhiwatch_probe_attached{probe=\"tls/crypto/tls.(*Conn).Write\",target=\"/proc/7/root/t/goapp-1\"} 1\n\
                 nhiwatch_probe_attached{probe=\"tls/crypto/tls.(*Conn).Read\",target=\"/proc/7/root/t/goapp-1\"} 1\n\
                 nhiwatch_probe_attached{probe=\"tls/x\",target=\"/proc/7/root/t/goapp-10\"} 0\n";
        assert!(attached_in(m, f));
        assert!(!attached_in(m, Path::new("/t/goapp-2")));
        let half = m.replacen("} 1\n", "} 0\n", 1);
        assert!(!attached_in(&half, f));
    }

    #[test]
    fn noise_has_the_asked_length() {
        assert_eq!(noise(13).len(), 13);
        assert_ne!(noise(64)[..8], noise(64)[8..16]);
    }
}
