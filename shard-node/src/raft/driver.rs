//! The driving loop of one group, on a thread of its own (raft-rs's
//! five_mem_node shape): receive from the mailbox, step, tick, and
//! `handle_ready` (send, persist with fsync, apply, advance). The raft state
//! machine never waits on the network or on tokio: the transport and the
//! gRPC handlers only exchange messages with this loop.

use super::handle::ReadWaiter;
use super::{Msg, RaftHandle, StateMachine, Transport};
use crate::engine::WriteBatch;
use crate::error::Error;
use crate::metrics;
use crate::raft::storage::RaftStorage;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, Entry, EntryType, Message, ReadState};
use raft::{RawNode, SnapshotStatus, StateRole};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct DriverSettings {
    pub tick: Duration,
    pub election_ticks: usize,
    /// Applied entries kept in the log before it is compacted.
    pub snapshot_count: u64,
    /// Entries kept behind a compaction for slow followers.
    pub catchup_entries: u64,
    pub request_timeout: Duration,
}

type ReadWaiters = Vec<ReadWaiter>;

pub struct Driver<S: StateMachine> {
    node: RawNode<RaftStorage>,
    storage: RaftStorage,
    sm: Arc<S>,
    handle: Arc<RaftHandle<S::Output>>,
    mailbox: Receiver<Msg>,
    transport: Arc<dyn Transport>,
    settings: DriverSettings,
    next_read: u64,
    /// ReadIndex rounds sent to raft, by context: (waiters, tick sent).
    reads_in_flight: HashMap<Vec<u8>, (ReadWaiters, u64)>,
    /// Reads whose ReadIndex came back, waiting for apply to reach it.
    reads_waiting: Vec<(u64, ReadWaiters)>,
    /// Own proposals raft could not take yet (no leader, or a leadership
    /// transfer in progress); never appended, so safe to propose again.
    unled: Vec<(u64, Vec<u8>, Instant)>,
    /// Proposals forwarded by other members that raft dropped for the same
    /// reasons; stepped again once a leader can take them.
    parked: Vec<(Message, Instant)>,
    ticks: u64,
    role: StateRole,
    leader: u64,
    /// Members-table version the transport's peer addresses reflect.
    peers_version: Option<u64>,
    removed: bool,
    metrics: metrics::GroupMetrics,
}

impl<S: StateMachine> Driver<S> {
    pub fn new(
        node: RawNode<RaftStorage>,
        storage: RaftStorage,
        sm: Arc<S>,
        handle: Arc<RaftHandle<S::Output>>,
        mailbox: Receiver<Msg>,
        transport: Arc<dyn Transport>,
        settings: DriverSettings,
    ) -> Self {
        Self {
            metrics: metrics::GroupMetrics::new(handle.group),
            node,
            storage,
            sm,
            handle,
            mailbox,
            transport,
            settings,
            next_read: 1,
            reads_in_flight: HashMap::new(),
            reads_waiting: vec![],
            unled: vec![],
            parked: vec![],
            ticks: 0,
            role: StateRole::Follower,
            leader: 0,
            peers_version: None,
            removed: false,
        }
    }

