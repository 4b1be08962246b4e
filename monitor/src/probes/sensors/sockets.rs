//! Sockets sensor (sockets.bpf.c): cleartext HTTP/1 and h2c on TCP connections from the read/write syscall tracepoints, and its `sensors.sockets` settings (which destinations to follow).

use std::net::IpAddr;

use aya::maps::{lpm_trie::Key, HashMap as BpfHashMap, LpmTrie, MapData};
use serde::Deserialize;

use super::{Attach, Hook, Program, Sensor};
use crate::probes::LoadError;

macro_rules! tp {
    ($name:literal, $tp:literal) => {
        Program {
            name: $name,
            hook: Hook::Tracepoint("syscalls", $tp),
        }
    };
}

pub const SENSOR: Sensor = Sensor {
    name: "sockets",
    group: "sockets",
    programs: &[
        tp!("sock_enter_connect", "sys_enter_connect"),
        tp!("sock_exit_connect", "sys_exit_connect"),
        tp!("sock_exit_accept", "sys_exit_accept"),
        tp!("sock_exit_accept4", "sys_exit_accept4"),
        tp!("sock_enter_close", "sys_enter_close"),
        tp!("sock_enter_dup2", "sys_enter_dup2"),
        tp!("sock_enter_dup3", "sys_enter_dup3"),
        tp!("sock_enter_write", "sys_enter_write"),
        tp!("sock_exit_write", "sys_exit_write"),
        tp!("sock_enter_sendto", "sys_enter_sendto"),
        tp!("sock_exit_sendto", "sys_exit_sendto"),
        tp!("sock_enter_writev", "sys_enter_writev"),
        tp!("sock_exit_writev", "sys_exit_writev"),
        tp!("sock_enter_sendmsg", "sys_enter_sendmsg"),
        tp!("sock_exit_sendmsg", "sys_exit_sendmsg"),
        tp!("sock_enter_read", "sys_enter_read"),
        tp!("sock_exit_read", "sys_exit_read"),
        tp!("sock_enter_recvfrom", "sys_enter_recvfrom"),
        tp!("sock_exit_recvfrom", "sys_exit_recvfrom"),
        tp!("sock_enter_readv", "sys_enter_readv"),
        tp!("sock_exit_readv", "sys_exit_readv"),
        tp!("sock_enter_recvmsg", "sys_enter_recvmsg"),
        tp!("sock_exit_recvmsg", "sys_exit_recvmsg"),
    ],
    attach,
    observes: true,
    // accept(2) and dup2(2) are legacy syscalls that arm64 lacks (accept4 and dup3 remain).
    absent_elsewhere: &["sock_exit_accept", "sock_enter_dup2"],
};

/// Rule values of the kernel maps (`SOCK_RULE_*` in sockets.bpf.c).
const RULE_FOLLOW: u8 = 1;
const RULE_IGNORE: u8 = 2;

/// Most ports and CIDRs each list may hold (the kernel maps' sizes are 1024 per kind).
pub const MAX_RULES: usize = 256;

/// `sensors.sockets`: whether cleartext HTTP is followed on TCP sockets, and to which destinations.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SocketsConfig {
    pub enabled: bool,
    /// Destination ports to follow; empty: every port not ignored.
    pub follow_ports: Vec<u16>,
    pub ignore_ports: Vec<u16>,
    /// Destination networks (`10.0.0.0/8`, `fd00::/8`, or one address) to follow; empty: all.
    pub follow_cidrs: Vec<String>,
    pub ignore_cidrs: Vec<String>,
}

impl Default for SocketsConfig {
    fn default() -> Self {
        SocketsConfig {
            enabled: true,
            follow_ports: Vec::new(),
            ignore_ports: Vec::new(),
            follow_cidrs: Vec::new(),
            ignore_cidrs: Vec::new(),
        }
    }
}

/// A CIDR as the kernel's LPM key: IPv6, IPv4 mapped into `::ffff:0:0/96`.
fn parse_cidr(s: &str) -> Result<(u32, [u8; 16]), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
    let (bytes, max, base) = match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 32, 96),
        IpAddr::V6(v6) => (v6.octets(), 128, 0),
    };
    let len = match len {
        Some(l) => l
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        None => max,
    };
    Ok((base + len, bytes))
}

