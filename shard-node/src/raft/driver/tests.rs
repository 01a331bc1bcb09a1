//! The driver with a fake state machine and an in-memory network: three
//! (or four) drivers on their own threads, as on three nodes, talking
//! through mailboxes. Checks what the driver promises its group: one
//! applied order everywhere, proposals answered once applied, ReadIndex,
//! progress through a leader's isolation, snapshots for a member that
//! joins behind the log, and a removed member stopping itself.

use super::*;
use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, MemoryEngine};
use crate::error::Result;
use crate::locks::Mutex;
use crate::raft::storage::INIT_INDEX;
use crate::raft::Proposer;
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfState};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;

/// Applied entries, in order; a snapshot is the list itself.
struct FakeSm {
    applied: AtomicU64,
    log: Mutex<Vec<Vec<u8>>>,
    leader: AtomicBool,
}

impl FakeSm {
    fn new() -> Self {
        FakeSm { applied: AtomicU64::new(INIT_INDEX), log: Mutex::leaf("fake log", vec![]), leader: AtomicBool::new(false) }
    }
    fn log(&self) -> Vec<Vec<u8>> {
        self.log.lock().clone()
    }
}

fn proposer_of(data: &[u8]) -> Option<Proposer> {
    // Test entries are "member:seq:payload".
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.splitn(3, ':');
    Some(Proposer { member: parts.next()?.parse().ok()?, seq: parts.next()?.parse().ok()? })
}

impl StateMachine for FakeSm {
    type Output = u64;

    fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    fn apply_entry(&self, index: u64, data: &[u8]) -> Option<(Proposer, u64)> {
        if !data.is_empty() {
            self.log.lock().push(data.to_vec());
        }
        self.applied.store(index, Ordering::SeqCst);
        proposer_of(data).map(|p| (p, index))
    }

    fn apply_conf_change(
        &self,
        index: u64,
        _: &ConfChangeV2,
        context: &[u8],
        _: Result<()>,
        _: WriteBatch,
    ) -> Option<(Proposer, u64)> {
        self.applied.store(index, Ordering::SeqCst);
        proposer_of(context).map(|p| (p, index))
    }

    fn failed(&self, _: Error) -> u64 {
        0
    }

    fn snapshot(&self) -> Result<(u64, Vec<u8>)> {
        let log = self.log();
        Ok((self.applied_index(), log.join(&b'\n')))
    }

    fn stage_restore(&self, data: &[u8], _: &mut WriteBatch) -> Result<()> {
        *self.log.lock() = data.split(|b| *b == b'\n').filter(|e| !e.is_empty()).map(<[u8]>::to_vec).collect();
        Ok(())
    }

    fn restored(&self) -> Result<()> {
        Ok(())
    }

    fn on_leadership(&self, leader: bool, _: Duration) {
        self.leader.store(leader, Ordering::SeqCst);
    }

    fn peers_since(&self, _: Option<u64>) -> Option<(u64, Vec<(u64, String)>)> {
        None
    }
}

/// Mailboxes by member id; `cut` members neither send nor receive.
struct MemNet {
    boxes: Mutex<HashMap<u64, SyncSender<Msg>>>,
    cut: Mutex<BTreeSet<u64>>,
}

impl MemNet {
    fn new() -> Arc<Self> {
        Arc::new(MemNet { boxes: Mutex::leaf("net boxes", HashMap::new()), cut: Mutex::leaf("net cut", BTreeSet::new()) })
    }
}

impl Transport for MemNet {
    fn send(&self, _group: u64, msgs: Vec<Message>) -> Vec<(u64, bool)> {
        let mut failed = vec![];
        for m in msgs {
            let (from, to) = (m.get_from(), m.get_to());
            let cut = {
                let c = self.cut.lock();
                c.contains(&from) || c.contains(&to)
            };
            let mb = self.boxes.lock().get(&to).cloned();
            match mb {
                Some(mb) if !cut => {
                    let _ = mb.try_send(Msg::Raft(Box::new(m)));
                }
                _ => failed.push((to, m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot)),
            }
        }
        failed
    }

    fn set_peer(&self, _: u64, _: String) {}
}

