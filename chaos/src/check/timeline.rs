//! Per key, the writes of a history placed on the revision axis: the ones
//! whose revision and effect are known (acknowledged, or seen applied), and
//! the uncertain ones (unknown outcomes, lease revocations and expiries,
//! range deletes of keys whose existence is unknown) with the revision
//! interval they may have landed in. From that, the state of a key at a
//! revision, when it can be determined.

use super::index::{keys_in, per_key_rt, universe, Observations, Promoted, RtMax};
use crate::history::{Bytes, Call, History, Kv, Response, TxnOp, TxnResult};
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Effect {
    Put { value: Bytes, lease: i64 },
    Delete,
}

/// A write with known revision and effect (`op` None: none recorded).
#[derive(Clone, Debug)]
pub(crate) struct Known {
    pub(crate) rev: i64,
    pub(crate) effect: Effect,
    pub(crate) op: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum UEffect {
    Put {
        value: Bytes,
        lease: i64,
    },
    Delete,
    /// Deletes the key if it is attached to this lease then.
    LeaseDrop(i64),
}

/// A write that may have landed at a revision in (lo, hi], or never.
#[derive(Clone, Debug)]
pub(crate) struct Uncertain {
    pub(crate) lo: i64,
    pub(crate) hi: i64,
    pub(crate) effect: UEffect,
}

impl Uncertain {
    /// Whether it may land in (after, upto].
    pub(crate) fn may_land(&self, after: i64, upto: i64) -> bool {
        self.lo.max(after) < self.hi.min(upto)
    }
}

#[derive(Default, Debug)]
pub(crate) struct KeyTimeline {
    pub(crate) known: Vec<Known>,
    pub(crate) uncertain: Vec<Uncertain>,
    pub(crate) initial: Option<Kv>,
}

/// A key's state at a revision.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum StateAt {
    /// Existence, value, mod_rev and lease are determined; with `exact` also
    /// create_rev and version (otherwise they are 0). `by`: the op of the last write.
    Known {
        kv: Option<Kv>,
        exact: bool,
        by: Option<usize>,
    },
    Unknown,
}

pub(crate) struct Timelines {
    /// Revisions below it are before the history (`History::start_revision`).
    pub(crate) start: i64,
    pub(crate) universe: BTreeSet<Bytes>,
    pub(crate) keys: HashMap<Bytes, KeyTimeline>,
    pub(crate) obs: Observations,
    pub(crate) promoted: Promoted,
    /// Range deletes whose count is determined: (op, keys that existed).
    pub(crate) range_delete_counts: Vec<(usize, i64)>,
}

