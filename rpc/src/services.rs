//! etcd's eight gRPC services as one value, served over gRPC and etcd's
//! JSON gateway from the same implementations: a group's on a shard-node,
//! the federation's on a router.

use crate::gateway;
use tessera_proto::etcdserverpb::auth_server::{Auth, AuthServer};
use tessera_proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use tessera_proto::etcdserverpb::kv_server::{Kv, KvServer};
use tessera_proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use tessera_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use tessera_proto::etcdserverpb::watch_server::{Watch, WatchServer};
use tessera_proto::v3electionpb::election_server::{Election, ElectionServer};
use tessera_proto::v3lockpb::lock_server::{Lock, LockServer};

pub struct EtcdServices<K, W, L, C, M, A, Lk, E> {
    pub kv: K,
    pub watch: W,
    pub lease: L,
    pub cluster: C,
    pub maintenance: M,
    pub auth: A,
    pub lock: Lk,
    pub election: E,
    /// The largest request message accepted (etcd's --max-request-bytes plus framing).
    pub max_message: usize,
}

impl<K, W, L, C, M, A, Lk, E> EtcdServices<K, W, L, C, M, A, Lk, E>
where
    K: Kv + Clone,
    W: Watch + Clone,
    L: Lease + Clone,
    C: Cluster + Clone,
    M: Maintenance + Clone,
    A: Auth + Clone,
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
            .merge(gateway::auth(self.auth.clone()))
            .merge(gateway::lock(self.lock.clone()))
            .merge(gateway::election(self.election.clone()));
        let grpc = tonic::service::Routes::new(KvServer::new(self.kv).max_decoding_message_size(max))
            .add_service(WatchServer::new(self.watch).max_decoding_message_size(max))
            .add_service(LeaseServer::new(self.lease).max_decoding_message_size(max))
            .add_service(ClusterServer::new(self.cluster))
            .add_service(MaintenanceServer::new(self.maintenance))
            .add_service(AuthServer::new(self.auth))
            .add_service(LockServer::new(self.lock))
            .add_service(ElectionServer::new(self.election));
        more(grpc).into_axum_router().merge(json)
    }
}
