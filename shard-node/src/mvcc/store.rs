//! The store of one group: key index in memory, values in the engine.
//!
//! Lock order: the state lock is taken by readers (shared, for the index walk
//! and the value loads of one range) and by the applier (exclusive, for one
//! raft entry at a time). Values under a revision are immutable until
//! compaction deletes them; lookups outside the lock (prev_kv, history) treat
//! a value compaction removed meanwhile as `Compacted`.

use super::range;
use super::{KeyIndex, Rev};
use crate::engine::keys::{decode_i64, GroupKeys};
use crate::engine::{Engine, WriteBatch};
use crate::error::{Error, Result};
use parking_lot::RwLock;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use tessera_proto::etcdserverpb::{RangeRequest, RangeResponse};
use tessera_proto::mvccpb::{event::EventType, Event, KeyValue};

pub struct State {
    pub(crate) index: BTreeMap<Vec<u8>, KeyIndex>,
    /// The group's current revision: its watermark once applied.
    pub rev: i64,
    /// Reads below this revision answer `Compacted`.
    pub compact_rev: i64,
    /// Bytes of all stored revisions (etcd's "db size in use"; what the
    /// space quota counts).
    pub bytes: u64,
}

pub struct MvccStore {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) keys: GroupKeys,
    pub(crate) state: RwLock<State>,
}

pub(crate) const META_REV: &str = "rev";
pub(crate) const META_COMPACT: &str = "compact_rev";

impl MvccStore {
    /// Loads the store of a group from the engine, rebuilding the key index
    /// from the revisions on disk (as etcd does at start).
    pub fn open(engine: Arc<dyn Engine>, keys: GroupKeys) -> Result<Self> {
        let store = Self {
            engine,
            keys,
            state: RwLock::new(State { index: BTreeMap::new(), rev: 0, compact_rev: 0, bytes: 0 }),
        };
        store.reload()?;
        Ok(store)
    }

    /// Re-reads everything from the engine (at open, and after a raft
    /// snapshot replaced the state machine).
    pub fn reload(&self) -> Result<()> {
        let mut index: BTreeMap<Vec<u8>, KeyIndex> = BTreeMap::new();
        let (start, end) = self.keys.table(b'r');
        let mut bad = None;
        let mut bytes = 0u64;
        self.engine.scan(&start, &end, &mut |k, v| {
            bytes += v.len() as u64;
            let suffix = self.keys.suffix(k);
            let rev = Rev::new(decode_i64(&suffix[..8]), decode_i64(&suffix[8..16]));
            match KeyValue::decode(v) {
                Ok(kv) => index.entry(kv.key.clone()).or_default().push(super::Entry {
                    rev,
                    create: kv.create_revision,
                    version: kv.version,
                    lease: kv.lease,
                    size: v.len() as u32,
                }),
                Err(e) => bad = Some(e.to_string()),
            }
            bad.is_none()
        })?;
        if let Some(e) = bad {
            return Err(Error::Internal(format!("corrupt revision value: {e}")));
        }
        let meta = |name, empty| -> Result<i64> {
            Ok(self.engine.get(&self.keys.meta(name))?.map(|v| decode_i64(&v)).unwrap_or(empty))
        };
        let mut st = self.state.write();
        // As etcd, an empty store is at revision 1 (its first write is 2):
        // a list of nothing still returns a revision a watch can start from.
        st.rev = meta(META_REV, 1)?;
        st.compact_rev = meta(META_COMPACT, 0)?;
        st.index = index;
        st.bytes = bytes;
        Ok(())
    }

    pub fn current_revision(&self) -> i64 {
        self.state.read().rev
    }

    pub fn compact_revision(&self) -> i64 {
        self.state.read().compact_rev
    }

    /// Number of live keys (etcd_debugging_mvcc_keys_total).
    pub fn key_count(&self) -> usize {
        let st = self.state.read();
        st.index.values().filter(|k| k.latest().is_some()).count()
    }

    pub(crate) fn fetch(&self, revs: &[Rev]) -> Result<Vec<KeyValue>> {
        let keys: Vec<Vec<u8>> = revs.iter().map(|r| self.keys.revision(r.main, r.sub)).collect();
        self.engine
            .multi_get(&keys)?
            .into_iter()
            .map(|v| {
                let v = v.ok_or(Error::Compacted)?;
                KeyValue::decode(v.as_slice()).map_err(|e| Error::Internal(e.to_string()))
            })
            .collect()
    }

