//! etcd's KV service: validate → read or propose → map error → fill header.

use super::validate;
use crate::apply::Applied;
use crate::group::Group;
use crate::metrics;
use std::sync::Arc;
use tessera_proto::etcdserverpb::kv_server::Kv;
use tessera_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tessera_proto::tessera::command::command::Op;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct KvService {
    pub group: Arc<Group>,
    pub max_txn_ops: usize,
}

fn unexpected(a: Applied) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result {a:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = req.into_inner();
        validate::range(&r)?;
        self.group.check_readable()?;
        metrics::RANGE_TOTAL.inc();
        if !r.serializable {
            self.group.read_index().await?;
        }
        self.group.check_fences(&r.key, &r.range_end)?;
        let (mut resp, rev) = self.group.sm.store.range(&r)?;
        resp.header = Some(self.group.header(rev));
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = req.into_inner();
        validate::put(&r)?;
        metrics::PUT_TOTAL.inc();
        self.group.check_quota(r.key.len() + r.value.len())?;
        let out = self.group.propose(Op::Put(r)).await?;
        match out.result? {
            Applied::Put(mut resp) => {
                resp.header = Some(self.group.header(out.rev));
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let r = req.into_inner();
        validate::delete(&r)?;
        metrics::DELETE_TOTAL.inc();
        let out = self.group.propose(Op::DeleteRange(r)).await?;
        match out.result? {
            Applied::DeleteRange(mut resp) => {
                resp.header = Some(self.group.header(out.rev));
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = req.into_inner();
        validate::txn(&r, self.max_txn_ops)?;
        metrics::TXN_TOTAL.inc();
        if validate::txn_is_read_only(&r) {
            self.group.check_readable()?;
            self.group.read_index().await?;
            self.group.sm.fences.read().check_txn(crate::fence::routed_epoch(), &r)?;
            let (mut resp, rev) = self.group.sm.read_txn(&r)?;
            resp.header = Some(self.group.header(rev));
            return Ok(Response::new(resp));
        }
        if crate::apply::txn_has_put(&r) {
            self.group.check_quota(prost::Message::encoded_len(&r))?;
        }
        let out = self.group.propose(Op::Txn(r)).await?;
        match out.result? {
            Applied::Txn(mut resp) => {
                resp.header = Some(self.group.header(out.rev));
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let r = req.into_inner();
        let out = self.group.propose(Op::Compact(r)).await?;
        out.result?;
        Ok(Response::new(CompactionResponse { header: Some(self.group.header(out.rev)) }))
    }
}

