//! The raft log of one group in the engine (raft-rs `Storage`).
//!
//! Invariants: entries `(truncated.index, last_index]` are in the engine;
//! `term(truncated.index)` is answered from the truncated state; appends and
//! hard state are written with fsync before the driver sends the messages or
//! acknowledges anything that depends on them.

use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, WriteBatch};
use crate::locks::RwLock;
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::sync::Arc;

/// Builds a snapshot of the state machine at its applied index.
pub trait SnapshotSource: Send + Sync {
    /// (applied index, encoded state machine)
    fn build(&self) -> crate::error::Result<(u64, Vec<u8>)>;
}

impl<S: super::StateMachine> SnapshotSource for S {
    fn build(&self) -> crate::error::Result<(u64, Vec<u8>)> {
        self.snapshot()
    }
}

/// Where a bootstrapped group's log starts (see `RaftStorage::bootstrap`).
pub const INIT_INDEX: u64 = 5;
const INIT_TERM: u64 = 5;

#[derive(Default, Clone, Copy, Debug)]
struct Truncated {
    index: u64,
    term: u64,
}

struct Inner {
    hard_state: HardState,
    conf_state: ConfState,
    truncated: Truncated,
    last_index: u64,
}

#[derive(Clone)]
pub struct RaftStorage {
    engine: Arc<dyn Engine>,
    keys: GroupKeys,
    inner: Arc<RwLock<Inner>>,
    snapshots: Arc<dyn SnapshotSource>,
}

fn other<E: std::fmt::Display>(e: E) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

fn decode<M: protobuf::Message>(v: &[u8]) -> raft::Result<M> {
    M::parse_from_bytes(v).map_err(other)
}

impl RaftStorage {
    pub fn open(engine: Arc<dyn Engine>, keys: GroupKeys, snapshots: Arc<dyn SnapshotSource>) -> raft::Result<Self> {
        let get = |k: Vec<u8>| engine.get(&k).map_err(other);
        let hard_state = match get(keys.hard_state())? {
            Some(v) => decode(&v)?,
            None => HardState::default(),
        };
        let conf_state = match get(keys.conf_state())? {
            Some(v) => decode(&v)?,
            None => ConfState::default(),
        };
        let truncated = match get(keys.truncated_state())? {
            Some(v) => {
                let (index, term) = crate::engine::keys::decode_pair(&v).map_err(other)?;
                // Stored as two u64s: the same bits.
                Truncated { index: index as u64, term: term as u64 }
            }
            None => Truncated::default(),
        };
        let (start, end) = keys.table(b'L');
        let mut last_index = truncated.index;
        // The log is short (compacted behind snapshots): find its end.
        let mut bad = None;
        engine
            .scan(&start, &end, &mut |k, _| {
                match crate::engine::keys::decode_u64(keys.suffix(k)) {
                    Ok(index) => last_index = index,
                    Err(e) => bad = Some(e),
                }
                bad.is_none()
            })
            .map_err(other)?;
        if let Some(e) = bad {
            return Err(other(e));
        }
        Ok(Self {
            engine,
            keys,
            inner: Arc::new(RwLock::leaf("raft log", Inner { hard_state, conf_state, truncated, last_index })),
            snapshots,
        })
    }

    /// Starts a new group's log: empty, as if truncated at `INIT_INDEX` with
    /// the initial configuration. A member that joins later has an empty
    /// log below that index, so the leader must send it a snapshot, which
    /// carries the configuration (replaying from index 1 would not).
    pub fn bootstrap(&self, cs: &ConfState, batch: &mut WriteBatch) {
        let t = Truncated { index: INIT_INDEX, term: INIT_TERM };
        {
            let mut i = self.inner.write();
            i.truncated = t;
            i.last_index = INIT_INDEX;
            i.hard_state.set_term(INIT_TERM);
            i.hard_state.set_commit(INIT_INDEX);
            batch.put(self.keys.hard_state(), i.hard_state.write_to_bytes().expect("encode hard state"));
        }
        self.put_truncated(t, batch);
        self.set_conf_state(cs, batch);
    }

    /// Writes a batch of log changes (`sync`: wait for the disk).
    pub fn write(&self, batch: WriteBatch, sync: bool) -> crate::engine::Result<()> {
        self.engine.write(batch, sync)
    }

    pub fn hard_state(&self) -> HardState {
        self.inner.read().hard_state.clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.inner.read().conf_state.clone()
    }

