//! One recorded gRPC Watch stream carrying many watches, as
//! kube-apiserver multiplexes its reflectors' watches on one stream: create
//! watches, request progress, and hand every response to its watch's
//! owner while recording it in the history.

use super::client::kv_of;
use super::recorder::Recorder;
use crate::history::{Bytes, Event, EventKind, Watch, WatchResponseRecord};
use std::collections::HashMap;
use tessera_proto::etcdserverpb::watch_client::WatchClient;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::{WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse};
use tessera_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// A watch's view of the responses for it (progress answers, watch_id -1,
/// go to every owner).
pub type Responses = mpsc::UnboundedReceiver<WatchResponse>;

/// A create sent and not yet answered: the id etcd will give it, what it asked, and its owner.
type Pending = (i64, Watch, mpsc::UnboundedSender<WatchResponse>);

pub struct Stream {
    requests: mpsc::Sender<WatchRequest>,
    pending: mpsc::UnboundedSender<Pending>,
    /// Creates sent on this stream: etcd numbers watches 0, 1, ... in that order.
    sent: std::sync::atomic::AtomicI64,
    rec: Recorder,
    index: usize,
}

impl Stream {
    /// Opens a Watch stream of `client`, recorded as a new stream of the history.
    pub async fn open(channel: Channel, client: u32, rec: Recorder) -> anyhow::Result<Stream> {
        let (requests, rx) = mpsc::channel::<WatchRequest>(64);
        let mut w = WatchClient::new(channel).max_decoding_message_size(usize::MAX);
        let mut responses = w.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let index = rec.stream(client);
        let (pending, mut pending_rx) = mpsc::unbounded_channel::<Pending>();
        let r = rec.clone();
        tokio::spawn(async move {
            let mut owners: HashMap<i64, mpsc::UnboundedSender<WatchResponse>> = HashMap::new();
            let mut waiting: Vec<Pending> = vec![];
            while let Ok(Some(resp)) = responses.message().await {
                let at = r.now();
                r.response(index, record(at, &resp));
                if resp.created {
                    while let Ok(p) = pending_rx.try_recv() {
                        waiting.push(p);
                    }
                    if let Some((watch, owner)) = created(&r, index, &mut waiting, resp.watch_id) {
                        r.with_stream(index, |s| s.watches.push(watch));
                        owners.insert(resp.watch_id, owner);
                    }
                }
                if resp.watch_id == -1 {
                    owners.retain(|_, o| o.send(resp.clone()).is_ok());
                } else if let Some(o) = owners.get(&resp.watch_id) {
                    let _ = o.send(resp.clone());
                    if resp.canceled {
                        owners.remove(&resp.watch_id);
                    }
                }
            }
        });
        Ok(Stream { requests, pending, sent: Default::default(), rec, index })
    }

    /// Creates a watch; its responses (and the stream's progress answers) arrive on the receiver.
    pub async fn watch(&self, create: WatchCreateRequest) -> anyhow::Result<Responses> {
        let (tx, rx) = mpsc::unbounded_channel();
        let watch = Watch {
            watch_id: -1,
            key: Bytes::from(create.key.clone()),
            range_end: Bytes::from(create.range_end.clone()),
            start_revision: create.start_revision,
            prev_kv: create.prev_kv,
            filters: vec![],
            progress_notify: create.progress_notify,
            created_at: self.rec.now(),
            cancel_sent_at: None,
        };
        let id = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pending.send((id, watch, tx))?;
        self.requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await?;
        Ok(rx)
    }

    /// etcd 3.5's RequestProgress on this stream.
    pub async fn request_progress(&self) -> anyhow::Result<()> {
        let at = self.rec.now();
        self.rec.with_stream(self.index, |s| s.progress_requests.push(at));
        self.requests.send(WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) }).await?;
        Ok(())
    }
}

/// The create a `created` response answers. etcd answers creates in the
/// order they were sent, and clients rely on it (clientv3 gives each
/// created response to its oldest pending create): an answer out of order
/// would swap watches in such a client. It is recorded as a violation, and
/// the response is given to the create it names, so the history stays true
/// to what the server meant and the checkers judge the rest.
fn created(
    r: &Recorder,
    stream: usize,
    waiting: &mut Vec<Pending>,
    id: i64,
) -> Option<(Watch, mpsc::UnboundedSender<WatchResponse>)> {
    if waiting.is_empty() {
        return None;
    }
    let at = waiting.iter().position(|p| p.0 == id).unwrap_or(0);
    if at != 0 {
        let (oldest, this) = (&waiting[0].1, &waiting[at].1);
        r.violation(format!(
            "watch stream #{stream}: created responses out of order: watch {id} ({}) was answered before watch {} ({}), \
             sent before it; an etcd client (clientv3) would take it for the latter",
            this.key, waiting[0].0, oldest.key
        ));
    }
    let (_, mut watch, owner) = waiting.remove(at);
    watch.watch_id = id;
    Some((watch, owner))
}

pub fn event_of(e: &tessera_proto::mvccpb::Event) -> Option<Event> {
    let kv = e.kv.as_ref()?;
    Some(Event {
        kind: if e.r#type == EventType::Delete as i32 { EventKind::Delete } else { EventKind::Put },
        key: Bytes::from(kv.key.clone()),
        value: Bytes::from(kv.value.clone()),
        mod_rev: kv.mod_revision,
        create_rev: kv.create_revision,
        version: kv.version,
        lease: kv.lease,
        prev: e.prev_kv.as_ref().map(kv_of),
    })
}

fn record(at: u64, r: &WatchResponse) -> WatchResponseRecord {
    WatchResponseRecord {
        at,
        header_rev: r.header.as_ref().map_or(0, |h| h.revision),
        watch_id: r.watch_id,
        created: r.created,
        events: r.events.iter().filter_map(event_of).collect(),
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        cancel_reason: r.cancel_reason.clone(),
    }
}
