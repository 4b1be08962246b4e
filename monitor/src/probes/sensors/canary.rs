//! CO-RE canary (canary.bpf.c): run once in the daemon at load, it proves the loader applied CO-RE relocations; wrong field offsets stop the daemon.

use aya::maps::{Array, MapData};

use super::{Attach, Hook, Program, Sensor};
use crate::probes::{
    abi::nw_canary,
    cause::{Cause, ProbeFailure},
    LoadError,
};

pub const SENSOR: Sensor = Sensor {
    name: "canary",
    group: "core",
    programs: &[Program {
        name: "core_canary",
        hook: Hook::Tracepoint("syscalls", "sys_enter_getppid"),
    }],
    attach,
    observes: false,
    absent_elsewhere: &[],
};

/// Its status is `core/canary`, whatever the program is called.
const STATUS: &str = "canary";

fn attach(a: &mut Attach<'_>) -> Result<(), LoadError> {
    for p in SENSOR.programs {
        let Hook::Tracepoint(category, name) = p.hook else {
            a.record(
                SENSOR.group,
                STATUS,
                "kernel",
                Err(ProbeFailure::new(
                    Cause::Other,
                    format!("{:?} is not a tracepoint", p.hook),
                )),
            );
            continue;
        };
        let r = match a.tracepoint(p.name, category, name) {
            Err(e) if a.tracefs_problem.is_some() => Err(e),
            Err(e) => Err(ProbeFailure::new(
                e.cause,
                format!(
                    "canary could not run, field offsets unchecked: {}",
                    e.detail
                ),
            )),
            Ok(()) => check(a)?,
        };
        a.record(SENSOR.group, STATUS, "kernel", r);
    }
    Ok(())
}

/// Fires the canary in this process and compares its CO-RE read with the helper's answer.
/// `Ok(Err(_))`: it did not fire (unchecked); `Err(_)`: it ran and the offsets are wrong.
fn check(a: &mut Attach<'_>) -> Result<Result<(), ProbeFailure>, LoadError> {
    // SAFETY: getppid has no preconditions; it only fires the tracepoint.
    unsafe { libc::getppid() };
    let map = a.bpf.map("canary").ok_or(LoadError::MissingMap("canary"))?;
    let canary: Array<&MapData, nw_canary> =
        Array::try_from(map).map_err(|source| LoadError::Map {
            name: "canary",
            source,
        })?;
    let c = canary.get(&0, 0).map_err(|source| LoadError::Map {
        name: "canary",
        source,
    })?;
    if c.hits == 0 {
        return Ok(Err(ProbeFailure::new(
            Cause::Other,
            "canary did not fire, field offsets unchecked",
        )));
    }
    if c.tgid_core != c.tgid_helper {
        return Err(LoadError::CoreCanary {
            core: c.tgid_core,
            helper: c.tgid_helper,
        });
    }
    Ok(Ok(()))
}
