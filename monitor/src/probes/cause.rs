//! Why a probe did not attach: the kernel's errno (and the verifier's verdict) turned into a cause an operator can act on — permission, missing kernel feature, missing file.

use std::{error::Error, fmt};

/// The class of a failure, a stable metric label (`nhiwatch_sensor_degraded{cause}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// The kernel refused for lack of a capability or file access (EPERM, EACCES).
    Permission,
    /// The kernel lacks what the program needs (EINVAL, EOPNOTSUPP, ENOTSUPP, E2BIG, a verifier
    /// rejection, no BTF).
    KernelFeature,
    /// A file the probe needs is not there (ENOENT, ENODEV: a tracepoint, tracefs, a library).
    MissingFile,
    /// Anything else (the errno is in the message).
    Other,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::Permission => "permission",
            Cause::KernelFeature => "kernel_feature",
            Cause::MissingFile => "missing_file",
            Cause::Other => "other",
        }
    }

    /// The class of an errno from a BPF, perf or file system call.
    pub fn of_errno(errno: i32) -> Cause {
        // ENOTSUPP (524) is the kernel-internal "not supported" that leaks out of bpf().
        const ENOTSUPP: i32 = 524;
        match errno {
            libc::EPERM | libc::EACCES => Cause::Permission,
            libc::ENOENT | libc::ENODEV | libc::ENOTDIR => Cause::MissingFile,
            libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP | libc::E2BIG | libc::ENOSYS => {
                Cause::KernelFeature
            }
            _ => Cause::Other,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why one probe is not attached: its cause and a sentence that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub cause: Cause,
    pub detail: String,
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.cause, self.detail)
    }
}

impl ProbeFailure {
    pub fn new(cause: Cause, detail: impl Into<String>) -> ProbeFailure {
        ProbeFailure {
            cause,
            detail: detail.into(),
        }
    }

    /// A failed call (`what`, e.g. "attach tracepoint syscalls/sys_enter_openat") of a probe
    /// that needs `needs` (capabilities, in words). The cause comes from the first errno in
    /// the error's source chain; a program the verifier rejected is a kernel feature whatever
    /// the errno (the verifier answers EACCES too).
    pub fn from_error(what: &str, e: &(dyn Error + 'static), needs: &str) -> ProbeFailure {
        let mut text = e.to_string();
        let mut errno = None;
        let mut verifier = false;
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(aya::programs::ProgramError::LoadError { verifier_log, .. }) =
                err.downcast_ref::<aya::programs::ProgramError>()
            {
                verifier |= !verifier_log.to_string().trim().is_empty();
            }
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                errno = errno.or(io.raw_os_error());
            }
            let msg = err.to_string();
            if !text.contains(&msg) {
                text = format!("{text}: {msg}");
            }
            cur = err.source();
        }
        if verifier {
            // The whole log is for `bpftool prog load`; the first lines say what was refused.
            let head: String = text.lines().take(3).collect::<Vec<_>>().join(" / ");
            return ProbeFailure::new(
                Cause::KernelFeature,
                format!("{what}: the kernel's verifier rejected the program ({head})"),
            );
        }
        ProbeFailure::classified(what, errno, &text, needs)
    }

    /// A failed call whose errno is known (or not): the sentence for its cause.
    pub fn classified(what: &str, errno: Option<i32>, text: &str, needs: &str) -> ProbeFailure {
        let cause = errno.map_or(Cause::Other, Cause::of_errno);
        let detail = match cause {
            Cause::Permission => format!(
                "{what}: {text}; needs {needs} (running as {})",
                Privileges::current()
            ),
            Cause::KernelFeature => {
                format!("{what}: {text}; this kernel lacks what the program needs")
            }
            Cause::MissingFile => format!("{what}: {text}"),
            Cause::Other => format!("{what}: {text}"),
        };
        ProbeFailure::new(cause, detail)
    }
}

/// Who the daemon runs as: its uid and effective capabilities, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    pub uid: u32,
    /// Effective capability bits (CapEff of /proc/self/status).
    pub effective: u64,
}

