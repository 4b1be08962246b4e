//! What the two TLS sensors share: the `sensors.tls` settings, loading their uprobes, and attaching them to a discovered library file.

use std::path::{Path, PathBuf};

use aya::{
    programs::{
        uprobe::{UProbeLink, UProbeScope},
        UProbe,
    },
    Ebpf,
};
use serde::Deserialize;

use super::{program, Attach, Sensor, NEEDS_UPROBE};
use crate::probes::{
    abi::NW_TLS_CAPTURE_MAX,
    cause::{Cause, ProbeFailure},
    tls_libs::{TlsDiscovery, TlsFamily, TlsTarget},
    ProbeStatus,
};

/// `sensors.tls`: how much plaintext to capture and where to look for libraries.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub capture_bytes: u32,
    pub library_dirs: Vec<PathBuf>,
    pub extra_targets: Vec<PathBuf>,
    /// Stop a process that maps a libssl/libgnutls file not probed yet until its uprobes are
    /// attached (at most [`crate::probes::tls_hold::HOLD_DEADLINE`]), so its first call is seen.
    pub hold_new_libraries: bool,
    /// Which TLS stacks are probed (all by default): a deployment, or a benchmark isolating one
    /// sensor, can leave out OpenSSL, GnuTLS or Go programs.
    pub stacks: Vec<TlsFamily>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            capture_bytes: 4096,
            library_dirs: Vec::new(),
            extra_targets: Vec::new(),
            hold_new_libraries: true,
            stacks: vec![TlsFamily::OpenSsl, TlsFamily::GnuTls, TlsFamily::Go],
        }
    }
}

impl TlsConfig {
    /// Whether processes are held at a new libssl/libgnutls: only when asked for and a
    /// library stack is probed (holding for a file nothing will attach to only slows them).
    pub fn holds(&self) -> bool {
        self.hold_new_libraries
            && self
                .stacks
                .iter()
                .any(|s| matches!(s, TlsFamily::OpenSsl | TlsFamily::GnuTls))
    }

    pub fn validate(&self) -> Result<(), String> {
        let max = NW_TLS_CAPTURE_MAX;
        if self.capture_bytes > max {
            return Err(format!(
                "sensors.tls.capture_bytes must be at most {max}, got {}",
                self.capture_bytes
            ));
        }
        Ok(())
    }
}

/// A TLS sensor's attach step at start: its programs are loaded once; each library found
/// (now or later) gets them attached by [`attach_target`].
pub(super) fn load(a: &mut Attach<'_>, sensor: &Sensor) {
    a.load_uprobes(sensor);
}

/// Libraries in the configured directories, then the configured extra files; an extra file
/// that is not a TLS library gets a failed status.
pub(crate) fn initial_targets(
    discovery: &mut TlsDiscovery,
    cfg: &TlsConfig,
    statuses: &mut Vec<ProbeStatus>,
) -> Vec<TlsTarget> {
    let mut targets = discovery.scan_dirs(&cfg.library_dirs);
    for extra in &cfg.extra_targets {
        match discovery.consider(extra) {
            Some(t) => {
                // Named by the operator: probed from start to stop, not only while it runs.
                discovery.pin_go(t.key);
                targets.push(t);
            }
            None => statuses.push(ProbeStatus {
                probe: "tls/extra_target".into(),
                target: extra.display().to_string(),
                error: Some(ProbeFailure::new(
                    Cause::MissingFile,
                    "file missing, or it exports no SSL_write/gnutls_record_send and is not a Go program nhiwatch covers (see the log for why)",
                )),
            }),
        }
    }
    targets
}

/// Attaches the family's programs to one library file; records each symbol's status and
/// keeps each attachment in `links` (released by [`crate::probes::handoff`]). True if any plaintext function was
/// attached.
pub(crate) fn attach_target(
    bpf: &mut Ebpf,
    statuses: &mut Vec<ProbeStatus>,
    links: &mut Vec<UProbeLink>,
    t: &TlsTarget,
) -> bool {
    if let Some(go) = &t.go {
        return super::tls_go::attach_target(bpf, statuses, links, t, go);
    }
    let group = t.family.sensor().group;
    let target = t.path.display().to_string();
    let mut any = false;
    let path = t.attach_path();
    for (sym, entry, ret) in t.family.calls() {
        if !t.symbols.contains(&sym) {
            continue;
        }
        let r = attach_uprobe(bpf, links, entry, sym, &path)
            .and_then(|()| attach_uprobe(bpf, links, ret, sym, &path));
        any |= r.is_ok();
        statuses.push(ProbeStatus {
            probe: format!("{group}/{sym}"),
            target: target.clone(),
            error: r.err(),
        });
    }
    if let Some((sym, prog)) = t.family.server_name() {
        if any && t.symbols.contains(&sym) {
            let r = attach_uprobe(bpf, links, prog, sym, &path);
            statuses.push(ProbeStatus {
                probe: format!("{group}/{sym}"),
                target: target.clone(),
                error: r.err(),
            });
        }
    }
    any
}

/// The link is taken out of the program so that stopping can hand every uprobe to the kernel
/// ([`crate::probes::handoff`]) instead of detaching one after another when the object is dropped.
fn attach_uprobe(
    bpf: &mut Ebpf,
    links: &mut Vec<UProbeLink>,
    prog: &str,
    symbol: &str,
    path: &Path,
) -> Result<(), ProbeFailure> {
    let p: &mut UProbe = program(bpf, prog)?;
    let id = p
        .attach(symbol, path, UProbeScope::AllProcesses)
        .map_err(|e| {
            ProbeFailure::from_error(&format!("attach uprobe {symbol}"), &e, NEEDS_UPROBE)
        })?;
    // Cannot fail for an id just returned; if it did, the program keeps the link and
    // detaches it when the object is dropped, as before.
    if let Ok(link) = p.take_link(id) {
        links.push(link);
    }
    Ok(())
}
