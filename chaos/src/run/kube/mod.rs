//! Kubernetes' storage traffic, as kube-apiserver sends it to etcd (and as
//! etcd's robustness suite's `kubernetes` profile models it):
//! - writers: create = txn on mod_revision 0, update and delete = txn on
//!   the object's mod_revision with an else-get; events written with a
//!   lease that is kept alive;
//! - reflectors (one per resource): list with pagination pinned at the
//!   first page's revision, then watch from rv+1 with prev_kv and progress
//!   notifications on one shared stream, keeping a cache; resumed on a new
//!   stream when it breaks, relisted after compaction (`reflector`);
//! - consistent reads from cache: RequestProgress after an acknowledged
//!   write, and the time until every cache has caught up to it (Kubernetes
//!   gives up after 3 s and lists from etcd instead);
//! - compaction every few seconds through the compact-key txn, as
//!   kube-apiserver's compactor does.
//!
//! Everything is recorded in the history for the checkers; this module also
//! measures what Kubernetes feels: write failures, progress freshness,
//! progress going backwards, caches that differ from a fresh list, watches
//! cancelled for compaction.

mod reflector;

use super::client::Client;
use super::faults::Rng;
use super::recorder::Recorder;
use crate::history::{Bytes, Call, CmpOp, Compare, CompareTarget, Kv, Response, TxnOp, TxnResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub const RESOURCES: [&str; 4] = ["/registry/pods/", "/registry/configmaps/", "/registry/leases/", "/registry/events/"];
/// The key kube-apiserver's compactor coordinates on.
pub const COMPACT_KEY: &str = "compact_rev_key";

#[derive(Clone, Debug)]
pub struct KubeConfig {
    pub writers_per_resource: usize,
    pub objects_per_writer: usize,
    pub compact_every: Duration,
    pub progress_every: Duration,
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            writers_per_resource: 4,
            objects_per_writer: 25,
            compact_every: Duration::from_secs(4),
            progress_every: Duration::from_millis(500),
        }
    }
}

/// What Kubernetes would have felt.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KubeReport {
    pub writes: u64,
    pub writes_failed: u64,
    pub progress_requests: u64,
    /// RequestProgress → every cache at the last acknowledged write, in ms.
    pub freshness_ms: Vec<f64>,
    /// Requests whose caches did not catch up within 3 s.
    pub freshness_timeouts: u64,
    /// Progress notifications below an event already delivered on their watch.
    pub progress_backwards: Vec<String>,
    /// Watches cancelled for compaction, with why.
    pub compaction_cancels: Vec<String>,
    /// Caches that differ from a fresh list at the end.
    pub cache_mismatches: Vec<String>,
    /// Caches that did not catch up with the last write after the faults healed.
    #[serde(default)]
    pub stuck_caches: Vec<String>,
    pub compactions: u64,
}

impl KubeReport {
    pub fn percentile(&self, p: f64) -> f64 {
        let mut v = self.freshness_ms.clone();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }
}

/// A reflector's cache: key → (value, mod_rev), and the revision it is at.
#[derive(Default)]
struct Cache {
    objects: BTreeMap<Vec<u8>, Kv>,
    rev: i64,
    /// Highest event revision delivered on its watch.
    last_event: i64,
}

struct Shared {
    /// Highest revision a write returned (acknowledged).
    acked: AtomicI64,
    caches: Vec<Mutex<Cache>>,
    writes: AtomicU64,
    failed: AtomicU64,
    report: Mutex<KubeReport>,
}

impl Shared {
    fn cache(&self, r: usize) -> MutexGuard<'_, Cache> {
        self.caches[r].lock().unwrap_or_else(|p| p.into_inner())
    }
    fn report(&self) -> MutexGuard<'_, KubeReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn caches_at(&self, target: i64) -> bool {
        (0..self.caches.len()).all(|r| self.cache(r).rev >= target)
    }
}

fn value(writer: usize, seq: u64) -> Bytes {
    Bytes::from(format!("{{\"kind\":\"Object\",\"writer\":{writer},\"seq\":{seq}}}"))
}

/// Client ids of this workload start here (the etcd workload's elsewhere).
const FIRST_CLIENT: u32 = 1;

