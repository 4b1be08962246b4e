//! TLS library hold (tls_hold.bpf.c): a tracepoint on mmap that stops a process mapping a not-yet-probed libssl/libgnutls until the daemon has attached to it (`sensors.tls.hold_new_libraries`).

use super::{Attach, Hook, Program, Sensor};
use crate::probes::LoadError;

pub const SENSOR: Sensor = Sensor {
    name: "tls_hold",
    group: "tls_hold",
    programs: &[Program {
        name: "hold_tls_library",
        hook: Hook::Tracepoint("syscalls", "sys_enter_mmap"),
    }],
    attach,
    observes: false,
    absent_elsewhere: &[],
};

/// Attached only when enabled and the TLS uprobes loaded: holding for a library nothing can
/// be attached to would only slow processes down.
fn attach(a: &mut Attach<'_>) -> Result<(), LoadError> {
    if a.cfg.tls.holds() && a.uprobes_loaded {
        a.tracepoints(&SENSOR);
    }
    Ok(())
}
