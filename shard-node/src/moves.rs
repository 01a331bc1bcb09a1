//! Moving a prefix with its data to another group: this group's side, as
//! the source (export, release) and as the target (stage, cutover, adopt).
//! Placement drives the protocol (docs/architecture.md, "Moving a
//! prefix"); each step is one raft entry and idempotent, so placement can
//! repeat a step it is unsure of and resume or roll back a move after any
//! crash.
//!
//! Staged revisions: the target stores the source's revisions under the
//! source's main revisions, so each key's revisions and the watch history
//! are the same on both sides of the move. Groups write the same main
//! revisions for different keys (one timeline, several writers), so a
//! staged revision takes a sub revision in a band no write reaches
//! (`STAGED_SUB` + sub × `STRIDE` + a probe past any revision the group
//! holds already), which keeps a txn's order within its revision. A
//! leaving group's remainder, staged under the empty prefix, takes a band
//! of its own (`REMAINDER_SUB`): under that prefix every revision an
//! earlier move brought here is in the first band, and is this group's.
//!
//! Applies hold the state lock (exclusive) and write one batch, as every
//! apply does (`crate::apply`); they publish no watch events: the moved
//! history is history, its events were sent by the source.

use crate::apply::Applied;
use crate::engine::WriteBatch;
use crate::error::{Error, Result};
use crate::mvcc::{Entry, KeyIndex, Rev, State};
use crate::state::{StateMachine, Tables};
use prost::Message;
use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use tessera_proto::mvccpb::KeyValue;
use tessera_proto::tessera::command::{move_target::Action, LeaseCopy, MoveRelease, MoveStage, MoveTarget, MovedEntry};

const STAGED_SUB: i64 = 1 << 40;
/// A remainder's band, past every slot of the first (`STAGED_SUB` + a
/// source sub below `STAGED_SUB / STRIDE`, times `STRIDE`).
const REMAINDER_SUB: i64 = 1 << 41;
/// The time a moved key's lease gets when its source did not say (it had
/// none left): it expires, and its keys go, at once.
const MIN_COPIED_TTL: i64 = 1;
const STRIDE: i64 = 1 << 10;

/// Whether a stored revision with sub revision `sub` was moved here.
pub fn is_moved(sub: i64) -> bool {
    sub >= STAGED_SUB
}

/// Whether stored revision `sub` of a key under `prefix` is in the band
/// the move of `prefix` stages in (the empty prefix: a remainder's). A
/// revision in the other band came here by an earlier move: it is this
/// group's.
pub fn moved_by(prefix: &[u8], sub: i64) -> bool {
    if prefix.is_empty() {
        sub >= REMAINDER_SUB
    } else {
        is_moved(sub) && sub < REMAINDER_SUB
    }
}

/// The first staged sub revision for a source's sub revision `sub`: its
/// place in its txn, which a revision moved before keeps (so a prefix moved
/// again and again stays in the band, and in order), in the band of a
/// remainder or of a prefix's move.
fn staged_slot(sub: i64, remainder: bool) -> i64 {
    let place = match sub {
        s if s >= REMAINDER_SUB => (s - REMAINDER_SUB) / STRIDE,
        s if is_moved(s) => (s - STAGED_SUB) / STRIDE,
        s => s,
    };
    (if remainder { REMAINDER_SUB } else { STAGED_SUB }) + place * STRIDE
}

/// A chunk of a prefix's history, as the source answers it.
#[derive(Debug, Default)]
pub struct Export {
    pub entries: Vec<MovedEntry>,
    /// The cursor to go on from.
    pub next: Rev,
    /// Nothing after `next` up to `revision`.
    pub done: bool,
    pub compact_revision: i64,
    pub revision: i64,
    /// When done and asked for: the leases the live keys are attached to.
    pub leases: Vec<LeaseCopy>,
    /// Live keys under the prefix.
    pub keys: i64,
    /// `live_digest` of the prefix, when done and asked for leases.
    pub digest: u64,
}

/// The keys of `index` under `prefix`.
fn under<'a>(index: &'a BTreeMap<Vec<u8>, KeyIndex>, prefix: &[u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a KeyIndex)> {
    let end = shardmap::prefix_end(prefix);
    let upper = if end == [0] { Bound::Unbounded } else { Bound::Excluded(end) };
    index.range::<Vec<u8>, _>((Bound::Included(prefix.to_vec()), upper))
}

