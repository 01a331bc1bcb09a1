//! The gRPC layer: thin services over a group (validate → route → call →
//! map error → fill header), served on the client port together with the
//! HTTP endpoints etcd has there (/metrics, /health, /version).

pub mod authority;
pub mod cluster;
pub mod election;
pub mod errors;
pub mod gateway;
pub mod kv;
pub mod leader;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod peer;
pub mod recipes;
pub mod serve;
pub mod shard;
pub mod validate;
pub mod watch;

use crate::group::Group;
use crate::node::{Node, STANDALONE_GROUP};
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use tessera_proto::etcdserverpb::kv_server::{Kv, KvServer};
use tessera_proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use tessera_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use tessera_proto::etcdserverpb::watch_server::{Watch, WatchServer};
use tessera_proto::tessera::shard::shard_server::ShardServer;
use tessera_proto::v3electionpb::election_server::{Election, ElectionServer};
use tessera_proto::v3lockpb::lock_server::{Lock, LockServer};

/// etcd's allowance for gRPC framing on top of --max-request-bytes.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

pub struct ClientApi {
    pub group: Arc<Group>,
    pub max_txn_ops: usize,
    pub progress_interval: Duration,
    pub min_lease_ttl: i64,
}

impl ClientApi {
    /// This group's gRPC services and etcd's JSON gateway over them (the
    /// node routes to them by group).
    pub fn grpc_router(self) -> axum::Router {
        let g = self.group.clone();
        let max = g.settings.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let leader = Arc::new(leader::LeaderClient::new(g.clone()));
        let kv = kv::KvService { group: g.clone(), max_txn_ops: self.max_txn_ops };
        let watch = watch::WatchService { group: g.clone(), progress_interval: self.progress_interval };
        let lease = lease::LeaseService { group: g.clone(), leader, min_ttl: self.min_lease_ttl };
        let cluster = cluster::ClusterService { group: g.clone() };
        let maintenance = maintenance::MaintenanceService { group: g.clone() };
        let lock = lock::LockService { group: g.clone() };
        let election = election::ElectionService { group: g.clone() };
        let etcd = EtcdServices { kv, watch, lease, cluster, maintenance, lock, election, max_message: max };
        etcd.router(|grpc| grpc.add_service(ShardServer::new(shard::ShardService { group: g })))
    }
}

/// One implementation of each of etcd's services: a group's, or the router's
/// over the federation.
pub struct EtcdServices<K, W, L, C, M, Lk, E> {
    pub kv: K,
    pub watch: W,
    pub lease: L,
    pub cluster: C,
    pub maintenance: M,
    pub lock: Lk,
    pub election: E,
    /// The largest request message accepted (etcd's --max-request-bytes plus framing).
    pub max_message: usize,
}

impl<K, W, L, C, M, Lk, E> EtcdServices<K, W, L, C, M, Lk, E>
where
    K: Kv + Clone,
    W: Watch + Clone,
    L: Lease + Clone,
    C: Cluster + Clone,
    M: Maintenance + Clone,
    Lk: Lock + Clone,
    E: Election + Clone,
{
    /// etcd's gRPC services (and those `more` adds) and its JSON gateway
    /// over the same implementations.
    pub fn router(self, more: impl FnOnce(tonic::service::Routes) -> tonic::service::Routes) -> axum::Router {
        let max = self.max_message;
        let json = gateway::kv(self.kv.clone())
            .merge(gateway::watch(self.watch.clone()))
            .merge(gateway::lease(self.lease.clone()))
            .merge(gateway::cluster(self.cluster.clone()))
            .merge(gateway::maintenance(self.maintenance.clone()))
            .merge(gateway::lock(self.lock.clone()))
            .merge(gateway::election(self.election.clone()));
        let grpc = tonic::service::Routes::new(KvServer::new(self.kv).max_decoding_message_size(max))
            .add_service(WatchServer::new(self.watch).max_decoding_message_size(max))
            .add_service(LeaseServer::new(self.lease).max_decoding_message_size(max))
            .add_service(ClusterServer::new(self.cluster))
            .add_service(MaintenanceServer::new(self.maintenance))
            .add_service(LockServer::new(self.lock))
            .add_service(ElectionServer::new(self.election));
        more(grpc).into_axum_router().merge(json)
    }
}

/// The client port of a node: etcd's HTTP endpoints, and gRPC calls handed
/// to the replica their `tessera-group` metadata names (group 0 without).
pub fn node_router(node: Arc<Node>) -> axum::Router {
    let metrics_node = node.clone();
    let health_node = node.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                // Gauges derived from the store are read when scraped.
                let replicas = metrics_node.replicas();
                crate::metrics::DB_TOTAL_SIZE.set(metrics_node.parts.engine.size_on_disk() as i64);
                crate::metrics::KEYS_TOTAL.set(replicas.iter().map(|r| r.group.sm.store.key_count() as i64).sum());
                async { crate::metrics::render() }
            }),
        )
        .route(
            "/health",
            get(move || {
                let replicas = health_node.replicas();
                let ok = !replicas.is_empty() && replicas.iter().all(|r| r.group.status().leader != 0);
                async move {
                    let body = format!("{{\"health\":\"{ok}\"}}");
                    let code = if ok { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
                    (code, body)
                }
            }),
        )
        .route(
            "/version",
            get(|| async { maintenance::version_json() }),
        )
        .fallback(move |req: axum::extract::Request| dispatch(node.clone(), req))
}

/// The replica of `group` on this node, or the error a caller can act on.
pub(crate) fn hosted(node: &Node, group: u64) -> Result<Arc<crate::replica::Replica>, tonic::Status> {
    node.replica(group).ok_or_else(|| tonic::Status::unavailable(format!("tessera: group {group} is not hosted here")))
}

/// The replica a call names in its `tessera-group` metadata (the raw
/// value); group 0, the standalone group, when it names none.
pub(crate) fn named_replica(node: &Node, value: Option<&[u8]>) -> Result<Arc<crate::replica::Replica>, tonic::Status> {
    let group = match value {
        None => STANDALONE_GROUP,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| tonic::Status::invalid_argument("tessera: bad tessera-group metadata"))?,
    };
    hosted(node, group)
}

async fn dispatch(node: Arc<Node>, req: axum::extract::Request) -> axum::response::Response {
    let headers = req.headers();
    let replica = match named_replica(&node, headers.get(shardmap::GROUP_HEADER).map(|v| v.as_bytes())) {
        Ok(r) => r,
        Err(s) => return s.into_http(),
    };
    // The revision rule: the router's highest seen revision raises this
    // group's clock, so revisions respect causality through the router.
    if let Some(rev) = headers.get(shardmap::REVISION_HEADER).and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<i64>().ok()) {
        replica.group.hlc.observe(rev);
    }
    let epoch = headers.get(shardmap::EPOCH_HEADER).and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    match crate::fence::routed(epoch, tower::ServiceExt::oneshot(replica.api.clone(), req)).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}
