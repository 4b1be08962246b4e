//! Takes a built nhiwatch binary and gives the `nhiwatch:<version>` image: podman with the
//! project's containers.conf, deploy/container/Containerfile, on the public Debian base or on one
//! bootstrapped from the Debian archive where no image registry is reachable.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// The runtime base the Containerfile names by default.
pub const PUBLIC_BASE: &str = "docker.io/library/debian:bookworm-slim";
/// The same Debian release made with debootstrap and `podman import`, the way air-gapped sites do.
pub const LOCAL_BASE: &str = "localhost/nhiwatch-base:bookworm";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where downloads and the bootstrapped base are cached (under the cargo target dir, which CI
/// keeps warm).
pub fn cache_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("container")
}

/// podman as this project runs it on this kernel: runc (crun refuses the hybrid cgroup layout),
/// the cgroupfs manager (no systemd in the machine's containers) and deploy/container/containers.conf
/// (no default ulimits: setting RLIMIT_NOFILE is refused here).
pub struct Podman {
    conf: PathBuf,
}

impl Podman {
    pub fn new(root: &Path) -> Podman {
        Podman {
            conf: root.join("deploy/container/containers.conf"),
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf).args([
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
        ]);
        c
    }

    /// Runs `podman ARGS`, fails with its stderr unless it succeeds, gives its stdout trimmed.
    pub fn output(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting podman {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "podman {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn succeeds(&self, args: &[&str]) -> bool {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Imports the locally bootstrapped Debian base unless podman has it, bootstrapping it first
/// (about 1.5 min) unless its tarball is cached.
pub fn ensure_local_base(podman: &Podman, cache: &Path) -> Result<()> {
    if podman.succeeds(&["image", "exists", LOCAL_BASE]) {
        return Ok(());
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let tar = cache.join("bookworm-minbase.tar");
    if !tar.exists() {
        let dir = cache.join("bookworm-rootfs");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the unfinished {}", dir.display()))?;
        }
        eprintln!("xtask: bootstrapping a Debian bookworm base from the Debian archive");
        // The default mirror of debootstrap: the same archive apt uses.
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&dir)
            .stdout(Stdio::null()))?;
        // Package lists and downloaded .debs are not part of an image (as in debian:*-slim).
        for sub in ["var/cache/apt/archives", "var/lib/apt/lists"] {
            let d = dir.join(sub);
            for entry in
                std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?
            {
                let path = entry?.path();
                if path.is_file() {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        let partial = cache.join("bookworm-minbase.tar.partial");
        run(Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&dir)
            .arg("-cf")
            .arg(&partial)
            .arg("."))?;
        std::fs::rename(&partial, &tar)?;
        std::fs::remove_dir_all(&dir)?;
    }
    podman.output(&["import", "--quiet", &tar.to_string_lossy(), LOCAL_BASE])?;
    Ok(())
}

/// The base to build on: `public`, `local`, an image reference, or `auto` (the public base when
/// podman has it or can pull it, else the local one).
pub fn resolve_base(podman: &Podman, cache: &Path, base: &str) -> Result<String> {
    match base {
        "public" => Ok(PUBLIC_BASE.into()),
        "local" => {
            ensure_local_base(podman, cache)?;
            Ok(LOCAL_BASE.into())
        }
        "auto" => {
            if podman.succeeds(&["image", "exists", PUBLIC_BASE])
                || podman.succeeds(&["pull", "--quiet", PUBLIC_BASE])
            {
                Ok(PUBLIC_BASE.into())
            } else {
                eprintln!("xtask: {PUBLIC_BASE} cannot be pulled: building on {LOCAL_BASE}");
                ensure_local_base(podman, cache)?;
                Ok(LOCAL_BASE.into())
            }
        }
        other => Ok(other.into()),
    }
}

pub struct Built {
    pub tag: String,
    pub id: String,
    /// Bytes, as podman reports the image (every layer, the base's included).
    pub size: u64,
}

/// Builds `tag` from deploy/container/Containerfile with `binary` as the daemon, on `base`
/// (an image reference), with `extra` podman build options (e.g. a `--label` naming the build, so
/// its intermediate images can be found and removed). The build context holds only what the image
/// ships: the binary (debug sections stripped), the bundled config and the rules.
pub fn build(
    podman: &Podman,
    root: &Path,
    binary: &Path,
    base: &str,
    tag: &str,
    extra: &[&str],
) -> Result<Built> {
    let cache = cache_dir(root);
    let name: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let ctx = cache.join(format!("context-{name}"));
    if ctx.exists() {
        std::fs::remove_dir_all(&ctx)?;
    }
    std::fs::create_dir_all(ctx.join("rules"))?;
    let bin = ctx.join("nhiwatch");
    run(Command::new("llvm-strip-19")
        .arg("--strip-debug")
        .arg(binary)
        .arg("-o")
        .arg(&bin))
    .with_context(|| format!("copying {} into the build context", binary.display()))?;
    std::fs::copy(root.join("config/nhiwatch.yaml"), ctx.join("nhiwatch.yaml"))?;
    for entry in std::fs::read_dir(root.join("rules"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(
                &path,
                ctx.join("rules").join(path.file_name().expect("a file")),
            )?;
        }
    }
    let containerfile = root.join("deploy/container/Containerfile");
    let status = podman
        .command()
        .args(["build", "--layers", "--network", "host", "-f"])
        .arg(&containerfile)
        .args(["--build-arg", &format!("BASE={base}"), "-t", tag])
        .args(extra)
        .arg(&ctx)
        .stdin(Stdio::null())
        .status()
        .context("starting podman build")?;
    let _ = std::fs::remove_dir_all(&ctx);
    if !status.success() {
        bail!("podman build of {tag} failed ({status})");
    }
    let id = podman.output(&["image", "inspect", "--format", "{{.Id}}", tag])?;
    let size = podman
        .output(&["image", "inspect", "--format", "{{.Size}}", tag])?
        .parse()
        .context("podman's image size")?;
    Ok(Built {
        tag: tag.into(),
        id,
        size,
    })
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
