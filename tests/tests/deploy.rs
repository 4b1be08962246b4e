//! Deployment: the DaemonSet and the systemd unit run the daemon as a non-root user with the same capabilities, the real daemon works (and is ready) with exactly those and with none fewer, and says why it is not ready with fewer; manifests match their generator and the Kubernetes schemas; the unit passes systemd-analyze.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nhiwatch_e2e::*;
use serde_yaml_ng::Value as Yaml;

/// Bounds each wait for something that must happen: generous, so a busy machine is only slower.
const WAIT: Duration = Duration::from_secs(60);
/// For runs where some sensor is expected to be missing, and only that something is missing is
/// asserted: a slow machine can only make such a run miss more, never fail the test.
const SHORT: Duration = Duration::from_secs(8);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Capability names by number (include/uapi/linux/capability.h), without the CAP_ prefix.
const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn cap_mask(caps: &BTreeSet<String>) -> u64 {
    caps.iter()
        .map(|c| {
            let n = CAPS
                .iter()
                .position(|k| k == c)
                .unwrap_or_else(|| panic!("unknown capability {c}"));
            1u64 << n
        })
        .fold(0, |a, b| a | b)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn daemonset() -> Yaml {
    serde_yaml_ng::from_str(&read("deploy/kubernetes/daemonset.yaml")).unwrap()
}

/// Every container (init ones too) of a pod template that sets `privileged: true`.
fn privileged_containers(ds: &Yaml) -> Vec<String> {
    let spec = &ds["spec"]["template"]["spec"];
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec[*k].as_sequence())
        .flatten()
        .filter(|c| c["securityContext"]["privileged"].as_bool() == Some(true))
        .map(|c| c["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The capabilities the DaemonSet adds (after dropping ALL), as CAP_ names without the prefix.
fn manifest_caps() -> BTreeSet<String> {
    let ds = daemonset();
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container: the daemon");
    let caps = &containers[0]["securityContext"]["capabilities"];
    let list = |k: &str| -> Vec<String> {
        caps[k]
            .as_sequence()
            .unwrap_or_else(|| panic!("capabilities.{k} missing"))
            .iter()
            .map(|v| v.as_str().expect("a capability name").to_owned())
            .collect()
    };
    assert_eq!(
        list("drop"),
        ["ALL"],
        "every capability not added is dropped"
    );
    list("add")
        .into_iter()
        .map(|c| c.trim_start_matches("CAP_").to_uppercase())
        .collect()
}

/// The capabilities of the unit file; its bounding and ambient sets must agree.
fn unit_caps(unit: &str) -> Result<BTreeSet<String>, String> {
    let get = |key: &str| -> Result<BTreeSet<String>, String> {
        let values: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .collect();
        let [value] = values[..] else {
            return Err(format!("{} {key}= lines, not one", values.len()));
        };
        value
            .split_whitespace()
            .map(|c| {
                c.strip_prefix("CAP_")
                    .map(str::to_owned)
                    .ok_or(format!("{key}: {c} is not a CAP_ name"))
            })
            .collect()
    };
    let bounding = get("CapabilityBoundingSet")?;
    let ambient = get("AmbientCapabilities")?;
    if bounding != ambient {
        return Err(format!("bounding {bounding:?} != ambient {ambient:?}"));
    }
    Ok(bounding)
}

/// The uid the tests run the daemon as: the DaemonSet's `runAsUser` (the unit's `DynamicUser=`
/// gets some other non-root uid; what matters is that it is not 0).
const DEPLOYED_UID: u32 = 65534;

/// Both deployments run the daemon as a user other than root.
fn assert_deployed_non_root() {
    let ds = daemonset();
    let sc = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(
        sc["runAsUser"].as_u64(),
        Some(u64::from(DEPLOYED_UID)),
        "DaemonSet runAsUser"
    );
    assert_eq!(sc["runAsGroup"].as_u64(), Some(u64::from(DEPLOYED_UID)));
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    let unit = read("deploy/systemd/nhiwatch.service");
    let value = |key: &str| -> Option<String> {
        unit.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    assert_eq!(
        value("DynamicUser").as_deref(),
        Some("yes"),
        "unit DynamicUser"
    );
    assert!(
        !matches!(value("User").as_deref(), None | Some("root" | "0")),
        "unit User= {:?}",
        value("User")
    );
}

fn deployed_caps() -> BTreeSet<String> {
    let k8s = manifest_caps();
    let unit = unit_caps(&read("deploy/systemd/nhiwatch.service")).unwrap();
    assert_eq!(
        k8s, unit,
        "the DaemonSet and the systemd unit grant different capabilities"
    );
    assert!(!k8s.is_empty());
    k8s
}

#[test]
fn the_daemonset_and_the_unit_grant_the_same_capabilities_and_never_privileged() {
    let caps = deployed_caps();
    let ds = daemonset();
    assert!(
        privileged_containers(&ds).is_empty(),
        "privileged DaemonSet"
    );
    // The check itself catches a privileged container (it is not vacuous).
    let bad: Yaml = serde_yaml_ng::from_str(
        &read("deploy/kubernetes/daemonset.yaml").replace("privileged: false", "privileged: true"),
    )
    .unwrap();
    assert_eq!(privileged_containers(&bad), ["nhiwatch", "state-owner"]);
    // A unit whose two lists disagree is refused.
    let skewed = read("deploy/systemd/nhiwatch.service").replace(
        "AmbientCapabilities=CAP_",
        "AmbientCapabilities=CAP_NET_RAW CAP_",
    );
    assert!(unit_caps(&skewed).is_err());
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    assert!(pod["hostNetwork"].is_null(), "hostNetwork is not needed");
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    let tol = pod["tolerations"].as_sequence().unwrap();
    assert!(
        tol.iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "tolerates every taint: {tol:?}"
    );
    let c = &pod["containers"][0];
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env = c["env"].as_sequence().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"));
    eprintln!("deployed capabilities: {caps:?}");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests: generated copies are current, every resource passes the real schemas.

/// kubernetes-validate (PyPI; bundles the Kubernetes OpenAPI schemas) in a venv kept under
/// the target directory, installed on first use.
fn kubernetes_validate() -> PathBuf {
    const VERSION: &str = "1.37.0";
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kubernetes-validate-{VERSION}"));
    let bin = dir.join("bin/kubernetes-validate");
    if bin.exists() {
        return bin;
    }
    let partial = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    run_ok(
        Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&partial),
    );
    run_ok(
        Command::new(partial.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes-validate=={VERSION}")),
    );
    // venv scripts name their interpreter by absolute path: fix them for the final place.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).unwrap();
    run_ok(
        Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&dir),
    );
    let fixed = std::fs::read_to_string(&bin)
        .unwrap()
        .replace(&partial.display().to_string(), &dir.display().to_string());
    std::fs::write(&bin, fixed).unwrap();
    bin
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    Command::new(kubernetes_validate())
        .arg("--strict")
        .args(files)
        .output()
        .unwrap()
}

#[test]
fn kubernetes_manifests_are_generated_and_valid_against_the_kubernetes_schemas() {
    let root = repo();
    let k8s = root.join("deploy/kubernetes");
    // The committed ConfigMaps, checksum and kustomization are what the generator makes.
    let out = Command::new("python3")
        .arg(k8s.join("generate.py"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "generated manifests are stale: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The kustomization names every manifest in the directory, and only those.
    let kust: Yaml =
        serde_yaml_ng::from_str(&read("deploy/kubernetes/kustomization.yaml")).unwrap();
    let listed: BTreeSet<String> = kust["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&k8s)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);

    // The rules ConfigMap holds rules/*.yaml byte for byte, the config ConfigMap the config.
    let cm: Yaml =
        serde_yaml_ng::from_str(&read("deploy/kubernetes/configmap-rules.yaml")).unwrap();
    let data = cm["data"].as_mapping().unwrap();
    let rules: BTreeSet<String> = std::fs::read_dir(root.join("rules"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    assert_eq!(
        data.keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>(),
        rules
    );
    for (k, v) in data {
        let k = k.as_str().unwrap();
        assert_eq!(v.as_str().unwrap(), read(&format!("rules/{k}")), "{k}");
    }

    // Every resource passes the Kubernetes OpenAPI schemas, strictly (no unknown fields).
    let files: Vec<PathBuf> = listed.iter().map(|f| k8s.join(f)).collect();
    let out = validate(&files);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schema errors:\n{text}");
    for kind in [
        "namespace/nhiwatch",
        "serviceaccount/nhiwatch",
        "clusterrole/nhiwatch",
        "clusterrolebinding/nhiwatch",
        "service/nhiwatch-metrics",
        "daemonset/nhiwatch",
        "configmap/nhiwatch-config",
        "configmap/nhiwatch-rules",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind} ")),
            "{kind} not validated:\n{text}"
        );
    }
    // The validator rejects what it should: a misspelt field and a wrong type.
    let tmp = TempDir::new("nhiwatch-e2e-k8s");
    for (what, from, to) in [
        ("unknown field", "hostPID: true", "hostPIDs: true"),
        (
            "wrong type",
            "containerPort: 9464",
            "containerPort: metrics-port",
        ),
    ] {
        let bad = tmp.path().join("daemonset.yaml");
        let text = read("deploy/kubernetes/daemonset.yaml");
        assert!(text.contains(from));
        std::fs::write(&bad, text.replace(from, to)).unwrap();
        assert!(!validate(&[bad]).status.success(), "{what} not caught");
    }
}

#[test]
fn the_deployed_config_and_rules_load_in_the_daemon_as_mounted_from_configmaps() {
    // The daemon config the ConfigMap carries is valid for this daemon.
    run_ok(
        Command::new(nhiwatch_bin())
            .arg("check-config")
            .arg(repo().join("deploy/kubernetes/config/nhiwatch.yaml")),
    );
    // A ConfigMap volume: KEY -> ..data/KEY, ..data -> ..<timestamp>/ (swapped on update).
    let cm: Yaml =
        serde_yaml_ng::from_str(&read("deploy/kubernetes/configmap-rules.yaml")).unwrap();
    let tmp = TempDir::new("nhiwatch-e2e-cm");
    let ts = tmp.path().join("..2026_11_23_10_00_00.000000001");
    std::fs::create_dir(&ts).unwrap();
    symlink(ts.file_name().unwrap(), tmp.path().join("..data")).unwrap();
    for (k, v) in cm["data"].as_mapping().unwrap() {
        let k = k.as_str().unwrap();
        std::fs::write(ts.join(k), v.as_str().unwrap()).unwrap();
        symlink(format!("..data/{k}"), tmp.path().join(k)).unwrap();
    }
    let mounted = run_ok(Command::new(nhiwatch_bin()).arg("check").arg(tmp.path()));
    let direct = run_ok(
        Command::new(nhiwatch_bin())
            .arg("check")
            .arg(repo().join("rules")),
    );
    assert_eq!(
        String::from_utf8_lossy(&mounted.stdout),
        String::from_utf8_lossy(&direct.stdout),
        "each rule read once, not once per ..data alias"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = read("deploy/systemd/nhiwatch.service");
    let bin = nhiwatch_bin()
        .canonicalize()
        .expect("built nhiwatch binary");
    let tmp = TempDir::new("nhiwatch-e2e-unit");
    // The unit as installed, with ExecStart pointing at the binary this test built.
    let copy = tmp.path().join("nhiwatch.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/nhiwatch", &bin.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.trim().is_empty(), "warnings: {text}");
    // The verifier does look at ExecStart: an unresolvable binary is an error.
    let missing = tmp.path().join("missing");
    std::fs::create_dir(&missing).unwrap();
    std::fs::write(
        missing.join("nhiwatch.service"),
        unit.replace("/usr/local/bin/nhiwatch", "/nonexistent/nhiwatch"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(missing.join("nhiwatch.service"))
        .output()
        .unwrap();
    assert!(!out.status.success());

    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key}= missing"))
            .to_owned()
    };
    // No sd_notify in the daemon: Type=notify would time out.
    assert!(["simple", "exec"].contains(&line("Type").as_str()));
    assert_eq!(line("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(line("ProtectSystem"), "strict");
    assert_eq!(line("ReadWritePaths"), "/var/lib/nhiwatch");
    assert_eq!(line("NoNewPrivileges"), "yes");
    assert_eq!(line("Restart"), "on-failure");
}

// ---------------------------------------------------------------------------------------------
// Capabilities: the daemon with exactly the deployed set works; with any one removed it does not.

/// What the capability runs exercise, built once per test.
struct Fixture {
    _tmp: TempDir,
    nginx: Nginx,
    /// A secret in a directory only its owner (not root without DAC_READ_SEARCH) may search.
    locked_secret: PathBuf,
    /// A symlink to it from outside: only the inode match catches opens through it.
    link: PathBuf,
    /// A private copy of libssl, mapped only by `preloaded` (started before the daemon).
    private_libssl: PathBuf,
    preloaded: Child,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.preloaded.kill();
        let _ = self.preloaded.wait();
    }
}

fn system_libssl() -> PathBuf {
    for dir in ["/usr/lib", "/lib", "/usr/lib64"] {
        let mut cands = vec![PathBuf::from(dir).join("libssl.so.3")];
        if let Ok(rd) = std::fs::read_dir(dir) {
            cands.extend(rd.filter_map(|e| Some(e.ok()?.path().join("libssl.so.3"))));
        }
        if let Some(p) = cands.into_iter().find(|p| p.is_file()) {
            return p;
        }
    }
    panic!("no libssl.so.3 on this machine");
}

impl Fixture {
    fn new() -> Fixture {
        // The deployments bring tracefs (hostPath; systemd mounts it at boot); the daemon,
        // without CAP_SYS_ADMIN in some runs, must not be the one to mount it.
        mount_tracefs();
        let tmp = TempDir::new("nhiwatch-e2e-caps");
        let locked = tmp.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        let locked_secret = locked.join("secret");
        std::fs::write(&locked_secret, "not-a-real-secret").unwrap();
        let link = tmp.path().join("innocent-link");
        symlink(&locked_secret, &link).unwrap();
        // Owned by a uid nobody uses, mode 0700: root passes only by capability.
        std::os::unix::fs::chown(&locked, Some(64_123), Some(64_123)).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();

        let libdir = tmp.path().join("lib");
        std::fs::create_dir(&libdir).unwrap();
        let private_libssl = libdir.join("libssl.so.3");
        std::fs::copy(system_libssl(), &private_libssl).unwrap();
        // A process with every capability, started before the daemon, that maps the copy: the
        // daemon finds it only through /proc/PID/maps and opens it through /proc/PID/root.
        let mut preloaded = Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import ssl, sys; print(ssl.OPENSSL_VERSION, flush=True); sys.stdin.read()",
            ])
            .env("LD_LIBRARY_PATH", &libdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(preloaded.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("OpenSSL"), "{line}");
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", preloaded.id())).unwrap();
        assert!(
            maps.contains(&private_libssl.display().to_string()),
            "python3 did not load the private libssl"
        );
        Fixture {
            nginx: Nginx::start("location = /deploy { return 200 'ok'; }"),
            _tmp: tmp,
            locked_secret,
            link,
            private_libssl,
            preloaded,
        }
    }

    /// Starts the daemon through setpriv with exactly `caps` (bounding, inheritable, ambient,
    /// hence permitted and effective for root) and no_new_privs, like both deployments, then
    /// lists what does not work. Empty: everything the daemon does works.
    fn shortfalls(&self, caps: &BTreeSet<String>, wait: Duration) -> Vec<String> {
        let watch = [self.locked_secret.display().to_string()];
        let d = match start_as_deployed(caps, &config_with(&watch, "")) {
            Ok(d) => d,
            Err(e) => return vec![format!("the daemon did not start: {e}")],
        };
        // It runs with exactly these capabilities, not more.
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        let want = cap_mask(caps);
        for key in ["CapEff", "CapPrm", "CapBnd"] {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}:")))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap();
            assert_eq!(
                v, want,
                "{key} of the daemon is {v:x}, not {want:x} ({caps:?})"
            );
        }

        let mut missing = Vec::new();
        // Ready, or each sensor that is not attached on a line of its own.
        let (code, body) = d.readyz();
        if code != 200 {
            missing.extend(
                body.lines()
                    .skip(1)
                    .map(|l| format!("not ready ({code}): {}", l.trim())),
            );
            if body.lines().count() < 2 {
                missing.push(format!("not ready ({code}): {body}"));
            }
        }
        let seen = |pred: &dyn Fn(&Value) -> bool| {
            let deadline = Instant::now() + wait;
            loop {
                if d.events().iter().any(pred) {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                thread::sleep(Duration::from_millis(50));
            }
        };

        // Kernel probes: every one attached, the essential ones present.
        let metrics = d.metrics();
        let probes: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("nhiwatch_probe_attached{"))
            .collect();
        for p in probes.iter().filter(|l| l.ends_with(" 0")) {
            missing.push(format!("not attached: {p}"));
        }
        for p in [
            "process/handle_exec",
            "files/enter_openat",
            "tcp/handle_sock_state",
            "dns/dns_ingress",
            "core/canary",
        ] {
            let needle = format!("{{probe=\"{p}\",");
            if !probes
                .iter()
                .any(|l| l.contains(&needle) && l.ends_with(" 1"))
            {
                missing.push(format!("kernel probe {p} not attached"));
            }
        }
        // TLS uprobes on the system's libssl and on the private copy found through /proc.
        let tls_on = |target: &dyn Fn(&str) -> bool| {
            probes
                .iter()
                .any(|l| l.contains("probe=\"tls/SSL_write\"") && target(l) && l.ends_with(" 1"))
        };
        if !tls_on(&|l| l.contains("libssl.so") && !l.contains("target=\"/proc/")) {
            missing.push("TLS uprobes not attached to the system libssl".into());
        }
        let private = self.private_libssl.display().to_string();
        let through_proc = format!("/root{private}\"");
        // The /proc scan runs beside the reader, after readiness: give it time.
        // A target reported as not attached (0) is final: no need to wait on.
        let deadline = Instant::now() + wait;
        let found = loop {
            let metrics = d.metrics();
            let line = metrics.lines().find(|l| {
                l.starts_with("nhiwatch_probe_attached{probe=\"tls/SSL_write\"")
                    && l.contains(&through_proc)
            });
            let attached = line.is_some_and(|l| l.ends_with(" 1"));
            if attached || line.is_some_and(|l| l.ends_with(" 0")) || Instant::now() > deadline {
                break attached;
            }
            thread::sleep(Duration::from_millis(100));
        };
        if !found {
            missing.push(format!(
                "TLS uprobes not attached to {private} of pid {} (found through /proc/PID)",
                self.preloaded.id()
            ));
        }

        // An exec.
        let true_pid = spawn_pid(&mut Command::new("/usr/bin/true"));
        if !seen(&|v| kind_is(v, "exec") && pid_is(v, true_pid)) {
            missing.push("exec not seen".into());
        }
        // A watched file opened by its path, then through a symlink (inode match).
        let by_path = spawn_pid(
            Command::new("cat")
                .arg(&self.locked_secret)
                .stdout(Stdio::null()),
        );
        if !seen(&|v| kind_is(v, "file_open") && pid_is(v, by_path)) {
            missing.push("watched file open (by path) not seen".into());
        }
        let by_link = spawn_pid(Command::new("cat").arg(&self.link).stdout(Stdio::null()));
        if !seen(&|v| kind_is(v, "file_open") && pid_is(v, by_link) && v["matched_by"] == "inode") {
            missing.push("watched file open through a symlink (inode match) not seen".into());
        }
        // TLS plaintext of a real client.
        let url = format!("https://localhost:{}/deploy", self.nginx.port);
        let curl = spawn_pid(
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "--cacert"])
                .arg(&self.nginx.cert)
                .arg(&url),
        );
        // Without an attached TLS uprobe there is nothing to wait for.
        let tls_attached = d.metrics().lines().any(|l| {
            l.starts_with("nhiwatch_probe_attached{probe=\"tls/SSL_write\"") && l.ends_with(" 1")
        });
        if !tls_attached
            || !seen(&|v| kind_is(v, "tls_data") && pid_is(v, curl) && v["direction"] == "write")
        {
            missing.push("TLS write of curl not seen".into());
        }
        // A one-shot client of another user than the daemon's (root, here) mapping a libssl copy
        // nobody probed yet, in a session of its own (no terminal): held at the map until its
        // uprobes are attached, so its first call is seen. Counted before it is continued.
        let fresh = self._tmp.path().join(unique("hold"));
        std::fs::create_dir(&fresh).unwrap();
        let copy = fresh.join("libssl.so.3");
        std::fs::copy(system_libssl(), &copy).unwrap();
        let held = || d.metric_sum("nhiwatch_tls_holds_total", &["outcome=\"held\""]);
        let held_before = held();
        let status = Command::new("setsid")
            .args([
                "-w",
                "/usr/bin/python3",
                "-c",
                "import ctypes, sys; ctypes.CDLL(sys.argv[1])",
            ])
            .arg(&copy)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{status:?}");
        if held() <= held_before {
            missing.push(format!(
                "root's process mapping the new copy {} was not held",
                copy.display()
            ));
        }
        if missing.is_empty() {
            d.stop(); // a clean exit, only JSON on stdout
        }
        missing
    }
}

/// `setpriv` that runs the daemon as the deployments do: uid and gid [`DEPLOYED_UID`], no
/// supplementary groups, exactly `caps` as ambient (hence permitted and effective) capabilities
/// and bounding set, and no_new_privs.
fn start_as_deployed(caps: &BTreeSet<String>, config: &str) -> Result<Daemon, String> {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.to_lowercase()))
        .collect();
    let wrapper: Vec<String> = vec![
        "setpriv".into(),
        format!("--reuid={DEPLOYED_UID}"),
        format!("--regid={DEPLOYED_UID}"),
        "--clear-groups".into(),
        "--no-new-privs".into(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
        "--".into(),
    ];
    Daemon::try_start_as(&wrapper, Some(DEPLOYED_UID), config, &[])
}

/// tracefs as systemd mounts it at boot: mode 0700, root's.
fn mount_tracefs() {
    if !Path::new("/proc/self/mountinfo").exists()
        || !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.contains(" /sys/kernel/tracing ") && l.contains(" - tracefs "))
    {
        run_ok(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]));
    }
}

#[test]
fn the_daemon_works_with_exactly_the_deployed_capabilities_and_with_none_fewer() {
    assert_deployed_non_root();
    let caps = deployed_caps();
    let fx = Fixture::new();
    let short = fx.shortfalls(&caps, WAIT);
    assert!(
        short.is_empty(),
        "with the deployed capabilities {caps:?}:\n{}",
        short.join("\n")
    );
    // Minimal: without any one of them something is lost, so none is there for nothing.
    for cap in &caps {
        let mut fewer = caps.clone();
        fewer.remove(cap);
        let short = fx.shortfalls(&fewer, SHORT);
        assert!(
            !short.is_empty(),
            "CAP_{cap} is not needed: the daemon does everything without it"
        );
        eprintln!("without CAP_{cap}: {short:?}");
    }
}

/// Why CAP_SYS_ADMIN and not the finer CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN: with those the
/// kernel probes all work but the uprobe PMU refuses (perf_uprobe_event_init checks
/// capable(CAP_SYS_ADMIN)), so TLS plaintext is lost — and nothing else.
#[test]
fn without_cap_sys_admin_only_the_tls_uprobes_are_lost() {
    let caps = deployed_caps();
    assert!(caps.contains("SYS_ADMIN"));
    let fx = Fixture::new();
    let mut finer = caps.clone();
    finer.remove("SYS_ADMIN");
    finer.extend(set(&["BPF", "PERFMON", "NET_ADMIN"]));
    // The full wait: what works must show however slow the machine (what is lost, the TLS
    // uprobes, is known from the probe metrics without waiting).
    let short = fx.shortfalls(&finer, WAIT);
    assert!(
        !short.is_empty(),
        "TLS uprobes attached without CAP_SYS_ADMIN"
    );
    for s in &short {
        assert!(
            s.contains("tls/") || s.contains("TLS") || s.contains("tls_"),
            "with {finer:?} more than TLS is lost: {s}"
        );
    }
}

/// What the README said was enough (CAP_BPF + CAP_PERFMON, non-root): most sensors cannot
/// attach. The daemon must not say it is ready, must say in a metric which sensors are
/// missing and why, and its log must name the permission (not "tracefs not mounted": it is
/// mounted, mode 0700).
#[test]
fn non_root_with_only_cap_bpf_and_cap_perfmon_is_not_ready_and_names_the_cause() {
    mount_tracefs();
    let tmp = TempDir::new("nhiwatch-e2e-blind");
    let watch = [tmp.path().join("secret").display().to_string()];
    let d = start_as_deployed(&set(&["BPF", "PERFMON"]), &config_with(&watch, ""))
        .unwrap_or_else(|e| panic!("the daemon did not serve /readyz: {e}"));
    let (code, body) = d.readyz();
    assert_eq!(code, 503, "ready while blind: {body}");
    for sensor in ["files", "tls_openssl", "canary", "dns"] {
        assert!(
            body.contains(&format!("\n  {sensor}: permission: ")),
            "{sensor} not named with its cause:\n{body}"
        );
    }
    assert!(body.contains("CAP_DAC_READ_SEARCH"), "{body}");
    assert!(body.contains("CAP_SYS_ADMIN"), "{body}");
    assert!(
        body.contains("running as uid 65534 with capabilities cap_perfmon,cap_bpf"),
        "{body}"
    );
    // What did attach is not reported missing.
    assert!(
        !body.contains("  process:") && !body.contains("  tcp:"),
        "{body}"
    );
    let metrics = d.metrics();
    assert!(metrics.contains("\nnhiwatch_ready 0\n"), "{metrics}");
    for sensor in ["files", "tls_openssl", "tls_gnutls", "canary", "dns"] {
        let line =
            format!("nhiwatch_sensor_degraded{{sensor=\"{sensor}\",cause=\"permission\"}} 1");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    assert!(!metrics.contains("nhiwatch_sensor_degraded{sensor=\"process\""));
    let log = d.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("probe not attached") && l.contains("probe=files/enter_openat"))
        .unwrap_or_else(|| panic!("no log line for files/enter_openat:\n{log}"));
    assert!(line.contains("cause=permission"), "{line}");
    assert!(
        line.contains("tracefs is mounted at /sys/kernel/tracing"),
        "{line}"
    );
    assert!(!line.contains("not mounted"), "{line}");
    let line = log
        .lines()
        .find(|l| l.contains("probe not attached") && l.contains("probe=tls/SSL_write "))
        .unwrap_or_else(|| panic!("no log line for tls/SSL_write:\n{log}"));
    assert!(
        line.contains("cause=permission") && line.contains("needs CAP_SYS_ADMIN"),
        "{line}"
    );
    d.stop();
}

/// The shipped form: uid 65534 with the deployed capabilities as ambient ones. Every sensor
/// attaches, the daemon is ready, and a real HTTPS call is seen as an API call.
#[test]
fn non_root_with_the_deployed_capabilities_is_ready_and_sees_an_https_call() {
    assert_deployed_non_root();
    mount_tracefs();
    let nginx = Nginx::start("location = /h1-ready { return 200 'ok'; }");
    let tmp = TempDir::new("nhiwatch-e2e-nonroot");
    let watch = [tmp.path().join("secret").display().to_string()];
    let d = start_as_deployed(&deployed_caps(), &config_with(&watch, ""))
        .unwrap_or_else(|e| panic!("the daemon did not start: {e}"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:")
            && l.split_whitespace()
                .skip(1)
                .all(|u| u == DEPLOYED_UID.to_string())),
        "{status}"
    );
    let (code, body) = d.readyz();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let metrics = d.metrics();
    assert!(metrics.contains("\nnhiwatch_ready 1\n"), "{metrics}");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("nhiwatch_sensor_degraded{") && l.ends_with(" 1")),
        "{metrics}"
    );
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("nhiwatch_probe_attached{"))
    {
        assert!(l.ends_with(" 1"), "{l}");
    }
    let url = format!("https://localhost:{}/h1-ready", nginx.port);
    let curl = spawn_pid(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--cacert"])
            .arg(&nginx.cert)
            .arg(&url),
    );
    let call = d.wait_for("the api_call of curl", WAIT, |v| {
        kind_is(v, "api_call") && pid_is(v, curl)
    });
    assert_eq!(
        call["authority"],
        format!("localhost:{}", nginx.port).as_str(),
        "{call}"
    );
    assert_eq!(call["status"], 200, "{call}");
    d.stop();
}

