//! Latency and throughput of txns over keys of one group or of several,
//! against any etcd v3 endpoint. Each txn compares its first key's version
//! and puts every one of its `--keys` keys (a CAS over several objects).
//! With `--store` (a federation's placement store) the keys of each txn are
//! chosen to fall in exactly `--groups` groups of the shard map; without it
//! (real etcd, one group) keys are taken from distinct placement units.
//! Prints one markdown table row.

use clap::Parser;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::request_op::Request as Op;
use tessera_proto::etcdserverpb::{Compare, PutRequest, RequestOp, TxnRequest};

#[derive(Parser)]
struct Args {
    /// etcd endpoint, e.g. http://127.0.0.1:2379
    #[arg(long)]
    endpoint: String,
    /// A federation's placement store (client URL): pick keys by group.
    #[arg(long)]
    store: Option<String>,
    /// Keys per txn.
    #[arg(long, default_value_t = 2)]
    keys: usize,
    /// Groups the keys of a txn fall in (with --store).
    #[arg(long, default_value_t = 1)]
    groups: usize,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Txns in total.
    #[arg(long, default_value_t = 1000)]
    total: usize,
    /// First column of the printed row.
    #[arg(long, default_value = "txn")]
    label: String,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Candidate keys by group (one bucket without a map).
async fn buckets(store: Option<&str>) -> anyhow::Result<Vec<Vec<String>>> {
    let keys: Vec<String> = (0..4000).map(|i| format!("/bench/t{i}/k")).collect();
    let Some(store) = store else {
        return Ok(vec![keys]);
    };
    let (map, _) = shardmap::watcher::fetch(store, &Default::default()).await?;
    let routing = map.routing();
    let mut by: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for k in keys {
        if let Some(g) = routing.group_of(k.as_bytes()) {
            by.entry(g).or_default().push(k);
        }
    }
    Ok(by.into_values().collect())
}

/// The keys of txn `n`: `keys` keys over `groups` buckets, one unit each.
fn txn_keys(b: &[Vec<String>], n: usize, keys: usize, groups: usize) -> Vec<String> {
    let groups = groups.clamp(1, b.len());
    let first = n % b.len();
    (0..keys)
        .map(|i| {
            let bucket = &b[(first + i % groups) % b.len()];
            bucket[(n * 7919 + i * 104_729) % bucket.len()].clone()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let b = Arc::new(buckets(args.store.as_deref()).await?);
    let channel = tonic::transport::Endpoint::from_shared(args.endpoint.clone())?.connect().await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = vec![];
    for _ in 0..args.clients {
        let (args, b, next) = (args.clone(), b.clone(), next.clone());
        let mut kv = KvClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = vec![];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= args.total {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let keys = txn_keys(&b, n, args.keys, args.groups);
                let compare = vec![Compare {
                    key: keys[0].clone().into(),
                    target: CompareTarget::Version as i32,
                    result: CompareResult::Greater as i32,
                    target_union: Some(TargetUnion::Version(-1)),
                    ..Default::default()
                }];
                let put = |k: &String| RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        key: k.clone().into(),
                        value: vec![b'x'; 64],
                        ..Default::default()
                    })),
                };
                let txn = TxnRequest { compare, success: keys.iter().map(put).collect(), failure: vec![] };
                let t = Instant::now();
                let resp = kv.txn(txn).await?.into_inner();
                anyhow::ensure!(resp.succeeded, "txn {n} did not succeed");
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    println!(
        "| {:<34} | {:>4} | {:>6} | {:>7} | {:>9.0} | {:>8.2} | {:>8.2} |",
        args.label,
        args.keys,
        if args.store.is_some() { args.groups.to_string() } else { "-".into() },
        args.clients,
        all.len() as f64 / secs,
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
    Ok(())
}
