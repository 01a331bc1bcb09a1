//! What the benchmarks share: loading keys through the router, and latency
//! samples with their percentiles.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::request_op::Request as Op;
use tessera_proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

/// The federation a benchmark runs against.
#[derive(clap::Args)]
pub struct Federation {
    /// The router, e.g. http://127.0.0.1:2379
    #[arg(long)]
    pub endpoint: String,
    /// Placement's admin URL.
    #[arg(long)]
    pub placement: String,
}

/// (when it started, how long it took) of every write.
pub type Samples = Arc<Mutex<Vec<(Instant, Duration)>>>;

/// Puts keys `key(0..n)` with `value`: 100 puts per txn, 8 txns at a time.
pub async fn load(kv: &KvClient<Channel>, n: usize, value: &[u8], key: fn(usize) -> Vec<u8>) -> anyhow::Result<()> {
    let started = Instant::now();
    let batches: Vec<Vec<usize>> = (0..n).collect::<Vec<_>>().chunks(100).map(|c| c.to_vec()).collect();
    let batches = Arc::new(Mutex::new(batches));
    let mut loaders = vec![];
    for _ in 0..8 {
        let (mut kv, batches, value) = (kv.clone(), batches.clone(), value.to_vec());
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
    eprintln!("loaded {n} keys in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The latencies (sorted) of the writes started in `[from, to)`.
pub fn window(samples: &[(Instant, Duration)], from: Instant, to: Instant) -> Vec<Duration> {
    let mut d: Vec<Duration> = samples.iter().filter(|(t, _)| *t >= from && *t < to).map(|(_, d)| *d).collect();
    d.sort();
    d
}

/// The `p` quantile of `sorted`, in ms.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// A markdown row: writes, p50, p99, max (ms).
pub fn latency_row(label: &str, d: &[Duration]) -> String {
    format!(
        "| {label} | {} | {:.1} | {:.1} | {:.1} |",
        d.len(),
        percentile(d, 0.5),
        percentile(d, 0.99),
        d.last().map_or(0.0, |x| x.as_secs_f64() * 1000.0)
    )
}
