//! Kernel side as seen from userspace: the embedded object, its generated ABI, loading, watch tables, TLS targets and the ring-buffer reader.

pub mod abi;
pub mod loader;
pub mod object;
pub mod reader;
pub mod telemetry;
pub mod tls_libs;
pub mod upkeep;
pub mod watch;

pub use loader::{LoadError, ProbeStatus, Sensors};
pub use telemetry::SensorTelemetry;
