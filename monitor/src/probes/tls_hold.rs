//! The daemon's side of the TLS library hold (tls_hold.bpf.c): the heartbeat, the reader that wakes on each new library file, and continuing every held process.
//!
//! A process stopped by the kernel side waits for us: it is continued right after its library
//! has its uprobes ([`TlsHold::release`]), at a deadline whatever happened ([`TlsHold::sweep`]),
//! and when the daemon stops ([`TlsHold::release_all`]).

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::mpsc::SyncSender,
    time::Duration,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};

use super::{abi::*, upkeep::UpkeepRequest};

/// A held process is continued at the latest this long after it was stopped, whatever the
/// attach is doing (on a VM an attach can wait ≈ 0.1 s per uprobe for a kernel mutex while
/// another daemon's uprobes are being torn down).
pub const HOLD_DEADLINE: Duration = Duration::from_millis(2000);

/// The maps the kernel side shares with the daemon.
pub struct TlsHold {
    ctl: Array<MapData, nw_tls_hold_ctl>,
    libs: BpfHashMap<MapData, nw_inode_key, nw_tls_lib_entry>,
    held: BpfHashMap<MapData, u32, nw_tls_held>,
    held_for_reader: Option<BpfHashMap<MapData, u32, nw_tls_held>>,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A `stat` device number in the kernel's internal encoding (`s_dev`, MKDEV: major << 20 | minor).
pub fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

impl TlsHold {
    /// From the object's maps; `held` is opened twice (the reader keeps the deadline with
    /// its own handle).
    pub fn new(
        ctl: Array<MapData, nw_tls_hold_ctl>,
        libs: BpfHashMap<MapData, nw_inode_key, nw_tls_lib_entry>,
        held: aya::maps::Map,
    ) -> Result<TlsHold, String> {
        let aya::maps::Map::HashMap(data) = &held else {
            return Err("tls_held is not a hash map".into());
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("tls_held: {e}"))?;
        let second = MapData::from_fd(fd).map_err(|e| format!("tls_held: {e}"))?;
        let open = |m| BpfHashMap::try_from(m).map_err(|e| format!("tls_held: {e}"));
        Ok(TlsHold {
            ctl,
            libs,
            held: open(held)?,
            held_for_reader: Some(open(aya::maps::Map::HashMap(second))?),
        })
    }

    /// Tells the kernel side we are alive; it holds nobody after 3 s without a beat.
    pub fn beat(&mut self) {
        self.set_heartbeat(monotonic_ns());
    }

    /// From now on nobody is held (stopping).
    pub fn stop_beating(&mut self) {
        self.set_heartbeat(0);
    }

    fn set_heartbeat(&mut self, heartbeat_ns: u64) {
        let (uid, kill_any) = continue_rights();
        let _ = self.ctl.set(
            0,
            nw_tls_hold_ctl {
                heartbeat_ns,
                uid,
                kill_any: u32::from(kill_any),
            },
            0,
        );
    }

    /// The file has its uprobes (or never will): mapping it holds nobody any more.
    pub fn mark_done(&mut self, dev: u32, ino: u64) {
        let key = nw_inode_key { ino, dev, _pad: 0 };
        let v = nw_tls_lib_entry {
            state: NW_TLS_LIB_DONE,
            _pad: 0,
            since_ns: monotonic_ns(),
        };
        let _ = self.libs.insert(key, v, 0);
    }

    /// Continues a held process; how long it was held, if it was listed.
    pub fn release(&mut self, pid: u32) -> Option<Duration> {
        release(&mut self.held, pid)
    }

    /// Continues every process held for longer than `max_age`; returns how long each was held.
    pub fn sweep(&mut self, max_age: Duration) -> Vec<Duration> {
        let now = monotonic_ns();
        let old: Vec<u32> = self
            .held
            .iter()
            .flatten()
            .filter(|(_, h)| now.saturating_sub(h.since_ns) >= max_age.as_nanos() as u64)
            .map(|(pid, _)| pid)
            .collect();
        old.into_iter()
            .filter_map(|pid| self.release(pid))
            .collect()
    }

    /// The second handle on the list of held processes, for the reader's deadline (once).
    pub fn take_held_handle(&mut self) -> Option<BpfHashMap<MapData, u32, nw_tls_held>> {
        self.held_for_reader.take()
    }

