//! One client watcher: it picks one start revision, starts one upstream
//! per overlapping group and feeds what they report into its `Merge`,
//! sending on what that releases. Everything that decides *what* is sent
//! lives in `merge`; this loop only moves messages, spawns the bumps and
//! progress requests the merge asks for, and routes again after a fence.

use super::merge::{Merge, Released};
use super::upstream::{upstream, Up};
use super::{header, Out};
use crate::backends::Backends;
use crate::deadline::Deadline;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::{WatchCreateRequest, WatchResponse};
use tokio::sync::{mpsc, oneshot, watch};

/// How long events may be held back before the watcher says so in the log.
const STALL_WARNING: Duration = Duration::from_secs(5);

/// What the client stream asks of a watcher.
pub enum Ctl {
    /// Say what everything has been sent up to, once held at the current
    /// cap (nothing above it goes out after the answer).
    Released { reply: oneshot::Sender<i64> },
    /// Say when everything up to `target` has been sent (the stream holds
    /// every watcher at the target meanwhile, so it can answer for all).
    Progress { target: i64, reply: oneshot::Sender<i64> },
}

/// What a watcher shares with its client stream.
pub struct Shared {
    /// Nothing above it may be sent while set (a progress answer is due).
    pub cap: watch::Receiver<Option<i64>>,
    /// Dropped once the creation was answered (or the watch failed): the
    /// stream takes its next request only then, so creations are answered
    /// in the order they were asked, as clients match them.
    pub created: oneshot::Sender<()>,
}