/// The image's form: Kubernetes gives a non-root container no ambient capabilities, so the
/// Containerfile gives the binary the deployed set as file capabilities, permitted only, and
/// the daemon makes them effective. A copy of the binary given exactly the Containerfile's
/// `setcap`, run as uid 65534 with no ambient or inheritable capabilities, is ready; with a
/// bounding set lacking one of them it still starts and says what is missing.
#[test]
fn the_image_form_file_capabilities_permitted_only_work_for_a_non_root_user() {
    mount_tracefs();
    let containerfile = read("deploy/container/Containerfile");
    let setcap = containerfile
        .lines()
        .find_map(|l| {
            l.trim()
                .trim_start_matches("&& ")
                .trim_start_matches("RUN ")
                .strip_prefix("setcap ")
        })
        .expect("a setcap line in the Containerfile");
    let (spec, file) = setcap.split_once(' ').unwrap();
    assert_eq!(
        file.trim_end_matches(" \\").trim(),
        "/usr/local/bin/nhiwatch"
    );
    let (names, flags) = spec.split_once('+').unwrap();
    assert_eq!(
        flags, "p",
        "permitted only: an effective bit would fail the exec with fewer"
    );
    let caps: BTreeSet<String> = names
        .split(',')
        .map(|c| c.trim_start_matches("cap_").to_uppercase())
        .collect();
    assert_eq!(
        caps,
        deployed_caps(),
        "the image and the deployments disagree"
    );

    let tmp = TempDir::new("nhiwatch-e2e-fcaps");
    let bin = tmp.path().join("nhiwatch");
    std::fs::copy(nhiwatch_bin(), &bin).unwrap();
    run_ok(Command::new("setcap").arg(spec).arg(&bin));
    let watch = [tmp.path().join("secret").display().to_string()];
    let start = |bounding: &str| {
        let wrapper: Vec<String> = vec![
            "setpriv".into(),
            format!("--reuid={DEPLOYED_UID}"),
            format!("--regid={DEPLOYED_UID}"),
            "--clear-groups".into(),
            format!("--bounding-set={bounding}"),
            "--".into(),
            bin.display().to_string(),
        ];
        Daemon::try_start_binary(&wrapper, Some(DEPLOYED_UID), &config_with(&watch, ""))
            .unwrap_or_else(|e| panic!("the daemon did not serve /readyz: {e}"))
    };
    let d = start("+all");
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(eff, cap_mask(&caps), "{status}");
    let (code, body) = d.readyz();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    d.stop();

    let d = start("-all,+sys_admin,+dac_read_search");
    let (code, body) = d.readyz();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("needs CAP_SYS_PTRACE"), "{body}");
    d.stop();
}

