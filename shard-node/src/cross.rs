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
use tessera_proto::tessera::command::{command::Op, TxnCommit, TxnPrepared};

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
            // What a txn prepared here read must still be so at its commit.
            | Op::MoveTarget(_)
            | Op::MoveRelease(_)
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

/// Where the records live (the meta table, so snapshots carry them): the
/// prepared txn under one key, each committed txn and each remembered
/// abort under its own (an entry rewrites only what it changes).
const PREPARED: &str = "cross-prepared";
const COMMITTED: &str = "cross-committed/";
const ABORTED: &str = "cross-aborted/";

fn item(kind: &str, id: i64) -> String {
    format!("{kind}{:016x}", id as u64)
}

/// The values stored under `kind`'s keys, in key order.
fn scan(engine: &dyn Engine, keys: &GroupKeys, kind: &str) -> Result<Vec<Vec<u8>>> {
    let (start, mut end) = (keys.meta(kind), keys.meta(kind));
    *end.last_mut().expect("a kind ends with '/'") += 1;
    let mut out = vec![];
    engine.scan(&start, &end, &mut |_, v| {
        out.push(v.to_vec());
        true
    })?;
    Ok(out)
}

fn decode<M: Message + Default>(v: &[u8]) -> Result<M> {
    M::decode(v).map_err(|e| Error::Internal(e.to_string()))
}

impl CrossTxns {
    pub fn load(engine: &dyn Engine, keys: &GroupKeys) -> Result<Self> {
        let prepared: Option<TxnPrepared> = engine.get(&keys.meta(PREPARED))?.map(|v| decode(&v)).transpose()?;
        let committed = scan(engine, keys, COMMITTED)?.iter().map(|v| decode(v)).collect::<Result<Vec<TxnCommit>>>()?;
        let aborted = scan(engine, keys, ABORTED)?
            .iter()
            .map(|v| v.as_slice().try_into().map(i64::from_be_bytes).map_err(|_| Error::Internal("bad aborted txn id".into())))
            .collect::<Result<VecDeque<i64>>>()?;
        Ok(Self { prepared_at: prepared.as_ref().map(|_| Instant::now()), prepared, committed, aborted })
    }

    fn save_prepared(&self, keys: &GroupKeys, batch: &mut WriteBatch) {
        match &self.prepared {
            Some(p) => batch.put(keys.meta(PREPARED), p.encode_to_vec()),
            None => batch.delete(keys.meta(PREPARED)),
        }
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
        self.save_prepared(keys, batch);
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
        self.save_prepared(keys, batch);
        let c = TxnCommit { recover: false, ..c.clone() };
        batch.put(keys.meta(&item(COMMITTED, c.id)), c.encode_to_vec());
        self.committed.push(c);
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
                    self.save_prepared(keys, batch);
                }
                return Ended::Prepared;
            }
            Some(p) if p.id == id => {
                self.prepared = None;
                self.prepared_at = None;
                self.save_prepared(keys, batch);
            }
            _ => {}
        }
        if !self.aborted.contains(&id) {
            self.aborted.push_back(id);
            batch.put(keys.meta(&item(ABORTED, id)), id.to_be_bytes().to_vec());
            if self.aborted.len() > REMEMBERED {
                let oldest = self.aborted.pop_front().expect("over the limit");
                batch.delete(keys.meta(&item(ABORTED, oldest)));
            }
        }
        Ended::Aborted
    }

    /// Drops committed txns' records (every group of each committed).
    pub fn forget(&mut self, ids: &[i64], keys: &GroupKeys, batch: &mut WriteBatch) {
        self.committed.retain(|c| !ids.contains(&c.id));
        for id in ids {
            batch.delete(keys.meta(&item(COMMITTED, *id)));
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
        x.forget(&[7], &keys, &mut b);
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
    fn the_records_survive_a_reload() {
        let engine = crate::engine::MemoryEngine::default();
        let (keys, mut b) = (GroupKeys::new(3), WriteBatch::default());
        let mut x = CrossTxns::default();
        x.prepare(prepared(7), &keys, &mut b);
        x.committed(&commit(7, true), &keys, &mut b);
        x.prepare(prepared(8), &keys, &mut b);
        x.committed(&commit(8, false), &keys, &mut b);
        x.forget(&[8], &keys, &mut b);
        x.end(9, false, &keys, &mut b);
        x.prepare(prepared(10), &keys, &mut b);
        x.end(10, true, &keys, &mut b);
        engine.write(b, true).unwrap();
        let y = CrossTxns::load(&engine, &keys).unwrap();
        assert_eq!(y.committed, vec![commit(7, false)], "kept as a plain commit, the forgotten one gone");
        assert_eq!(y.aborted, VecDeque::from([9]));
        assert_eq!(y.prepared, Some(TxnPrepared { fenced: true, ..prepared(10) }));
        assert!(CrossTxns::load(&engine, &GroupKeys::new(4)).unwrap().prepared.is_none(), "per group");
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
