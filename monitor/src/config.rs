//! Daemon configuration: YAML file (or the bundled default) → validated `Config`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::{
    identity::IdentityConfig, metrics::MetricsConfig, probes::SensorConfig, protocol::ApiCallConfig,
};

/// The bundled default configuration (config/nhiwatch.yaml).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/nhiwatch.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Parse {
        path: String,
        /// The parser's message; for an unclosed bracket or quote, where the parser noticed it
        /// and where it was opened.
        message: String,
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// Not readable, not a regular file, or over the size limit (`crate::input`).
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where nhiwatch keeps what must survive restarts (the fingerprint key).
    pub state_dir: PathBuf,
    pub sensors: SensorConfig,
    pub identity: IdentityConfig,
    pub api_calls: ApiCallConfig,
    pub metrics: MetricsConfig,
    /// Rules files or directories (access contracts and data sources); relative to the config file.
    pub rules: Vec<PathBuf>,
    /// Where findings go: stdout, SIEM sinks, routing.
    pub alerts: crate::alerts::AlertsConfig,
    pub detectors: crate::detect::DetectConfig,
    /// Fleet-wide detection through a Redis-protocol store; off unless `fleet.url` is set.
    pub fleet: crate::fleet::FleetConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/nhiwatch"),
            sensors: SensorConfig::default(),
            identity: IdentityConfig::default(),
            api_calls: ApiCallConfig::default(),
            metrics: MetricsConfig::default(),
            rules: vec![PathBuf::from("/etc/nhiwatch/rules")],
            alerts: crate::alerts::AlertsConfig::default(),
            detectors: crate::detect::DetectConfig::default(),
            fleet: crate::fleet::FleetConfig::default(),
        }
    }
}

impl Config {
    /// The bundled defaults.
    pub fn bundled() -> Config {
        Config::parse(DEFAULT_CONFIG, "<bundled config>").expect("bundled config is valid")
    }

    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        // Not a FIFO, device or socket, at most 1 MiB: `check-config` of a FIFO used to block for
        // ever, and of /dev/zero to grow until the allocator aborted.
        let text =
            crate::input::read_text(path, crate::input::MAX_CONFIG_BYTES, "a configuration file")?;
        let mut cfg = Config::parse(&text, &path.display().to_string())?;
        // Rules next to the config file are found wherever nhiwatch is started from.
        if let Some(dir) = path.parent() {
            for r in &mut cfg.rules {
                if r.is_relative() {
                    *r = dir.join(&*r);
                }
            }
        }
        Ok(cfg)
    }

    /// Parses a file on top of the bundled defaults: keys it leaves out keep the
    /// bundled values (lists are replaced whole, not merged).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parse_err = |source: serde_yaml_ng::Error| {
            let mut message = source.to_string();
            if let Some(opened) = crate::contracts::yaml_opened_at(&source, 0) {
                message.truncate(message.find(", while ").unwrap_or(message.len()));
                message = format!("{message} ({opened})");
            }
            ConfigError::Parse {
                path: origin.to_owned(),
                message,
                source,
            }
        };
        // Before the parser, whose cost grows with the square of the nesting depth.
        crate::input::yaml_depth(text, crate::input::MAX_YAML_DEPTH).map_err(|d| {
            ConfigError::Invalid {
                path: origin.to_owned(),
                message: format!(
                    "line {} column {}: YAML nested {} levels deep, more than the limit of {}",
                    d.line,
                    d.column,
                    d.depth,
                    crate::input::MAX_YAML_DEPTH
                ),
            }
        })?;
        // First on its own, so that errors carry the file's own line and column.
        let _: Config = serde_yaml_ng::from_str(text).map_err(parse_err)?;
        let mut merged: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(DEFAULT_CONFIG).expect("bundled config is YAML");
        let user: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(parse_err)?;
        // An empty or comment-only file is `null` to YAML: it means "nothing changed", like `{}`,
        // not "replace every default" (which left no secret-file watch at all).
        if !user.is_null() {
            overlay(&mut merged, user);
        }
        let cfg: Config = serde_yaml_ng::from_value(merged).map_err(parse_err)?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        self.alerts.validate()?;
        self.sensors.validate()?;
        self.identity.validate()?;
        if !self.state_dir.is_absolute() {
            return Err(format!(
                "state_dir must be an absolute path, got {:?}",
                self.state_dir
            ));
        }
        self.api_calls.validate()?;
        self.detectors.validate()?;
        self.fleet.validate()?;
        crate::bounds::count(
            "metrics.identity_series",
            self.metrics.identity_series,
            0,
            100_000,
        )?;
        Ok(())
    }
}

