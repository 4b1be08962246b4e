//! Loads the BPF object, runs every sensor's attach step from the sensor table, and keeps the maps the daemon talks to.

use std::{
    path::Path,
    sync::{Arc, RwLock},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    Btf, Ebpf, EbpfLoader,
};

use super::{
    abi::*,
    cause::{Privileges, ProbeFailure},
    health::DISCOVERY,
    sensors::{self, tls, Attach},
    tls_hold::TlsHold,
    tls_libs::{AttachOutcome, FileKey, TlsDiscovery, TlsTarget},
    watch::{HeadBits, InodeBits, WatchSet, WatchStats, WatchTarget},
    SensorConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "nhiwatch needs CAP_SYS_ADMIN, or at least CAP_BPF and CAP_PERFMON, to load its probes; running as {0}. \
         Every sensor needs CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_KILL (as root or as any user, \
         e.g. setpriv or systemd AmbientCapabilities=; see README, Deploy)"
    )]
    NotPrivileged(Privileges),
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
    pub error: Option<ProbeFailure>,
}

/// The loaded, attached sensors and the maps the daemon keeps talking to.
pub struct Sensors {
    bpf: Ebpf,
    pub statuses: Vec<ProbeStatus>,
    counters: PerCpuArray<MapData, u64>,
    watch_paths: LpmTrie<MapData, [u8; NW_PATH_MAX as usize], nw_watch>,
    watch_inodes: BpfHashMap<MapData, nw_inode_key, nw_watch>,
    watch_devs: BpfHashMap<MapData, u32, u32>,
    watch_ino_bits: Array<MapData, InodeBits>,
    watch_head_bits: Array<MapData, HeadBits>,
    watch: WatchSet,
    /// Shared with the pipeline to turn watch ids back into paths.
    pub watch_targets: Arc<RwLock<Vec<WatchTarget>>>,
    pub tls: TlsDiscovery,
    /// The hold's maps (see [`super::tls_hold`]), and its ring until the daemon takes it.
    pub hold: TlsHold,
    pub hold_ring: Option<RingBuf<MapData>>,
    uprobes_loaded: bool,
    pub tls_targets: usize,
    /// `sensors.required`: the sensors readiness waits for.
    pub required: Vec<String>,
    /// Sensors the settings turn off ([`super::SensorConfig::disabled`]).
    pub disabled: Vec<&'static str>,
    /// Every TLS uprobe attached. Last field on purpose: fields drop in order, so the object
    /// detaches its tracepoints before the uprobes go to the kernel's worker, whose teardown
    /// would otherwise hold the kernel mutex those detaches wait for.
    uprobe_links: UprobeLinks,
}

/// The attached uprobes; dropping hands them to the kernel (see [`super::handoff`]).
#[derive(Default)]
struct UprobeLinks {
    /// Libraries' (and pinned files'): kept until the daemon stops.
    lasting: Vec<aya::programs::uprobe::UProbeLink>,
    /// Go executables', by file: released when the file's last process exits.
    go: std::collections::HashMap<FileKey, GoLinks>,
}

/// One Go file's uprobes and the statuses they were published under.
struct GoLinks {
    links: Vec<aya::programs::uprobe::UProbeLink>,
    target: String,
    probes: Vec<String>,
}

impl UprobeLinks {
    fn len(&self) -> usize {
        self.lasting.len() + self.go.values().map(|g| g.links.len()).sum::<usize>()
    }
}

impl Drop for UprobeLinks {
    fn drop(&mut self) {
        let started = std::time::Instant::now();
        let mut all = std::mem::take(&mut self.lasting);
        all.extend(self.go.drain().flat_map(|(_, g)| g.links));
        let r = super::handoff::release(all);
        tracing::info!(
            handed_off = r.handed_off,
            detached_here = r.detached_here,
            ms = started.elapsed().as_millis() as u64,
            "TLS probes released"
        );
    }
}

fn has_privileges(p: &Privileges) -> bool {
    use super::cause::{CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN};
    p.has(CAP_SYS_ADMIN) || (p.has(CAP_BPF) && p.has(CAP_PERFMON))
}

