//! The replicated state of one group — MVCC index, lease table, members,
//! alarms, fences — under one lock, and the read API the rest of the node
//! uses. No guard leaves this module: every method takes the locks it
//! needs in the hierarchy's order (`crate::locks`) and returns owned
//! values, so no caller can hold the state across an `.await` or take
//! the locks the other way round.
//!
//! Lock order: `tables` (level State) before `liveness` (level Liveness);
//! the watch hub's ring is a leaf and is never taken under `tables`.

use crate::cross::CrossTxns;
use crate::engine::keys::{decode_u64, GroupKeys};
use crate::engine::{Engine, WriteBatch};
use crate::error::{Error, Result};
use crate::fence::Fences;
use crate::lease::{LeaseTable, Liveness};
use crate::locks::{Level, Mutex, RwLock};
use crate::members::Members;
use crate::mvcc::{MvccStore, Rev, State};
use crate::oracle::Reservation;
use crate::snapshot;
use crate::watch::WatchHub;
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::{AlarmMember, AlarmResponse, AlarmType, RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use tessera_proto::mvccpb::{Event, KeyValue};
use tessera_proto::tessera::command::{AuthState, MemberContext};

pub(crate) const META_APPLIED: &str = "applied";
pub(crate) const META_ALARMS: &str = "alarms";
pub(crate) const META_AUTH: &str = "auth";

/// Everything the applier changes, as one value under the state lock.
pub(crate) struct Tables {
    pub mvcc: State,
    pub leases: LeaseTable,
    pub members: Members,
    /// Raised alarms (every member sees the same).
    pub alarms: Vec<AlarmMember>,
    /// Prefixes being handed to other groups (`crate::fence`).
    pub fences: Fences,
    /// The revision oracle's reservation (only the oracle's group uses it).
    pub oracle: Reservation,
    /// Transactions across groups this group takes part in (`crate::cross`).
    pub cross: CrossTxns,
    /// Users, roles, permissions (`crate::auth`).
    pub auth: crate::auth::AuthStore,
    /// In a federation: the federation's auth store as this group logged
    /// it (`crate::auth::federation`); off and empty outside one.
    pub federation_auth: crate::auth::AuthStore,
}

/// A lease as TimeToLive reports it.
pub struct LeaseTtl {
    pub granted_ttl: i64,
    /// Seconds left; None when this member does not keep the lease's time (not the leader).
    pub remaining: Option<i64>,
    pub keys: Vec<Vec<u8>>,
}

/// What renewing a lease found.
#[derive(Debug, PartialEq)]
pub enum Renewal {
    /// Its clock restarted at `ttl`; `clear_checkpoint`: a checkpointed
    /// remaining TTL must be cleared through raft (so a later leader does
    /// not resurrect a stale one).
    Renewed {
        ttl: i64,
        clear_checkpoint: bool,
    },
    /// Its time ran out; it is revoked soon.
    Expired,
    NotFound,
}

pub struct StateMachine {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) keys: GroupKeys,
    pub(crate) store: MvccStore,
    pub(crate) tables: RwLock<Tables>,
    pub(crate) liveness: Mutex<Liveness>,
    pub hub: WatchHub,
    pub metrics: crate::metrics::GroupMetrics,
    /// Wakes the background compactor when a compaction is applied.
    pub compaction: tokio::sync::Notify,
    /// The cross-group txn the group holds prepared (writes wait for it).
    pub(crate) cross_holder: tokio::sync::watch::Sender<Option<i64>>,
    /// Counts changes of fences and moves: calls a move holds
    /// (`PrefixMoving`) wait for it to change.
    pub(crate) moves: tokio::sync::watch::Sender<u64>,
    /// Writes and reads per placement unit (`tessera top`).
    pub load: crate::load::UnitLoad,
    /// Auth tokens handed out (a leaf: taken after the state lock in apply).
    pub(crate) tokens: Mutex<crate::auth::tokens::Tokens>,
    /// The auth store's revision while auth is on, 0 while off: every
    /// request reads it, so it is kept outside the state lock (set where
    /// the store changes: apply and reload).
    auth_gate: AtomicU64,
    applied: AtomicU64,
}