/// Deep-merges `top` into `base`: mappings recursively, anything else replaced.
fn overlay(base: &mut serde_yaml_ng::Value, top: serde_yaml_ng::Value) {
    use serde_yaml_ng::Value;
    match (base, top) {
        (Value::Mapping(b), Value::Mapping(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_config_is_valid_and_watches_secrets() {
        let c = Config::bundled();
        assert!(c
            .sensors
            .files
            .watch
            .iter()
            .any(|w| w == "/var/run/secrets/"));
        assert!(c
            .sensors
            .files
            .watch
            .iter()
            .any(|w| w == "~/.aws/credentials"));
        assert_eq!(c.sensors.tls.capture_bytes, 4096);
    }

    #[test]
    fn a_partial_file_keeps_the_bundled_defaults() {
        let c =
            Config::parse("sensors:\n  files:\n    watch: [/srv/secrets/]\n", "p.yaml").unwrap();
        assert_eq!(c.sensors.files.watch, ["/srv/secrets/"]);
        assert!(
            !c.sensors.tls.library_dirs.is_empty(),
            "library dirs from the bundled file"
        );
        assert_eq!(
            c.sensors.ring_buffer_bytes,
            Config::bundled().sensors.ring_buffer_bytes
        );
        let c = Config::parse("metrics:\n  listen: null\n", "p.yaml").unwrap();
        assert!(c.metrics.listen.is_none(), "null disables the endpoint");
    }

    #[test]
    fn tls_stacks_choose_what_is_probed_and_an_unknown_one_is_named() {
        let all = Config::bundled();
        assert_eq!(all.sensors.tls.stacks.len(), 3, "every stack by default");
        assert!(all.sensors.tls.holds());
        let go = Config::parse("sensors:\n  tls:\n    stacks: [go]\n", "g.yaml").unwrap();
        assert_eq!(
            go.sensors.tls.stacks,
            [crate::probes::tls_libs::TlsFamily::Go]
        );
        assert!(
            !go.sensors.tls.holds(),
            "no library stack probed: nobody is held for one"
        );
        let e = Config::parse("sensors:\n  tls:\n    stacks: [go, boringssl]\n", "b.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("boringssl") && e.contains("b.yaml"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_with_location() {
        let e = Config::parse("sensors:\n  ring_bufer_bytes: 4096\n", "x.yaml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("x.yaml"), "{msg}");
        assert!(msg.contains("ring_bufer_bytes"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn identity_settings_are_checked() {
        for (yaml, needle) in [
            (
                "identity: {templates: {kubernetes: 'spiffe://{trust_domain}/{nope}'}}",
                "unknown placeholder {nope}",
            ),
            ("identity: {templates: {systemd: 'http://x'}}", "spiffe://"),
            (
                "identity: {selectors: [{selectors: ['k8s:bogus:x'], id: 'spiffe://a/b'}]}",
                "selectors[0]",
            ),
            ("identity: {kubernetes: {source: kubelat}}", "kubelat"),
        ] {
            let msg = Config::parse(yaml, "c.yaml").unwrap_err().to_string();
            assert!(msg.contains(needle), "{yaml}: {msg}");
        }
    }

    #[test]
    fn bad_values_are_explained() {
        for (yaml, needle) in [
            ("sensors: {ring_buffer_bytes: 5000}", "power of two"),
            ("sensors: {tls: {capture_bytes: 100000}}", "at most"),
            ("sensors: {files: {watch: [relative/path]}}", "absolute"),
            ("sensors: {poll_interval_ms: 0}", "poll_interval_ms"),
            ("state_dir: var/lib", "absolute"),
            ("api_calls: {max_head_bytes: 10}", "max_head_bytes"),
            ("api_calls: {max_sesions: 10}", "max_sesions"),
        ] {
            let msg = Config::parse(yaml, "c.yaml").unwrap_err().to_string();
            assert!(msg.contains(needle), "{yaml}: {msg}");
        }
    }
}
