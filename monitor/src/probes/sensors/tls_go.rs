//! Go crypto/tls sensor (tls_go.bpf.c): uprobes at the entry and at every RET of `crypto/tls.(*Conn).Read`/`Write`, loaded at start and attached to each covered Go executable found (offsets from [`crate::probes::golang`]).

use aya::{
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink},
        UProbe,
    },
    Ebpf,
};

use super::{program, tls, Attach, Hook, Program, Sensor, NEEDS_UPROBE};
use crate::probes::{
    cause::ProbeFailure,
    golang::{GoBinary, GoFunction, StructOffsets, READ_FN, WRITE_FN},
    tls_libs::TlsTarget,
    LoadError, ProbeStatus,
};

pub const SENSOR: Sensor = Sensor {
    name: "tls_go",
    // Shares the `tls` group with the library sensors: a Go binary that cannot be probed is a
    // per-target failure like a library's, not a failure of the sensor.
    group: "tls",
    programs: &[
        Program {
            name: "go_tls_write",
            // Reported at entry: see tls_go.bpf.c for why not at its RETs.
            hook: Hook::GoTlsCall {
                function: WRITE_FN,
                ret: None,
            },
        },
        Program {
            name: "go_tls_read",
            hook: Hook::GoTlsCall {
                function: READ_FN,
                ret: Some("go_tls_ret"),
            },
        },
        Program {
            name: "go_tls_ret",
            hook: Hook::GoTlsReturn,
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

/// The entry probes' attach cookie: the binary's struct offsets (layout in tls_go.bpf.c).
pub fn cookie(o: &StructOffsets) -> u64 {
    (1 << 63)
        | u64::from(o.conn)
        | (u64::from(o.tcpconn_fd) << 16)
        | (u64::from(o.netfd_sysfd) << 32)
}

/// Attaches entry and RET probes of both functions to one Go executable; one status per
/// function. True if both functions were attached (a half-probed binary is detached).
pub(crate) fn attach_target(
    bpf: &mut Ebpf,
    statuses: &mut Vec<ProbeStatus>,
    links: &mut Vec<UProbeLink>,
    t: &TlsTarget,
    go: &GoBinary,
) -> bool {
    let target = t.path.display().to_string();
    let mut all = true;
    let mut mine = Vec::new();
    for p in SENSOR.programs {
        let Hook::GoTlsCall { function, ret } = p.hook else {
            continue;
        };
        let f = if function == READ_FN {
            &go.read
        } else {
            &go.write
        };
        let r = attach_function(bpf, &mut mine, t, f, p.name, ret, cookie(&go.offsets));
        all &= r.is_ok();
        statuses.push(ProbeStatus {
            probe: format!("{}/{}", SENSOR.group, f.name),
            target: target.clone(),
            error: r.err(),
        });
    }
    if all {
        links.extend(mine);
    }
    // else: dropping the links detaches them; an entry without its RETs would only fill the map.
    all
}

fn attach_function(
    bpf: &mut Ebpf,
    links: &mut Vec<UProbeLink>,
    t: &TlsTarget,
    f: &GoFunction,
    entry: &str,
    ret: Option<&str>,
    cookie: u64,
) -> Result<(), ProbeFailure> {
    attach_at(bpf, links, t, entry, f.entry, Some(cookie), f.name)?;
    if let Some(ret) = ret {
        for &at in &f.rets {
            attach_at(bpf, links, t, ret, at, None, f.name)?;
        }
    }
    Ok(())
}

fn attach_at(
    bpf: &mut Ebpf,
    links: &mut Vec<UProbeLink>,
    t: &TlsTarget,
    prog: &str,
    offset: u64,
    cookie: Option<u64>,
    name: &str,
) -> Result<(), ProbeFailure> {
    let p: &mut UProbe = program(bpf, prog)?;
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(offset),
        cookie,
    };
    let id = p
        .attach(
            point,
            t.attach_path(),
            aya::programs::uprobe::UProbeScope::AllProcesses,
        )
        .map_err(|e| {
            ProbeFailure::from_error(
                &format!("attach uprobe {name} at file offset {offset:#x}"),
                &e,
                NEEDS_UPROBE,
            )
        })?;
    if let Ok(link) = p.take_link(id) {
        links.push(link);
    }
    Ok(())
}
