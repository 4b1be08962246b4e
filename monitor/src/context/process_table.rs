//! Process table: exec/fork/exit events (and a /proc scan at start) → who a pid is.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    path::Path,
    sync::Arc,
};

use crate::events::{Event, Exec};

/// What nhiwatch knows of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// Executable path (shared between a parent and the children it forks).
    pub exe: Arc<str>,
    pub comm: Arc<str>,
    pub cgroup_id: u64,
    /// Boot-clock start time: with pid, identifies the process across pid reuse.
    pub start_time_ns: u64,
    /// Set once the process exited; the entry lingers for late events.
    pub exited_ns: Option<u64>,
    /// Known from /proc at start rather than from an exec/fork event.
    pub from_scan: bool,
}

/// Bounded map pid → process. Exited processes stay for `linger_ns` so that
/// events emitted just before exit (a TCP close, a TLS read) still resolve.
#[derive(Debug)]
pub struct ProcessTable {
    procs: HashMap<u32, ProcessInfo>,
    exited: VecDeque<(u64, u32, u64)>, // (exit time, pid, start time)
    linger_ns: u64,
    capacity: usize,
    evicted: u64,
    /// exec path → path with symlinks resolved.
    canonical: HashMap<String, Arc<str>>,
}

impl ProcessTable {
    pub fn new(capacity: usize, linger_ns: u64) -> Self {
        ProcessTable {
            procs: HashMap::with_capacity(capacity.min(1 << 16)),
            exited: VecDeque::new(),
            linger_ns,
            capacity,
            evicted: 0,
            canonical: HashMap::new(),
        }
    }

