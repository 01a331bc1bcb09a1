//! Concurrent clients and watchers over the simulated store, recorded as a
//! `History`. Each call is invoked, applied at one later step (its
//! linearization point) and completed at a later one; some lose their
//! request (never applied) or their response (applied) and are recorded
//! with an unknown outcome; half of the lost requests are applied much
//! later, after the client gave up. Watches deliver whole revisions in order,
//! progress only when caught up, and answer RequestProgress once every watch
//! of the stream is caught up, as etcd does.

use super::watches::SimWatch;
use super::{Rng, Store};
use crate::history::{prefix_end, Bytes, Call, CmpOp, Compare, CompareTarget, FinalRead, History, Op, Response};
use crate::history::{TxnOp, TxnResult, WatchFilter, WatchStream};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) seed: u64,
    pub(crate) clients: u32,
    pub(crate) steps: usize,
    pub(crate) keys: u64,
    /// Per op, the chance in percent that its outcome is lost.
    pub(crate) unknown_pct: u64,
    pub(crate) watches: bool,
    pub(crate) leases: bool,
    pub(crate) compaction: bool,
    pub(crate) txns: bool,
    /// Keys written before the history begins (its initial state).
    pub(crate) preload: bool,
}

impl Scenario {
    pub(crate) fn new(seed: u64) -> Scenario {
        Scenario {
            seed,
            clients: 5,
            steps: 3000,
            keys: 6,
            unknown_pct: 4,
            watches: true,
            leases: true,
            compaction: false,
            txns: true,
            preload: false,
        }
    }
}

pub(super) struct Pending {
    call: Call,
    invoke: u64,
    result: Option<Result<Response, String>>,
    lose_request: bool,
    lose_response: bool,
}

pub(super) struct Gen {
    pub(super) s: Scenario,
    pub(super) rng: Rng,
    pub(super) store: Store,
    pub(super) time: u64,
    pub(super) values: u64,
    pub(super) h: History,
    pub(super) clients: Vec<Option<Pending>>,
    pub(super) seen: HashMap<(u32, Bytes), i64>,
    pub(super) leases: Vec<i64>,
    pub(super) watches: Vec<SimWatch>,
    pub(super) requests: Vec<usize>,
    /// Requests whose client gave up but which the store applies later.
    pub(super) delayed: Vec<Call>,
}

pub(crate) fn generate(s: &Scenario) -> History {
    let mut g = Gen {
        rng: Rng(s.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x1234),
        s: s.clone(),
        store: Store::new(),
        time: 1,
        values: 0,
        h: History::default(),
        clients: (0..s.clients).map(|_| None).collect(),
        seen: HashMap::new(),
        leases: Vec::new(),
        watches: Vec::new(),
        requests: Vec::new(),
        delayed: Vec::new(),
    };
    if s.preload {
        for i in 0..s.keys * 3 {
            let call = match i % 3 {
                2 => Call::Delete { key: format!("k/{}", i % s.keys).into(), range_end: Bytes::default() },
                _ => Call::Put {
                    key: format!("k/{}", i % s.keys).into(),
                    value: format!("pre{i}").into(),
                    lease: 0,
                    prev_kv: false,
                },
            };
            let _ = g.store.apply(&call);
        }
        g.h.initial = g.store.kv.iter().map(|(k, kv)| (k.clone(), kv.clone())).collect();
        g.h.start_revision = g.store.rev;
    }
    if s.watches {
        g.h.watches = (0..2)
            .map(|i| WatchStream { client: 100 + i, id: i as u64, watches: vec![], responses: vec![], progress_requests: vec![] })
            .collect();
        g.requests = vec![0, 0];
        g.create_watch(0, "k/", true, 1, true, vec![]);
        g.create_watch(0, "k/0", false, 0, false, vec![WatchFilter::NoDelete]);
        g.create_watch(1, "\0", true, 0, false, vec![]);
    }
    for step in 0..s.steps {
        g.time += 1 + g.rng.below(4);
        if s.watches && step == s.steps / 2 {
            let start = (g.store.rev - 10).max(1);
            g.create_watch(1, "k/", true, start, true, vec![]);
        }
        let roll = g.rng.below(100);
        if s.watches && roll < 15 {
            let stream = g.rng.below(2) as usize;
            g.stream_step(stream);
        } else if roll < 17 && !g.delayed.is_empty() {
            let i = g.rng.below(g.delayed.len() as u64) as usize;
            let call = g.delayed.swap_remove(i);
            let _ = g.store.apply(&call);
        } else if s.leases && roll < 18 {
            if let Some(&id) = g.leases.get(g.rng.below(g.leases.len() as u64 + 3) as usize) {
                g.store.drop_lease(id);
            }
        } else {
            let c = g.rng.below(s.clients as u64) as u32;
            g.client_step(c, false);
        }
    }
    for c in 0..s.clients {
        while g.clients[c as usize].is_some() {
            g.time += 1;
            g.client_step(c, true);
        }
    }
    for call in std::mem::take(&mut g.delayed) {
        if g.rng.chance(50) {
            let _ = g.store.apply(&call);
        }
    }
    for stream in 0..g.h.watches.len() {
        g.flush(stream);
    }
    g.time += 1;
    let kvs = g.store.kv.iter().map(|(k, kv)| (k.clone(), kv.clone())).collect();
    g.h.final_read = Some(FinalRead { at: g.time, key: Bytes(vec![0]), range_end: Bytes(vec![0]), header_rev: g.store.rev, kvs });
    g.h
}

