//! Files sensor (files.bpf.c): opens of watched paths from the open/openat/openat2 syscall tracepoints, and its `sensors.files` settings.

use serde::Deserialize;

use super::{Attach, Hook, Program, Sensor};
use crate::probes::{watch::WatchPattern, LoadError};

pub const SENSOR: Sensor = Sensor {
    name: "files",
    group: "files",
    programs: &[
        Program {
            name: "enter_openat",
            hook: Hook::Tracepoint("syscalls", "sys_enter_openat"),
        },
        Program {
            name: "exit_openat",
            hook: Hook::Tracepoint("syscalls", "sys_exit_openat"),
        },
        Program {
            name: "enter_open",
            hook: Hook::Tracepoint("syscalls", "sys_enter_open"),
        },
        Program {
            name: "exit_open",
            hook: Hook::Tracepoint("syscalls", "sys_exit_open"),
        },
        Program {
            name: "enter_openat2",
            hook: Hook::Tracepoint("syscalls", "sys_enter_openat2"),
        },
        Program {
            name: "exit_openat2",
            hook: Hook::Tracepoint("syscalls", "sys_exit_openat2"),
        },
    ],
    attach,
    observes: true,
    // open(2) is a legacy syscall: arm64 and riscv64 have only openat, so their kernels have no
    // sys_enter_open tracepoint (and nothing to miss).
    absent_elsewhere: &["enter_open", "exit_open"],
};

/// `sensors.files`: what to watch.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    pub watch: Vec<String>,
}

impl FilesConfig {
    pub fn validate(&self) -> Result<(), String> {
        for w in &self.watch {
            WatchPattern::parse(w).map_err(|e| format!("sensors.files.watch: {e}"))?;
        }
        Ok(())
    }
}

fn attach(a: &mut Attach<'_>) -> Result<(), LoadError> {
    a.tracepoints(&SENSOR);
    Ok(())
}
