//! Consensus for one group: raft-rs `RawNode` over the engine, driven by
//! one loop (`driver`) that sees the state machine only through the
//! `StateMachine` trait and the network only through `Transport`.
//!
//! - `storage`: raft log, hard state, conf state in the engine (raft-rs `Storage`).
//! - `driver`: the one loop per group: step, tick, `handle_ready`, advance.
//! - `handle`: what the driver shares with the group's clients (mailbox,
//!   proposal waiters, queued reads, status).
//! - `transport`: raft messages between members over gRPC streams.
//! - `logger`: raft-rs's slog records into `tracing`.

pub mod driver;
mod handle;
pub mod logger;
pub mod storage;
pub mod transport;

use crate::engine::WriteBatch;
use crate::error::{Error, Result};
use raft::prelude::{ConfChangeV2, Message};
use std::time::Duration;

pub use handle::{Msg, RaftHandle, RaftStatus};

/// Who proposed an entry: its waiting client is answered when it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposer {
    pub member: u64,
    pub seq: u64,
}

/// What the driver needs of the state machine it replicates.
pub trait StateMachine: Send + Sync + 'static {
    /// What applying an entry produces for its proposer.
    type Output: Send + 'static;

    /// The index of the last entry applied (durable with the state).
    fn applied_index(&self) -> u64;

    /// Applies a committed normal entry (empty `data`: a new leader's
    /// empty entry); returns its proposer and output, if it had one.
    fn apply_entry(&self, index: u64, data: &[u8]) -> Option<(Proposer, Self::Output)>;

    /// Applies a committed conf change raft has already applied to its
    /// configuration (`accepted`: whether it took it); `batch` holds the
    /// new conf state, to be written with the applied index.
    fn apply_conf_change(
        &self,
        index: u64,
        cc: &ConfChangeV2,
        context: &[u8],
        accepted: Result<()>,
        batch: WriteBatch,
    ) -> Option<(Proposer, Self::Output)>;

    /// The output for a proposal that failed before it was applied.
    fn failed(&self, e: Error) -> Self::Output;

    /// The state at the applied index, for a member behind the log: (index, data).
    fn snapshot(&self) -> Result<(u64, Vec<u8>)>;

    /// Stages a snapshot's state into `batch` (written with the log reset),
    /// then `restored` reloads from it.
    fn stage_restore(&self, data: &[u8], batch: &mut WriteBatch) -> Result<()>;
    fn restored(&self) -> Result<()>;

    /// This member became leader (`true`) or stopped being it; `election`
    /// is the election timeout (leases are extended by it).
    fn on_leadership(&self, leader: bool, election: Duration);

    /// The members' peer URLs, if they changed since `version`: (version, [(id, url)]).
    fn peers_since(&self, version: Option<u64>) -> Option<(u64, Vec<(u64, String)>)>;
}

/// How the driver reaches other members. Sending never blocks.
pub trait Transport: Send + Sync + 'static {
    /// Queues messages of `group`; returns (peer, carried a snapshot) for
    /// every peer that cannot take them now.
    fn send(&self, group: u64, msgs: Vec<Message>) -> Vec<(u64, bool)>;
    /// Where member `id` listens.
    fn set_peer(&self, id: u64, url: String);
}
