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
//!
//! A prefix moved with its data (`crate::moves`) has a record on both
//! sides. The source's fence is *pending* until the map moved: calls
//! routed by the fence's epoch or newer wait too, as this group cannot
//! tell whether their map already gives the prefix away (placement tells
//! it: released, or rolled back). The target's *incoming* record hides the
//! staged copy until the target adopts it (staged entries are outside the
//! key index, and history reads skip them); at the cutover, calls routed
//! by the cutover's epoch or newer wait for the adoption; once adopted,
//! calls routed by an older map are refused under the prefix as a fence
//! refuses them, and their watches end at the adoption.

use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, WriteBatch};
use crate::error::{Error, Refusal, Result};
use prost::Message;
use tessera_proto::etcdserverpb::request_op::Request as OpRequest;
use tessera_proto::etcdserverpb::TxnRequest;
use tessera_proto::tessera::command::{command::Op, Fence, Fences as FenceList, Incoming};

pub(crate) const META_FENCES: &str = "fences";

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
    incoming: Vec<Incoming>,
}

impl Fences {
    pub fn load(engine: &dyn Engine, keys: &GroupKeys) -> Result<Self> {
        Self::decode(engine.get(&keys.meta(META_FENCES))?.as_deref())
    }

    /// The fences as stored (under `META_FENCES`), or none.
    pub(crate) fn decode(stored: Option<&[u8]>) -> Result<Self> {
        let (list, incoming) = match stored {
            Some(v) => {
                let l = FenceList::decode(v).map_err(|e| Error::Internal(e.to_string()))?;
                (l.fences, l.incoming)
            }
            None => (vec![], vec![]),
        };
        Ok(Self { list, incoming })
    }

    fn save(&self, keys: &GroupKeys, batch: &mut WriteBatch) {
        let all = FenceList { fences: self.list.clone(), incoming: self.incoming.clone() };
        batch.put(keys.meta(META_FENCES), all.encode_to_vec());
    }

    /// Adds `f` (or raises the epoch of the same prefix's fence) and stages
    /// the list in `batch`.
    pub fn raise(&mut self, f: &Fence, keys: &GroupKeys, batch: &mut WriteBatch) {
        match self.list.iter_mut().find(|x| x.prefix == f.prefix) {
            // The first fence's revision stays: nothing under the prefix
            // was written here after it.
            Some(x) => {
                if f.epoch >= x.epoch {
                    // A move's pending fence over a settled one: a rollback
                    // brings the settled one back, not no fence.
                    if f.pending && !x.pending {
                        x.settled_epoch = x.epoch;
                    }
                    x.pending = f.pending;
                }
                x.epoch = x.epoch.max(f.epoch);
            }
            None => self.list.push(f.clone()),
        }
        self.save(keys, batch);
    }

    /// The source's side of a move's end: the fence stops being pending;
    /// if the prefix `moved` away at `epoch`, the fence refuses every map
    /// older than that, and whatever this group had adopted under the
    /// prefix before is no longer its own. Whether the fence was pending
    /// (its data is to be dropped then; a second release drops nothing).
    pub fn release(&mut self, prefix: &[u8], epoch: u64, moved: bool, keys: &GroupKeys, batch: &mut WriteBatch) -> bool {
        let Some(f) = self.list.iter_mut().find(|x| x.prefix == prefix) else {
            return false;
        };
        let was_pending = f.pending;
        if moved {
            f.pending = false;
            f.released = true;
            f.settled_epoch = 0;
            f.epoch = f.epoch.max(epoch);
            self.incoming.retain(|i| !i.prefix.starts_with(prefix));
        } else if was_pending && f.settled_epoch != 0 {
            // Rolled back over a settled fence: that one holds again.
            f.pending = false;
            f.epoch = std::mem::take(&mut f.settled_epoch);
        } else if was_pending {
            // Rolled back: the prefix stays this group's, under every map.
            self.list.retain(|x| x.prefix != prefix);
        }
        self.save(keys, batch);
        was_pending
    }

