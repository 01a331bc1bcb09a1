//! Indexes over a history shared by the checkers: the key universe, "the
//! highest revision seen by ops that completed before time t", and what the
//! history observed of each written value (which lets an op with an unknown
//! outcome be known as applied, at the revision it was seen with).

use crate::history::{in_range, Bytes, Call, EventKind, History, Response, TxnOp, TxnResult};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;

/// Every key the history names or saw (not the bounds of ranges).
pub(crate) fn universe(h: &History) -> BTreeSet<Bytes> {
    let mut keys = BTreeSet::new();
    keys.extend(h.initial.iter().map(|(k, _)| k.clone()));
    for op in &h.ops {
        keys.extend(op.named_keys().into_iter().cloned());
        if let Some(Response::Range { kvs, .. }) = op.response() {
            keys.extend(kvs.iter().map(|(k, _)| k.clone()));
        }
    }
    for stream in &h.watches {
        for r in &stream.responses {
            keys.extend(r.events.iter().map(|e| e.key.clone()));
        }
    }
    if let Some(f) = &h.final_read {
        keys.extend(f.kvs.iter().map(|(k, _)| k.clone()));
    }
    keys
}

/// The keys of `universe` in etcd's range (`key`, `range_end`).
pub(crate) fn keys_in<'a>(universe: &'a BTreeSet<Bytes>, key: &Bytes, range_end: &Bytes) -> Vec<&'a Bytes> {
    if range_end.is_empty() {
        return universe.get(key).into_iter().collect();
    }
    let from = if key.as_slice() == [0] && range_end.as_slice() == [0] { Bytes::default() } else { key.clone() };
    let to = if range_end.as_slice() == [0] { Bound::Unbounded } else { Bound::Excluded(range_end.clone()) };
    if matches!(&to, Bound::Excluded(end) if *end <= from) {
        return Vec::new();
    }
    universe.range((Bound::Included(from), to)).filter(|k| in_range(key, range_end, k)).collect()
}

/// The highest revision among items that completed strictly before a time.
#[derive(Default)]
pub(crate) struct RtMax {
    times: Vec<u64>,
    best: Vec<(i64, usize)>,
}

impl RtMax {
    /// Items are (completion time, revision, op index).
    pub(crate) fn new(mut items: Vec<(u64, i64, usize)>) -> RtMax {
        items.sort();
        let mut times = Vec::with_capacity(items.len());
        let mut best: Vec<(i64, usize)> = Vec::with_capacity(items.len());
        for (t, rev, op) in items {
            let prev = best.last().copied();
            times.push(t);
            best.push(match prev {
                Some(p) if p.0 >= rev => p,
                _ => (rev, op),
            });
        }
        RtMax { times, best }
    }

    /// (revision, op) of the highest revision among items completed before `t`.
    pub(crate) fn before(&self, t: u64) -> Option<(i64, usize)> {
        let n = self.times.partition_point(|&c| c < t);
        if n == 0 {
            None
        } else {
            self.best.get(n - 1).copied()
        }
    }
}

/// Per key: (completion, header revision, op) of successful ops naming it.
pub(crate) fn per_key_rt(h: &History) -> HashMap<Bytes, RtMax> {
    let mut items: HashMap<Bytes, Vec<(u64, i64, usize)>> = HashMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if let (Some(rev), Some(c)) = (op.header_rev(), op.complete) {
            for k in op.named_keys() {
                items.entry(k.clone()).or_default().push((c, rev, i));
            }
        }
    }
    items.into_iter().map(|(k, v)| (k, RtMax::new(v))).collect()
}

/// What the history saw of each (key, value): the mod revisions it was
/// read or watched with, and which ops wrote it.
#[derive(Default)]
pub(crate) struct Observations {
    pub(crate) seen: HashMap<(Bytes, Bytes), BTreeSet<i64>>,
    /// Values compared against in txns (seen, without a revision).
    pub(crate) compared: HashSet<(Bytes, Bytes)>,
    pub(crate) writers: HashMap<(Bytes, Bytes), Vec<usize>>,
}

