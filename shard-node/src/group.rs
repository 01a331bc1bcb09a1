//! The handle the gRPC layer holds for one group: proposals, linearizable
//! reads, status. The raft state machine itself runs on the group's driver
//! thread (`raft::driver`); this handle only talks to it through its mailbox.
//!
//! Revisions: a standalone group counts them as etcd does (+1 per write).
//! A group of a federation takes each write's revision from the
//! federation's revision oracle (a write whose revision the group passed
//! before applying it is refused and proposed again with a fresh one: no
//! two writes of the federation share a revision) and reads at the oracle's
//! current value, raising itself to it first when it is behind, so every
//! group shares one timeline (docs/architecture.md, "One revision timeline").
//! Every revision a group holds is one the oracle handed out, so an answer
//! with the group's own revision (a serializable read's) needs no call.

use crate::apply::ApplyOutput;
use crate::error::{Error, Refusal, Result};
use crate::raft::{Msg, RaftHandle, RaftStatus};
use crate::state::StateMachine;
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::ResponseHeader;
use tessera_proto::tessera::command::{command::Op, Command, RevisionBump};
use tessera_rpc::oracle::OracleClient;

pub struct GroupSettings {
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
    /// Storage quota: past it, writes that grow the store raise NOSPACE.
    pub quota_bytes: u64,
    /// How the group reaches its peers (TLS for `https://` URLs).
    pub dialer: tessera_rpc::tls::Dialer,
    /// JWT auth tokens (`--auth-token jwt,...`); None: simple tokens.
    pub jwt: Option<Arc<crate::auth::jwt::Jwt>>,
    /// etcd's --strict-reconfig-check (`server::cluster`).
    pub strict_reconfig_check: bool,
}

/// Who a write's permissions were checked for (`Command.auth_revision`,
/// `Command.forwarded`); none for the group's own proposals.
#[derive(Default)]
struct Checked {
    auth_revision: u64,
    forwarded: Option<tessera_proto::tessera::command::Forwarded>,
}

/// The revision a proposal carries (`Command.revision_hint`).
#[derive(Clone, Copy)]
enum Hint {
    /// None: a standalone group's write (+1, as etcd), or no write at all.
    None,
    /// A fresh timestamp from the oracle, taken again for each attempt: the
    /// write's own revision, unique in the federation.
    Fresh,
    /// A floor the group is raised to (a bump).
    Floor(i64),
}

pub struct Group {
    pub id: u64,
    pub member_id: u64,
    pub cluster_id: u64,
    pub sm: Arc<StateMachine>,
    /// The federation's revision oracle; None for a standalone group.
    pub oracle: Option<Arc<OracleClient>>,
    pub settings: GroupSettings,
    /// The driver's side: mailbox, proposal waiters, reads, status.
    pub raft: Arc<RaftHandle<ApplyOutput>>,
    /// One revision bump at a time; those waiting for it find it done.
    raising: tokio::sync::Mutex<()>,
    /// In a federation, on the leader: leases whose time ran out, which a
    /// router revokes on every group at once (`Shard.Stats`).
    expired_leases: tokio::sync::watch::Sender<Vec<i64>>,
}

impl Group {
    pub fn new(
        cluster_id: u64,
        sm: Arc<StateMachine>,
        oracle: Option<Arc<OracleClient>>,
        settings: GroupSettings,
        raft: Arc<RaftHandle<ApplyOutput>>,
    ) -> Self {
        let raising = tokio::sync::Mutex::new(());
        let expired_leases = tokio::sync::watch::Sender::new(vec![]);
        Self { id: raft.group, member_id: raft.member, cluster_id, sm, oracle, settings, raft, raising, expired_leases }
    }

    /// Whether the group is part of a federation (it has the oracle).
    pub fn federated(&self) -> bool {
        self.oracle.is_some()
    }

    /// See `expired_leases`.
    pub fn expired_leases(&self) -> Vec<i64> {
        self.expired_leases.borrow().clone()
    }