/// Who waits for a progress answer.
enum Waiter {
    /// The client asked (for the whole stream: its answer goes to the stream).
    Client(oneshot::Sender<i64>),
    /// The periodic notification (`progress_notify`): answered on this watch.
    Notify,
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

/// A watch that ended with why: `created` if this is its creation's answer
/// (it could not start), else the creation went out before.
fn failed(b: &Backends, id: i64, reason: String, created: bool) -> WatchResponse {
    WatchResponse {
        header: header(b.max_revision()),
        watch_id: id,
        created,
        canceled: true,
        cancel_reason: reason,
        ..Default::default()
    }
}

/// The one start revision of all groups: the client's, or just after the
/// federation's current revision. Answers (start, the federation's current
/// revision, which the creation answers).
async fn start_revision(b: &Backends, create: &WatchCreateRequest) -> Result<(i64, i64), String> {
    // Not a client's call: the router's own budget.
    let now = b.now(Deadline::default_from_now()).await.map_err(|e| e.message().to_string())?;
    let start = if create.start_revision > 0 { create.start_revision } else { now + 1 };
    Ok((start, now))
}

/// Raises each group to the start (as far as the federation has gone), so
/// no later write of a lagging group can land below it and go unseen: done
/// before the upstreams start, after the creation was answered — a bump is
/// a raft entry, and creations on a stream are answered one after another
/// (kube-apiserver opens many watches on one stream at once).
async fn raise_groups(b: &Backends, groups: &[u64], start: i64, now: i64) -> Result<(), String> {
    let deadline = Deadline::default_from_now();
    let raise_to = (start - 1).min(now);
    let bumps = futures::future::join_all(groups.iter().map(|g| b.bump(*g, raise_to, deadline))).await;
    match bumps.into_iter().find(Result::is_err) {
        Some(Err(e)) => Err(e.message().to_string()),
        _ => Ok(()),
    }
}

pub async fn watcher(
    b: Arc<Backends>,
    id: i64,
    create: WatchCreateRequest,
    out: Out,
    mut ctl: mpsc::Receiver<Ctl>,
    shared: Shared,
    interval: Duration,
) {
    let Shared { mut cap, created: creation } = shared;
    let groups = match b.routing() {
        Ok(r) => r.groups_for_range(&create.key, &create.range_end),
        Err(e) => {
            let _ = out.send(Ok(failed(&b, id, e.message().to_string(), true))).await;
            return;
        }
    };
    crate::metrics::WATCH_GROUPS.observe(groups.len() as f64);
    let (start, now) = match start_revision(&b, &create).await {
        Ok(started) => started,
        Err(reason) => {
            let _ = out.send(Ok(failed(&b, id, reason, true))).await;
            return;
        }
    };

    let mut merge: Merge<Waiter> = Merge::new(id, &groups, start);
    // As etcd: the creation answers the current revision.
    merge.answer_creation_at(now);
    merge.set_cap(*cap.borrow_and_update());
    if !send(&out, id, merge.release()).await {
        return;
    }
    // Held while the creation is (a cap below it); dropping it tells the stream.
    let mut creation = (!merge.is_created()).then_some(creation);
    if let Err(reason) = raise_groups(&b, &groups, start, now).await {
        let _ = out.send(Ok(failed(&b, id, reason, !merge.is_created()))).await;
        return;
    }
    let (up_tx, mut up_rx) = mpsc::channel::<Up>(256);
    let mut ups = Upstreams { b: b.clone(), create: create.clone(), tx: up_tx, running: BTreeMap::new() };
    for g in &groups {
        ups.spawn(*g, start);
    }
    // Bumps this watcher started report here when done.
    let (bumped_tx, mut bumped_rx) = mpsc::unbounded_channel::<u64>();
    let mut notify = tokio::time::interval(interval);
    notify.tick().await;
    let mut bump_check = tokio::time::interval(super::merge::BUMP_GAP);
    // When events came in, by their last revision (for the hold-time metric).
    let mut arrivals: BTreeMap<i64, Instant> = BTreeMap::new();

    loop {
        tokio::select! {
            up = up_rx.recv() => {
                let Some(up) = up else { return };
                match up {
                    Up::Created { group, rev } => merge.created(group, rev),
                    Up::Events { group, events } => {
                        if let Some(last) = events.last().and_then(|e| e.kv.as_ref()) {
                            arrivals.entry(last.mod_revision).or_insert_with(Instant::now);
                        }
                        merge.events(group, events);
                        bump_laggards(&b, &mut merge, &ups, &bumped_tx);
                    }
                    Up::Progress { group, rev } => merge.progress(group, rev),
                    Up::Compacted { compact_revision } => {
                        let resp = WatchResponse {
                            header: header(b.max_revision()),
                            watch_id: id,
                            canceled: true,
                            compact_revision,
                            ..Default::default()
                        };
                        let _ = out.send(Ok(resp)).await;
                        return;
                    }
                    Up::Failed(reason) => {
                        let _ = out.send(Ok(failed(&b, id, reason, !merge.is_created()))).await;
                        return;
                    }
                    Up::Rerouted { group, epoch } => {
                        let now = match b.wait_for_epoch(epoch, Deadline::default_from_now()).await.and_then(|_| b.routing()) {
                            Ok(r) => r.groups_for_range(&create.key, &create.range_end),
                            Err(_) => {
                                let reason = format!("tessera: shard map epoch {epoch} not received from placement");
                                let _ = out.send(Ok(failed(&b, id, reason, !merge.is_created()))).await;
                                return;
                            }
                        };
                        let change = merge.rerouted(group, &now, b.max_revision());
                        tracing::debug!(id, group, epoch, ?change, "watch routed again after a map change");
                        for g in change.stop {
                            ups.stop(g);
                        }
                        for (g, from) in change.start {
                            ups.spawn(g, from);
                        }
                    }
                }
            }
            Ok(()) = cap.changed() => merge.set_cap(*cap.borrow_and_update()),
            Some(c) = ctl.recv() => match c {
                Ctl::Released { reply } => {
                    // The cap is set before this is asked: take it first, so
                    // nothing above it goes out after the answer.
                    merge.set_cap(*cap.borrow_and_update());
                    let _ = reply.send(merge.released());
                }
                Ctl::Progress { target, reply } => {
                    // Raise every group to the target, then ask each for
                    // progress: answered once everything up to it is sent.
                    for ask in merge.request_progress(Waiter::Client(reply), Some(target)) {
                        let (b, tx) = (b.clone(), ups.ctl(ask.group));
                        tokio::spawn(async move {
                            if let Some(rev) = ask.bump_to {
                                let _ = b.bump(ask.group, rev, Deadline::default_from_now()).await;
                            }
                            if let Some(tx) = tx {
                                let _ = tx.send(()).await;
                            }
                        });
                    }
                }
            },
            _ = notify.tick(), if create.progress_notify => {
                for ask in merge.request_progress(Waiter::Notify, None) {
                    if let Some(tx) = ups.ctl(ask.group) {
                        let _ = tx.try_send(());
                    }
                }
            }
            Some(group) = bumped_rx.recv() => merge.bumped(group),
            _ = bump_check.tick(), if merge.holds_events() => {
                bump_laggards(&b, &mut merge, &ups, &bumped_tx);
                if let Some(s) = merge.stalled(Instant::now(), STALL_WARNING) {
                    let running: Vec<u64> = ups.running.keys().copied().collect();
                    tracing::warn!(id, pending = s.pending, oldest = s.oldest, released = s.released, watermarks = ?s.watermarks,
                        progress = ?s.progress, ?running, "merged watch holding events back");
                }
            }
        }
        if !send(&out, id, merge.release()).await {
            return;
        }
        if merge.is_created() {
            creation.take();
        }
        while let Some(entry) = arrivals.first_entry().filter(|e| *e.key() <= merge.released()) {
            crate::metrics::WATCH_HOLD.observe(entry.remove().elapsed().as_secs_f64());
        }
    }
}

/// Raises the groups that hold back pending events, then asks them for progress.
fn bump_laggards(b: &Arc<Backends>, merge: &mut Merge<Waiter>, ups: &Upstreams, bumped: &mpsc::UnboundedSender<u64>) {
    for (group, rev) in merge.laggards(Instant::now()) {
        let (b, tx, bumped) = (b.clone(), ups.ctl(group), bumped.clone());
        tokio::spawn(async move {
            if let (Ok(_), Some(tx)) = (b.bump(group, rev, Deadline::default_from_now()).await, tx) {
                let _ = tx.send(()).await;
            }
            let _ = bumped.send(group);
        });
    }
}

/// Sends what the merge released and answers its progress requests; false
/// once the client is gone.
async fn send(out: &Out, id: i64, released: Released<Waiter>) -> bool {
    let events: usize = released.responses.iter().map(|r| r.events.len()).sum();
    for resp in released.responses {
        if out.send(Ok(resp)).await.is_err() {
            return false;
        }
    }
    crate::metrics::WATCH_EVENTS.inc_by(events as u64);
    for (waiter, rev) in released.answers {
        match waiter {
            Waiter::Client(reply) => {
                let _ = reply.send(rev);
            }
            Waiter::Notify => {
                let resp = WatchResponse { header: header(rev), watch_id: id, ..Default::default() };
                if out.send(Ok(resp)).await.is_err() {
                    return false;
                }
            }
        }
    }
    true
}
