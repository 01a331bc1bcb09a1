//! Applying the entries of a transaction across groups (`crate::cross` has
//! the record and its invariants): prepare evaluates this group's compares
//! and checks its ops on the state it then holds still; commit runs this
//! group's part at the txn's one revision; abort lets the group go (or,
//! fencing, holds it for recovery).

use super::Applied;
use crate::cross::{CrossTxns, Ended};
use crate::error::{Error, Result};
use crate::fence::Fences;
use crate::lease::LeaseTable;
use crate::mvcc::WriteTxn;
use crate::state::StateMachine;
use tessera_proto::tessera::command::{command::Op, TxnAbort, TxnCommit, TxnPrepare, TxnPrepared};
use tessera_proto::tessera::shard::CompareOutcome;
use tessera_rpc::txn_tree;

impl StateMachine {
    /// `txn` is the entry's write txn, begun at the commit's revision for a
    /// commit. Errors leave everything as it was (they come before any change).
    pub(super) fn apply_cross(
        &self,
        op: &Op,
        epoch: u64,
        txn: &mut WriteTxn<'_>,
        leases: &mut LeaseTable,
        cross: &mut CrossTxns,
        fences: &Fences,
    ) -> Result<Applied> {
        match op {
            Op::TxnPrepare(p) => self.prepare(p, epoch, txn, leases, cross, fences),
            Op::TxnCommit(c) => self.commit_part(c, txn, leases, cross),
            Op::TxnAbort(TxnAbort { forget, .. }) if !forget.is_empty() => {
                cross.forget(forget, &self.keys, txn.batch_mut());
                Ok(Applied::Ended(Ended::Aborted))
            }
            Op::TxnAbort(a) => Ok(Applied::Ended(cross.end(a.id, a.fence, &self.keys, txn.batch_mut()))),
            _ => unreachable!("not a cross-group txn entry"),
        }
    }

    fn prepare(
        &self,
        p: &TxnPrepare,
        epoch: u64,
        txn: &mut WriteTxn<'_>,
        leases: &LeaseTable,
        cross: &mut CrossTxns,
        fences: &Fences,
    ) -> Result<Applied> {
        fail::fail_point!("apply::txn_prepare");
        cross.may_prepare(p.id)?;
        let request = p.request.as_ref().ok_or_else(|| Error::InvalidArgument("cross-group txn without a request".into()))?;
        fences.check_txn(epoch, request)?;
        // Its commit deletes the lease's keys here: none may be under a
        // prefix this call may not touch.
        if let Some(l) = leases.get(p.revoke_lease).filter(|_| p.revoke_lease != 0) {
            fences.check_keys(epoch, l.keys.iter())?;
        }
        let flat = txn_tree::flatten(request);
        let missing = || Error::InvalidArgument("cross-group txn names an op it does not have".into());
        let mut compares = vec![];
        for i in &p.compares {
            let c = flat.compares.get(*i as usize).ok_or_else(missing)?;
            let (found, holds) = txn.compare_part(c)?;
            compares.push(CompareOutcome { found, holds });
        }
        let mut failures = vec![];
        for i in &p.ops {
            let op = flat.ops.get(*i as usize).ok_or_else(missing)?;
            if let Err(e) = txn.check_op(op, &|id| leases.exists(id)) {
                failures.push((*i, e));
            }
        }
        let revision = txn.begin_revision();
        let prepared = TxnPrepared { id: p.id, groups: p.groups.clone(), revision, fenced: false };
        cross.prepare(prepared, &self.keys, txn.batch_mut());
        Ok(Applied::Prepared { revision, compares, failures })
    }

    /// Revokes `lease` if held here, deleting its keys in the commit's write
    /// txn (so at the txn's revision); whether it was held.
    fn revoke_at_commit(&self, lease: i64, txn: &mut WriteTxn<'_>, leases: &mut LeaseTable) -> bool {
        match leases.revoke(lease, txn.batch_mut()) {
            Some(keys) => {
                self.liveness.lock().revoked(lease);
                txn.delete_keys(&keys);
                true
            }
            None => false,
        }
    }

    fn commit_part(
        &self,
        c: &TxnCommit,
        txn: &mut WriteTxn<'_>,
        leases: &mut LeaseTable,
        cross: &mut CrossTxns,
    ) -> Result<Applied> {
        fail::fail_point!("apply::txn_commit");
        if !cross.may_commit(c)? {
            return Ok(Applied::Committed(None, false));
        }
        let group = self.keys.group();
        if txn.begin_revision() >= c.revision {
            // The coordinator commits above every participant's revision at
            // prepare, and the group has not moved since: a bug if not.
            tracing::error!(
                txn = c.id,
                revision = c.revision,
                group_revision = txn.begin_revision(),
                "cross-group txn committed below the group's revision"
            );
        }
        let mine = c.parts.iter().find(|p| p.group == group);
        let part = mine.and_then(|p| p.ops.clone()).unwrap_or_default();
        match txn.txn(&part, &|id| leases.exists(id)) {
            Ok(resp) => {
                let revoked = match mine.map_or(0, |p| p.revoke_lease) {
                    0 => false,
                    lease => self.revoke_at_commit(lease, txn, leases),
                };
                cross.committed(c, &self.keys, txn.batch_mut());
                Ok(Applied::Committed(Some(resp), revoked))
            }
            // Its checks passed at prepare on this same state, so this does
            // not happen; if it did, nothing of the part was written, and
            // the txn still counts as committed (other groups may have
            // committed theirs: recovery must finish them, not abort).
            Err(e) => {
                tracing::error!(txn = c.id, error = %e, "a cross-group txn's part failed at commit");
                cross.committed(c, &self.keys, txn.batch_mut());
                Ok(Applied::CommitFailed(e))
            }
        }
    }
}
