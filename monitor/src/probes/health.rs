//! Which sensors are attached: the probe statuses folded into one verdict per sensor, the input of readiness (`sensors.required`) and of `nhiwatch_sensor_degraded`.

use super::{
    cause::{Cause, ProbeFailure},
    sensors::{Hook, Sensor, ALL},
    ProbeStatus,
};

/// One sensor's verdict: attached, or the first reason it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorHealth {
    /// Its name in `sensors::ALL` (and in `sensors.required`).
    pub sensor: &'static str,
    pub failure: Option<ProbeFailure>,
    /// Turned off by the settings: not attached on purpose, never degraded nor missing.
    pub disabled: bool,
}

/// Whether a status's name (`group/rest`) is one of `sensor`'s, and if so whether it is a
/// per-library uprobe status (`tls/SSL_write` on a library file) rather than the sensor's own.
fn owns(sensor: &Sensor, probe: &str) -> Option<bool> {
    let rest = probe.strip_prefix(sensor.group)?.strip_prefix('/')?;
    let shared = ALL.iter().filter(|s| s.group == sensor.group).count() > 1;
    if !shared {
        return Some(false);
    }
    // TLS library discovery serves every sensor of the group.
    if rest == DISCOVERY {
        return Some(false);
    }
    for p in sensor.programs {
        if p.name == rest {
            return Some(false);
        }
        match p.hook {
            Hook::TlsCall { symbol, .. } | Hook::TlsServerName { symbol } if symbol == rest => {
                return Some(true)
            }
            Hook::GoTlsCall { function, .. } if function == rest => return Some(true),
            _ => {}
        }
    }
    None
}

/// The status name of the TLS library discovery check (`tls/discovery`).
pub const DISCOVERY: &str = "discovery";

/// A sensor is attached when every one of its own programs loaded and attached (tracepoints,
/// the cgroup program, the TLS programs' load) and its checks passed; for uprobes, which go on
/// each library found, when no library was found yet (a host without libgnutls is not
/// degraded) or at least one library got them. A library that could not be probed while others
/// were is reported by `probe_attached`, not here.
/// A sensor in `disabled` is reported as such whatever its statuses.
pub fn sensor_health(statuses: &[ProbeStatus], disabled: &[&str]) -> Vec<SensorHealth> {
    ALL.iter()
        .map(|sensor| {
            if disabled.contains(&sensor.name) {
                return SensorHealth {
                    sensor: sensor.name,
                    failure: None,
                    disabled: true,
                };
            }
            let mut own_failure = None;
            let mut library_failure = None;
            let mut library_ok = false;
            for s in statuses {
                let Some(per_library) = owns(sensor, &s.probe) else {
                    continue;
                };
                let absent_here = |e: &ProbeFailure| {
                    e.cause == Cause::MissingFile
                        && sensor
                            .absent_elsewhere
                            .iter()
                            .any(|p| s.probe.ends_with(&format!("/{p}")))
                };
                match (&s.error, per_library) {
                    (Some(e), false) if absent_here(e) => {}
                    (Some(e), false) => {
                        own_failure.get_or_insert_with(|| e.clone());
                    }
                    (Some(e), true) => {
                        library_failure.get_or_insert_with(|| e.clone());
                    }
                    (None, true) => library_ok = true,
                    (None, false) => {}
                }
            }
            let failure = own_failure.or(if library_ok { None } else { library_failure });
            SensorHealth {
                sensor: sensor.name,
                failure,
                disabled: false,
            }
        })
        .collect()
}

