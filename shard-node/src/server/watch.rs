//! etcd's Watch service: one task per client stream, multiplexing its
//! watchers. Each watcher has a next revision; the task brings every
//! watcher up to the group's revision from the hub's ring or, once behind
//! it, from history, whole revisions at a time (a txn's events are never
//! split unless the client asked for fragments). Sending waits on the
//! client, so a slow client slows only its own stream.

use crate::group::Group;
use crate::mvcc::{key_in_range, Rev};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::watch_create_request::FilterType;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::watch_server::Watch;
use tessera_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use tessera_proto::mvccpb::{event::EventType, Event};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub struct WatchService {
    pub group: Arc<Group>,
    pub progress_interval: Duration,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let caller = super::auth::Caller::of(&self.group, &req)?;
        let (tx, rx) = mpsc::channel(64);
        let stream = WatchStream {
            group: self.group.clone(),
            out: tx,
            watchers: vec![],
            next_id: 0,
            progress_requested: false,
            epoch: crate::fence::routed_epoch(),
            caller,
        };
        tokio::spawn(stream.run(req.into_inner(), self.progress_interval));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Revisions one watcher takes from history per round, so one far-behind
/// watcher cannot starve the others of the stream.
const HISTORY_REVS_PER_ROUND: usize = 1000;

struct Watcher {
    id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether anything was sent since the last progress notification.
    sent_since_progress: bool,
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        let put = e.r#type == EventType::Put as i32;
        if (put && self.no_put) || (!put && self.no_delete) {
            return false;
        }
        e.kv.as_ref().is_some_and(|kv| key_in_range(&kv.key, &self.key, &self.range_end))
    }
}

struct WatchStream {
    group: Arc<Group>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: Vec<Watcher>,
    next_id: i64,
    progress_requested: bool,
    /// The map epoch the stream was routed by (0: not routed). A fence newer
    /// than it ends the stream's watchers under the fenced prefix once they
    /// have every event up to the fence (`fence`).
    epoch: u64,
    /// Who opened the stream: each create is checked against the auth
    /// store as it is then.
    caller: super::auth::Caller,
}

/// The client went away.
struct Gone;

impl WatchStream {
    async fn run(mut self, mut input: Streaming<WatchRequest>, progress_interval: Duration) {
        let mut rev_rx = self.group.sm.hub.subscribe();
        let mut progress = tokio::time::interval(progress_interval);
        progress.tick().await;
        let mut behind = false;
        // As in etcd, a client that half-closes its side (the JSON gateway
        // does once the request body ends) keeps receiving until it leaves.
        let mut input_open = true;
        loop {
            tokio::select! {
                biased;
                req = input.message(), if input_open => match req {
                    Ok(Some(r)) => if self.on_request(r).await.is_err() { break },
                    Ok(None) => input_open = false,
                    Err(_) => break,
                },
                _ = self.out.closed() => break,
                changed = rev_rx.changed(), if !behind => if changed.is_err() { break },
                _ = progress.tick(), if !behind => if self.progress_notify().await.is_err() { break },
                _ = std::future::ready(()), if behind => {}
            }
            let current = *rev_rx.borrow_and_update();
            match self.catch_up(current).await {
                Ok(b) => behind = b,
                Err(Gone) => break,
            }
            if self.progress_requested && !behind && self.send_progress_all(current).await.is_err() {
                break;
            }
        }
        self.group.sm.metrics.watchers.sub(self.watchers.len() as i64);
    }

    fn header(&self, rev: i64) -> Option<tessera_proto::etcdserverpb::ResponseHeader> {
        Some(self.group.header(rev))
    }