impl StateMachine {
    pub fn open(engine: Arc<dyn Engine>, keys: GroupKeys, watch_ring: usize) -> Result<Self> {
        let store = MvccStore::new(engine.clone(), keys);
        let fences = Fences::load(engine.as_ref(), &keys)?;
        let tables = Tables {
            mvcc: store.load(&|k, sub| fences.place(k, sub))?,
            leases: LeaseTable::new(keys),
            members: Members::default(),
            alarms: vec![],
            fences,
            oracle: Reservation::default(),
            cross: CrossTxns::default(),
            auth: Default::default(),
            federation_auth: Default::default(),
        };
        let hub = WatchHub::new(tables.mvcc.rev, watch_ring);
        let sm = Self {
            tables: RwLock::new(Level::State, "group state", tables),
            liveness: Mutex::new(Level::Liveness, "lease liveness", Liveness::default()),
            applied: AtomicU64::new(0),
            metrics: crate::metrics::GroupMetrics::new(keys.group()),
            compaction: tokio::sync::Notify::new(),
            cross_holder: tokio::sync::watch::Sender::new(None),
            moves: tokio::sync::watch::Sender::new(0),
            load: Default::default(),
            tokens: Mutex::leaf("auth tokens", crate::auth::tokens::Tokens::new(crate::auth::tokens::DEFAULT_TTL)),
            auth_gate: AtomicU64::new(0),
            engine,
            keys,
            store,
            hub,
        };
        sm.reload()?;
        Ok(sm)
    }

    /// The auth revision while auth is on (0: off), without the state lock.
    pub fn auth_gate(&self) -> u64 {
        self.auth_gate.load(Ordering::Acquire)
    }

    pub(crate) fn set_auth_gate(&self, auth: &crate::auth::AuthStore) {
        self.auth_gate.store(if auth.enabled() { auth.revision() } else { 0 }, Ordering::Release);
    }

    /// The federation auth revision this group logged (0: none).
    pub fn federation_auth_revision(&self) -> u64 {
        self.tables.read().federation_auth.revision()
    }

    /// `f` over the auth store (under the state lock: keep it short).
    pub fn auth<R>(&self, f: impl FnOnce(&crate::auth::AuthStore) -> R) -> R {
        f(&self.tables.read().auth)
    }

    /// Reloads every table and the applied index from the engine (at open,
    /// and after a raft snapshot replaced the state machine).
    pub fn reload(&self) -> Result<()> {
        let fences = Fences::load(self.engine.as_ref(), &self.keys)?;
        let mvcc = self.store.load(&|k, sub| fences.place(k, sub))?;
        let mut leases = LeaseTable::new(self.keys);
        leases.reload(self.engine.as_ref(), mvcc.attached_leases().into_iter())?;
        let members = Members::load(self.engine.as_ref(), &self.keys)?;
        let alarms = match self.engine.get(&self.keys.meta(META_ALARMS))? {
            Some(v) => AlarmResponse::decode(v.as_slice()).map_err(|e| Error::Internal(e.to_string()))?.alarms,
            None => vec![],
        };
        let oracle = Reservation::load(self.engine.as_ref(), &self.keys)?;
        let cross = CrossTxns::load(self.engine.as_ref(), &self.keys)?;
        let load_auth = |name: &str| -> Result<crate::auth::AuthStore> {
            Ok(match self.engine.get(&self.keys.meta(name))? {
                Some(v) => crate::auth::AuthStore::from_state(
                    AuthState::decode(v.as_slice()).map_err(|e| Error::Internal(e.to_string()))?,
                ),
                None => Default::default(),
            })
        };
        let auth = load_auth(META_AUTH)?;
        let federation_auth = load_auth(crate::auth::federation::META_FEDERATION_AUTH)?;
        let applied = self.engine.get(&self.keys.meta(META_APPLIED))?.map(|v| decode_u64(&v)).transpose()?.unwrap_or(0);
        let rev = mvcc.rev;
        {
            let mut t = self.tables.write();
            self.set_auth_gate(&auth);
            *t = Tables { mvcc, leases, members, alarms, fences, oracle, cross, auth, federation_auth };
            self.cross_holder.send_replace(t.cross.prepared().map(|p| p.id));
            let mut live = self.liveness.lock();
            if live.is_primary() {
                live.promote(&t.leases, Duration::ZERO);
            }
        }
        self.applied.store(applied, Ordering::Release);
        self.hub.reset(rev);
        self.moves_changed();
        Ok(())
    }

    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub(crate) fn set_applied(&self, index: u64) {
        self.applied.store(index, Ordering::Release);
    }