impl Gen {
    fn key(&mut self) -> Bytes {
        format!("k/{}", self.rng.below(self.s.keys)).into()
    }
    fn value(&mut self) -> Bytes {
        self.values += 1;
        format!("v{}", self.values).into()
    }

    fn client_step(&mut self, c: u32, finishing: bool) {
        let slot = c as usize;
        match self.clients[slot].take() {
            None if finishing => {}
            None => {
                let call = self.call(c);
                let unknown = self.s.unknown_pct;
                let (lose_request, lose_response) = (self.rng.chance(unknown / 2), self.rng.chance(unknown - unknown / 2));
                self.clients[slot] = Some(Pending { call, invoke: self.time, result: None, lose_request, lose_response });
            }
            Some(mut p) if p.result.is_none() && !p.lose_request => {
                p.result = Some(self.store.apply(&p.call));
                self.clients[slot] = Some(p);
            }
            Some(p) => self.complete(c, p),
        }
    }

    fn complete(&mut self, c: u32, p: Pending) {
        if p.lose_request && self.rng.chance(50) {
            self.delayed.push(p.call.clone());
        }
        let op = match p.result {
            _ if p.lose_request || p.lose_response => Op::unknown(c, p.invoke, p.call, "deadline exceeded"),
            None => Op::unknown(c, p.invoke, p.call, "never sent"),
            Some(Err(e)) => Op::error(c, p.invoke, self.time, p.call, e),
            Some(Ok(r)) => {
                self.learn(c, &p.call, &r);
                Op::ok(c, p.invoke, self.time, p.call, r)
            }
        };
        self.h.ops.push(op);
    }

    /// What a client remembers of mod revisions, for its compare-and-swaps.
    fn learn(&mut self, c: u32, call: &Call, r: &Response) {
        match (call, r) {
            (Call::Get { key, revision: 0, .. }, Response::Get { kv, .. }) => {
                self.seen.insert((c, key.clone()), kv.as_ref().map_or(0, |kv| kv.mod_rev));
            }
            (Call::Put { key, .. }, Response::Put { header_rev, .. }) => {
                self.seen.insert((c, key.clone()), *header_rev);
            }
            (Call::Txn { success, failure, .. }, Response::Txn { header_rev, succeeded, results }) => {
                let ops = if *succeeded { success } else { failure };
                for (o, r) in ops.iter().zip(results) {
                    match (o, r) {
                        (TxnOp::Get { key }, TxnResult::Get { kv }) => {
                            self.seen.insert((c, key.clone()), kv.as_ref().map_or(0, |kv| kv.mod_rev));
                        }
                        (TxnOp::Put { key, .. }, _) => {
                            self.seen.insert((c, key.clone()), *header_rev);
                        }
                        _ => {}
                    }
                }
            }
            (Call::LeaseGrant { .. }, Response::LeaseGrant { id, .. }) => self.leases.push(*id),
            _ => {}
        }
    }

