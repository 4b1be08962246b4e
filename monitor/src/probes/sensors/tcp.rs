//! TCP sensor (tcp.bpf.c): outbound connections and closes, and the socket a TLS call used.

use super::{Attach, Hook, Program, Sensor};
use crate::probes::LoadError;

pub const SENSOR: Sensor = Sensor {
    name: "tcp",
    group: "tcp",
    programs: &[
        Program {
            name: "handle_sock_state",
            hook: Hook::TpBtf("inet_sock_set_state"),
        },
        // These two only tie TLS sessions to sockets; without them TLS data has no flow.
        Program {
            name: "handle_sock_send",
            hook: Hook::TpBtf("sock_send_length"),
        },
        Program {
            name: "handle_sock_recv",
            hook: Hook::TpBtf("sock_recv_length"),
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