fn keys_under(index: &BTreeMap<Vec<u8>, KeyIndex>, prefix: &[u8]) -> Vec<Vec<u8>> {
    under(index, prefix).map(|(k, _)| k.clone()).collect()
}

fn live_keys(index: &BTreeMap<Vec<u8>, KeyIndex>, prefix: &[u8]) -> i64 {
    under(index, prefix).filter(|(_, ki)| ki.latest().is_some()).count() as i64
}

/// A digest of the live keys under `prefix`: each key with its latest
/// revision (main), creation, version, lease and stored size, hashed and
/// summed — order-free, so the digests of a move's sources add up to the
/// target's staged digest when the copy is whole (a key short of its last
/// write changes it, where a key count does not).
pub(crate) fn live_digest(index: &BTreeMap<Vec<u8>, KeyIndex>, prefix: &[u8]) -> u64 {
    under(index, prefix).filter_map(|(k, ki)| ki.latest().map(|e| (k, e))).fold(0u64, |sum, (k, e)| {
        let mut b = k.clone();
        for n in [e.rev.main, e.create, e.version, e.lease, e.size as i64] {
            b.extend(n.to_be_bytes());
        }
        sum.wrapping_add(shardmap::ring::hash(&b))
    })
}

fn moves_error(what: &str) -> Error {
    Error::InvalidArgument(format!("tessera: {what}"))
}

/// Takes every key under `prefix` out of `from`; returns them.
fn take_under(from: &mut BTreeMap<Vec<u8>, KeyIndex>, prefix: &[u8]) -> Vec<(Vec<u8>, KeyIndex)> {
    keys_under(from, prefix).into_iter().filter_map(|k| from.remove_entry(&k)).collect()
}

/// Deletes the stored revisions of `entries` (no events: history going away).
fn delete_all(st: &mut State, sm: &StateMachine, entries: impl Iterator<Item = Entry>, batch: &mut WriteBatch) {
    for e in entries {
        st.bytes = st.bytes.saturating_sub(e.size as u64);
        batch.delete(sm.keys.revision(e.rev.main, e.rev.sub));
    }
}

impl StateMachine {
    /// The history of `prefix` after `after`, in revision order, about
    /// `max_bytes` of it: each key's revisions a compaction at the
    /// group's compacted revision keeps (the rest is gone, or soon).
    pub fn export(&self, prefix: &[u8], after: Rev, max_bytes: u64, with_leases: bool) -> Result<Export> {
        let t = self.tables.read();
        let st = &t.mvcc;
        let compact = st.compact_rev;
        let mut pending: Vec<(Rev, u32)> = vec![];
        for (_, ki) in under(&st.index, prefix) {
            let kept = ki.at(compact).map(|e| e.rev);
            pending.extend(
                ki.entries()
                    .iter()
                    .filter(|e| e.rev > after && (e.rev.main > compact || Some(e.rev) == kept))
                    .map(|e| (e.rev, e.size)),
            );
        }
        pending.sort_unstable();
        let mut bytes = 0u64;
        let take = pending
            .iter()
            .take_while(|(_, size)| {
                let first = bytes == 0;
                bytes += *size as u64;
                first || bytes <= max_bytes
            })
            .count();
        let revs: Vec<Rev> = pending[..take].iter().map(|(r, _)| *r).collect();
        let values = self.store.fetch(&revs)?;
        let entries: Vec<MovedEntry> =
            revs.iter().zip(values).map(|(r, kv)| MovedEntry { main: r.main, sub: r.sub, value: kv.encode_to_vec() }).collect();
        let done = take == pending.len();
        let leases = if done && with_leases {
            let live = self.liveness.lock();
            let mut ids: Vec<i64> =
                under(&st.index, prefix).filter_map(|(_, ki)| ki.latest()).map(|e| e.lease).filter(|l| *l != 0).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.into_iter()
                .filter_map(|id| {
                    let l = t.leases.get(id)?;
                    Some(LeaseCopy { id, ttl: live.remaining(id).unwrap_or(l.ttl).max(1) })
                })
                .collect()
        } else {
            vec![]
        };
        Ok(Export {
            next: revs.last().copied().unwrap_or(after),
            entries,
            done,
            compact_revision: compact,
            revision: st.rev,
            leases,
            keys: live_keys(&st.index, prefix),
            digest: if done && with_leases { live_digest(&st.index, prefix) } else { 0 },
        })
    }