    fn call(&mut self, c: u32) -> Call {
        let roll = self.rng.below(100);
        let key = self.key();
        let rev = self.store.rev;
        let prefix: Bytes = "k/".into();
        match roll {
            0..20 => Call::Get { key, revision: 0, serializable: self.rng.chance(10) },
            20..26 => Call::Get { key, revision: 1 + self.rng.below(rev as u64) as i64, serializable: false },
            26..34 => {
                let limit = if self.rng.chance(30) { 2 } else { 0 };
                Call::Range { range_end: prefix_end(&prefix), key: prefix, revision: 0, limit, serializable: false }
            }
            34..37 => {
                let revision = 1 + self.rng.below(rev as u64) as i64;
                Call::Range { range_end: prefix_end(&prefix), key: prefix, revision, limit: 0, serializable: false }
            }
            37..55 => Call::Put { key, value: self.value(), lease: 0, prev_kv: self.rng.chance(25) },
            55..60 => Call::Delete { key, range_end: Bytes::default() },
            60..62 => Call::Delete { key: "k/4".into(), range_end: "k/6".into() },
            62..74 if self.s.txns => {
                let seen = self.seen.get(&(c, key.clone())).copied().unwrap_or(0);
                let value = self.value();
                let compares = vec![Compare { key: key.clone(), op: CmpOp::Eq, target: CompareTarget::ModRev(seen) }];
                let success = if self.rng.chance(20) && seen > 0 {
                    vec![TxnOp::Delete { key: key.clone() }]
                } else {
                    vec![TxnOp::Put { key: key.clone(), value, lease: 0 }]
                };
                Call::Txn { compares, success, failure: vec![TxnOp::Get { key }] }
            }
            74..80 if self.s.txns && self.s.keys >= 4 => {
                let pair = 2 * self.rng.below(2);
                let (a, b): (Bytes, Bytes) = (format!("k/{pair}").into(), format!("k/{}", pair + 1).into());
                let seen = self.seen.get(&(c, a.clone())).copied().unwrap_or(0);
                let op = if self.rng.chance(50) { CmpOp::Eq } else { CmpOp::Greater };
                let compares = vec![Compare { key: a.clone(), op, target: CompareTarget::ModRev(seen) }];
                let (va, vb) = (self.value(), self.value());
                let success =
                    vec![TxnOp::Put { key: a.clone(), value: va, lease: 0 }, TxnOp::Put { key: b.clone(), value: vb, lease: 0 }];
                Call::Txn { compares, success, failure: vec![TxnOp::Get { key: a }, TxnOp::Get { key: b }] }
            }
            80..88 if self.s.leases => self.lease_call(),
            88..90 if self.s.compaction && rev > 10 => Call::Compact { revision: rev - self.rng.below(5) as i64 },
            _ => Call::Get { key, revision: 0, serializable: false },
        }
    }

    fn lease_call(&mut self) -> Call {
        let lkey: Bytes = format!("l/{}", self.rng.below(3)).into();
        let lease = match self.leases.len() {
            0 => 0x7777,
            n => self.leases[self.rng.below(n as u64) as usize],
        };
        match self.rng.below(8) {
            0 => Call::LeaseGrant { ttl: 10, id: 0 },
            1 | 2 => Call::Put { key: lkey, value: self.value(), lease, prev_kv: false },
            3 => Call::LeaseRevoke { id: lease },
            4 => Call::LeaseKeepAlive { id: lease },
            5 => Call::LeaseTimeToLive { id: lease },
            6 => Call::Get { key: lkey, revision: 0, serializable: false },
            _ => Call::Range { key: "l/".into(), range_end: "l0".into(), revision: 0, limit: 0, serializable: false },
        }
    }
}
