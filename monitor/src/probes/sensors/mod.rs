//! The sensor table: every kernel program, the hook it goes on and the step that attaches it, one module per sensor.
//!
//! The loader attaches by walking [`ALL`], the probe statuses (and so the `probe_attached`
//! metric) come from those attach steps, and the object test checks [`ALL`] against the
//! compiled object in both directions: a program cannot be in one and missing from another.
//! To add a sensor: a `monitor-ebpf/src/<name>.bpf.c`, a module here with its `SENSOR`, and
//! one row in [`ALL`].

use aya::{
    programs::{BtfTracePoint, TracePoint, UProbe},
    Btf, Ebpf,
};

use super::{
    cause::{Cause, ProbeFailure},
    LoadError, ProbeStatus, SensorConfig,
};

pub mod canary;
pub mod dns;
pub mod files;
pub mod process;
pub mod sockets;
pub mod tcp;
pub mod tls;
pub mod tls_gnutls;
pub mod tls_go;
pub mod tls_hold;
pub mod tls_openssl;

/// Every sensor, in attach order. Names match the C files in monitor-ebpf/src/.
pub const ALL: [&Sensor; 10] = [
    &process::SENSOR,
    &files::SENSOR,
    &tcp::SENSOR,
    &tls_openssl::SENSOR,
    &tls_gnutls::SENSOR,
    &tls_go::SENSOR,
    &tls_hold::SENSOR,
    &dns::SENSOR,
    &sockets::SENSOR,
    &canary::SENSOR,
];

/// One sensor: a C file's programs and how they are attached.
pub struct Sensor {
    /// The C file's stem: `monitor-ebpf/src/<name>.bpf.c`.
    pub name: &'static str,
    /// First part of its probe statuses, `<group>/<program or symbol>` (a metric label: stable).
    pub group: &'static str,
    pub programs: &'static [Program],
    /// Loads and attaches the programs, recording one status per outcome. An error stops the daemon.
    pub attach: fn(&mut Attach<'_>) -> Result<(), LoadError>,
    /// Whether it reports events (the canary only checks the loader): the daemon refuses to run
    /// unless at least one such sensor attached.
    pub observes: bool,
    /// Programs whose hook some architectures lack (a legacy syscall): a missing tracepoint
    /// there (`missing_file`) is reported by `probe_attached` but does not degrade the sensor.
    pub absent_elsewhere: &'static [&'static str],
}

/// A kernel program: its C function name (the program's name in the object) and its hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub hook: Hook,
}

/// Where a program goes; it also fixes the ELF section the C file must put it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `tp_btf/<name>`: a BTF-typed tracepoint (needs /sys/kernel/btf/vmlinux).
    TpBtf(&'static str),
    /// `tracepoint/<category>/<name>`: a classic tracepoint (needs tracefs).
    Tracepoint(&'static str, &'static str),
    /// `cgroup_skb/ingress` on the cgroup v2 root: packets delivered to any socket on the host.
    CgroupIngress,
    /// `uprobe` on a TLS library function that moves plaintext; `ret` is the program that
    /// takes its result. Attached to each library found, with `ret`.
    TlsCall {
        symbol: &'static str,
        ret: &'static str,
    },
    /// `uprobe` on the function a client names its server with (SNI). Entry only: the name is
    /// an argument.
    TlsServerName { symbol: &'static str },
    /// `uretprobe`, attached together with the [`Hook::TlsCall`]s that name it.
    TlsReturn,
    /// `uprobe` at the entry of a Go function (found through `.gopclntab`, not a symbol) that
    /// moves plaintext; `ret`, if any, goes on each of its RET instructions.
    GoTlsCall {
        function: &'static str,
        ret: Option<&'static str>,
    },
    /// `uprobe` on RET instructions: never a uretprobe on Go code (moving stacks).
    GoTlsReturn,
}

/// What loading and attaching a program of each hook takes, for "permission" failures.
pub const NEEDS_TRACING: &str = "CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN";
pub const NEEDS_TRACEFS: &str = "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), and read access to tracefs (root, or CAP_DAC_READ_SEARCH)";
pub const NEEDS_CGROUP: &str = "CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN";
pub const NEEDS_UPROBE: &str = "CAP_SYS_ADMIN (the kernel's uprobe PMU checks it, not CAP_PERFMON)";

impl Hook {
    /// The ELF section of such a program (`SEC(...)` in C).
    pub fn section(&self) -> String {
        match self {
            Hook::TpBtf(tp) => format!("tp_btf/{tp}"),
            Hook::Tracepoint(category, name) => format!("tracepoint/{category}/{name}"),
            Hook::CgroupIngress => "cgroup_skb/ingress".into(),
            Hook::TlsCall { .. }
            | Hook::TlsServerName { .. }
            | Hook::GoTlsCall { .. }
            | Hook::GoTlsReturn => "uprobe".into(),
            Hook::TlsReturn => "uretprobe".into(),
        }
    }
}

/// What attach steps work on: the loaded object, the settings and the statuses so far.
pub struct Attach<'a> {
    pub bpf: &'a mut Ebpf,
    pub cfg: &'a SensorConfig,
    pub(super) btf: Result<Btf, String>,
    /// Why classic tracepoints cannot attach, if they cannot (tracefs missing or unreadable).
    pub(super) tracefs_problem: Option<ProbeFailure>,
    pub statuses: Vec<ProbeStatus>,
    /// Cleared when a TLS program fails to load: no library is probed then.
    pub uprobes_loaded: bool,
}

