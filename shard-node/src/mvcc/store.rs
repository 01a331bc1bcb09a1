//! The store of one group: key index in memory (`State`), values in the
//! engine under their revision.
//!
//! `State` lives inside the group's state lock (`crate::state`): readers
//! hold it shared for the index walk and the value loads of one range, the
//! applier exclusively for one raft entry at a time. This type holds no lock
//! of its own. Values under a revision are immutable until compaction
//! deletes them; lookups outside the lock (history) treat a value that
//! compaction removed meanwhile as `Compacted`.

use super::range;
use super::{KeyIndex, Rev};
use crate::engine::keys::{decode_i64, decode_pair, GroupKeys};
use crate::engine::{Engine, WriteBatch};
use crate::error::{Error, Result};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use tessera_proto::etcdserverpb::{RangeRequest, RangeResponse};
use tessera_proto::mvccpb::{event::EventType, Event, KeyValue};

pub struct State {
    pub(crate) index: BTreeMap<Vec<u8>, KeyIndex>,
    /// The group's current revision: its watermark once applied.
    pub rev: i64,
    /// Reads below this revision answer `Compacted` (set when a compaction
    /// is applied; its history is removed later, in the background).
    pub compact_rev: i64,
    /// History below this revision has been removed from the index and the
    /// engine; below `compact_rev` a background compaction is due.
    pub compacted_to: i64,
    /// Bytes of all stored revisions (etcd's "db size in use"; what the
    /// space quota counts), staged ones included.
    pub bytes: u64,
    /// The history of keys under prefixes this group is taking from others
    /// (`crate::moves`): stored with the rest, kept out of the index every
    /// read and write uses until the group adopts the prefix.
    pub(crate) staged: BTreeMap<Vec<u8>, KeyIndex>,
    /// The history of keys under prefixes this group gave away with their
    /// data: out of the index, kept for the watches routed before (they
    /// read up to the fence's revision) until a compaction passes it.
    pub(crate) retired: BTreeMap<Vec<u8>, KeyIndex>,
}

/// Which index a stored revision of a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Live,
    Staged,
    Retired,
}

pub struct MvccStore {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) keys: GroupKeys,
}

pub(crate) const META_REV: &str = "rev";
pub(crate) const META_COMPACT: &str = "compact_rev";
pub(crate) const META_COMPACTED: &str = "compacted_to";

impl State {
    /// Number of live keys (etcd_debugging_mvcc_keys_total).
    pub fn key_count(&self) -> usize {
        self.index.values().filter(|k| k.latest().is_some()).count()
    }

    /// (key, lease) of every live key attached to a lease.
    pub fn attached_leases(&self) -> Vec<(Vec<u8>, i64)> {
        self.index.iter().filter_map(|(k, ki)| ki.latest().filter(|e| e.lease != 0).map(|e| (k.clone(), e.lease))).collect()
    }

    /// The revision of the key's value just before the change at `rev`
    /// (its history given away too: watches routed before still read it).
    pub fn before(&self, key: &[u8], rev: Rev) -> Option<Rev> {
        self.index.get(key).or_else(|| self.retired.get(key)).and_then(|k| k.before(rev)).map(|e| e.rev)
    }
}

/// A revision key's suffix: (main, sub), both big-endian. Revisions start
/// at 1 and subs at 0: a negative one (which would sort after every
/// positive one, breaking each key's history order) is corruption.
fn revision_of(suffix: &[u8]) -> Result<Rev> {
    let (main, sub) = decode_pair(suffix)?;
    if main < 1 || sub < 0 {
        return Err(Error::Internal(format!("corrupt revision key ({main}, {sub})")));
    }
    Ok(Rev::new(main, sub))
}

impl MvccStore {
    pub fn new(engine: Arc<dyn Engine>, keys: GroupKeys) -> Self {
        Self { engine, keys }
    }

