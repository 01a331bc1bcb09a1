//! What a group's driver shares with the clients of the group: the mailbox
//! the driver reads, the waiters of proposals until their entry applies,
//! the linearizable reads queued for the next ReadIndex round, and the raft
//! status the driver publishes. Every lock here is a leaf.

use crate::error::{Error, Result};
use crate::locks::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;
use tokio::sync::oneshot;

/// What the driver is asked to do.
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
    /// Linearizable reads are waiting in the handle.
    ReadIndex,
    Unreachable(u64),
    SnapshotStatus {
        to: u64,
        ok: bool,
    },
    TransferLeader(u64),
    /// Stop the driver (clients may still hold the handle).
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
    /// On the leader: the members heard from within the last election
    /// timeout (raft's check-quorum view), itself included.
    pub active: Vec<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

pub(crate) type ReadWaiter = oneshot::Sender<Result<()>>;

pub struct RaftHandle<O> {
    pub group: u64,
    pub member: u64,
    mailbox: SyncSender<Msg>,
    waiters: Mutex<HashMap<u64, oneshot::Sender<O>>>,
    seq: AtomicU64,
    reads: Mutex<Vec<ReadWaiter>>,
    status: RwLock<RaftStatus>,
    /// Becomes true when this member has been removed from the group.
    pub removed: tokio::sync::watch::Sender<bool>,
}

impl<O> RaftHandle<O> {
    /// `first_seq`: where this start numbers its proposals (never a number
    /// an earlier start of the member used: see `replica::next_incarnation`).
    pub fn new(group: u64, member: u64, mailbox: SyncSender<Msg>, first_seq: u64) -> Self {
        Self {
            group,
            member,
            mailbox,
            waiters: Mutex::leaf("proposal waiters", HashMap::new()),
            seq: AtomicU64::new(first_seq.max(1)),
            reads: Mutex::leaf("queued reads", vec![]),
            status: RwLock::leaf("raft status", RaftStatus::default()),
            removed: tokio::sync::watch::channel(false).0,
        }
    }

    pub fn status(&self) -> RaftStatus {
        self.status.read().clone()
    }

    pub(crate) fn set_status(&self, f: impl FnOnce(&mut RaftStatus)) {
        f(&mut self.status.write());
    }

    pub fn send(&self, msg: Msg) -> Result<()> {
        self.mailbox.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => Error::TooManyRequests,
            TrySendError::Disconnected(_) => Error::Stopped,
        })
    }

    /// Stops the driver, waiting for room in the mailbox if need be.
    pub fn stop(&self) {
        let _ = self.mailbox.send(Msg::Stop);
    }

    /// A sequence number for this member's next proposal.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands `msg` (a proposal carrying `seq`) to the driver and waits up to
    /// `timeout` for this member to apply it.
    pub async fn propose(&self, seq: u64, msg: Msg, timeout: Duration) -> Result<O> {
        let applied = self.submit(seq, msg)?;
        self.wait(seq, applied, timeout).await
    }

    /// Hands `msg` (a proposal carrying `seq`) to the driver now (the
    /// mailbox keeps the order of submissions); `wait` for what it produced.
    pub fn submit(&self, seq: u64, msg: Msg) -> Result<oneshot::Receiver<O>> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(seq, tx);
        if let Err(e) = self.send(msg) {
            self.waiters.lock().remove(&seq);
            return Err(e);
        }
        Ok(rx)
    }

    /// Waits up to `timeout` for this member to apply submitted proposal `seq`.
    pub async fn wait(&self, seq: u64, applied: oneshot::Receiver<O>, timeout: Duration) -> Result<O> {
        match tokio::time::timeout(timeout, applied).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                self.waiters.lock().remove(&seq);
                Err(Error::Timeout)
            }
        }
    }

    /// Answers the waiter of proposal `seq`, if it still waits.
    pub(crate) fn resolve(&self, seq: u64, out: O) {
        let waiter = self.waiters.lock().remove(&seq);
        if let Some(tx) = waiter {
            let _ = tx.send(out);
        }
    }

    /// Whether proposal `seq` still has a waiter.
    pub(crate) fn take_waiter(&self, seq: u64) -> Option<oneshot::Sender<O>> {
        self.waiters.lock().remove(&seq)
    }

    /// Waits until this member has applied everything committed before the
    /// call (raft ReadIndex, no log write).
    pub async fn read_index(&self, timeout: Duration) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.reads.lock().push(tx);
        // The driver may be busy; one wake-up covers every queued read.
        let _ = self.mailbox.try_send(Msg::ReadIndex);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    pub(crate) fn take_reads(&self) -> Vec<ReadWaiter> {
        std::mem::take(&mut *self.reads.lock())
    }
}
