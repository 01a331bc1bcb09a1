//! The state machine of a group: applies committed raft entries.
//!
//! Each normal entry is one `Command` and becomes one engine batch holding
//! its MVCC values, lease changes, meta and the applied index, so a crash
//! leaves either all or none of an entry (replay restarts after the last
//! applied one). Apply order: store lock (exclusive), then lessor lock; the
//! batch is written before the store lock is released, so no reader sees an
//! index entry whose value is not in the engine yet.

use crate::engine::keys::{decode_u64, GroupKeys};
use crate::engine::{Engine, WriteBatch};
use crate::error::{Error, Result};
use crate::fence::Fences;
use crate::lease::Lessor;
use crate::members::Members;
use crate::mvcc::{MvccStore, WriteTxn};
use crate::raft::snapshot;
use crate::raft::storage::SnapshotSource;
use crate::watch::WatchHub;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tessera_proto::etcdserverpb::alarm_request::AlarmAction;
use tessera_proto::etcdserverpb::request_op::Request;
use tessera_proto::etcdserverpb::{
    AlarmMember, AlarmResponse, AlarmType, DeleteRangeResponse, PutResponse, TxnRequest, TxnResponse,
};
use tessera_proto::tessera::command::{command::Op, Command, Fence, MemberContext};

/// What applying a command produced, for the client that proposed it.
#[derive(Debug)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    LeaseGrant { id: i64, ttl: i64 },
    /// The alarms an Alarm request changed.
    Alarms(Vec<AlarmMember>),
    Done,
}

#[derive(Debug)]
pub struct ApplyOutput {
    pub result: Result<Applied>,
    /// The group's revision after the entry.
    pub rev: i64,
}

const META_APPLIED: &str = "applied";
const META_ALARMS: &str = "alarms";

pub struct StateMachine {
    pub engine: Arc<dyn Engine>,
    pub keys: GroupKeys,
    pub store: Arc<MvccStore>,
    pub lessor: Arc<Mutex<Lessor>>,
    pub hub: Arc<WatchHub>,
    pub members: Arc<RwLock<Members>>,
    /// Raised alarms (replicated: every member sees the same).
    alarms: RwLock<Vec<AlarmMember>>,
    /// Prefixes being handed to other groups (replicated, see `fence`).
    pub fences: RwLock<Fences>,
    applied: AtomicU64,
}

impl StateMachine {
    pub fn open(engine: Arc<dyn Engine>, keys: GroupKeys, watch_ring: usize) -> Result<Self> {
        let store = Arc::new(MvccStore::open(engine.clone(), keys)?);
        let hub = Arc::new(WatchHub::new(store.current_revision(), watch_ring));
        let sm = Self {
            lessor: Arc::new(Mutex::new(Lessor::new(keys))),
            members: Arc::new(RwLock::new(Members::default())),
            alarms: RwLock::new(vec![]),
            fences: RwLock::new(Fences::default()),
            applied: AtomicU64::new(0),
            engine,
            keys,
            store,
            hub,
        };
        sm.reload_tables()?;
        Ok(sm)
    }

