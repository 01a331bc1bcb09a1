//! Applying committed raft entries to a group's state (`crate::state`).
//!
//! Each normal entry is one `Command` and becomes one engine batch holding
//! its MVCC values, lease changes, meta and the applied index, so a crash
//! leaves either all or none of an entry (replay restarts after the last
//! applied one). The batch is written before the state lock is released,
//! so no reader sees an index entry whose value is not in the engine yet.
//! Locks: the state lock (exclusive), then the lease clock (a grant starts
//! it); the watch hub is published to after the state lock is released.

use crate::auth::AuthApplied;
use crate::engine::WriteBatch;
use crate::error::{Error, Refusal, Result};
use crate::membership;
use crate::mvcc::WriteTxn;
use crate::raft::{Proposer, StateMachine as RaftStateMachine};
use crate::state::{StateMachine, Tables, META_ALARMS, META_APPLIED, META_AUTH};
use prost::Message;
use raft::prelude::ConfChangeV2;
use std::time::Duration;
use tessera_proto::etcdserverpb::alarm_request::AlarmAction;
use tessera_proto::etcdserverpb::request_op::Request;
use tessera_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DeleteRangeResponse, PutResponse, TxnRequest, TxnResponse,
};
use tessera_proto::tessera::command::{command::Op, move_target::Action as MoveAction, Command, Fence};
use tessera_proto::tessera::shard::CompareOutcome;

/// What applying a command produced, for the client that proposed it.
#[derive(Debug)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// The alarms an Alarm request changed.
    Alarms(Vec<AlarmMember>),
    /// A cross-group txn prepared here: its compares' outcomes on this
    /// group and the failures of its ops' checks.
    Prepared {
        revision: i64,
        compares: Vec<CompareOutcome>,
        failures: Vec<(u32, Error)>,
    },
    /// A cross-group txn's part committed here (None: it had before), and
    /// whether it revoked a lease held here.
    Committed(Option<TxnResponse>, bool),
    /// A cross-group txn's part could not run at commit (nothing of it
    /// was written; the txn counts as committed here all the same, as the
    /// other groups may have committed theirs).
    CommitFailed(Error),
    /// What ending (aborting, fencing) a cross-group txn here found.
    Ended(crate::cross::Ended),
    /// A move's target staged entries: live keys staged under the prefix,
    /// and the group's bytes in use.
    Staged {
        keys: i64,
        bytes: u64,
        /// `moves::live_digest` of the staged keys, when asked for (else 0).
        digest: u64,
    },
    /// A move's source released the prefix: live keys it gave away.
    Released {
        keys: i64,
    },
    /// An auth change applied (the store's revision after it).
    Auth(crate::auth::AuthApplied),
    Done,
}

#[derive(Debug)]
pub struct ApplyOutput {
    pub result: Result<Applied>,
    /// The group's revision after the entry.
    pub rev: i64,
}

/// The data writes whose permissions were checked against the auth store
/// when they were proposed.
fn checked_by_auth(op: &Op) -> bool {
    matches!(op, Op::Put(_) | Op::DeleteRange(_) | Op::Txn(_) | Op::LeaseRevoke(_) | Op::TxnPrepare(_))
}

/// What auth refuses of `cmd` when applied: a write checked before a
/// change of the group's own store, or (in a federation) before the
/// federation's store the group logged, or not permitted by it.
fn auth_refusal(t: &Tables, cmd: &Command, op: &Op) -> Option<Error> {
    if !checked_by_auth(op) {
        return None;
    }
    t.auth.stale(cmd.auth_revision).or_else(|| crate::auth::federation::refusal(&t.federation_auth, cmd.forwarded.as_ref(), op))
}

/// etcd's capped applier: what an active alarm refuses.
fn refused(alarms: &[AlarmMember], op: &Op) -> Option<Error> {
    let has = |t: AlarmType| alarms.iter().any(|a| a.alarm == t as i32);
    // A cross-group txn is refused at prepare (so on every group, as the
    // coordinator aborts it); its commit must go through once prepared.
    let writes = matches!(
        op,
        Op::Put(_)
            | Op::DeleteRange(_)
            | Op::Txn(_)
            | Op::LeaseGrant(_)
            | Op::LeaseRevoke(_)
            | Op::Compact(_)
            | Op::TxnPrepare(_)
    );
    if writes && has(AlarmType::Corrupt) {
        return Some(Error::Corrupt);
    }
    let grows = match op {
        Op::Put(_) | Op::LeaseGrant(_) => true,
        Op::Txn(t) => txn_has_put(t),
        // As etcd refuses a whole txn with a put, wherever its keys are.
        Op::TxnPrepare(p) => p.request.as_ref().is_some_and(txn_has_put),
        _ => false,
    };
    (grows && has(AlarmType::Nospace)).then_some(Error::NoSpace)
}

