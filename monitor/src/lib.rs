//! nhiwatch: runtime monitor for machine identities. Kernel sensors → typed events → context → outputs.

pub mod alerts;
pub mod cli;
pub mod config;
pub mod contracts;
pub mod detect;
pub mod events;
pub mod identity;
pub mod metrics;
pub mod pipeline;
pub mod probes;
pub mod protocol;
pub mod report;
pub mod store;

/// Where the cgroup v2 hierarchy is mounted (hybrid hosts mount it under /unified).
pub const CGROUP_V2_ROOT: &str = "/sys/fs/cgroup/unified";