impl Attach<'_> {
    pub fn record(&mut self, group: &str, probe: &str, target: &str, r: Result<(), ProbeFailure>) {
        self.statuses.push(ProbeStatus {
            probe: format!("{group}/{probe}"),
            target: target.into(),
            error: r.err(),
        });
    }

    /// Attaches each tracepoint program of `sensor` by its hook and records it against `kernel`.
    pub fn tracepoints(&mut self, sensor: &Sensor) {
        for p in sensor.programs {
            let r = match p.hook {
                Hook::TpBtf(tp) => self.tp_btf(p.name, tp),
                Hook::Tracepoint(category, name) => self.tracepoint(p.name, category, name),
                other => Err(ProbeFailure::new(
                    Cause::Other,
                    format!(
                        "{other:?} is not a tracepoint: {} must attach it itself",
                        sensor.name
                    ),
                )),
            };
            self.record(sensor.group, p.name, "kernel", r);
        }
    }

    fn tp_btf(&mut self, prog: &str, tp: &str) -> Result<(), ProbeFailure> {
        let btf = self.btf.as_ref().map_err(|e| {
            ProbeFailure::new(
                Cause::KernelFeature,
                format!("kernel BTF unavailable (/sys/kernel/btf/vmlinux): {e}"),
            )
        })?;
        let p: &mut BtfTracePoint = program(self.bpf, prog)?;
        p.load(tp, btf)
            .map_err(|e| ProbeFailure::from_error("load", &e, NEEDS_TRACING))?;
        p.attach().map_err(|e| {
            ProbeFailure::from_error(&format!("attach tp_btf/{tp}"), &e, NEEDS_TRACING)
        })?;
        Ok(())
    }

    /// Loads and attaches a classic tracepoint program (tracefs must be there).
    pub fn tracepoint(
        &mut self,
        prog: &str,
        category: &str,
        name: &str,
    ) -> Result<(), ProbeFailure> {
        if let Some(p) = &self.tracefs_problem {
            return Err(p.clone());
        }
        let p: &mut TracePoint = program(self.bpf, prog)?;
        p.load()
            .map_err(|e| ProbeFailure::from_error("load", &e, NEEDS_TRACEFS))?;
        p.attach(category, name).map_err(|e| {
            ProbeFailure::from_error(&format!("attach {category}/{name}"), &e, NEEDS_TRACEFS)
        })?;
        Ok(())
    }

    /// Loads (without attaching) every uprobe program of `sensor`; targets come later.
    pub fn load_uprobes(&mut self, sensor: &Sensor) {
        for p in sensor.programs {
            let r = program::<UProbe>(self.bpf, p.name).and_then(|u| {
                u.load()
                    .map_err(|e| ProbeFailure::from_error("load", &e, NEEDS_UPROBE))
            });
            if let Err(e) = r {
                self.record(sensor.group, p.name, "kernel", Err(e));
                self.uprobes_loaded = false;
            }
        }
    }
}

/// A program of the object as the type its hook needs.
/// A missing or mistyped program is a broken build, never the host's fault.
pub fn program<'b, T>(bpf: &'b mut Ebpf, name: &str) -> Result<&'b mut T, ProbeFailure>
where
    &'b mut T: TryFrom<&'b mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    bpf.program_mut(name)
        .ok_or_else(|| ProbeFailure::new(Cause::Other, "program missing from object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| ProbeFailure::new(Cause::Other, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_are_unique_and_every_return_is_named_by_a_call() {
        let all: Vec<&Program> = ALL.iter().flat_map(|s| s.programs).collect();
        for (i, p) in all.iter().enumerate() {
            assert!(
                all[i + 1..].iter().all(|q| q.name != p.name),
                "{} listed twice",
                p.name
            );
        }
        for s in ALL {
            for p in s.programs {
                if let Hook::TlsCall { ret, .. } = p.hook {
                    assert!(
                        s.programs
                            .iter()
                            .any(|q| q.name == ret && q.hook == Hook::TlsReturn),
                        "{}: return program {ret} of {} is not a TlsReturn row",
                        s.name,
                        p.name
                    );
                }
                if p.hook == Hook::TlsReturn {
                    assert!(
                        s.programs
                            .iter()
                            .any(|q| matches!(q.hook, Hook::TlsCall { ret, .. } if ret == p.name)),
                        "{}: {} is attached by no call",
                        s.name,
                        p.name
                    );
                }
            }
        }
    }

    #[test]
    fn every_sensor_has_its_c_file_and_every_c_file_a_sensor() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitor-ebpf/src");
        let mut files: Vec<String> = std::fs::read_dir(&src)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_suffix(".bpf.c").map(str::to_owned)
            })
            .collect();
        files.sort();
        let mut names: Vec<String> = ALL.iter().map(|s| s.name.to_owned()).collect();
        names.sort();
        assert_eq!(files, names, "C files in {} vs sensors::ALL", src.display());
    }
}