/// A federated write whose revision hint the group has passed takes no
/// revision: the next one (`prev + 1`) may be one the oracle handed to a
/// write of another group, and etcd gives every write its own revision. Its
/// proposer takes a fresh hint and proposes it again (`Group::propose_at`).
/// A bump's hint is a floor, not a revision of its own: never refused.
fn revision_passed(cmd: &Command, rev: i64) -> Option<Error> {
    let own = cmd.op.as_ref().is_some_and(takes_own_revision);
    (own && cmd.revision_hint > 0 && cmd.revision_hint <= rev).then_some(Refusal::RevisionPassed { current: rev }.into())
}

/// A store at the last revision takes no more commands (the next revision
/// would overflow). Reached only through a corrupted log or a hint no
/// oracle hands out (i64::MAX): refused, never a panic or a revision
/// written twice.
fn revisions_exhausted(rev: i64) -> Option<Error> {
    (rev == i64::MAX).then(|| Error::Internal("revision space exhausted".into()))
}

/// The commands that write at a revision of their own: in a federation,
/// a fresh timestamp of the oracle (`Group::propose_checked`).
pub(crate) fn takes_own_revision(op: &Op) -> bool {
    matches!(op, Op::Put(_) | Op::DeleteRange(_) | Op::Txn(_) | Op::LeaseRevoke(_) | Op::Fence(_))
}

impl StateMachine {
    fn mark_applied(&self, index: u64, batch: &mut WriteBatch) {
        batch.put(self.keys.meta(META_APPLIED), index.to_be_bytes().to_vec());
    }

    fn commit(&self, index: u64, batch: WriteBatch) {
        fail::fail_point!("apply::before_commit");
        // A failed engine write leaves memory ahead of disk: stop, as etcd does.
        self.engine.write(batch, false).expect("state machine write failed");
        fail::fail_point!("apply::after_commit");
        self.set_applied(index);
    }

    /// An entry with no command (a new leader's empty entry, a conf change).
    pub fn apply_noop(&self, index: u64, batch: Option<WriteBatch>) {
        let mut batch = batch.unwrap_or_default();
        self.mark_applied(index, &mut batch);
        self.commit(index, batch);
    }

    /// Applies `op` as entry `index`, proposed by member 1 (its seq the
    /// index) with `hint` and `epoch`: the state machine tests' one way in.
    #[cfg(test)]
    pub(crate) fn apply_test_entry(&self, index: u64, op: Op, hint: i64, epoch: u64) -> (Proposer, ApplyOutput) {
        let cmd =
            Command { member_id: 1, seq: index, revision_hint: hint, epoch, auth_revision: 0, forwarded: None, op: Some(op) };
        self.apply_command(index, &cmd.encode_to_vec()).unwrap()
    }