    // ---- MVCC ----

    /// The group's revision: its watermark once applied.
    pub fn current_revision(&self) -> i64 {
        self.tables.read().mvcc.rev
    }

    pub fn compact_revision(&self) -> i64 {
        self.tables.read().mvcc.compact_rev
    }

    pub fn key_count(&self) -> usize {
        self.tables.read().mvcc.key_count()
    }

    /// Live keys and the bytes of their current values, per placement unit
    /// of `depth` slashes.
    pub fn unit_sizes(&self, depth: usize) -> std::collections::BTreeMap<Vec<u8>, (i64, u64)> {
        let t = self.tables.read();
        let mut out: std::collections::BTreeMap<Vec<u8>, (i64, u64)> = std::collections::BTreeMap::new();
        for (k, ki) in &t.mvcc.index {
            if let Some(e) = ki.latest() {
                let u = shardmap::placement_unit(k, depth);
                let s = match out.get_mut(u) {
                    Some(s) => s,
                    None => out.entry(u.to_vec()).or_default(),
                };
                s.0 += 1;
                s.1 += e.size as u64;
            }
        }
        out
    }

    /// Bytes of all stored revisions (etcd's "db size in use", what the quota counts).
    pub fn size_in_use(&self) -> u64 {
        self.tables.read().mvcc.bytes
    }

