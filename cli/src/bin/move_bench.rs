//! Moving a prefix with its data under writes, against a federation:
//! loads `--keys` keys under `/bench/move/` (one placement unit), keeps
//! `--writers` writers putting to random keys of it, moves it to another
//! group through placement, and prints the copy throughput, the write pause
//! placement measured, and the writers' latency before and during the move
//! (the same clients, the same run). Markdown table rows.

use clap::Parser;
use placement::api::MoveRequest;
use placement::PlacementClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::request_op::Request as Op;
use tessera_proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest};

const PREFIX: &str = "/bench/move/";

#[derive(Parser)]
struct Args {
    /// The router, e.g. http://127.0.0.1:2379
    #[arg(long)]
    endpoint: String,
    /// Placement's admin URL.
    #[arg(long)]
    placement: String,
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    #[arg(long, default_value_t = 4)]
    writers: usize,
}

fn key(i: usize) -> Vec<u8> {
    format!("{PREFIX}obj-{i:07}").into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// (when it started, how long it took) of every write.
type Samples = Arc<Mutex<Vec<(Instant, Duration)>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let kv = KvClient::connect(a.endpoint.clone()).await?;
    let value = vec![b'v'; a.value_size];
    // Load: 100 puts per txn, 8 at a time.
    let started = Instant::now();
    let batches: Vec<Vec<usize>> = (0..a.keys).collect::<Vec<_>>().chunks(100).map(|c| c.to_vec()).collect();
    let batches = Arc::new(Mutex::new(batches));
    let mut loaders = vec![];
    for _ in 0..8 {
        let (mut kv, batches, value) = (kv.clone(), batches.clone(), value.clone());
        loaders.push(tokio::spawn(async move {
            loop {
                let Some(batch) = batches.lock().unwrap().pop() else { return anyhow::Ok(()) };
                let success = batch
                    .iter()
                    .map(|i| RequestOp {
                        request: Some(Op::RequestPut(PutRequest { key: key(*i), value: value.clone(), ..Default::default() })),
                    })
                    .collect();
                kv.txn(TxnRequest { success, ..Default::default() }).await?;
            }
        }));
    }
    for l in loaders {
        l.await??;
    }
    eprintln!("loaded {} keys in {:.1}s", a.keys, started.elapsed().as_secs_f64());

    let admin = PlacementClient::new(a.placement.clone());
    let map = admin.map().await?;
    let from = map.clone().routing().group_of(&key(0)).ok_or_else(|| anyhow::anyhow!("no group"))?;
    let to = *map.groups.keys().find(|g| **g != from).ok_or_else(|| anyhow::anyhow!("one group only"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let mut writers = vec![];
    for w in 0..a.writers {
        let (mut kv, stop, samples, value, n) = (kv.clone(), stop.clone(), samples.clone(), value.clone(), a.keys);
        writers.push(tokio::spawn(async move {
            let mut i = w * 7919;
            while !stop.load(Ordering::Relaxed) {
                i = (i * 31 + 17) % n;
                let t = Instant::now();
                kv.put(PutRequest { key: key(i), value: value.clone(), ..Default::default() }).await?;
                samples.lock().unwrap().push((t, t.elapsed()));
            }
            anyhow::Ok(())
        }));
    }
    // A baseline of the same writers before the move.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let move_start = Instant::now();
    let report = admin.move_prefix(&MoveRequest { prefix: PREFIX.into(), group: to, rate_bytes: 0 }).await?;
    let move_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let samples = samples.lock().unwrap().clone();
    let window = |from: Instant, to: Instant| {
        let mut d: Vec<Duration> = samples.iter().filter(|(t, _)| *t >= from && *t < to).map(|(_, d)| *d).collect();
        d.sort();
        d
    };
    let before = window(move_start - Duration::from_secs(3), move_start);
    let during = window(move_start, move_end);
    let cutover_ms: u64 = report.phases.iter().filter(|p| p.phase != "copy").map(|p| p.ms).sum();
    println!("| keys | MB copied | copy + cutover (s) | copy MB/s | write pause (ms) | cutover + adopt (ms) |");
    println!("|-----:|----------:|-------------------:|----------:|-----------------:|---------------------:|");
    println!(
        "| {} | {:.1} | {:.1} | {:.1} | {} | {} |",
        report.keys,
        report.bytes as f64 / 1e6,
        (move_end - move_start).as_secs_f64(),
        report.copy_mb_per_s,
        report.write_pause_ms,
        cutover_ms
    );
    println!();
    println!("| writes to the moved prefix ({} writers) | writes | p50 (ms) | p99 (ms) | max (ms) |", a.writers);
    println!("|-----------------------------------------|-------:|---------:|---------:|---------:|");
    for (label, d) in [("before the move (3 s)", &before), ("during the move", &during)] {
        println!(
            "| {label} | {} | {:.1} | {:.1} | {:.1} |",
            d.len(),
            percentile(d, 0.5),
            percentile(d, 0.99),
            d.last().map_or(0.0, |x| x.as_secs_f64() * 1000.0)
        );
    }
    eprintln!("moved from group {from} to group {to}: {report:?}");
    Ok(())
}
