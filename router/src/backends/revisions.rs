//! The federation's revision timeline as the router uses it: the revision
//! oracle's current value is what a read over several groups, a watch's
//! start and a progress answer are at (every revision any response carried
//! is at most it), and a bump raises one group's revision to it with a
//! no-data raft entry, so nothing later lands at or below it there. Many
//! merged watches wait on the same idle groups, so bumps of a group share
//! one call in flight router-wide, and a bump to a revision a past one
//! passed costs nothing.

use super::{Access, Backends};
use crate::deadline::Deadline;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tessera_proto::etcdserverpb::ResponseHeader;
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_proto::tessera::shard::BumpRequest;
use tessera_rpc::oracle::OracleClient;
use tonic::Status;

pub(super) struct Revisions {
    oracle: Arc<OracleClient>,
    /// The highest revision any answer carried.
    max: AtomicI64,
    bumps: Mutex<HashMap<u64, GroupBumps>>,
}

impl Revisions {
    pub(super) fn new(oracle: Arc<OracleClient>) -> Self {
        Revisions { oracle, max: AtomicI64::new(0), bumps: Mutex::new(HashMap::new()) }
    }
}

/// The outcome of a bump in flight, once it is known; a closed channel
/// means its caller gave up (went away, or its deadline passed).
type BumpOutcome = tokio::sync::watch::Receiver<Option<Result<i64, Status>>>;

/// One group's revision bumps, as this router knows them.
#[derive(Default)]
struct GroupBumps {
    /// The highest revision a bump answered (a group's revision never goes back).
    reached: i64,
    /// The bump in flight: the revision it asks for and its outcome when done.
    inflight: Option<(i64, BumpOutcome)>,
}

impl Backends {
    /// The highest revision this router has seen or the oracle has told it
    /// of (for headers the router writes itself).
    pub(crate) fn max_revision(&self) -> i64 {
        self.revisions.max.load(Ordering::Relaxed).max(self.revisions.oracle.issued())
    }

    /// The federation's current revision: at least every revision any
    /// response (of any router or group) has carried so far.
    pub(crate) async fn now(&self, deadline: Deadline) -> Result<i64, Status> {
        let now = deadline.run(async { self.revisions.oracle.now().await.map_err(Status::from) }).await?;
        self.revisions.max.fetch_max(now, Ordering::Relaxed);
        Ok(now)
    }

    /// A fresh timestamp of the timeline, above every revision handed out so
    /// far (a cross-group txn's id and its commit revision).
    pub(crate) async fn fresh(&self, deadline: Deadline) -> Result<i64, Status> {
        let ts = deadline.run(async { self.revisions.oracle.next().await.map_err(Status::from) }).await?;
        self.revisions.max.fetch_max(ts, Ordering::Relaxed);
        Ok(ts)
    }

    /// Tells the oracle of a revision about to be answered that it did not
    /// hand out itself, so every later timestamp is above it.
    pub(crate) async fn tell(&self, rev: i64, deadline: Deadline) -> Result<(), Status> {
        deadline.run(async { self.revisions.oracle.observe(rev).await.map_err(Status::from) }).await?;
        self.revisions.max.fetch_max(rev, Ordering::Relaxed);
        Ok(())
    }

    /// Takes note of an answer's revision.
    pub(crate) fn observe(&self, header: Option<&ResponseHeader>) {
        if let Some(h) = header {
            self.revisions.max.fetch_max(h.revision, Ordering::Relaxed);
        }
    }

    /// Raises `group`'s revision (watermark) to at least `rev`; answers its
    /// revision after. Concurrent bumps of a group to no more than the one
    /// in flight share it. A caller whose deadline passes stops waiting; if
    /// it was the one making the call, the others make their own.
    pub(crate) async fn bump(&self, group: u64, rev: i64, deadline: Deadline) -> Result<i64, Status> {
        loop {
            let (mut done, lead) = {
                let mut bumps = self.revisions.bumps.lock();
                let g = bumps.entry(group).or_default();
                if g.reached >= rev {
                    return Ok(g.reached);
                }
                match &g.inflight {
                    Some((target, done)) if *target >= rev => (done.clone(), None),
                    _ => {
                        let (tx, rx) = tokio::sync::watch::channel(None);
                        g.inflight = Some((rev, rx.clone()));
                        (rx, Some(tx))
                    }
                }
            };
            let settle = |done: &BumpOutcome, reached: Option<i64>| {
                let mut bumps = self.revisions.bumps.lock();
                let g = bumps.entry(group).or_default();
                g.reached = g.reached.max(reached.unwrap_or(0));
                if g.inflight.as_ref().is_some_and(|(_, d)| d.same_channel(done)) {
                    g.inflight = None;
                }
            };
            if let Some(tx) = lead {
                let r = self.bump_now(group, rev, deadline).await;
                // Failing for want of this caller's time says nothing to
                // callers with time left: they see the channel close instead.
                if r.is_ok() || !deadline.expired() {
                    tx.send_replace(Some(r.clone()));
                }
                settle(&done, r.as_ref().ok().copied());
                return r;
            }
            let outcome = deadline.run(async { Ok(done.wait_for(Option::is_some).await.ok().and_then(|o| o.clone())) }).await?;
            match outcome {
                Some(r) => return r,
                // Its caller gave up mid-bump: bump anew.
                None => settle(&done, None),
            }
        }
    }

    async fn bump_now(&self, group: u64, rev: i64, deadline: Deadline) -> Result<i64, Status> {
        let resp = self
            .call(group, Access::Read, deadline, BumpRequest { revision: rev }, |ch, req| async move {
                ShardClient::new(ch).bump(req).await
            })
            .await?;
        self.observe(resp.header.as_ref());
        Ok(resp.header.map_or(0, |h| h.revision))
    }
}
