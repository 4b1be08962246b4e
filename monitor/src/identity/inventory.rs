//! Identity inventory: every identity seen, when, and what it touched (bounded), for contracts and `nhiwatch inventory`.

use std::collections::{BTreeSet, HashMap};

use crate::events::EventKind;

/// Distinct files or destinations remembered per identity.
const TOUCHED_MAX: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryEntry {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub events: [u64; EventKind::ALL.len()],
    pub files: BTreeSet<String>,
    pub destinations: BTreeSet<String>,
    /// Files or destinations not remembered because the sets were full.
    pub overflow: u64,
}

pub struct Inventory {
    entries: HashMap<String, InventoryEntry>,
    capacity: usize,
    pub evictions: u64,
}

impl Inventory {
    pub fn new(capacity: usize) -> Inventory {
        Inventory {
            entries: HashMap::new(),
            capacity,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&InventoryEntry> {
        self.entries.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &InventoryEntry)> {
        self.entries.iter()
    }

    /// Records one event; `touched` is a file path or a destination.
    pub fn record(
        &mut self,
        id: &str,
        kind: EventKind,
        ktime_ns: u64,
        file: Option<&str>,
        dest: Option<&str>,
    ) {
        if !self.entries.contains_key(id) {
            if self.entries.len() >= self.capacity {
                // The identity quiet for longest goes.
                if let Some(k) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_seen_ns)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&k);
                    self.evictions += 1;
                }
            }
            self.entries.insert(
                id.to_owned(),
                InventoryEntry {
                    first_seen_ns: ktime_ns,
                    ..Default::default()
                },
            );
        }
        let e = self.entries.get_mut(id).expect("inserted above");
        e.last_seen_ns = e.last_seen_ns.max(ktime_ns);
        e.events[kind as usize] += 1;
        for (set, item) in [(&mut e.files, file), (&mut e.destinations, dest)] {
            if let Some(item) = item {
                if !set.contains(item) {
                    if set.len() < TOUCHED_MAX {
                        set.insert(item.to_owned());
                    } else {
                        e.overflow += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_last_and_touched() {
        let mut inv = Inventory::new(2);
        inv.record("a", EventKind::FileOpen, 10, Some("/run/secrets/x"), None);
        inv.record("a", EventKind::TcpConnect, 20, None, Some("10.0.0.1:443"));
        let e = inv.get("a").unwrap();
        assert_eq!((e.first_seen_ns, e.last_seen_ns), (10, 20));
        assert!(e.files.contains("/run/secrets/x"));
        assert_eq!(e.events[EventKind::TcpConnect as usize], 1);
        inv.record("b", EventKind::Exec, 30, None, None);
        inv.record("c", EventKind::Exec, 40, None, None);
        assert_eq!(inv.len(), 2);
        assert!(inv.get("a").is_none(), "quietest evicted");
        assert_eq!(inv.evictions, 1);
    }
}