    pub(crate) fn set_expired_leases(&self, ids: Vec<i64>) {
        self.expired_leases.send_replace(ids);
    }

    /// A request to this group on another member: it names the group, as
    /// every call to a node hosting several groups must.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        tessera_rpc::metadata::group_request(self.id, msg)
    }

    pub fn status(&self) -> RaftStatus {
        self.raft.status()
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader { cluster_id: self.cluster_id, member_id: self.member_id, revision, raft_term: self.raft.status().term }
    }

    pub fn send(&self, msg: Msg) -> Result<()> {
        self.raft.send(msg)
    }

    /// Proposes `op` through raft and waits for this member to apply it. It
    /// carries the map epoch of the call it serves (`fence::routed_epoch`)
    /// and, in a federation, a revision from the oracle if it writes keys.
    pub async fn propose(&self, op: Op) -> Result<ApplyOutput> {
        let hint = self.hint_for(&op);
        self.propose_at(op, hint, Checked::default()).await
    }

    /// `propose` for a write whose caller's permissions were checked at
    /// auth revision `auth_revision`: refused when applied after an auth
    /// change (etcd's "revision of auth store is old"). In a federation the
    /// caller a router forwarded goes with it (`crate::auth::federation`).
    pub async fn propose_checked(&self, op: Op, auth_revision: u64) -> Result<ApplyOutput> {
        let checked = Checked { auth_revision, forwarded: crate::auth::federation::forwarded() };
        let hint = self.hint_for(&op);
        self.propose_at(op, hint, checked).await
    }

    fn hint_for(&self, op: &Op) -> Hint {
        if crate::apply::takes_own_revision(op) && self.oracle.is_some() {
            Hint::Fresh
        } else {
            Hint::None
        }
    }

    /// Raises the group's revision to at least `rev` (a bump: a raft entry
    /// with no data), so no later write lands at or below it. Concurrent
    /// raises share one bump.
    pub async fn raise_to(&self, rev: i64) -> Result<i64> {
        let current = self.sm.current_revision();
        if current >= rev {
            return Ok(current);
        }
        let _one = self.raising.lock().await;
        if self.sm.current_revision() < rev {
            // To `rev`, not further: a write this node handed a higher
            // revision may still be on its way to the log, and would be
            // passed (and proposed again).
            self.propose_at(Op::Bump(RevisionBump {}), Hint::Floor(rev), Checked::default()).await?.result?;
        }
        Ok(self.sm.current_revision())
    }

    /// The revision a linearizable read answers at, with this member caught
    /// up to it: standalone, the group's own after ReadIndex (None: read the
    /// current state); in a federation, the oracle's current value — every
    /// revision any response carried is at most it — with the group raised
    /// to it if behind, so everything at or below it is applied here and
    /// nothing later lands there.
    pub async fn read_revision(&self) -> Result<Option<i64>> {
        let Some(o) = &self.oracle else {
            self.read_index().await?;
            return Ok(None);
        };
        let rev = o.now().await?;
        self.read_index().await?;
        self.raise_to(rev).await?;
        Ok(Some(rev))
    }

    /// The revision a linearizable read at `at` (`read_revision`'s) reads
    /// now: `at`, unless a compaction passed it while the call waited (a
    /// slow ReadIndex after a leader change, a move's cutover) — then the
    /// compacted revision, which is still after every write completed before
    /// the call and applied here. A read of the current state never answers
    /// "compacted", nor misses a key whose version at `at` the compaction
    /// dropped (chaos seed 33).
    pub fn compacted_past(&self, at: Option<i64>) -> Option<i64> {
        at.map(|at| at.max(self.sm.compact_revision()))
    }

    /// Checks an explicit read or compaction revision against the group:
    /// one the federation handed out that this group has not reached is
    /// raised to (standalone, or never handed out: etcd's future-revision error).
    pub async fn reach(&self, rev: i64) -> Result<()> {
        if rev <= self.sm.current_revision() {
            return Ok(());
        }
        match &self.oracle {
            Some(o) if o.handed_out(rev).await? => self.raise_to(rev).await.map(|_| ()),
            _ => Err(Error::FutureRev),
        }
    }

    /// Proposes `op` with the revision `hint` gives it. While the group
    /// holds a cross-group txn prepared, what it would refuse waits for the
    /// txn to end first (`crate::cross`), within the request timeout — a
    /// prepare only if its coordinator asked (it prepares in group order),
    /// else the coordinator aborts and tries again. A write whose revision
    /// the group passed before applying it is proposed again with a fresh one.
    async fn propose_at(&self, op: Op, hint: Hint, checked: Checked) -> Result<ApplyOutput> {
        let started = tokio::time::Instant::now();
        let timeout = self.settings.request_timeout;
        let waits = match &op {
            Op::TxnPrepare(p) => p.wait,
            op => crate::cross::held_back(op),
        };
        let epoch = crate::fence::routed_epoch();
        let Checked { auth_revision, forwarded } = checked;
        let mut cmd =
            Command { member_id: self.member_id, seq: 0, revision_hint: 0, epoch, auth_revision, forwarded, op: Some(op) };
        let mut moves = self.sm.moves.subscribe();
        loop {
            moves.borrow_and_update();
            if waits {
                self.sm.wait_unheld(timeout.saturating_sub(started.elapsed())).await?;
            }
            // A fresh revision is outstanding until the write is in the
            // mailbox, and goes in after every lower one this node handed
            // out: the log then holds them in order (none passed by another).
            let fresh = match (hint, &self.oracle) {
                (Hint::Fresh, Some(o)) => Some((o.stamp().await?, o)),
                _ => None,
            };
            cmd.revision_hint = match (&fresh, hint) {
                (Some((s, _)), _) => s.hint,
                (None, Hint::Floor(rev)) => rev,
                _ => 0,
            };
            let seq = self.raft.next_seq();
            cmd.seq = seq;
            let data = cmd.encode_to_vec();
            // As etcd: the limit applies to the request as it goes into the log.
            if data.len() > self.settings.max_request_bytes {
                return Err(Error::RequestTooLarge);
            }
            match (&fresh, hint, &self.oracle) {
                (Some((s, o)), ..) => o.settled(s.hint - 1).await,
                // A bump goes in after the writes whose revisions it raises
                // the group past (those this node handed out).
                (None, Hint::Floor(rev), Some(o)) => o.settled(rev).await,
                _ => {}
            }
            let applied = self.raft.submit(seq, Msg::Propose { seq, data });
            drop(fresh);
            let m = &self.sm.metrics;
            m.proposals_pending.inc();
            let left = timeout.saturating_sub(started.elapsed());
            let out = match applied {
                Ok(applied) => self.raft.wait(seq, applied, left).await,
                Err(e) => Err(e),
            };
            m.proposals_pending.dec();
            if let Err(Error::Timeout) = &out {
                m.proposals_failed.inc();
            }
            match out {
                // Refused, not applied: a cross-group txn was prepared first.
                Ok(ApplyOutput { result: Err(Error::Refused(Refusal::TxnConflict { .. })), .. }) if waits => continue,
                // Refused, not applied: the group passed its revision.
                Ok(ApplyOutput { result: Err(Error::Refused(Refusal::RevisionPassed { .. })), .. })
                    if matches!(hint, Hint::Fresh) =>
                {
                    m.revisions_passed.inc();
                }
                // Refused, not applied: its prefix is in a move's cutover.
                Ok(ApplyOutput { result: Err(Error::Refused(Refusal::PrefixMoving)), .. }) => {
                    wait_for_move(&mut moves, started + timeout).await?;
                }
                out => return out,
            }
        }
    }

    /// Proposes a membership change and waits for this member to apply it.
    pub async fn propose_conf_change(
        &self,
        change: raft::prelude::ConfChangeType,
        member: tessera_proto::tessera::command::MemberContext,
    ) -> Result<ApplyOutput> {
        let seq = self.raft.next_seq();
        let mut single = raft::prelude::ConfChangeSingle::default();
        single.set_change_type(change);
        single.set_node_id(member.id);
        let mut cc = raft::prelude::ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        let context = tessera_proto::tessera::command::ConfChangeContext { member_id: self.member_id, seq, member: Some(member) }
            .encode_to_vec();
        self.raft.propose(seq, Msg::ProposeConfChange { seq, cc, context }, self.settings.request_timeout).await
    }

    /// etcd's quota check, before proposing a write that grows the store:
    /// refuses it while NOSPACE is raised, and raises NOSPACE (through raft,
    /// so every member refuses) when the store would pass the quota.
    pub fn check_quota(self: &Arc<Self>, cost: usize) -> Result<()> {
        use tessera_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
        if self.sm.has_alarm(AlarmType::Corrupt) {
            return Err(Error::Corrupt);
        }
        if self.sm.has_alarm(AlarmType::Nospace) {
            return Err(Error::NoSpace);
        }
        if self.sm.size_in_use() + cost as u64 <= self.settings.quota_bytes {
            return Ok(());
        }
        tracing::warn!(quota = self.settings.quota_bytes, "storage quota exceeded: raising NOSPACE");
        let g = self.clone();
        tokio::spawn(async move {
            let req =
                AlarmRequest { action: AlarmAction::Activate as i32, member_id: g.member_id, alarm: AlarmType::Nospace as i32 };
            let _ = g.propose(Op::Alarm(req)).await;
        });
        Err(Error::NoSpace)
    }

    /// A member marked CORRUPT serves no reads (its data diverged).
    pub fn check_readable(&self) -> Result<()> {
        use tessera_proto::etcdserverpb::AlarmType;
        let me = self.member_id;
        if self.sm.alarms().iter().any(|a| a.alarm == AlarmType::Corrupt as i32 && a.member_id == me) {
            return Err(Error::Corrupt);
        }
        Ok(())
    }

    /// Refuses a read of `[key, range_end)` under a fence newer than the
    /// call's map epoch (after `read_index`, so it sees every fence
    /// committed before the read began); waits while a move holds it.
    pub async fn check_fences(&self, key: &[u8], range_end: &[u8]) -> Result<()> {
        let epoch = crate::fence::routed_epoch();
        self.settled(|| self.sm.check_fences(epoch, key, range_end)).await
    }

    /// Runs `f` again each time a move changes while it answers that its
    /// prefix is in a move's cutover (`PrefixMoving`), within the request
    /// timeout: the cutover ends within it, and the caller never sees it.
    pub async fn settled<T>(&self, f: impl Fn() -> Result<T>) -> Result<T> {
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        let mut moves = self.sm.moves.subscribe();
        loop {
            moves.borrow_and_update();
            match f() {
                Err(Error::Refused(Refusal::PrefixMoving)) => wait_for_move(&mut moves, deadline).await?,
                other => return other,
            }
        }
    }

    /// Waits until this member has applied everything committed before the
    /// call (raft ReadIndex, no log write), so a local read is linearizable.
    pub async fn read_index(&self) -> Result<()> {
        self.raft.read_index(self.settings.request_timeout).await
    }

    /// Stops the driver, waiting for room in the mailbox if need be.
    pub fn stop(&self) {
        self.raft.stop();
    }
}

/// Waits for the group's fences or moves to change; still held at the
/// deadline, the call is answered `PrefixMoving` (the client tries again).
async fn wait_for_move(moves: &mut tokio::sync::watch::Receiver<u64>, deadline: tokio::time::Instant) -> Result<()> {
    match tokio::time::timeout_at(deadline, moves.changed()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Error::Stopped),
        Err(_) => Err(Refusal::PrefixMoving.into()),
    }
}
