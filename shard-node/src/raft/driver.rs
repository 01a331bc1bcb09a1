//! The driving loop of one group, on a thread of its own (raft-rs's
//! five_mem_node shape): receive from the mailbox, step, tick, and
//! `handle_ready` (send, persist with fsync, apply, advance). The raft state
//! machine never waits on the network or on tokio: the transport and the
//! gRPC handlers only exchange messages with this loop.

use crate::engine::WriteBatch;
use crate::error::Error;
use crate::group::{Group, Msg};
use crate::metrics;
use crate::raft::storage::RaftStorage;
use crate::raft::transport::Transport;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, Entry, EntryType, Message, ReadState};
use raft::{RawNode, SnapshotStatus, StateRole};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub struct DriverSettings {
    pub tick: Duration,
    pub election_ticks: usize,
    /// Applied entries kept in the log before it is compacted.
    pub snapshot_count: u64,
    /// Entries kept behind a compaction for slow followers.
    pub catchup_entries: u64,
    pub request_timeout: Duration,
}

type ReadWaiters = Vec<oneshot::Sender<crate::error::Result<()>>>;

pub struct Driver {
    pub node: RawNode<RaftStorage>,
    pub storage: RaftStorage,
    pub group: Arc<Group>,
    pub mailbox: Receiver<Msg>,
    pub transport: Arc<Transport>,
    pub settings: DriverSettings,
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
}

impl Driver {
    pub fn new(
        node: RawNode<RaftStorage>,
        storage: RaftStorage,
        group: Arc<Group>,
        mailbox: Receiver<Msg>,
        transport: Arc<Transport>,
        settings: DriverSettings,
    ) -> Self {
        Self {
            node,
            storage,
            group,
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
                let _ = self.group.removed.send(true);
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
                if self.node.raft.leader_id == raft::INVALID_ID {
                    self.group.fail(seq, Error::NoLeader);
                } else if self.node.propose_conf_change(context, cc).is_err() {
                    self.group.fail(seq, Error::NoLeader);
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
        let waiters: ReadWaiters = std::mem::take(&mut *self.group.reads.lock());
        if waiters.is_empty() {
            return;
        }
        // Unique across members: the leader keys pending reads by context
        // and ignores a second request with the same one.
        let mut ctx = self.group.member_id.to_be_bytes().to_vec();
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
        let applied = self.group.sm.applied_index();
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
        for (to, snapshot) in self.transport.send(self.group.id, msgs) {
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
        self.group.sm.engine.write(batch, sync).expect("raft log write failed");
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
            let mut batch = WriteBatch::default();
            if let Err(e) = self.group.sm.stage_snapshot(snap.get_data(), &mut batch) {
                panic!("cannot install raft snapshot: {e}");
            }
            self.storage.reset_to_snapshot(&snap, &mut batch);
            self.persist(batch, true);
            if let Err(e) = self.group.sm.reload_after_snapshot() {
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
        self.persist(batch, true);
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
            let index = e.get_index();
            match e.get_entry_type() {
                EntryType::EntryNormal if e.get_data().is_empty() => self.group.sm.apply_noop(index, None),
                EntryType::EntryNormal => {
                    if let Some((member, seq, out)) = self.group.sm.apply_command(index, e.get_data()) {
                        if member == self.group.member_id {
                            self.group.resolve(seq, out);
                        }
                    }
                    metrics::PROPOSALS_APPLIED.inc();
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => self.apply_conf_change(&e),
            }
        }
    }

    fn apply_conf_change(&mut self, e: &Entry) {
        let cc: ConfChangeV2 = if e.get_entry_type() == EntryType::EntryConfChange {
            match ConfChange::parse_from_bytes(e.get_data()) {
                Ok(c) => raft_proto::ConfChangeI::into_v2(c),
                Err(err) => {
                    tracing::error!(error = %err, "undecodable conf change skipped");
                    return self.group.sm.apply_noop(e.get_index(), None);
                }
            }
        } else {
            match ConfChangeV2::parse_from_bytes(e.get_data()) {
                Ok(c) => c,
                Err(err) => {
                    tracing::error!(error = %err, "undecodable conf change skipped");
                    return self.group.sm.apply_noop(e.get_index(), None);
                }
            }
        };
        let mut batch = WriteBatch::default();
        let result = match self.node.apply_conf_change(&cc) {
            Ok(cs) => {
                self.storage.set_conf_state(&cs, &mut batch);
                let me = self.group.member_id;
                let in_group = cs.get_voters().contains(&me) || cs.get_learners().contains(&me);
                // A member that was part of the group and is no longer: removed.
                self.removed |= !in_group && cc.get_changes().iter().any(|c| c.get_node_id() == me);
                Ok(crate::apply::Applied::Done)
            }
            Err(err) => {
                tracing::warn!(error = %err, "conf change rejected");
                Err(Error::InvalidArgument(format!("conf change rejected: {err}")))
            }
        };
        let proposer = crate::membership::apply_context(&self.group.sm, &cc, e.get_context(), &mut batch);
        self.group.sm.apply_noop(e.get_index(), Some(batch));
        if let Some((member, seq)) = proposer {
            if member == self.group.member_id {
                let rev = self.group.sm.store.current_revision();
                self.group.resolve(seq, crate::apply::ApplyOutput { result, rev });
            }
        }
    }

    /// Points the transport at every member's current peer URL.
    fn refresh_peers(&mut self) {
        let members = self.group.sm.members.read();
        if self.peers_version == Some(members.version()) {
            return;
        }
        self.peers_version = Some(members.version());
        for m in members.all() {
            if let Some(url) = m.peer_urls.first() {
                self.transport.set_peer(m.id, url.clone());
            }
        }
    }

    fn maybe_compact_log(&mut self) {
        let applied = self.group.sm.applied_index();
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
        {
            let mut st = self.group.status.write();
            st.leader = leader;
            st.term = r.term;
            st.is_leader = role == StateRole::Leader;
            st.is_learner = r.prs().conf().learners().contains(&self.group.member_id);
            st.commit = r.raft_log.committed;
            st.applied = self.group.sm.applied_index();
            st.last_index = self.storage.last_log_index();
            let conf = r.prs().conf();
            st.voters = conf.voters().ids().iter().collect();
            st.learners = conf.learners().iter().copied().collect();
            st.progress = if role == StateRole::Leader {
                r.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect()
            } else {
                vec![]
            };
        }
        if role != self.role {
            metrics::IS_LEADER.set(i64::from(role == StateRole::Leader));
            let mut lessor = self.group.sm.lessor.lock();
            if role == StateRole::Leader {
                // Leases get the election on top, as etcd's Promote.
                lessor.promote(self.settings.tick * self.settings.election_ticks as u32);
            } else if self.role == StateRole::Leader {
                lessor.demote();
            }
            self.role = role;
        }
        if leader != self.leader {
            self.leader = leader;
            metrics::LEADER_CHANGES.inc();
            metrics::HAS_LEADER.set(i64::from(leader != raft::INVALID_ID));
            self.retry_dropped();
        }
    }
}

fn fail_reads(waiters: ReadWaiters, e: Error) {
    for w in waiters {
        let _ = w.send(Err(e.clone()));
    }
}
