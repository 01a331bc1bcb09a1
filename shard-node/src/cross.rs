//! A group's side of transactions across groups (docs/architecture.md,
//! "Transactions across groups"): the replicated record of the txn it holds
//! prepared, and — when it is a txn's primary — of its decision.
//!
//! Invariants (every member applies the same, in log order):
//! - At most one txn is prepared at a time. While one is, the group applies
//!   no command that could take a revision or change what the txn read
//!   (writes, bumps, fences, compactions, lease revokes, another prepare):
//!   they are refused with `TxnConflict` and the proposer waits for the txn
//!   to end (`Group::propose_at`), a prepare goes back to its coordinator.
//!   So the state a txn's compares and checks saw at prepare is the state
//!   its commit runs on, and its commit revision (above the group's revision
//!   at prepare) is exactly the revision the group applies it at.
//! - The primary's commit entry is the decision: it commits only a txn it
//!   holds prepared, and keeps the commit (every participant's part) until
//!   forgotten. An abort asked of the primary (`decide`) removes its
//!   prepared txn and records the abort, so a late prepare or commit of that
//!   txn is refused. A participant left prepared learns the outcome there.

use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, WriteBatch};
use crate::error::{Error, Refusal, Result};
use prost::Message;
use std::collections::VecDeque;
use std::time::Instant;
use tessera_proto::tessera::command::{command::Op, CrossTxns as Record, TxnCommit, TxnPrepared};

const META_CROSS: &str = "cross-txns";
/// How many aborted (primary) and committed (participant) txn ids are kept
/// to answer a late or repeated call: they come within a request's
/// deadline, and a group ends at most a few hundred txns a second.
const REMEMBERED: usize = 1000;

#[derive(Default)]
pub struct CrossTxns {
    prepared: Option<TxnPrepared>,
    /// When this member applied the prepare (not replicated: for `in_doubt`).
    prepared_at: Option<Instant>,
    committed: Vec<TxnCommit>,
    aborted: VecDeque<i64>,
    finished: VecDeque<i64>,
}

/// Whether `op` waits while a cross-group txn is prepared: anything that
/// could take a revision or change what the txn read.
pub fn held_back(op: &Op) -> bool {
    matches!(
        op,
        Op::Put(_)
            | Op::DeleteRange(_)
            | Op::Txn(_)
            | Op::LeaseRevoke(_)
            | Op::Bump(_)
            | Op::Fence(_)
            | Op::Compact(_)
            | Op::TxnPrepare(_)
    )
}

fn remember(list: &mut VecDeque<i64>, id: i64) {
    if !list.contains(&id) {
        list.push_back(id);
        if list.len() > REMEMBERED {
            list.pop_front();
        }
    }
}

