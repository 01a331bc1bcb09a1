//! The client of the revision oracle (`tessera.shard.Oracle`, served by the
//! leader of placement's store group): one timeline of revisions for a
//! whole federation. Shard-nodes take write revisions from it (each write
//! its own); reads and watches through any router or node take their
//! revision from it.
//!
//! Calls are batched: one RPC in flight per client; every request that
//! arrives meanwhile joins the next one (fresh timestamps are handed out
//! as consecutive slices of one reservation, observations merged into
//! their maximum). The highest value seen is cached, so "has this revision
//! been handed out?" is usually answered without a call.
//!
//! A node's writes go into their groups' logs in the order of their hints:
//! a write's hint is a `Stamp`, outstanding until the write is in its
//! group's mailbox (or given up), and a write waits for every lower stamp
//! of this client to be settled first (`settled`). A group applies a write
//! only above its revision and refuses one whose hint it passed (which is
//! proposed again), so out-of-order proposals cost a retry each: at 100
//! clients on one group, without the order, more writes were retried than
//! applied.

use crate::errors::{Error, Refusal};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::tessera::shard::oracle_client::OracleClient as Rpc;
use tessera_proto::tessera::shard::TimestampRequest;
use tokio::sync::{mpsc, oneshot, Notify};
use tonic::transport::Channel;

/// How long one batch may take before its callers fail (the oracle is
/// unreachable: writes and linearizable reads wait for it, as for a leader).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Hints handed out and not yet settled (their writes not yet proposed).
#[derive(Default)]
struct Outstanding {
    hints: parking_lot::Mutex<BTreeSet<i64>>,
    settled: Notify,
}

impl Outstanding {
    fn settle(&self, hint: i64) {
        self.hints.lock().remove(&hint);
        self.settled.notify_waiters();
    }

    async fn settled_up_to(&self, hint: i64) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.hints.lock().first().is_none_or(|first| *first > hint) {
                return;
            }
            notified.await;
        }
    }
}

/// A fresh timestamp handed to one write: outstanding until dropped, which
/// its proposer does once the write is in its group's mailbox.
pub struct Stamp {
    pub hint: i64,
    outstanding: Arc<Outstanding>,
}

impl Drop for Stamp {
    fn drop(&mut self) {
        self.outstanding.settle(self.hint);
    }
}

impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stamp({})", self.hint)
    }
}

/// What a batch answers one ask: its first timestamp (with the stamps of
/// its count) and the oracle's issued value.
struct Answer {
    stamps: Vec<Stamp>,
    issued: i64,
}

struct Ask {
    count: u32,
    observe: i64,
    reply: oneshot::Sender<Result<Answer, Error>>,
}

pub struct OracleClient {
    asks: mpsc::UnboundedSender<Ask>,
    issued: Arc<AtomicI64>,
    outstanding: Arc<Outstanding>,
}

impl OracleClient {
    /// A client of the oracle served at `endpoints` (the members of its group).
    pub fn new(endpoints: Vec<String>, dialer: crate::tls::Dialer) -> Arc<Self> {
        let (asks, rx) = mpsc::unbounded_channel();
        let issued = Arc::new(AtomicI64::new(0));
        let outstanding = Arc::new(Outstanding::default());
        tokio::spawn(run(endpoints, dialer, rx, issued.clone(), outstanding.clone()));
        Arc::new(OracleClient { asks, issued, outstanding })
    }

    async fn ask(&self, count: u32, observe: i64) -> Result<Answer, Error> {
        let (reply, rx) = oneshot::channel();
        self.asks.send(Ask { count, observe, reply }).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// A fresh timestamp: greater than every value handed out or observed
    /// before this call (a write's revision hint).
    pub async fn next(&self) -> Result<i64, Error> {
        Ok(self.stamp().await?.hint)
    }

    /// A fresh timestamp for a write, outstanding (see `settled`) until the
    /// returned stamp is dropped.
    pub async fn stamp(&self) -> Result<Stamp, Error> {
        let mut answer = self.ask(1, 0).await?;
        answer.stamps.pop().ok_or_else(|| Error::Internal("the oracle answered no timestamp".into()))
    }

    /// Waits until every stamp up to `hint` this client handed out has been
    /// dropped. A stamp's holder must not wait for anything else between
    /// receiving it and dropping it, or the holders of higher ones wait on it.
    pub async fn settled(&self, hint: i64) {
        self.outstanding.settled_up_to(hint).await
    }

    /// The highest value handed out or observed so far: every revision any
    /// response has carried is at most this (a read's revision).
    pub async fn now(&self) -> Result<i64, Error> {
        Ok(self.ask(0, 0).await?.issued)
    }

    /// Tells the oracle of a revision it may not have handed out (a guard:
    /// every later timestamp is greater).
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

async fn run(
    endpoints: Vec<String>,
    dialer: crate::tls::Dialer,
    mut rx: mpsc::UnboundedReceiver<Ask>,
    issued: Arc<AtomicI64>,
    outstanding: Arc<Outstanding>,
) {
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
        if let Ok((first, _)) = &answer {
            // Outstanding before any holder can see one: a holder of a
            // higher stamp then waits for every lower one of the batch. A
            // stamp whose asker left is dropped with its unsent reply.
            outstanding.hints.lock().extend(*first..*first + count as i64);
        }
        for a in batch {
            let slice = answer.clone().map(|(_, issued)| {
                let stamps = (next..next + a.count as i64).map(|hint| Stamp { hint, outstanding: outstanding.clone() }).collect();
                next += a.count as i64;
                Answer { stamps, issued }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_waits_for_every_lower_stamp_and_no_higher_one() {
        let outstanding = Arc::new(Outstanding::default());
        outstanding.hints.lock().extend(5..8);
        let stamp = |hint| Stamp { hint, outstanding: outstanding.clone() };
        let (five, six, seven) = (stamp(5), stamp(6), stamp(7));
        let waiting = tokio::spawn({
            let outstanding = outstanding.clone();
            async move { outstanding.settled_up_to(6).await }
        });
        drop(seven);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "5 and 6 are out");
        drop(six);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "5 is out");
        drop(five);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("settled").unwrap();
        assert!(outstanding.hints.lock().is_empty());
        outstanding.settled_up_to(100).await;
    }
}
