//! A small in-memory etcd for tests: a sequential store that executes calls
//! and assigns revisions as etcd does (+1 per write txn, none for a txn or
//! delete that changes nothing), keeps every revision's events for watches,
//! leases with their keys, and compaction. `workload` drives it with
//! concurrent clients to produce valid histories.

mod watches;
pub(crate) mod workload;

use crate::history::{in_range, Bytes, Call, CmpOp, Compare, CompareTarget, Event, EventKind, Kv, Response};
use crate::history::{TxnOp, TxnResult};
use std::collections::{BTreeMap, BTreeSet};

/// A tiny deterministic PRNG (splitmix64).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// True with probability `pct` percent.
    pub(crate) fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

#[derive(Default)]
pub(crate) struct Store {
    pub(crate) rev: i64,
    pub(crate) kv: BTreeMap<Bytes, Kv>,
    /// Every state of every key: (revision, kv) in revision order.
    states: BTreeMap<Bytes, Vec<(i64, Option<Kv>)>>,
    pub(crate) leases: BTreeMap<i64, (i64, BTreeSet<Bytes>)>,
    /// The events of each write revision.
    pub(crate) log: Vec<(i64, Vec<Event>)>,
    pub(crate) compacted: i64,
    next_lease: i64,
}

type Changes = Vec<(Bytes, Option<Kv>)>;

impl Store {
    pub(crate) fn new() -> Store {
        Store { rev: 1, next_lease: 0x7000, ..Store::default() }
    }

    fn state_at(&self, k: &Bytes, rev: i64) -> Option<Kv> {
        let states = self.states.get(k)?;
        let n = states.partition_point(|(r, _)| *r <= rev);
        states.get(n.checked_sub(1)?)?.1.clone()
    }

    fn read_rev(&self, revision: i64) -> Result<i64, String> {
        if revision > self.rev {
            Err("etcdserver: mvcc: required revision is a future revision".into())
        } else if revision > 0 && revision < self.compacted {
            Err("etcdserver: mvcc: required revision has been compacted".into())
        } else if revision > 0 {
            Ok(revision)
        } else {
            Ok(self.rev)
        }
    }

    /// Apply one write revision's changes (all at `rev`).
    fn commit(&mut self, rev: i64, changes: Changes) {
        let mut events = Vec::new();
        for (k, new) in changes {
            let prev = self.kv.get(&k).cloned();
            if let Some(p) = &prev {
                if let Some(l) = self.leases.get_mut(&p.lease) {
                    l.1.remove(&k);
                }
            }
            let event = match &new {
                Some(kv) => {
                    if let Some(l) = self.leases.get_mut(&kv.lease) {
                        l.1.insert(k.clone());
                    }
                    self.kv.insert(k.clone(), kv.clone());
                    let (value, create_rev, version, lease) = (kv.value.clone(), kv.create_rev, kv.version, kv.lease);
                    Event { kind: EventKind::Put, key: k.clone(), value, mod_rev: rev, create_rev, version, lease, prev }
                }
                None => {
                    self.kv.remove(&k);
                    let value = Bytes::default();
                    Event {
                        kind: EventKind::Delete,
                        key: k.clone(),
                        value,
                        mod_rev: rev,
                        create_rev: 0,
                        version: 0,
                        lease: 0,
                        prev,
                    }
                }
            };
            self.states.entry(k).or_default().push((rev, new));
            events.push(event);
        }
        if !events.is_empty() {
            self.rev = rev;
            self.log.push((rev, events));
        }
    }

    /// The kv after a put on top of `cur` (the txn's pending state).
    fn put_kv(cur: Option<&Kv>, value: &Bytes, lease: i64, rev: i64) -> Kv {
        match cur {
            Some(c) => Kv { value: value.clone(), mod_rev: rev, create_rev: c.create_rev, version: c.version + 1, lease },
            None => Kv { value: value.clone(), mod_rev: rev, create_rev: rev, version: 1, lease },
        }
    }

