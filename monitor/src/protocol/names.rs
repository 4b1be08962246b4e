//! DNS answers and TLS SNI → a destination name per (cgroup, IP) or (pid, TLS session), in bounded tables with expiry.
//
// Each table keeps at most `capacity` entries. When full, the entry written
// longest ago goes (a write-ordered queue with lazy deletion: LRU on writes,
// O(1) amortised, no scan). Names are interned as `Arc<str>` because many
// addresses share one name.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    net::IpAddr,
    sync::Arc,
};

use super::dns::{DnsAnswer, MAX_NAME_LEN};

/// A DNS mapping lives at least this long, whatever its TTL: clients keep using
/// an address after a short TTL ran out (connection reuse, their own caches).
pub const MIN_TTL_NS: u64 = 30 * 1_000_000_000;
/// And at most this long, so a stale answer does not name an address forever.
pub const MAX_TTL_NS: u64 = 3600 * 1_000_000_000;

/// A map bounded by evicting the least recently written key.
struct Bounded<K, V> {
    map: HashMap<K, (V, u64)>,
    /// (key, stamp) in write order; entries whose stamp no longer matches the
    /// map's are stale and skipped.
    order: VecDeque<(K, u64)>,
    capacity: usize,
    next_stamp: u64,
    evictions: u64,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            next_stamp: 0,
            evictions: 0,
        }
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    fn insert(&mut self, k: K, v: V) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if self.map.insert(k.clone(), (v, stamp)).is_none() {
            while self.map.len() > self.capacity {
                let Some((old, s)) = self.order.pop_front() else {
                    break;
                };
                if self.map.get(&old).is_some_and(|(_, cur)| *cur == s) {
                    self.map.remove(&old);
                    self.evictions += 1;
                }
            }
        }
        self.order.push_back((k, stamp));
        // Rewrites and removals leave stale queue entries: compact before they pile up.
        if self.order.len() > 2 * self.capacity + 16 {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|(_, cur)| cur == s));
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.map.retain(|k, (v, _)| keep(k, v));
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

struct Named {
    name: Arc<str>,
    expires_ns: u64,
}

/// Where flows get their destination name when the plaintext named no host.
pub struct DestinationNames {
    by_cgroup: Bounded<(u64, IpAddr), Named>,
    by_ip: Bounded<IpAddr, Named>,
    sni: Bounded<(u32, u64), Arc<str>>,
    /// Sessions per pid, so that forgetting a process does not scan the table.
    sni_sessions: HashMap<u32, Vec<u64>>,
}

impl DestinationNames {
    /// Each of the three tables (per cgroup, host-wide, SNI) holds at most `capacity` entries.
    pub fn new(capacity: usize) -> DestinationNames {
        DestinationNames {
            by_cgroup: Bounded::new(capacity),
            by_ip: Bounded::new(capacity),
            sni: Bounded::new(capacity),
            sni_sessions: HashMap::new(),
        }
    }

    /// Remembers what a process in `cgroup_id` learnt from a DNS response
    /// received at `now_ns` (boot clock). `cgroup_id` 0 (unknown) feeds only
    /// the host-wide table.
    pub fn record_dns(&mut self, cgroup_id: u64, now_ns: u64, answer: &DnsAnswer) {
        if answer.addrs.is_empty() {
            return;
        }
        let name: Arc<str> = Arc::from(answer.query.as_str());
        for a in &answer.addrs {
            let ttl_ns = (u64::from(a.ttl) * 1_000_000_000).clamp(MIN_TTL_NS, MAX_TTL_NS);
            let expires_ns = now_ns.saturating_add(ttl_ns);
            if cgroup_id != 0 {
                self.by_cgroup.insert(
                    (cgroup_id, a.ip),
                    Named {
                        name: name.clone(),
                        expires_ns,
                    },
                );
            }
            self.by_ip.insert(
                a.ip,
                Named {
                    name: name.clone(),
                    expires_ns,
                },
            );
        }
    }

    /// The name a process in `cgroup_id` resolved to `ip`, else the name anyone
    /// on the host last resolved to it; `None` once expired.
    pub fn resolve(&self, cgroup_id: u64, ip: IpAddr, now_ns: u64) -> Option<&str> {
        fn live(n: &Named, now_ns: u64) -> Option<&str> {
            (n.expires_ns > now_ns).then_some(&*n.name)
        }
        self.by_cgroup
            .get(&(cgroup_id, ip))
            .and_then(|n| live(n, now_ns))
            .or_else(|| self.by_ip.get(&ip).and_then(|n| live(n, now_ns)))
    }

