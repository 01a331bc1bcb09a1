//! The client of the revision oracle (`tessera.shard.Oracle`, served by the
//! leader of placement's store group): one timeline of revisions for a
//! whole federation. Shard-nodes take write revisions from it and tell it
//! of revisions they applied above them; reads and watches through any
//! router or node take their revision from it.
//!
//! Calls are batched: one RPC in flight per client; every request that
//! arrives meanwhile joins the next one (fresh timestamps are handed out
//! as consecutive slices of one reservation, observations merged into
//! their maximum). The highest value seen is cached, so "has this revision
//! been handed out?" is usually answered without a call.

use crate::errors::{Error, Refusal};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::tessera::shard::oracle_client::OracleClient as Rpc;
use tessera_proto::tessera::shard::TimestampRequest;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

/// How long one batch may take before its callers fail (the oracle is
/// unreachable: writes and linearizable reads wait for it, as for a leader).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

struct Ask {
    count: u32,
    observe: i64,
    reply: oneshot::Sender<Result<(i64, i64), Error>>,
}

pub struct OracleClient {
    asks: mpsc::UnboundedSender<Ask>,
    issued: Arc<AtomicI64>,
}

impl OracleClient {
    /// A client of the oracle served at `endpoints` (the members of its group).
    pub fn new(endpoints: Vec<String>, dialer: crate::tls::Dialer) -> Arc<Self> {
        let (asks, rx) = mpsc::unbounded_channel();
        let issued = Arc::new(AtomicI64::new(0));
        tokio::spawn(run(endpoints, dialer, rx, issued.clone()));
        Arc::new(OracleClient { asks, issued })
    }

    async fn ask(&self, count: u32, observe: i64) -> Result<(i64, i64), Error> {
        let (reply, rx) = oneshot::channel();
        self.asks.send(Ask { count, observe, reply }).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// A fresh timestamp: greater than every value handed out or observed
    /// before this call (a write's revision hint).
    pub async fn next(&self) -> Result<i64, Error> {
        Ok(self.ask(1, 0).await?.0)
    }

    /// The highest value handed out or observed so far: every revision any
    /// response has carried is at most this (a read's revision).
    pub async fn now(&self) -> Result<i64, Error> {
        Ok(self.ask(0, 0).await?.1)
    }

    /// Tells the oracle a group applied `rev` (above its hint): every later
    /// timestamp is greater.
    pub async fn observe(&self, rev: i64) -> Result<(), Error> {
        if rev <= self.issued() {
            return Ok(());
        }
        self.ask(0, rev).await.map(|_| ())
    }

    /// Whether `rev` is a revision the federation has handed out (asks the
    /// oracle only when the cached value is below it).
    pub async fn handed_out(&self, rev: i64) -> Result<bool, Error> {
        Ok(rev <= self.issued() || rev <= self.now().await?)
    }

    /// The highest value this client has seen (no call).
    pub fn issued(&self) -> i64 {
        self.issued.load(Ordering::Acquire)
    }
}

async fn run(endpoints: Vec<String>, dialer: crate::tls::Dialer, mut rx: mpsc::UnboundedReceiver<Ask>, issued: Arc<AtomicI64>) {
    let channels: Vec<Channel> = endpoints
        .iter()
        .filter_map(|u| {
            tonic::transport::Endpoint::from_shared(u.clone())
                .ok()
                .map(|e| dialer.lazy(e.connect_timeout(Duration::from_millis(500))))
        })
        .collect();
    // The member that answered last (the leader, most likely).
    let current = AtomicUsize::new(0);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let count: u32 = batch.iter().map(|a| a.count).sum();
        let observe = batch.iter().map(|a| a.observe).max().unwrap_or(0);
        let answer = tokio::time::timeout(CALL_TIMEOUT, call(&channels, &current, count, observe)).await;
        let answer = answer.unwrap_or(Err(Error::TimeoutDueToConnectionLost));
        if let Ok((_, i)) = &answer {
            issued.fetch_max(*i, Ordering::AcqRel);
        }
        let mut next = answer.as_ref().map_or(0, |(first, _)| *first);
        for a in batch {
            let slice = answer.clone().map(|(_, i)| {
                let start = if a.count > 0 { next } else { 0 };
                next += a.count as i64;
                (start, i)
            });
            let _ = a.reply.send(slice);
        }
    }
}

/// One call, trying the members in turn from the last that answered until
/// one that leads answers.
async fn call(channels: &[Channel], current: &AtomicUsize, count: u32, observe: i64) -> Result<(i64, i64), Error> {
    if channels.is_empty() {
        return Err(Error::Internal("no revision oracle endpoint configured".into()));
    }
    let mut backoff = Duration::from_millis(10);
    loop {
        for k in 0..channels.len() {
            let i = (current.load(Ordering::Relaxed) + k) % channels.len();
            let mut rpc = Rpc::new(channels[i].clone());
            match rpc.timestamps(TimestampRequest { count, observe }).await {
                Ok(r) => {
                    current.store(i, Ordering::Relaxed);
                    let r = r.into_inner();
                    return Ok((r.first, r.issued));
                }
                Err(s) => match Error::from_status(&s) {
                    // Another member leads, or this one is unreachable: try the next.
                    Some(Error::Refused(Refusal::NotLeader { .. })) | Some(Error::NoLeader) | None => {}
                    Some(e) => return Err(e),
                },
            }
        }
        // No member leads right now (an election): wait a little, the
        // caller's timeout bounds it.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}