/// `setpriv` as in [`start_as_deployed`], run in a mount namespace of its own where tracefs is
/// not mounted (the host's mount is untouched).
fn start_without_tracefs(caps: &BTreeSet<String>, config: &str) -> Result<Daemon, String> {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.to_lowercase()))
        .collect();
    let wrapper: Vec<String> = vec![
        "unshare".into(),
        "--mount".into(),
        "--propagation=private".into(),
        "sh".into(),
        "-c".into(),
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         exec \"$0\" \"$@\""
            .into(),
        "setpriv".into(),
        format!("--reuid={DEPLOYED_UID}"),
        format!("--regid={DEPLOYED_UID}"),
        "--clear-groups".into(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
        "--".into(),
    ];
    Daemon::try_start_as(&wrapper, Some(DEPLOYED_UID), config, &[])
}

/// tracefs not mounted: a non-root daemon with CAP_SYS_ADMIN mounts it (the mount call; mount(8)
/// refuses non-root users whatever their capabilities) and is ready; without CAP_SYS_ADMIN it
/// cannot, and says so — not mounted, and mounting needs CAP_SYS_ADMIN — instead of being ready.
#[test]
fn missing_tracefs_is_mounted_by_a_non_root_daemon_with_cap_sys_admin_and_named_without() {
    let tmp = TempDir::new("nhiwatch-e2e-notracefs");
    let watch = [tmp.path().join("secret").display().to_string()];
    let cfg = config_with(&watch, "");
    let d = start_without_tracefs(&deployed_caps(), &cfg)
        .unwrap_or_else(|e| panic!("the daemon did not serve /readyz: {e}"));
    let (code, body) = d.readyz();
    assert_eq!((code, body.as_str()), (200, "ready\n"), "{}", d.stderr());
    assert!(d.stderr().contains("mounted tracefs"), "{}", d.stderr());
    d.stop();

    let mut fewer = deployed_caps();
    fewer.remove("SYS_ADMIN");
    fewer.extend(set(&["BPF", "PERFMON", "NET_ADMIN"]));
    let d = start_without_tracefs(&fewer, &cfg)
        .unwrap_or_else(|e| panic!("the daemon did not serve /readyz: {e}"));
    let (code, body) = d.readyz();
    assert_eq!(code, 503, "{body}");
    let files = body
        .lines()
        .find(|l| l.trim_start().starts_with("files: "))
        .unwrap_or_else(|| panic!("files not named:\n{body}"));
    assert!(
        files.contains(
            "permission: tracefs is not mounted, and mounting it at /sys/kernel/tracing failed"
        ) && files.contains("needs CAP_SYS_ADMIN to mount it"),
        "{files}"
    );
    assert!(
        d.metrics()
            .contains("nhiwatch_sensor_degraded{sensor=\"files\",cause=\"permission\"} 1"),
        "{}",
        d.metrics()
    );
    d.stop();
}