    /// Applies a normal entry; returns who proposed it and what it produced.
    pub fn apply_command(&self, index: u64, data: &[u8]) -> Option<(Proposer, ApplyOutput)> {
        let cmd = match Command::decode(data) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(index, error = %e, "undecodable raft entry skipped");
                self.apply_noop(index, None);
                return None;
            }
        };
        let proposer = Proposer { member: cmd.member_id, seq: cmd.seq };
        let Some(op) = &cmd.op else {
            self.apply_noop(index, None);
            return Some((proposer, ApplyOutput { result: Ok(Applied::Done), rev: self.current_revision() }));
        };
        let (result, rev) = {
            let mut guard = self.tables.write();
            let t = &mut *guard;
            let refusal = refused(&t.alarms, op)
                .or_else(|| t.fences.check_op(cmd.epoch, op).err())
                .or_else(|| t.cross.check_op(op).err())
                .or_else(|| auth_refusal(t, &cmd, op))
                .or_else(|| revision_passed(&cmd, t.mvcc.rev))
                .or_else(|| revisions_exhausted(t.mvcc.rev));
            if let Op::Compact(c) = op {
                let mut batch = WriteBatch::default();
                let result = match refusal {
                    Some(e) => Err(e),
                    None => compact(&mut t.mvcc, c.revision),
                };
                self.store.write_meta(&mut batch, &t.mvcc);
                self.mark_applied(index, &mut batch);
                self.commit(index, batch);
                let rev = t.mvcc.rev;
                drop(guard);
                if result.is_ok() {
                    self.compaction.notify_one();
                }
                return Some((proposer, ApplyOutput { result, rev }));
            }
            if let Op::FederationAuth(state) = op {
                // Changes no key: no revision. An older store than the one
                // logged (a router's late install) changes nothing.
                let mut batch = WriteBatch::default();
                let result = match refusal {
                    Some(e) => Err(e),
                    None => {
                        if state.revision > t.federation_auth.revision() {
                            t.federation_auth = crate::auth::AuthStore::from_state(state.clone());
                            let key = self.keys.meta(crate::auth::federation::META_FEDERATION_AUTH);
                            batch.put(key, state.encode_to_vec());
                        }
                        Ok(Applied::Done)
                    }
                };
                self.mark_applied(index, &mut batch);
                self.commit(index, batch);
                let rev = t.mvcc.rev;
                return Some((proposer, ApplyOutput { result, rev }));
            }
            if let Op::Auth(change) = op {
                // The auth store changes no key: no revision.
                let mut batch = WriteBatch::default();
                let result = match refusal {
                    Some(e) => Err(e),
                    None => t.auth.apply(change),
                };
                match &result {
                    Ok(AuthApplied::Token { name, token }) => self.tokens.lock().insert(token.clone(), name.clone()),
                    Ok(changed) => {
                        if let AuthApplied::UserChanged(user) = changed {
                            self.tokens.lock().invalidate_user(user);
                        }
                        batch.put(self.keys.meta(META_AUTH), t.auth.to_state().encode_to_vec());
                        self.set_auth_gate(&t.auth);
                    }
                    Err(_) => {}
                }
                self.mark_applied(index, &mut batch);
                self.commit(index, batch);
                let rev = t.mvcc.rev;
                return Some((proposer, ApplyOutput { result: result.map(Applied::Auth), rev }));
            }
            if matches!(op, Op::MoveStage(_) | Op::MoveTarget(_) | Op::MoveRelease(_)) {
                match op {
                    Op::MoveStage(_) => {
                        fail::fail_point!("apply::move_stage");
                    }
                    Op::MoveTarget(m) if m.action == MoveAction::Adopt as i32 => {
                        fail::fail_point!("apply::move_adopt");
                    }
                    Op::MoveRelease(_) => {
                        fail::fail_point!("apply::move_release");
                    }
                    _ => {}
                }
                let compact_before = t.mvcc.compact_rev;
                let mut batch = WriteBatch::default();
                let result = match (refusal, op) {
                    (Some(e), _) => Err(e),
                    (None, Op::MoveStage(s)) => self.apply_stage(t, s, &mut batch),
                    (None, Op::MoveTarget(m)) => self.apply_target(t, m, &mut batch),
                    (None, Op::MoveRelease(r)) => self.apply_release(t, r, &mut batch),
                    _ => unreachable!(),
                };
                // Written whatever the result: a step checks before it
                // changes anything, and what it changed is in the batch.
                self.mark_applied(index, &mut batch);
                self.commit(index, batch);
                let rev = t.mvcc.rev;
                let adopted = matches!(op, Op::MoveTarget(m) if m.action == MoveAction::Adopt as i32) && result.is_ok();
                if adopted {
                    // The ring does not hold the history an adoption brought
                    // (below the group's revision, whether or not it was raised):
                    // watchers read it from the store.
                    self.hub.reset(rev);
                }
                let compacted = t.mvcc.compact_rev != compact_before;
                drop(guard);
                self.moves_changed();
                if compacted {
                    self.compaction.notify_one();
                }
                return Some((proposer, ApplyOutput { result, rev }));
            }
            let hint = match op {
                Op::TxnCommit(c) => c.revision,
                _ => cmd.revision_hint,
            };
            let mut txn = WriteTxn::begin(&self.store, &mut t.mvcc, hint);
            let result = match refusal {
                Some(e) => Err(e),
                None if matches!(op, Op::TxnPrepare(_) | Op::TxnCommit(_) | Op::TxnAbort(_)) => {
                    self.apply_cross(op, cmd.epoch, &mut txn, &mut t.leases, &mut t.cross, &t.fences)
                }
                None => self.apply_op(op, &mut txn, &mut t.leases, &mut t.members, &mut t.alarms, &mut t.fences, &mut t.oracle),
            };
            let (result, events, mut batch) = match result {
                Ok(applied) => {
                    let out = txn.finish();
                    for m in &out.lease_moves {
                        t.leases.move_key(&m.key, m.from, m.to);
                    }
                    (Ok(applied), out.events, out.batch)
                }
                Err(e) => {
                    drop(txn); // undoes its index changes
                    (Err(e), vec![], WriteBatch::default())
                }
            };
            self.mark_applied(index, &mut batch);
            // Still under the state lock: values land before readers can
            // see the index entries that point at them, and the watch hub
            // knows the revision before any reader can answer it (as etcd
            // notifies watchers before a write txn ends): a progress answer
            // after a read must not be below the read's revision.
            self.commit(index, batch);
            let rev = t.mvcc.rev;
            self.load.wrote(&events);
            self.hub.publish(rev, events);
            // Only these change what the group holds (waiting writers watch it).
            if matches!(op, Op::TxnPrepare(_) | Op::TxnCommit(_) | Op::TxnAbort(_)) {
                self.cross_holder.send_replace(t.cross.prepared().map(|p| p.id));
            }
            (result, rev)
        };
        Some((proposer, ApplyOutput { result, rev }))
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_op(
        &self,
        op: &Op,
        txn: &mut WriteTxn<'_>,
        leases: &mut crate::lease::LeaseTable,
        members: &mut crate::members::Members,
        alarms: &mut Vec<AlarmMember>,
        fences: &mut crate::fence::Fences,
        oracle: &mut crate::oracle::Reservation,
    ) -> Result<Applied> {
        match op {
            Op::Put(p) if p.lease != 0 && !leases.exists(p.lease) => Err(Error::LeaseNotFound),
            Op::Put(p) => txn.put(p).map(Applied::Put),
            Op::DeleteRange(d) => txn.delete_range(d).map(Applied::DeleteRange),
            Op::Txn(t) => txn.txn(t, &|id| leases.exists(id)).map(Applied::Txn),
            Op::LeaseGrant(g) if leases.exists(g.id) => Err(Error::LeaseExist),
            Op::LeaseGrant(g) => {
                leases.grant(g.id, g.ttl, txn.batch_mut());
                self.liveness.lock().granted(g.id, g.ttl);
                Ok(Applied::LeaseGrant { id: g.id, ttl: g.ttl })
            }
            Op::LeaseRevoke(r) => match leases.revoke(r.id, txn.batch_mut()) {
                Some(keys) => {
                    self.liveness.lock().revoked(r.id);
                    txn.delete_keys(&keys);
                    Ok(Applied::Done)
                }
                None => Err(Error::LeaseNotFound),
            },
            Op::LeaseCheckpoint(c) => {
                for cp in &c.checkpoints {
                    leases.checkpoint(cp.id, cp.remaining_ttl, txn.batch_mut());
                }
                Ok(Applied::Done)
            }
            // Raised to its hint when the txn finishes.
            Op::Bump(_) => Ok(Applied::Done),
            Op::Publish(m) => {
                if let Some(mut cur) = members.get(m.id).cloned() {
                    cur.name = m.name.clone();
                    cur.client_urls = m.client_urls.clone();
                    members.upsert(cur, &self.keys, txn.batch_mut());
                }
                Ok(Applied::Done)
            }
            Op::UpdateMember(m) => match members.get(m.id).cloned() {
                Some(mut cur) => {
                    cur.peer_urls = m.peer_urls.clone();
                    members.upsert(cur, &self.keys, txn.batch_mut());
                    Ok(Applied::Done)
                }
                None => Err(Error::MemberNotFound),
            },
            Op::Alarm(a) => Ok(self.apply_alarm(alarms, a, txn.batch_mut())),
            Op::Fence(f) => {
                fail::fail_point!("apply::fence");
                let f = Fence { revision: txn.begin_revision(), ..f.clone() };
                fences.raise(&f, &self.keys, txn.batch_mut());
                self.moves_changed();
                // Also a revision bump (to its hint, when the txn finishes):
                // it wakes the watches the fence ends.
                Ok(Applied::Done)
            }
            Op::OracleLimit(l) => {
                oracle.raise_limit(l.limit, &self.keys, txn.batch_mut());
                Ok(Applied::Done)
            }
            // Applied above, outside a txn.
            Op::Compact(_) | Op::MoveStage(_) | Op::MoveTarget(_) | Op::MoveRelease(_) | Op::Auth(_) | Op::FederationAuth(_) => {
                Ok(Applied::Done)
            }
            Op::TxnPrepare(_) | Op::TxnCommit(_) | Op::TxnAbort(_) => unreachable!("applied by apply_cross"),
        }
    }

    fn apply_alarm(&self, alarms: &mut Vec<AlarmMember>, r: &AlarmRequest, batch: &mut WriteBatch) -> Applied {
        let changed = AlarmMember { member_id: r.member_id, alarm: r.alarm };
        match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Activate) if r.alarm != AlarmType::None as i32 => {
                if !alarms.contains(&changed) {
                    alarms.push(changed);
                }
            }
            Ok(AlarmAction::Deactivate) => alarms.retain(|a| *a != changed),
            _ => return Applied::Alarms(vec![]),
        }
        batch.put(self.keys.meta(META_ALARMS), AlarmResponse { header: None, alarms: alarms.clone() }.encode_to_vec());
        Applied::Alarms(vec![changed])
    }

    /// Applies the member-table side of a committed conf change (raft has
    /// changed its configuration already; `accepted` says whether it took it).
    pub fn apply_membership(
        &self,
        index: u64,
        cc: &ConfChangeV2,
        context: &[u8],
        accepted: Result<()>,
        mut batch: WriteBatch,
    ) -> Option<(Proposer, ApplyOutput)> {
        let proposer = {
            let mut t = self.tables.write();
            membership::apply_context(&mut t.members, &self.keys, cc, context, &mut batch)
        };
        self.apply_noop(index, Some(batch));
        let result = accepted.map(|()| Applied::Done);
        proposer.map(|p| (p, ApplyOutput { result, rev: self.current_revision() }))
    }
}

