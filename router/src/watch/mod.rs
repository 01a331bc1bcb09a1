//! etcd's Watch service over the groups. Each watcher opens one upstream
//! watch per overlapping group, from the same start revision, and merges:
//! events are buffered per group and released, in revision order, up to
//! the minimum over groups of what each has confirmed (its watermark: the
//! last event or progress revision it sent). A group that holds the others
//! back is bumped (a no-data raft entry raising its revision) and asked for
//! progress, so an idle group never stalls the stream. Progress answers
//! carry that minimum. Upstreams reconnect to another replica from their
//! watermark + 1, so a node failure is invisible to the client.

mod upstream;

use crate::backends::Backends;
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::watch_server::Watch;
use tessera_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use tessera_proto::mvccpb::Event;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use upstream::{upstream, Up};

#[derive(Clone)]
pub struct WatchService {
    pub backends: Arc<Backends>,
    pub progress_interval: Duration,
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;
type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// Events per response when a backlog is released (whole revisions only).
const MAX_EVENTS_PER_RESPONSE: usize = 1000;
/// The least time between two bumps of one group by one watcher. A held-back
/// event gets its laggards bumped at once, then again every gap while it
/// waits; under a write load the groups' own writes move their watermarks
/// and no bumps are needed, so this caps what an idle group is asked for.
const BUMP_GAP: Duration = Duration::from_millis(5);

/// How long events may be held back before the watcher says so in the log.
const STALL_WARNING: Duration = Duration::from_secs(5);

/// Bumps a watcher started: group → (when, the task bumping and asking for progress).
type Bumping = BTreeMap<u64, (tokio::time::Instant, tokio::task::JoinHandle<()>)>;

/// Raises the groups that hold back pending events (their watermark is
/// below the newest pending revision), then asks them for progress.
fn bump_laggards(
    b: &Arc<Backends>,
    pending: &[(i64, u64, Event)],
    watermark: &BTreeMap<u64, Option<i64>>,
    ups: &Upstreams,
    bumping: &mut Bumping,
) {
    let Some(top) = pending.iter().map(|p| p.0).max() else { return };
    for (g, w) in watermark {
        let busy = bumping.get(g).is_some_and(|(at, t)| !t.is_finished() || at.elapsed() < BUMP_GAP);
        if w.is_some_and(|w| w >= top) || busy {
            continue;
        }
        let (b2, tx, g2) = (b.clone(), ups.ctl(*g), *g);
        let task = tokio::spawn(async move {
            if let (Ok(_), Some(tx)) = (b2.bump(g2, top).await, tx) {
                let _ = tx.send(()).await;
            }
        });
        bumping.insert(*g, (tokio::time::Instant::now(), task));
    }
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision: rev, ..Default::default() })
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(client_stream(self.backends.clone(), req.into_inner(), tx, self.progress_interval));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

enum Ctl {
    /// Report the revision up to which everything has been sent.
    Progress(oneshot::Sender<i64>),
}

struct Handle {
    ctl: mpsc::Sender<Ctl>,
    task: tokio::task::JoinHandle<()>,
}