    /// Stops holding and continues everyone still held.
    pub fn release_all(&mut self) -> Vec<Duration> {
        self.stop_beating();
        self.sweep(Duration::ZERO)
    }
}

/// The daemon's uid, and whether it may signal processes of every uid (CAP_KILL): the kernel
/// side holds only processes we are allowed to continue.
fn continue_rights() -> (u32, bool) {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let kill_any = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let v = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(v.trim(), 16).ok()
        })
        .is_some_and(|eff| eff & (1 << 5) != 0); // CAP_KILL
    (uid, kill_any)
}

/// Continues `pid` if it is listed as held, then forgets it; how long it was held.
fn release(held: &mut BpfHashMap<MapData, u32, nw_tls_held>, pid: u32) -> Option<Duration> {
    release_if(held, pid, None)
}

/// Like [`release`], only if the listed hold began at `since` (when given): a deadline kept for
/// an earlier hold of the same pid must not cut a later one short.
fn release_if(
    held: &mut BpfHashMap<MapData, u32, nw_tls_held>,
    pid: u32,
    since: Option<u64>,
) -> Option<Duration> {
    let h = held.get(&pid, 0).ok()?;
    if since.is_some_and(|s| s != h.since_ns) {
        return None;
    }
    // Forget first, continue second: once running, the process may map another new library
    // and must then be listed afresh (the kernel side lists a pid only if it is not listed).
    let _ = held.remove(&pid);
    // SAFETY: kill has no memory preconditions; SIGCONT to a running process does nothing.
    if unsafe { libc::kill(pid as i32, libc::SIGCONT) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::error!(pid, error = %e, "could not continue a process held at a new TLS library");
        }
    }
    Some(Duration::from_nanos(
        monotonic_ns().saturating_sub(h.since_ns),
    ))
}

/// Ends the reader thread when dropped.
pub struct ReaderStop(#[allow(dead_code)] OwnedFd);

/// Reads the hold ring on its own thread and hands each record to the upkeep thread at once:
/// a held process waits for it. The same thread keeps the deadline: the upkeep thread may be
/// stuck in an attach, this one only waits for records and the clock. It ends when the
/// returned handle is dropped.
pub fn spawn_reader(
    mut ring: RingBuf<MapData>,
    mut held: BpfHashMap<MapData, u32, nw_tls_held>,
    tx: SyncSender<UpkeepRequest>,
    metrics: super::telemetry::HoldMetrics,
) -> std::io::Result<ReaderStop> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (rd, wr) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    std::thread::Builder::new()
        .name("nhiwatch-tls-hold".into())
        .spawn(move || {
            // Held pids this thread has heard of, with when they were held (monotonic ns).
            let mut waiting: Vec<(u32, u64)> = Vec::new();
            loop {
                let now = monotonic_ns();
                let deadline = HOLD_DEADLINE.as_nanos() as u64;
                waiting.retain(|&(pid, since)| {
                    if now.saturating_sub(since) < deadline {
                        return true;
                    }
                    if let Some(waited) = release_if(&mut held, pid, Some(since)) {
                        metrics.continued("expired", waited);
                    }
                    false
                });
                let timeout_ms = waiting
                    .iter()
                    .map(|&(_, since)| (since + deadline).saturating_sub(now) / 1_000_000 + 1)
                    .min()
                    .map_or(-1, |ms| ms.min(i32::MAX as u64) as i32);
                let mut p = [
                    libc::pollfd {
                        fd: ring.as_fd().as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: rd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: poll on two descriptors this thread keeps open.
                let n = unsafe { libc::poll(p.as_mut_ptr(), 2, timeout_ms) };
                if n < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    return;
                }
                if p[1].revents != 0 {
                    return; // the write end was closed: the daemon stops
                }
                while let Some(item) = ring.next() {
                    if item.len() < std::mem::size_of::<nw_tls_hold>() {
                        continue;
                    }
                    // SAFETY: the kernel wrote a whole nw_tls_hold (size checked); read unaligned.
                    let r: nw_tls_hold =
                        unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<nw_tls_hold>()) };
                    if r.held != 0 {
                        metrics.held();
                        waiting.push((r.pid, r.since_ns));
                    }
                    match tx.try_send(UpkeepRequest::TlsLibrary(r)) {
                        Ok(()) => {}
                        // The deadline continues a held process whose record is dropped here.
                        Err(std::sync::mpsc::TrySendError::Full(_)) => metrics.queue_full(),
                        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
                    }
                }
            }
        })?;
    Ok(ReaderStop(wr))
}