/// Runs the Kubernetes-like load until `stop`; returns what it measured.
/// Client `i` talks to `channels[i % len]` (several routers, or members).
pub async fn run(
    channels: Vec<Channel>,
    rec: Recorder,
    cfg: KubeConfig,
    seed: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<KubeReport> {
    let shared = Arc::new(Shared {
        acked: AtomicI64::new(0),
        caches: RESOURCES.iter().map(|_| Mutex::new(Cache::default())).collect(),
        writes: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        report: Mutex::new(KubeReport::default()),
    });
    let mut next_client = FIRST_CLIENT;
    let mut client = |rec: &Recorder| {
        next_client += 1;
        Client::new(next_client, channels[next_client as usize % channels.len()].clone(), rec.clone())
    };

    // Reflectors first: list, then watch (resumed and relisted as needed).
    let mut lister = client(&rec);
    for (r, prefix) in RESOURCES.iter().enumerate() {
        reflector::list(&mut lister, prefix, &shared, r).await?;
    }
    let current = reflector::Current::default();
    // The reflectors outlive the writers: the caches must catch up at the end.
    let (stop_reflectors, reflectors_stop) = tokio::sync::watch::channel(false);
    let reflectors =
        tokio::spawn(reflector::run(channels.clone(), rec.clone(), shared.clone(), current.clone(), lister, reflectors_stop));
    let stream = || current.lock().unwrap_or_else(|p| p.into_inner()).clone();

    // Writers (they finish their call in flight when stopped, so the
    // history has every write that may have happened).
    let mut writers = vec![];
    let lease = match client(&rec).call(Call::LeaseGrant { ttl: 60, id: 0 }).await {
        Some(Response::LeaseGrant { id, .. }) => id,
        _ => anyhow::bail!("could not grant the events' lease"),
    };
    for (r, prefix) in RESOURCES.iter().enumerate() {
        for w in 0..cfg.writers_per_resource {
            let (mut c, sh, stop, cfg) = (client(&rec), shared.clone(), stop.clone(), cfg.clone());
            let mut rng = Rng::new(seed ^ (((r * 64 + w) as u64 + 1) * 0x1000_0001));
            let lease = if prefix.ends_with("events/") { lease } else { 0 };
            let writer = r * 64 + w;
            writers.push(tokio::spawn(async move { write_loop(&mut c, prefix, writer, lease, &cfg, &mut rng, &sh, stop).await }));
        }
    }
    // The events' lease stays alive.
    {
        let (mut c, stop) = (client(&rec), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut stop = stop;
            while !*stop.borrow() {
                c.call(Call::LeaseKeepAlive { id: lease }).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => {}
                }
            }
        }));
    }
    // Compaction, as kube-apiserver's compactor.
    {
        let (mut c, stop, sh, every) = (client(&rec), stop.clone(), shared.clone(), cfg.compact_every);
        writers.push(tokio::spawn(async move {
            let (mut last, mut stop) = (0i64, stop);
            while !*stop.borrow() {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => break,
                }
                let current = sh.acked.load(Ordering::Acquire);
                if compact(&mut c, last, current).await {
                    sh.report().compactions += 1;
                }
                last = current;
            }
        }));
    }

    // Consistent reads from cache: RequestProgress and the caches' catching up.
    let mut tick = tokio::time::interval(cfg.progress_every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let target = shared.acked.load(Ordering::Acquire);
        let Some(s) = stream().filter(|_| target > 0) else { continue };
        let started = Instant::now();
        if s.request_progress().await.is_err() {
            continue;
        }
        shared.report().progress_requests += 1;
        let fresh = loop {
            if shared.caches_at(target) {
                break true;
            }
            if started.elapsed() > Duration::from_secs(3) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let mut rep = shared.report();
        if fresh {
            rep.freshness_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        } else {
            rep.freshness_timeouts += 1;
        }
    }
    for w in writers {
        let _ = w.await;
    }

    // The caches catch up (the faults have healed; a reflector may be
    // between streams), then they are compared with a fresh list at one
    // revision they have all reached.
    let target = shared.acked.load(Ordering::Acquire);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !shared.caches_at(target) && Instant::now() < deadline {
        if let Some(s) = stream() {
            let _ = s.request_progress().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut report = shared.report().clone();
    let mut c = client(&rec);
    for (r, prefix) in RESOURCES.iter().enumerate() {
        let (rev, objects) = {
            let cache = shared.cache(r);
            (cache.rev, cache.objects.clone())
        };
        if rev < target {
            report.stuck_caches.push(format!("{prefix}: cache at {rev}, 15 s after the last write at {target}"));
            continue;
        }
        let end = crate::history::prefix_end(prefix.as_bytes());
        let call = Call::Range { key: Bytes::from(*prefix), range_end: end, revision: rev, limit: 0, serializable: false };
        match c.call(call).await {
            Some(Response::Range { kvs, .. }) => {
                let fresh: BTreeMap<Vec<u8>, Kv> = kvs.into_iter().map(|(k, kv)| (k.to_vec(), kv)).collect();
                if fresh != objects {
                    report.cache_mismatches.push(format!(
                        "{prefix}: cache at {rev} has {} objects, a list at that revision {}",
                        objects.len(),
                        fresh.len()
                    ));
                }
            }
            _ => report.cache_mismatches.push(format!("{prefix}: could not list at {rev}")),
        }
    }
    let _ = stop_reflectors.send(true);
    let _ = reflectors.await;
    report.writes = shared.writes.load(Ordering::Relaxed);
    report.writes_failed = shared.failed.load(Ordering::Relaxed);
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    c: &mut Client,
    prefix: &str,
    writer: usize,
    lease: i64,
    cfg: &KubeConfig,
    rng: &mut Rng,
    sh: &Shared,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    // What this writer believes of its objects: mod_revision (0: absent).
    let mut known: Vec<i64> = vec![0; cfg.objects_per_writer];
    let mut seq = 0u64;
    while !*stop.borrow() {
        let i = rng.below(cfg.objects_per_writer as u64) as usize;
        let key = Bytes::from(format!("{prefix}ns{}/w{writer}-{i}", i % 4));
        seq += 1;
        let (compare, success) = match known[i] {
            0 => (0, TxnOp::Put { key: key.clone(), value: value(writer, seq), lease }),
            m if rng.chance(15) => (m, TxnOp::Delete { key: key.clone() }),
            m => (m, TxnOp::Put { key: key.clone(), value: value(writer, seq), lease }),
        };
        let deleting = matches!(success, TxnOp::Delete { .. });
        let call = Call::Txn {
            compares: vec![Compare { key: key.clone(), op: CmpOp::Eq, target: CompareTarget::ModRev(compare) }],
            success: vec![success],
            failure: vec![TxnOp::Get { key }],
        };
        sh.writes.fetch_add(1, Ordering::Relaxed);
        match c.call(call).await {
            Some(Response::Txn { header_rev, succeeded, results }) => {
                sh.acked.fetch_max(header_rev, Ordering::AcqRel);
                known[i] = match (succeeded, results.first()) {
                    (true, _) if deleting => 0,
                    (true, _) => header_rev,
                    (false, Some(TxnResult::Get { kv })) => kv.as_ref().map_or(0, |kv| kv.mod_rev),
                    (false, _) => 0,
                };
            }
            _ => {
                sh.failed.fetch_add(1, Ordering::Relaxed);
                // As a client's retry backoff: no tight loop against a dead endpoint.
                tokio::time::sleep(Duration::from_millis(rng.range(20, 100))).await;
                // Unknown state: read it back before going on.
                if let Some(Response::Get { kv, .. }) = c
                    .call(Call::Get {
                        key: Bytes::from(format!("{prefix}ns{}/w{writer}-{i}", i % 4)),
                        revision: 0,
                        serializable: false,
                    })
                    .await
                {
                    known[i] = kv.map_or(0, |kv| kv.mod_rev);
                }
            }
        }
    }
}

/// kube-apiserver's compaction: move the compact key (a txn on its
/// version, so one apiserver of many compacts), then compact to what the
/// previous round saw.
async fn compact(c: &mut Client, to: i64, current: i64) -> bool {
    let key = Bytes::from(COMPACT_KEY);
    let version = match c.call(Call::Get { key: key.clone(), revision: 0, serializable: false }).await {
        Some(Response::Get { kv, .. }) => kv.map_or(0, |kv| kv.version),
        _ => return false,
    };
    let txn = Call::Txn {
        compares: vec![Compare { key: key.clone(), op: CmpOp::Eq, target: CompareTarget::Version(version) }],
        success: vec![TxnOp::Put { key, value: Bytes::from(current.to_string()), lease: 0 }],
        failure: vec![],
    };
    match c.call(txn).await {
        Some(Response::Txn { succeeded: true, .. }) if to > 0 => c.call(Call::Compact { revision: to }).await.is_some(),
        _ => false,
    }
}