async fn client_stream(b: Arc<Backends>, mut input: Streaming<WatchRequest>, out: Out, interval: Duration) {
    let mut watchers: HashMap<i64, Handle> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<i64>();
    let mut next_id = 0i64;
    // As in etcd, a client that half-closes its side keeps receiving until it leaves.
    let mut input_open = true;
    loop {
        tokio::select! {
            _ = out.closed() => break,
            msg = input.message(), if input_open => {
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => {
                        input_open = false;
                        continue;
                    }
                    Err(_) => break,
                };
                match msg.request_union {
                    Some(RequestUnion::CreateRequest(c)) => {
                        let id = if c.watch_id > 0 {
                            if watchers.contains_key(&c.watch_id) {
                                let _ = out.send(Err(Status::invalid_argument("etcdserver: duplicate watch ID"))).await;
                                continue;
                            }
                            c.watch_id
                        } else {
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        let (ctl_tx, ctl_rx) = mpsc::channel(4);
                        let (b, out, done) = (b.clone(), out.clone(), done_tx.clone());
                        let task = tokio::spawn(async move {
                            watcher(b, id, c, out, ctl_rx, interval).await;
                            let _ = done.send(id);
                        });
                        watchers.insert(id, Handle { ctl: ctl_tx, task });
                    }
                    Some(RequestUnion::CancelRequest(c)) => {
                        if let Some(w) = watchers.remove(&c.watch_id) {
                            w.task.abort();
                            let resp = WatchResponse { header: header(b.max_revision()), watch_id: c.watch_id, canceled: true, ..Default::default() };
                            if out.send(Ok(resp)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        // Every watcher reports what it has sent; the
                        // minimum holds for the whole stream.
                        let mut waits = vec![];
                        for w in watchers.values() {
                            let (tx, rx) = oneshot::channel();
                            if w.ctl.send(Ctl::Progress(tx)).await.is_ok() {
                                waits.push(rx);
                            }
                        }
                        let revs = futures::future::join_all(waits).await;
                        let rev = revs.into_iter().filter_map(Result::ok).min().unwrap_or_else(|| b.max_revision());
                        let resp = WatchResponse { header: header(rev), watch_id: -1, ..Default::default() };
                        if out.send(Ok(resp)).await.is_err() {
                            break;
                        }
                    }
                    None => {}
                }
            }
            Some(id) = done_rx.recv() => {
                watchers.remove(&id);
            }
        }
    }
    for w in watchers.into_values() {
        w.task.abort();
    }
}

/// A watcher's upstreams, one per group it merges; all end with it.
struct Upstreams {
    b: Arc<Backends>,
    create: WatchCreateRequest,
    tx: mpsc::Sender<Up>,
    /// group → (progress requests to its upstream, its task).
    running: BTreeMap<u64, (mpsc::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl Upstreams {
    /// Starts `group`'s side from revision `from` (0: from now).
    fn spawn(&mut self, group: u64, from: i64) {
        let (tx, rx) = mpsc::channel(4);
        let c = WatchCreateRequest { start_revision: from, ..self.create.clone() };
        let task = tokio::spawn(upstream(self.b.clone(), group, c, self.tx.clone(), rx));
        self.running.insert(group, (tx, task));
    }

    fn stop(&mut self, group: u64) {
        if let Some((_, task)) = self.running.remove(&group) {
            task.abort();
        }
    }

    fn ctl(&self, group: u64) -> Option<mpsc::Sender<()>> {
        self.running.get(&group).map(|(tx, _)| tx.clone())
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

async fn watcher(
    b: Arc<Backends>,
    id: i64,
    create: WatchCreateRequest,
    out: Out,
    mut ctl: mpsc::Receiver<Ctl>,
    interval: Duration,
) {
    let fail = |reason: String| WatchResponse {
        header: header(b.max_revision()),
        watch_id: id,
        created: true,
        canceled: true,
        cancel_reason: reason,
        ..Default::default()
    };
    let mut groups = match b.routing() {
        Ok(r) => r.groups_for_range(&create.key, &create.range_end),
        Err(e) => {
            let _ = out.send(Ok(fail(e.message().to_string()))).await;
            return;
        }
    };
    crate::metrics::WATCH_GROUPS.observe(groups.len() as f64);
    // One start revision for all groups; each is first raised to it, so no
    // later write of a lagging group can land below it (and go unseen).
    let start = if create.start_revision > 0 {
        create.start_revision
    } else if groups.len() > 1 {
        match b.current_revision(&groups).await {
            Ok(r) => r + 1,
            Err(e) => {
                let _ = out.send(Ok(fail(e.message().to_string()))).await;
                return;
            }
        }
    } else {
        0
    };
    if start > 0 {
        let bumps = futures::future::join_all(groups.iter().map(|g| b.bump(*g, start - 1))).await;
        if let Some(Err(e)) = bumps.into_iter().find(Result::is_err) {
            let _ = out.send(Ok(fail(e.message().to_string()))).await;
            return;
        }
    }

    let (up_tx, mut up_rx) = mpsc::channel::<Up>(256);
    let mut ups = Upstreams { b: b.clone(), create: create.clone(), tx: up_tx, running: BTreeMap::new() };
    for g in &groups {
        ups.spawn(*g, start);
    }
    let mut watermark: BTreeMap<u64, Option<i64>> = groups.iter().map(|g| (*g, (start > 0).then_some(start - 1))).collect();
    let mut pending: Vec<(i64, u64, Event)> = vec![];
    let mut sent_created = false;
    if start > 0 {
        let resp = WatchResponse { header: header(start - 1), watch_id: id, created: true, ..Default::default() };
        if out.send(Ok(resp)).await.is_err() {
            return;
        }
        sent_created = true;
    }
    let mut progress_waiters: Vec<(oneshot::Sender<i64>, Vec<u64>)> = vec![];
    let mut bumping: Bumping = BTreeMap::new();
    let mut notify = tokio::time::interval(interval);
    notify.tick().await;
    let mut bump_check = tokio::time::interval(BUMP_GAP);
    let mut released = start - 1;
    // When the oldest held-back event started waiting (a stall is logged).
    let mut held_since: Option<tokio::time::Instant> = None;

    loop {
        tokio::select! {
            up = up_rx.recv() => {
                let Some(up) = up else { return };
                match up {
                    Up::Created { group, rev } => {
                        let w = watermark.entry(group).or_default();
                        if w.is_none() {
                            *w = Some(rev);
                        }
                    }
                    Up::Events { group, events } => {
                        let last = events.last().and_then(|e| e.kv.as_ref()).map_or(0, |kv| kv.mod_revision);
                        for e in events {
                            let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                            pending.push((rev, group, e));
                        }
                        let w = watermark.entry(group).or_default();
                        *w = Some(w.unwrap_or(0).max(last));
                        bump_laggards(&b, &pending, &watermark, &ups, &mut bumping);
                    }
                    Up::Progress { group, rev } => {
                        let w = watermark.entry(group).or_default();
                        *w = Some(w.unwrap_or(0).max(rev));
                        for (_, waiting) in progress_waiters.iter_mut() {
                            waiting.retain(|g| *g != group);
                        }
                    }
                    Up::Compacted { compact_revision } => {
                        let resp = WatchResponse { header: header(b.max_revision()), watch_id: id, canceled: true, compact_revision, ..Default::default() };
                        let _ = out.send(Ok(resp)).await;
                        return;
                    }
                    Up::Failed(reason) => {
                        let _ = out.send(Ok(fail(reason))).await;
                        return;
                    }
                    Up::Rerouted { group, epoch } => {
                        // The group sent everything up to its fence; the
                        // new owners were raised past it by placement, so
                        // from this group's watermark on nothing is missed.
                        let deadline = std::time::Instant::now() + b.call_timeout;
                        let now = match b.wait_for_epoch(epoch, deadline).await.and_then(|_| b.routing()) {
                            Ok(r) => r.groups_for_range(&create.key, &create.range_end),
                            Err(e) => {
                                let _ = out.send(Ok(fail(e.message().to_string()))).await;
                                return;
                            }
                        };
                        let from = watermark.get(&group).copied().flatten().unwrap_or_else(|| b.max_revision());
                        tracing::debug!(id, group, epoch, from, ?now, "watch routed again after a map change");
                        ups.running.remove(&group);
                        for g in groups.iter().filter(|g| !now.contains(g)) {
                            ups.stop(*g);
                            watermark.remove(g);
                        }
                        for g in &now {
                            if !ups.running.contains_key(g) {
                                let w = *watermark.entry(*g).or_insert(Some(from));
                                ups.spawn(*g, w.unwrap_or(from) + 1);
                            }
                        }
                        for (_, waiting) in progress_waiters.iter_mut() {
                            waiting.retain(|g| now.contains(g));
                        }
                        groups = now;
                    }
                }
            }
            Some(c) = ctl.recv() => match c {
                Ctl::Progress(reply) => {
                    // Raise every group to the newest revision seen, then
                    // ask each for progress: the answer is then current.
                    let target = b.max_revision();
                    for g in &groups {
                        let (b2, tx) = (b.clone(), ups.ctl(*g));
                        let g = *g;
                        let multi = groups.len() > 1;
                        tokio::spawn(async move {
                            if multi {
                                let _ = b2.bump(g, target).await;
                            }
                            if let Some(tx) = tx {
                                let _ = tx.send(()).await;
                            }
                        });
                    }
                    progress_waiters.push((reply, groups.clone()));
                }
            },
            _ = notify.tick(), if create.progress_notify => {
                for (tx, _) in ups.running.values() {
                    let _ = tx.try_send(());
                }
                let (tx, rx) = oneshot::channel();
                progress_waiters.push((tx, groups.clone()));
                let out = out.clone();
                tokio::spawn(async move {
                    if let Ok(rev) = rx.await {
                        let _ = out.send(Ok(WatchResponse { header: header(rev), watch_id: id, ..Default::default() })).await;
                    }
                });
            }
            _ = bump_check.tick(), if !pending.is_empty() => {
                bump_laggards(&b, &pending, &watermark, &ups, &mut bumping);
                let since = *held_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > STALL_WARNING {
                    tracing::warn!(id, pending = pending.len(), oldest = pending.iter().map(|p| p.0).min(), released, ?watermark,
                        running = ?ups.running.keys().collect::<Vec<_>>(), "merged watch holding events back");
                    held_since = Some(tokio::time::Instant::now());
                }
            }
        }

        // Release everything every group has confirmed.
        let Some(point) = watermark.values().copied().collect::<Option<Vec<i64>>>().and_then(|v| v.into_iter().min()) else {
            continue;
        };
        if !sent_created {
            let resp = WatchResponse { header: header(point), watch_id: id, created: true, ..Default::default() };
            if out.send(Ok(resp)).await.is_err() {
                return;
            }
            sent_created = true;
        }
        if pending.iter().any(|p| p.0 <= point) {
            pending.sort_by_key(|p| (p.0, p.1));
            let n = pending.partition_point(|p| p.0 <= point);
            let ready: Vec<(i64, u64, Event)> = pending.drain(..n).collect();
            let mut batch: Vec<Event> = vec![];
            let mut i = 0;
            while i < ready.len() {
                let rev = ready[i].0;
                while i < ready.len() && ready[i].0 == rev {
                    batch.push(ready[i].2.clone());
                    i += 1;
                }
                if batch.len() >= MAX_EVENTS_PER_RESPONSE || i == ready.len() {
                    let resp = WatchResponse {
                        header: header(point),
                        watch_id: id,
                        events: std::mem::take(&mut batch),
                        ..Default::default()
                    };
                    if out.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
            crate::metrics::WATCH_EVENTS.inc_by(ready.len() as u64);
        }
        if point > released || pending.is_empty() {
            held_since = None; // moving again
        }
        released = released.max(point);
        let mut still = vec![];
        for (reply, waiting) in progress_waiters.drain(..) {
            if waiting.is_empty() {
                let _ = reply.send(released);
            } else {
                still.push((reply, waiting));
            }
        }
        progress_waiters = still;
    }
}
