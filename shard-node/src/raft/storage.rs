//! The raft log of one group in the engine (raft-rs `Storage`).
//!
//! Invariants: entries `(truncated.index, last_index]` are in the engine;
//! `term(truncated.index)` is answered from the truncated state; appends and
//! hard state are written with fsync before the driver sends the messages or
//! acknowledges anything that depends on them.

use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, WriteBatch};
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::sync::Arc;

/// Builds a snapshot of the state machine at its applied index.
pub trait SnapshotSource: Send + Sync {
    /// (applied index, encoded state machine)
    fn build(&self) -> crate::error::Result<(u64, Vec<u8>)>;
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
            Some(v) => Truncated {
                index: crate::engine::keys::decode_u64(&v[..8]),
                term: crate::engine::keys::decode_u64(&v[8..16]),
            },
            None => Truncated::default(),
        };
        let (start, end) = keys.table(b'L');
        let mut last_index = truncated.index;
        // The log is short (compacted behind snapshots): find its end.
        engine
            .scan(&start, &end, &mut |k, _| {
                last_index = crate::engine::keys::decode_u64(keys.suffix(k));
                true
            })
            .map_err(other)?;
        Ok(Self {
            engine,
            keys,
            inner: Arc::new(RwLock::new(Inner { hard_state, conf_state, truncated, last_index })),
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

    fn entries(&self, low: u64, high: u64, max_size: impl Into<Option<u64>>, _ctx: GetEntriesContext) -> raft::Result<Vec<Entry>> {
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