/// Mount points of tracefs in a /proc/self/mountinfo text.
fn tracefs_mounts(mountinfo: &str) -> Vec<&str> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "tracefs").then_some(point)
        })
        .collect()
}

/// Where aya looks for tracefs, in its order.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Why classic tracepoints cannot attach, if they cannot. tracefs that is mounted but not
/// readable (mode 0700 and a non-root daemon without CAP_DAC_READ_SEARCH) is said to be so,
/// not "not mounted"; tracefs that is missing is mounted, which needs CAP_SYS_ADMIN.
fn tracefs_problem() -> Option<ProbeFailure> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = tracefs_mounts(&mountinfo);
    let mut unreadable = None;
    for dir in TRACEFS.iter().filter(|d| mounted.contains(d)) {
        match std::fs::read_dir(Path::new(dir).join("events")) {
            Ok(_) => return None,
            Err(e) => {
                unreadable.get_or_insert((*dir, e));
            }
        }
    }
    if let Some((dir, e)) = unreadable {
        use std::os::unix::fs::MetadataExt;
        let how = std::fs::metadata(dir)
            .map(|m| format!("mode {:o}, owner uid {}", m.mode() & 0o7777, m.uid()))
            .unwrap_or_else(|e| format!("stat: {e}"));
        return Some(ProbeFailure::classified(
            &format!("tracefs is mounted at {dir} ({how}) but its events are not readable"),
            e.raw_os_error(),
            &e.to_string(),
            "read access to tracefs: root, or CAP_DAC_READ_SEARCH",
        ));
    }
    // Not mounted: mount it where the kernel expects it (the mount call, not mount(8), which
    // refuses non-root users whatever their capabilities).
    let (fs, target) = (c"tracefs", c"/sys/kernel/tracing");
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let r = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r == 0 {
        tracing::info!(path = TRACEFS[0], "mounted tracefs");
        return None;
    }
    let e = std::io::Error::last_os_error();
    Some(ProbeFailure::classified(
        "tracefs is not mounted, and mounting it at /sys/kernel/tracing failed",
        e.raw_os_error(),
        &e.to_string(),
        "CAP_SYS_ADMIN to mount it; or mount it before the daemon starts \
         (mount -t tracefs tracefs /sys/kernel/tracing; systemd does at boot)",
    ))
}

/// TLS libraries are found in other processes' /proc/PID/maps and opened through
/// /proc/PID/root, which the kernel allows for processes of other users, or holding
/// capabilities the daemon lacks, only to a reader with CAP_SYS_PTRACE: without it the
/// libraries of containers go unprobed. (Reading some process's maps would not tell: the
/// outcome depends on whose process it is.)
fn discovery_problem(p: &Privileges) -> Option<ProbeFailure> {
    use super::cause::{Cause, CAP_SYS_PTRACE};
    (!p.has(CAP_SYS_PTRACE)).then(|| {
        ProbeFailure::new(
            Cause::Permission,
            format!(
                "TLS library discovery cannot read other users' /proc/PID/maps and /proc/PID/root, \
                 so libraries inside containers go unprobed; needs CAP_SYS_PTRACE (running as {p})"
            ),
        )
    })
}