impl SocketsConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, ports) in [
            ("follow_ports", &self.follow_ports),
            ("ignore_ports", &self.ignore_ports),
        ] {
            crate::bounds::count(
                &format!("sensors.sockets.{name} (entries)"),
                ports.len(),
                0,
                MAX_RULES,
            )?;
            if ports.contains(&0) {
                return Err(format!(
                    "sensors.sockets.{name}: port 0 is not a destination"
                ));
            }
        }
        for (name, cidrs) in [
            ("follow_cidrs", &self.follow_cidrs),
            ("ignore_cidrs", &self.ignore_cidrs),
        ] {
            crate::bounds::count(
                &format!("sensors.sockets.{name} (entries)"),
                cidrs.len(),
                0,
                MAX_RULES,
            )?;
            for c in cidrs.iter() {
                parse_cidr(c).map_err(|e| format!("sensors.sockets.{name}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Whether follow lists restrict what is followed (a kernel global each).
    pub fn follow_only(&self) -> (u8, u8) {
        (
            u8::from(!self.follow_ports.is_empty()),
            u8::from(!self.follow_cidrs.is_empty()),
        )
    }
}

/// Writes the destination rules into the kernel maps. Ignore wins over follow for the same key.
fn program_rules(a: &mut Attach<'_>) -> Result<(), String> {
    let cfg = &a.cfg.sockets;
    {
        let map = a
            .bpf
            .map_mut("sock_port_rules")
            .ok_or("map sock_port_rules missing")?;
        let mut ports: BpfHashMap<&mut MapData, u16, u8> =
            BpfHashMap::try_from(map).map_err(|e| e.to_string())?;
        for (list, rule) in [
            (&cfg.follow_ports, RULE_FOLLOW),
            (&cfg.ignore_ports, RULE_IGNORE),
        ] {
            for p in list {
                ports.insert(p, rule, 0).map_err(|e| e.to_string())?;
            }
        }
    }
    let map = a
        .bpf
        .map_mut("sock_cidr_rules")
        .ok_or("map sock_cidr_rules missing")?;
    let mut cidrs: LpmTrie<&mut MapData, [u8; 16], u8> =
        LpmTrie::try_from(map).map_err(|e| e.to_string())?;
    for (list, rule) in [
        (&cfg.follow_cidrs, RULE_FOLLOW),
        (&cfg.ignore_cidrs, RULE_IGNORE),
    ] {
        for c in list {
            let (len, addr) = parse_cidr(c)?;
            cidrs
                .insert(&Key::new(len, addr), rule, 0)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn attach(a: &mut Attach<'_>) -> Result<(), LoadError> {
    if !a.cfg.sockets.enabled {
        return Ok(());
    }
    if let Err(e) = program_rules(a) {
        // Validated settings cannot fail here; if the maps do, follow nothing rather than
        // everything the user asked to ignore.
        a.record(
            SENSOR.group,
            "rules",
            "kernel",
            Err(crate::probes::cause::ProbeFailure::new(
                crate::probes::cause::Cause::Other,
                format!("programming sensors.sockets rules: {e}"),
            )),
        );
        return Ok(());
    }
    a.tracepoints(&SENSOR);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_become_mapped_lpm_keys_and_bad_ones_are_named() {
        assert_eq!(
            parse_cidr("10.0.0.0/8").unwrap(),
            (
                104,
                "10.0.0.0"
                    .parse::<std::net::Ipv4Addr>()
                    .unwrap()
                    .to_ipv6_mapped()
                    .octets()
            )
        );
        assert_eq!(parse_cidr("::1").unwrap().0, 128);
        assert_eq!(parse_cidr("127.0.0.1").unwrap().0, 128);
        let bad = |f: fn(&mut SocketsConfig)| {
            let mut c = SocketsConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.follow_cidrs = vec!["10.0.0.0/33".into()])
            .contains("sensors.sockets.follow_cidrs"));
        assert!(bad(|c| c.ignore_cidrs = vec!["fhir.local".into()])
            .contains("sensors.sockets.ignore_cidrs"));
        assert!(bad(|c| c.ignore_ports = vec![0]).contains("sensors.sockets.ignore_ports"));
        assert!(
            bad(|c| c.follow_ports = (1..=300).collect()).contains("sensors.sockets.follow_ports")
        );
        assert_eq!(SocketsConfig::default().validate(), Ok(()));
    }
}
