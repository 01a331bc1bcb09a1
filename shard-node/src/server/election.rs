//! etcd's Election service (v3electionpb): the leader is the candidate with
//! the oldest key under `<name>/`; its value is the proclaimed value.

use super::recipes;
use crate::group::Group;
use std::sync::Arc;
use tessera_proto::v3electionpb::election_server::Election;
use tessera_proto::v3electionpb::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct ElectionService {
    pub group: Arc<Group>,
}

// etcd's own errors for these (its v3election package).
fn not_leader() -> Status {
    crate::error::Error::ElectionNotLeader.into()
}
fn no_leader() -> Status {
    crate::error::Error::ElectionNoLeader.into()
}
fn missing_leader() -> Status {
    crate::error::Error::ElectionMissingLeader.into()
}

use crate::auth::Access;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let caller = super::auth::Caller::of(&self.group, &req)?;
        let r = req.into_inner();
        caller.recipe(&self.group, &r.name, &[Access::Read, Access::Write])?;
        let key = recipes::contender_key(&r.name, r.lease);
        let (my_rev, kv) = recipes::enter(&self.group, &key, &r.value, r.lease).await?;
        if kv.value != r.value {
            // Already a candidate with another value: proclaim the new one.
            recipes::put_if_created_at(&self.group, &key, my_rev, &r.value, r.lease).await?;
        }
        let rev = recipes::wait_turn(&self.group, &recipes::prefix_of(&r.name), &key, my_rev).await?;
        let leader = LeaderKey { name: r.name, key, rev: my_rev, lease: r.lease };
        Ok(Response::new(CampaignResponse { header: Some(self.group.header(rev)), leader: Some(leader) }))
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let caller = super::auth::Caller::of(&self.group, &req)?;
        let r = req.into_inner();
        let l = r.leader.ok_or_else(missing_leader)?;
        caller.recipe(&self.group, &l.name, &[Access::Read, Access::Write])?;
        let (held, rev) = recipes::put_if_created_at(&self.group, &l.key, l.rev, &r.value, l.lease).await?;
        if !held {
            return Err(not_leader());
        }
        Ok(Response::new(ProclaimResponse { header: Some(self.group.header(rev)) }))
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let caller = super::auth::Caller::of(&self.group, &req)?;
        let name = req.into_inner().name;
        caller.recipe(&self.group, &name, &[Access::Read])?;
        let (first, rev) = recipes::first_contender(&self.group, &recipes::prefix_of(&name)).await?;
        let kv = first.ok_or_else(no_leader)?;
        Ok(Response::new(LeaderResponse { header: Some(self.group.header(rev)), kv: Some(kv) }))
    }

    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = super::auth::Caller::of(&self.group, &req)?;
        let name = req.into_inner().name;
        caller.recipe(&self.group, &name, &[Access::Read])?;
        let prefix = recipes::prefix_of(&name);
        let group = self.group.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut changed = group.sm.hub.subscribe();
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                match recipes::first_contender(&group, &prefix).await {
                    Ok((Some(kv), rev)) => {
                        let seen = (kv.key.clone(), kv.mod_revision);
                        if last.as_ref() != Some(&seen) {
                            last = Some(seen);
                            let resp = LeaderResponse { header: Some(group.header(rev)), kv: Some(kv) };
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok((None, _)) => last = None,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
                tokio::select! {
                    c = changed.changed() => if c.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let caller = super::auth::Caller::of(&self.group, &req)?;
        let l = req.into_inner().leader.ok_or_else(missing_leader)?;
        caller.recipe(&self.group, &l.name, &[Access::Read, Access::Write])?;
        let (_, rev) = recipes::delete_if_created_at(&self.group, &l.key, l.rev).await?;
        Ok(Response::new(ResignResponse { header: Some(self.group.header(rev)) }))
    }
}