    /// Live keys and bytes staged under `prefix`.
    pub fn staged_size(&self, prefix: &[u8]) -> (i64, u64) {
        let t = self.tables.read();
        let bytes = under(&t.mvcc.staged, prefix).flat_map(|(_, ki)| ki.entries().iter()).map(|e| e.size as u64).sum();
        (live_keys(&t.mvcc.staged, prefix), bytes)
    }

    /// The target's staging (`MoveStage`).
    pub(crate) fn apply_stage(&self, t: &mut Tables, s: &MoveStage, batch: &mut WriteBatch) -> Result<Applied> {
        if s.prefix.is_empty() != s.remainder {
            return Err(moves_error("a move needs a prefix (the empty prefix only for a group's remainder)"));
        }
        if s.reset || s.abandon {
            // Adopted here by this move (a step repeated), or — a remainder
            // only — by an earlier one, before this move began.
            let adopted = t.fences.incoming(&s.prefix).map_or(0, |i| i.adopted_epoch);
            if adopted != 0 && !(s.remainder && adopted < s.epoch) {
                return Err(moves_error("the prefix was adopted here already"));
            }
            let dropped = take_under(&mut t.mvcc.staged, &s.prefix);
            delete_all(&mut t.mvcc, self, dropped.into_iter().flat_map(|(_, ki)| ki.into_entries()), batch);
        }
        if s.abandon {
            t.fences.abandon(&s.prefix, &self.keys, batch);
            return Ok(Applied::Staged { keys: 0, bytes: 0, digest: 0 });
        }
        if s.reset {
            // History of the prefix this group gave away before: the
            // sources' replaces it (stale history in the index, of keys
            // deleted before they moved, is replaced key by key at adoption).
            // (Not for a remainder: under the empty prefix that would be
            // every prefix this group gave away, and a leaving group's unit
            // pins were never given away by another.)
            if !s.remainder {
                let old = take_under(&mut t.mvcc.retired, &s.prefix);
                delete_all(&mut t.mvcc, self, old.into_iter().flat_map(|(_, ki)| ki.into_entries()), batch);
            }
            t.fences.stage(&s.prefix, s.epoch, &self.keys, batch);
        } else if !t.fences.staging(&s.prefix) {
            return Err(moves_error("no move of that prefix to this group is staging"));
        }
        let mut taken: HashSet<Rev> = HashSet::new();
        for m in &s.entries {
            let kv = KeyValue::decode(m.value.as_slice()).map_err(|e| moves_error(&format!("a moved entry: {e}")))?;
            if !kv.key.starts_with(&s.prefix)
                || m.main != kv.mod_revision
                || m.sub < 0
                || (!is_moved(m.sub) && m.sub >= STAGED_SUB / STRIDE)
            {
                return Err(moves_error("a moved entry outside the prefix or its revision"));
            }
            let ki = t.mvcc.staged.entry(kv.key.clone()).or_default();
            // Sent again (a step repeated): staged already.
            if ki.entries().last().is_some_and(|l| l.rev.main >= m.main) {
                continue;
            }
            let slot = staged_slot(m.sub, s.remainder);
            let mut rev = Rev::new(m.main, slot);
            while taken.contains(&rev) || self.engine.get(&self.keys.revision(rev.main, rev.sub))?.is_some() {
                rev.sub += 1;
                if rev.sub >= slot + STRIDE {
                    return Err(Error::Internal(format!("no room to stage revision {}", m.main)));
                }
            }
            taken.insert(rev);
            let size = m.value.len() as u32;
            ki.push(Entry { rev, create: kv.create_revision, version: kv.version, lease: kv.lease, size });
            t.mvcc.bytes += size as u64;
            batch.put(self.keys.revision(rev.main, rev.sub), m.value.clone());
        }
        let keys = live_keys(&t.mvcc.staged, &s.prefix);
        let digest = if s.digest { live_digest(&t.mvcc.staged, &s.prefix) } else { 0 };
        Ok(Applied::Staged { keys, bytes: t.mvcc.bytes, digest })
    }