/// The hold stops a process at a new TLS library and must continue it: kill(2) allows that for
/// another user's process only with CAP_KILL. Without it the kernel side holds only the daemon's
/// own uid (it never stops what it could not continue), so a container's one-shot client running
/// as another user may make its first call before its library is probed.
fn hold_problem(p: &Privileges) -> Option<ProbeFailure> {
    use super::cause::{Cause, CAP_KILL};
    (!p.has(CAP_KILL)).then(|| {
        ProbeFailure::new(
            Cause::Permission,
            format!(
                "the TLS hold cannot continue other users' processes, so it holds none of them and \
                 their first call through a new TLS library copy may be missed; needs CAP_KILL \
                 (running as {p})"
            ),
        )
    })
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
        if let Err(e) = super::cause::raise_effective() {
            tracing::warn!(error = %e, "could not make the permitted capabilities effective");
        }
        let privileges = Privileges::current();
        if !has_privileges(&privileges) {
            return Err(LoadError::NotPrivileged(privileges));
        }
        let tracefs_problem = tracefs_problem();
        let self_tgid = std::process::id();
        // For debugging and the CO-RE canary test: load another build of the object.
        let object_bytes = match std::env::var_os("NHIWATCH_BPF_OBJECT") {
            Some(p) => std::fs::read(&p)
                .map_err(|e| LoadError::Object(format!("{}: {e}", p.to_string_lossy())))?,
            None => super::object::bytes().to_vec(),
        };
        let (follow_ports_only, follow_cidrs_only) = cfg.sockets.follow_only();
        let mut bpf = EbpfLoader::new()
            // tls_calls is task-local storage (include/tls.h), a map type aya 0.14 creates but
            // has no Rust wrapper for; only the kernel programs use it.
            .allow_unsupported_maps()
            .override_global("sock_follow_ports_only", &follow_ports_only, true)
            .override_global("sock_follow_cidrs_only", &follow_cidrs_only, true)
            .override_global("self_tgid", &self_tgid, true)
            .override_global("tls_capture_len", &cfg.tls.capture_bytes, true)
            .override_global("wakeup_bytes", &cfg.wakeup_bytes, true)
            .map_max_entries("events", cfg.ring_buffer_bytes)
            .load(&object_bytes)
            .map_err(LoadError::Load)?;

        let mut attach = Attach {
            bpf: &mut bpf,
            cfg,
            btf: Btf::from_sys_fs().map_err(|e| e.to_string()),
            tracefs_problem,
            statuses: Vec::new(),
            uprobes_loaded: true,
        };
        for sensor in sensors::ALL {
            (sensor.attach)(&mut attach)?;
        }
        let Attach {
            statuses,
            uprobes_loaded,
            ..
        } = attach;

        let ring = take::<RingBuf<MapData>>(&mut bpf, "events")?;
        let counters = take(&mut bpf, "counters")?;
        let watch_paths = take(&mut bpf, "watch_paths")?;
        let watch_inodes = take(&mut bpf, "watch_inodes")?;
        let watch_devs = take(&mut bpf, "watch_devs")?;
        let watch_ino_bits = take(&mut bpf, "watch_ino_bits")?;
        let watch_head_bits = take(&mut bpf, "watch_head_bits")?;
        let watch = WatchSet::new(&cfg.files.watch).map_err(LoadError::NothingAttached)?;
        let hold = TlsHold::new(
            take(&mut bpf, "tls_hold_ctl")?,
            take(&mut bpf, "tls_lib_state")?,
            bpf.take_map("tls_held")
                .ok_or(LoadError::MissingMap("tls_held"))?,
        )
        .map_err(LoadError::Object)?;
        let hold_ring = Some(take::<RingBuf<MapData>>(&mut bpf, "tls_hold_events")?);
        let mut sensors = Sensors {
            bpf,
            statuses,
            counters,
            watch_paths,
            watch_inodes,
            watch_devs,
            watch_ino_bits,
            watch_head_bits,
            watch_targets: Arc::new(RwLock::new(Vec::new())),
            watch,
            tls: TlsDiscovery::probing(&cfg.tls.stacks),
            hold,
            hold_ring,
            uprobes_loaded,
            tls_targets: 0,
            required: cfg.required.clone(),
            disabled: cfg.disabled(),
            uprobe_links: UprobeLinks::default(),
        };
        sensors.refresh_watches();

        if let Some(e) = (cfg.tls.holds() && uprobes_loaded)
            .then(|| hold_problem(&privileges))
            .flatten()
        {
            sensors.statuses.push(ProbeStatus {
                probe: "tls_hold/continue".into(),
                target: "kill".into(),
                error: Some(e),
            });
        }
        if let Some(e) = discovery_problem(&privileges) {
            sensors.statuses.push(ProbeStatus {
                probe: format!("tls/{DISCOVERY}"),
                target: "/proc".into(),
                error: Some(e),
            });
        }
        if uprobes_loaded {
            let targets = tls::initial_targets(&mut sensors.tls, &cfg.tls, &mut sensors.statuses);
            for t in targets {
                sensors.attach_tls(&t);
            }
        }

        // Useful if any sensor that reports events attached something.
        let observing = sensors::ALL.iter().filter(|s| s.observes).any(|sensor| {
            let group = format!("{}/", sensor.group);
            sensors
                .statuses
                .iter()
                .any(|s| s.probe.starts_with(&group) && s.error.is_none())
        });
        if !observing {
            let why: Vec<String> = sensors
                .statuses
                .iter()
                .map(|s| {
                    format!(
                        "  {} on {}: {}",
                        s.probe,
                        s.target,
                        s.error.as_ref().map_or("ok".into(), ToString::to_string)
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
        let from = self.statuses.len();
        let mut links = Vec::new();
        let any = tls::attach_target(&mut self.bpf, &mut self.statuses, &mut links, t);
        if t.go.is_some() {
            let mine = &self.statuses[from..];
            let outcome = if any {
                AttachOutcome::Attached
            } else if mine.iter().any(|s| {
                s.error
                    .as_ref()
                    .is_some_and(|e| e.cause == super::cause::Cause::MissingFile)
            }) {
                AttachOutcome::Vanished
            } else {
                AttachOutcome::Failed
            };
            self.tls.go_attached(t.key, outcome);
            if any {
                let go = GoLinks {
                    links,
                    target: t.path.display().to_string(),
                    probes: mine.iter().map(|s| s.probe.clone()).collect(),
                };
                if let Some(old) = self.uprobe_links.go.insert(t.key, go) {
                    // Not expected (discovery attaches a file once until it is detached).
                    super::handoff::release(old.links);
                }
            }
        } else {
            self.uprobe_links.lasting.extend(links);
        }
        if any {
            self.tls_targets += 1;
            tracing::info!(target = %t.path.display(), library = t.family.name(), "TLS probes attached");
        }
        any
    }

    /// Process `pid` exited: the Go file whose last known process it was, if its probes are on
    /// (see [`Self::detach_go_if_idle`]).
    pub fn process_exited(&mut self, pid: u32) -> Option<FileKey> {
        self.tls.go_exited(pid)
    }

    /// Releases a Go file's uprobes if no process runs it now (handed to the kernel's worker,
    /// so this thread does not wait for their teardown); its next exec attaches them again,
    /// from what was parsed before. Returns the (probe, target) labels of the statuses that no
    /// longer hold.
    pub fn detach_go_if_idle(&mut self, key: FileKey, proc_root: &Path) -> Vec<(String, String)> {
        if !self
            .tls
            .go_detach(key, || super::tls_libs::running_executables(proc_root))
        {
            return Vec::new();
        }
        let Some(go) = self.uprobe_links.go.remove(&key) else {
            return Vec::new();
        };
        let n = go.links.len();
        let r = super::handoff::release(go.links);
        self.tls_targets = self.tls_targets.saturating_sub(1);
        tracing::info!(
            target = %go.target,
            uprobes = n,
            handed_off = r.handed_off,
            "Go program's last process exited: TLS probes detached"
        );
        go.probes
            .into_iter()
            .map(|p| (p, go.target.clone()))
            .collect()
    }

    /// Re-reads home directories and watched paths; keeps kernel tables in step.
    pub fn refresh_watches(&mut self) -> WatchStats {
        let stats = self.watch.program(
            &mut self.watch_paths,
            &mut self.watch_inodes,
            &mut self.watch_devs,
            &mut self.watch_ino_bits,
            &mut self.watch_head_bits,
        );
        if let Ok(mut t) = self.watch_targets.write() {
            *t = self.watch.targets().to_vec();
        }
        stats
    }

    /// TLS uprobes attached now.
    pub fn uprobes(&self) -> usize {
        self.uprobe_links.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracefs_is_found_by_file_system_type_not_by_a_readable_path() {
        let mountinfo = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:28 / /sys/kernel/tracing rw,nosuid - tracefs tracefs rw,mode=700
31 22 0:7 / /sys/kernel/debug rw - debugfs debugfs rw
";
        assert_eq!(tracefs_mounts(mountinfo), ["/sys/kernel/tracing"]);
        assert!(tracefs_mounts("22 1 0:21 / /sys rw - sysfs sysfs rw\n").is_empty());
    }
}