/// A compaction applies in O(1): reads below `at` are refused from now on
/// (the same on every member, ordered in the log); the history itself is
/// removed in the background in bounded steps (`compactor.rs`), so the
/// applier never stalls on a large store.
fn compact(st: &mut crate::mvcc::State, at: i64) -> Result<Applied> {
    if at <= st.compact_rev {
        return Err(Error::Compacted);
    }
    if at > st.rev {
        return Err(Error::FutureRev);
    }
    st.compact_rev = at;
    Ok(Applied::Done)
}

impl RaftStateMachine for StateMachine {
    type Output = ApplyOutput;

    fn applied_index(&self) -> u64 {
        StateMachine::applied_index(self)
    }

    fn apply_entry(&self, index: u64, data: &[u8]) -> Option<(Proposer, ApplyOutput)> {
        if data.is_empty() {
            self.apply_noop(index, None);
            return None;
        }
        self.metrics.proposals_applied.inc();
        self.apply_command(index, data)
    }

    fn apply_conf_change(
        &self,
        index: u64,
        cc: &ConfChangeV2,
        context: &[u8],
        accepted: Result<()>,
        batch: WriteBatch,
    ) -> Option<(Proposer, ApplyOutput)> {
        self.apply_membership(index, cc, context, accepted, batch)
    }