    /// The target's cutover and adoption (`MoveTarget`).
    pub(crate) fn apply_target(&self, t: &mut Tables, m: &MoveTarget, batch: &mut WriteBatch) -> Result<Applied> {
        match Action::try_from(m.action) {
            Ok(Action::Cutover) => {
                t.fences.cutover(&m.prefix, m.epoch, &self.keys, batch)?;
                Ok(Applied::Done)
            }
            Ok(Action::Adopt) => self.adopt(t, m, batch),
            _ => Err(moves_error("a move target needs an action")),
        }
    }

    fn adopt(&self, t: &mut Tables, m: &MoveTarget, batch: &mut WriteBatch) -> Result<Applied> {
        let st = &mut t.mvcc;
        // Past the sources' revisions at their fences: every later write
        // under the prefix comes after the moved history.
        let rev = st.rev.max(m.revision);
        if !t.fences.staging(&m.prefix) {
            // Adopted before (a repeated step), or never staged.
            return match t.fences.incoming(&m.prefix) {
                Some(_) => Ok(Applied::Done),
                None => Err(moves_error("no move of that prefix to this group")),
            };
        }
        let compact = st.compact_rev.max(m.compact_revision);
        if compact > rev {
            return Err(Error::FutureRev);
        }
        if !t.fences.adopt(&m.prefix, m.epoch, rev, !m.remainder, &self.keys, batch)? {
            return Ok(Applied::Done);
        }
        st.rev = rev;
        st.compact_rev = compact;
        let lease_ttl: BTreeMap<i64, i64> = m.leases.iter().map(|l| (l.id, l.ttl)).collect();
        let mut dropped = vec![];
        for (key, mut ki) in take_under(&mut st.staged, &m.prefix) {
            if ki.compact(compact, &mut dropped) {
                continue;
            }
            if let Some(old) = st.index.remove(&key) {
                // History of the key from before it moved away once; a live
                // one only if a client bypassing the router wrote it here.
                if let Some(e) = old.latest() {
                    tracing::warn!(key = ?String::from_utf8_lossy(&key), "a key written here while its prefix was staged lost to the moved one");
                    t.leases.move_key(&key, e.lease, 0);
                }
                dropped.extend(old.into_entries());
            }
            if let Some(lease) = ki.latest().map(|e| e.lease).filter(|l| *l != 0) {
                if !t.leases.exists(lease) {
                    // Not copied here before: granted with the source's time left.
                    let ttl = lease_ttl.get(&lease).copied().unwrap_or(MIN_COPIED_TTL);
                    t.leases.grant(lease, ttl, batch);
                    self.liveness.lock().granted(lease, ttl);
                }
                t.leases.move_key(&key, 0, lease);
            }
            st.index.insert(key, ki);
        }
        delete_all(st, self, dropped.into_iter(), batch);
        self.store.write_meta(batch, st);
        Ok(Applied::Done)
    }

    /// The source's release (`MoveRelease`): moved, its copy of the prefix
    /// leaves the index (kept for the watches routed before, until a
    /// compaction passes the fence); rolled back, the fence goes.
    pub(crate) fn apply_release(&self, t: &mut Tables, r: &MoveRelease, batch: &mut WriteBatch) -> Result<Applied> {
        let was_pending = t.fences.release(&r.prefix, r.epoch, r.moved, &self.keys, batch);
        if !(r.moved && was_pending) {
            return Ok(Applied::Released { keys: 0 });
        }
        Ok(Applied::Released { keys: retire(t, &r.prefix) })
    }
}

/// Takes the prefix's keys out of the index into the retired history
/// (their leases no longer hold them here); returns how many were live.
pub(crate) fn retire(t: &mut Tables, prefix: &[u8]) -> i64 {
    let mut live = 0;
    for (k, ki) in take_under(&mut t.mvcc.index, prefix) {
        if let Some(e) = ki.latest() {
            live += 1;
            if e.lease != 0 {
                t.leases.move_key(&k, e.lease, 0);
            }
        }
        t.mvcc.retired.insert(k, ki);
    }
    live
}

#[cfg(test)]
mod tests;