    /// Loads the state of a group from the engine, rebuilding the key index
    /// from the revisions on disk (as etcd does at start, and after a raft
    /// snapshot replaced the state machine); `place` says which index each
    /// key's revisions go to (moves: `crate::fence`).
    pub fn load(&self, place: &dyn Fn(&[u8], i64) -> Place) -> Result<State> {
        let mut index: BTreeMap<Vec<u8>, KeyIndex> = BTreeMap::new();
        let mut staged: BTreeMap<Vec<u8>, KeyIndex> = BTreeMap::new();
        let mut retired: BTreeMap<Vec<u8>, KeyIndex> = BTreeMap::new();
        let (start, end) = self.keys.table(b'r');
        let mut bad = None;
        let mut bytes = 0u64;
        self.engine.scan(&start, &end, &mut |k, v| {
            bytes += v.len() as u64;
            let rev = match revision_of(self.keys.suffix(k)) {
                Ok(rev) => rev,
                Err(e) => {
                    bad = Some(e.to_string());
                    return false;
                }
            };
            match KeyValue::decode(v) {
                Ok(kv) => match place(&kv.key, rev.sub) {
                    Place::Live => &mut index,
                    Place::Staged => &mut staged,
                    Place::Retired => &mut retired,
                }
                .entry(kv.key.clone())
                .or_default()
                .push(super::Entry {
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
            Ok(self.engine.get(&self.keys.meta(name))?.map(|v| decode_i64(&v)).transpose()?.unwrap_or(empty))
        };
        // As etcd, an empty store is at revision 1 (its first write is 2):
        // a list of nothing still returns a revision a watch can start from.
        let compact_rev = meta(META_COMPACT, 0)?;
        // Data written before compactions ran in the background was compacted at apply.
        let compacted_to =
            self.engine.get(&self.keys.meta(META_COMPACTED))?.map(|v| decode_i64(&v)).transpose()?.unwrap_or(compact_rev);
        Ok(State { index, rev: meta(META_REV, 1)?, compact_rev, compacted_to, bytes, staged, retired })
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
    pub fn range(&self, st: &State, req: &RangeRequest) -> Result<(RangeResponse, i64)> {
        let rev = range::read_revision(st, req.revision)?;
        let resp = range::range(st, req, rev, &|revs| self.fetch(revs))?;
        Ok((resp, st.rev))
    }

    /// The value stored at `rev`, if compaction has not removed it.
    pub fn value_at(&self, rev: Rev) -> Option<KeyValue> {
        self.fetch(&[rev]).ok().and_then(|mut v| v.pop())
    }

    /// Events of revisions `[from, to]` whose key (and sub revision) passes `matches`, in
    /// revision order, reading at most `max_revs` distinct revisions (the
    /// last revision read is never cut, so a txn's events stay together).
    /// Returns the events and the highest revision read.
    /// The caller checks `from` against the compacted revision first.
    pub fn history(
        &self,
        from: i64,
        to: i64,
        max_revs: usize,
        matches: &dyn Fn(&[u8], i64) -> bool,
    ) -> Result<(Vec<Event>, i64)> {
        let start = self.keys.revision(from, 0);
        let end = self.keys.revision(to.saturating_add(1), 0);
        let mut events = vec![];
        let mut last_main = from - 1;
        let mut revs = 0usize;
        let mut bad = None;
        self.engine.scan(&start, &end, &mut |k, v| {
            // Written by this store (`load` checked every one).
            let Ok(Rev { main, sub }) = revision_of(self.keys.suffix(k)) else { return true };
            if main != last_main {
                if revs == max_revs {
                    return false;
                }
                revs += 1;
                last_main = main;
            }
            match KeyValue::decode(v) {
                Ok(kv) if matches(&kv.key, sub) => events.push(event_of(kv)),
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

    /// Removes history below `at` from the index entries of up to `limit`
    /// keys from `from` on; returns the revisions to delete from the engine
    /// and the key to go on from (None: done). Under the state write lock,
    /// one bounded step of a background compaction.
    pub(crate) fn compact_keys(st: &mut State, at: i64, from: &[u8], limit: usize) -> (Vec<Rev>, Option<Vec<u8>>) {
        let mut dropped = vec![];
        let mut emptied = vec![];
        let mut next = None;
        for (n, (k, ki)) in
            st.index.range_mut::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded)).enumerate()
        {
            if n == limit {
                next = Some(k.clone());
                break;
            }
            if ki.compact(at, &mut dropped) {
                emptied.push(k.clone());
            }
        }
        for k in emptied {
            st.index.remove(&k);
        }
        st.bytes = st.bytes.saturating_sub(dropped.iter().map(|e| e.size as u64).sum());
        (dropped.into_iter().map(|e| e.rev).collect(), next)
    }

    /// Compacts the history of keys given away (`State::retired`) at `at`:
    /// all of a key's once `at` passed the revision up to which watches
    /// read it here (`given_away_at`). Returns the revisions to delete.
    pub(crate) fn compact_retired(st: &mut State, at: i64, given_away_at: &dyn Fn(&[u8]) -> Option<i64>) -> Vec<Rev> {
        let mut dropped = vec![];
        st.retired.retain(|k, ki| {
            if given_away_at(k).is_none_or(|r| r <= at) {
                dropped.extend(ki.entries().iter().copied());
                false
            } else {
                !ki.compact(at, &mut dropped)
            }
        });
        st.bytes = st.bytes.saturating_sub(dropped.iter().map(|e| e.size as u64).sum());
        dropped.into_iter().map(|e| e.rev).collect()
    }

    /// The revisions at or below `at` that compacting at `at` keeps: each
    /// key's value as of `at` (what HashKV covers besides newer history, so
    /// members agree whatever their background compaction has removed).
    pub(crate) fn kept_at(st: &State, at: i64) -> std::collections::HashSet<Rev> {
        st.index.values().filter_map(|ki| ki.at(at).map(|e| e.rev)).collect()
    }

    pub(crate) fn write_meta(&self, batch: &mut WriteBatch, st: &State) {
        batch.put(self.keys.meta(META_REV), st.rev.to_be_bytes().to_vec());
        batch.put(self.keys.meta(META_COMPACT), st.compact_rev.to_be_bytes().to_vec());
    }

    /// etcd's HashKV: a CRC32 over every stored revision up to `rev`
    /// (already checked against the state) that a compaction at `compact`
    /// keeps (`kept`, at or below it; all above it): members with the same
    /// history agree, however far their background compaction has gone.
    pub fn hash_kv(&self, rev: i64, compact: i64, kept: &std::collections::HashSet<Rev>) -> Result<u32> {
        let (start, _) = self.keys.table(b'r');
        let end = self.keys.revision(rev.saturating_add(1), 0);
        let mut h = crc32fast::Hasher::new();
        self.engine.scan(&start, &end, &mut |k, v| {
            let suffix = self.keys.suffix(k);
            let Ok(r) = revision_of(suffix) else { return true };
            if r.main > compact || kept.contains(&r) {
                h.update(suffix);
                h.update(v);
            }
            true
        })?;
        Ok(h.finalize())
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