    /// Reloads leases, members, alarms, fences and the applied index from the engine.
    fn reload_tables(&self) -> Result<()> {
        let attached = self.store.attached_leases();
        self.lessor.lock().reload(self.engine.as_ref(), attached.into_iter())?;
        *self.members.write() = Members::load(self.engine.as_ref(), &self.keys)?;
        let alarms = match self.engine.get(&self.keys.meta(META_ALARMS))? {
            Some(v) => AlarmResponse::decode(v.as_slice()).map_err(|e| Error::Internal(e.to_string()))?.alarms,
            None => vec![],
        };
        *self.alarms.write() = alarms;
        *self.fences.write() = Fences::load(self.engine.as_ref(), &self.keys)?;
        let applied = self.engine.get(&self.keys.meta(META_APPLIED))?.map(|v| decode_u64(&v)).unwrap_or(0);
        self.applied.store(applied, Ordering::Release);
        Ok(())
    }

    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms.read().clone()
    }

    pub fn has_alarm(&self, t: AlarmType) -> bool {
        self.alarms.read().iter().any(|a| a.alarm == t as i32)
    }

    /// etcd's capped applier: what an active alarm refuses.
    fn refused(&self, op: &Op) -> Option<Error> {
        let writes = matches!(
            op,
            Op::Put(_) | Op::DeleteRange(_) | Op::Txn(_) | Op::LeaseGrant(_) | Op::LeaseRevoke(_) | Op::Compact(_)
        );
        if writes && self.has_alarm(AlarmType::Corrupt) {
            return Some(Error::Corrupt);
        }
        let grows = match op {
            Op::Put(_) | Op::LeaseGrant(_) => true,
            Op::Txn(t) => txn_has_put(t),
            _ => false,
        };
        (grows && self.has_alarm(AlarmType::Nospace)).then_some(Error::NoSpace)
    }

    fn apply_alarm(&self, r: &tessera_proto::etcdserverpb::AlarmRequest, batch: &mut WriteBatch) -> Result<Applied> {
        let mut alarms = self.alarms.write();
        let changed = AlarmMember { member_id: r.member_id, alarm: r.alarm };
        match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Activate) if r.alarm != AlarmType::None as i32 => {
                if !alarms.contains(&changed) {
                    alarms.push(changed.clone());
                }
            }
            Ok(AlarmAction::Deactivate) => alarms.retain(|a| *a != changed),
            _ => return Ok(Applied::Alarms(vec![])),
        }
        batch.put(self.keys.meta(META_ALARMS), AlarmResponse { header: None, alarms: alarms.clone() }.encode_to_vec());
        Ok(Applied::Alarms(vec![changed]))
    }

    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn mark_applied(&self, index: u64, batch: &mut WriteBatch) {
        batch.put(self.keys.meta(META_APPLIED), index.to_be_bytes().to_vec());
    }

    fn commit(&self, index: u64, batch: WriteBatch) {
        // A failed engine write leaves memory ahead of disk: stop, as etcd does.
        self.engine.write(batch, false).expect("state machine write failed");
        self.applied.store(index, Ordering::Release);
    }

    /// An entry with no command (a new leader's empty entry, a conf change).
    pub fn apply_noop(&self, index: u64, batch: Option<WriteBatch>) {
        let mut batch = batch.unwrap_or_default();
        self.mark_applied(index, &mut batch);
        self.commit(index, batch);
    }

    /// Applies a normal entry; returns (proposer, seq, output) for the waiter.
    pub fn apply_command(&self, index: u64, data: &[u8]) -> Option<(u64, u64, ApplyOutput)> {
        let cmd = match Command::decode(data) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(index, error = %e, "undecodable raft entry skipped");
                self.apply_noop(index, None);
                return None;
            }
        };
        let (result, events, rev) = {
            let mut st = self.store.state.write();
            let mut lessor = self.lessor.lock();
            if let Some(Op::Compact(c)) = &cmd.op {
                let mut batch = WriteBatch::default();
                let result = match self.refused(cmd.op.as_ref().expect("compact")) {
                    Some(e) => Err(e),
                    None => self.compact(&mut st, c.revision, &mut batch),
                };
                self.store.write_meta(&mut batch, &st);
                self.mark_applied(index, &mut batch);
                self.commit(index, batch);
                let rev = st.rev;
                return Some((cmd.member_id, cmd.seq, ApplyOutput { result, rev }));
            }
            let mut txn = WriteTxn::begin(&self.store, &mut st, cmd.revision_hint);
            let refused = cmd.op.as_ref().and_then(|op| self.refused(op).or_else(|| self.fences.read().check_op(cmd.epoch, op).err()));
            let result = match &cmd.op {
                _ if refused.is_some() => Err(refused.expect("checked")),
                Some(Op::Put(p)) if p.lease != 0 && !lessor.exists(p.lease) => Err(Error::LeaseNotFound),
                Some(Op::Put(p)) => txn.put(p).map(Applied::Put),
                Some(Op::DeleteRange(d)) => txn.delete_range(d).map(Applied::DeleteRange),
                Some(Op::Txn(t)) => txn.txn(t, &|id| lessor.exists(id)).map(Applied::Txn),
                Some(Op::LeaseGrant(g)) if lessor.exists(g.id) => Err(Error::LeaseExist),
                Some(Op::LeaseGrant(g)) => {
                    lessor.grant(g.id, g.ttl, txn.batch_mut());
                    Ok(Applied::LeaseGrant { id: g.id, ttl: g.ttl })
                }
                Some(Op::LeaseRevoke(r)) => match lessor.revoke(r.id, txn.batch_mut()) {
                    Some(keys) => {
                        txn.delete_keys(&keys);
                        Ok(Applied::Done)
                    }
                    None => Err(Error::LeaseNotFound),
                },
                Some(Op::LeaseCheckpoint(c)) => {
                    for cp in &c.checkpoints {
                        lessor.checkpoint(cp.id, cp.remaining_ttl, txn.batch_mut());
                    }
                    Ok(Applied::Done)
                }
                Some(Op::Bump(_)) => {
                    txn.bump();
                    Ok(Applied::Done)
                }
                Some(Op::Publish(m)) => {
                    let mut members = self.members.write();
                    if let Some(mut cur) = members.get(m.id).cloned() {
                        cur.name = m.name.clone();
                        cur.client_urls = m.client_urls.clone();
                        members.upsert(cur, &self.keys, txn.batch_mut());
                    }
                    Ok(Applied::Done)
                }
                Some(Op::UpdateMember(m)) => {
                    let mut members = self.members.write();
                    match members.get(m.id).cloned() {
                        Some(mut cur) => {
                            cur.peer_urls = m.peer_urls.clone();
                            members.upsert(cur, &self.keys, txn.batch_mut());
                            Ok(Applied::Done)
                        }
                        None => Err(Error::MemberNotFound),
                    }
                }
                Some(Op::Alarm(a)) => self.apply_alarm(a, txn.batch_mut()),
                Some(Op::Fence(f)) => {
                    let f = Fence { revision: txn.begin_revision(), ..f.clone() };
                    self.fences.write().raise(&f, &self.keys, txn.batch_mut());
                    // Also a revision bump: it wakes the watches the fence ends.
                    txn.bump();
                    Ok(Applied::Done)
                }
                Some(Op::Compact(_)) | None => Ok(Applied::Done),
            };
            let (result, events, mut batch) = match result {
                Ok(applied) => {
                    let out = txn.finish();
                    for m in &out.lease_moves {
                        lessor.move_key(&m.key, m.from, m.to);
                    }
                    (Ok(applied), out.events, out.batch)
                }
                Err(e) => {
                    drop(txn); // undoes its index changes
                    (Err(e), vec![], WriteBatch::default())
                }
            };
            self.mark_applied(index, &mut batch);
            // Still under the store lock: values land before readers can
            // see the index entries that point at them.
            self.commit(index, batch);
            (result, events, st.rev)
        };
        self.hub.publish(rev, events);
        Some((cmd.member_id, cmd.seq, ApplyOutput { result, rev }))
    }

    /// Runs a txn without writes against the current state (no log entry).
    pub fn read_txn(&self, req: &TxnRequest) -> Result<(TxnResponse, i64)> {
        let mut st = self.store.state.write();
        let lessor = self.lessor.lock();
        let mut txn = WriteTxn::begin(&self.store, &mut st, 0);
        let resp = txn.txn(req, &|id| lessor.exists(id))?;
        drop(txn);
        Ok((resp, st.rev))
    }

    fn compact(&self, st: &mut crate::mvcc::State, at: i64, batch: &mut WriteBatch) -> Result<Applied> {
        if at <= st.compact_rev {
            return Err(Error::Compacted);
        }
        if at > st.rev {
            return Err(Error::FutureRev);
        }
        for r in MvccStore::compact_index(st, at) {
            batch.delete(self.keys.revision(r.main, r.sub));
        }
        Ok(Applied::Done)
    }

    /// Records a member added/changed by a conf change.
    pub fn upsert_member(&self, m: MemberContext, batch: &mut WriteBatch) {
        self.members.write().upsert(m, &self.keys, batch);
    }

    pub fn remove_member(&self, id: u64, batch: &mut WriteBatch) {
        self.members.write().remove(id, &self.keys, batch);
    }

    /// Replaces the whole state machine with a snapshot's (in `batch`,
    /// which the caller writes with the raft log reset), then reloads.
    pub fn stage_snapshot(&self, data: &[u8], batch: &mut WriteBatch) -> Result<()> {
        snapshot::install_state(&self.keys, data, batch)
    }

    pub fn reload_after_snapshot(&self) -> Result<()> {
        self.store.reload()?;
        self.reload_tables()?;
        self.hub.reset(self.store.current_revision());
        Ok(())
    }
}

impl SnapshotSource for StateMachine {
    fn build(&self) -> Result<(u64, Vec<u8>)> {
        let data = snapshot::encode_state(self.engine.as_ref(), &self.keys)?;
        Ok((self.applied_index(), data))
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
