//! Following placement's map: read it, then watch its key (placement's own
//! store speaks etcd's API), reconnecting across placement members. The
//! latest map stays available while placement is unreachable, so the data
//! path keeps serving on the cached map.

use crate::map::{Routing, ShardMap};
use crate::MAP_KEY;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::watch_client::WatchClient;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest};
use tessera_rpc::tls::Dialer;
use tokio::sync::watch;

pub type MapRx = watch::Receiver<Option<Arc<Routing>>>;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("placement unreachable: {0}")]
    Unreachable(String),
    #[error("placement holds no map yet")]
    Empty,
    #[error("bad map in placement: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("bad value in placement's store: {0}")]
    Malformed(String),
}

pub async fn channel(url: &str, dialer: &Dialer) -> Result<tonic::transport::Channel, FetchError> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| FetchError::Unreachable(e.to_string()))?
        .connect_timeout(Duration::from_secs(1));
    dialer.connect(endpoint).await.map_err(|e| FetchError::Unreachable(format!("{url}: {e}")))
}

/// The map as one placement member has it (linearizable read) and the
/// revision it was read at.
pub async fn fetch(url: &str, dialer: &Dialer) -> Result<(ShardMap, i64), FetchError> {
    let mut kv = KvClient::new(channel(url, dialer).await?);
    let resp = kv
        .range(RangeRequest { key: MAP_KEY.to_vec(), ..Default::default() })
        .await
        .map_err(|e| FetchError::Unreachable(format!("{url}: {}", e.message())))?
        .into_inner();
    let (rev, store_cluster) = resp.header.map_or((0, 0), |h| (h.revision, h.cluster_id));
    let kv = resp.kvs.into_iter().next().ok_or(FetchError::Empty)?;
    let mut map: ShardMap = serde_json::from_slice(&kv.value)?;
    // A map stored before maps recorded it: the store's is the federation's.
    if map.cluster_id == 0 {
        map.cluster_id = store_cluster;
    }
    Ok((map, rev))
}

/// Starts following the map; the receiver holds None until the first map.
pub fn follow(endpoints: Vec<String>, dialer: Dialer) -> MapRx {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(follow_key(endpoints, dialer, FollowedMap(tx)));
    rx
}

/// One key of placement's store, followed: its value as read, then each
/// new one (a deleted key is not passed on).
pub trait Followed: Send + 'static {
    fn key(&self) -> &[u8];
    /// A value of the key; `cluster`: the store's cluster id.
    fn take(&mut self, value: &[u8], cluster: u64) -> Result<(), FetchError>;
    /// The key holds nothing (yet) when first read.
    fn absent(&mut self) {}
    /// Nobody reads what is followed any more: stop.
    fn done(&self) -> bool;
}

struct FollowedMap(watch::Sender<Option<Arc<Routing>>>);

impl Followed for FollowedMap {
    fn key(&self) -> &[u8] {
        MAP_KEY
    }

    fn take(&mut self, value: &[u8], cluster: u64) -> Result<(), FetchError> {
        let mut map: ShardMap = serde_json::from_slice(value)?;
        // A map stored before maps recorded it: the store's is the federation's.
        if map.cluster_id == 0 {
            map.cluster_id = cluster;
        }
        self.0.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|c| c.epoch() >= map.epoch) {
                return false;
            }
            tracing::info!(epoch = map.epoch, "shard map updated");
            *cur = Some(Arc::new(map.routing()));
            true
        });
        Ok(())
    }

    fn done(&self) -> bool {
        self.0.is_closed()
    }
}

/// Follows `f`'s key across the store's members until `f` is done.
pub async fn follow_key(endpoints: Vec<String>, dialer: Dialer, mut f: impl Followed) {
    let mut i = 0usize;
    loop {
        if f.done() {
            return;
        }
        let url = &endpoints[i % endpoints.len()];
        i += 1;
        if let Err(e) = follow_one(url, &dialer, &mut f).await {
            tracing::debug!(url, key = %String::from_utf8_lossy(f.key()), error = %e, "placement store stream ended");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn follow_one(url: &str, dialer: &Dialer, f: &mut impl Followed) -> Result<(), FetchError> {
    let mut kv = KvClient::new(channel(url, dialer).await?);
    let resp = kv
        .range(RangeRequest { key: f.key().to_vec(), ..Default::default() })
        .await
        .map_err(|e| FetchError::Unreachable(format!("{url}: {}", e.message())))?
        .into_inner();
    let (rev, cluster) = resp.header.map_or((0, 0), |h| (h.revision, h.cluster_id));
    match resp.kvs.first() {
        Some(kv) => f.take(&kv.value, cluster)?,
        None => f.absent(),
    }
    let mut watch = WatchClient::new(channel(url, dialer).await?);
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(1);
    let create =
        WatchCreateRequest { key: f.key().to_vec(), start_revision: rev + 1, progress_notify: true, ..Default::default() };
    let _ = req_tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await;
    let mut stream = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
        .await
        .map_err(|e| FetchError::Unreachable(e.message().to_string()))?
        .into_inner();
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => return Err(FetchError::Unreachable(e.message().to_string())),
        };
        if resp.canceled {
            return Ok(());
        }
        let cluster = resp.header.map_or(cluster, |h| h.cluster_id);
        for ev in resp.events {
            if let Some(kv) = ev.kv.filter(|kv| !kv.value.is_empty()) {
                f.take(&kv.value, cluster)?;
            }
        }
        if f.done() {
            return Ok(());
        }
    }
}
