//! Load per placement unit — keys written by applied entries, reads served
//! here — for `tessera top` and rebalancing. Cumulative counters (readers
//! take two samples for a rate), keyed by the key's unit at the map's
//! default depth (`shardmap::map::DEFAULT_DEPTH`): the map's depth never
//! changes once it holds data. A leaf lock, taken for a moment per applied
//! entry and per read.

use crate::locks::Mutex;
use std::collections::HashMap;
use tessera_proto::mvccpb::Event;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub writes: u64,
    pub reads: u64,
}

pub struct UnitLoad {
    counts: Mutex<HashMap<Vec<u8>, Counts>>,
}

impl Default for UnitLoad {
    fn default() -> Self {
        UnitLoad { counts: Mutex::leaf("unit load", HashMap::new()) }
    }
}

fn unit(key: &[u8]) -> &[u8] {
    shardmap::placement_unit(key, shardmap::map::DEFAULT_DEPTH)
}

impl UnitLoad {
    /// An applied entry wrote these events.
    pub fn wrote(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut c = self.counts.lock();
        for e in events {
            if let Some(kv) = &e.kv {
                let u = unit(&kv.key);
                match c.get_mut(u) {
                    Some(n) => n.writes += 1,
                    None => {
                        c.insert(u.to_vec(), Counts { writes: 1, reads: 0 });
                    }
                }
            }
        }
    }

    /// A read starting at `key` was served here.
    pub fn read(&self, key: &[u8]) {
        let u = unit(key);
        let mut c = self.counts.lock();
        match c.get_mut(u) {
            Some(n) => n.reads += 1,
            None => {
                c.insert(u.to_vec(), Counts { writes: 0, reads: 1 });
            }
        }
    }

    pub fn counts(&self) -> HashMap<Vec<u8>, Counts> {
        self.counts.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::mvccpb::KeyValue;

    #[test]
    fn counts_go_to_the_keys_unit() {
        let l = UnitLoad::default();
        let ev = |k: &str| Event { kv: Some(KeyValue { key: k.into(), ..Default::default() }), ..Default::default() };
        l.wrote(&[ev("/registry/pods/ns/a"), ev("/registry/pods/ns/b"), ev("/registry/leases/x")]);
        l.read(b"/registry/pods/ns/a");
        let c = l.counts();
        assert_eq!(c[&b"/registry/pods/".to_vec()], Counts { writes: 2, reads: 1 });
        assert_eq!(c[&b"/registry/leases/".to_vec()], Counts { writes: 1, reads: 0 });
    }
}
