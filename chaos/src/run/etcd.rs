//! etcd's own traffic (as etcd's robustness `etcd` profile): clients doing
//! gets (linearizable and serializable), ranges (at the latest revision and
//! at an older one, over one placement unit and over all of them), puts
//! (some with prev_kv), deletes, range deletes, multi-key txns (within one
//! placement unit, or over several: across groups), leases with keys attached (kept alive, then revoked or
//! left to expire and read back), compaction, and a watch over the whole
//! key space resumed when it breaks.
//!
//! Keys are `/app/u<unit>/k<i>`: each `/app/u<unit>/` is a placement unit
//! (3 slashes), so a txn over one unit's keys stays in one group, one over
//! several units' keys is a txn across groups, and ranges over `/app/`
//! cross groups. Lease keys are `/app/u<unit>/l<client>`.
//! Values are unique per write (`c<client>-<seq>`), as the checkers want.

use super::client::Client;
use super::faults::Rng;
use super::recorder::Recorder;
use super::watch::Stream;
use crate::history::{prefix_end, Bytes, Call, CmpOp, Compare, CompareTarget, Response, TxnOp};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::WatchCreateRequest;
use tonic::transport::Channel;

pub const PREFIX: &str = "/app/";
/// Client ids of this workload (the Kubernetes one uses low ids).
const FIRST_CLIENT: u32 = 1000;

#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub clients: usize,
    pub units: u64,
    pub keys_per_unit: u64,
    pub lease_ttl: i64,
    pub compact_every: Duration,
    /// Percent of txns over several units' keys (across groups in a
    /// federation); the rest stay in one unit.
    pub cross_unit_txns: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            clients: 6,
            units: 8,
            keys_per_unit: 3,
            lease_ttl: 5,
            compact_every: Duration::from_secs(5),
            cross_unit_txns: 30,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EtcdReport {
    pub ops: u64,
    pub failed: u64,
    pub writes: u64,
    pub writes_failed: u64,
    pub txns: u64,
    pub txns_succeeded: u64,
    pub leases_granted: u64,
    pub leases_revoked: u64,
    /// Leases left to expire and seen gone.
    pub leases_expired: u64,
    pub compactions: u64,
    pub watch_streams: u64,
}

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    failed: AtomicU64,
    writes: AtomicU64,
    writes_failed: AtomicU64,
    txns: AtomicU64,
    txns_succeeded: AtomicU64,
    granted: AtomicU64,
    revoked: AtomicU64,
    expired: AtomicU64,
    compactions: AtomicU64,
    streams: AtomicU64,
    /// Highest header revision any call returned.
    seen: AtomicI64,
}

fn key(unit: u64, i: u64) -> Bytes {
    Bytes::from(format!("{PREFIX}u{unit}/k{i}"))
}

fn unit_prefix(unit: u64) -> Bytes {
    Bytes::from(format!("{PREFIX}u{unit}/"))
}

/// Runs the etcd-like load until `stop`; client `i` talks to `channels[i % len]`.
pub async fn run(
    channels: Vec<Channel>,
    rec: Recorder,
    cfg: EtcdConfig,
    seed: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<EtcdReport> {
    let n = Arc::new(Counters::default());
    let channel = |i: usize| channels[i % channels.len()].clone();
    let mut tasks = vec![];
    for i in 0..cfg.clients {
        let id = FIRST_CLIENT + i as u32;
        let mut w = Worker {
            c: Client::new(id, channel(i), rec.clone()),
            rng: Rng::new(seed ^ (u64::from(id) * 0x2000_0003)),
            cfg: cfg.clone(),
            n: n.clone(),
            id,
            seq: 0,
            known: HashMap::new(),
            lease: None,
        };
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move { w.run(stop).await }));
    }
    let compactor = Client::new(FIRST_CLIENT + 900, channel(1), rec.clone());
    tasks.push(tokio::spawn(compact_loop(compactor, cfg.compact_every, n.clone(), stop.clone())));
    let (stop_watch, watch_stop) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(watch_loop(channels.clone(), rec.clone(), n.clone(), watch_stop));
    for t in tasks {
        t.await?;
    }
    // Let the watch see the last writes before it stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_watch.send(true);
    let _ = watcher.await;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(EtcdReport {
        ops: l(&n.ops),
        failed: l(&n.failed),
        writes: l(&n.writes),
        writes_failed: l(&n.writes_failed),
        txns: l(&n.txns),
        txns_succeeded: l(&n.txns_succeeded),
        leases_granted: l(&n.granted),
        leases_revoked: l(&n.revoked),
        leases_expired: l(&n.expired),
        compactions: l(&n.compactions),
        watch_streams: l(&n.streams),
    })
}

