//! Connections to the nodes: one lazy channel per node and lane, made on
//! first use (a node the map names may not be up yet) and kept for the
//! router's life, so calls share HTTP/2 connections instead of dialling.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::lease_client::LeaseClient;
use tessera_proto::etcdserverpb::watch_client::WatchClient;
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Clients of a group's services. Their answers are not size-limited: a
/// range or a watch catching up can be far larger than tonic's 4 MiB
/// default (etcd's own client accepts up to 2 GiB too).
pub fn kv_client(ch: Channel) -> KvClient<Channel> {
    KvClient::new(ch).max_decoding_message_size(usize::MAX)
}

pub fn watch_client(ch: Channel) -> WatchClient<Channel> {
    WatchClient::new(ch).max_decoding_message_size(usize::MAX)
}

pub fn lease_client(ch: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(ch).max_decoding_message_size(usize::MAX)
}

pub fn shard_client(ch: Channel) -> ShardClient<Channel> {
    ShardClient::new(ch).max_decoding_message_size(usize::MAX)
}

/// Which connection to a node a call uses. Long-lived streams (watches,
/// election observes) get their own, so whatever happens to their flow
/// control can never hold up the unary calls (puts waiting behind a watch
/// whose reader fell behind).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lane {
    Calls,
    Streams,
}

pub(super) struct Connections {
    /// node client URL → its channel, for each lane (indexed by `Lane`).
    lanes: [Mutex<HashMap<String, Channel>>; 2],
    dialer: tessera_rpc::tls::Dialer,
}

impl Connections {
    pub(super) fn new(dialer: tessera_rpc::tls::Dialer) -> Self {
        Connections { lanes: Default::default(), dialer }
    }

    /// The channel to the node at `url` on `lane`, made (lazily) on first use.
    pub(super) fn channel(&self, url: &str, lane: Lane) -> Result<Channel, Status> {
        let mut channels = self.lanes[lane as usize].lock();
        if let Some(c) = channels.get(url) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| Status::internal(format!("bad node url {url}: {e}")))?
            // A node that is down must fail fast: the call moves to another replica.
            .connect_timeout(Duration::from_millis(500))
            // A node that vanished without closing its socket is noticed within seconds.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3));
        let c = self.dialer.lazy(endpoint);
        channels.insert(url.to_string(), c.clone());
        Ok(c)
    }
}