    fn failed(&self, e: Error) -> ApplyOutput {
        ApplyOutput { result: Err(e), rev: self.current_revision() }
    }

    fn snapshot(&self) -> Result<(u64, Vec<u8>)> {
        let data = crate::snapshot::encode_state(self.engine.as_ref(), &self.keys)?;
        Ok((self.applied_index(), data))
    }

    fn stage_restore(&self, data: &[u8], batch: &mut WriteBatch) -> Result<()> {
        self.stage_snapshot(data, batch)
    }

    fn restored(&self) -> Result<()> {
        self.reload()
    }

    fn on_leadership(&self, leader: bool, election: Duration) {
        self.metrics.is_leader.set(i64::from(leader));
        // Leases get the election on top, as etcd's lessor Promote.
        self.set_lease_primary(leader, election);
    }

    fn peers_since(&self, version: Option<u64>) -> Option<(u64, Vec<(u64, String)>)> {
        let t = self.tables.read();
        let m = &t.members;
        if version == Some(m.version()) {
            return None;
        }
        Some((m.version(), m.all().filter_map(|x| x.peer_urls.first().map(|u| (x.id, u.clone()))).collect()))
    }
}

/// Whether a txn can write a put in any branch (what a space quota refuses).
pub fn txn_has_put(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Request::RequestPut(_)) => true,
        Some(Request::RequestTxn(t)) => txn_has_put(t),
        _ => false,
    })
}

mod cross;

#[cfg(test)]
mod tests;
