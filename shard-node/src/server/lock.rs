//! etcd's Lock service (v3lockpb): a lock is held by the contender with the
//! oldest key under `<name>/`, for as long as its lease lives.

use super::recipes;
use crate::group::Group;
use std::sync::Arc;
use tessera_proto::v3lockpb::lock_server::Lock;
use tessera_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct LockService {
    pub group: Arc<Group>,
}

use crate::auth::Access;

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = super::auth::Caller::of(&self.group, &req)?;
        let r = req.into_inner();
        caller.recipe(&self.group, &r.name, &[Access::Read, Access::Write])?;
        let key = recipes::contender_key(&r.name, r.lease);
        let (my_rev, _) = recipes::enter(&self.group, &key, b"", r.lease).await?;
        let rev = recipes::wait_turn(&self.group, &recipes::prefix_of(&r.name), &key, my_rev).await?;
        Ok(Response::new(LockResponse { header: Some(self.group.header(rev)), key }))
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let caller = super::auth::Caller::of(&self.group, &req)?;
        let key = req.into_inner().key;
        caller.check(&self.group, &key, &[], Access::Write)?;
        let out =
            self.group
                .propose(tessera_proto::tessera::command::command::Op::DeleteRange(
                    tessera_proto::etcdserverpb::DeleteRangeRequest { key, ..Default::default() },
                ))
                .await?;
        out.result?;
        Ok(Response::new(UnlockResponse { header: Some(self.group.header(out.rev)) }))
    }
}