impl Observations {
    pub(crate) fn new(h: &History) -> Observations {
        let mut o = Observations::default();
        let mut see = |k: &Bytes, v: &Bytes, rev: i64| {
            o.seen.entry((k.clone(), v.clone())).or_default().insert(rev);
        };
        for op in &h.ops {
            match (op.response(), &op.call) {
                (Some(Response::Get { kv: Some(kv), .. }), Call::Get { key, .. }) => see(key, &kv.value, kv.mod_rev),
                (Some(Response::Range { kvs, .. }), _) => kvs.iter().for_each(|(k, kv)| see(k, &kv.value, kv.mod_rev)),
                (Some(Response::Put { prev: Some(kv), .. }), Call::Put { key, .. }) => see(key, &kv.value, kv.mod_rev),
                (Some(Response::Txn { succeeded, results, .. }), Call::Txn { success, failure, .. }) => {
                    let branch = if *succeeded { success } else { failure };
                    for (o, r) in branch.iter().zip(results) {
                        if let (TxnOp::Get { key }, TxnResult::Get { kv: Some(kv) }) = (o, r) {
                            see(key, &kv.value, kv.mod_rev);
                        }
                    }
                }
                _ => {}
            }
        }
        for stream in &h.watches {
            for r in &stream.responses {
                for e in &r.events {
                    if e.kind == EventKind::Put {
                        see(&e.key, &e.value, e.mod_rev);
                    }
                    if let Some(p) = &e.prev {
                        see(&e.key, &p.value, p.mod_rev);
                    }
                }
            }
        }
        if let Some(f) = &h.final_read {
            f.kvs.iter().for_each(|(k, kv)| see(k, &kv.value, kv.mod_rev));
        }
        // A value of the initial state was written before the history: by no op of it.
        for (k, kv) in &h.initial {
            o.seen.entry((k.clone(), kv.value.clone())).or_default().insert(kv.mod_rev);
            o.writers.entry((k.clone(), kv.value.clone())).or_default().push(usize::MAX);
        }
        for (i, op) in h.ops.iter().enumerate() {
            if op.is_error() {
                continue;
            }
            match &op.call {
                Call::Put { key, value, .. } => o.writers.entry((key.clone(), value.clone())).or_default().push(i),
                Call::Txn { compares, success, failure } => {
                    for c in compares {
                        if let crate::history::CompareTarget::Value(v) = &c.target {
                            o.compared.insert((c.key.clone(), v.clone()));
                        }
                    }
                    for t in success.iter().chain(failure) {
                        if let TxnOp::Put { key, value, .. } = t {
                            let w = o.writers.entry((key.clone(), value.clone())).or_default();
                            if w.last() != Some(&i) {
                                w.push(i);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        o
    }

    /// The one revision (key, value) was seen with, when exactly one op wrote it.
    fn unique_sighting(&self, key: &Bytes, value: &Bytes, op: usize) -> Option<i64> {
        let kv = (key.clone(), value.clone());
        if self.writers.get(&kv).map(Vec::as_slice) != Some(&[op]) {
            return None;
        }
        let seen = self.seen.get(&kv)?;
        if seen.len() == 1 {
            seen.iter().next().copied()
        } else {
            None
        }
    }

    /// Whether a value written by an op is never seen, compared or written by another op.
    pub(crate) fn unobserved(&self, key: &Bytes, value: &Bytes, op: usize) -> bool {
        let kv = (key.clone(), value.clone());
        self.writers.get(&kv).map(Vec::as_slice) == Some(&[op]) && !self.seen.contains_key(&kv) && !self.compared.contains(&kv)
    }
}

/// Ops with an unknown outcome that the history saw applied: a value only
/// they wrote was read or watched, so they took effect at that revision.
#[derive(Default)]
pub(crate) struct Promoted {
    pub(crate) puts: HashMap<usize, i64>,
    /// Txn op → (revision, whether the success branch ran).
    pub(crate) txns: HashMap<usize, (i64, bool)>,
}

impl Promoted {
    pub(crate) fn new(h: &History, obs: &Observations) -> Promoted {
        let mut p = Promoted::default();
        for (i, op) in h.ops.iter().enumerate() {
            if !op.is_unknown() {
                continue;
            }
            match &op.call {
                Call::Put { key, value, .. } => {
                    if let Some(rev) = obs.unique_sighting(key, value, i) {
                        p.puts.insert(i, rev);
                    }
                }
                Call::Txn { success, failure, .. } => {
                    let mut found: Option<(i64, bool)> = None;
                    let mut consistent = true;
                    for (branch, ops) in [(true, success), (false, failure)] {
                        for t in ops {
                            let TxnOp::Put { key, value, .. } = t else { continue };
                            let Some(rev) = obs.unique_sighting(key, value, i) else {
                                continue;
                            };
                            match found {
                                None => found = Some((rev, branch)),
                                Some(f) if f == (rev, branch) => {}
                                Some(_) => consistent = false,
                            }
                        }
                    }
                    if let (Some(f), true) = (found, consistent) {
                        p.txns.insert(i, f);
                    }
                }
                _ => {}
            }
        }
        p
    }
}