    /// Adds appended entries (replacing any conflicting tail) to `batch`.
    pub fn append(&self, entries: &[Entry], batch: &mut WriteBatch) {
        let Some(first) = entries.first() else { return };
        let mut i = self.inner.write();
        if first.get_index() <= i.last_index {
            batch.delete_range(self.keys.raft_entry(first.get_index()), self.keys.raft_entry(i.last_index + 1));
        }
        for e in entries {
            batch.put(self.keys.raft_entry(e.get_index()), e.write_to_bytes().expect("encode entry"));
        }
        i.last_index = entries.last().map(|e| e.get_index()).unwrap_or(i.last_index);
    }

    pub fn set_hard_state(&self, hs: &HardState, batch: &mut WriteBatch) {
        batch.put(self.keys.hard_state(), hs.write_to_bytes().expect("encode hard state"));
        self.inner.write().hard_state = hs.clone();
    }

    pub fn set_commit(&self, commit: u64, batch: &mut WriteBatch) {
        let mut hs = self.hard_state();
        hs.set_commit(commit);
        self.set_hard_state(&hs, batch);
    }

    pub fn set_conf_state(&self, cs: &ConfState, batch: &mut WriteBatch) {
        batch.put(self.keys.conf_state(), cs.write_to_bytes().expect("encode conf state"));
        self.inner.write().conf_state = cs.clone();
    }

    fn put_truncated(&self, t: Truncated, batch: &mut WriteBatch) {
        let mut v = t.index.to_be_bytes().to_vec();
        v.extend_from_slice(&t.term.to_be_bytes());
        batch.put(self.keys.truncated_state(), v);
    }

    /// Drops log entries up to and including `index` (they are in a snapshot).
    pub fn compact_to(&self, index: u64, batch: &mut WriteBatch) -> raft::Result<()> {
        let term = raft::Storage::term(self, index)?;
        let mut i = self.inner.write();
        if index <= i.truncated.index {
            return Ok(());
        }
        batch.delete_range(self.keys.raft_entry(i.truncated.index + 1), self.keys.raft_entry(index + 1));
        i.truncated = Truncated { index, term };
        self.put_truncated(i.truncated, batch);
        Ok(())
    }

    /// The log after installing a snapshot: empty, starting after it.
    pub fn reset_to_snapshot(&self, snap: &Snapshot, batch: &mut WriteBatch) {
        let meta = snap.get_metadata();
        {
            let mut i = self.inner.write();
            batch.delete_range(self.keys.raft_entry(0), self.keys.raft_entry(u64::MAX));
            i.truncated = Truncated { index: meta.get_index(), term: meta.get_term() };
            i.last_index = meta.get_index();
            self.put_truncated(i.truncated, batch);
            if i.hard_state.get_commit() < meta.get_index() {
                i.hard_state.set_commit(meta.get_index());
            }
            if i.hard_state.get_term() < meta.get_term() {
                i.hard_state.set_term(meta.get_term());
            }
            batch.put(self.keys.hard_state(), i.hard_state.write_to_bytes().expect("encode hard state"));
        }
        self.set_conf_state(meta.get_conf_state(), batch);
    }

    pub fn first_log_index(&self) -> u64 {
        self.inner.read().truncated.index + 1
    }

