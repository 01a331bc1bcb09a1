//! When leases expire: a clock only the leader (the "primary") keeps; it is
//! not replicated. A new leader starts every lease from its checkpointed
//! remaining TTL (or its full TTL) plus an extension for the election, so a
//! leader change never shortens a lease. The replicated lease table is in
//! `table.rs`; this clock lives behind its own lock, taken after the
//! group's state lock (`crate::locks::Level::Liveness`).

use super::table::LeaseTable;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Liveness {
    primary: bool,
    expiry: HashMap<i64, Instant>,
}

impl Liveness {
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Becomes the member that decides expiry. `extend` covers the election
    /// that just happened, as etcd's lessor Promote does.
    pub fn promote(&mut self, table: &LeaseTable, extend: Duration) {
        self.primary = true;
        let now = Instant::now();
        self.expiry = table
            .iter()
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

    /// A lease was granted (its clock starts on the primary).
    pub fn granted(&mut self, id: i64, ttl: i64) {
        if self.primary {
            self.expiry.insert(id, Instant::now() + secs(ttl));
        }
    }

    pub fn revoked(&mut self, id: i64) {
        self.expiry.remove(&id);
    }

    /// Restarts a lease's clock at `ttl` (a keepalive on the primary).
    pub fn renew(&mut self, id: i64, ttl: i64) {
        self.expiry.insert(id, Instant::now() + secs(ttl));
    }

    /// Seconds left, rounded up as etcd reports them.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let at = self.expiry.get(&id)?;
        let left = at.saturating_duration_since(Instant::now());
        Some(left.as_millis().div_ceil(1000) as i64)
    }

    /// Whether the lease's time has run out (it is revoked soon): a renewal
    /// must not bring it back, as etcd refuses to renew an expired lease.
    pub fn has_expired(&self, id: i64) -> bool {
        self.expiry.get(&id).is_some_and(|at| *at <= Instant::now())
    }

    pub fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        self.expiry.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect()
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::keys::GroupKeys;
    use crate::engine::WriteBatch;

    #[test]
    fn a_new_leader_starts_leases_from_their_checkpoint_plus_the_election() {
        let mut table = LeaseTable::new(GroupKeys::new(1));
        let mut b = WriteBatch::default();
        table.grant(1, 100, &mut b);
        table.grant(2, 100, &mut b);
        table.checkpoint(2, 10, &mut b);
        let mut l = Liveness::default();
        l.granted(1, 100);
        assert_eq!(l.remaining(1), None, "only the primary keeps time");
        l.promote(&table, Duration::from_secs(2));
        assert!(l.is_primary());
        assert_eq!(l.remaining(1), Some(102));
        assert_eq!(l.remaining(2), Some(12), "the checkpoint, not the full TTL");
        l.renew(2, 100);
        assert_eq!(l.remaining(2), Some(100));
        assert!(l.expired().is_empty());
        l.renew(1, 0);
        assert_eq!(l.expired(), vec![1]);
        l.revoked(1);
        assert!(l.expired().is_empty());
        l.demote();
        assert_eq!(l.remaining(2), None);
    }
}