    /// Remembers the server name a TLS client set on a session. Returns false
    /// (and keeps nothing) when the name is not a hostname: SNI carries DNS
    /// names only, never IP literals (RFC 6066).
    pub fn record_sni(&mut self, pid: u32, session: u64, name: &str) -> bool {
        let Some(name) = sni_hostname(name) else {
            return false;
        };
        let key = (pid, session);
        if self.sni.get(&key).is_none() {
            let sessions = self.sni_sessions.entry(pid).or_default();
            if !sessions.contains(&session) {
                sessions.push(session);
            }
        }
        self.sni.insert(key, Arc::from(name));
        // Evictions leave pids in the side index: drop those with no live session.
        if self.sni_sessions.len() > 2 * self.sni.capacity + 16 {
            let sni = &self.sni;
            self.sni_sessions.retain(|pid, sessions| {
                sessions.retain(|s| sni.get(&(*pid, *s)).is_some());
                !sessions.is_empty()
            });
        }
        true
    }

    /// The SNI name a process set on a TLS session.
    pub fn sni(&self, pid: u32, session: u64) -> Option<&str> {
        self.sni.get(&(pid, session)).map(|n| &**n)
    }

    /// A process exited: its session addresses may be reused by the next one.
    pub fn forget_pid(&mut self, pid: u32) {
        if let Some(sessions) = self.sni_sessions.remove(&pid) {
            for s in sessions {
                self.sni.map.remove(&(pid, s));
            }
        }
    }

    /// Drops expired DNS mappings (lookups already ignore them; this frees the memory).
    pub fn expire(&mut self, now_ns: u64) {
        self.by_cgroup.retain(|_, n| n.expires_ns > now_ns);
        self.by_ip.retain(|_, n| n.expires_ns > now_ns);
    }

    /// Entries pushed out by the capacity bound, all tables together.
    pub fn evictions(&self) -> u64 {
        self.by_cgroup.evictions + self.by_ip.evictions + self.sni.evictions
    }

    /// Entries held: (per cgroup, host-wide, SNI).
    pub fn len(&self) -> (usize, usize, usize) {
        (self.by_cgroup.len(), self.by_ip.len(), self.sni.len())
    }
}

