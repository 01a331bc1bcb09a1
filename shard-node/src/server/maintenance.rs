//! etcd's Maintenance and Cluster services.

use crate::apply::Applied;
use crate::group::Group;
use crate::raft::Msg;
use crate::snapshot;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::alarm_request::AlarmAction;
use tessera_proto::etcdserverpb::maintenance_server::Maintenance;
use tessera_proto::etcdserverpb::*;
use tessera_proto::tessera::command::command::Op;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const SNAPSHOT_CHUNK: usize = 32 * 1024;

use tessera_rpc::endpoints::ETCD_API_VERSION;

#[derive(Clone)]
pub struct MaintenanceService {
    pub group: Arc<Group>,
}

impl MaintenanceService {
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.group.header(self.group.sm.current_revision()))
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("etcdserver: {what} is not implemented by tessera yet"))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = req.into_inner();
        if AlarmAction::try_from(r.action) == Ok(AlarmAction::Get) {
            return Ok(Response::new(AlarmResponse { header: self.header(), alarms: self.group.sm.alarms() }));
        }
        let out = self.group.propose(Op::Alarm(r)).await?;
        match out.result? {
            Applied::Alarms(alarms) => Ok(Response::new(AlarmResponse { header: Some(self.group.header(out.rev)), alarms })),
            other => Err(Status::internal(format!("unexpected apply result {other:?}"))),
        }
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let st = self.group.status();
        let size = self.group.sm.engine.size_on_disk() as i64;
        Ok(Response::new(StatusResponse {
            header: self.header(),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader: st.leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors: self
                .group
                .sm
                .alarms()
                .iter()
                .map(|a| {
                    let name = AlarmType::try_from(a.alarm).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
                    format!("memberID:{} alarm:{name} ", a.member_id)
                })
                .collect(),
            db_size_in_use: self.group.sm.size_in_use() as i64,
            is_learner: st.is_learner,
            storage_version: String::new(),
            cluster_version: String::new(),
        }))
    }

    async fn defragment(&self, req: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        super::auth::Caller::of(&self.group, &req)?.admin(&self.group)?;
        let engine = self.group.sm.engine.clone();
        let group = self.group.id.to_be_bytes();
        let mut end = group.to_vec();
        end.push(0xff);
        tokio::task::spawn_blocking(move || engine.compact_range(&group, &end))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(DefragmentResponse { header: self.header() }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        super::auth::Caller::of(&self.group, &req)?.admin(&self.group)?;
        // The whole store: every revision and lease.
        let (hash, _, _) = self.group.sm.hash_kv(0)?;
        Ok(Response::new(HashResponse { header: self.header(), hash }))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        super::auth::Caller::of(&self.group, &req)?.admin(&self.group)?;
        let r = req.into_inner();
        if r.revision > 0 {
            // A revision the federation handed out that this group has not reached yet.
            self.group.reach(r.revision).await?;
        }
        let (hash, hash_revision, compact_revision) = self.group.sm.hash_kv(r.revision)?;
        Ok(Response::new(HashKvResponse { header: self.header(), hash, compact_revision, hash_revision }))
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        super::auth::Caller::of(&self.group, &req)?.admin(&self.group)?;
        let sm = self.group.sm.clone();
        let header = self.header();
        let file = tokio::task::spawn_blocking(move || {
            snapshot::encode_state(sm.engine.as_ref(), &sm.keys).and_then(|s| snapshot::encode_backup(&s))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let total = file.len();
            let mut sent = 0;
            for chunk in file.chunks(SNAPSHOT_CHUNK) {
                sent += chunk.len();
                let resp = SnapshotResponse {
                    header,
                    remaining_bytes: (total - sent) as u64,
                    blob: chunk.to_vec(),
                    version: ETCD_API_VERSION.into(),
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(&self, req: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        super::auth::Caller::of(&self.group, &req)?.admin(&self.group)?;
        let target = req.into_inner().target_id;
        if !self.group.status().is_leader {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if self.group.sm.member(target).is_none() {
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