impl CrossTxns {
    pub fn load(engine: &dyn Engine, keys: &GroupKeys) -> Result<Self> {
        let Some(v) = engine.get(&keys.meta(META_CROSS))? else {
            return Ok(Self::default());
        };
        let r = Record::decode(v.as_slice()).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Self {
            prepared_at: r.prepared.as_ref().map(|_| Instant::now()),
            prepared: r.prepared,
            committed: r.committed,
            aborted: r.aborted.into(),
            finished: r.finished.into(),
        })
    }

    fn save(&self, keys: &GroupKeys, batch: &mut WriteBatch) {
        let r = Record {
            prepared: self.prepared,
            committed: self.committed.clone(),
            aborted: self.aborted.iter().copied().collect(),
            finished: self.finished.iter().copied().collect(),
        };
        batch.put(keys.meta(META_CROSS), r.encode_to_vec());
    }

    /// The prepared txn, if any.
    pub fn prepared(&self) -> Option<&TxnPrepared> {
        self.prepared.as_ref()
    }

    /// The prepared txn once this member has held it for `after`.
    pub fn in_doubt(&self, after: std::time::Duration) -> Option<TxnPrepared> {
        self.prepared.filter(|_| self.prepared_at.is_some_and(|t| t.elapsed() >= after))
    }

    /// Refuses `op` while a txn is prepared, if it must wait for it.
    pub fn check_op(&self, op: &Op) -> Result<()> {
        match (&self.prepared, op) {
            // The same txn prepared again (a coordinator's retry) is answered again.
            (Some(p), Op::TxnPrepare(q)) if p.id == q.id => Ok(()),
            (Some(p), op) if held_back(op) => Err(Refusal::TxnConflict { holder: p.id }.into()),
            _ => Ok(()),
        }
    }

    /// Whether txn `id` may be prepared here (not aborted or ended before).
    pub fn may_prepare(&self, id: i64) -> Result<()> {
        if self.aborted.contains(&id) {
            return Err(Refusal::TxnAborted { txn: id }.into());
        }
        if self.finished.contains(&id) || self.committed.iter().any(|c| c.id == id) {
            return Err(Error::Internal(format!("cross-group txn {id} has committed already")));
        }
        Ok(())
    }

    pub fn prepare(&mut self, p: TxnPrepared, keys: &GroupKeys, batch: &mut WriteBatch) {
        if self.prepared.as_ref().is_none_or(|x| x.id != p.id) {
            self.prepared_at = Some(Instant::now());
        }
        self.prepared = Some(p);
        self.save(keys, batch);
    }

    /// What a commit of txn `id` finds: Ok(true) it is prepared here,
    /// Ok(false) it committed here before (answer, do nothing), else it
    /// was aborted or never prepared.
    pub fn may_commit(&self, id: i64) -> Result<bool> {
        if self.prepared.as_ref().is_some_and(|p| p.id == id) {
            return Ok(true);
        }
        if self.finished.contains(&id) || self.committed.iter().any(|c| c.id == id) {
            return Ok(false);
        }
        Err(Refusal::TxnAborted { txn: id }.into())
    }

    /// Records the commit of the prepared txn: the whole decision on its
    /// primary, the id elsewhere.
    pub fn committed(&mut self, c: &TxnCommit, group: u64, keys: &GroupKeys, batch: &mut WriteBatch) {
        let primary = self.prepared.take().is_some_and(|p| p.primary == group);
        self.prepared_at = None;
        if primary {
            self.committed.push(c.clone());
        } else {
            remember(&mut self.finished, c.id);
        }
        self.save(keys, batch);
    }

    /// Aborts txn `id` here; with `decide` (asked of its primary), for good
    /// unless it committed — then answers the commit.
    pub fn abort(&mut self, id: i64, decide: bool, keys: &GroupKeys, batch: &mut WriteBatch) -> Option<TxnCommit> {
        if let Some(c) = self.committed.iter().find(|c| c.id == id) {
            return Some(c.clone());
        }
        if self.prepared.as_ref().is_some_and(|p| p.id == id) {
            self.prepared = None;
            self.prepared_at = None;
        }
        if decide {
            remember(&mut self.aborted, id);
        }
        self.save(keys, batch);
        None
    }

    /// Drops a committed txn's decision (every participant committed).
    pub fn forget(&mut self, id: i64, keys: &GroupKeys, batch: &mut WriteBatch) {
        self.committed.retain(|c| c.id != id);
        self.save(keys, batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::etcdserverpb::PutRequest;
    use tessera_proto::tessera::command::RevisionBump;

    fn prepared(id: i64, primary: u64) -> TxnPrepared {
        TxnPrepared { id, primary, revision: 10 }
    }

    #[test]
    fn a_prepared_txn_holds_back_writes_and_other_prepares_only() {
        let (keys, mut b) = (GroupKeys::new(1), WriteBatch::default());
        let mut x = CrossTxns::default();
        assert!(x.check_op(&Op::Bump(RevisionBump {})).is_ok());
        x.prepare(prepared(7, 1), &keys, &mut b);
        let conflict = Err(Error::Refused(Refusal::TxnConflict { holder: 7 }));
        assert_eq!(x.check_op(&Op::Put(PutRequest::default())), conflict);
        assert_eq!(x.check_op(&Op::Bump(RevisionBump {})), conflict);
        let other = tessera_proto::tessera::command::TxnPrepare { id: 8, ..Default::default() };
        assert_eq!(x.check_op(&Op::TxnPrepare(other)), conflict);
        let same = tessera_proto::tessera::command::TxnPrepare { id: 7, ..Default::default() };
        assert!(x.check_op(&Op::TxnPrepare(same)).is_ok());
        assert!(x.check_op(&Op::LeaseGrant(Default::default())).is_ok(), "a grant takes no revision");
    }

    #[test]
    fn the_primary_keeps_its_decision_until_forgotten_and_refuses_late_calls_after_an_abort() {
        let (keys, mut b) = (GroupKeys::new(1), WriteBatch::default());
        let mut x = CrossTxns::default();
        x.prepare(prepared(7, 1), &keys, &mut b);
        assert_eq!(x.may_commit(7), Ok(true));
        let c = TxnCommit { id: 7, revision: 20, parts: vec![] };
        x.committed(&c, 1, &keys, &mut b);
        assert!(x.prepared().is_none());
        assert_eq!(x.may_commit(7), Ok(false), "a repeated commit is answered");
        assert_eq!(x.abort(7, true, &keys, &mut b), Some(c), "asked to decide, the primary answers its commit");
        x.forget(7, &keys, &mut b);
        // An abort decided before the prepare arrives refuses it.
        assert_eq!(x.abort(9, true, &keys, &mut b), None);
        assert_eq!(x.may_prepare(9), Err(Error::Refused(Refusal::TxnAborted { txn: 9 })));
        assert_eq!(x.may_commit(9), Err(Error::Refused(Refusal::TxnAborted { txn: 9 })));
    }

    #[test]
    fn a_participant_remembers_what_it_committed_not_the_decision() {
        let (keys, mut b) = (GroupKeys::new(2), WriteBatch::default());
        let mut x = CrossTxns::default();
        x.prepare(prepared(7, 1), &keys, &mut b);
        x.committed(&TxnCommit { id: 7, revision: 20, parts: vec![] }, 2, &keys, &mut b);
        assert!(x.committed.is_empty());
        assert_eq!(x.may_commit(7), Ok(false));
        for id in 100..100 + REMEMBERED as i64 {
            remember(&mut x.finished, id);
        }
        assert_eq!(x.finished.len(), REMEMBERED);
        assert!(!x.finished.contains(&7), "the oldest ids go first");
    }
}
