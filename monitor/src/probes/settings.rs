//! The `sensors:` settings section (ring buffer, polling, process table, and each sensor's own part) with its validation.

use serde::Deserialize;

use super::sensors::{files::FilesConfig, sockets::SocketsConfig, tls::TlsConfig};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    pub ring_buffer_bytes: u32,
    pub wakeup_bytes: u64,
    pub poll_interval_ms: u64,
    pub files: FilesConfig,
    pub tls: TlsConfig,
    pub sockets: SocketsConfig,
    pub process_table_capacity: usize,
    pub exited_linger_ms: u64,
    /// Sensors (names in `sensors::ALL`) that must be attached for `/readyz` to answer 200.
    pub required: Vec<String>,
}

/// Every sensor: a default install is ready only when it sees everything it was built to see.
pub fn all_sensors() -> Vec<String> {
    super::sensors::ALL
        .iter()
        .map(|s| s.name.to_owned())
        .collect()
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            ring_buffer_bytes: 16 << 20,
            wakeup_bytes: 256 << 10,
            poll_interval_ms: 2,
            files: FilesConfig::default(),
            tls: TlsConfig::default(),
            sockets: SocketsConfig::default(),
            process_table_capacity: 65536,
            exited_linger_ms: 30_000,
            required: all_sensors(),
        }
    }
}

impl SensorConfig {
    /// Sensors these settings turn off (`sensors.sockets.enabled: false`,
    /// `sensors.tls.hold_new_libraries: false`): never attached, reported as disabled rather
    /// than as attached or degraded, and never what keeps the daemon from being ready.
    pub fn disabled(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.sockets.enabled {
            out.push(super::sensors::sockets::SENSOR.name);
        }
        if !self.tls.hold_new_libraries {
            out.push(super::sensors::tls_hold::SENSOR.name);
        }
        out
    }

    /// The first problem found, as a sentence naming the setting by its YAML path.
    pub fn validate(&self) -> Result<(), String> {
        let rb = self.ring_buffer_bytes;
        // Kernel memory, locked for the daemon's life: 1 GiB is far beyond any need.
        if !rb.is_power_of_two() || !(4096..=1 << 30).contains(&rb) {
            return Err(format!(
                "sensors.ring_buffer_bytes must be a power of two between 4096 (page size) and 1073741824, got {rb}"
            ));
        }
        if self.wakeup_bytes >= u64::from(rb) {
            return Err(format!(
                "sensors.wakeup_bytes ({}) must be smaller than sensors.ring_buffer_bytes ({rb})",
                self.wakeup_bytes
            ));
        }
        if self.poll_interval_ms == 0 || self.poll_interval_ms > 1000 {
            return Err(format!(
                "sensors.poll_interval_ms must be 1..=1000, got {}",
                self.poll_interval_ms
            ));
        }
        self.tls.validate()?;
        self.sockets.validate()?;
        crate::bounds::count(
            "sensors.process_table_capacity",
            self.process_table_capacity,
            64,
            1 << 22,
        )?;
        crate::bounds::count(
            "sensors.exited_linger_ms",
            self.exited_linger_ms,
            1,
            3_600_000,
        )?;
        for r in &self.required {
            if !super::sensors::ALL.iter().any(|s| s.name == r) {
                return Err(format!(
                    "sensors.required: unknown sensor `{r}` (known: {})",
                    all_sensors().join(", ")
                ));
            }
        }
        self.files.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_bad_value_is_named() {
        assert_eq!(SensorConfig::default().validate(), Ok(()));
        let bad = |f: fn(&mut SensorConfig)| {
            let mut c = SensorConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.ring_buffer_bytes = 5000).contains("sensors.ring_buffer_bytes"));
        assert!(bad(|c| c.ring_buffer_bytes = 1 << 31).contains("sensors.ring_buffer_bytes"));
        assert!(bad(|c| c.exited_linger_ms = 0).contains("sensors.exited_linger_ms"));
        assert!(bad(|c| c.wakeup_bytes = 16 << 20).contains("sensors.wakeup_bytes"));
        assert!(bad(|c| c.poll_interval_ms = 1001).contains("sensors.poll_interval_ms"));
        assert!(bad(|c| c.tls.capture_bytes = 100_000).contains("sensors.tls.capture_bytes"));
        assert!(bad(|c| c.process_table_capacity = 1).contains("process_table_capacity"));
        assert!(bad(|c| c.files.watch = vec!["relative".into()]).contains("sensors.files.watch"));
        let e = bad(|c| c.required = vec!["process".into(), "tls".into()]);
        assert!(
            e.contains("sensors.required") && e.contains("`tls`") && e.contains("tls_openssl"),
            "{e}"
        );
    }

    #[test]
    fn every_sensor_is_required_by_default_and_any_subset_may_be() {
        let c = SensorConfig::default();
        assert_eq!(c.required.len(), crate::probes::sensors::ALL.len());
        for required in [vec![], vec!["process".to_owned(), "tcp".to_owned()]] {
            let c = SensorConfig {
                required,
                ..SensorConfig::default()
            };
            assert_eq!(c.validate(), Ok(()));
        }
    }
}