impl Timelines {
    pub(crate) fn new(h: &History) -> Timelines {
        let obs = Observations::new(h);
        let promoted = Promoted::new(h, &obs);
        let mut t = Timelines {
            start: h.start_revision,
            universe: universe(h),
            keys: HashMap::new(),
            obs,
            promoted,
            range_delete_counts: Vec::new(),
        };
        for (k, kv) in &h.initial {
            t.key(k).initial = Some(kv.clone());
        }
        let rt = per_key_rt(h);
        let lo = |key: &Bytes, op: usize| -> i64 {
            let invoke = h.ops.get(op).map_or(0, |o| o.invoke);
            rt.get(key).and_then(|r: &RtMax| r.before(invoke)).map_or(0, |(rev, _)| rev)
        };
        let mut range_deletes = Vec::new();
        for (i, op) in h.ops.iter().enumerate() {
            if op.is_error() {
                continue;
            }
            let resp = op.response();
            match (&op.call, resp) {
                (Call::Put { key, value, lease, .. }, Some(Response::Put { header_rev, .. })) => {
                    t.known(key, *header_rev, Effect::Put { value: value.clone(), lease: *lease }, i);
                }
                (Call::Put { key, value, lease, .. }, None) => match t.promoted.puts.get(&i).copied() {
                    Some(rev) => t.known(key, rev, Effect::Put { value: value.clone(), lease: *lease }, i),
                    None => {
                        let effect = UEffect::Put { value: value.clone(), lease: *lease };
                        t.uncertain(key, lo(key, i), i64::MAX, effect);
                    }
                },
                (Call::Delete { key, range_end }, Some(Response::Delete { header_rev, deleted })) => {
                    if !range_end.is_empty() {
                        range_deletes.push((*header_rev, i, key.clone(), range_end.clone(), *deleted));
                    } else if *deleted > 0 {
                        t.known(key, *header_rev, Effect::Delete, i);
                    }
                }
                (Call::Delete { key, range_end }, None) => {
                    let keys: Vec<Bytes> = keys_in(&t.universe, key, range_end).into_iter().cloned().collect();
                    for k in keys {
                        t.uncertain(&k, lo(&k, i), i64::MAX, UEffect::Delete);
                    }
                }
                (Call::Txn { success, failure, .. }, Some(Response::Txn { header_rev, succeeded, results })) => {
                    let branch = if *succeeded { success } else { failure };
                    for (o, r) in branch.iter().zip(results) {
                        match (o, r) {
                            (TxnOp::Put { key, value, lease }, TxnResult::Put) => {
                                t.known(key, *header_rev, Effect::Put { value: value.clone(), lease: *lease }, i)
                            }
                            (TxnOp::Delete { key }, TxnResult::Delete { deleted }) if *deleted > 0 => {
                                t.known(key, *header_rev, Effect::Delete, i)
                            }
                            _ => {}
                        }
                    }
                }
                (Call::Txn { success, failure, .. }, None) => {
                    let promoted = t.promoted.txns.get(&i).copied();
                    for (b, ops) in [(true, success), (false, failure)] {
                        for o in ops {
                            match (o, promoted) {
                                (TxnOp::Get { .. }, _) => {}
                                (_, Some((_, pb))) if pb != b => {}
                                (TxnOp::Put { key, value, lease }, Some((rev, _))) => {
                                    t.known(key, rev, Effect::Put { value: value.clone(), lease: *lease }, i)
                                }
                                (TxnOp::Delete { key }, Some((rev, _))) => {
                                    t.uncertain(key, rev.saturating_sub(1), rev, UEffect::Delete)
                                }
                                (TxnOp::Put { key, value, lease }, None) => {
                                    let effect = UEffect::Put { value: value.clone(), lease: *lease };
                                    t.uncertain(key, lo(key, i), i64::MAX, effect)
                                }
                                (TxnOp::Delete { key }, None) => t.uncertain(key, lo(key, i), i64::MAX, UEffect::Delete),
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        t.add_lease_drops(h);
        for tl in t.keys.values_mut() {
            tl.known.sort_by_key(|e| e.rev);
        }
        // By revision; at one revision the delete that deleted comes before those that saw its result.
        range_deletes.sort_by_key(|d| (d.0, d.4 == 0));
        for (rev, i, key, end, deleted) in range_deletes {
            t.apply_range_delete(rev, i, &key, &end, deleted);
        }
        t
    }

    fn key(&mut self, k: &Bytes) -> &mut KeyTimeline {
        self.keys.entry(k.clone()).or_default()
    }
    fn known(&mut self, k: &Bytes, rev: i64, effect: Effect, op: usize) {
        self.key(k).known.push(Known { rev, effect, op: Some(op) });
    }
    fn uncertain(&mut self, k: &Bytes, lo: i64, hi: i64, effect: UEffect) {
        let initial = self.key(k).initial.as_ref().map_or(0, |kv| kv.mod_rev);
        let lo = lo.max(initial).max(self.start);
        self.key(k).uncertain.push(Uncertain { lo, hi, effect });
    }

    /// Keys attached to a lease may vanish when it expires or is revoked, at
    /// a revision the history does not record.
    fn add_lease_drops(&mut self, h: &History) {
        let mut leased: BTreeSet<(Bytes, i64)> = BTreeSet::new();
        for (k, kv) in &h.initial {
            if kv.lease != 0 {
                leased.insert((k.clone(), kv.lease));
            }
        }
        for op in h.ops.iter().filter(|o| !o.is_error()) {
            match &op.call {
                Call::Put { key, lease, .. } if *lease != 0 => {
                    leased.insert((key.clone(), *lease));
                }
                Call::Txn { success, failure, .. } => {
                    for o in success.iter().chain(failure) {
                        if let TxnOp::Put { key, lease, .. } = o {
                            if *lease != 0 {
                                leased.insert((key.clone(), *lease));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for (k, lease) in leased {
            self.key(&k).uncertain.push(Uncertain { lo: 0, hi: i64::MAX, effect: UEffect::LeaseDrop(lease) });
        }
    }

    /// etcd deletes every key of the range that exists, all at the delete's
    /// revision (its header); one that deletes nothing saw the store at its header.
    fn apply_range_delete(&mut self, rev: i64, op: usize, key: &Bytes, end: &Bytes, deleted: i64) {
        let keys: Vec<Bytes> = keys_in(&self.universe, key, end).into_iter().cloned().collect();
        let before = if deleted > 0 { rev.saturating_sub(1) } else { rev };
        let mut count = Some(0);
        for k in keys {
            match self.state_at(&k, before) {
                StateAt::Known { kv: Some(_), .. } => {
                    count = count.map(|c| c + 1);
                    if deleted > 0 {
                        let tl = self.key(&k);
                        let at = tl.known.partition_point(|e| e.rev <= rev);
                        tl.known.insert(at, Known { rev, effect: Effect::Delete, op: Some(op) });
                    }
                }
                StateAt::Known { kv: None, .. } => {}
                StateAt::Unknown => {
                    count = None;
                    if deleted > 0 {
                        self.uncertain(&k, rev.saturating_sub(1), rev, UEffect::Delete);
                    }
                }
            }
        }
        if let Some(c) = count {
            self.range_delete_counts.push((op, c));
        }
    }

    /// The known writes of a key (sorted by revision).
    pub(crate) fn known_of(&self, k: &Bytes) -> &[Known] {
        self.keys.get(k).map_or(&[], |t| t.known.as_slice())
    }

    /// The state of `k` at revision `rev`, as far as the history determines it.
    pub(crate) fn state_at(&self, k: &Bytes, rev: i64) -> StateAt {
        if rev < self.start {
            return StateAt::Unknown;
        }
        let Some(tl) = self.keys.get(k) else {
            return StateAt::Known { kv: None, exact: true, by: None };
        };
        let n = tl.known.partition_point(|e| e.rev <= rev);
        let known = &tl.known[..n];
        let (cur, last_rev, by) = match known.last() {
            Some(Known { rev: r, effect: Effect::Put { value, lease }, op }) => (Some((value, *lease, *r)), *r, *op),
            Some(Known { rev: r, effect: Effect::Delete, op }) => (None, *r, *op),
            None => {
                let init = tl.initial.as_ref().filter(|kv| kv.mod_rev <= rev);
                (init.map(|kv| (&kv.value, kv.lease, kv.mod_rev)), init.map_or(0, |kv| kv.mod_rev), None)
            }
        };
        let applies = |u: &Uncertain, lease: Option<i64>| match u.effect {
            UEffect::LeaseDrop(l) => lease == Some(l),
            _ => true,
        };
        let cur_lease = cur.map(|c| c.1);
        if tl.uncertain.iter().any(|u| applies(u, cur_lease) && u.may_land(last_rev, rev)) {
            return StateAt::Unknown;
        }
        let Some((value, lease, mod_rev)) = cur else {
            return StateAt::Known { kv: None, exact: true, by };
        };
        // create_rev and version count the puts since the key was last created.
        let since = known.iter().rposition(|e| e.effect == Effect::Delete).map_or(0, |d| d + 1);
        let base = if since == 0 { tl.initial.as_ref().filter(|kv| kv.mod_rev <= rev) } else { None };
        let start = if since == 0 { base.map_or(0, |kv| kv.mod_rev) } else { known[since - 1].rev };
        let puts: Vec<&Known> = known[since..].iter().collect();
        let leases: Vec<i64> = puts
            .iter()
            .filter_map(|e| match &e.effect {
                Effect::Put { lease, .. } => Some(*lease),
                Effect::Delete => None,
            })
            .chain(base.map(|kv| kv.lease))
            .collect();
        let exact = !tl.uncertain.iter().any(|u| {
            let hits = match u.effect {
                UEffect::LeaseDrop(l) => leases.contains(&l),
                _ => true,
            };
            hits && u.may_land(start, rev)
        });
        let (create_rev, version) = match (exact, base, puts.first()) {
            (false, _, _) => (0, 0),
            (true, Some(b), _) => (b.create_rev, b.version.saturating_add(puts.len() as i64)),
            (true, None, Some(first)) => (first.rev, puts.len() as i64),
            (true, None, None) => (0, 0),
        };
        let kv = Kv { value: value.clone(), mod_rev, create_rev, version, lease };
        StateAt::Known { kv: Some(kv), exact, by }
    }
}

/// Whether a returned kv agrees with a determined state (create_rev and
/// version only when `exact`); the text says what differs.
pub(crate) fn kv_mismatch(expected: &Option<Kv>, exact: bool, got: &Option<Kv>) -> Option<String> {
    match (expected, got) {
        (None, None) => None,
        (None, Some(g)) => Some(format!("got {}@{} but the key does not exist there", g.value, g.mod_rev)),
        (Some(e), None) => Some(format!("got nothing but the key holds {}@{}", e.value, e.mod_rev)),
        (Some(e), Some(g)) => {
            let mut diffs = Vec::new();
            if e.value != g.value {
                diffs.push(format!("value {} (expected {})", g.value, e.value));
            }
            if e.mod_rev != g.mod_rev {
                diffs.push(format!("mod_rev {} (expected {})", g.mod_rev, e.mod_rev));
            }
            if e.lease != g.lease {
                diffs.push(format!("lease {:x} (expected {:x})", g.lease, e.lease));
            }
            if exact && e.create_rev != g.create_rev {
                diffs.push(format!("create_rev {} (expected {})", g.create_rev, e.create_rev));
            }
            if exact && e.version != g.version {
                diffs.push(format!("version {} (expected {})", g.version, e.version));
            }
            if diffs.is_empty() {
                None
            } else {
                Some(format!("got {}", diffs.join(", ")))
            }
        }
    }
}
