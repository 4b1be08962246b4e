//! OpenSSL sensor (tls_openssl.bpf.c): uprobes on SSL_write/SSL_read(_ex) and SSL_ctrl, loaded at start and attached to each libssl found.

use super::{tls, Attach, Hook, Program, Sensor};
use crate::probes::LoadError;

pub const SENSOR: Sensor = Sensor {
    name: "tls_openssl",
    group: "tls",
    programs: &[
        Program {
            name: "ssl_write",
            hook: Hook::TlsCall {
                symbol: "SSL_write",
                ret: "ssl_ret",
            },
        },
        Program {
            name: "ssl_read",
            hook: Hook::TlsCall {
                symbol: "SSL_read",
                ret: "ssl_ret",
            },
        },
        Program {
            name: "ssl_write_ex",
            hook: Hook::TlsCall {
                symbol: "SSL_write_ex",
                ret: "ssl_ret_ex",
            },
        },
        Program {
            name: "ssl_read_ex",
            hook: Hook::TlsCall {
                symbol: "SSL_read_ex",
                ret: "ssl_ret_ex",
            },
        },
        Program {
            name: "ssl_ret",
            hook: Hook::TlsReturn,
        },
        Program {
            name: "ssl_ret_ex",
            hook: Hook::TlsReturn,
        },
        // `SSL_set_tlsext_host_name` is a macro for `SSL_ctrl`: the kernel side keeps only
        // that command.
        Program {
            name: "ssl_ctrl_sni",
            hook: Hook::TlsServerName { symbol: "SSL_ctrl" },
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
