//! Flow table: kernel socket keys from TCP connect/close → stable flow ids and 4-tuples.

use std::{collections::HashMap, net::SocketAddr};

use crate::events::Tcp;

/// One outbound TCP connection as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Daemon-assigned id; the kernel socket address is never shown.
    pub id: u64,
    pub pid: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub start_ns: u64,
}

/// Bounded map of open outbound flows keyed by kernel socket address.
#[derive(Debug)]
pub struct FlowTable {
    by_sock: HashMap<u64, Flow>,
    next_id: u64,
    capacity: usize,
    evicted: u64,
}

impl FlowTable {
    pub fn new(capacity: usize) -> Self {
        FlowTable {
            by_sock: HashMap::new(),
            next_id: 1,
            capacity,
            evicted: 0,
        }
    }

    /// Records an established connection and returns its flow.
    pub fn connect(&mut self, t: &Tcp) -> Flow {
        if self.by_sock.len() >= self.capacity && !self.by_sock.contains_key(&t.sock) {
            // Oldest flow goes: a socket whose close we missed must not pin memory.
            if let Some(k) = self
                .by_sock
                .iter()
                .min_by_key(|(_, f)| f.start_ns)
                .map(|(k, _)| *k)
            {
                self.by_sock.remove(&k);
                self.evicted += 1;
            }
        }
        let flow = Flow {
            id: self.next_id,
            pid: t.hdr.pid,
            local: SocketAddr::new(t.saddr, t.sport),
            remote: SocketAddr::new(t.daddr, t.dport),
            start_ns: t.start_ns,
        };
        self.next_id += 1;
        self.by_sock.insert(t.sock, flow);
        flow
    }

    /// Ends a flow; a close for a connection that never established (or that
    /// began before the daemon) still gets an id so it can be reported.
    pub fn close(&mut self, t: &Tcp) -> Flow {
        match self.by_sock.remove(&t.sock) {
            Some(f) => f,
            None => {
                let f = Flow {
                    id: self.next_id,
                    pid: t.hdr.pid,
                    local: SocketAddr::new(t.saddr, t.sport),
                    remote: SocketAddr::new(t.daddr, t.dport),
                    start_ns: t.start_ns,
                };
                self.next_id += 1;
                f
            }
        }
    }

    pub fn by_sock(&self, sock: u64) -> Option<&Flow> {
        if sock == 0 {
            return None;
        }
        self.by_sock.get(&sock)
    }

    pub fn len(&self) -> usize {
        self.by_sock.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sock.is_empty()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Header;
    use std::net::{IpAddr, Ipv4Addr};

    fn tcp(sock: u64, start: u64) -> Tcp {
        Tcp {
            hdr: Header {
                ktime_ns: start,
                pid: 5,
                tid: 5,
                cgroup_id: 1,
            },
            sock,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 50000,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 443,
            bytes_sent: 0,
            bytes_received: 0,
            start_ns: start,
            failed: false,
        }
    }

    #[test]
    fn connect_then_close_keeps_the_id() {
        let mut f = FlowTable::new(10);
        let a = f.connect(&tcp(0xffff_0001, 1));
        assert_eq!(f.by_sock(0xffff_0001).unwrap().id, a.id);
        let c = f.close(&tcp(0xffff_0001, 1));
        assert_eq!(c.id, a.id);
        assert!(f.by_sock(0xffff_0001).is_none());
    }

    #[test]
    fn bounded() {
        let mut f = FlowTable::new(3);
        for i in 0..10 {
            f.connect(&tcp(100 + i, i));
        }
        assert_eq!(f.len(), 3);
        assert_eq!(f.evicted(), 7);
        assert!(f.by_sock(109).is_some());
    }
}