    /// Seeds the table from `/proc` so that processes running before the daemon are known.
    pub fn scan_proc(&mut self, proc_root: &Path, cgroup_root: &Path) -> usize {
        let Ok(dir) = fs::read_dir(proc_root) else {
            return 0;
        };
        let mut n = 0;
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // Processes vanish while we read: a partial read is skipped, not an error.
            if let Some(info) = read_proc(proc_root, cgroup_root, pid) {
                self.procs.entry(pid).or_insert(info);
                n += 1;
            }
        }
        n
    }

    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.procs.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Entries dropped because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Applies a lifecycle event; other events are ignored.
    pub fn apply(&mut self, ev: &Event<'_>) {
        match ev {
            Event::Exec(e) => self.exec(e),
            Event::Fork(f) => {
                let (exe, cgroup) = match self.procs.get(&f.ppid) {
                    Some(p) => (p.exe.clone(), p.cgroup_id),
                    None => (Arc::from(""), f.hdr.cgroup_id),
                };
                self.insert(ProcessInfo {
                    pid: f.hdr.pid,
                    ppid: f.ppid,
                    uid: f.uid,
                    exe,
                    comm: Arc::from(String::from_utf8_lossy(f.comm).as_ref()),
                    cgroup_id: cgroup,
                    start_time_ns: f.start_time_ns,
                    exited_ns: None,
                    from_scan: false,
                });
            }
            Event::Exit(x) => {
                if let Some(p) = self.procs.get_mut(&x.hdr.pid) {
                    if p.exited_ns.is_none() {
                        p.exited_ns = Some(x.hdr.ktime_ns);
                        self.exited
                            .push_back((x.hdr.ktime_ns, x.hdr.pid, p.start_time_ns));
                    }
                }
                self.expire(x.hdr.ktime_ns);
            }
            _ => {}
        }
    }

    fn exec(&mut self, e: &Exec<'_>) {
        let filename = String::from_utf8_lossy(e.filename);
        let exe: Arc<str> = if filename.starts_with('/') {
            // /bin/ls and /usr/bin/ls are one program: resolve symlinks once per path.
            // (Not /proc/PID/exe: by now the process may have exec'd something else.)
            match self.canonical.get(filename.as_ref()) {
                Some(c) => c.clone(),
                None => {
                    let c: Arc<str> = fs::canonicalize(filename.as_ref())
                        .map(|p| Arc::from(p.to_string_lossy().as_ref()))
                        .unwrap_or_else(|_| Arc::from(filename.as_ref()));
                    if self.canonical.len() >= 4096 {
                        self.canonical.clear();
                    }
                    self.canonical.insert(filename.to_string(), c.clone());
                    c
                }
            }
        } else {
            // execve("./tool"): the kernel's view is the truth, if the process is still there.
            fs::read_link(format!("/proc/{}/exe", e.hdr.pid))
                .map(|p| Arc::from(p.to_string_lossy().as_ref()))
                .unwrap_or_else(|_| Arc::from(filename.as_ref()))
        };
        self.insert(ProcessInfo {
            pid: e.hdr.pid,
            ppid: e.ppid,
            uid: e.uid,
            exe,
            comm: Arc::from(String::from_utf8_lossy(e.comm).as_ref()),
            cgroup_id: e.hdr.cgroup_id,
            start_time_ns: e.start_time_ns,
            exited_ns: None,
            from_scan: false,
        });
    }

    fn insert(&mut self, info: ProcessInfo) {
        if self.procs.len() >= self.capacity && !self.procs.contains_key(&info.pid) {
            self.evict_one();
        }
        self.procs.insert(info.pid, info);
    }

    fn evict_one(&mut self) {
        // Oldest exited first; if none exited, the oldest-started process.
        while let Some((_, pid, start)) = self.exited.pop_front() {
            if self
                .procs
                .get(&pid)
                .is_some_and(|p| p.start_time_ns == start && p.exited_ns.is_some())
            {
                self.procs.remove(&pid);
                self.evicted += 1;
                return;
            }
        }
        if let Some(pid) = self
            .procs
            .values()
            .min_by_key(|p| p.start_time_ns)
            .map(|p| p.pid)
        {
            self.procs.remove(&pid);
            self.evicted += 1;
        }
    }

    /// Forgets processes that exited more than `linger_ns` before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(t, pid, start)) = self.exited.front() {
            if now_ns.saturating_sub(t) < self.linger_ns {
                break;
            }
            self.exited.pop_front();
            // The pid may have been reused by a newer process since: keep that one.
            if self
                .procs
                .get(&pid)
                .is_some_and(|p| p.start_time_ns == start && p.exited_ns.is_some())
            {
                self.procs.remove(&pid);
            }
        }
    }
}

