//! Corruptions of a valid history, each of which one checker must catch:
//! the proof that the checkers can fail. A runner's `--mutate` mode applies
//! every `Mutation` to a history that passed and expects `check_all` to
//! report the mutation's checker.
//!
//! Each mutation picks one candidate place (`seed` chooses among them) and
//! fails with `MutateError::NoCandidate` when the history has none (e.g. no
//! watch, no multi-key txn).

use crate::check::index::RtMax;
use crate::check::timeline::{StateAt, Timelines};
use crate::check::Checker;
use crate::history::{Bytes, Call, History, Kv, Outcome, Response, WatchResponseRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// A read returns the key's state before a write that completed before the read began.
    StaleRead,
    /// An acknowledged write's effect is missing from later reads and the final read.
    LostWrite,
    /// One event is missing from a watch (later events or progress cover it).
    DroppedWatchEvent,
    /// One event is delivered twice.
    DuplicatedWatchEvent,
    /// Two events of different revisions swap places.
    ReorderedWatchEvents,
    /// The events of one revision (a txn) come in two responses.
    SplitTxnWatch,
    /// A range shows only part of a multi-key txn.
    SplitTxnRange,
    /// A progress notification below an event already delivered.
    BackwardsProgress,
    /// A read's header revision is below one seen by an op that completed before it began.
    HeaderRevBack,
    /// A read after a lease was revoked (or seen expired) returns a key attached to it.
    ReadAfterLeaseEnd,
}

impl Mutation {
    pub const ALL: [Mutation; 10] = [
        Mutation::StaleRead,
        Mutation::LostWrite,
        Mutation::DroppedWatchEvent,
        Mutation::DuplicatedWatchEvent,
        Mutation::ReorderedWatchEvents,
        Mutation::SplitTxnWatch,
        Mutation::SplitTxnRange,
        Mutation::BackwardsProgress,
        Mutation::HeaderRevBack,
        Mutation::ReadAfterLeaseEnd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutation::StaleRead => "stale-read",
            Mutation::LostWrite => "lost-write",
            Mutation::DroppedWatchEvent => "dropped-watch-event",
            Mutation::DuplicatedWatchEvent => "duplicated-watch-event",
            Mutation::ReorderedWatchEvents => "reordered-watch-events",
            Mutation::SplitTxnWatch => "split-txn-watch",
            Mutation::SplitTxnRange => "split-txn-range",
            Mutation::BackwardsProgress => "backwards-progress",
            Mutation::HeaderRevBack => "header-rev-back",
            Mutation::ReadAfterLeaseEnd => "read-after-lease-end",
        }
    }

    /// The checker that must report it.
    pub fn expected(self) -> Checker {
        match self {
            Mutation::StaleRead => Checker::Linearizable,
            Mutation::LostWrite => Checker::Durability,
            Mutation::SplitTxnRange | Mutation::HeaderRevBack => Checker::Revisions,
            Mutation::ReadAfterLeaseEnd => Checker::Leases,
            _ => Checker::Watch,
        }
    }

    pub fn apply(self, h: &History, seed: u64) -> Result<Mutated, MutateError> {
        let t = Timelines::new(h);
        let mut m = h.clone();
        let description = match self {
            Mutation::StaleRead => stale_read(&mut m, &t, seed),
            Mutation::LostWrite => lost_write(&mut m, &t, seed),
            Mutation::DroppedWatchEvent => watch_edit(&mut m, seed, WatchEdit::Drop),
            Mutation::DuplicatedWatchEvent => watch_edit(&mut m, seed, WatchEdit::Duplicate),
            Mutation::ReorderedWatchEvents => watch_edit(&mut m, seed, WatchEdit::Reorder),
            Mutation::SplitTxnWatch => watch_edit(&mut m, seed, WatchEdit::Split),
            Mutation::SplitTxnRange => split_txn_range(&mut m, &t, seed),
            Mutation::BackwardsProgress => watch_edit(&mut m, seed, WatchEdit::BackwardsProgress),
            Mutation::HeaderRevBack => header_rev_back(&mut m, seed),
            Mutation::ReadAfterLeaseEnd => read_after_lease_end(&mut m, seed),
        }
        .ok_or(MutateError::NoCandidate(self.name()))?;
        Ok(Mutated { history: m, mutation: self, description })
    }
}