    fn compare(&self, c: &Compare) -> bool {
        let kv = self.kv.get(&c.key);
        let zero = Kv { value: Bytes::default(), mod_rev: 0, create_rev: 0, version: 0, lease: 0 };
        let ord = match (&c.target, kv) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.cmp(v),
            (t, kv) => {
                let kv = kv.unwrap_or(&zero);
                let (a, b) = match t {
                    CompareTarget::ModRev(x) => (kv.mod_rev, *x),
                    CompareTarget::CreateRev(x) => (kv.create_rev, *x),
                    CompareTarget::Version(x) => (kv.version, *x),
                    CompareTarget::Lease(x) => (kv.lease, *x),
                    CompareTarget::Value(_) => (0, 0),
                };
                a.cmp(&b)
            }
        };
        match c.op {
            CmpOp::Eq => ord.is_eq(),
            CmpOp::NotEq => ord.is_ne(),
            CmpOp::Less => ord.is_lt(),
            CmpOp::Greater => ord.is_gt(),
        }
    }

    fn lease_ok(&self, lease: i64) -> Result<(), String> {
        if lease == 0 || self.leases.contains_key(&lease) {
            Ok(())
        } else {
            Err("etcdserver: requested lease not found".into())
        }
    }

    /// Delete every key of a lease (revocation or expiry).
    pub(crate) fn drop_lease(&mut self, id: i64) -> bool {
        let Some((_, keys)) = self.leases.remove(&id) else {
            return false;
        };
        let rev = self.rev + 1;
        self.commit(rev, keys.into_iter().map(|k| (k, None)).collect());
        true
    }

    pub(crate) fn apply(&mut self, call: &Call) -> Result<Response, String> {
        let rev = self.rev;
        Ok(match call {
            Call::Get { key, revision, .. } => {
                let at = self.read_rev(*revision)?;
                Response::Get { header_rev: rev, kv: self.state_at(key, at) }
            }
            Call::Range { key, range_end, revision, limit, .. } => {
                let at = self.read_rev(*revision)?;
                let mut kvs: Vec<(Bytes, Kv)> = self
                    .states
                    .keys()
                    .filter(|k| in_range(key, range_end, k))
                    .filter_map(|k| Some((k.clone(), self.state_at(k, at)?)))
                    .collect();
                let count = kvs.len() as i64;
                if *limit > 0 && count > *limit {
                    kvs.truncate(*limit as usize);
                }
                Response::Range { header_rev: rev, more: (kvs.len() as i64) < count, count, kvs }
            }
            Call::Put { key, value, lease, prev_kv } => {
                self.lease_ok(*lease)?;
                let prev = self.kv.get(key).cloned();
                let kv = Store::put_kv(prev.as_ref(), value, *lease, rev + 1);
                self.commit(rev + 1, vec![(key.clone(), Some(kv))]);
                Response::Put { header_rev: self.rev, prev: if *prev_kv { prev } else { None } }
            }
            Call::Delete { key, range_end } => {
                let keys: Vec<Bytes> = self.kv.keys().filter(|k| in_range(key, range_end, k)).cloned().collect();
                let deleted = keys.len() as i64;
                self.commit(rev + 1, keys.into_iter().map(|k| (k, None)).collect());
                Response::Delete { header_rev: self.rev, deleted }
            }
            Call::Txn { compares, success, failure } => {
                let succeeded = compares.iter().all(|c| self.compare(c));
                let ops = if succeeded { success } else { failure };
                for o in ops {
                    if let TxnOp::Put { lease, .. } = o {
                        self.lease_ok(*lease)?;
                    }
                }
                let mut pending: BTreeMap<Bytes, Option<Kv>> = BTreeMap::new();
                let mut results = Vec::new();
                for o in ops {
                    let cur = match pending.get(o.key()) {
                        Some(p) => p.clone(),
                        None => self.kv.get(o.key()).cloned(),
                    };
                    match o {
                        TxnOp::Get { .. } => results.push(TxnResult::Get { kv: cur }),
                        TxnOp::Put { key, value, lease } => {
                            pending.insert(key.clone(), Some(Store::put_kv(cur.as_ref(), value, *lease, rev + 1)));
                            results.push(TxnResult::Put);
                        }
                        TxnOp::Delete { key } => {
                            if cur.is_some() {
                                pending.insert(key.clone(), None);
                            }
                            results.push(TxnResult::Delete { deleted: cur.is_some() as i64 });
                        }
                    }
                }
                self.commit(rev + 1, pending.into_iter().collect());
                Response::Txn { header_rev: self.rev, succeeded, results }
            }
            Call::LeaseGrant { ttl, .. } => {
                self.next_lease += 1;
                self.leases.insert(self.next_lease, (*ttl, BTreeSet::new()));
                Response::LeaseGrant { header_rev: rev, id: self.next_lease, ttl: *ttl }
            }
            Call::LeaseRevoke { id } => {
                if !self.drop_lease(*id) {
                    return Err("etcdserver: requested lease not found".into());
                }
                Response::LeaseRevoke { header_rev: self.rev }
            }
            Call::LeaseKeepAlive { id } => Response::LeaseKeepAlive { ttl: self.leases.get(id).map_or(0, |l| l.0) },
            Call::LeaseTimeToLive { id } => match self.leases.get(id) {
                Some((ttl, keys)) => Response::LeaseTimeToLive { ttl: *ttl, keys: keys.iter().cloned().collect() },
                None => Response::LeaseTimeToLive { ttl: -1, keys: Vec::new() },
            },
            Call::Compact { revision } => {
                if *revision > rev {
                    return Err("etcdserver: mvcc: required revision is a future revision".into());
                }
                if *revision <= self.compacted {
                    return Err("etcdserver: mvcc: required revision has been compacted".into());
                }
                self.compacted = *revision;
                Response::Compact { header_rev: rev }
            }
        })
    }
}