fn read_proc(proc_root: &Path, cgroup_root: &Path, pid: u32) -> Option<ProcessInfo> {
    let base = proc_root.join(pid.to_string());
    let stat = fs::read_to_string(base.join("stat")).ok()?;
    // comm may contain spaces and parentheses: split at the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid: u32 = fields.get(1)?.parse().ok()?;
    let start_ticks: u64 = fields.get(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let status = fs::read_to_string(base.join("status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())?;
    // Kernel threads have no exe: keep them, named by comm.
    let exe = fs::read_link(base.join("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup_id = fs::read_to_string(base.join("cgroup"))
        .ok()
        .and_then(|c| cgroup_v2_id(&c, cgroup_root))
        .unwrap_or(0);
    Some(ProcessInfo {
        pid,
        ppid,
        uid,
        exe: Arc::from(exe),
        comm: Arc::from(comm),
        cgroup_id,
        start_time_ns: start_ticks.saturating_mul(1_000_000_000 / hz),
        exited_ns: None,
        from_scan: true,
    })
}

/// The cgroup v2 id (directory inode) for a `/proc/PID/cgroup` text.
pub fn cgroup_v2_id(proc_cgroup: &str, cgroup_root: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let rel = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = cgroup_root.join(rel.trim_start_matches('/'));
    fs::metadata(dir).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Exit, Fork, Header};

    fn hdr(pid: u32, t: u64) -> Header {
        Header {
            ktime_ns: t,
            pid,
            tid: pid,
            cgroup_id: 9,
        }
    }

    fn exec(pid: u32, ppid: u32, path: &'static [u8], t: u64) -> Event<'static> {
        Event::Exec(Exec {
            hdr: hdr(pid, t),
            ppid,
            uid: 1000,
            gid: 1000,
            start_time_ns: t,
            comm: b"x",
            filename: path,
        })
    }

    fn exit(pid: u32, start: u64, t: u64) -> Event<'static> {
        Event::Exit(Exit {
            hdr: hdr(pid, t),
            exit_code: 0,
            start_time_ns: start,
        })
    }

    #[test]
    fn fork_inherits_exe_then_exec_replaces_it() {
        let mut t = ProcessTable::new(100, 1_000);
        t.apply(&exec(10, 1, b"/nonexistent/bash", 1));
        t.apply(&Event::Fork(Fork {
            hdr: hdr(11, 2),
            ppid: 10,
            uid: 1000,
            start_time_ns: 2,
            comm: b"bash",
        }));
        assert_eq!(&*t.get(11).unwrap().exe, "/nonexistent/bash");
        assert_eq!(t.get(11).unwrap().ppid, 10);
        t.apply(&exec(11, 10, b"/nonexistent/curl", 3));
        assert_eq!(&*t.get(11).unwrap().exe, "/nonexistent/curl");
        assert_eq!(t.get(11).unwrap().ppid, 10);
    }

    #[test]
    fn exec_paths_are_canonical() {
        let mut t = ProcessTable::new(100, 1_000);
        t.apply(&exec(10, 1, b"/bin/sh", 1));
        let want = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(&*t.get(10).unwrap().exe, want.to_str().unwrap());
    }

    #[test]
    fn exited_processes_linger_then_go() {
        let mut t = ProcessTable::new(100, 1_000);
        t.apply(&exec(10, 1, b"/bin/true", 1));
        t.apply(&exit(10, 1, 100));
        assert!(
            t.get(10).unwrap().exited_ns.is_some(),
            "still resolvable right after exit"
        );
        t.expire(500);
        assert!(t.get(10).is_some());
        t.expire(1_200);
        assert!(t.get(10).is_none());
    }

    #[test]
    fn a_reused_pid_is_not_expired_by_its_predecessor() {
        let mut t = ProcessTable::new(100, 1_000);
        t.apply(&exec(10, 1, b"/bin/old", 1));
        t.apply(&exit(10, 1, 100));
        t.apply(&exec(10, 1, b"/bin/new", 200)); // pid reuse
        t.expire(5_000);
        assert_eq!(&*t.get(10).unwrap().exe, "/bin/new");
    }

    #[test]
    fn capacity_is_bounded_and_evictions_counted() {
        let mut t = ProcessTable::new(10, u64::MAX);
        for pid in 0..50u32 {
            t.apply(&exec(pid + 100, 1, b"/bin/x", u64::from(pid)));
            t.apply(&exit(pid + 100, u64::from(pid), u64::from(pid) + 1));
        }
        assert!(t.len() <= 10);
        assert_eq!(t.evicted(), 40);
        // the newest survive
        assert!(t.get(149).is_some());
    }

    #[test]
    fn scan_reads_this_process_from_proc() {
        let mut t = ProcessTable::new(1 << 16, 1);
        let n = t.scan_proc(Path::new("/proc"), Path::new("/sys/fs/cgroup/unified"));
        assert!(n > 0);
        let me = t.get(std::process::id()).expect("self in table");
        assert!(me.from_scan);
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert_eq!(&*me.exe, std::env::current_exe().unwrap().to_string_lossy());
    }

    #[test]
    fn cgroup_line_parsing() {
        assert_eq!(
            cgroup_v2_id("1:name=systemd:/\n", Path::new("/nonexistent")),
            None
        );
        assert!(cgroup_v2_id("0::/\n", Path::new("/")).is_some());
    }
}
