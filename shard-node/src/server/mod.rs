//! The gRPC layer: thin services over a group (validate → route → call →
//! map error → fill header), served on the client port together with the
//! HTTP endpoints etcd has there (/metrics, /health, /version).

pub mod auth;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod leader;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod peer;
pub mod recipes;
pub mod shard;
pub mod watch;

use crate::error::Refusal;
use crate::group::Group;
use crate::node::{Node, STANDALONE_GROUP};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::tessera::shard::oracle_server::OracleServer;
use tessera_proto::tessera::shard::shard_server::ShardServer;
use tessera_rpc::endpoints::GRPC_OVERHEAD_BYTES;
use tessera_rpc::metadata::Routed;
use tessera_rpc::EtcdServices;

pub struct ClientApi {
    pub group: Arc<Group>,
    pub max_txn_ops: usize,
    pub progress_interval: Duration,
    pub min_lease_ttl: i64,
    /// This group serves the federation's revision oracle.
    pub serve_oracle: bool,
    /// bcrypt's cost for new passwords (etcd's --bcrypt-cost).
    pub bcrypt_cost: u32,
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
        let auth = tessera_rpc::auth::service::AuthApi(auth::GroupAuth {
            group: g.clone(),
            bcrypt_cost: self.bcrypt_cost,
            issued: Default::default(),
        });
        let etcd = EtcdServices { kv, watch, lease, cluster, maintenance, auth, lock, election, max_message: max };
        let oracle = self.serve_oracle.then(|| OracleServer::new(crate::oracle::OracleService::new(g.clone())));
        etcd.router(|grpc| {
            let grpc = grpc.add_service(ShardServer::new(shard::ShardService { group: g }));
            match oracle {
                Some(o) => grpc.add_service(o),
                None => grpc,
            }
        })
    }
}

/// The client port of a node: etcd's HTTP endpoints, and gRPC calls handed
/// to the replica their `tessera-group` metadata names (group 0 without).
pub fn node_router(node: Arc<Node>) -> axum::Router {
    let (health_node, metrics_node) = (node.clone(), node.clone());
    let healthy = move || {
        let replicas = health_node.replicas();
        std::future::ready(!replicas.is_empty() && replicas.iter().all(|r| r.group.status().leader != 0))
    };
    // Gauges derived from the store are read when scraped.
    let refresh = move || crate::metrics::refresh(&metrics_node);
    tessera_rpc::endpoints::routes(healthy, refresh).fallback(move |req: axum::extract::Request| dispatch(node.clone(), req))
}

/// The replica of `group` on this node, or the refusal a router acts on.
pub(crate) fn hosted(node: &Node, group: u64) -> Result<Arc<crate::replica::Replica>, tonic::Status> {
    node.replica(group).ok_or_else(|| Refusal::NotHosted { group }.into()).map_err(|e: crate::error::Error| e.into())
}

async fn dispatch(node: Arc<Node>, req: axum::extract::Request) -> axum::response::Response {
    let routed = match Routed::from_headers(req.headers()) {
        Ok(r) => r,
        Err(e) => return tonic::Status::invalid_argument(e.to_string()).into_http(),
    };
    let replica = match hosted(&node, routed.group.unwrap_or(STANDALONE_GROUP)) {
        Ok(r) => r,
        Err(s) => return s.into_http(),
    };
    let forwarded = match tessera_rpc::metadata::forwarded(req.headers()) {
        Ok(f) => f,
        Err(e) => return tonic::Status::invalid_argument(e.to_string()).into_http(),
    };
    let call = crate::auth::federation::forwarded_by(forwarded, tower::ServiceExt::oneshot(replica.api.clone(), req));
    match crate::fence::routed(routed.epoch, call).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}