/// A corrupted history and what was done to it.
#[derive(Clone, Debug)]
pub struct Mutated {
    pub history: History,
    pub mutation: Mutation,
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    #[error("{0}: no candidate place in this history")]
    NoCandidate(&'static str),
}

fn pick<T>(mut candidates: Vec<T>, seed: u64) -> Option<T> {
    if candidates.is_empty() {
        return None;
    }
    let i = (seed % candidates.len() as u64) as usize;
    Some(candidates.swap_remove(i))
}

/// The key's state just before revision `rev`, if determined and older.
fn before(t: &Timelines, k: &Bytes, rev: i64) -> Option<Option<Kv>> {
    match t.state_at(k, rev.saturating_sub(1)) {
        StateAt::Known { kv, .. } => Some(kv),
        StateAt::Unknown => None,
    }
}

fn stale_read(m: &mut History, t: &Timelines, seed: u64) -> Option<String> {
    let mut candidates = Vec::new();
    for (i, op) in m.ops.iter().enumerate() {
        let (Call::Get { key, revision: 0, serializable: false }, Some(Response::Get { header_rev, kv: Some(kv) })) =
            (&op.call, op.response())
        else {
            continue;
        };
        let acked_before = t
            .known_of(key)
            .iter()
            .any(|e| e.rev == kv.mod_rev && e.op.and_then(|w| m.ops.get(w)?.complete).is_some_and(|c| c < op.invoke));
        if let (true, Some(Some(prev))) = (acked_before, before(t, key, kv.mod_rev)) {
            candidates.push((i, *header_rev, prev, kv.mod_rev));
        }
    }
    let (i, header_rev, prev, rev) = pick(candidates, seed)?;
    let op = m.ops.get_mut(i)?;
    op.outcome = Outcome::Ok(Response::Get { header_rev, kv: Some(prev.clone()) });
    Some(format!("op #{i} now returns {}@{} instead of the write at {rev}", prev.value, prev.mod_rev))
}

fn lost_write(m: &mut History, t: &Timelines, seed: u64) -> Option<String> {
    let f = m.final_read.as_ref()?;
    let mut candidates = Vec::new();
    for (k, kv) in &f.kvs {
        let acked = t.known_of(k).iter().find(|e| e.rev == kv.mod_rev).and_then(|e| e.op);
        let Some(w) = acked.filter(|&w| m.ops.get(w).is_some_and(|o| o.response().is_some())) else {
            continue;
        };
        if let (Some(prev), StateAt::Known { .. }) = (before(t, k, kv.mod_rev), t.state_at(k, f.header_rev)) {
            candidates.push((k.clone(), kv.mod_rev, prev, w));
        }
    }
    let (key, rev, prev, w) = pick(candidates, seed)?;
    let replace = |kvs: &mut Vec<(Bytes, Kv)>| {
        if let Some(pos) = kvs.iter().position(|(k, kv)| *k == key && kv.mod_rev == rev) {
            match &prev {
                Some(p) => kvs[pos].1 = p.clone(),
                None => {
                    kvs.remove(pos);
                }
            }
        }
    };
    if let Some(f) = m.final_read.as_mut() {
        replace(&mut f.kvs);
    }
    for op in &mut m.ops {
        match &mut op.outcome {
            Outcome::Ok(Response::Get { kv, .. }) if kv.as_ref().is_some_and(|kv| kv.mod_rev == rev) => {
                if matches!(&op.call, Call::Get { key: k, .. } if *k == key) {
                    *kv = prev.clone();
                }
            }
            Outcome::Ok(Response::Range { kvs, .. }) => replace(kvs),
            _ => {}
        }
    }
    Some(format!("the put of op #{w} to {key} at {rev} is gone from later reads and the final read"))
}

fn split_txn_range(m: &mut History, t: &Timelines, seed: u64) -> Option<String> {
    let mut candidates = Vec::new();
    for (i, op) in m.ops.iter().enumerate() {
        let Some(Response::Range { header_rev, kvs, .. }) = op.response() else {
            continue;
        };
        let at = match op.call {
            Call::Range { revision, .. } if revision > 0 => revision,
            _ => *header_rev,
        };
        for (j, (k, kv)) in kvs.iter().enumerate() {
            let shared = kvs.iter().filter(|(_, o)| o.mod_rev == kv.mod_rev).count() > 1;
            let written = t.known_of(k).iter().any(|e| e.rev == kv.mod_rev && e.op.is_some());
            if let (true, true, Some(prev), StateAt::Known { .. }) =
                (shared, written, before(t, k, kv.mod_rev), t.state_at(k, at))
            {
                candidates.push((i, j, prev));
            }
        }
    }
    let (i, j, prev) = pick(candidates, seed)?;
    if let Outcome::Ok(Response::Range { kvs, .. }) = &mut m.ops.get_mut(i)?.outcome {
        let key = kvs.get(j)?.0.clone();
        match prev {
            Some(p) => kvs.get_mut(j)?.1 = p,
            None => {
                kvs.remove(j);
            }
        }
        return Some(format!("op #{i} shows {key} as before the txn whose other keys it shows"));
    }
    None
}

fn header_rev_back(m: &mut History, seed: u64) -> Option<String> {
    let items = m.ops.iter().enumerate().filter_map(|(i, o)| Some((o.complete?, o.header_rev()?, i))).collect();
    let rt = RtMax::new(items);
    let mut candidates = Vec::new();
    for (i, op) in m.ops.iter().enumerate() {
        if let (Call::Get { serializable: false, .. }, Some(Response::Get { .. })) = (&op.call, op.response()) {
            if let Some((rev, a)) = rt.before(op.invoke).filter(|(rev, _)| *rev > 1) {
                candidates.push((i, rev, a));
            }
        }
    }
    let (i, rev, a) = pick(candidates, seed)?;
    if let Outcome::Ok(Response::Get { header_rev, .. }) = &mut m.ops.get_mut(i)?.outcome {
        *header_rev = rev - 1;
    }
    Some(format!("op #{i}'s header is now {} though op #{a} saw {rev} before it began", rev - 1))
}

fn read_after_lease_end(m: &mut History, seed: u64) -> Option<String> {
    // (lease, when it was seen gone); (key, lease, kv) of acknowledged puts.
    let mut ends = Vec::new();
    let mut puts = Vec::new();
    for op in &m.ops {
        match (&op.call, op.response(), op.complete) {
            (Call::LeaseRevoke { id }, Some(_), Some(done)) => ends.push((*id, done)),
            (Call::LeaseKeepAlive { id }, Some(Response::LeaseKeepAlive { ttl }), Some(done)) if *ttl <= 0 => {
                ends.push((*id, done))
            }
            (Call::Put { key, value, lease, .. }, Some(Response::Put { header_rev, .. }), _) if *lease != 0 => {
                let kv = Kv { value: value.clone(), mod_rev: *header_rev, create_rev: *header_rev, version: 1, lease: *lease };
                puts.push((key.clone(), kv));
            }
            _ => {}
        }
    }
    let mut candidates = Vec::new();
    for (i, op) in m.ops.iter().enumerate() {
        let (Call::Get { key, revision: 0, serializable: false }, Some(Response::Get { .. })) = (&op.call, op.response()) else {
            continue;
        };
        for (k, kv) in puts.iter().filter(|(k, _)| k == key) {
            if ends.iter().any(|&(id, done)| id == kv.lease && done < op.invoke) {
                candidates.push((i, k.clone(), kv.clone()));
            }
        }
    }
    let (i, key, kv) = pick(candidates, seed)?;
    if let Outcome::Ok(Response::Get { kv: got, .. }) = &mut m.ops.get_mut(i)?.outcome {
        *got = Some(kv.clone());
    }
    Some(format!("op #{i} now reads {key}={} attached to lease {:x}, which was gone before it began", kv.value, kv.lease))
}

#[derive(Clone, Copy, PartialEq)]
enum WatchEdit {
    Drop,
    Duplicate,
    Reorder,
    Split,
    BackwardsProgress,
}

/// Edits one watch response; candidates are (stream, response, event) places.
/// A dropped event must be of an acknowledged write, else nothing may tell
/// that it happened.
fn watch_edit(m: &mut History, seed: u64, edit: WatchEdit) -> Option<String> {
    let t = Timelines::new(m);
    let acked = |key: &Bytes, rev: i64| {
        t.known_of(key).iter().any(|e| e.rev == rev && e.op.and_then(|o| m.ops.get(o)?.response()).is_some())
    };
    let mut candidates = Vec::new();
    for (s, stream) in m.watches.iter().enumerate() {
        for (j, r) in stream.responses.iter().enumerate() {
            let later_event = |rev: i64| {
                stream.responses[j + 1..].iter().any(|x| x.watch_id == r.watch_id && x.events.iter().any(|e| e.mod_rev > rev))
            };
            for (e, ev) in r.events.iter().enumerate() {
                let ok = match edit {
                    WatchEdit::Drop => {
                        acked(&ev.key, ev.mod_rev)
                            && later_event(ev.mod_rev)
                            && !r.events.iter().any(|o| o.mod_rev == ev.mod_rev && o != ev)
                    }
                    WatchEdit::Duplicate => true,
                    WatchEdit::Reorder => r.events.get(e + 1).is_some_and(|n| n.mod_rev != ev.mod_rev),
                    WatchEdit::Split => r.events.get(e + 1).is_some_and(|n| n.mod_rev == ev.mod_rev),
                    WatchEdit::BackwardsProgress => ev.mod_rev > 1 && e + 1 == r.events.len(),
                };
                if ok {
                    candidates.push((s, j, e));
                }
            }
        }
    }
    let (s, j, e) = pick(candidates, seed)?;
    let responses = &mut m.watches.get_mut(s)?.responses;
    let r = responses.get_mut(j)?;
    let ev = r.events.get(e)?.clone();
    let place = format!("stream #{s} response {j}: event {}@{}", ev.key, ev.mod_rev);
    match edit {
        WatchEdit::Drop => {
            r.events.remove(e);
            if r.events.is_empty() {
                responses.remove(j);
            }
            Some(format!("{place} dropped"))
        }
        WatchEdit::Duplicate => {
            r.events.insert(e + 1, ev);
            Some(format!("{place} delivered twice"))
        }
        WatchEdit::Reorder => {
            r.events.swap(e, e + 1);
            Some(format!("{place} swapped with the next event"))
        }
        WatchEdit::Split => {
            let tail = r.events.split_off(e + 1);
            let second = WatchResponseRecord { events: tail, ..r.clone() };
            responses.insert(j + 1, second);
            Some(format!("{place}: the rest of its revision moved to a new response"))
        }
        WatchEdit::BackwardsProgress => {
            let progress = WatchResponseRecord { events: Vec::new(), header_rev: ev.mod_rev - 1, ..r.clone() };
            responses.insert(j + 1, progress);
            Some(format!("{place} followed by progress at {}", ev.mod_rev - 1))
        }
    }
}
