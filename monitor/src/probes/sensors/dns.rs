//! DNS sensor (dns.bpf.c): a cgroup ingress program on the cgroup v2 root that sees DNS answers for every socket on the host.

use std::path::PathBuf;

use aya::programs::{links::CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};

use super::{program, Attach, Hook, Program, Sensor, NEEDS_CGROUP};
use crate::probes::{
    cause::{Cause, ProbeFailure},
    LoadError,
};

pub const SENSOR: Sensor = Sensor {
    name: "dns",
    group: "dns",
    programs: &[Program {
        name: "dns_ingress",
        hook: Hook::CgroupIngress,
    }],
    attach,
    observes: true,
    absent_elsewhere: &[],
};

/// The cgroup v2 hierarchy, if one is mounted.
fn cgroup_v2_root() -> Option<PathBuf> {
    Some(crate::cgroup_v2_root()).filter(|p| p.join("cgroup.procs").exists())
}

/// Attaches to the root cgroup, so it sees every socket on the host, alongside (never
/// instead of) programs others attached there.
fn attach(a: &mut Attach<'_>) -> Result<(), LoadError> {
    for p in SENSOR.programs {
        let Some(root) = cgroup_v2_root() else {
            a.record(
                SENSOR.group,
                p.name,
                crate::CGROUP_V2_ROOT,
                Err(ProbeFailure::new(
                    Cause::MissingFile,
                    "no cgroup v2 hierarchy mounted: DNS answers are not seen",
                )),
            );
            continue;
        };
        let r = (|| {
            let prog: &mut CgroupSkb = program(a.bpf, p.name)?;
            prog.load()
                .map_err(|e| ProbeFailure::from_error("load", &e, NEEDS_CGROUP))?;
            let dir = std::fs::File::open(&root).map_err(|e| {
                ProbeFailure::from_error(&format!("open {}", root.display()), &e, NEEDS_CGROUP)
            })?;
            prog.attach(
                &dir,
                CgroupSkbAttachType::Ingress,
                // Links (kernel >= 5.7) always coexist with other programs on the
                // cgroup and take no flags: ALLOW_MULTI makes bpf_link_create fail.
                CgroupAttachMode::Single,
            )
            .map(|_| ())
            .map_err(|e| ProbeFailure::from_error("attach cgroup_skb/ingress", &e, NEEDS_CGROUP))
        })();
        a.record(SENSOR.group, p.name, &root.display().to_string(), r);
    }
    Ok(())
}
