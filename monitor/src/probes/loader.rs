//! Loads the BPF object, attaches what this kernel supports, self-checks CO-RE, and reports every probe's status.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{
        links::CgroupAttachMode, uprobe::UProbeScope, BtfTracePoint, CgroupSkb,
        CgroupSkbAttachType, TracePoint, UProbe,
    },
    Btf, Ebpf, EbpfLoader,
};

use super::{
    abi::*,
    tls_libs::{TlsDiscovery, TlsTarget},
    watch::{WatchSet, WatchStats, WatchTarget},
};
use crate::config::SensorConfig;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "nhiwatch needs root, or the capabilities CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8), \
         to load its probes; run it with sudo or grant them (see deploy/)"
    )]
    NotPrivileged,
    #[error("reading the BPF object {0}")]
    Object(String),
    #[error("loading the BPF object into the kernel: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the BPF object lacks map {0}: the build is broken")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "CO-RE relocations were not applied (canary read tgid {core} where the kernel says {helper}): \
         the object lost its .BTF.ext section or the loader skipped it; refusing to run with wrong field offsets"
    )]
    CoreCanary { core: u32, helper: u32 },
    #[error("no sensor could be attached on this kernel:\n{0}")]
    NothingAttached(String),
}

/// Outcome of attaching one program somewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeStatus {
    /// Sensor group and program, e.g. `files/enter_openat`.
    pub probe: String,
    /// `kernel`, or the file a uprobe went on.
    pub target: String,
    pub error: Option<String>,
}

/// Kernel sensor groups; the daemon is useful if any one of them attached.
const PROCESS_PROBES: [(&str, &str); 3] = [
    ("handle_exec", "sched_process_exec"),
    ("handle_fork", "sched_process_fork"),
    ("handle_exit", "sched_process_exit"),
];
const FILE_PROBES: [(&str, &str); 6] = [
    ("enter_openat", "sys_enter_openat"),
    ("exit_openat", "sys_exit_openat"),
    ("enter_open", "sys_enter_open"),
    ("exit_open", "sys_exit_open"),
    ("enter_openat2", "sys_enter_openat2"),
    ("exit_openat2", "sys_exit_openat2"),
];
const TCP_PROBES: [(&str, &str); 3] = [
    ("handle_sock_state", "inet_sock_set_state"),
    ("handle_sock_send", "sock_send_length"),
    ("handle_sock_recv", "sock_recv_length"),
];
const UPROBE_PROGRAMS: [&str; 11] = [
    "ssl_write",
    "ssl_read",
    "ssl_write_ex",
    "ssl_read_ex",
    "ssl_ret",
    "ssl_ret_ex",
    "gnutls_send",
    "gnutls_recv",
    "gnutls_ret",
    "ssl_ctrl_sni",
    "gnutls_sni",
];
/// Sees DNS responses delivered to any socket below the cgroup v2 root.
const DNS_PROGRAM: &str = "dns_ingress";

/// The loaded, attached sensors and the maps the daemon keeps talking to.
pub struct Sensors {
    bpf: Ebpf,
    pub statuses: Vec<ProbeStatus>,
    counters: PerCpuArray<MapData, u64>,
    watch_paths: LpmTrie<MapData, [u8; NW_PATH_MAX as usize], nw_watch>,
    watch_inodes: BpfHashMap<MapData, nw_inode_key, nw_watch>,
    watch_devs: BpfHashMap<MapData, u32, u32>,
    watch: WatchSet,
    /// Shared with the pipeline to turn watch ids back into paths.
    pub watch_targets: Arc<RwLock<Vec<WatchTarget>>>,
    pub tls: TlsDiscovery,
    tls_dirs: Vec<PathBuf>,
    uprobes_loaded: bool,
    pub tls_targets: usize,
}

fn has_privileges() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    has(21) || (has(39) && has(38)) // SYS_ADMIN, or BPF + PERFMON
}

