//! etcd's KV service over the groups: a request whose keys fall in one
//! group goes there; a range over several groups is read at one revision
//! in each and merged; a DeleteRange or txn over several groups runs as one
//! atomic txn across them (`cross_txn`).

use crate::auth::Gate;
use crate::backends::{kv_client, Access, Backends};
use crate::cross_txn;
use crate::deadline::Deadline;
use crate::leases;
use futures::future::try_join_all;
use std::collections::BTreeSet;
use std::sync::Arc;
use tessera_proto::etcdserverpb::kv_server::Kv;
use tessera_proto::etcdserverpb::request_op::Request as OpRequest;
use tessera_proto::etcdserverpb::response_op::Response as OpResponse;
use tessera_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RangeStreamResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use tessera_rpc::auth::Access as AuthAccess;
use tessera_rpc::Error;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct KvService {
    pub backends: Arc<Backends>,
    pub auth: Arc<Gate>,
}

fn empty_key() -> Status {
    Error::EmptyKey.into()
}

/// The newer of two response headers.
trait NewerHeader {
    fn max_by_revision(self, other: Option<ResponseHeader>) -> Option<ResponseHeader>;
}

impl NewerHeader for Option<ResponseHeader> {
    fn max_by_revision(self, other: Option<ResponseHeader>) -> Option<ResponseHeader> {
        match (self, other) {
            (Some(a), Some(b)) => Some(if b.revision > a.revision { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

impl KvService {
    async fn range_in(&self, group: u64, req: RangeRequest, deadline: Deadline) -> Result<RangeResponse, Status> {
        let access = if req.serializable { Access::Serializable } else { Access::Read };
        let resp = self.backends.call(group, access, deadline, req, |ch, r| async move { kv_client(ch).range(r).await }).await?;
        self.backends.observe(resp.header.as_ref());
        Ok(resp)
    }

    /// A range over several groups, read in each at one revision — the
    /// client's, or the federation's current one — and merged: one
    /// consistent snapshot (a group behind that revision is raised to it by
    /// its node before it reads, so its part is final).
    async fn cross_range(&self, groups: Vec<u64>, req: RangeRequest, deadline: Deadline) -> Result<RangeResponse, Status> {
        let rev = if req.revision > 0 { req.revision } else { self.backends.now(deadline).await? };
        let at = RangeRequest { revision: rev, ..req.clone() };
        let parts = try_join_all(groups.iter().map(|g| self.range_in(*g, at.clone(), deadline))).await?;
        // A read of the current state answers the revision it read at, as
        // etcd does: the groups may have moved past it meanwhile, and a
        // header above the data would make a client watching from it miss
        // what lies between (etcd's election recipe does exactly that).
        // A read at the client's revision answers the newest current
        // revision, as etcd's header does.
        let header = parts.iter().filter_map(|p| p.header).max_by_key(|h| h.revision);
        let mut merged = crate::ranges::merge(&req, parts);
        let answered = if req.revision > 0 { |h: i64, rev: i64| h.max(rev) } else { |_, rev| rev };
        merged.header = header.map(|h| ResponseHeader { revision: answered(h.revision, rev), ..h });
        Ok(merged)
    }

    async fn delete_in(&self, group: u64, req: DeleteRangeRequest, deadline: Deadline) -> Result<DeleteRangeResponse, Status> {
        let resp = self
            .backends
            .call(group, Access::Write, deadline, req, |ch, r| async move { kv_client(ch).delete_range(r).await })
            .await?;
        self.backends.observe(resp.header.as_ref());
        Ok(resp)
    }
}

/// Leases named by a txn's puts.
fn txn_leases(t: &TxnRequest, out: &mut BTreeSet<i64>) {
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(OpRequest::RequestPut(x)) if x.lease != 0 => {
                out.insert(x.lease);
            }
            Some(OpRequest::RequestTxn(x)) => txn_leases(x, out),
            _ => {}
        }
    }
}

/// Each call routes by the map it finds; `Backends::rerouting` runs it
/// again when a group refuses it for an older one, within the request's deadline.
impl KvService {
    async fn range_routed(&self, req: &RangeRequest, deadline: Deadline) -> Result<RangeResponse, Status> {
        let req = req.clone();
        let r = self.backends.routing()?;
        let groups = r.groups_for_range(&req.key, &req.range_end);
        crate::metrics::RANGE_GROUPS.observe(groups.len() as f64);
        match groups.as_slice() {
            [] => Err(Status::unavailable("tessera: the shard map has no groups yet")),
            [g] => self.range_in(*g, req, deadline).await,
            _ => self.cross_range(groups, req, deadline).await,
        }
    }

    async fn put_routed(&self, req: &PutRequest, deadline: Deadline) -> Result<PutResponse, Status> {
        let r = self.backends.routing()?;
        let group = r.group_of(&req.key).ok_or_else(|| Status::unavailable("tessera: the shard map has no groups yet"))?;
        let lease = [req.lease];
        let put = |ch, msg| async move { kv_client(ch).put(msg).await };
        let resp = leases::write_with_leases(&self.backends, group, &lease, deadline, req.clone(), put).await?;
        self.backends.observe(resp.header.as_ref());
        Ok(resp)
    }

    async fn delete_routed(&self, req: &DeleteRangeRequest, deadline: Deadline) -> Result<DeleteRangeResponse, Status> {
        let r = self.backends.routing()?;
        let groups = r.groups_for_range(&req.key, &req.range_end);
        match groups.as_slice() {
            [] => Err(Status::unavailable("tessera: the shard map has no groups yet")),
            [g] => self.delete_in(*g, req.clone(), deadline).await,
            // Over several groups: one atomic delete at one revision, as a
            // txn across them.
            _ => {
                let op = RequestOp { request: Some(OpRequest::RequestDeleteRange(req.clone())) };
                let txn = TxnRequest { compare: vec![], success: vec![op], failure: vec![] };
                let r = self.backends.routing()?;
                let mut resp = cross_txn::run(&self.backends, &cross_txn::Plan::new(&r, &txn), deadline).await?;
                match resp.responses.pop().and_then(|r| r.response) {
                    Some(OpResponse::ResponseDeleteRange(d)) => Ok(DeleteRangeResponse { header: resp.header, ..d }),
                    _ => Err(Status::internal("tessera: a delete across groups answered no delete")),
                }
            }
        }
    }

    async fn txn_routed(&self, req: &TxnRequest, deadline: Deadline) -> Result<TxnResponse, Status> {
        let r = self.backends.routing()?;
        let plan = cross_txn::Plan::new(&r, req);
        let group = match plan.groups() {
            [g] => *g,
            // A txn without keys touches nothing: any group answers it.
            [] => *r.map.groups.keys().next().ok_or_else(|| Status::unavailable("tessera: the shard map has no groups yet"))?,
            _ => return cross_txn::run(&self.backends, &plan, deadline).await,
        };
        let mut ls = BTreeSet::new();
        txn_leases(req, &mut ls);
        let ls: Vec<i64> = ls.into_iter().collect();
        let txn = |ch, msg| async move { kv_client(ch).txn(msg).await };
        let resp = leases::write_with_leases(&self.backends, group, &ls, deadline, req.clone(), txn).await?;
        self.backends.observe(resp.header.as_ref());
        Ok(resp)
    }
}

type RangeChunks = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<RangeStreamResponse, Status>> + Send>>;

impl KvService {
    /// A count-only RangeStream: one message, as etcd sends.
    async fn count_stream(&self, req: RangeRequest, deadline: Deadline) -> Result<RangeStreamResponse, Status> {
        let resp = self.backends.rerouting(deadline, || self.range_routed(&req, deadline)).await?;
        let resp = self.backends.answer(resp).into_inner();
        Ok(RangeStreamResponse {
            range_response: Some(RangeResponse { header: resp.header, count: resp.count, ..Default::default() }),
        })
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    type RangeStreamStream = RangeChunks;

    async fn range_stream(&self, req: Request<RangeRequest>) -> Result<Response<RangeChunks>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        caller.check(&req.key, &req.range_end, AuthAccess::Read)?;
        if let Some(refused) = tessera_rpc::range_stream::unsupported(&req) {
            return Err(refused);
        }
        if req.count_only {
            let one = self.count_stream(req, deadline).await?;
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(one)))));
        }
        let groups = self.backends.routing()?.groups_for_range(&req.key, &req.range_end);
        crate::metrics::RANGE_GROUPS.observe(groups.len() as f64);
        if groups.is_empty() {
            return Err(Status::unavailable("tessera: the shard map has no groups yet"));
        }
        let revision = if req.revision > 0 { req.revision } else { self.backends.now(deadline).await? };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let target = tessera_rpc::endpoints::DEFAULT_MAX_REQUEST_BYTES;
        let job = crate::range_stream::Job { backends: self.backends.clone(), groups, req, revision, deadline, target };
        tokio::spawn(crate::range_stream::stream(job, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        caller.check(&req.key, &req.range_end, AuthAccess::Read)?;
        Ok(self.backends.answer(self.backends.rerouting(deadline, || self.range_routed(&req, deadline)).await?))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        caller.put(&req)?;
        if req.lease != 0 {
            leases::check_lease_puts(&self.backends, &caller, req.lease, deadline).await?;
        }
        let routed = self.backends.rerouting(deadline, || self.put_routed(&req, deadline));
        Ok(self.backends.answer(self.auth.write_for(&caller, routed).await?))
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        caller.delete(&req)?;
        let routed = self.backends.rerouting(deadline, || self.delete_routed(&req, deadline));
        Ok(self.backends.answer(self.auth.write_for(&caller, routed).await?))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let req = req.into_inner();
        caller.txn(&req)?;
        let routed = self.backends.rerouting(deadline, || self.txn_routed(&req, deadline));
        Ok(self.backends.answer(self.auth.write_for(&caller, routed).await?))
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let deadline = Deadline::of(&req);
        let req = req.into_inner();
        let r = self.backends.routing()?;
        let groups: Vec<u64> = r.map.groups.keys().copied().collect();
        // Every group compacts at the same revision (a group behind it is
        // raised to it first by its node, as the revision was handed out).
        let results = futures::future::join_all(groups.iter().map(|g| {
            self.backends.call(*g, Access::Write, deadline, req, |ch, r| async move { kv_client(ch).compact(r).await })
        }))
        .await;
        // As etcd: a revision compacted before is an error (the groups that
        // had not compacted to it yet, after a fan-out cut short, now have);
        // a future one too; otherwise the first failure.
        let mut header = None;
        let mut failure: Option<Status> = None;
        for r in results {
            match r {
                Ok(resp) => header = header.max_by_revision(resp.header),
                Err(e) => {
                    let rank = |s: &Status| match Error::from_status(s) {
                        Some(Error::Compacted) => 0,
                        Some(Error::FutureRev) => 1,
                        _ => 2,
                    };
                    if failure.as_ref().is_none_or(|f| rank(&e) < rank(f)) {
                        failure = Some(e);
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => self.backends.answer_now(CompactionResponse { header }, deadline).await,
        }
    }
}