    /// Starts (or restarts) taking `prefix` from other groups: staged, unseen.
    ///
    /// A move staging again from scratch (a source compacted past its copy
    /// under the fences) keeps the cutover it made (after map
    /// `since_epoch`, when it began): the map may give the prefix at that
    /// epoch before the new copy is adopted, and a call it routes here must
    /// wait for the adoption, not read or write an empty prefix.
    pub fn stage(&mut self, prefix: &[u8], since_epoch: u64, keys: &GroupKeys, batch: &mut WriteBatch) {
        let cutover_epoch = self
            .incoming(prefix)
            .filter(|i| i.adopted_epoch == 0 && i.cutover_epoch > since_epoch)
            .map_or(0, |i| i.cutover_epoch);
        self.incoming.retain(|i| i.prefix != prefix);
        self.incoming.push(Incoming { prefix: prefix.to_vec(), cutover_epoch, ..Default::default() });
        self.save(keys, batch);
    }

    /// Forgets a move of `prefix` here that was rolled back.
    pub fn abandon(&mut self, prefix: &[u8], keys: &GroupKeys, batch: &mut WriteBatch) {
        self.incoming.retain(|i| i.prefix != prefix || i.adopted_epoch != 0);
        self.save(keys, batch);
    }

    /// Whether a move of `prefix` to this group is staging (not adopted yet).
    pub fn staging(&self, prefix: &[u8]) -> bool {
        self.incoming(prefix).is_some_and(|i| i.adopted_epoch == 0)
    }

    /// The incoming move of `prefix`, if any.
    pub fn incoming(&self, prefix: &[u8]) -> Option<&Incoming> {
        self.incoming.iter().find(|i| i.prefix == prefix)
    }

    /// The cutover of an incoming move: the map will give the prefix at
    /// `epoch` at the earliest.
    pub fn cutover(&mut self, prefix: &[u8], epoch: u64, keys: &GroupKeys, batch: &mut WriteBatch) -> Result<()> {
        let i = self.incoming.iter_mut().find(|i| i.prefix == prefix).ok_or_else(not_moving)?;
        if i.adopted_epoch == 0 {
            i.cutover_epoch = i.cutover_epoch.max(epoch);
        }
        self.save(keys, batch);
        Ok(())
    }

    /// The map gave `prefix` to this group at `epoch`; the group's revision
    /// is `revision`. With `end_fences`, fences this group had on the prefix
    /// (it gave it away before) end: the prefix is its own again (not for a
    /// leaving group's remainder, taken under the empty prefix: only its
    /// unit pins' keys are this group's now). Whether it was staged (false:
    /// adopted before).
    pub fn adopt(
        &mut self,
        prefix: &[u8],
        epoch: u64,
        revision: i64,
        end_fences: bool,
        keys: &GroupKeys,
        batch: &mut WriteBatch,
    ) -> Result<bool> {
        let i = self.incoming.iter_mut().find(|i| i.prefix == prefix).ok_or_else(not_moving)?;
        if i.adopted_epoch != 0 {
            return Ok(false);
        }
        i.adopted_epoch = epoch;
        i.revision = revision;
        if end_fences {
            self.list.retain(|f| !f.prefix.starts_with(prefix));
        }
        self.save(keys, batch);
        Ok(true)
    }

    /// Whether `key` is under a prefix staged here and not adopted yet.
    pub fn is_staged(&self, key: &[u8]) -> bool {
        self.incoming.iter().any(|i| i.adopted_epoch == 0 && key.starts_with(&i.prefix))
    }

    /// Where stored revision `sub` of `key` belongs (`crate::mvcc::Place`):
    /// the longest prefix decides, of those given away with their data and
    /// those taken from other groups (only the revisions that move brought
    /// are staged: `moves::moved_by`).
    pub fn place(&self, key: &[u8], sub: i64) -> crate::mvcc::Place {
        use crate::mvcc::Place;
        let given = self.list.iter().filter(|f| f.released && key.starts_with(&f.prefix)).map(|f| f.prefix.len()).max();
        let taken = self.incoming.iter().filter(|i| key.starts_with(&i.prefix)).max_by_key(|i| i.prefix.len());
        match (given, taken) {
            (Some(g), t) if t.is_none_or(|t| t.prefix.len() < g) => Place::Retired,
            (_, Some(t)) if t.adopted_epoch == 0 && crate::moves::moved_by(&t.prefix, sub) => Place::Staged,
            _ => Place::Live,
        }
    }

