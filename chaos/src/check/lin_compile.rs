//! Compiling a history into partitions for the linearizability search:
//! keys partitioned by union-find over txns, each op projected on the
//! partitions it touches (`LOp`), values interned, unknown puts of values
//! nobody saw made interchangeable (GHOST), lease revocations and expiries
//! turned into ops, and the search order and classes of each partition.

use super::index::keys_in;
use super::lin_model::{KState, LCompare, LKind, LOp, LResult, LTarget, LTxnOp, ObsKv, PState, Rev, GHOST};
use super::lin_search::Partition;
use super::timeline::Timelines;
use crate::history::{Bytes, Call, CompareTarget, History, Kv, Response, TxnOp, TxnResult};
use std::collections::{BTreeMap, HashMap};

pub(crate) struct Builder<'a> {
    pub(crate) h: &'a History,
    t: &'a Timelines,
    /// Global key index → (partition, local index).
    place: HashMap<&'a Bytes, (usize, usize)>,
    pub(crate) parts: Vec<Partition>,
    pub(crate) values: Vec<Bytes>,
    value_ids: HashMap<Bytes, u32>,
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

impl<'a> Builder<'a> {
    /// The partitions of a history, ready for the search.
    pub(crate) fn build(h: &'a History, t: &'a Timelines) -> Builder<'a> {
        let mut b = Builder::new(h, t);
        b.compile();
        b
    }

    fn new(h: &'a History, t: &'a Timelines) -> Builder<'a> {
        let keys: Vec<&Bytes> = t.universe.iter().collect();
        let index: HashMap<&Bytes, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        let mut parent: Vec<usize> = (0..keys.len()).collect();
        for op in h.ops.iter().filter(|o| !o.is_error() && matches!(o.call, Call::Txn { .. })) {
            let ids: Vec<usize> = op.named_keys().iter().filter_map(|k| index.get(k).copied()).collect();
            for w in ids.windows(2) {
                let (a, b) = (find(&mut parent, w[0]), find(&mut parent, w[1]));
                parent[a] = b;
            }
        }
        let mut part_of_root: HashMap<usize, usize> = HashMap::new();
        let mut parts: Vec<Partition> = Vec::new();
        let mut place = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let root = find(&mut parent, i);
            let pid = *part_of_root.entry(root).or_insert_with(|| {
                parts.push(Partition {
                    keys: Vec::new(),
                    ops: Vec::new(),
                    calls: Vec::new(),
                    returns: Vec::new(),
                    class_prev: Vec::new(),
                    order: Vec::new(),
                    init: PState::default(),
                });
                parts.len() - 1
            });
            let p = &mut parts[pid];
            place.insert(*k, (pid, p.keys.len()));
            p.keys.push((*k).clone());
            p.init.keys.push(KState::ABSENT);
            p.init.floor = h.start_revision;
        }
        let mut b = Builder { h, t, place, parts, values: Vec::new(), value_ids: HashMap::new() };
        for (k, kv) in &h.initial {
            if let Some(&(pid, l)) = b.place.get(k) {
                let value = b.value(&kv.value);
                let (m, c) = (Rev::Known(kv.mod_rev), Rev::Known(kv.create_rev));
                let ks = KState { exists: true, value, version: kv.version, lease: kv.lease, mod_rev: m, create_rev: c };
                let p = &mut b.parts[pid];
                p.init.keys[l] = ks;
                p.init.floor = p.init.floor.max(kv.mod_rev);
            }
        }
        b
    }

    fn value(&mut self, v: &Bytes) -> u32 {
        if let Some(&id) = self.value_ids.get(v) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(v.clone());
        self.value_ids.insert(v.clone(), id);
        id
    }

    /// The value id of a put, GHOST when the put's outcome is unknown and its value was never seen.
    fn put_value(&mut self, key: &Bytes, v: &Bytes, op: usize, ghost_ok: bool) -> u32 {
        if ghost_ok && self.t.obs.unobserved(key, v, op) {
            GHOST
        } else {
            self.value(v)
        }
    }

    fn obs(&mut self, kv: &Option<Kv>) -> Option<ObsKv> {
        kv.as_ref().map(|kv| ObsKv {
            value: self.value(&kv.value),
            mod_rev: kv.mod_rev,
            create_rev: kv.create_rev,
            version: kv.version,
            lease: kv.lease,
        })
    }

    fn local(&self, k: &Bytes) -> Option<(usize, usize)> {
        self.place.get(k).copied()
    }

    fn push(&mut self, pid: usize, lop: LOp, call: u64, ret: Option<u64>) {
        if let Some(p) = self.parts.get_mut(pid) {
            p.ops.push(lop);
            p.calls.push(call);
            p.returns.push(ret);
        }
    }

    fn compile(&mut self) {
        let h = self.h;
        for (i, op) in h.ops.iter().enumerate() {
            if op.is_error() {
                continue;
            }
            let promoted = self.t.promoted.puts.get(&i).copied().or(self.t.promoted.txns.get(&i).map(|p| p.0));
            let header = op.header_rev().or(promoted);
            let ret = match (op.response(), promoted) {
                (Some(_), _) => op.complete,
                (None, Some(_)) => Some(u64::MAX),
                (None, None) => None,
            };
            let ghost_ok = op.response().is_none() && promoted.is_none();
            let mut out: Vec<(usize, LKind)> = Vec::new();
            match (&op.call, op.response()) {
                (Call::Get { key, revision: 0, serializable: false }, Some(Response::Get { kv, .. })) => {
                    if let Some((pid, l)) = self.local(key) {
                        let o = self.obs(kv);
                        out.push((pid, LKind::Read { items: vec![(l, o)] }));
                    }
                }
                (
                    Call::Range { key, range_end, revision: 0, serializable: false, .. },
                    Some(Response::Range { kvs, more, .. }),
                ) => {
                    out.extend(self.range_read(key, range_end, kvs, *more));
                }
                (Call::Put { key, value, lease, prev_kv }, resp) => {
                    let prev = match resp {
                        Some(Response::Put { prev, .. }) if *prev_kv => Some(self.obs(prev)),
                        _ => None,
                    };
                    let value = self.put_value(key, value, i, ghost_ok);
                    if let Some((pid, l)) = self.local(key) {
                        out.push((pid, LKind::Put { key: l, value, lease: *lease, prev }));
                    }
                }
                (Call::Delete { key, range_end }, resp) => {
                    let deleted = match resp {
                        Some(Response::Delete { deleted, .. }) => Some(*deleted),
                        _ => None,
                    };
                    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
                    for k in keys_in(&self.t.universe, key, range_end) {
                        if let Some((pid, l)) = self.local(k) {
                            groups.entry(pid).or_default().push(l);
                        }
                    }
                    let full = groups.len() == 1;
                    for (pid, keys) in groups {
                        out.push((pid, LKind::Delete { keys, deleted, full }));
                    }
                }
                (Call::Txn { compares, success, failure }, resp) => {
                    if let Some(kind) = self.txn(i, compares, success, failure, resp, ghost_ok) {
                        out.push(kind);
                    }
                }
                _ => {}
            }
            for (pid, kind) in out {
                self.push(pid, LOp { op: Some(i), kind, header }, op.invoke, ret);
            }
        }
        self.lease_drops();
        for p in &mut self.parts {
            p.class_prev = classes(p);
            p.order = p.ops.iter().map(|o| (o.header.unwrap_or(i64::MAX), !writes(&o.kind) as u8)).collect();
        }
    }

    fn range_read(&mut self, key: &Bytes, end: &Bytes, kvs: &[(Bytes, Kv)], more: bool) -> Vec<(usize, LKind)> {
        let last = kvs.last().map(|(k, _)| k);
        let returned: HashMap<&Bytes, &Kv> = kvs.iter().map(|(k, kv)| (k, kv)).collect();
        let mut groups: BTreeMap<usize, Vec<(usize, Option<ObsKv>)>> = BTreeMap::new();
        let mut covered: Vec<&Bytes> = keys_in(&self.t.universe, key, end);
        if more {
            covered.retain(|k| last.is_some_and(|l| *k <= l));
        }
        for k in covered {
            let kv = returned.get(k).map(|kv| (*kv).clone());
            let o = self.obs(&kv);
            if let Some((pid, l)) = self.local(k) {
                groups.entry(pid).or_default().push((l, o));
            }
        }
        groups.into_iter().map(|(pid, items)| (pid, LKind::Read { items })).collect()
    }

    fn txn(
        &mut self,
        i: usize,
        compares: &[crate::history::Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
        resp: Option<&Response>,
        ghost_ok: bool,
    ) -> Option<(usize, LKind)> {
        let pid = self.h.ops.get(i)?.named_keys().first().and_then(|k| self.local(k))?.0;
        let mut lc = Vec::new();
        for c in compares {
            let target = match &c.target {
                CompareTarget::ModRev(x) => LTarget::ModRev(*x),
                CompareTarget::CreateRev(x) => LTarget::CreateRev(*x),
                CompareTarget::Version(x) => LTarget::Version(*x),
                CompareTarget::Lease(x) => LTarget::Lease(*x),
                CompareTarget::Value(v) => LTarget::Value(self.value(v)),
            };
            lc.push(LCompare { key: self.local(&c.key)?.1, op: c.op, target });
        }
        let branch_ops = |ops: &[TxnOp], b: &mut Self| -> Option<Vec<LTxnOp>> {
            ops.iter()
                .map(|o| {
                    let l = b.local(o.key())?.1;
                    Some(match o {
                        TxnOp::Get { .. } => LTxnOp::Get(l),
                        TxnOp::Put { key, value, lease } => LTxnOp::Put(l, b.put_value(key, value, i, ghost_ok), *lease),
                        TxnOp::Delete { .. } => LTxnOp::Delete(l),
                    })
                })
                .collect()
        };
        let success = branch_ops(success, self)?;
        let failure = branch_ops(failure, self)?;
        let (branch, results) = match resp {
            Some(Response::Txn { succeeded, results, .. }) => {
                let rs = results
                    .iter()
                    .map(|r| match r {
                        TxnResult::Get { kv } => LResult::Get(self.obs(kv)),
                        TxnResult::Put => LResult::Put,
                        TxnResult::Delete { deleted } => LResult::Delete(*deleted),
                    })
                    .collect();
                (Some(*succeeded), Some(rs))
            }
            _ => (self.t.promoted.txns.get(&i).map(|p| p.1), None),
        };
        Some((pid, LKind::Txn { compares: lc, success, failure, branch, results }))
    }

    /// A lease's keys vanish when it is revoked (an op with its own outcome)
    /// or expires (unrecorded: an op that may happen any time after the
    /// grant, or never), per partition of its keys.
    fn lease_drops(&mut self) {
        let h = self.h;
        let mut leased: BTreeMap<i64, Vec<&Bytes>> = BTreeMap::new();
        for (k, kv) in &h.initial {
            leased.entry(kv.lease).or_default().push(k);
        }
        for op in h.ops.iter().filter(|o| !o.is_error()) {
            match &op.call {
                Call::Put { key, lease, .. } => leased.entry(*lease).or_default().push(key),
                Call::Txn { success, failure, .. } => {
                    for o in success.iter().chain(failure) {
                        if let TxnOp::Put { key, lease, .. } = o {
                            leased.entry(*lease).or_default().push(key);
                        }
                    }
                }
                _ => {}
            }
        }
        leased.remove(&0);
        for (lease, mut keys) in leased {
            keys.sort();
            keys.dedup();
            let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for k in keys {
                if let Some((pid, l)) = self.local(k) {
                    groups.entry(pid).or_default().push(l);
                }
            }
            let mut drops: Vec<(Option<usize>, u64, Option<u64>)> = Vec::new();
            for (i, op) in h.ops.iter().enumerate() {
                if op.call == (Call::LeaseRevoke { id: lease }) && !op.is_error() {
                    drops.push((Some(i), op.invoke, op.response().and(op.complete)));
                }
            }
            if drops.iter().all(|d| d.2.is_none()) {
                let granted =
                    h.ops.iter().filter(|o| matches!(o.response(), Some(Response::LeaseGrant { id, .. }) if *id == lease));
                drops.push((None, granted.map(|o| o.invoke).min().unwrap_or(0), None));
            }
            for (op, call, ret) in drops {
                for (pid, keys) in &groups {
                    let kind = LKind::LeaseDrop { keys: keys.clone(), lease };
                    self.push(*pid, LOp { op, kind, header: None }, call, ret);
                }
            }
        }
    }
}

/// Whether an op surely writes (a put, or a txn or delete that changed something).
fn writes(kind: &LKind) -> bool {
    match kind {
        LKind::Put { .. } => true,
        LKind::Delete { deleted, .. } => deleted.is_some_and(|d| d > 0),
        LKind::Txn { success, failure, branch: Some(b), .. } => {
            let ops = if *b { success } else { failure };
            ops.iter().any(|o| matches!(o, LTxnOp::Put(..)))
        }
        _ => false,
    }
}

/// Interchangeable optional ops (equal projected effect): each one's
/// previous member in call order, so the search uses them in that order.
fn classes(p: &Partition) -> Vec<Option<usize>> {
    let mut prev = vec![None; p.ops.len()];
    let mut last: HashMap<(&LKind, Option<i64>), usize> = HashMap::new();
    let mut order: Vec<usize> = (0..p.ops.len()).filter(|&l| p.returns[l].is_none()).collect();
    order.sort_by_key(|&l| (p.calls[l], l));
    for l in order {
        let key = (&p.ops[l].kind, p.ops[l].header);
        if let Some(&before) = last.get(&key) {
            prev[l] = Some(before);
        }
        last.insert(key, l);
    }
    prev
}
