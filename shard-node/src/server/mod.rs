//! The gRPC layer: thin services over a group (validate → route → call →
//! map error → fill header), served on the client port together with the
//! HTTP endpoints etcd has there (/metrics, /health, /version).

pub mod authority;
pub mod cluster;
pub mod election;
pub mod errors;
pub mod kv;
pub mod lease;
pub mod leader;
pub mod lock;
pub mod maintenance;
pub mod peer;
pub mod recipes;
pub mod validate;
pub mod watch;

use crate::group::Group;
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::cluster_server::ClusterServer;
use tessera_proto::etcdserverpb::kv_server::KvServer;
use tessera_proto::etcdserverpb::lease_server::LeaseServer;
use tessera_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use tessera_proto::etcdserverpb::watch_server::WatchServer;
use tessera_proto::v3electionpb::election_server::ElectionServer;
use tessera_proto::v3lockpb::lock_server::LockServer;

/// etcd's allowance for gRPC framing on top of --max-request-bytes.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

pub struct ClientApi {
    pub group: Arc<Group>,
    pub max_txn_ops: usize,
    pub progress_interval: Duration,
    pub min_lease_ttl: i64,
}

impl ClientApi {
    /// The client port's routes: etcd's gRPC services plus HTTP endpoints.
    pub fn router(self) -> axum::Router {
        let g = self.group.clone();
        let max = g.settings.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let leader = Arc::new(leader::LeaderClient::new(g.clone()));
        let grpc = tonic::service::Routes::new(
            KvServer::new(kv::KvService { group: g.clone(), max_txn_ops: self.max_txn_ops }).max_decoding_message_size(max),
        )
        .add_service(
            WatchServer::new(watch::WatchService { group: g.clone(), progress_interval: self.progress_interval })
                .max_decoding_message_size(max),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService { group: g.clone(), leader, min_ttl: self.min_lease_ttl })
                .max_decoding_message_size(max),
        )
        .add_service(ClusterServer::new(cluster::ClusterService { group: g.clone() }))
        .add_service(MaintenanceServer::new(maintenance::MaintenanceService { group: g.clone() }))
        .add_service(LockServer::new(lock::LockService { group: g.clone() }))
        .add_service(ElectionServer::new(election::ElectionService { group: g.clone() }));
        let health_group = g.clone();
        let metrics_group = g.clone();
        grpc.into_axum_router()
            .route(
                "/metrics",
                get(move || {
                    // Gauges derived from the store are read when scraped.
                    crate::metrics::DB_TOTAL_SIZE.set(metrics_group.sm.engine.size_on_disk() as i64);
                    crate::metrics::KEYS_TOTAL.set(metrics_group.sm.store.key_count() as i64);
                    async { crate::metrics::render() }
                }),
            )
            .route(
                "/health",
                get(move || {
                    let ok = health_group.status().leader != 0;
                    async move {
                        let body = format!("{{\"health\":\"{ok}\"}}");
                        let code = if ok { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
                        (code, body)
                    }
                }),
            )
            .route(
                "/version",
                get(|| async {
                    format!("{{\"etcdserver\":\"{}\",\"etcdcluster\":\"3.5.0\"}}", maintenance::ETCD_API_VERSION)
                }),
            )
    }
}
