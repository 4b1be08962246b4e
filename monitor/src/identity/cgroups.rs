//! Kernel cgroup ids → cgroup paths and what they hold, cached; exact even for processes that are already gone.

use std::{
    collections::HashMap,
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::cgroup_path::{parse, CgroupKind};

/// A cgroup as nhiwatch knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    pub id: u64,
    /// Path below the cgroup v2 root, starting with `/`.
    pub path: String,
    pub kind: CgroupKind,
}

/// Resolves the cgroup id the kernel stamps on every record. The id is the
/// kernfs node id, so `open_by_handle_at` reaches the directory without any
/// process being alive; a tree scan is the fallback where that call is denied.
pub struct CgroupResolver {
    root: PathBuf,
    root_fd: Option<OwnedFd>,
    cache: HashMap<u64, Option<Arc<CgroupInfo>>>,
    /// When each unresolvable id was last tried (retry after `RETRY`).
    misses: HashMap<u64, Instant>,
    scanned: HashMap<u64, String>,
    last_scan: Option<Instant>,
    capacity: usize,
    pub evictions: u64,
}

const RETRY: Duration = Duration::from_secs(1);
const FILEID_KERNFS: i32 = 0xfe;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

impl CgroupResolver {
    pub fn new(root: &Path, capacity: usize) -> CgroupResolver {
        let root_fd = CString::new(root.as_os_str().as_encoded_bytes())
            .ok()
            .and_then(|c| {
                // SAFETY: valid C string; the fd is owned below.
                let fd = unsafe {
                    libc::open(
                        c.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    )
                };
                // SAFETY: fd was just returned by open and is owned by nobody else.
                (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
            });
        CgroupResolver {
            root: root.to_owned(),
            root_fd,
            cache: HashMap::new(),
            misses: HashMap::new(),
            scanned: HashMap::new(),
            last_scan: None,
            capacity,
            evictions: 0,
        }
    }

    /// The cgroup for a kernel id; `None` if it no longer exists and was never seen.
    pub fn resolve(&mut self, id: u64) -> Option<Arc<CgroupInfo>> {
        if let Some(hit) = self.cache.get(&id) {
            if hit.is_some() || self.misses.get(&id).is_some_and(|t| t.elapsed() < RETRY) {
                return hit.clone();
            }
        }
        let found = self.lookup(id).map(|path| {
            Arc::new(CgroupInfo {
                id,
                kind: parse(&path),
                path,
            })
        });
        if found.is_none() {
            self.misses.insert(id, Instant::now());
        } else {
            self.misses.remove(&id);
        }
        if self.cache.len() >= self.capacity {
            // Cgroups are few and long-lived next to events: starting over is cheap and bounded.
            self.evictions += self.cache.len() as u64;
            self.cache.clear();
            self.misses.clear();
        }
        self.cache.insert(id, found.clone());
        found
    }

    fn lookup(&mut self, id: u64) -> Option<String> {
        if id == 1 {
            return Some("/".into()); // the root cgroup
        }
        if let Some(p) = self.by_handle(id) {
            return Some(p);
        }
        if self.last_scan.is_none_or(|t| t.elapsed() >= RETRY) || self.scanned.is_empty() {
            self.scan();
        }
        self.scanned.get(&id).cloned()
    }

    fn by_handle(&self, id: u64) -> Option<String> {
        let root_fd = self.root_fd.as_ref()?;
        let mut h = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id,
        };
        // SAFETY: the handle struct matches `struct file_handle` with an 8-byte payload.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                root_fd.as_raw_fd(),
                &mut h as *mut KernfsHandle,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd returned by the kernel, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let rel = target.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", rel.display()))
    }

    fn scan(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.last_scan = Some(Instant::now());
        self.scanned.clear();
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let p = e.path();
                if let (Ok(m), Ok(rel)) = (e.metadata(), p.strip_prefix(&self.root)) {
                    self.scanned.insert(m.ino(), format!("/{}", rel.display()));
                }
                if depth < 12 {
                    stack.push((p, depth + 1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_cgroup_and_bogus_ids() {
        let mut r = CgroupResolver::new(Path::new("/sys/fs/cgroup/unified"), 16);
        assert_eq!(r.resolve(1).unwrap().path, "/");
        assert!(r.resolve(u64::MAX - 7).is_none());
        // a miss is remembered, not retried on every event
        assert!(r.misses.contains_key(&(u64::MAX - 7)));
    }
}
