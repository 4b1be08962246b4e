//! Kernel side as seen from userspace: the embedded object, its generated ABI, the sensor table and its settings, loading, watch tables, TLS targets and the ring-buffer reader.

pub mod abi;
pub mod cause;
pub mod coverage;
pub mod golang;
pub mod handoff;
pub mod health;
pub mod loader;
pub mod object;
pub mod reader;
pub mod sensors;
pub mod settings;
pub mod telemetry;
pub mod tls_hold;
pub mod tls_libs;
pub mod upkeep;
pub mod watch;

pub use cause::{Cause, ProbeFailure};
pub use health::SensorHealth;
pub use loader::{LoadError, ProbeStatus, Sensors};
pub use sensors::{files::FilesConfig, tls::TlsConfig};
pub use settings::SensorConfig;
pub use telemetry::SensorTelemetry;