    /// Serves a read; also returns the current revision for the header
    /// (etcd reports the store's revision, not the one read at).
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64)> {
        let st = self.state.read();
        let rev = range::read_revision(&st, req.revision)?;
        let resp = range::range(&st, req, rev, &|revs| self.fetch(revs))?;
        Ok((resp, st.rev))
    }

    /// The key as it was just before the change at `rev` (a watcher's prev_kv).
    pub fn prev_of(&self, key: &[u8], rev: Rev) -> Result<Option<KeyValue>> {
        let e = {
            let st = self.state.read();
            st.index.get(key).and_then(|k| k.before(rev)).map(|e| e.rev)
        };
        match e {
            Some(r) => Ok(self.fetch(&[r]).ok().and_then(|mut v| v.pop())),
            None => Ok(None),
        }
    }

    /// Events of revisions `[from, to]` whose key passes `matches`, in
    /// revision order, reading at most `max_revs` distinct revisions (the
    /// last revision read is never cut, so a txn's events stay together).
    /// Returns the events and the highest revision read.
    pub fn history(
        &self,
        from: i64,
        to: i64,
        max_revs: usize,
        matches: &dyn Fn(&[u8]) -> bool,
    ) -> Result<(Vec<Event>, i64)> {
        if from < self.compact_revision() {
            return Err(Error::Compacted);
        }
        let start = self.keys.revision(from, 0);
        let end = self.keys.revision(to.saturating_add(1), 0);
        let mut events = vec![];
        let mut last_main = from - 1;
        let mut revs = 0usize;
        let mut bad = None;
        self.engine.scan(&start, &end, &mut |k, v| {
            let main = decode_i64(&self.keys.suffix(k)[..8]);
            if main != last_main {
                if revs == max_revs {
                    return false;
                }
                revs += 1;
                last_main = main;
            }
            match KeyValue::decode(v) {
                Ok(kv) if matches(&kv.key) => events.push(event_of(kv)),
                Ok(_) => {}
                Err(e) => bad = Some(e.to_string()),
            }
            bad.is_none()
        })?;
        if let Some(e) = bad {
            return Err(Error::Internal(e));
        }
        // Fewer revisions on disk than asked: everything up to `to` was read.
        let upto = if revs < max_revs { to } else { last_main };
        Ok((events, upto))
    }

    /// Removes history below `at` from the index; returns the revisions to
    /// delete from the engine. Called by the applier under its write lock.
    pub(crate) fn compact_index(st: &mut State, at: i64) -> Vec<Rev> {
        let mut dropped = vec![];
        st.index.retain(|_, ki| !ki.compact(at, &mut dropped));
        st.compact_rev = at;
        st.bytes = st.bytes.saturating_sub(dropped.iter().map(|e| e.size as u64).sum());
        dropped.into_iter().map(|e| e.rev).collect()
    }

    pub fn size_in_use(&self) -> u64 {
        self.state.read().bytes
    }

    pub(crate) fn write_meta(&self, batch: &mut WriteBatch, st: &State) {
        batch.put(self.keys.meta(META_REV), st.rev.to_be_bytes().to_vec());
        batch.put(self.keys.meta(META_COMPACT), st.compact_rev.to_be_bytes().to_vec());
    }

    /// etcd's HashKV: a CRC32 over every stored revision up to `rev` (0 =
    /// current); members with the same history agree. Returns (hash, rev).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64)> {
        let rev = {
            let st = self.state.read();
            range::read_revision(&st, rev)?
        };
        let (start, _) = self.keys.table(b'r');
        let end = self.keys.revision(rev.saturating_add(1), 0);
        let mut h = crc32fast::Hasher::new();
        self.engine.scan(&start, &end, &mut |k, v| {
            h.update(self.keys.suffix(k));
            h.update(v);
            true
        })?;
        Ok((h.finalize(), rev))
    }

    /// (key, lease) of every live key attached to a lease.
    pub fn attached_leases(&self) -> Vec<(Vec<u8>, i64)> {
        let st = self.state.read();
        st.index
            .iter()
            .filter_map(|(k, ki)| ki.latest().filter(|e| e.lease != 0).map(|e| (k.clone(), e.lease)))
            .collect()
    }

}

/// The watch event a stored revision stands for: a version of 0 is a tombstone.
pub fn event_of(kv: KeyValue) -> Event {
    if kv.version == 0 {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue { key: kv.key, mod_revision: kv.mod_revision, ..Default::default() }),
            prev_kv: None,
        }
    } else {
        Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: None }
    }
}