    /// The revision up to which watches routed before the group gave
    /// `key`'s prefix away still read its history here (None: not given away).
    pub fn given_away_at(&self, key: &[u8]) -> Option<i64> {
        self.list.iter().filter(|f| f.released && key.starts_with(&f.prefix)).map(|f| f.revision).max()
    }

    /// What of the history here a watch routed by map `epoch` must not
    /// see: revisions moved here and not adopted yet (not this group's
    /// yet), or adopted after that map (it got them from their old owner);
    /// prefixes given away with their data by that map or before (it gets
    /// them from their new owner).
    pub fn hidden_history(&self, epoch: u64) -> Vec<Hidden> {
        let moved_in = self.incoming.iter().filter(|i| i.adopted_epoch == 0 || (epoch != 0 && i.adopted_epoch > epoch));
        let moved_in = moved_in.map(|i| Hidden { prefix: i.prefix.clone(), moved_only: true });
        let gone = self.list.iter().filter(|f| f.released && epoch != 0 && epoch >= f.epoch);
        moved_in.chain(gone.map(|f| Hidden { prefix: f.prefix.clone(), moved_only: false })).collect()
    }

    /// Refuses `[key, range_end)` to a call routed by map `epoch`: an older
    /// map than a fence's or an adoption's (route again by the newer), or a
    /// map that may or may not have moved a prefix in its cutover (wait).
    pub fn check_range(&self, epoch: u64, key: &[u8], range_end: &[u8]) -> Result<()> {
        if epoch == 0 {
            return Ok(());
        }
        let overlaps = |p: &[u8]| shardmap::prefix_overlaps(p, key, range_end);
        let fenced = self.list.iter().filter(|f| f.epoch > epoch && overlaps(&f.prefix)).map(|f| f.epoch);
        let adopted = self.incoming.iter().filter(|i| i.adopted_epoch > epoch && overlaps(&i.prefix)).map(|i| i.adopted_epoch);
        if let Some(current) = fenced.chain(adopted).max() {
            return Err(Refusal::EpochNotMatch { current }.into());
        }
        let releasing = self.list.iter().any(|f| f.pending && epoch >= f.epoch && overlaps(&f.prefix));
        let adopting = self
            .incoming
            .iter()
            .any(|i| i.adopted_epoch == 0 && i.cutover_epoch != 0 && epoch >= i.cutover_epoch && overlaps(&i.prefix));
        if releasing || adopting {
            return Err(Refusal::PrefixMoving.into());
        }
        Ok(())
    }

    /// For a watch of `[key, range_end)` routed by map `epoch`: the fence
    /// (or adoption) that ends it (the current epoch, and the revision up
    /// to which it still gets events), if any.
    pub fn ending_watch(&self, epoch: u64, key: &[u8], range_end: &[u8]) -> Option<(u64, i64)> {
        if epoch == 0 {
            return None;
        }
        let overlaps = |p: &[u8]| shardmap::prefix_overlaps(p, key, range_end);
        let fences = self.list.iter().filter(|f| f.epoch > epoch && overlaps(&f.prefix)).map(|f| (f.epoch, f.revision));
        let adopted = self
            .incoming
            .iter()
            .filter(|i| i.adopted_epoch > epoch && overlaps(&i.prefix))
            .map(|i| (i.adopted_epoch, i.revision));
        let all: Vec<(u64, i64)> = fences.chain(adopted).collect();
        let current = all.iter().map(|x| x.0).max()?;
        let revision = all.iter().map(|x| x.1).min()?;
        Some((current, revision))
    }