/// `name` lowercased without a trailing dot if it is a DNS hostname and not an IP literal.
fn sni_hostname(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.parse::<IpAddr>().is_ok() {
        return None;
    }
    let ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    ok.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::dns::ResolvedAddr;

    const S: u64 = 1_000_000_000;

    fn answer(query: &str, addrs: &[(&str, u32)]) -> DnsAnswer {
        DnsAnswer {
            query: query.into(),
            addrs: addrs
                .iter()
                .map(|(ip, ttl)| ResolvedAddr {
                    ip: ip.parse().unwrap(),
                    ttl: *ttl,
                })
                .collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cgroup_first_then_host_wide() {
        let mut n = DestinationNames::new(16);
        n.record_dns(7, 0, &answer("api.openai.com", &[("10.0.0.1", 300)]));
        n.record_dns(8, 0, &answer("other.example", &[("10.0.0.1", 300)]));
        assert_eq!(n.resolve(7, ip("10.0.0.1"), S), Some("api.openai.com"));
        assert_eq!(n.resolve(8, ip("10.0.0.1"), S), Some("other.example"));
        // a cgroup that never resolved it gets the host-wide (latest) name
        assert_eq!(n.resolve(9, ip("10.0.0.1"), S), Some("other.example"));
        assert_eq!(n.resolve(7, ip("10.0.0.2"), S), None);
    }

    #[test]
    fn unknown_cgroup_feeds_host_wide_only() {
        let mut n = DestinationNames::new(16);
        n.record_dns(0, 0, &answer("x.example", &[("2001:db8::1", 300)]));
        assert_eq!(n.len(), (0, 1, 0));
        assert_eq!(n.resolve(5, ip("2001:db8::1"), S), Some("x.example"));
    }

    #[test]
    fn ttl_is_clamped() {
        let mut n = DestinationNames::new(16);
        n.record_dns(
            1,
            100 * S,
            &answer("short.example", &[("10.0.0.1", 0), ("10.0.0.2", 100)]),
        );
        n.record_dns(1, 100 * S, &answer("long.example", &[("10.0.0.3", 86400)]));
        // TTL 0 still lives 30 s
        assert_eq!(n.resolve(1, ip("10.0.0.1"), 129 * S), Some("short.example"));
        assert_eq!(n.resolve(1, ip("10.0.0.1"), 130 * S), None);
        // TTL 100 lives 100 s
        assert_eq!(n.resolve(1, ip("10.0.0.2"), 199 * S), Some("short.example"));
        assert_eq!(n.resolve(1, ip("10.0.0.2"), 200 * S), None);
        // a day is cut to an hour
        assert_eq!(n.resolve(1, ip("10.0.0.3"), 3699 * S), Some("long.example"));
        assert_eq!(n.resolve(1, ip("10.0.0.3"), 3700 * S), None);
        n.expire(3700 * S);
        assert_eq!(n.len(), (0, 0, 0));
    }

    #[test]
    fn expired_cgroup_entry_falls_back_to_a_live_host_entry() {
        let mut n = DestinationNames::new(16);
        n.record_dns(1, 0, &answer("old.example", &[("10.0.0.1", 30)]));
        n.record_dns(2, 20 * S, &answer("new.example", &[("10.0.0.1", 300)]));
        assert_eq!(n.resolve(1, ip("10.0.0.1"), 40 * S), Some("new.example"));
    }

    #[test]
    fn capacity_is_enforced_oldest_write_first() {
        let mut n = DestinationNames::new(3);
        for i in 0..5u8 {
            let a = format!("10.0.0.{i}");
            n.record_dns(1, 0, &answer(&format!("h{i}.example"), &[(&a, 300)]));
        }
        assert_eq!(n.len(), (3, 3, 0));
        assert_eq!(n.evictions(), 4); // two per table
        assert_eq!(n.resolve(1, ip("10.0.0.0"), S), None);
        assert_eq!(n.resolve(1, ip("10.0.0.4"), S), Some("h4.example"));
        // rewriting a key refreshes it: 10.0.0.2 survives the next insert, 10.0.0.3 doesn't
        n.record_dns(1, 0, &answer("h2.example", &[("10.0.0.2", 300)]));
        n.record_dns(1, 0, &answer("h5.example", &[("10.0.0.5", 300)]));
        assert_eq!(n.resolve(1, ip("10.0.0.2"), S), Some("h2.example"));
        assert_eq!(n.resolve(1, ip("10.0.0.3"), S), None);
    }

    #[test]
    fn rewrites_do_not_grow_memory() {
        let mut n = DestinationNames::new(4);
        for _ in 0..10_000 {
            n.record_dns(1, 0, &answer("same.example", &[("10.0.0.1", 300)]));
            n.record_sni(42, 0xabc, "same.example");
        }
        assert!(n.by_cgroup.order.len() <= 2 * 4 + 16);
        assert!(n.sni.order.len() <= 2 * 4 + 16);
        assert_eq!(n.evictions(), 0);
    }

    #[test]
    fn sni_is_validated_and_lowercased() {
        let mut n = DestinationNames::new(16);
        assert!(n.record_sni(42, 0x1000, "API.Example.COM."));
        assert_eq!(n.sni(42, 0x1000), Some("api.example.com"));
        assert!(!n.record_sni(42, 0x2000, "127.0.0.1"));
        assert!(!n.record_sni(42, 0x2000, "::1"));
        assert!(!n.record_sni(42, 0x2000, "evil\nname"));
        assert!(!n.record_sni(42, 0x2000, "a..b"));
        assert!(!n.record_sni(42, 0x2000, ""));
        assert!(!n.record_sni(42, 0x2000, &"a".repeat(64)));
        assert!(!n.record_sni(42, 0x2000, &["abc"; 70].join(".")));
        assert_eq!(n.sni(42, 0x2000), None);
        assert_eq!(n.sni(43, 0x1000), None, "keyed by pid too");
    }

    #[test]
    fn forget_pid_drops_only_that_process() {
        let mut n = DestinationNames::new(16);
        n.record_sni(42, 1, "a.example");
        n.record_sni(42, 2, "b.example");
        n.record_sni(43, 1, "c.example");
        n.forget_pid(42);
        assert_eq!(n.sni(42, 1), None);
        assert_eq!(n.sni(42, 2), None);
        assert_eq!(n.sni(43, 1), Some("c.example"));
        // the same session address in a new process with the same pid starts clean
        n.record_sni(42, 1, "d.example");
        assert_eq!(n.sni(42, 1), Some("d.example"));
        assert_eq!(n.len().2, 2);
    }

    #[test]
    fn sni_side_index_stays_bounded() {
        let mut n = DestinationNames::new(8);
        for pid in 0..10_000u32 {
            n.record_sni(pid, 1, "x.example");
        }
        assert_eq!(n.len().2, 8);
        assert!(n.sni_sessions.len() <= 2 * 8 + 16);
        assert_eq!(n.sni(9_999, 1), Some("x.example"));
    }
}