    /// A range read; with it the current revision (for the header).
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64)> {
        self.store.range(&self.tables.read().mvcc, req)
    }

    /// A txn without writes (no log entry) against the state as of `at`
    /// (None: the current state), after checking its keys against fences
    /// newer than `epoch`.
    pub fn read_txn(&self, req: &TxnRequest, epoch: u64, at: Option<i64>) -> Result<(TxnResponse, i64)> {
        self.txn_if_it_only_reads(req, epoch, at).map(|r| r.expect("a read-only txn only reads"))
    }

    /// Whether `req`'s compares, against the current state, choose branches
    /// that only read (a hint: the state may change before it runs).
    pub fn txn_would_only_read(&self, req: &TxnRequest) -> Result<bool> {
        let mut guard = self.tables.write();
        let txn = crate::mvcc::WriteTxn::read_at(&self.store, &mut guard.mvcc, None);
        txn.chosen_branches_only_read(req)
    }

    /// Runs `req` as a read as of `at` (see `read_txn`) if its compares
    /// choose branches that only read there; None if it would write.
    pub fn txn_if_it_only_reads(&self, req: &TxnRequest, epoch: u64, at: Option<i64>) -> Result<Option<(TxnResponse, i64)>> {
        let mut guard = self.tables.write();
        let t = &mut *guard;
        t.fences.check_txn(epoch, req)?;
        let leases = &t.leases;
        // Not below a compaction that passed `at` while the call waited
        // (`Group::compacted_past`): its keys' versions there may be gone.
        let at = at.map(|at| at.max(t.mvcc.compact_rev));
        let mut txn = crate::mvcc::WriteTxn::read_at(&self.store, &mut t.mvcc, at);
        if !txn.chosen_branches_only_read(req)? {
            return Ok(None);
        }
        let resp = txn.txn(req, &|id| leases.exists(id))?;
        // The revision it read at is its header's: a federation's read at
        // the oracle's revision must not claim the newer writes it did not see.
        let rev = txn.begin_revision();
        drop(txn); // undoes nothing: a read-only txn changed nothing
        Ok(Some((resp, rev)))
    }

    /// Events of revisions `[from, to]` whose key (and sub revision) passes `matches`, reading
    /// at most `max_revs` revisions (see `MvccStore::history`).
    pub fn history(
        &self,
        from: i64,
        to: i64,
        max_revs: usize,
        matches: &dyn Fn(&[u8], i64) -> bool,
    ) -> Result<(Vec<Event>, i64)> {
        if from < self.compact_revision() {
            return Err(Error::Compacted);
        }
        self.store.history(from, to, max_revs, matches)
    }

    /// The key as it was just before the change at `rev` (a watcher's prev_kv).
    pub fn prev_of(&self, key: &[u8], rev: Rev) -> Option<KeyValue> {
        let before = self.tables.read().mvcc.before(key, rev)?;
        self.store.value_at(before)
    }

    /// etcd's HashKV at `rev` (0: current): (hash, revision hashed, compact revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let (rev, compact, kept) = {
            let t = self.tables.read();
            let compact = t.mvcc.compact_rev;
            (crate::mvcc::read_revision(&t.mvcc, rev)?, compact, MvccStore::kept_at(&t.mvcc, compact))
        };
        Ok((self.store.hash_kv(rev, compact, &kept)?, rev, compact))
    }

    /// One bounded step of a background compaction at `at`: compacts the
    /// index entries of up to `limit` keys from `from` and deletes their
    /// dropped revisions. Returns the key to go on from; None when the pass
    /// is complete (and recorded).
    pub fn compact_step(&self, at: i64, from: &[u8], limit: usize) -> Result<Option<Vec<u8>>> {
        let mut batch = WriteBatch::default();
        let next = {
            let mut t = self.tables.write();
            let (mut dropped, next) = MvccStore::compact_keys(&mut t.mvcc, at, from, limit);
            if next.is_none() {
                let t = &mut *t;
                dropped.extend(MvccStore::compact_retired(&mut t.mvcc, at, &|k| t.fences.given_away_at(k)));
            }
            for r in dropped {
                batch.delete(self.keys.revision(r.main, r.sub));
            }
            if next.is_none() {
                t.mvcc.compacted_to = t.mvcc.compacted_to.max(at);
                batch.put(self.keys.meta(crate::mvcc::META_COMPACTED), t.mvcc.compacted_to.to_be_bytes().to_vec());
            }
            next
        };
        // Values no read can reach any more: their deletion needs no fsync
        // (after a crash the pass runs again over the index rebuilt from disk).
        fail::fail_point!("compact::before_delete");
        self.engine.write(batch, false)?;
        fail::fail_point!("compact::after_delete");
        Ok(next)
    }

    /// The revision a background compaction is due at: a compaction applied
    /// whose history is not removed yet.
    pub fn compaction_due(&self) -> Option<i64> {
        let t = self.tables.read();
        (t.mvcc.compacted_to < t.mvcc.compact_rev).then_some(t.mvcc.compact_rev)
    }

    // ---- leases ----

    pub fn lease_exists(&self, id: i64) -> bool {
        self.tables.read().leases.exists(id)
    }

    pub fn lease_ids(&self) -> Vec<i64> {
        self.tables.read().leases.ids()
    }

    /// Restarts a lease's clock (on the leader), unless its time has run
    /// out (its revoke is on its way: a renewal must not bring it back).
    pub fn lease_renew(&self, id: i64) -> Renewal {
        let t = self.tables.read();
        let Some(l) = t.leases.get(id) else { return Renewal::NotFound };
        let mut live = self.liveness.lock();
        if live.has_expired(id) {
            return Renewal::Expired;
        }
        live.renew(id, l.ttl);
        Renewal::Renewed { ttl: l.ttl, clear_checkpoint: l.remaining_ttl > 0 }
    }

    pub fn lease_time_to_live(&self, id: i64, with_keys: bool) -> Option<LeaseTtl> {
        let t = self.tables.read();
        let l = t.leases.get(id)?;
        let remaining = self.liveness.lock().remaining(id);
        Some(LeaseTtl { granted_ttl: l.ttl, remaining, keys: if with_keys { l.keys.iter().cloned().collect() } else { vec![] } })
    }

    /// On the leader: (is primary, expired leases, remaining TTLs worth
    /// checkpointing when `checkpoints` is asked for).
    pub fn lease_clock(&self, checkpoints: bool) -> (bool, Vec<i64>, Vec<(i64, i64)>) {
        let t = self.tables.read();
        let live = self.liveness.lock();
        let cps = if checkpoints {
            t.leases
                .iter()
                .filter_map(|l| {
                    let left = live.remaining(l.id)?;
                    (left < l.ttl && left > 0).then_some((l.id, left))
                })
                .collect()
        } else {
            vec![]
        };
        (live.is_primary(), live.expired(), cps)
    }

    /// This member became the group's leader (its lease clock starts, with
    /// `extend` for the election) or stopped being it.
    pub fn set_lease_primary(&self, primary: bool, extend: Duration) {
        let t = self.tables.read();
        let mut live = self.liveness.lock();
        if primary {
            live.promote(&t.leases, extend);
        } else {
            live.demote();
        }
    }

    // ---- members, alarms, fences ----

    pub fn members(&self) -> Members {
        self.tables.read().members.clone()
    }

    pub fn member(&self, id: u64) -> Option<MemberContext> {
        self.tables.read().members.get(id).cloned()
    }

    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.tables.read().alarms.clone()
    }

    pub fn has_alarm(&self, t: AlarmType) -> bool {
        self.tables.read().alarms.iter().any(|a| a.alarm == t as i32)
    }

    /// Refuses `[key, range_end)` to a call routed by map `epoch` older than a fence on it.
    /// Waits until the group holds no cross-group txn prepared (writes
    /// would be refused until then), at most `timeout`.
    pub async fn wait_unheld(&self, timeout: Duration) -> Result<()> {
        self.wait_holder(|h| h.is_none(), timeout).await
    }

    /// The cross-group txn prepared here, if any.
    pub fn cross_held(&self) -> Option<i64> {
        *self.cross_holder.borrow()
    }

    /// Waits until cross-group txn `id` is no longer prepared here
    /// (committed, aborted or fenced), at most `timeout`.
    pub async fn wait_txn_ended(&self, id: i64, timeout: Duration) -> Result<()> {
        self.wait_holder(|h| *h != Some(id), timeout).await
    }

    async fn wait_holder(&self, done: impl FnMut(&Option<i64>) -> bool, timeout: Duration) -> Result<()> {
        let mut rx = self.cross_holder.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(done)).await.map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// The cross-group txn this member has held prepared for `after` (its
    /// coordinator may be gone: a router finishes it).
    pub fn cross_in_doubt(&self, after: Duration) -> Option<tessera_proto::tessera::command::TxnPrepared> {
        self.tables.read().cross.in_doubt(after)
    }

    pub fn check_fences(&self, epoch: u64, key: &[u8], range_end: &[u8]) -> Result<()> {
        self.tables.read().fences.check_range(epoch, key, range_end)
    }

    /// The prefixes whose history a watch routed by map `epoch` does not
    /// read here (`Fences::hidden_history`).
    pub fn hidden_history(&self, epoch: u64) -> Vec<crate::fence::Hidden> {
        self.tables.read().fences.hidden_history(epoch)
    }

    /// Wakes the calls a move holds (fences or moves changed).
    pub(crate) fn moves_changed(&self) {
        self.moves.send_modify(|v| *v += 1);
    }

    /// The fence a watch routed by `epoch` on `[key, range_end)` ends at:
    /// (the fence's epoch, its revision).
    pub fn ending_watch(&self, epoch: u64, key: &[u8], range_end: &[u8]) -> Option<(u64, i64)> {
        self.tables.read().fences.ending_watch(epoch, key, range_end)
    }

    /// Records a member (bootstrap, join; conf changes go through apply).
    pub fn upsert_member(&self, m: MemberContext, batch: &mut WriteBatch) {
        self.tables.write().members.upsert(m, &self.keys, batch);
    }

    /// The revision oracle's committed reservation.
    pub fn oracle_limit(&self) -> i64 {
        self.tables.read().oracle.limit()
    }

    // ---- snapshots ----

    /// Stages a snapshot's state into `batch` (written by the caller with
    /// the raft log reset), to be followed by `reload`.
    pub fn stage_snapshot(&self, data: &[u8], batch: &mut WriteBatch) -> Result<()> {
        snapshot::install_state(&self.keys, data, batch)
    }
}