    /// Runs until every mailbox sender is gone (the node shuts down).
    pub fn run(mut self) {
        let mut last_tick = Instant::now();
        loop {
            let wait = self.settings.tick.saturating_sub(last_tick.elapsed());
            match self.mailbox.recv_timeout(wait) {
                Ok(Msg::Stop) => break,
                Ok(msg) => {
                    self.on_msg(msg);
                    // Drain what else is queued: one ready, one fsync for all.
                    let mut stop = false;
                    for msg in self.mailbox.try_iter().take(4096).collect::<Vec<_>>() {
                        match msg {
                            Msg::Stop => stop = true,
                            msg => self.on_msg(msg),
                        }
                    }
                    if stop {
                        self.handle_ready();
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= self.settings.tick {
                last_tick = Instant::now();
                self.on_tick();
            }
            self.start_reads();
            self.handle_ready();
            if self.removed {
                tracing::warn!("this member has been removed from the group; stopping");
                self.handle.removed.send_replace(true);
                break;
            }
        }
        for (_, (waiters, _)) in self.reads_in_flight.drain() {
            fail_reads(waiters, Error::Stopped);
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Propose { seq, data } => self.propose(seq, data, Instant::now()),
            Msg::ProposeConfChange { seq, cc, context } => {
                if self.node.raft.leader_id == raft::INVALID_ID || self.node.propose_conf_change(context, cc).is_err() {
                    self.fail(seq, Error::NoLeader);
                }
            }
            Msg::Raft(m) => {
                let proposal = (m.get_msg_type() == raft::prelude::MessageType::MsgPropose).then(|| (*m).clone());
                match self.node.step(*m) {
                    Err(raft::Error::ProposalDropped) if proposal.is_some() => {
                        self.parked.push((proposal.expect("checked"), Instant::now()));
                    }
                    Err(e) => tracing::debug!(error = %e, "raft step"),
                    Ok(()) => {}
                }
            }
            Msg::ReadIndex => {}
            Msg::Unreachable(id) => self.node.report_unreachable(id),
            Msg::SnapshotStatus { to, ok } => {
                let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                self.node.report_snapshot(to, status);
            }
            Msg::TransferLeader(id) => self.node.transfer_leader(id),
            Msg::Stop => {} // handled by the loop
        }
    }

    fn can_propose(&self) -> bool {
        self.node.raft.leader_id != raft::INVALID_ID && self.node.raft.lead_transferee.is_none()
    }

    fn propose(&mut self, seq: u64, data: Vec<u8>, since: Instant) {
        // As etcd: a proposal waits for a leader (up to the request timeout)
        // instead of failing during an election or a leadership transfer.
        if !self.can_propose() {
            self.unled.push((seq, data, since));
            return;
        }
        if let Err(raft::Error::ProposalDropped) = self.node.propose(vec![], data.clone()) {
            self.unled.push((seq, data, since));
        }
    }

    /// Proposes again what raft could not take before.
    fn retry_dropped(&mut self) {
        if !self.can_propose() || (self.unled.is_empty() && self.parked.is_empty()) {
            return;
        }
        for (seq, data, since) in std::mem::take(&mut self.unled) {
            self.propose(seq, data, since);
        }
        for (m, since) in std::mem::take(&mut self.parked) {
            if let Err(raft::Error::ProposalDropped) = self.node.step(m.clone()) {
                self.parked.push((m, since));
            }
        }
    }

    fn on_tick(&mut self) {
        self.node.tick();
        self.ticks += 1;
        // A leader drops ReadIndex requests until it has committed an entry
        // of its term, and messages can be lost: ask again after 3 ticks.
        let now = self.ticks;
        let stale: Vec<Vec<u8>> =
            self.reads_in_flight.iter().filter(|(_, (_, at))| now - *at >= 3).map(|(c, _)| c.clone()).collect();
        for ctx in stale {
            if let Some(r) = self.reads_in_flight.get_mut(&ctx) {
                r.1 = now;
            }
            self.node.read_index(ctx);
        }
        let timeout = self.settings.request_timeout;
        self.unled.retain(|(_, _, since)| since.elapsed() < timeout);
        self.parked.retain(|(_, since)| since.elapsed() < timeout);
        self.retry_dropped();
    }

    fn start_reads(&mut self) {
        let waiters: ReadWaiters = self.handle.take_reads();
        if waiters.is_empty() {
            return;
        }
        // Unique across members: the leader keys pending reads by context
        // and ignores a second request with the same one.
        let mut ctx = self.handle.member.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.next_read.to_be_bytes());
        self.next_read += 1;
        self.reads_in_flight.insert(ctx.clone(), (waiters, self.ticks));
        self.node.read_index(ctx);
    }

    fn on_read_state(&mut self, rs: ReadState) {
        if let Some((waiters, _)) = self.reads_in_flight.remove(&rs.request_ctx) {
            self.reads_waiting.push((rs.index, waiters));
        }
    }

    fn resolve_reads(&mut self) {
        let applied = self.sm.applied_index();
        self.reads_waiting.retain_mut(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
            false
        });
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        for (to, snapshot) in self.transport.send(self.handle.group, msgs) {
            self.node.report_unreachable(to);
            if snapshot {
                self.node.report_snapshot(to, SnapshotStatus::Failure);
            }
        }
    }

    fn persist(&self, batch: WriteBatch, sync: bool) {
        if batch.is_empty() {
            return;
        }
        let start = Instant::now();
        // Losing the raft log would break raft's promises: stop instead.
        self.storage.write(batch, sync).expect("raft log write failed");
        if sync {
            metrics::WAL_FSYNC_SECONDS.observe(start.elapsed().as_secs_f64());
        }
    }

    /// The one place raft's output is acted on.
    fn handle_ready(&mut self) {
        if !self.node.has_ready() {
            return;
        }
        let mut ready = self.node.ready();
        // A leader may send before persisting (raft thesis 10.2.1).
        self.send(ready.take_messages());

        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            fail::fail_point!("raft::before_snapshot_install");
            let mut batch = WriteBatch::default();
            if let Err(e) = self.sm.stage_restore(snap.get_data(), &mut batch) {
                panic!("cannot install raft snapshot: {e}");
            }
            self.storage.reset_to_snapshot(&snap, &mut batch);
            self.persist(batch, true);
            fail::fail_point!("raft::after_snapshot_install");
            if let Err(e) = self.sm.restored() {
                panic!("cannot load installed snapshot: {e}");
            }
            tracing::info!(index = snap.get_metadata().get_index(), "installed snapshot");
        }

        self.apply(ready.take_committed_entries());

        let mut batch = WriteBatch::default();
        self.storage.append(ready.entries(), &mut batch);
        if let Some(hs) = ready.hs() {
            self.storage.set_hard_state(hs, &mut batch);
        }
        let persisting = !batch.is_empty();
        if persisting {
            fail::fail_point!("raft::before_persist");
        }
        self.persist(batch, true);
        if persisting {
            fail::fail_point!("raft::after_persist");
        }
        self.send(ready.take_persisted_messages());
        for rs in ready.take_read_states() {
            self.on_read_state(rs);
        }

        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut batch = WriteBatch::default();
            self.storage.set_commit(commit, &mut batch);
            // The commit index can be recomputed after a crash: no fsync.
            self.persist(batch, false);
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries());
        self.node.advance_apply();

