//! Real containers for the tests: takes podman as the project runs it (`xtask::image`), gives the daemon's image built from the binary under test, client containers on the bootstrapped Debian base, and their cgroups; each image and container a test makes is removed when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

pub use xtask::image::{Podman, LOCAL_BASE};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

pub fn podman() -> Podman {
    Podman::new(&root())
}

/// `podman ARGS`, which must succeed; its stdout trimmed.
pub fn podman_ok(args: &[&str]) -> String {
    podman().output(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Removes a container whatever its state.
pub fn remove(name: &str) {
    let _ = podman()
        .command()
        .args(["rm", "--force", "--time", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The Debian bookworm base bootstrapped from the Debian archive (cached under target/ and
/// kept in podman's store as a cache, like target/ itself).
pub fn base() -> &'static str {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        xtask::image::ensure_local_base(&podman(), &xtask::image::cache_dir(&root()))
            .unwrap_or_else(|e| panic!("the local base image: {e:#}"))
    });
    LOCAL_BASE
}

/// The clients' image: the base plus curl (with the image's own libssl), python3 and
/// ca-certificates. Built once and kept as a cache under a fixed name.
pub fn client_image() -> &'static str {
    const TAG: &str = "localhost/nhiwatch-e2e-client:bookworm";
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let p = podman();
        if p.succeeds(&["image", "exists", TAG]) {
            return;
        }
        let dir = crate::TempDir::new("nhiwatch-e2e-client-image");
        std::fs::write(
            dir.path().join("Containerfile"),
            format!(
                "FROM {}\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl python3-minimal ca-certificates && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin\n",
                base()
            ),
        )
        .unwrap();
        let ctx = dir.path().display().to_string();
        podman_ok(&["build", "--network", "host", "-q", "-t", TAG, &ctx]);
    });
    TAG
}

/// The daemon's image built from the Containerfile with the binary under test; removed on drop.
pub struct Image {
    pub tag: String,
    pub size: u64,
}

impl Image {
    pub fn build_daemon() -> Image {
        let p = podman();
        let root = root();
        let base = xtask::image::resolve_base(&p, &xtask::image::cache_dir(&root), "auto")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let tag = format!("localhost/{}:e2e", crate::unique("nhiwatch-e2e"));
        // Every image this build makes, the intermediate ones too, carries the label: removed on drop.
        let label = format!("--label=nhiwatch.e2e.build={tag}");
        let built = xtask::image::build(&p, &root, &crate::nhiwatch_bin(), &base, &tag, &[&label])
            .unwrap_or_else(|e| panic!("building the image: {e:#}"));
        Image {
            tag,
            size: built.size,
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let p = podman();
        let _ = p
            .command()
            .args(["rmi", "--force", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let filter = format!("label=nhiwatch.e2e.build={}", self.tag);
        let ids = p
            .output(&["images", "--all", "--quiet", "--filter", &filter])
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = p
                .command()
                .args(["rmi", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A detached container; removed on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `podman run --detach --name <unique> ARGS` (ARGS: options, the image, its command).
    pub fn run(prefix: &str, args: &[&str]) -> Container {
        let name = crate::unique(prefix);
        let c = Container { name };
        let mut argv = vec!["run", "--detach", "--name", &c.name];
        argv.extend_from_slice(args);
        podman_ok(&argv);
        c
    }

    pub fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "--format", format, &self.name])
    }

    /// The full container id (64 hex).
    pub fn id(&self) -> String {
        self.inspect("{{.Id}}")
    }

    /// The host pid of the container's first process.
    pub fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().expect("a pid")
    }

    /// Waits until the container has exited; its exit code.
    pub fn wait(&self) -> i32 {
        podman_ok(&["wait", &self.name])
            .parse()
            .expect("an exit code")
    }

    pub fn logs(&self) -> String {
        let out: Output = podman()
            .command()
            .args(["logs", &self.name])
            .output()
            .expect("podman logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The v2 cgroup directory the container's processes are in (the cgroup id BPF sees is its inode).
    pub fn cgroup_dir(&self) -> PathBuf {
        cgroup_dir_of(self.pid())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// The v2 cgroup directory of a process (`0::` line of /proc/PID/cgroup) on this host, whose
/// unified hierarchy may be at /sys/fs/cgroup (pure v2) or /sys/fs/cgroup/unified (hybrid).
pub fn cgroup_dir_of(pid: u32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a v2 line");
    for mount in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let dir = PathBuf::from(format!("{mount}{rel}"));
        // The v2 hierarchy is the mount with cgroup.controllers at its root.
        if Path::new(mount).join("cgroup.controllers").exists() && dir.exists() {
            return dir;
        }
    }
    panic!("no v2 cgroup directory for {rel}");
}

/// The cgroup id of a v2 cgroup directory (its inode), as events carry it.
pub fn cgroup_id(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).expect("the cgroup directory").ino()
}

/// `podman` with the project's settings, for what the helpers above do not cover.
pub fn command() -> Command {
    podman().command()
}
