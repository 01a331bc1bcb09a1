//! The peer port: raft traffic in, and lease liveness calls that other
//! members forward to the leader.

use super::lease::{renew_local, time_to_live_local};
use crate::group::Group;
use crate::node::Node;
use crate::raft::Msg;
use protobuf::Message as _;
use std::sync::Arc;
use tessera_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tessera_proto::tessera::transport::peer_server::Peer;
use tessera_proto::tessera::transport::{MembersRequest, MembersResponse, RaftAck, RaftBatch};
use tonic::{Request, Response, Status, Streaming};

pub struct PeerService {
    pub node: Arc<Node>,
}

impl PeerService {
    fn group<T>(&self, req: &Request<T>) -> Result<Arc<Group>, Status> {
        let routed = tessera_rpc::metadata::Routed::from_headers(req.metadata().as_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(super::hosted(&self.node, routed.group.unwrap_or(crate::node::STANDALONE_GROUP))?.group.clone())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut input = req.into_inner();
        while let Some(batch) = input.message().await? {
            let Some(mb) = self.node.mailboxes().read().get(&batch.group_id).cloned() else {
                tracing::debug!(group = batch.group_id, "raft message for a group not hosted here");
                continue;
            };
            for bytes in batch.messages {
                match raft::prelude::Message::parse_from_bytes(&bytes) {
                    // A full mailbox drops the message: raft retransmits.
                    Ok(m) => {
                        let _ = mb.try_send(Msg::Raft(Box::new(m)));
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable raft message"),
                }
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn members(&self, req: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        let id = req.get_ref().group_id;
        let group = super::hosted(&self.node, id)?.group.clone();
        let members = group.sm.members().all().cloned().collect();
        Ok(Response::new(MembersResponse { cluster_id: group.cluster_id, members }))
    }

    async fn lease_renew(&self, req: Request<LeaseKeepAliveRequest>) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        let group = self.group(&req)?;
        let id = req.into_inner().id;
        let ttl = renew_local(&group, id).await?;
        let rev = group.sm.current_revision();
        Ok(Response::new(LeaseKeepAliveResponse { header: Some(group.header(rev)), id, ttl }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let group = self.group(&req)?;
        Ok(Response::new(time_to_live_local(&group, &req.into_inner())?))
    }
}
