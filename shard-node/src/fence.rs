//! Fences: prefixes this group is about to stop owning.
//!
//! Before placement commits a map that gives a prefix to another group
//! (pin, spread), it fences the prefix in every group that owns part of it
//! now, through their raft logs, at the new map's epoch. From then on a
//! call routed by an older map that reads or writes under the prefix is
//! refused with `EpochNotMatch { current }`; the router waits for that map
//! and routes again. Without it, a router whose map watch lags by a few
//! milliseconds could put a key into the old group, where routers with the
//! new map never look.
//!
//! Writes are checked when applied (the command carries its epoch), so the
//! decision is the same on every member and ordered against the fence in
//! the log. Linearizable reads are checked after ReadIndex, so they see
//! every fence committed before they started.
//!
//! Epoch 0 is never fenced: a client talking to the group directly (the
//! standalone mode, placement's key count) and the group's own proposals
//! (lease expiry, bumps, alarms) are not routed by a map.

use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, WriteBatch};
use crate::error::{Error, Refusal, Result};
use prost::Message;
use tessera_proto::etcdserverpb::request_op::Request as OpRequest;
use tessera_proto::etcdserverpb::TxnRequest;
use tessera_proto::tessera::command::{command::Op, Fence, Fences as FenceList};

const META_FENCES: &str = "fences";

tokio::task_local! {
    /// The map epoch of the call being served. A task-local rather than a
    /// parameter because the epoch belongs to the call, and one call may
    /// propose and read several times (the lock and election recipes).
    static ROUTED_EPOCH: u64;
}

/// Runs `f` as a call routed by map `epoch` (0: not routed).
pub async fn routed<F: std::future::Future>(epoch: u64, f: F) -> F::Output {
    ROUTED_EPOCH.scope(epoch, f).await
}

/// The map epoch of the current call, 0 outside one.
pub fn routed_epoch() -> u64 {
    ROUTED_EPOCH.try_with(|e| *e).unwrap_or(0)
}

#[derive(Default)]
pub struct Fences {
    list: Vec<Fence>,
}

impl Fences {
    pub fn load(engine: &dyn Engine, keys: &GroupKeys) -> Result<Self> {
        let list = match engine.get(&keys.meta(META_FENCES))? {
            Some(v) => FenceList::decode(v.as_slice()).map_err(|e| Error::Internal(e.to_string()))?.fences,
            None => vec![],
        };
        Ok(Self { list })
    }

    /// Adds `f` (or raises the epoch of the same prefix's fence) and stages
    /// the list in `batch`.
    pub fn raise(&mut self, f: &Fence, keys: &GroupKeys, batch: &mut WriteBatch) {
        match self.list.iter_mut().find(|x| x.prefix == f.prefix) {
            // The first fence's revision stays: nothing under the prefix
            // was written here after it.
            Some(x) => x.epoch = x.epoch.max(f.epoch),
            None => self.list.push(f.clone()),
        }
        batch.put(keys.meta(META_FENCES), FenceList { fences: self.list.clone() }.encode_to_vec());
    }

    /// Refuses `[key, range_end)` to a call routed by map `epoch`.
    pub fn check_range(&self, epoch: u64, key: &[u8], range_end: &[u8]) -> Result<()> {
        if epoch == 0 {
            return Ok(());
        }
        let newest = self
            .list
            .iter()
            .filter(|f| f.epoch > epoch && shardmap::prefix_overlaps(&f.prefix, key, range_end))
            .map(|f| f.epoch)
            .max();
        match newest {
            Some(current) => Err(Refusal::EpochNotMatch { current }.into()),
            None => Ok(()),
        }
    }

    /// For a watch of `[key, range_end)` routed by map `epoch`: the fence
    /// that ends it (the current epoch, and the revision up to which it
    /// still gets events), if any.
    pub fn ending_watch(&self, epoch: u64, key: &[u8], range_end: &[u8]) -> Option<(u64, i64)> {
        if epoch == 0 {
            return None;
        }
        let fences = self.list.iter().filter(|f| f.epoch > epoch && shardmap::prefix_overlaps(&f.prefix, key, range_end));
        let current = fences.clone().map(|f| f.epoch).max()?;
        let revision = fences.map(|f| f.revision).min()?;
        Some((current, revision))
    }

