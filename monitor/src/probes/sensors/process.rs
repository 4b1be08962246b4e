//! Process sensor (process.bpf.c): exec, fork and exit from BTF tracepoints.

use super::{Attach, Hook, Program, Sensor};
use crate::probes::LoadError;

pub const SENSOR: Sensor = Sensor {
    name: "process",
    group: "process",
    programs: &[
        Program {
            name: "handle_exec",
            hook: Hook::TpBtf("sched_process_exec"),
        },
        Program {
            name: "handle_fork",
            hook: Hook::TpBtf("sched_process_fork"),
        },
        Program {
            name: "handle_exit",
            hook: Hook::TpBtf("sched_process_exit"),
        },
    ],
    attach,
    observes: true,
    absent_elsewhere: &[],
};

fn attach(a: &mut Attach<'_>) -> Result<(), LoadError> {
    a.tracepoints(&SENSOR);
    Ok(())
}
