//! Stopping without waiting for uprobe teardown: the links are pinned in a bpffs, our descriptors closed and the pins removed, so the kernel detaches them in its own worker after the daemon has exited.
//!
//! Why: every uprobe's teardown (perf_uprobe_destroy) waits for a tracepoint grace period
//! under the kernel's global `event_mutex`, ≈ 100–200 ms each on a nested VM. With ≈ 210
//! uprobes that is 24–45 s one after another, and detaching from many threads does not help
//! (measured: the mutex serialises them). Closing the last descriptor of a link tears it down
//! in the closing task — also at exit, so merely exiting only moves the wait. A link whose
//! last reference is a bpffs pin is released through `bpf_link_put`, which defers the
//! teardown to a kernel worker: the daemon exits at once and the kernel finishes on its own.
//! The uprobes keep writing into the old, unread ring buffer meanwhile; nothing reaches a new
//! daemon, whose own attaches may wait behind that teardown for the same mutex.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::programs::{links::FdLink, uprobe::UProbeLink};

/// `statfs` magic of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What [`release`] did with the links.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Left to the kernel's worker.
    pub handed_off: usize,
    /// Detached here, one after another (no bpffs to pin in, or a pin failed).
    pub detached_here: usize,
}

/// A directory in a bpffs for this stop's pins, and whether we mounted it.
struct PinDir {
    path: PathBuf,
    mounted: bool,
}

impl PinDir {
    /// A fresh directory in /sys/fs/bpf when that is a bpffs, else a private bpffs mounted on
    /// a new directory (needs CAP_SYS_ADMIN and a mount-permitting security profile); the reasons
    /// when neither can be had.
    fn create() -> Result<PinDir, String> {
        let tag = format!(
            "nhiwatch-stop-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let sys = Path::new("/sys/fs/bpf");
        if is_bpffs(sys) {
            let path = sys.join(&tag);
            if std::fs::create_dir(&path).is_ok() {
                return Ok(PinDir {
                    path,
                    mounted: false,
                });
            }
        }
        // Where a directory can be made: /tmp (private under systemd's PrivateTmp), else /dev/shm
        // and /run, which a container with a read-only root filesystem still has writable.
        let mut why = Vec::new();
        for base in [std::env::temp_dir(), "/dev/shm".into(), "/run".into()] {
            let path = base.join(&tag);
            match mount_bpffs(&path) {
                Ok(()) => {
                    return Ok(PinDir {
                        path,
                        mounted: true,
                    })
                }
                Err(e) => why.push(e),
            }
        }
        Err(why.join("; "))
    }
}

/// Creates `path` and mounts a fresh bpffs on it.
fn mount_bpffs(path: &Path) -> Result<(), String> {
    std::fs::create_dir(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated strings; the data argument is the mode option.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(path);
        return Err(format!("mounting a bpffs on {}: {e}", path.display()));
    }
    Ok(())
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.mounted {
            if let Ok(c) = CString::new(self.path.as_os_str().as_bytes()) {
                // SAFETY: unmounting the bpffs we mounted; MNT_DETACH never blocks.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0) && s.f_type as i64 == BPF_FS_MAGIC
}

/// Releases every link: handed off to the kernel where possible, detached here otherwise.
pub fn release(links: Vec<UProbeLink>) -> Released {
    let mut out = Released::default();
    if links.is_empty() {
        return out;
    }
    let dir = match PinDir::create() {
        Ok(d) => d,
        Err(why) => {
            tracing::warn!(
                uprobes = links.len(),
                reason = %why,
                "no bpffs to hand the TLS probes to: detaching them one by one (≈ 0.1–0.2 s each)"
            );
            out.detached_here = links.len();
            drop(links);
            return out;
        }
    };
    let mut pins = Vec::with_capacity(links.len());
    for (i, link) in links.into_iter().enumerate() {
        // A link that is not a bpf_link (kernels before 5.15) is detached by this conversion.
        let Ok(fd_link) = FdLink::try_from(link) else {
            out.detached_here += 1;
            continue;
        };
        let path = dir.path.join(i.to_string());
        match fd_link.pin(&path) {
            // Dropping the pinned link closes our descriptor; the pin now holds the link.
            Ok(pinned) => {
                drop(pinned);
                pins.push(path);
            }
            Err(_) => out.detached_here += 1,
        }
    }
    // Removing a pin drops the last reference: the kernel's worker tears the link down.
    for p in pins {
        if std::fs::remove_file(&p).is_ok() {
            out.handed_off += 1;
        }
    }
    out
}