    /// Refuses a command whose keys fall under a fence newer than its epoch.
    pub fn check_op(&self, epoch: u64, op: &Op) -> Result<()> {
        if epoch == 0 || self.list.is_empty() {
            return Ok(());
        }
        match op {
            Op::Put(p) => self.check_range(epoch, &p.key, &[]),
            Op::DeleteRange(d) => self.check_range(epoch, &d.key, &d.range_end),
            Op::Txn(t) => self.check_txn(epoch, t),
            _ => Ok(()),
        }
    }

    /// Every compare and op of a txn, nested txns included.
    pub fn check_txn(&self, epoch: u64, t: &TxnRequest) -> Result<()> {
        if epoch == 0 || self.list.is_empty() {
            return Ok(());
        }
        for c in &t.compare {
            self.check_range(epoch, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(OpRequest::RequestRange(r)) => self.check_range(epoch, &r.key, &r.range_end)?,
                Some(OpRequest::RequestPut(p)) => self.check_range(epoch, &p.key, &[])?,
                Some(OpRequest::RequestDeleteRange(d)) => self.check_range(epoch, &d.key, &d.range_end)?,
                Some(OpRequest::RequestTxn(t)) => self.check_txn(epoch, t)?,
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::etcdserverpb::{PutRequest, RequestOp};

    fn fenced() -> Fences {
        Fences { list: vec![Fence { prefix: b"/registry/pods/".to_vec(), epoch: 7, revision: 100 }] }
    }

    #[test]
    fn older_epochs_are_refused_under_the_prefix_only() {
        let f = fenced();
        assert!(matches!(f.check_range(6, b"/registry/pods/a", &[]), Err(Error::Refused(Refusal::EpochNotMatch { current: 7 }))));
        assert!(f.check_range(7, b"/registry/pods/a", &[]).is_ok());
        assert!(f.check_range(0, b"/registry/pods/a", &[]).is_ok(), "unrouted calls are not fenced");
        assert!(f.check_range(6, b"/registry/pods", &[]).is_ok(), "a sibling key is not under the prefix");
        assert!(f.check_range(6, b"/registry/services/a", &[]).is_ok());
        // A range over everything overlaps the fenced prefix.
        assert!(f.check_range(6, b"\0", b"\0").is_err());
        assert!(f.check_range(6, b"/registry/", b"/registry0").is_err());
        assert!(f.check_range(6, b"/registry/q", b"/registry0").is_ok());
    }

    #[test]
    fn nested_txn_ops_are_checked() {
        let f = fenced();
        let put =
            |k: &[u8]| RequestOp { request: Some(OpRequest::RequestPut(PutRequest { key: k.to_vec(), ..Default::default() })) };
        let inner = TxnRequest { success: vec![put(b"/registry/pods/x")], ..Default::default() };
        let outer = TxnRequest {
            success: vec![put(b"/other"), RequestOp { request: Some(OpRequest::RequestTxn(inner)) }],
            ..Default::default()
        };
        assert!(f.check_op(3, &Op::Txn(outer.clone())).is_err());
        assert!(f.check_op(9, &Op::Txn(outer)).is_ok());
    }

    #[test]
    fn raising_keeps_one_fence_per_prefix() {
        let mut f = fenced();
        let keys = GroupKeys::new(1);
        let mut batch = WriteBatch::default();
        f.raise(&Fence { prefix: b"/registry/pods/".to_vec(), epoch: 9, revision: 120 }, &keys, &mut batch);
        f.raise(&Fence { prefix: b"/registry/pods/".to_vec(), epoch: 8, revision: 130 }, &keys, &mut batch);
        assert_eq!(f.list.len(), 1);
        assert!(f.check_range(8, b"/registry/pods/a", &[]).is_err());
        assert_eq!(f.ending_watch(8, b"/registry/", b"/registry0"), Some((9, 100)), "the first fence's revision");
        assert_eq!(f.ending_watch(9, b"/registry/", b"/registry0"), None);
    }
}