        self.resolve_reads();
        self.maybe_compact_log();
        self.refresh_peers();
        self.update_status();
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for e in entries {
            let out = match e.get_entry_type() {
                EntryType::EntryNormal => self.sm.apply_entry(e.get_index(), e.get_data()),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => self.apply_conf_change(&e),
            };
            if let Some((proposer, out)) = out {
                if proposer.member == self.handle.member {
                    self.handle.resolve(proposer.seq, out);
                }
            }
        }
    }

    /// A proposal of this member that failed before reaching the log.
    fn fail(&self, seq: u64, e: Error) {
        if let Some(tx) = self.handle.take_waiter(seq) {
            let _ = tx.send(self.sm.failed(e));
        }
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Option<(super::Proposer, S::Output)> {
        let decoded = if e.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(e.get_data()).map(raft_proto::ConfChangeI::into_v2)
        } else {
            ConfChangeV2::parse_from_bytes(e.get_data())
        };
        let cc = match decoded {
            Ok(cc) => cc,
            Err(err) => {
                tracing::error!(error = %err, "undecodable conf change skipped");
                self.sm.apply_entry(e.get_index(), &[]);
                return None;
            }
        };
        let mut batch = WriteBatch::default();
        let accepted = match self.node.apply_conf_change(&cc) {
            Ok(cs) => {
                self.storage.set_conf_state(&cs, &mut batch);
                let me = self.handle.member;
                let in_group = cs.get_voters().contains(&me) || cs.get_learners().contains(&me);
                // A member that was part of the group and is no longer: removed.
                self.removed |= !in_group && cc.get_changes().iter().any(|c| c.get_node_id() == me);
                Ok(())
            }
            Err(err) => {
                tracing::warn!(error = %err, "conf change rejected");
                Err(Error::InvalidArgument(format!("conf change rejected: {err}")))
            }
        };
        self.sm.apply_conf_change(e.get_index(), &cc, e.get_context(), accepted, batch)
    }

    /// Points the transport at every member's current peer URL.
    fn refresh_peers(&mut self) {
        if let Some((version, peers)) = self.sm.peers_since(self.peers_version) {
            self.peers_version = Some(version);
            for (id, url) in peers {
                self.transport.set_peer(id, url);
            }
        }
    }

    fn maybe_compact_log(&mut self) {
        let applied = self.sm.applied_index();
        let first = self.storage.first_log_index();
        if applied < first + self.settings.snapshot_count + self.settings.catchup_entries {
            return;
        }
        let to = applied - self.settings.catchup_entries;
        let mut batch = WriteBatch::default();
        match self.storage.compact_to(to, &mut batch) {
            Ok(()) => {
                self.persist(batch, false);
                tracing::info!(compacted_to = to, "raft log compacted");
            }
            Err(e) => tracing::warn!(error = %e, "raft log compaction skipped"),
        }
    }

    fn update_status(&mut self) {
        let r = &self.node.raft;
        let leader = r.leader_id;
        let role = r.state;
        let me = self.handle.member;
        let applied = self.sm.applied_index();
        let last_index = self.storage.last_log_index();
        self.handle.set_status(|st| {
            st.leader = leader;
            st.term = r.term;
            st.is_leader = role == StateRole::Leader;
            st.is_learner = r.prs().conf().learners().contains(&me);
            st.commit = r.raft_log.committed;
            st.applied = applied;
            st.last_index = last_index;
            let conf = r.prs().conf();
            st.voters = conf.voters().ids().iter().collect();
            st.learners = conf.learners().iter().copied().collect();
            let leading = role == StateRole::Leader;
            st.progress = if leading { r.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect() } else { vec![] };
            st.active = if leading {
                r.prs().iter().filter(|(id, pr)| **id == me || pr.recent_active).map(|(id, _)| *id).collect()
            } else {
                vec![]
            };
        });
        let was_leader = self.role == StateRole::Leader;
        if role != self.role {
            self.role = role;
            if was_leader != (role == StateRole::Leader) {
                self.sm.on_leadership(!was_leader, self.settings.tick * self.settings.election_ticks as u32);
            }
        }
        if leader != self.leader {
            self.leader = leader;
            self.metrics.leader_changes.inc();
            self.metrics.has_leader.set(i64::from(leader != raft::INVALID_ID));
            self.retry_dropped();
        }
    }
}

fn fail_reads(waiters: ReadWaiters, e: Error) {
    for w in waiters {
        let _ = w.send(Err(e.clone()));
    }
}

#[cfg(test)]
mod tests;
