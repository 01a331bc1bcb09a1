//! A group's side of transactions across groups (docs/architecture.md,
//! "Transactions across groups"): the replicated record of the txn it holds
//! prepared, of the txns it committed (until forgotten) and of those it
//! aborted.
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
//! - A txn is committed once every one of its groups has prepared it: its
//!   coordinator then sends every group the same commit. A group commits
//!   only a txn it holds prepared, and keeps the commit (every group's part)
//!   until forgotten. An aborted txn is remembered: its late prepare or
//!   commit is refused.
//! - Recovery first fences the txn on every group: a prepared one stays
//!   prepared but refuses its coordinator's commit; one not prepared is
//!   aborted (its prepare can no longer come). After that only recovery
//!   ends the txn: committed if any group had committed (its record has
//!   every part), else aborted. A group that had not prepared can have
//!   committed nowhere, since commits go out only once all have prepared.

use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, WriteBatch};
use crate::error::{Error, Refusal, Result};
use prost::Message;
use std::collections::VecDeque;
use std::time::Instant;
use tessera_proto::tessera::command::{command::Op, CrossTxns as Record, TxnCommit, TxnPrepared};

const META_CROSS: &str = "cross-txns";
/// How many aborted txn ids are kept to refuse a late prepare or commit:
/// they come within a request's deadline, and a group ends at most a few
/// hundred txns a second.
const REMEMBERED: usize = 1000;

