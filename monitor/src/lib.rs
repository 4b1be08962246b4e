//! nhiwatch: runtime monitor for machine identities. Kernel sensors → typed events → context → outputs.

pub mod alerts;
pub mod bounds;
pub mod cli;
pub mod config;
pub mod context;
pub mod contracts;
pub mod daemon;
pub mod detect;
pub mod events;
pub mod fleet;
pub mod identity;
pub mod input;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod probes;
pub mod protocol;
pub mod replay;
pub mod report;
pub mod store;

/// Where hybrid hosts mount the cgroup v2 hierarchy; unified hosts (most Kubernetes nodes today)
/// mount it at /sys/fs/cgroup itself. Use [`cgroup_v2_root`].
pub const CGROUP_V2_ROOT: &str = "/sys/fs/cgroup/unified";

/// The mounted cgroup v2 hierarchy: the hybrid location if it is one, else /sys/fs/cgroup if that
/// is v2; the hybrid location when neither is (identity then falls back to executables).
pub fn cgroup_v2_root() -> std::path::PathBuf {
    [CGROUP_V2_ROOT, "/sys/fs/cgroup"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
        .unwrap_or_else(|| CGROUP_V2_ROOT.into())
}
