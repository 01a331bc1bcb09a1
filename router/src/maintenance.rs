//! Maintenance and Cluster over the federation. To etcd clients the router
//! is the cluster: MemberList lists this router (so clients that sync
//! endpoints stay on routers), Status sums the groups (db size) and
//! reports the federation's revision and etcd's API version (Kubernetes'
//! version check). Per-group operations are the admin CLI's (`tessera`).

use crate::backends::{Access, Backends};
use crate::deadline::Deadline;
use futures::future::join_all;
use std::pin::Pin;
use std::sync::Arc;
use tessera_proto::etcdserverpb::cluster_server::Cluster;
use tessera_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tessera_proto::etcdserverpb::maintenance_server::Maintenance;
use tessera_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct MaintenanceService {
    pub backends: Arc<Backends>,
    pub auth: Arc<crate::auth::Gate>,
    pub member: Member,
}

impl MaintenanceService {
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.backends.header(self.backends.max_revision()))
    }

    fn groups(&self) -> Result<Vec<u64>, Status> {
        Ok(self.backends.routing()?.map.groups.keys().copied().collect())
    }
}

fn per_group(what: &str) -> Status {
    Status::unimplemented(format!(
        "tessera: {what} is per raft group; use `tessera group hashkv|snapshot|move-leader GROUP` or the group's members"
    ))
}

type SnapshotStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let deadline = Deadline::of(&req);
        let req = req.into_inner();
        let groups = self.groups()?;
        let answers = join_all(groups.iter().map(|g| {
            self.backends.call(*g, Access::Write, deadline, req, |ch, r| async move { MaintenanceClient::new(ch).alarm(r).await })
        }))
        .await;
        let mut alarms = vec![];
        for a in answers {
            alarms.extend(a?.alarms);
        }
        Ok(Response::new(AlarmResponse { header: self.header(), alarms }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let deadline = Deadline::of(&req);
        let groups = self.groups()?;
        let answers = join_all(groups.iter().map(|g| {
            self.backends.call(*g, Access::Read, deadline, StatusRequest {}, |ch, r| async move {
                MaintenanceClient::new(ch).status(r).await
            })
        }))
        .await;
        let mut resp = StatusResponse { header: self.header(), leader: self.member.id, ..Default::default() };
        for a in answers {
            let a = a?;
            self.backends.observe(a.header.as_ref());
            resp.version = a.version;
            resp.db_size += a.db_size;
            resp.db_size_in_use += a.db_size_in_use;
            resp.raft_index += a.raft_index;
            resp.raft_applied_index += a.raft_applied_index;
            resp.raft_term = resp.raft_term.max(a.raft_term);
            resp.errors.extend(a.errors);
        }
        resp.header = self.header();
        self.backends.answer_now(resp, deadline).await
    }

    async fn defragment(&self, req: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        let deadline = Deadline::of(&req);
        self.auth.caller(&req).await?.admin()?;
        let groups = self.groups()?;
        for g in groups {
            self.backends
                .call(g, Access::Read, deadline, DefragmentRequest {}, |ch, r| async move {
                    MaintenanceClient::new(ch).defragment(r).await
                })
                .await?;
        }
        Ok(Response::new(DefragmentResponse { header: self.header() }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(per_group("Hash"))
    }

    /// The federation's HashKV at one revision (the client's, or the
    /// federation's current one): each group's hash at it, combined in group
    /// order, so two routers asked at the same revision answer the same hash
    /// while the data agrees (operators' consistency checks keep working).
    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let deadline = Deadline::of(&req);
        self.auth.caller(&req).await?.admin()?;
        let r = req.into_inner();
        let revision = if r.revision > 0 { r.revision } else { self.backends.now(deadline).await? };
        let groups = self.groups()?;
        let answers = join_all(groups.iter().map(|g| {
            self.backends.call(*g, Access::Read, deadline, HashKvRequest { revision }, |ch, r| async move {
                MaintenanceClient::new(ch).hash_kv(r).await
            })
        }))
        .await;
        let mut hash = crc32fast::Hasher::new();
        let mut compact_revision = 0;
        for (g, a) in groups.iter().zip(answers) {
            let a = a?;
            hash.update(&g.to_be_bytes());
            hash.update(&a.hash.to_be_bytes());
            compact_revision = compact_revision.max(a.compact_revision);
        }
        Ok(Response::new(HashKvResponse {
            header: self.header(),
            hash: hash.finalize(),
            compact_revision,
            hash_revision: revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _req: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        Err(per_group("Snapshot"))
    }

    async fn move_leader(&self, _req: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(per_group("MoveLeader"))
    }

    async fn downgrade(&self, _req: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented("etcdserver: downgrade is not supported"))
    }
}

#[tonic::async_trait]
impl Cluster for MaintenanceService {
    async fn member_add(&self, _req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(per_group("membership"))
    }
    async fn member_remove(&self, _req: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(per_group("membership"))
    }
    async fn member_update(&self, _req: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(per_group("membership"))
    }
    async fn member_promote(&self, _req: Request<MemberPromoteRequest>) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(per_group("membership"))
    }
    async fn member_list(&self, _req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse { header: self.header(), members: vec![self.member.clone()] }))
    }
}
