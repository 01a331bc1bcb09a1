//! Moving a prefix with its data under writes, against a federation:
//! loads `--keys` keys under `/bench/move/` (one placement unit), keeps
//! `--writers` writers putting to random keys of it, moves it to another
//! group through placement, and prints the copy throughput, the write pause
//! placement measured, and the writers' latency before and during the move
//! (the same clients, the same run). Markdown table rows.

mod bench;

use clap::Parser;
use placement::api::MoveRequest;
use placement::PlacementClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::PutRequest;

const PREFIX: &str = "/bench/move/";

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    at: bench::Federation,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let kv = KvClient::connect(a.at.endpoint.clone()).await?;
    let value = vec![b'v'; a.value_size];
    bench::load(&kv, a.keys, &value, key).await?;

    let admin = PlacementClient::new(a.at.placement.clone());
    let map = admin.map().await?;
    let from = map.clone().routing().group_of(&key(0)).ok_or_else(|| anyhow::anyhow!("no group"))?;
    let to = *map.groups.keys().find(|g| **g != from).ok_or_else(|| anyhow::anyhow!("one group only"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let samples: bench::Samples = Arc::default();
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
    let before = bench::window(&samples, move_start - Duration::from_secs(3), move_start);
    let during = bench::window(&samples, move_start, move_end);
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
    println!("{}", bench::latency_row("before the move (3 s)", &before));
    println!("{}", bench::latency_row("during the move", &during));
    eprintln!("moved from group {from} to group {to}: {report:?}");
    Ok(())
}