    /// Whether lease `keys` (a lease's keys here) touch a prefix a call
    /// routed by map `epoch` may not touch (a lease revoke prepared by it
    /// would delete them).
    pub fn check_keys<'k>(&self, epoch: u64, mut keys: impl Iterator<Item = &'k Vec<u8>>) -> Result<()> {
        if epoch == 0 || (self.list.is_empty() && self.incoming.is_empty()) {
            return Ok(());
        }
        keys.try_for_each(|k| self.check_range(epoch, k, &[]))
    }

    /// Refuses a command whose keys fall under a fence newer than its epoch.
    pub fn check_op(&self, epoch: u64, op: &Op) -> Result<()> {
        if epoch == 0 || (self.list.is_empty() && self.incoming.is_empty()) {
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
        if epoch == 0 || (self.list.is_empty() && self.incoming.is_empty()) {
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

/// History a watch does not read here (`Fences::hidden_history`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hidden {
    pub prefix: Vec<u8>,
    /// Only the revisions the move of `prefix` brought here (the group's
    /// own, and those earlier moves brought, stay: `moves::moved_by`).
    pub moved_only: bool,
}

impl Hidden {
    /// Whether stored revision `sub` of `key` is hidden (`sub` 0 for an
    /// event of a write applied here).
    pub fn hides(&self, key: &[u8], sub: i64) -> bool {
        key.starts_with(&self.prefix) && (!self.moved_only || crate::moves::moved_by(&self.prefix, sub))
    }
}

fn not_moving() -> Error {
    Error::InvalidArgument("tessera: no move of that prefix to this group".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::etcdserverpb::{PutRequest, RequestOp};

    fn fenced() -> Fences {
        Fences {
            list: vec![Fence {
                prefix: b"/registry/pods/".to_vec(),
                epoch: 7,
                revision: 100,
                pending: false,
                released: false,
                settled_epoch: 0,
            }],
            incoming: vec![],
        }
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
        f.raise(
            &Fence {
                prefix: b"/registry/pods/".to_vec(),
                epoch: 9,
                revision: 120,
                pending: false,
                released: false,
                settled_epoch: 0,
            },
            &keys,
            &mut batch,
        );
        f.raise(
            &Fence {
                prefix: b"/registry/pods/".to_vec(),
                epoch: 8,
                revision: 130,
                pending: false,
                released: false,
                settled_epoch: 0,
            },
            &keys,
            &mut batch,
        );
        assert_eq!(f.list.len(), 1);
        assert!(f.check_range(8, b"/registry/pods/a", &[]).is_err());
        assert_eq!(f.ending_watch(8, b"/registry/", b"/registry0"), Some((9, 100)), "the first fence's revision");
        assert_eq!(f.ending_watch(9, b"/registry/", b"/registry0"), None);
    }

    #[test]
    fn a_pending_fence_holds_newer_maps_until_released() {
        let keys = GroupKeys::new(1);
        let mut batch = WriteBatch::default();
        let mut f = Fences::default();
        f.raise(
            &Fence { prefix: b"/a/b/".to_vec(), epoch: 5, revision: 40, pending: true, released: false, settled_epoch: 0 },
            &keys,
            &mut batch,
        );
        assert!(matches!(f.check_range(4, b"/a/b/k", &[]), Err(Error::Refused(Refusal::EpochNotMatch { current: 5 }))));
        assert!(matches!(f.check_range(5, b"/a/b/k", &[]), Err(Error::Refused(Refusal::PrefixMoving))));
        assert!(f.check_range(5, b"/a/c/k", &[]).is_ok(), "other prefixes are not held");
        assert!(f.release(b"/a/b/", 6, true, &keys, &mut batch), "it was pending");
        assert!(!f.release(b"/a/b/", 6, true, &keys, &mut batch), "released once");
        assert!(matches!(f.check_range(5, b"/a/b/k", &[]), Err(Error::Refused(Refusal::EpochNotMatch { current: 6 }))));
        assert!(f.check_range(6, b"/a/b/k", &[]).is_ok());
        assert_eq!(
            f.hidden_history(6),
            vec![Hidden { prefix: b"/a/b/".to_vec(), moved_only: false }],
            "its history is the new owner's"
        );
        assert!(f.hidden_history(5).is_empty());
    }

    #[test]
    fn a_rolled_back_move_over_a_settled_fence_leaves_that_fence() {
        let keys = GroupKeys::new(1);
        let mut batch = WriteBatch::default();
        let mut f = Fences::default();
        // A ring flip fenced every key at 4; a remainder's cutover at 7.
        let flip = Fence { prefix: vec![], epoch: 4, revision: 30, pending: false, released: false, settled_epoch: 0 };
        f.raise(&flip, &keys, &mut batch);
        f.raise(&Fence { epoch: 7, pending: true, ..flip.clone() }, &keys, &mut batch);
        assert!(matches!(f.check_range(7, b"k", &[]), Err(Error::Refused(Refusal::PrefixMoving))));
        assert!(f.release(b"", 8, false, &keys, &mut batch), "it was pending");
        assert!(f.check_range(7, b"k", &[]).is_ok(), "the move's fence is lifted");
        assert!(
            matches!(f.check_range(3, b"k", &[]), Err(Error::Refused(Refusal::EpochNotMatch { current: 4 }))),
            "the flip's still refuses maps older than it"
        );
        // Without a settled fence under it, a rollback leaves none.
        f.raise(&Fence { prefix: b"/a/".to_vec(), epoch: 9, pending: true, ..flip }, &keys, &mut batch);
        assert!(f.release(b"/a/", 10, false, &keys, &mut batch));
        assert_eq!(f.list.len(), 1);
    }

    #[test]
    fn an_incoming_prefix_is_hidden_until_adopted_then_refuses_older_maps() {
        let keys = GroupKeys::new(2);
        let mut batch = WriteBatch::default();
        let mut f = Fences::default();
        f.raise(
            &Fence { prefix: b"/a/b/".to_vec(), epoch: 3, revision: 10, pending: false, released: false, settled_epoch: 0 },
            &keys,
            &mut batch,
        );
        f.stage(b"/a/b/", 0, &keys, &mut batch);
        assert!(f.is_staged(b"/a/b/k") && !f.is_staged(b"/a/c/k"));
        assert_eq!(f.place(b"/a/b/k", 1 << 40), crate::mvcc::Place::Staged);
        assert_eq!(f.place(b"/a/b/k", 0), crate::mvcc::Place::Live, "the group's own revisions under it");
        assert!(f.check_range(9, b"/a/b/k", &[]).is_ok(), "staged data is simply not seen");
        assert!(f.hidden_history(9).iter().any(|h| h.hides(b"/a/b/k", 1 << 40) && !h.hides(b"/a/b/k", 0)));
        f.cutover(b"/a/b/", 10, &keys, &mut batch).unwrap();
        assert!(f.check_range(9, b"/a/b/k", &[]).is_ok());
        assert!(matches!(f.check_range(10, b"/", b"0"), Err(Error::Refused(Refusal::PrefixMoving))));
        assert!(f.adopt(b"/a/b/", 11, 500, true, &keys, &mut batch).unwrap());
        assert!(!f.adopt(b"/a/b/", 11, 600, true, &keys, &mut batch).unwrap(), "adopted once");
        assert!(!f.is_staged(b"/a/b/k"));
        assert!(f.check_range(11, b"/a/b/k", &[]).is_ok());
        assert!(matches!(f.check_range(10, b"/a/b/k", &[]), Err(Error::Refused(Refusal::EpochNotMatch { current: 11 }))));
        assert_eq!(f.ending_watch(10, b"/a/", b"/a0"), Some((11, 500)));
        assert_eq!(f.hidden_history(10), vec![Hidden { prefix: b"/a/b/".to_vec(), moved_only: true }]);
        assert!(f.hidden_history(11).is_empty(), "the fence it had on the prefix is gone");
        // Fenced when the map moved it, a revoke of a lease with a key under it is refused.
        assert!(f.check_keys(10, [b"/a/b/k".to_vec()].iter()).is_err());
        assert!(f.check_keys(11, [b"/a/b/k".to_vec()].iter()).is_ok());
    }
}
