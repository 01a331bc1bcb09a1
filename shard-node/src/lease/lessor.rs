//! Invariants:
//! - `leases` equals what the applied log says (grants, revokes, checkpoints),
//!   and each lease's `keys` are exactly the live keys attached to it.
//! - `expiry` is only populated while this member is the leader ("primary").
//! - A leader change never shortens a lease: a new leader starts every lease
//!   at its checkpointed remaining TTL (or its full TTL) plus an extension
//!   for the election, and a renewal clears the checkpoint through raft.

use crate::engine::keys::{decode_i64, GroupKeys};
use crate::engine::{Engine, WriteBatch};
use crate::error::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// etcd's largest TTL (seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone, Default)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    /// Remaining TTL as last checkpointed through raft; 0 = none.
    pub remaining_ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

pub struct Lessor {
    keys: GroupKeys,
    leases: BTreeMap<i64, Lease>,
    expiry: HashMap<i64, Instant>,
    primary: bool,
}

fn encode(l: &Lease) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&l.ttl.to_be_bytes());
    v.extend_from_slice(&l.remaining_ttl.to_be_bytes());
    v
}

impl Lessor {
    pub fn new(keys: GroupKeys) -> Self {
        Self { keys, leases: BTreeMap::new(), expiry: HashMap::new(), primary: false }
    }

    /// Reloads the lease table; key attachments come from the store.
    pub fn reload(&mut self, engine: &dyn Engine, attached: impl Iterator<Item = (Vec<u8>, i64)>) -> Result<()> {
        self.leases.clear();
        let (start, end) = self.keys.table(b'l');
        engine.scan(&start, &end, &mut |k, v| {
            let id = decode_i64(self.keys.suffix(k));
            let l = Lease { id, ttl: decode_i64(&v[..8]), remaining_ttl: decode_i64(&v[8..16]), keys: BTreeSet::new() };
            self.leases.insert(id, l);
            true
        })?;
        for (key, id) in attached {
            if let Some(l) = self.leases.get_mut(&id) {
                l.keys.insert(key);
            }
        }
        if self.primary {
            self.promote(Duration::ZERO);
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

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    // ---- replicated changes (called by the applier) ----

    pub fn grant(&mut self, id: i64, ttl: i64, batch: &mut WriteBatch) {
        let l = Lease { id, ttl, remaining_ttl: 0, keys: BTreeSet::new() };
        batch.put(self.keys.lease(id), encode(&l));
        if self.primary {
            self.expiry.insert(id, Instant::now() + secs(ttl));
        }
        self.leases.insert(id, l);
    }

    /// Removes the lease; returns the keys to delete with it.
    pub fn revoke(&mut self, id: i64, batch: &mut WriteBatch) -> Option<Vec<Vec<u8>>> {
        let l = self.leases.remove(&id)?;
        self.expiry.remove(&id);
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

    // ---- liveness (leader only) ----

    /// Becomes the member that decides expiry. `extend` covers the election
    /// that just happened, as etcd's lessor Promote does.
    pub fn promote(&mut self, extend: Duration) {
        self.primary = true;
        let now = Instant::now();
        self.expiry = self
            .leases
            .values()
            .map(|l| {
                let ttl = if l.remaining_ttl > 0 { l.remaining_ttl } else { l.ttl };
                (l.id, now + extend + secs(ttl))
            })
            .collect();
    }

    pub fn demote(&mut self) {
        self.primary = false;
        self.expiry.clear();
    }

    /// Renews a lease; returns its TTL and whether a checkpoint must be
    /// cleared through raft (so a new leader does not use a stale one).
    pub fn renew(&mut self, id: i64) -> Option<(i64, bool)> {
        let l = self.leases.get(&id)?;
        self.expiry.insert(id, Instant::now() + secs(l.ttl));
        Some((l.ttl, l.remaining_ttl > 0))
    }

    /// Seconds left, rounded up as etcd reports them.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let at = self.expiry.get(&id)?;
        let left = at.saturating_duration_since(Instant::now());
        Some(left.as_millis().div_ceil(1000) as i64)
    }

    pub fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        self.expiry.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect()
    }

    /// Remaining TTLs worth checkpointing: leases that have lived a while.
    pub fn checkpoints(&self) -> Vec<(i64, i64)> {
        self.leases
            .values()
            .filter_map(|l| {
                let left = self.remaining(l.id)?;
                (left < l.ttl && left > 0).then_some((l.id, left))
            })
            .collect()
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}
