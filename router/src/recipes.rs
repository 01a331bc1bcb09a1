//! etcd's Lock and Election services: each lock or election lives in the
//! group of its key prefix (`<name>/`, where its contenders' keys go), so
//! the server-side recipe runs there whole.

use crate::backends::{Access, Backends, Lane, Prefer};
use crate::deadline::Deadline;
use crate::headers::WithHeader;
use crate::leases;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tessera_proto::v3electionpb::election_client::ElectionClient;
use tessera_proto::v3electionpb::election_server::Election;
use tessera_proto::v3electionpb::*;
use tessera_proto::v3lockpb::lock_client::LockClient;
use tessera_proto::v3lockpb::lock_server::Lock;
use tessera_proto::v3lockpb::*;
use tessera_rpc::auth::Access as AuthAccess;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct Recipes {
    pub backends: Arc<Backends>,
    pub auth: Arc<crate::auth::Gate>,
}

/// The key prefix of a lock or election: its contenders' keys go under it.
fn name_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

impl Recipes {
    fn group_of_key(&self, key: &[u8]) -> Result<u64, Status> {
        self.backends.routing()?.group_of(key).ok_or_else(|| Status::unavailable("tessera: the shard map has no groups yet"))
    }

    /// Calls the group that owns `key`, routing again if it was refused for
    /// an older map; a write first copies `lease` there (if not 0).
    async fn call_at<T, R, F, Fut>(
        &self,
        key: &[u8],
        write: bool,
        lease: i64,
        deadline: Deadline,
        msg: T,
        f: F,
    ) -> Result<Response<R>, Status>
    where
        T: Clone,
        R: WithHeader,
        F: Fn(Channel, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let resp = self
            .backends
            .rerouting(deadline, || async {
                let g = self.group_of_key(key)?;
                if write {
                    leases::write_with_leases(&self.backends, g, &[lease], deadline, msg.clone(), &f).await
                } else {
                    self.backends.call(g, Access::Read, deadline, msg.clone(), &f).await
                }
            })
            .await?;
        Ok(self.backends.answer(resp))
    }
}

#[tonic::async_trait]
impl Lock for Recipes {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        caller.recipe(&r.name, &[AuthAccess::Read, AuthAccess::Write])?;
        let (key, lease) = (name_prefix(&r.name), r.lease);
        self.call_at(&key, true, lease, deadline, r, |ch, r| async move { LockClient::new(ch).lock(r).await }).await
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        caller.check(&r.key, &[], AuthAccess::Write)?;
        let key = r.key.clone();
        self.call_at(&key, true, 0, deadline, r, |ch, r| async move { LockClient::new(ch).unlock(r).await }).await
    }
}

type ObserveStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for Recipes {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        caller.recipe(&r.name, &[AuthAccess::Read, AuthAccess::Write])?;
        let (key, lease) = (name_prefix(&r.name), r.lease);
        self.call_at(&key, true, lease, deadline, r, |ch, r| async move { ElectionClient::new(ch).campaign(r).await }).await
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        caller.recipe(r.leader.as_ref().map_or(&[][..], |l| &l.name), &[AuthAccess::Read, AuthAccess::Write])?;
        let key = name_prefix(r.leader.as_ref().map_or(&[][..], |l| &l.name));
        self.call_at(&key, true, 0, deadline, r, |ch, r| async move { ElectionClient::new(ch).proclaim(r).await }).await
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        caller.recipe(&r.name, &[AuthAccess::Read])?;
        let key = name_prefix(&r.name);
        self.call_at(&key, false, 0, deadline, r, |ch, r| async move { ElectionClient::new(ch).leader(r).await }).await
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        caller.recipe(&r.name, &[AuthAccess::Read])?;
        let g = self.group_of_key(&name_prefix(&r.name))?;
        let routing = self.backends.routing()?;
        let (_, ch) = self
            .backends
            .targets_on(&routing, g, Prefer::Leader, Lane::Streams)?
            .into_iter()
            .next()
            .ok_or_else(|| Status::unavailable("tessera: no replica"))?;
        // A stream that lives as long as its client: no timeout.
        let upstream_req = self.backends.request(&routing, g, r);
        let s = ElectionClient::new(ch).observe(upstream_req).await?.into_inner();
        let b = self.backends.clone();
        Ok(Response::new(Box::pin(s.map(move |r| r.map(|resp| b.answer(resp).into_inner())))))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        caller.recipe(r.leader.as_ref().map_or(&[][..], |l| &l.name), &[AuthAccess::Read, AuthAccess::Write])?;
        let key = name_prefix(r.leader.as_ref().map_or(&[][..], |l| &l.name));
        self.call_at(&key, true, 0, deadline, r, |ch, r| async move { ElectionClient::new(ch).resign(r).await }).await
    }
}
