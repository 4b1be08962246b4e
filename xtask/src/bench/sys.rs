//! What the benchmarks start and ask: guarded child processes (stopped on drop), a temporary
//! directory (removed on drop), free ports, tiny HTTP/1.0 requests, CPU time of a process,
//! the monotonic clock, thread pinning and inotify.

use std::{
    fs::{self, File},
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
    fn inotify_init1(flags: i32) -> i32;
    fn inotify_add_watch(fd: i32, path: *const std::ffi::c_char, mask: u32) -> i32;
    fn poll(fds: *mut PollFd, n: u64, timeout_ms: i32) -> i32;
    fn read(fd: i32, buf: *mut u8, n: usize) -> isize;
    fn close(fd: i32) -> i32;
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

const CLOCK_REALTIME: i32 = 0;
const CLOCK_MONOTONIC: i32 = 1;
const IN_NONBLOCK: i32 = 0o4000;
const IN_CLOEXEC: i32 = 0o2000000;
const IN_MODIFY: u32 = 0x2;
const POLLIN: i16 = 1;

const SIGTERM: i32 = 15;

/// How long a stopped process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// A directory removed, with everything in it, when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("nhiwatch-bench-{}-{nanos:08x}", std::process::id()));
        fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL after a grace period) when
/// dropped, so nothing outlives the benchmark even when it fails half-way.
pub struct Proc {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdin closed, the given stdout, and stderr into `log` (if any).
    pub fn spawn(name: &str, cmd: &mut Command, stdout: Stdio, log: Option<&Path>) -> Result<Proc> {
        cmd.stdin(Stdio::null()).stdout(stdout);
        match log {
            Some(l) => {
                cmd.stderr(File::create(l).with_context(|| format!("creating {}", l.display()))?)
            }
            None => cmd.stderr(Stdio::null()),
        };
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.map(Path::to_path_buf),
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails (with the end of its log) if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        if let Some(st) = self.status {
            bail!(
                "{} exited unexpectedly ({st}){}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the process's stderr log, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("\n--- {} ---\n{tail}", log.display())
    }

    /// Stops the process and returns how it exited.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        if let Some(st) = self.child.try_wait()? {
            self.status = Some(st);
            return Ok(st);
        }
        // SAFETY: kill(2) on the pid of our own, not yet reaped child: it cannot have
        // been reused by another process.
        unsafe { kill(self.child.id() as i32, SIGTERM) };
        let deadline = Instant::now() + GRACE;
        loop {
            if let Some(st) = self.child.try_wait()? {
                self.status = Some(st);
                return Ok(st);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "bench: {} ignored SIGTERM for {GRACE:?}: killing it",
                    self.name
                );
                let _ = self.child.kill();
                let st = self.child.wait()?;
                self.status = Some(st);
                return Ok(st);
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET {path}: not an HTTP response: {text:.80}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits until GET `path` answers 200, failing early if `proc` exits.
pub fn wait_http_ok(
    proc: &mut Proc,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        proc.check_alive()?;
        if let Ok((200, _)) = http_get(addr, path) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer 200 on http://{addr}{path} within {timeout:?}{}",
                proc.name,
                proc.log_tail()
            );
        }
        sleep(Duration::from_millis(50));
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_port(proc: &mut Proc, port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        proc.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} is not listening on {addr} after {timeout:?}{}",
                proc.name,
                proc.log_tail()
            );
        }
        sleep(Duration::from_millis(50));
    }
}

/// Number of BPF attachments a process holds (perf-event and bpf_link descriptors).
pub fn attachments(pid: u32) -> usize {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|t| {
            let t = t.to_string_lossy();
            t.contains("perf_event") || t.contains("bpf_link") || t.contains("bpf-link")
        })
        .count()
}

/// Waits until a BPF tool has attached its probes: it holds attachment descriptors and
/// their number has not changed for a second. Output goes to /dev/null, so this is read
/// from /proc/PID/fd rather than from the tool's banner.
pub fn wait_attached(proc: &mut Proc, timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut last = (0usize, Instant::now());
    loop {
        proc.check_alive()?;
        let n = attachments(proc.pid());
        if n != last.0 {
            last = (n, Instant::now());
        } else if n > 0 && last.1.elapsed() >= Duration::from_secs(1) {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!(
                "{} attached nothing stable within {timeout:?} ({n} attachments){}",
                proc.name,
                proc.log_tail()
            );
        }
        sleep(Duration::from_millis(100));
    }
}

/// CPU time used so far by every thread of a process, in nanoseconds.
pub fn cpu_ns(pid: u32) -> Result<u64> {
    // Per-thread schedstat is nanosecond-exact; fall back to clock ticks.
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        let mut sum = 0u64;
        let mut any = false;
        for e in dir.flatten() {
            if let Some(ns) = fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            {
                sum += ns;
                any = true;
            }
        }
        if any {
            return Ok(sum);
        }
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() != 2 {
        bail!("cannot read CPU time of pid {pid}");
    }
    // USER_HZ is 100 on every Linux architecture nhiwatch targets.
    Ok((f[0] + f[1]) * 10_000_000)
}

/// Runs a command to completion and returns its stdout; fails with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Turns on the kernel's per-program BPF run-time accounting (`kernel.bpf_stats_enabled`)
/// and restores the previous setting when dropped. The accounting costs two clock reads per
/// program run, so it is only on during a separate profiling pass, never while measuring.
pub struct BpfStats {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let old = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.old);
    }
}

