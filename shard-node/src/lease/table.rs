//! The lease table: replicated state, changed only by applied raft entries
//! (grants, revokes, checkpoints) and kept under the group's state lock.
//!
//! Invariants: `leases` equals what the applied log says, and each lease's
//! `keys` are exactly the live keys attached to it. When a lease expires is
//! not replicated: see `liveness.rs`.

use crate::engine::keys::{decode_i64, decode_pair, GroupKeys};
use crate::engine::{Engine, WriteBatch};
use crate::error::Result;
use std::collections::{BTreeMap, BTreeSet};

/// etcd's largest TTL (seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    /// Remaining TTL as last checkpointed through raft; 0 = none.
    pub remaining_ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

pub struct LeaseTable {
    keys: GroupKeys,
    leases: BTreeMap<i64, Lease>,
}

fn encode(l: &Lease) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&l.ttl.to_be_bytes());
    v.extend_from_slice(&l.remaining_ttl.to_be_bytes());
    v
}

impl LeaseTable {
    pub fn new(keys: GroupKeys) -> Self {
        Self { keys, leases: BTreeMap::new() }
    }

    /// Reloads the table; key attachments come from the store.
    pub fn reload(&mut self, engine: &dyn Engine, attached: impl Iterator<Item = (Vec<u8>, i64)>) -> Result<()> {
        self.leases.clear();
        let (start, end) = self.keys.table(b'l');
        let mut bad = None;
        engine.scan(&start, &end, &mut |k, v| {
            // A lease's value: its TTL and remaining TTL (`encode`).
            match (decode_i64(self.keys.suffix(k)), decode_pair(v)) {
                (Ok(id), Ok((ttl, remaining_ttl))) => {
                    self.leases.insert(id, Lease { id, ttl, remaining_ttl, keys: BTreeSet::new() });
                }
                _ => bad = Some(format!("corrupt lease {:?}", self.keys.suffix(k))),
            }
            bad.is_none()
        })?;
        if let Some(e) = bad {
            return Err(crate::error::Error::Internal(e));
        }
        for (key, id) in attached {
            if let Some(l) = self.leases.get_mut(&id) {
                l.keys.insert(key);
            }
        }
        Ok(())
    }

    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    pub fn grant(&mut self, id: i64, ttl: i64, batch: &mut WriteBatch) {
        let l = Lease { id, ttl, remaining_ttl: 0, keys: BTreeSet::new() };
        batch.put(self.keys.lease(id), encode(&l));
        self.leases.insert(id, l);
    }

    /// Removes the lease; returns the keys to delete with it.
    pub fn revoke(&mut self, id: i64, batch: &mut WriteBatch) -> Option<Vec<Vec<u8>>> {
        let l = self.leases.remove(&id)?;
        batch.delete(self.keys.lease(id));
        Some(l.keys.into_iter().collect())
    }

    pub fn checkpoint(&mut self, id: i64, remaining: i64, batch: &mut WriteBatch) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.remaining_ttl = remaining;
            batch.put(self.keys.lease(id), encode(l));
        }
    }

    pub fn move_key(&mut self, key: &[u8], from: i64, to: i64) {
        if let Some(l) = self.leases.get_mut(&from) {
            l.keys.remove(key);
        }
        if let Some(l) = self.leases.get_mut(&to) {
            l.keys.insert(key.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemoryEngine;

    #[test]
    fn the_table_survives_a_reload_with_its_keys_from_the_store() {
        let engine = MemoryEngine::default();
        let keys = GroupKeys::new(3);
        let mut t = LeaseTable::new(keys);
        let mut batch = WriteBatch::default();
        t.grant(7, 60, &mut batch);
        t.grant(8, 30, &mut batch);
        t.checkpoint(7, 42, &mut batch);
        assert!(t.revoke(8, &mut batch).is_some_and(|k| k.is_empty()));
        assert!(t.revoke(8, &mut batch).is_none(), "revoked twice");
        engine.write(batch, true).unwrap();
        t.move_key(b"a", 0, 7);
        t.move_key(b"b", 0, 7);
        t.move_key(b"b", 7, 0);

        let mut again = LeaseTable::new(keys);
        again.reload(&engine, [(b"a".to_vec(), 7), (b"x".to_vec(), 99)].into_iter()).unwrap();
        assert_eq!(again.ids(), vec![7]);
        assert_eq!(again.get(7), t.get(7));
        assert_eq!(again.get(7).map(|l| (l.ttl, l.remaining_ttl)), Some((60, 42)));
    }
}
