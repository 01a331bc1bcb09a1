//! Groups joining the ring with their data under writes, against a
//! federation of one group: loads `--keys` keys over `--units` placement
//! units (`/registry/kindNN/`), keeps `--writers` writers putting to random
//! keys of every unit (each put's prev_kv checked against the writer's last
//! write to it), adds two groups with `group add --ring` and then
//! rebalances by bytes, then drains group 1 (off the ring, its pins, its
//! remainder: kube-apiserver's shallow keys) and removes it, and prints
//! what each step moved, how long the ring flip refused older maps, the
//! largest write pause, each group's share of the bytes, and the writers'
//! latency before and during (markdown tables).

mod bench;

use clap::Parser;
use placement::api::{GroupAddRequest, RebalanceRequest};
use placement::rebalance::Thresholds;
use placement::PlacementClient;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::PutRequest;

const UNITS: usize = 50;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    at: bench::Federation,
    #[arg(long, default_value_t = 200_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Voters of each new group.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
}

fn key(i: usize) -> Vec<u8> {
    format!("/registry/kind{:02}/ns{}/obj-{i:07}", i % UNITS, i / UNITS % 10).into_bytes()
}

/// One step's row: units moved, MB, seconds, MB/s, flip ms, largest write pause.
fn row(step: &str, moves: &[placement::api::MoveReport], secs: f64, flip_ms: Option<u64>) -> String {
    let mb = moves.iter().map(|m| m.bytes).sum::<u64>() as f64 / 1e6;
    let pause = moves.iter().map(|m| m.write_pause_ms).max().unwrap_or(0);
    let flip = flip_ms.map_or("–".into(), |f| f.to_string());
    format!("| {step} | {} | {mb:.1} | {secs:.1} | {:.1} | {flip} | {pause} |", moves.len(), mb / secs.max(0.001))
}

/// Each group's live keys and bytes.
async fn shares(admin: &PlacementClient) -> anyhow::Result<BTreeMap<u64, (i64, u64)>> {
    let mut per_group: BTreeMap<u64, (i64, u64)> = BTreeMap::new();
    for u in admin.units().await?.units.iter().filter(|u| u.keys > 0) {
        let e = per_group.entry(u.group).or_default();
        e.0 += u.keys;
        e.1 += u.bytes;
    }
    Ok(per_group)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let kv = KvClient::connect(a.at.endpoint.clone()).await?;
    let value = vec![b'v'; a.value_size];
    bench::load(&kv, a.keys, &value, key).await?;
    // Keys of units too shallow to move as a prefix (kube-apiserver's own).
    for k in ["compact_rev_key", "/registry/health"] {
        kv.clone().put(PutRequest { key: k.into(), value: value.clone(), ..Default::default() }).await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicUsize::new(0));
    let samples: bench::Samples = Arc::default();
    let mut tasks = vec![];
    for w in 0..a.writers {
        let (mut kv, stop, lost, samples, n, writers) =
            (kv.clone(), stop.clone(), lost.clone(), samples.clone(), a.keys, a.writers);
        tasks.push(tokio::spawn(async move {
            // Writer w owns the keys i ≡ w (mod writers): only it changes them.
            let mut last: HashMap<usize, String> = HashMap::new();
            let mut i = w;
            let mut written = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i = ((i / writers * 31 + 17) % (n / writers)) * writers + w;
                written += 1;
                let value = format!("w{w}-{written}");
                let t = Instant::now();
                let put = PutRequest { key: key(i), value: value.clone().into_bytes(), prev_kv: true, ..Default::default() };
                let prev = kv.put(put).await?.into_inner().prev_kv.map(|p| String::from_utf8_lossy(&p.value).into_owned());
                samples.lock().unwrap().push((t, t.elapsed()));
                if let Some(expected) = last.get(&i) {
                    if prev.as_ref() != Some(expected) {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                last.insert(i, value);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let admin = PlacementClient::new(a.at.placement.clone());
    let shape_start = Instant::now();
    let mut rows = vec![];
    for _ in 0..2 {
        let t = Instant::now();
        let group = admin.add_group(&GroupAddRequest { replicas: a.replicas, learners: 0 }).await?.group;
        let j = admin.join_new_group(group, 0, 60).await?;
        rows.push(row(&format!("group {group} joins the ring"), &j.moves, t.elapsed().as_secs_f64(), Some(j.flip_ms)));
    }
    let t = Instant::now();
    let thresholds = Thresholds { margin: 0.1, min_bytes: 0, min_writes_per_s: 1e12, max_moves: 100 };
    let plan = admin.rebalance(&RebalanceRequest { dry_run: false, interval_ms: 500, thresholds: Some(thresholds) }).await?;
    rows.push(format!(
        "| rebalance by bytes (margin 10 %) | {} | – | {:.1} | – | – | – |",
        plan.executed.len(),
        t.elapsed().as_secs_f64()
    ));
    let after_joins = shares(&admin).await?;
    let t = Instant::now();
    let drained = admin.drain_group(1, 0).await?;
    admin.remove_group(1).await?;
    let step = format!("group 1 leaves: drain ({} leases copied), remove", drained.leases_copied);
    rows.push(row(&step, &drained.moves, t.elapsed().as_secs_f64(), Some(drained.ring_flip_ms)));
    let shape_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let after_leave = shares(&admin).await?;

    println!("| step | units moved | MB copied | time (s) | MB/s | ring flip (ms) | largest write pause (ms) |");
    println!("|------|------------:|----------:|---------:|-----:|---------------:|-------------------------:|");
    for r in rows {
        println!("{r}");
    }
    for (when, per_group) in [("after the joins and the rebalance", after_joins), ("after group 1 left", after_leave)] {
        let total: u64 = per_group.values().map(|(_, b)| b).sum();
        println!();
        println!("| group ({when}) | keys | MB | share of the bytes |");
        println!("|------:|-----:|---:|-------------------:|");
        for (g, (keys, bytes)) in &per_group {
            println!("| {g} | {keys} | {:.1} | {:.0} % |", *bytes as f64 / 1e6, *bytes as f64 * 100.0 / total.max(1) as f64);
        }
    }
    println!();
    let samples = samples.lock().unwrap().clone();
    println!("| writes to every unit ({} writers, prev_kv checked) | writes | p50 (ms) | p99 (ms) | max (ms) |", a.writers);
    println!("|------------------------------------------------------|-------:|---------:|---------:|---------:|");
    println!(
        "{}",
        bench::latency_row("before (3 s)", &bench::window(&samples, shape_start - Duration::from_secs(3), shape_start))
    );
    let during = bench::window(&samples, shape_start, shape_end);
    println!("{}", bench::latency_row("during the joins, the rebalance and the leave", &during));
    let lost = lost.load(Ordering::Relaxed);
    println!();
    println!("lost acknowledged writes: {lost}");
    anyhow::ensure!(lost == 0, "{lost} acknowledged writes lost");
    Ok(())
}