/// Run-time counters of one BPF program a process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgStats {
    pub id: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    /// BPF_PROG_TYPE_* (uprobes and uretprobes are kprobe-type programs, 2).
    pub prog_type: u32,
}

/// BPF_PROG_TYPE_KPROBE: the type of uprobe and uretprobe programs, each run of which is a trap.
pub const PROG_TYPE_KPROBE: u32 = 2;

/// The BPF programs `pid` holds descriptors to, with their run-time counters (from fdinfo).
pub fn prog_stats(pid: u32) -> Result<Vec<ProgStats>> {
    let mut out = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let is_prog =
            fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("bpf-prog"));
        if !is_prog {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
        };
        if let (Some(id), Some(t), Some(c)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            if !out.iter().any(|p: &ProgStats| p.id == id as u32) {
                out.push(ProgStats {
                    id: id as u32,
                    run_time_ns: t,
                    run_cnt: c,
                    prog_type: field("prog_type:").unwrap_or(0) as u32,
                });
            }
        }
    }
    Ok(out)
}

/// Program id → name, from `bpftool prog show`.
pub fn prog_names() -> std::collections::HashMap<u32, String> {
    let text = output(Command::new("bpftool").args(["prog", "show"])).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once(": ")?;
            let id = id.trim().parse().ok()?;
            let mut words = rest.split_whitespace();
            words.find(|w| *w == "name")?;
            Some((id, words.next()?.to_owned()))
        })
        .collect()
}

/// This process's ancestors (the cargo that ran us, the shell …), never reported as neighbours.
pub fn ancestors() -> Vec<u32> {
    let mut out = Vec::new();
    let mut pid = std::process::id();
    while pid > 1 && out.len() < 64 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        match ppid {
            Some(p) if p > 0 => {
                out.push(p);
                pid = p;
            }
            _ => break,
        }
    }
    out
}

/// Processes with one of these command names, except `ours`: other monitors or servers
/// running beside the benchmark, worth reporting as a source of noise.
pub fn foreign_processes(names: &[&str], ours: &[u32]) -> Vec<String> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || ours.contains(&pid) {
            continue;
        }
        let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if names.contains(&comm) {
            found.push(format!("{comm} ({pid})"));
        }
    }
    found.sort();
    found
}

fn clock_ns(clock: i32) -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own.
    unsafe { clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds: the clock C workloads and Python receivers
/// (`time.monotonic_ns`) stamp with, so their times and ours compare directly.
pub fn mono_ns() -> u64 {
    clock_ns(CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch: the clock the daemon's finding times use.
pub fn real_ns() -> u64 {
    clock_ns(CLOCK_REALTIME)
}

/// Pins the calling thread (not the whole process) to one CPU.
pub fn pin_thread(cpu: usize) -> Result<()> {
    let mut mask = [0u64; 16];
    if cpu >= 64 * mask.len() {
        bail!("CPU {cpu} out of range");
    }
    mask[cpu / 64] |= 1 << (cpu % 64);
    // SAFETY: pid 0 is the calling thread; the mask is a cpu_set_t-sized buffer we own.
    let r = unsafe { sched_setaffinity(0, std::mem::size_of_val(&mask), mask.as_ptr()) };
    if r != 0 {
        bail!(
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// An inotify instance watching files for writes (IN_MODIFY), closed on drop.
pub struct Inotify(i32);

impl Inotify {
    pub fn new() -> Result<Inotify> {
        // SAFETY: a plain syscall; the descriptor is owned by the value returned.
        let fd = unsafe { inotify_init1(IN_NONBLOCK | IN_CLOEXEC) };
        if fd < 0 {
            bail!("inotify_init1: {}", std::io::Error::last_os_error());
        }
        Ok(Inotify(fd))
    }

    pub fn watch_writes(&self, path: &Path) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: our descriptor and a NUL-terminated path.
        if unsafe { inotify_add_watch(self.0, c.as_ptr(), IN_MODIFY) } < 0 {
            bail!(
                "inotify_add_watch {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for writes; true if there were any (the events are consumed).
    pub fn wait(&self, timeout_ms: i32) -> Result<bool> {
        let mut p = PollFd {
            fd: self.0,
            events: POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let r = unsafe { poll(&mut p, 1, timeout_ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            bail!("poll on inotify: {e}");
        }
        if r == 0 {
            return Ok(false);
        }
        let mut buf = [0u8; 4096];
        // Non-blocking: drains what is queued, then EAGAIN ends the loop.
        // SAFETY: reads into a buffer we own, at most its length.
        while unsafe { read(self.0, buf.as_mut_ptr(), buf.len()) } > 0 {}
        Ok(true)
    }
}

impl Drop for Inotify {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this value owns, once.
        unsafe { close(self.0) };
    }
}

/// One CPU's time from /proc/stat, in ns: (busy, steal, total). Busy is everything but idle,
/// iowait and steal; steal is time the hypervisor gave to someone else.
pub fn cpu_times(cpu: usize) -> Result<(u64, u64, u64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 8 {
        bail!("short {name} line in /proc/stat: {line}");
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = f[..8].iter().sum();
    let (idle, iowait, steal) = (f[3], f[4], f[7]);
    // USER_HZ is 100 on every Linux architecture nhiwatch targets.
    let ns = |ticks: u64| ticks * 10_000_000;
    Ok((ns(total - idle - iowait - steal), ns(steal), ns(total)))
}