struct Member {
    sm: Arc<FakeSm>,
    handle: Arc<RaftHandle<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn settings() -> DriverSettings {
    DriverSettings {
        tick: Duration::from_millis(10),
        election_ticks: 10,
        snapshot_count: 20,
        catchup_entries: 5,
        request_timeout: Duration::from_secs(5),
    }
}

/// Starts member `id`; `voters` bootstraps a new group, empty joins one.
fn start(net: &Arc<MemNet>, id: u64, voters: &[u64]) -> Member {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
    let keys = GroupKeys::new(1);
    let sm = Arc::new(FakeSm::new());
    let storage = RaftStorage::open(engine.clone(), keys, sm.clone()).unwrap();
    if voters.is_empty() {
        sm.applied.store(0, Ordering::SeqCst);
    } else {
        let mut cs = ConfState::default();
        cs.set_voters(voters.to_vec());
        let mut batch = WriteBatch::default();
        storage.bootstrap(&cs, &mut batch);
        engine.write(batch, true).unwrap();
    }
    let s = settings();
    let cfg = raft::Config {
        id,
        election_tick: s.election_ticks,
        heartbeat_tick: 1,
        applied: sm.applied_index(),
        check_quorum: true,
        pre_vote: true,
        read_only_option: raft::ReadOnlyOption::Safe,
        ..Default::default()
    };
    let node = RawNode::new(&cfg, storage.clone(), &crate::raft::logger::logger(1, id)).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1024);
    net.boxes.lock().insert(id, tx.clone());
    let handle = Arc::new(RaftHandle::new(1, id, tx, 1));
    let driver = Driver::new(node, storage, sm.clone(), handle.clone(), rx, net.clone(), s);
    let thread = std::thread::spawn(move || driver.run());
    Member { sm, handle, thread: Some(thread) }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn leader(members: &HashMap<u64, Member>) -> u64 {
    let mut found = 0;
    wait_for("a leader", || {
        found = members.iter().find(|(_, m)| m.handle.status().is_leader).map_or(0, |(id, _)| *id);
        found != 0 && members.values().all(|m| m.handle.status().leader == found || m.handle.status().leader == 0)
    });
    found
}

fn propose(m: &Member, payload: &str) -> u64 {
    let seq = m.handle.next_seq();
    let data = format!("{}:{seq}:{payload}", m.handle.member).into_bytes();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(m.handle.propose(seq, Msg::Propose { seq, data }, Duration::from_secs(5))).unwrap()
}

fn three(net: &Arc<MemNet>) -> HashMap<u64, Member> {
    (1..=3).map(|id| (id, start(net, id, &[1, 2, 3]))).collect()
}

#[test]
fn proposals_through_any_member_apply_in_one_order_everywhere() {
    let net = MemNet::new();
    let members = three(&net);
    let l = leader(&members);
    assert!(members[&l].sm.leader.load(Ordering::SeqCst), "the state machine was told");
    for i in 0..30 {
        let via = &members[&(1 + i % 3)];
        let index = propose(via, &format!("e{i}"));
        assert!(index > INIT_INDEX, "answered with the index it applied at");
        assert!(via.sm.applied_index() >= index, "answered only once applied here");
    }
    // The last proposal's member answered once it applied it; the leader
    // may apply it a moment later.
    wait_for("the leader to apply everything", || members[&l].sm.log().len() == 30);
    let reference = members[&l].sm.log();
    for m in members.values() {
        wait_for("every member to apply everything", || m.sm.log().len() == 30);
        assert_eq!(m.sm.log(), reference);
    }
}

#[test]
fn a_read_index_waits_for_what_was_committed_before_it() {
    let net = MemNet::new();
    let members = three(&net);
    let l = leader(&members);
    let follower = members.values().find(|m| m.handle.member != l).unwrap();
    propose(&members[&l], "before");
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(follower.handle.read_index(Duration::from_secs(5))).unwrap();
    assert!(follower.sm.log().iter().any(|e| e.ends_with(b"before")), "a read after the write sees it");
}

#[test]
fn an_isolated_leader_is_replaced_and_writes_go_on() {
    let net = MemNet::new();
    let members = three(&net);
    let old = leader(&members);
    propose(&members[&old], "first");
    net.cut.lock().insert(old);
    let rest: HashMap<u64, &Member> = members.iter().filter(|(id, _)| **id != old).map(|(id, m)| (*id, m)).collect();
    let mut new = 0;
    wait_for("a new leader among the others", || {
        new = rest.iter().find(|(_, m)| m.handle.status().is_leader).map_or(0, |(id, _)| *id);
        new != 0
    });
    propose(rest[&new], "second");
    net.cut.lock().clear();
    wait_for("the old leader to catch up", || members[&old].sm.log().len() == 2);
    assert_eq!(members[&old].sm.log(), members[&new].sm.log());
    assert!(!members[&old].handle.status().is_leader);
}

#[test]
fn a_member_joining_behind_a_compacted_log_gets_a_snapshot() {
    let net = MemNet::new();
    let mut members = three(&net);
    let l = leader(&members);
    for i in 0..60 {
        propose(&members[&l], &format!("e{i}"));
    }
    // Add member 4 (empty: it learns everything from the leader).
    let seq = members[&l].handle.next_seq();
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddLearnerNode);
    single.set_node_id(4);
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    let context = format!("{l}:{seq}:add 4").into_bytes();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(members[&l].handle.propose(seq, Msg::ProposeConfChange { seq, cc, context }, Duration::from_secs(5))).unwrap();
    members.insert(4, start(&net, 4, &[]));
    wait_for("the learner to catch up", || members[&4].sm.log().len() == 60);
    assert_eq!(members[&4].sm.log(), members[&l].sm.log());
    propose(&members[&l], "after");
    wait_for("the learner to follow the log", || members[&4].sm.log().len() == 61);
    assert!(members[&4].handle.status().is_learner);
}

#[test]
fn a_removed_member_stops_its_driver() {
    let net = MemNet::new();
    let members = three(&net);
    let l = leader(&members);
    let victim = (1..=3).find(|id| *id != l).unwrap();
    let seq = members[&l].handle.next_seq();
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::RemoveNode);
    single.set_node_id(victim);
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let context = format!("{l}:{seq}:remove").into_bytes();
    rt.block_on(members[&l].handle.propose(seq, Msg::ProposeConfChange { seq, cc, context }, Duration::from_secs(5))).unwrap();
    let removed = members[&victim].handle.removed.subscribe();
    wait_for("the removed member to notice", || *removed.borrow());
    propose(&members[&l], "two of two");
}