/// A lease of one client and the keys it attached.
struct Lease {
    id: i64,
    keys: Vec<Bytes>,
    keepalives: u32,
    /// Left to expire: when it should be gone.
    abandoned: Option<Instant>,
}

struct Worker {
    c: Client,
    rng: Rng,
    cfg: EtcdConfig,
    n: Arc<Counters>,
    id: u32,
    seq: u64,
    /// Last mod_revision seen per key (0: absent), for txn compares.
    known: HashMap<Bytes, i64>,
    lease: Option<Lease>,
}

impl Worker {
    async fn run(&mut self, stop: tokio::sync::watch::Receiver<bool>) {
        while !*stop.borrow() {
            let ok = self.step().await;
            if !ok {
                // As a client's retry backoff: no tight loop against a dead endpoint.
                tokio::time::sleep(Duration::from_millis(self.rng.range(20, 100))).await;
            }
        }
        // Nothing left to expire mid-check: revoke what is still held.
        if let Some(l) = self.lease.take() {
            self.call(Call::LeaseRevoke { id: l.id }).await;
        }
    }

    fn value(&mut self) -> Bytes {
        self.seq += 1;
        Bytes::from(format!("c{}-{}", self.id, self.seq))
    }

    async fn call(&mut self, call: Call) -> Option<Response> {
        self.n.ops.fetch_add(1, Ordering::Relaxed);
        let write = matches!(call, Call::Put { .. } | Call::Delete { .. } | Call::Txn { .. });
        if write {
            self.n.writes.fetch_add(1, Ordering::Relaxed);
        }
        let r = self.c.call(call).await;
        match &r {
            None => {
                self.n.failed.fetch_add(1, Ordering::Relaxed);
                if write {
                    self.n.writes_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(
                Response::Get { header_rev, .. }
                | Response::Range { header_rev, .. }
                | Response::Put { header_rev, .. }
                | Response::Delete { header_rev, .. }
                | Response::Txn { header_rev, .. },
            ) => {
                self.n.seen.fetch_max(*header_rev, Ordering::Relaxed);
            }
            _ => {}
        }
        r
    }

    /// One operation; false when it failed.
    async fn step(&mut self) -> bool {
        let unit = self.rng.below(self.cfg.units);
        let k = key(unit, self.rng.below(self.cfg.keys_per_unit));
        let roll = self.rng.below(100);
        let r = match roll {
            0..=24 => {
                let serializable = roll >= 20;
                let r = self.call(Call::Get { key: k.clone(), revision: 0, serializable }).await;
                if let (false, Some(Response::Get { kv, .. })) = (serializable, &r) {
                    self.known.insert(k, kv.as_ref().map_or(0, |kv| kv.mod_rev));
                }
                r
            }
            25..=34 => self.range(unit_prefix(unit), 0).await,
            35..=37 => self.range(Bytes::from(PREFIX), 0).await,
            38..=42 => {
                let back = self.n.seen.load(Ordering::Relaxed) - self.rng.range(1, 30) as i64;
                self.range(unit_prefix(unit), back.max(1)).await
            }
            43..=62 => {
                let prev_kv = self.rng.chance(30);
                let value = self.value();
                let r = self.call(Call::Put { key: k.clone(), value, lease: 0, prev_kv }).await;
                if let Some(Response::Put { header_rev, .. }) = &r {
                    self.known.insert(k, *header_rev);
                }
                r
            }
            63..=69 => self.call(Call::Delete { key: k.clone(), range_end: Bytes::default() }).await,
            70..=71 => {
                let p = unit_prefix(unit);
                self.call(Call::Delete { range_end: prefix_end(p.as_slice()), key: p }).await
            }
            72..=91 => self.txn(unit).await,
            _ => return self.lease_step(unit).await,
        };
        r.is_some()
    }

    async fn range(&mut self, key: Bytes, revision: i64) -> Option<Response> {
        let range_end = prefix_end(key.as_slice());
        let r = self.call(Call::Range { key, range_end, revision, limit: 0, serializable: false }).await;
        if let (0, Some(Response::Range { kvs, .. })) = (revision, &r) {
            for (k, kv) in kvs {
                self.known.insert(k.clone(), kv.mod_rev);
            }
        }
        r
    }

    /// A txn over 2–3 keys, of one unit or (`cross_unit_txns` percent of
    /// them) of several, so across groups: if the first is as last seen,
    /// write the others (and it), else read them.
    async fn txn(&mut self, unit: u64) -> Option<Response> {
        self.n.txns.fetch_add(1, Ordering::Relaxed);
        let mut keys: Vec<Bytes> = (0..self.cfg.keys_per_unit).map(|i| key(unit, i)).collect();
        let take = self.rng.range(2, keys.len() as u64 + 1) as usize;
        if self.rng.chance(self.cfg.cross_unit_txns) {
            for k in keys.iter_mut().skip(1) {
                *k = key(self.rng.below(self.cfg.units), self.rng.below(self.cfg.keys_per_unit));
            }
            keys.sort();
            keys.dedup();
        }
        for i in 0..keys.len() {
            let j = i + self.rng.below((keys.len() - i) as u64) as usize;
            keys.swap(i, j);
        }
        keys.truncate(take.min(keys.len()));
        let first = keys[0].clone();
        let compare = if self.rng.chance(80) {
            CompareTarget::ModRev(self.known.get(&first).copied().unwrap_or(0))
        } else {
            CompareTarget::Version(0)
        };
        let op = if matches!(compare, CompareTarget::Version(_)) { CmpOp::Greater } else { CmpOp::Eq };
        let mut success = vec![];
        for (i, k) in keys.iter().enumerate() {
            if i > 0 && self.rng.chance(20) {
                success.push(TxnOp::Delete { key: k.clone() });
            } else {
                let value = self.value();
                success.push(TxnOp::Put { key: k.clone(), value, lease: 0 });
            }
        }
        let failure = keys.iter().map(|k| TxnOp::Get { key: k.clone() }).collect();
        let call = Call::Txn { compares: vec![Compare { key: first, op, target: compare }], success, failure };
        let r = self.call(call).await;
        if let Some(Response::Txn { succeeded: true, .. }) = &r {
            self.n.txns_succeeded.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(Response::Txn { succeeded: false, results, .. }) = &r {
            for (k, res) in keys.iter().zip(results) {
                if let crate::history::TxnResult::Get { kv } = res {
                    self.known.insert(k.clone(), kv.as_ref().map_or(0, |kv| kv.mod_rev));
                }
            }
        }
        r
    }

    /// The lease cycle: grant, attach keys, keep alive a few times, then
    /// revoke (and read a key back) or leave it to expire (then see it gone
    /// and read its keys back).
    async fn lease_step(&mut self, unit: u64) -> bool {
        let Some(mut l) = self.lease.take() else {
            let ttl = self.cfg.lease_ttl;
            return match self.call(Call::LeaseGrant { ttl, id: 0 }).await {
                Some(Response::LeaseGrant { id, .. }) => {
                    self.n.granted.fetch_add(1, Ordering::Relaxed);
                    self.lease = Some(Lease { id, keys: vec![], keepalives: 0, abandoned: None });
                    true
                }
                _ => false,
            };
        };
        if let Some(gone_at) = l.abandoned {
            if Instant::now() < gone_at {
                self.lease = Some(l);
                return true;
            }
            // Expired by now: see it gone, then its keys must be gone too.
            match self.call(Call::LeaseTimeToLive { id: l.id }).await {
                Some(Response::LeaseTimeToLive { ttl: -1, .. }) => {
                    self.n.expired.fetch_add(1, Ordering::Relaxed);
                    for k in l.keys.clone() {
                        self.call(Call::Get { key: k, revision: 0, serializable: false }).await;
                    }
                    return true;
                }
                _ => {
                    self.lease = Some(l);
                    return false;
                }
            }
        }
        let roll = self.rng.below(100);
        if l.keys.len() < 2 && roll < 50 {
            let k = Bytes::from(format!("{PREFIX}u{unit}/l{}", self.id));
            let value = self.value();
            let r = self.call(Call::Put { key: k.clone(), value, lease: l.id, prev_kv: false }).await;
            if r.is_some() && !l.keys.contains(&k) {
                l.keys.push(k);
            }
            self.lease = Some(l);
            return r.is_some();
        }
        if l.keepalives < 3 {
            l.keepalives += 1;
            let r = self.call(Call::LeaseKeepAlive { id: l.id }).await;
            let alive = matches!(r, Some(Response::LeaseKeepAlive { ttl }) if ttl > 0);
            // A lease seen expired (a clock fault, a long partition) ends here.
            if alive || r.is_none() {
                self.lease = Some(l);
            }
            return r.is_some();
        }
        if self.rng.chance(70) {
            let r = self.call(Call::LeaseRevoke { id: l.id }).await;
            if r.is_some() {
                self.n.revoked.fetch_add(1, Ordering::Relaxed);
                if let Some(k) = l.keys.first().cloned() {
                    self.call(Call::Get { key: k, revision: 0, serializable: false }).await;
                }
                return true;
            }
            self.lease = Some(l);
            false
        } else {
            let ttl = Duration::from_secs(self.cfg.lease_ttl as u64);
            l.abandoned = Some(Instant::now() + ttl + Duration::from_secs(2));
            self.lease = Some(l);
            true
        }
    }
}

/// Compacts every `every` to the highest revision seen one round before.
async fn compact_loop(mut c: Client, every: Duration, n: Arc<Counters>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if last > 0 && c.call(Call::Compact { revision: last }).await.is_some() {
            n.compactions.fetch_add(1, Ordering::Relaxed);
        }
        last = n.seen.load(Ordering::Relaxed);
    }
}

/// A watch over the whole key space (prev_kv, progress notifications,
/// RequestProgress every second), resumed after its last revision on a new
/// stream when it breaks; after a compaction cancel, from the latest.
async fn watch_loop(channels: Vec<Channel>, rec: Recorder, n: Arc<Counters>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let last = Arc::new(Mutex::new(0i64));
    for attempt in 0usize.. {
        if *stop.borrow() {
            return;
        }
        let channel = channels[attempt % channels.len()].clone();
        let session = async {
            let stream = Stream::open(channel, FIRST_CLIENT + 999, rec.clone()).await?;
            n.streams.fetch_add(1, Ordering::Relaxed);
            let from = *last.lock().unwrap_or_else(|p| p.into_inner());
            let create = WatchCreateRequest {
                key: PREFIX.as_bytes().to_vec(),
                range_end: prefix_end(PREFIX.as_bytes()).to_vec(),
                start_revision: if from > 0 { from + 1 } else { 0 },
                prev_kv: true,
                progress_notify: true,
                ..Default::default()
            };
            let mut rx = stream.watch(create).await?;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    r = rx.recv() => {
                        let Some(r) = r else { return anyhow::Ok(()) };
                        let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
                        if r.canceled {
                            // Compacted past where it was: go on from the latest.
                            *l = 0;
                            return Ok(());
                        }
                        let rev = r.events.last().and_then(|e| e.kv.as_ref()).map(|kv| kv.mod_revision);
                        let progress = (!r.created && r.events.is_empty()).then(|| r.header.as_ref().map_or(0, |h| h.revision));
                        *l = (*l).max(rev.or(progress).unwrap_or(0));
                    }
                    _ = tick.tick() => { let _ = stream.request_progress().await; }
                }
            }
        };
        tokio::select! {
            r = session => if let Err(e) = r { tracing::debug!(error = %e, "etcd watch stream") },
            _ = stop.changed() => return,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