/// Classic tracepoints need tracefs; mount it where the kernel expects it if nobody has.
fn ensure_tracefs() -> Option<String> {
    if Path::new("/sys/kernel/tracing/events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return None;
    }
    let r = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status();
    match r {
        Ok(s) if s.success() => {
            tracing::info!(path = "/sys/kernel/tracing", "mounted tracefs");
            None
        }
        _ => Some(
            "tracefs is not mounted and could not be mounted at /sys/kernel/tracing; \
             file-open probes need it (mount -t tracefs tracefs /sys/kernel/tracing)"
                .into(),
        ),
    }
}

fn take<T>(bpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = bpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}

impl Sensors {
    /// Loads and attaches everything; returns the sensors and the ring buffer to read.
    pub fn load(cfg: &SensorConfig) -> Result<(Sensors, RingBuf<MapData>), LoadError> {
        if !has_privileges() {
            return Err(LoadError::NotPrivileged);
        }
        let tracefs_problem = ensure_tracefs();
        let self_tgid = std::process::id();
        // For debugging and the CO-RE canary test: load another build of the object.
        let object_bytes = match std::env::var_os("NHIWATCH_BPF_OBJECT") {
            Some(p) => std::fs::read(&p)
                .map_err(|e| LoadError::Object(format!("{}: {e}", p.to_string_lossy())))?,
            None => super::object::bytes().to_vec(),
        };
        let mut bpf = EbpfLoader::new()
            .override_global("self_tgid", &self_tgid, true)
            .override_global("tls_capture_len", &cfg.tls.capture_bytes, true)
            .override_global("wakeup_bytes", &cfg.wakeup_bytes, true)
            .map_max_entries("events", cfg.ring_buffer_bytes)
            .load(&object_bytes)
            .map_err(LoadError::Load)?;

        let mut statuses = Vec::new();
        let btf = Btf::from_sys_fs().map_err(|e| e.to_string());
        let mut record = |group: &str, prog: &str, target: &str, r: Result<(), String>| {
            statuses.push(ProbeStatus {
                probe: format!("{group}/{prog}"),
                target: target.into(),
                error: r.err(),
            });
        };

        for (prog, tp) in PROCESS_PROBES.iter().chain(TCP_PROBES.iter()) {
            let group = if PROCESS_PROBES.iter().any(|p| p.0 == *prog) {
                "process"
            } else {
                "tcp"
            };
            let r = attach_tp_btf(&mut bpf, prog, tp, btf.as_ref());
            record(group, prog, "kernel", r);
        }
        for (prog, tp) in FILE_PROBES {
            let r = match &tracefs_problem {
                Some(p) => Err(p.clone()),
                None => attach_tracepoint(&mut bpf, prog, "syscalls", tp),
            };
            record("files", prog, "kernel", r);
        }

        // Wrong field offsets would make every event subtly wrong: refuse to run.
        let canary = match &tracefs_problem {
            Some(p) => Err(p.clone()),
            None => core_canary(&mut bpf)?,
        };
        record("core", "canary", "kernel", canary);

        let (cgroup_root, r) = attach_dns(&mut bpf);
        record("dns", DNS_PROGRAM, &cgroup_root, r);

        let mut uprobes_loaded = true;
        for prog in UPROBE_PROGRAMS {
            if let Err(e) = load_uprobe(&mut bpf, prog) {
                record("tls", prog, "kernel", Err(e));
                uprobes_loaded = false;
            }
        }

        let ring = take::<RingBuf<MapData>>(&mut bpf, "events")?;
        let counters = take(&mut bpf, "counters")?;
        let watch_paths = take(&mut bpf, "watch_paths")?;
        let watch_inodes = take(&mut bpf, "watch_inodes")?;
        let watch_devs = take(&mut bpf, "watch_devs")?;
        let watch = WatchSet::new(&cfg.files.watch).map_err(LoadError::NothingAttached)?;
        let mut sensors = Sensors {
            bpf,
            statuses,
            counters,
            watch_paths,
            watch_inodes,
            watch_devs,
            watch_targets: Arc::new(RwLock::new(Vec::new())),
            watch,
            tls: TlsDiscovery::default(),
            tls_dirs: cfg.tls.library_dirs.clone(),
            uprobes_loaded,
            tls_targets: 0,
        };
        sensors.refresh_watches();

        if uprobes_loaded {
            let mut targets = sensors.tls.scan_dirs(&sensors.tls_dirs.clone());
            for extra in &cfg.tls.extra_targets {
                match sensors.tls.consider(extra) {
                    Some(t) => targets.push(t),
                    None => sensors.statuses.push(ProbeStatus {
                        probe: "tls/extra_target".into(),
                        target: extra.display().to_string(),
                        error: Some(
                            "file missing, or it exports no SSL_write/gnutls_record_send".into(),
                        ),
                    }),
                }
            }
            for t in targets {
                sensors.attach_tls(&t);
            }
        }

        let attached_groups: Vec<&str> = ["process/", "files/", "tcp/", "tls/", "dns/"]
            .into_iter()
            .filter(|g| {
                sensors
                    .statuses
                    .iter()
                    .any(|s| s.probe.starts_with(g) && s.error.is_none())
            })
            .collect();
        if attached_groups.is_empty() {
            let why: Vec<String> = sensors
                .statuses
                .iter()
                .map(|s| {
                    format!(
                        "  {} on {}: {}",
                        s.probe,
                        s.target,
                        s.error.as_deref().unwrap_or("ok")
                    )
                })
                .collect();
            return Err(LoadError::NothingAttached(why.join("\n")));
        }
        Ok((sensors, ring))
    }