    pub fn last_log_index(&self) -> u64 {
        self.inner.read().last_index
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let i = self.inner.read();
        Ok(RaftState::new(i.hard_state.clone(), i.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (first, last) = {
            let i = self.inner.read();
            (i.truncated.index + 1, i.last_index)
        };
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let mut bad = None;
        self.engine
            .scan(&self.keys.raft_entry(low), &self.keys.raft_entry(high), &mut |_, v| {
                match Entry::parse_from_bytes(v) {
                    Ok(e) => {
                        size += e.compute_size() as u64;
                        // At least one entry, then stop before exceeding max.
                        if !out.is_empty() && size > max {
                            return false;
                        }
                        out.push(e);
                    }
                    Err(e) => bad = Some(e),
                }
                bad.is_none()
            })
            .map_err(other)?;
        if let Some(e) = bad {
            return Err(other(e));
        }
        if out.is_empty() || out[0].get_index() != low {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (t, last) = {
            let i = self.inner.read();
            (i.truncated, i.last_index)
        };
        if idx == t.index {
            return Ok(t.term);
        }
        if idx < t.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.engine.get(&self.keys.raft_entry(idx)).map_err(other)? {
            Some(v) => Ok(decode::<Entry>(&v)?.get_term()),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_log_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_log_index())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Called on the driver thread between applies, so the state machine
        // is exactly at its applied index.
        let (index, data) = self.snapshots.build().map_err(other)?;
        let term = self.term(index)?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.set_index(index);
        meta.set_term(term);
        meta.set_conf_state(self.conf_state());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemoryEngine;
    use raft::Storage as _;

    struct NoSnapshots;
    impl SnapshotSource for NoSnapshots {
        fn build(&self) -> crate::error::Result<(u64, Vec<u8>)> {
            Ok((INIT_INDEX + 3, b"state".to_vec()))
        }
    }

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.set_index(index);
        e.set_term(term);
        e.set_data(format!("e{index}").into_bytes().into());
        e
    }

    fn open(engine: &Arc<dyn Engine>) -> RaftStorage {
        RaftStorage::open(engine.clone(), GroupKeys::new(4), Arc::new(NoSnapshots)).unwrap()
    }

    /// Applies what a call staged, as the driver does.
    fn staged(s: &RaftStorage, f: impl FnOnce(&RaftStorage, &mut WriteBatch)) {
        let mut b = WriteBatch::default();
        f(s, &mut b);
        s.write(b, true).unwrap();
    }

    #[test]
    fn the_log_survives_a_reopen_and_a_conflicting_tail_is_replaced() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let s = open(&engine);
        let mut cs = ConfState::default();
        cs.set_voters(vec![1, 2, 3]);
        staged(&s, |s, b| s.bootstrap(&cs, b));
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (INIT_INDEX + 1, INIT_INDEX));
        let (i1, i2, i3) = (INIT_INDEX + 1, INIT_INDEX + 2, INIT_INDEX + 3);
        staged(&s, |s, b| s.append(&[entry(i1, 6), entry(i2, 6), entry(i3, 6)], b));
        // A new leader overwrites from i2 with a newer term.
        staged(&s, |s, b| s.append(&[entry(i2, 7)], b));
        assert_eq!(s.last_index().unwrap(), i2, "the old tail beyond the conflict is gone");
        assert_eq!(s.term(i2).unwrap(), 7);
        let mut hs = s.hard_state();
        hs.set_commit(i2);
        hs.set_term(7);
        staged(&s, |s, b| s.set_hard_state(&hs, b));

        let again = open(&engine);
        assert_eq!(again.initial_state().unwrap().hard_state, hs);
        assert_eq!(again.conf_state().get_voters(), [1, 2, 3]);
        let got = again.entries(i1, i2 + 1, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| (e.get_index(), e.get_term())).collect::<Vec<_>>(), [(i1, 6), (i2, 7)]);
        assert_eq!(again.term(INIT_INDEX).unwrap(), INIT_TERM, "the bootstrap truncation's term");
        assert!(again.term(i3).is_err());
    }

    #[test]
    fn compaction_and_snapshots_move_the_start_of_the_log() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let s = open(&engine);
        staged(&s, |s, b| s.bootstrap(&ConfState::default(), b));
        let entries: Vec<Entry> = (INIT_INDEX + 1..=INIT_INDEX + 5).map(|i| entry(i, 6)).collect();
        staged(&s, |s, b| s.append(&entries, b));
        staged(&s, |s, b| s.compact_to(INIT_INDEX + 3, b).unwrap());
        assert_eq!(s.first_index().unwrap(), INIT_INDEX + 4);
        assert!(matches!(
            s.entries(INIT_INDEX + 2, INIT_INDEX + 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.term(INIT_INDEX + 3).unwrap(), 6, "the compacted index keeps its term");
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!((snap.get_metadata().get_index(), snap.get_data()), (INIT_INDEX + 3, &b"state"[..]));

        // Installing a later snapshot empties the log and starts it after.
        let mut later = Snapshot::default();
        later.mut_metadata().set_index(INIT_INDEX + 20);
        later.mut_metadata().set_term(9);
        staged(&s, |s, b| s.reset_to_snapshot(&later, b));
        let again = open(&engine);
        assert_eq!((again.first_index().unwrap(), again.last_index().unwrap()), (INIT_INDEX + 21, INIT_INDEX + 20));
        assert_eq!(again.hard_state().get_commit(), INIT_INDEX + 20);
        assert_eq!(again.term(INIT_INDEX + 20).unwrap(), 9);
    }
}
