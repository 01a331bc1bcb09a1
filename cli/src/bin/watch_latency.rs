//! Put-to-event latency of one watch, against any etcd v3 endpoint (the
//! router, a group, real etcd): a writer puts at a fixed rate to keys of
//! `--units` placement units (`/bench/u<i>/k<n>`); one watch covers them all
//! — one unit's prefix when `--units 1` (a single-group watch behind the
//! router), `/bench/` otherwise (a watch merged across groups). Each event's
//! latency runs from just before its put was sent to its arrival. Prints
//! one markdown table row.

use clap::Parser;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::watch_client::WatchClient;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};

#[derive(Parser)]
struct Args {
    /// etcd endpoint, e.g. http://127.0.0.1:2379
    #[arg(long)]
    endpoint: String,
    /// Placement units the puts spread over.
    #[arg(long, default_value_t = 1)]
    units: usize,
    /// Puts in total.
    #[arg(long, default_value_t = 2000)]
    total: usize,
    /// Puts per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// First column of the printed row.
    #[arg(long, default_value = "watch")]
    label: String,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = tonic::transport::Endpoint::from_shared(args.endpoint.clone())?.connect().await?;
    let mut kv = KvClient::new(channel.clone());
    let prefix = if args.units == 1 { "/bench/u0/".to_string() } else { "/bench/".to_string() };
    let mut range_end = prefix.clone().into_bytes();
    *range_end.last_mut().expect("non-empty") += 1;

    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.clone().into_bytes(),
            range_end,
            ..Default::default()
        })),
    })
    .await?;
    let mut events = WatchClient::new(channel).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let created = events.message().await?.ok_or_else(|| anyhow::anyhow!("watch closed"))?;
    anyhow::ensure!(created.created, "watch not created: {created:?}");

    let sent: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let writer = {
        let sent = sent.clone();
        let (units, total, rate) = (args.units, args.total, args.rate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            for n in 0..total {
                tick.tick().await;
                let key = format!("/bench/u{}/k{n}", n % units);
                sent.lock().unwrap().insert(n, Instant::now());
                let put = PutRequest { key: key.into_bytes(), value: n.to_string().into_bytes(), ..Default::default() };
                kv.put(put).await?;
            }
            anyhow::Ok(())
        })
    };

    let mut latencies = Vec::with_capacity(args.total);
    let deadline = Instant::now() + Duration::from_secs(args.total as u64 / args.rate.max(1) + 60);
    while latencies.len() < args.total {
        let resp = tokio::time::timeout_at(deadline.into(), events.message())
            .await
            .map_err(|_| anyhow::anyhow!("only {} of {} events arrived", latencies.len(), args.total))??
            .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
        let now = Instant::now();
        for e in resp.events {
            let n: usize = std::str::from_utf8(&e.kv.as_ref().map(|kv| kv.value.clone()).unwrap_or_default())?.parse()?;
            if let Some(t) = sent.lock().unwrap().remove(&n) {
                latencies.push(now - t);
            }
        }
    }
    writer.await??;
    latencies.sort();
    println!(
        "| {:<44} | {:>6} | {:>8.2} | {:>8.2} | {:>8.2} |",
        args.label,
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    Ok(())
}