    /// Attaches the TLS uprobes to one discovered file; records each symbol's status.
    pub fn attach_tls(&mut self, t: &TlsTarget) -> bool {
        if !self.uprobes_loaded {
            return false;
        }
        let target = t.path.display().to_string();
        let mut any = false;
        for (sym, entry, ret) in t.family.probes() {
            if !t.symbols.contains(sym) {
                continue;
            }
            let r = attach_uprobe(&mut self.bpf, entry, sym, &t.path)
                .and_then(|()| attach_uprobe(&mut self.bpf, ret, sym, &t.path));
            any |= r.is_ok();
            self.statuses.push(ProbeStatus {
                probe: format!("tls/{sym}"),
                target: target.clone(),
                error: r.err(),
            });
        }
        let (sni_sym, sni_prog) = t.family.sni_probe();
        if any && t.symbols.contains(&sni_sym) {
            let r = attach_uprobe(&mut self.bpf, sni_prog, sni_sym, &t.path);
            self.statuses.push(ProbeStatus {
                probe: format!("tls/{sni_sym}"),
                target: target.clone(),
                error: r.err(),
            });
        }
        if any {
            self.tls_targets += 1;
            tracing::info!(target = %target, library = t.family.name(), "TLS probes attached");
        }
        any
    }

    /// Re-reads home directories and watched paths; keeps kernel tables in step.
    pub fn refresh_watches(&mut self) -> WatchStats {
        let stats = self.watch.program(
            &mut self.watch_paths,
            &mut self.watch_inodes,
            &mut self.watch_devs,
        );
        if let Ok(mut t) = self.watch_targets.write() {
            *t = self.watch.targets().to_vec();
        }
        stats
    }

    /// Kernel counters summed per slot and given per CPU: `[slot][cpu]`.
    pub fn read_counters(&self) -> Vec<Vec<u64>> {
        (0..NW_CNT_COUNT)
            .map(|slot| {
                self.counters
                    .get(&slot, 0)
                    .map(|v| v.iter().copied().collect())
                    .unwrap_or_default()
            })
            .collect()
    }
}

fn attach_tp_btf(
    bpf: &mut Ebpf,
    prog: &str,
    tp: &str,
    btf: Result<&Btf, &String>,
) -> Result<(), String> {
    let btf = btf.map_err(|e| format!("kernel BTF unavailable (/sys/kernel/btf/vmlinux): {e}"))?;
    let p: &mut BtfTracePoint = bpf
        .program_mut(prog)
        .ok_or("program missing from object")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load(tp, btf).map_err(|e| format!("load: {e}"))?;
    p.attach().map_err(|e| format!("attach tp_btf/{tp}: {e}"))?;
    Ok(())
}