#[derive(Default)]
pub struct CrossTxns {
    prepared: Option<TxnPrepared>,
    /// When this member applied the prepare (not replicated: for `in_doubt`).
    prepared_at: Option<Instant>,
    committed: Vec<TxnCommit>,
    aborted: VecDeque<i64>,
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

/// What ending a txn here found.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// It had committed here: its commit (nothing changed).
    Committed(TxnCommit),
    /// Fenced, it is still prepared here.
    Prepared,
    /// It is aborted here (now or before).
    Aborted,
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
        })
    }

    fn save(&self, keys: &GroupKeys, batch: &mut WriteBatch) {
        let r = Record {
            prepared: self.prepared.clone(),
            committed: self.committed.clone(),
            aborted: self.aborted.iter().copied().collect(),
        };
        batch.put(keys.meta(META_CROSS), r.encode_to_vec());
    }

    /// The prepared txn, if any.
    pub fn prepared(&self) -> Option<&TxnPrepared> {
        self.prepared.as_ref()
    }

    /// The prepared txn once this member has held it for `after`.
    pub fn in_doubt(&self, after: std::time::Duration) -> Option<TxnPrepared> {
        self.prepared.clone().filter(|_| self.prepared_at.is_some_and(|t| t.elapsed() >= after))
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

    fn committed_record(&self, id: i64) -> Option<&TxnCommit> {
        self.committed.iter().find(|c| c.id == id)
    }

    /// Whether txn `id` may be prepared here (not aborted or ended before).
    pub fn may_prepare(&self, id: i64) -> Result<()> {
        if self.aborted.contains(&id) {
            return Err(Refusal::TxnAborted { txn: id }.into());
        }
        if self.committed_record(id).is_some() {
            return Err(Error::Internal(format!("cross-group txn {id} has committed already")));
        }
        Ok(())
    }

    pub fn prepare(&mut self, p: TxnPrepared, keys: &GroupKeys, batch: &mut WriteBatch) {
        match &self.prepared {
            // Prepared again (a retry): keep it as it is, fenced or not.
            Some(x) if x.id == p.id => return,
            _ => self.prepared_at = Some(Instant::now()),
        }
        self.prepared = Some(p);
        self.save(keys, batch);
    }

    /// What commit `c` finds: Ok(true) it is prepared here (and, if fenced,
    /// the commit comes from recovery), Ok(false) it committed here before
    /// (answer, do nothing), else it was aborted, fenced or never prepared.
    pub fn may_commit(&self, c: &TxnCommit) -> Result<bool> {
        match &self.prepared {
            Some(p) if p.id == c.id && (c.recover || !p.fenced) => return Ok(true),
            _ => {}
        }
        if self.committed_record(c.id).is_some() {
            return Ok(false);
        }
        Err(Refusal::TxnAborted { txn: c.id }.into())
    }

    /// Records the commit of the prepared txn, every part of it.
    pub fn committed(&mut self, c: &TxnCommit, keys: &GroupKeys, batch: &mut WriteBatch) {
        self.prepared = None;
        self.prepared_at = None;
        self.committed.push(TxnCommit { recover: false, ..c.clone() });
        self.save(keys, batch);
    }

    /// Ends txn `id` here unless it committed: aborts it for good, or with
    /// `fence` keeps a prepared one prepared but fenced.
    pub fn end(&mut self, id: i64, fence: bool, keys: &GroupKeys, batch: &mut WriteBatch) -> Ended {
        if let Some(c) = self.committed_record(id) {
            return Ended::Committed(c.clone());
        }
        match &mut self.prepared {
            Some(p) if p.id == id && fence => {
                if !p.fenced {
                    p.fenced = true;
                    self.save(keys, batch);
                }
                return Ended::Prepared;
            }
            Some(p) if p.id == id => {
                self.prepared = None;
                self.prepared_at = None;
            }
            _ => {}
        }
        if !self.aborted.contains(&id) {
            self.aborted.push_back(id);
            if self.aborted.len() > REMEMBERED {
                self.aborted.pop_front();
            }
        }
        self.save(keys, batch);
        Ended::Aborted
    }

    /// Drops a committed txn's record (every group committed).
    pub fn forget(&mut self, id: i64, keys: &GroupKeys, batch: &mut WriteBatch) {
        let before = self.committed.len();
        self.committed.retain(|c| c.id != id);
        if self.committed.len() != before {
            self.save(keys, batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::etcdserverpb::PutRequest;
    use tessera_proto::tessera::command::RevisionBump;

    fn prepared(id: i64) -> TxnPrepared {
        TxnPrepared { id, groups: vec![1, 2], revision: 10, fenced: false }
    }

    fn commit(id: i64, recover: bool) -> TxnCommit {
        TxnCommit { id, revision: 20, parts: vec![], recover }
    }

    #[test]
    fn a_prepared_txn_holds_back_writes_and_other_prepares_only() {
        let (keys, mut b) = (GroupKeys::new(1), WriteBatch::default());
        let mut x = CrossTxns::default();
        assert!(x.check_op(&Op::Bump(RevisionBump {})).is_ok());
        x.prepare(prepared(7), &keys, &mut b);
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
    fn a_group_keeps_its_commit_until_forgotten_and_refuses_late_calls_after_an_abort() {
        let (keys, mut b) = (GroupKeys::new(1), WriteBatch::default());
        let mut x = CrossTxns::default();
        x.prepare(prepared(7), &keys, &mut b);
        assert_eq!(x.may_commit(&commit(7, false)), Ok(true));
        x.committed(&commit(7, false), &keys, &mut b);
        assert!(x.prepared().is_none());
        assert_eq!(x.may_commit(&commit(7, false)), Ok(false), "a repeated commit is answered");
        assert_eq!(x.end(7, true, &keys, &mut b), Ended::Committed(commit(7, false)), "recovery learns the commit");
        assert_eq!(x.end(7, false, &keys, &mut b), Ended::Committed(commit(7, false)), "a commit is never aborted");
        x.forget(7, &keys, &mut b);
        assert!(x.committed.is_empty());
        // An abort (or a fence) before the prepare arrives refuses it.
        assert_eq!(x.end(9, true, &keys, &mut b), Ended::Aborted);
        assert_eq!(x.may_prepare(9), Err(Error::Refused(Refusal::TxnAborted { txn: 9 })));
        assert_eq!(x.may_commit(&commit(9, true)), Err(Error::Refused(Refusal::TxnAborted { txn: 9 })));
        for id in 100..100 + REMEMBERED as i64 {
            x.end(id, false, &keys, &mut b);
        }
        assert_eq!(x.aborted.len(), REMEMBERED);
        assert!(x.may_prepare(9).is_ok(), "the oldest ids go first");
    }

    #[test]
    fn a_fenced_txn_stays_prepared_and_takes_only_recoverys_commit() {
        let (keys, mut b) = (GroupKeys::new(2), WriteBatch::default());
        let mut x = CrossTxns::default();
        x.prepare(prepared(7), &keys, &mut b);
        assert_eq!(x.end(7, true, &keys, &mut b), Ended::Prepared);
        assert_eq!(x.end(7, true, &keys, &mut b), Ended::Prepared, "fencing again answers the same");
        x.prepare(prepared(7), &keys, &mut b);
        assert!(x.prepared().is_some_and(|p| p.fenced), "a prepare sent again does not lift the fence");
        assert_eq!(x.may_commit(&commit(7, false)), Err(Error::Refused(Refusal::TxnAborted { txn: 7 })));
        assert_eq!(x.may_commit(&commit(7, true)), Ok(true));
        // Or recovery aborts it: the group lets it go.
        assert_eq!(x.end(7, false, &keys, &mut b), Ended::Aborted);
        assert!(x.prepared().is_none());
        assert_eq!(x.may_commit(&commit(7, true)), Err(Error::Refused(Refusal::TxnAborted { txn: 7 })));
    }
}