/// The required sensors that are not attached: what `/readyz` answers 503 with.
pub fn missing<'a>(health: &'a [SensorHealth], required: &[String]) -> Vec<&'a SensorHealth> {
    health
        .iter()
        .filter(|h| h.failure.is_some() && required.iter().any(|r| r == h.sensor))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(probe: &str, target: &str) -> ProbeStatus {
        ProbeStatus {
            probe: probe.into(),
            target: target.into(),
            error: None,
        }
    }

    fn failed(probe: &str, target: &str, cause: Cause) -> ProbeStatus {
        ProbeStatus {
            probe: probe.into(),
            target: target.into(),
            error: Some(ProbeFailure::new(cause, format!("{probe} failed"))),
        }
    }

    fn verdict(statuses: &[ProbeStatus], sensor: &str) -> Option<ProbeFailure> {
        sensor_health(statuses, &[])
            .into_iter()
            .find(|h| h.sensor == sensor)
            .unwrap()
            .failure
    }

    #[test]
    fn a_sensor_is_attached_only_when_all_its_own_programs_are() {
        let statuses = vec![
            ok("files/enter_openat", "kernel"),
            failed("files/exit_openat", "kernel", Cause::Permission),
            ok("process/handle_exec", "kernel"),
            failed("core/canary", "kernel", Cause::MissingFile),
        ];
        let f = verdict(&statuses, "files").unwrap();
        assert_eq!(f.cause, Cause::Permission);
        assert!(f.detail.contains("files/exit_openat"));
        assert_eq!(verdict(&statuses, "process"), None);
        assert_eq!(
            verdict(&statuses, "canary").unwrap().cause,
            Cause::MissingFile
        );
    }

    #[test]
    fn a_legacy_syscall_this_architecture_lacks_does_not_degrade_files() {
        // arm64: no open(2), so no sys_enter_open tracepoint; openat and openat2 attached.
        let arm64 = vec![
            ok("files/enter_openat", "kernel"),
            failed("files/enter_open", "kernel", Cause::MissingFile),
            failed("files/exit_open", "kernel", Cause::MissingFile),
        ];
        assert_eq!(verdict(&arm64, "files"), None);
        // Refused for lack of a permission: degraded, legacy or not.
        let refused = vec![failed("files/enter_open", "kernel", Cause::Permission)];
        assert_eq!(verdict(&refused, "files").unwrap().cause, Cause::Permission);
        // openat itself missing is never excused.
        let none = vec![failed("files/enter_openat", "kernel", Cause::MissingFile)];
        assert!(verdict(&none, "files").is_some());
    }

    #[test]
    fn tls_is_attached_with_no_library_yet_or_with_one_library_probed() {
        // No libgnutls on the host: nothing to attach to, not degraded.
        assert_eq!(verdict(&[], "tls_gnutls"), None);
        // Every library refused (no CAP_SYS_ADMIN): degraded, with the refusal as the cause.
        let refused = vec![
            failed("tls/SSL_write", "/usr/lib/libssl.so.3", Cause::Permission),
            failed("tls/SSL_read", "/usr/lib/libssl.so.3", Cause::Permission),
        ];
        assert_eq!(
            verdict(&refused, "tls_openssl").unwrap().cause,
            Cause::Permission
        );
        assert_eq!(verdict(&refused, "tls_gnutls"), None, "only OpenSSL's");
        // One odd library among probed ones: the sensor works.
        let mut some = refused.clone();
        some.push(ok("tls/SSL_write", "/usr/lib/other/libssl.so.3"));
        assert_eq!(verdict(&some, "tls_openssl"), None);
        // Its programs did not load: degraded whatever the libraries.
        some.push(failed("tls/gnutls_send", "kernel", Cause::KernelFeature));
        assert_eq!(
            verdict(&some, "tls_gnutls").unwrap().cause,
            Cause::KernelFeature
        );
        assert_eq!(verdict(&some, "tls_openssl"), None);
        // Discovery that cannot read other processes' mappings degrades both.
        let blind = vec![failed("tls/discovery", "/proc", Cause::Permission)];
        assert!(verdict(&blind, "tls_openssl").is_some());
        assert!(verdict(&blind, "tls_gnutls").is_some());
        // A configured extra file that is missing is a status, not a degraded sensor.
        let extra = vec![failed("tls/extra_target", "/opt/x", Cause::MissingFile)];
        assert_eq!(verdict(&extra, "tls_openssl"), None);
    }

    #[test]
    fn only_required_sensors_make_the_daemon_not_ready() {
        let statuses = vec![failed(
            "dns/dns_ingress",
            "/sys/fs/cgroup",
            Cause::MissingFile,
        )];
        let health = sensor_health(&statuses, &[]);
        let all: Vec<String> = ALL.iter().map(|s| s.name.to_owned()).collect();
        let m = missing(&health, &all);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].sensor, "dns");
        assert!(missing(&health, &["process".into(), "tcp".into()]).is_empty());
    }

    #[test]
    fn a_sensor_the_settings_turn_off_is_disabled_not_attached_nor_missing() {
        let statuses = vec![failed("sockets/sock_enter_write", "kernel", Cause::Other)];
        let health = sensor_health(&statuses, &["sockets"]);
        let h = health.iter().find(|h| h.sensor == "sockets").unwrap();
        assert!(h.disabled);
        assert_eq!(h.failure, None);
        let all: Vec<String> = ALL.iter().map(|s| s.name.to_owned()).collect();
        assert!(missing(&health, &all).is_empty());
        // Without the setting, the same status degrades it.
        let h = sensor_health(&statuses, &[]);
        let h = h.iter().find(|h| h.sensor == "sockets").unwrap();
        assert!(!h.disabled && h.failure.is_some());
    }
}
