//! GnuTLS sensor (tls_gnutls.bpf.c): uprobes on gnutls_record_send/recv and gnutls_server_name_set, loaded at start and attached to each libgnutls found.

use super::{tls, Attach, Hook, Program, Sensor};
use crate::probes::LoadError;

pub const SENSOR: Sensor = Sensor {
    name: "tls_gnutls",
    group: "tls",
    programs: &[
        Program {
            name: "gnutls_send",
            hook: Hook::TlsCall {
                symbol: "gnutls_record_send",
                ret: "gnutls_ret",
            },
        },
        Program {
            name: "gnutls_recv",
            hook: Hook::TlsCall {
                symbol: "gnutls_record_recv",
                ret: "gnutls_ret",
            },
        },
        Program {
            name: "gnutls_ret",
            hook: Hook::TlsReturn,
        },
        Program {
            name: "gnutls_sni",
            hook: Hook::TlsServerName {
                symbol: "gnutls_server_name_set",
            },
        },
    ],
    attach,
    observes: true,
    absent_elsewhere: &[],
};

fn attach(a: &mut Attach<'_>) -> Result<(), LoadError> {
    tls::load(a, &SENSOR);
    Ok(())
}
