//! The handle the gRPC layer holds for one group: proposals, linearizable
//! reads, status. The raft state machine itself runs on the group's driver
//! thread (`raft::driver`); this handle only talks to it through its mailbox.

use crate::apply::{ApplyOutput, StateMachine};
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::metrics;
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::ResponseHeader;
use tessera_proto::tessera::command::{command::Op, Command};
use tokio::sync::oneshot;

/// What the driver thread is asked to do.
pub enum Msg {
    Propose {
        seq: u64,
        data: Vec<u8>,
    },
    ProposeConfChange {
        seq: u64,
        cc: raft::prelude::ConfChangeV2,
        context: Vec<u8>,
    },
    Raft(Box<raft::prelude::Message>),
    /// Linearizable reads are waiting in `Group::reads`.
    ReadIndex,
    Unreachable(u64),
    SnapshotStatus {
        to: u64,
        ok: bool,
    },
    TransferLeader(u64),
    /// Stop the driver (clients may still hold the group).
    Stop,
}

#[derive(Clone, Debug, Default)]
pub struct RaftStatus {
    pub leader: u64,
    pub term: u64,
    pub is_leader: bool,
    pub is_learner: bool,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    /// On the leader: every member's matched log index.
    pub progress: Vec<(u64, u64)>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

pub struct GroupSettings {
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
    /// Storage quota: past it, writes that grow the store raise NOSPACE.
    pub quota_bytes: u64,
}

pub struct Group {
    pub id: u64,
    pub member_id: u64,
    pub cluster_id: u64,
    pub sm: Arc<StateMachine>,
    pub hlc: Hlc,
    pub settings: GroupSettings,
    mailbox: SyncSender<Msg>,
    waiters: Mutex<HashMap<u64, oneshot::Sender<ApplyOutput>>>,
    seq: AtomicU64,
    /// Linearizable reads not yet handed to raft (the driver batches them
    /// into one ReadIndex round).
    pub(crate) reads: Mutex<Vec<oneshot::Sender<Result<()>>>>,
    pub(crate) status: RwLock<RaftStatus>,
    /// Becomes true when this member has been removed from the group.
    pub removed: tokio::sync::watch::Sender<bool>,
}

impl Group {
    pub fn new(
        id: u64,
        member_id: u64,
        cluster_id: u64,
        sm: Arc<StateMachine>,
        hlc: Hlc,
        settings: GroupSettings,
        mailbox: SyncSender<Msg>,
    ) -> Self {
        Self {
            id,
            member_id,
            cluster_id,
            sm,
            hlc,
            settings,
            mailbox,
            waiters: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            reads: Mutex::new(vec![]),
            status: RwLock::new(RaftStatus::default()),
            removed: tokio::sync::watch::channel(false).0,
        }
    }

    /// A request to this group on another member: it names the group, as
    /// every call to a node hosting several groups must.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        shardmap::group_request(self.id, msg)
    }

    pub fn status(&self) -> RaftStatus {
        self.status.read().clone()
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader { cluster_id: self.cluster_id, member_id: self.member_id, revision, raft_term: self.status.read().term }
    }

    /// Stops the driver, waiting for room in the mailbox if need be.
    pub fn stop(&self) {
        let _ = self.mailbox.send(Msg::Stop);
    }

    pub fn send(&self, msg: Msg) -> Result<()> {
        self.mailbox.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => Error::TooManyRequests,
            TrySendError::Disconnected(_) => Error::Stopped,
        })
    }

    /// Proposes `op` through raft and waits for this member to apply it. It
    /// carries the map epoch of the call it serves (`fence::routed_epoch`).
    pub async fn propose(&self, op: Op) -> Result<ApplyOutput> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let epoch = crate::fence::routed_epoch();
        let cmd = Command { member_id: self.member_id, seq, revision_hint: self.hlc.now(), epoch, op: Some(op) };
        let data = cmd.encode_to_vec();
        // As etcd: the limit applies to the request as it goes into the log.
        if data.len() > self.settings.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(seq, tx);
        if let Err(e) = self.send(Msg::Propose { seq, data }) {
            self.waiters.lock().remove(&seq);
            return Err(e);
        }
        metrics::PROPOSALS_PENDING.inc();
        let out = tokio::time::timeout(self.settings.request_timeout, rx).await;
        metrics::PROPOSALS_PENDING.dec();
        match out {
            Ok(Ok(out)) => {
                self.hlc.observe(out.rev);
                Ok(out)
            }
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                self.waiters.lock().remove(&seq);
                metrics::PROPOSALS_FAILED.inc();
                Err(Error::Timeout)
            }
        }
    }

    /// Proposes a membership change and waits for this member to apply it.
    pub async fn propose_conf_change(
        &self,
        change: raft::prelude::ConfChangeType,
        member: tessera_proto::tessera::command::MemberContext,
    ) -> Result<ApplyOutput> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut single = raft::prelude::ConfChangeSingle::default();
        single.set_change_type(change);
        single.set_node_id(member.id);
        let mut cc = raft::prelude::ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        let context = tessera_proto::tessera::command::ConfChangeContext { member_id: self.member_id, seq, member: Some(member) }
            .encode_to_vec();
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(seq, tx);
        if let Err(e) = self.send(Msg::ProposeConfChange { seq, cc, context }) {
            self.waiters.lock().remove(&seq);
            return Err(e);
        }
        match tokio::time::timeout(self.settings.request_timeout, rx).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                self.waiters.lock().remove(&seq);
                Err(Error::Timeout)
            }
        }
    }

    /// Called by the driver when an entry this member proposed is applied.
    pub(crate) fn resolve(&self, seq: u64, out: ApplyOutput) {
        if let Some(tx) = self.waiters.lock().remove(&seq) {
            let _ = tx.send(out);
        }
    }

    pub(crate) fn fail(&self, seq: u64, e: Error) {
        if let Some(tx) = self.waiters.lock().remove(&seq) {
            let rev = self.sm.store.current_revision();
            let _ = tx.send(ApplyOutput { result: Err(e), rev });
        }
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
        if self.sm.store.size_in_use() + cost as u64 <= self.settings.quota_bytes {
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
    /// committed before the read began).
    pub fn check_fences(&self, key: &[u8], range_end: &[u8]) -> Result<()> {
        self.sm.fences.read().check_range(crate::fence::routed_epoch(), key, range_end)
    }

    /// Waits until this member has applied everything committed before the
    /// call (raft ReadIndex, no log write), so a local read is linearizable.
    pub async fn read_index(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.reads.lock().push(tx);
        // The driver may be busy; one wake-up covers every queued read.
        let _ = self.mailbox.try_send(Msg::ReadIndex);
        match tokio::time::timeout(self.settings.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }
}
