//! etcd's Maintenance and Cluster services.

use crate::group::{Group, Msg};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::cluster_server::Cluster;
use tessera_proto::etcdserverpb::maintenance_server::Maintenance;
use tessera_proto::etcdserverpb::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The etcd API level we implement; Kubernetes checks it through Status.
pub const ETCD_API_VERSION: &str = "3.5.17";

pub struct MaintenanceService {
    pub group: Arc<Group>,
}

impl MaintenanceService {
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.group.header(self.group.sm.store.current_revision()))
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("etcdserver: {what} is not implemented by tessera yet"))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, _req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Ok(Response::new(AlarmResponse { header: self.header(), alarms: vec![] }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let st = self.group.status();
        let size = self.group.sm.engine.size_on_disk() as i64;
        crate::metrics::DB_TOTAL_SIZE.set(size);
        Ok(Response::new(StatusResponse {
            header: self.header(),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader: st.leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors: vec![],
            db_size_in_use: size,
            is_learner: st.is_learner,
            storage_version: String::new(),
            cluster_version: String::new(),
        }))
    }

    async fn defragment(&self, _req: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        let engine = self.group.sm.engine.clone();
        let group = self.group.id.to_be_bytes();
        let mut end = group.to_vec();
        end.push(0xff);
        tokio::task::spawn_blocking(move || engine.compact_range(&group, &end))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(DefragmentResponse { header: self.header() }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(not_yet("Hash"))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let r = req.into_inner();
        let store = &self.group.sm.store;
        let (hash, rev) = store.hash_kv(r.revision)?;
        Ok(Response::new(HashKvResponse {
            header: self.header(),
            hash,
            compact_revision: store.compact_revision(),
            hash_revision: rev,
        }))
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn snapshot(&self, _req: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_yet("Snapshot"))
    }

    async fn move_leader(&self, req: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        if !self.group.status().is_leader {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if self.group.sm.members.read().get(target).is_none() {
            return Err(crate::error::Error::MemberNotFound.into());
        }
        self.group.send(Msg::TransferLeader(target))?;
        let deadline = Instant::now() + self.group.settings.request_timeout;
        while Instant::now() < deadline {
            if self.group.status().leader == target {
                return Ok(Response::new(MoveLeaderResponse { header: self.header() }));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(crate::error::Error::Timeout.into())
    }

    async fn downgrade(&self, _req: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(not_yet("Downgrade"))
    }
}

pub struct ClusterService {
    pub group: Arc<Group>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(not_yet("MemberAdd"))
    }

    async fn member_remove(&self, _req: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(not_yet("MemberRemove"))
    }

    async fn member_update(&self, _req: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(not_yet("MemberUpdate"))
    }

    async fn member_list(&self, req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.group.read_index().await?;
        }
        let members = self.group.sm.members.read().to_proto();
        let rev = self.group.sm.store.current_revision();
        Ok(Response::new(MemberListResponse { header: Some(self.group.header(rev)), members }))
    }

    async fn member_promote(&self, _req: Request<MemberPromoteRequest>) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(not_yet("MemberPromote"))
    }
}