    async fn send(&self, r: WatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(r)).await.map_err(|_| Gone)
    }

    async fn on_request(&mut self, r: WatchRequest) -> Result<(), Gone> {
        let current = self.group.sm.current_revision();
        match r.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c, current).await,
            Some(RequestUnion::CancelRequest(c)) => {
                tracing::debug!(id = c.watch_id, "watch cancel");
                let before = self.watchers.len();
                self.watchers.retain(|w| w.id != c.watch_id);
                if self.watchers.len() < before {
                    self.group.sm.metrics.watchers.dec();
                    self.send(WatchResponse {
                        header: self.header(current),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest, current: i64) -> Result<(), Gone> {
        // A prefix in a move's cutover: created once the move is through
        // (its history is whole here then). Any other refusal ends the
        // watch at its first catch-up, after the events it may still get.
        let epoch = self.epoch;
        let _ = self.group.settled(|| self.group.sm.check_fences(epoch, &c.key, &c.range_end)).await;
        let current = current.max(self.group.sm.current_revision());
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.iter().any(|w| w.id == self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if let Err(e) = self.caller.check(&self.group, &c.key, &c.range_end, crate::auth::Access::Read) {
            // etcd answers a watch it does not permit as created and
            // canceled, the reason in grpc-go's words for the status.
            let reason = format!("rpc error: code = {:?} desc = {e}", e.code());
            return self
                .send(WatchResponse {
                    header: self.header(current),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                })
                .await;
        }
        if self.watchers.iter().any(|w| w.id == id) || id < 0 {
            return self
                .send(WatchResponse {
                    header: self.header(current),
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason: "etcdserver: mvcc: duplicate watch ID provided on the WatchStream".into(),
                    ..Default::default()
                })
                .await;
        }
        if c.watch_id == 0 {
            self.next_id += 1;
        }
        tracing::debug!(id, key = ?String::from_utf8_lossy(&c.key), end = ?String::from_utf8_lossy(&c.range_end), start = c.start_revision, current, epoch = self.epoch, "watch created");
        self.send(WatchResponse { header: self.header(current), watch_id: id, created: true, ..Default::default() }).await?;
        self.group.sm.metrics.watchers.inc();
        self.watchers.push(Watcher {
            id,
            key: c.key,
            range_end: c.range_end,
            next_rev: if c.start_revision > 0 { c.start_revision } else { current + 1 },
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            sent_since_progress: false,
        });
        Ok(())
    }

    /// Brings watchers toward `current`; returns whether any is still behind.
    async fn catch_up(&mut self, current: i64) -> Result<bool, Gone> {
        let mut behind = false;
        let mut compacted = vec![];
        let mut fenced = vec![];
        for i in 0..self.watchers.len() {
            let w = &self.watchers[i];
            let ending = self.group.sm.ending_watch(self.epoch, &w.key, &w.range_end);
            let upto_here = catch_up_to(current, ending);
            if w.next_rev > upto_here {
                if let Some((epoch, _)) = ending {
                    fenced.push((w.id, epoch));
                }
                continue;
            }
            let (events, upto) = match self.events_for(w, upto_here) {
                Ok(x) => x,
                Err(crate::error::Error::Compacted) => {
                    compacted.push(w.id);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch history read failed");
                    behind = true;
                    continue;
                }
            };
            let w = &mut self.watchers[i];
            w.next_rev = upto + 1;
            behind |= upto < upto_here;
            if let Some((epoch, _)) = ending.filter(|_| upto >= upto_here) {
                fenced.push((w.id, epoch));
            }
            if events.is_empty() {
                continue;
            }
            w.sent_since_progress = true;
            let (id, fragment) = (w.id, w.fragment);
            self.send_events(id, fragment, events, upto_here).await?;
        }
        for id in compacted {
            // As etcd: the compacted revision, a header without a revision, no reason.
            let compact_revision = self.group.sm.compact_revision();
            self.end(id, WatchResponse { header: self.header(0), compact_revision, ..Default::default() }).await?;
        }
        for (id, current_epoch) in fenced {
            // The router routes the watch again from the last revision it got.
            let reason = crate::error::Refusal::EpochNotMatch { current: current_epoch }.to_string();
            self.end(id, WatchResponse { header: self.header(current), cancel_reason: reason, ..Default::default() }).await?;
        }
        Ok(behind)
    }

    /// Cancels watcher `id` with `resp` (its reason).
    async fn end(&mut self, id: i64, resp: WatchResponse) -> Result<(), Gone> {
        self.watchers.retain(|w| w.id != id);
        self.group.sm.metrics.watchers.dec();
        self.send(WatchResponse { watch_id: id, canceled: true, ..resp }).await
    }

    /// The watcher's events from its next revision: the ring if it still
    /// holds them, else history. Returns the events and the last revision covered.
    fn events_for(&self, w: &Watcher, current: i64) -> crate::error::Result<(Vec<Event>, i64)> {
        let sm = &self.group.sm;
        if w.next_rev < sm.compact_revision() {
            return Err(crate::error::Error::Compacted);
        }
        // Prefixes moving here, or moved to or from here on the other side
        // of this watch's map: their events come from their other owner.
        let hidden = sm.hidden_history(self.epoch);
        let shown = |k: &[u8], sub: i64| !hidden.iter().any(|h| h.hides(k, sub));
        // Events of writes applied here (a move publishes none).
        let wanted = |e: &&Event| w.wants(e) && e.kv.as_ref().is_none_or(|kv| shown(&kv.key, 0));
        let mut events: Vec<Event> = match self.group.sm.hub.recent(w.next_rev, current) {
            Some(batches) => batches.iter().flat_map(|b| b.events.iter().filter(wanted).cloned()).collect(),
            None => {
                let (evs, upto) = sm.history(w.next_rev, current, HISTORY_REVS_PER_ROUND, &|k, sub| {
                    key_in_range(k, &w.key, &w.range_end) && shown(k, sub)
                })?;
                let evs: Vec<Event> = evs.into_iter().filter(|e| w.wants(e)).collect();
                return self.with_prev(w, evs).map(|e| (e, upto));
            }
        };
        events = self.with_prev(w, events)?;
        Ok((events, current))
    }

    fn with_prev(&self, w: &Watcher, mut events: Vec<Event>) -> crate::error::Result<Vec<Event>> {
        if w.prev_kv {
            for e in &mut events {
                if let Some(kv) = &e.kv {
                    e.prev_kv = self.group.sm.prev_of(&kv.key, Rev::new(kv.mod_revision, 0));
                }
            }
        }
        Ok(events)
    }

    async fn send_events(&self, id: i64, fragment: bool, events: Vec<Event>, current: i64) -> Result<(), Gone> {
        tracing::debug!(id, n = events.len(), first = events[0].kv.as_ref().map(|k| k.mod_revision), last = events.last().and_then(|e| e.kv.as_ref()).map(|k| k.mod_revision), types = ?events.iter().map(|e| e.r#type).collect::<Vec<_>>(), "watch events");
        let limit = self.group.settings.max_request_bytes;
        let resp = WatchResponse { header: self.header(current), watch_id: id, events, ..Default::default() };
        if !fragment || resp.encoded_len() <= limit {
            return self.send(resp).await;
        }
        // Fragments: every part but the last has `fragment` set.
        let mut parts: Vec<Vec<Event>> = vec![vec![]];
        let mut size = 0;
        for e in resp.events {
            let n = e.encoded_len() + 8;
            if size + n > limit && !parts.last().is_some_and(|p| p.is_empty()) {
                parts.push(vec![]);
                size = 0;
            }
            size += n;
            parts.last_mut().expect("non-empty").push(e);
        }
        let last = parts.len() - 1;
        for (i, events) in parts.into_iter().enumerate() {
            self.send(WatchResponse {
                header: self.header(current),
                watch_id: id,
                events,
                fragment: i < last,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Answers a WatchProgressRequest once every watcher has been sent all
    /// events up to `current` (etcd 3.5's rule, which Kubernetes relies on).
    async fn send_progress_all(&mut self, current: i64) -> Result<(), Gone> {
        self.progress_requested = false;
        let at = self.watchers.iter().filter_map(|w| self.ending(w)).fold(current, i64::min);
        self.send(WatchResponse { header: self.header(at), watch_id: -1, ..Default::default() }).await
    }

    /// The revision after which watcher `w` gets no more events here (a
    /// fence or an adoption ends it there): no progress may claim more, or
    /// the router would resume it elsewhere past events it never got.
    fn ending(&self, w: &Watcher) -> Option<i64> {
        self.group.sm.ending_watch(self.epoch, &w.key, &w.range_end).map(|(_, rev)| rev)
    }

    /// Periodic progress for watchers that asked for it and had no events.
    async fn progress_notify(&mut self) -> Result<(), Gone> {
        let current = self.group.sm.current_revision();
        let mut due = vec![];
        for i in 0..self.watchers.len() {
            let ending = self.ending(&self.watchers[i]);
            let w = &mut self.watchers[i];
            // One that a fence or an adoption ends gets none: it ends soon.
            if w.progress_notify && w.next_rev > current && !w.sent_since_progress && ending.is_none() {
                due.push(w.id);
            }
            w.sent_since_progress = false;
        }
        for id in due {
            self.send(WatchResponse { header: self.header(current), watch_id: id, ..Default::default() }).await?;
        }
        Ok(())
    }
}

/// Where a watcher is brought this round: the hub's `current` revision,
/// or for one a fence or an adoption ends (`ending`: its epoch and the
/// revision it still gets events up to) that revision. Everything up to it
/// is applied once the fence is seen, and `current` may have been read
/// before the fence and the last writes under it were applied: bounded by
/// that stale `current`, the watcher would be ended without those writes
/// (and its successor, routed by the new map, never sends them).
fn catch_up_to(current: i64, ending: Option<(u64, i64)>) -> i64 {
    ending.map_or(current, |(_, fence_rev)| fence_rev)
}

#[cfg(test)]
mod catch_up_tests {
    use super::catch_up_to;

    #[test]
    fn a_fenced_watcher_is_brought_to_its_fence_whatever_was_read_before() {
        assert_eq!(catch_up_to(3040, None), 3040);
        // Read before two writes and the fence at 3042 were applied.
        assert_eq!(catch_up_to(3040, Some((7, 3042))), 3042);
        assert_eq!(catch_up_to(3050, Some((7, 3042))), 3042);
    }
}