fn attach_tracepoint(bpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<(), String> {
    let p: &mut TracePoint = bpf
        .program_mut(prog)
        .ok_or("program missing from object")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load().map_err(|e| format!("load: {e}"))?;
    p.attach(category, name)
        .map_err(|e| format!("attach {category}/{name}: {e}"))?;
    Ok(())
}

/// The cgroup v2 hierarchy, if one is mounted.
fn cgroup_v2_root() -> Option<PathBuf> {
    Some(crate::cgroup_v2_root()).filter(|p| p.join("cgroup.procs").exists())
}

/// Attaches the DNS answer sensor to the root cgroup, so it sees every socket on
/// the host, alongside (never instead of) programs others attached there.
fn attach_dns(bpf: &mut Ebpf) -> (String, Result<(), String>) {
    let Some(root) = cgroup_v2_root() else {
        return (
            crate::CGROUP_V2_ROOT.into(),
            Err("no cgroup v2 hierarchy mounted: DNS answers are not seen".into()),
        );
    };
    let shown = root.display().to_string();
    let r = (|| {
        let p: &mut CgroupSkb = bpf
            .program_mut(DNS_PROGRAM)
            .ok_or("program missing from object")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        p.load().map_err(|e| format!("load: {e}"))?;
        let dir = std::fs::File::open(&root).map_err(|e| format!("open: {e}"))?;
        p.attach(
            &dir,
            CgroupSkbAttachType::Ingress,
            // Links (kernel >= 5.7) always coexist with other programs on the
            // cgroup and take no flags: ALLOW_MULTI makes bpf_link_create fail.
            CgroupAttachMode::Single,
        )
        .map(|_| ())
        .map_err(|e| format!("attach cgroup_skb/ingress: {e}"))
    })();
    (shown, r)
}

fn load_uprobe(bpf: &mut Ebpf, prog: &str) -> Result<(), String> {
    let p: &mut UProbe = bpf
        .program_mut(prog)
        .ok_or("program missing from object")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load().map_err(|e| format!("load: {e}"))
}

fn attach_uprobe(bpf: &mut Ebpf, prog: &str, symbol: &str, path: &Path) -> Result<(), String> {
    let p: &mut UProbe = bpf
        .program_mut(prog)
        .ok_or("program missing from object")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.attach(symbol, path, UProbeScope::AllProcesses)
        .map(|_| ())
        .map_err(|e| format!("{e}"))
}

/// Runs the canary program once in this process and compares its CO-RE read
/// with the helper's answer. `Ok(Err(_))`: the canary could not run (unchecked);
/// `Err(_)`: it ran and the offsets are wrong.
fn core_canary(bpf: &mut Ebpf) -> Result<Result<(), String>, LoadError> {
    let p: &mut TracePoint = match bpf
        .program_mut("core_canary")
        .and_then(|p| p.try_into().ok())
    {
        Some(p) => p,
        None => return Ok(Err("canary program missing from the object".into())),
    };
    if let Err(e) = p
        .load()
        .and_then(|()| p.attach("syscalls", "sys_enter_getppid").map(|_| ()))
    {
        return Ok(Err(format!(
            "canary could not run, field offsets unchecked: {e}"
        )));
    }
    // SAFETY: getppid has no preconditions; it only fires the tracepoint.
    unsafe { libc::getppid() };
    let map = bpf.map("canary").ok_or(LoadError::MissingMap("canary"))?;
    let canary: Array<&MapData, nw_canary> =
        Array::try_from(map).map_err(|source| LoadError::Map {
            name: "canary",
            source,
        })?;
    let c = canary.get(&0, 0).map_err(|source| LoadError::Map {
        name: "canary",
        source,
    })?;
    if c.hits == 0 {
        return Ok(Err("canary did not fire, field offsets unchecked".into()));
    }
    if c.tgid_core != c.tgid_helper {
        return Err(LoadError::CoreCanary {
            core: c.tgid_core,
            helper: c.tgid_helper,
        });
    }
    Ok(Ok(()))
}