/// Capability names by number (include/uapi/linux/capability.h).
const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_KILL: u32 = 5;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Makes every permitted capability effective. A binary given file capabilities as permitted
/// only (`setcap …+p`, as the container image does: a non-root container gets no ambient
/// capabilities from Kubernetes) starts with them permitted but not effective; raising them
/// here, rather than with the file's effective bit, lets the daemon start with fewer than it
/// asks for and say what is missing, where `+ep` would make the exec itself fail. Harmless when
/// they are effective already (root, or ambient capabilities from systemd or setpriv).
pub fn raise_effective() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a version 3 header and the two data structs it takes.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if data.iter().all(|d| d.effective == d.permitted) {
            return Ok(());
        }
        for d in &mut data {
            d.effective = d.permitted;
        }
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Privileges {
    pub fn current() -> Privileges {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let effective = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(0);
        Privileges { uid, effective }
    }

    pub fn has(&self, cap: u32) -> bool {
        self.effective & (1u64 << cap) != 0
    }
}

impl fmt::Display for Privileges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = (0..64u32)
            .filter(|&c| self.has(c))
            .map(|c| {
                CAP_NAMES
                    .get(c as usize)
                    .map_or(format!("cap_{c}"), |n| format!("cap_{n}"))
            })
            .collect();
        let all = (0..CAP_NAMES.len() as u32).all(|c| self.has(c));
        let caps = if names.is_empty() {
            "none".to_owned()
        } else if all {
            "all".to_owned()
        } else {
            names.join(",")
        };
        write!(f, "uid {} with capabilities {caps}", self.uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_the_cause_an_operator_acts_on() {
        assert_eq!(Cause::of_errno(libc::EPERM), Cause::Permission);
        assert_eq!(Cause::of_errno(libc::EACCES), Cause::Permission);
        assert_eq!(Cause::of_errno(libc::ENOENT), Cause::MissingFile);
        assert_eq!(Cause::of_errno(libc::ENODEV), Cause::MissingFile);
        assert_eq!(Cause::of_errno(libc::EINVAL), Cause::KernelFeature);
        assert_eq!(Cause::of_errno(libc::EOPNOTSUPP), Cause::KernelFeature);
        assert_eq!(Cause::of_errno(524), Cause::KernelFeature);
        assert_eq!(Cause::of_errno(libc::EBUSY), Cause::Other);
    }

    #[test]
    fn a_refused_syscall_names_the_capability_and_who_we_run_as() {
        // The shape aya gives: a SyscallError whose source is the io::Error.
        #[derive(Debug, thiserror::Error)]
        #[error("`perf_event_open` failed")]
        struct Syscall(#[source] std::io::Error);
        let e = Syscall(std::io::Error::from_raw_os_error(libc::EPERM));
        let f = ProbeFailure::from_error("attach uprobe SSL_write", &e, "CAP_SYS_ADMIN");
        assert_eq!(f.cause, Cause::Permission);
        let text = f.to_string();
        assert!(
            text.starts_with("permission: attach uprobe SSL_write"),
            "{text}"
        );
        assert!(text.contains("`perf_event_open` failed"), "{text}");
        assert!(text.contains("Operation not permitted"), "{text}");
        assert!(text.contains("needs CAP_SYS_ADMIN"), "{text}");
        assert!(text.contains("running as uid "), "{text}");
        assert!(text.contains("with capabilities "), "{text}");

        let e = Syscall(std::io::Error::from_raw_os_error(libc::ENOENT));
        let f = ProbeFailure::from_error("attach tracepoint syscalls/x", &e, "-");
        assert_eq!(f.cause, Cause::MissingFile);
        assert!(!f.to_string().contains("needs"), "{f}");
        let e = Syscall(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(
            ProbeFailure::from_error("load", &e, "-").cause,
            Cause::KernelFeature
        );
        // No errno anywhere in the chain: not guessed.
        let e = std::io::Error::other("program missing from object");
        assert_eq!(
            ProbeFailure::from_error("load", &e, "-").cause,
            Cause::Other
        );
    }

    #[test]
    fn capabilities_are_named() {
        let p = Privileges {
            uid: 65534,
            effective: (1 << CAP_BPF) | (1 << CAP_PERFMON),
        };
        assert_eq!(
            p.to_string(),
            "uid 65534 with capabilities cap_perfmon,cap_bpf"
        );
        let none = Privileges {
            uid: 1000,
            effective: 0,
        };
        assert_eq!(none.to_string(), "uid 1000 with capabilities none");
        let root = Privileges {
            uid: 0,
            effective: (1 << 41) - 1,
        };
        assert_eq!(root.to_string(), "uid 0 with capabilities all");
    }
}
