//! etcd's KV service: validate → read or propose → map error → fill header.

use super::auth::Caller;
use crate::apply::Applied;
use crate::auth::Access;
use crate::group::Group;
use std::pin::Pin;
use std::sync::Arc;
use tessera_proto::etcdserverpb::kv_server::Kv;
use tessera_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RangeStreamResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use tessera_proto::tessera::command::command::Op;
use tessera_rpc::validate;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct KvService {
    pub group: Arc<Group>,
    pub max_txn_ops: usize,
}

fn unexpected(a: Applied) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result {a:?}"))
}

type RangeChunks = Pin<Box<dyn tokio_stream::Stream<Item = Result<RangeStreamResponse, Status>> + Send>>;

/// Sends `r`'s range at revision `at` in chunks (etcd 3.7's RangeStream):
/// each chunk read under the state lock on its own, sized toward `target`
/// bytes; header, `more` and `count` on the last. Stops when the client goes.
async fn send_chunks(
    group: Arc<Group>,
    mut r: RangeRequest,
    at: i64,
    header: ResponseHeader,
    target: usize,
    out: mpsc::Sender<Result<RangeStreamResponse, Status>>,
) {
    use tessera_rpc::range_stream::{after, next_chunk_limit, FIRST_CHUNK};
    let total = if r.limit > 0 { r.limit } else { i64::MAX };
    r.revision = at;
    r.limit = FIRST_CHUNK.min(total);
    let mut sent = 0;
    loop {
        let chunk = match group.sm.range(&r) {
            Ok((chunk, _)) => chunk,
            Err(e) => {
                let _ = out.send(Err(e.into())).await;
                return;
            }
        };
        sent += chunk.kvs.len() as i64;
        let done = !chunk.more || sent >= total;
        let size = prost::Message::encoded_len(&chunk);
        let next = chunk.kvs.last().map(|kv| after(&kv.key));
        let mut resp = RangeResponse { kvs: chunk.kvs, ..Default::default() };
        if done {
            resp.header = Some(header);
            resp.more = chunk.more;
            // This chunk's count is every key from its start on.
            resp.count = sent - resp.kvs.len() as i64 + chunk.count;
        }
        if out.send(Ok(RangeStreamResponse { range_response: Some(resp) })).await.is_err() || done {
            return;
        }
        r.key = next.expect("a chunk with more after it is not empty");
        r.limit = next_chunk_limit(r.limit, size, target).min(total - sent);
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    type RangeStreamStream = RangeChunks;

    async fn range_stream(&self, req: Request<RangeRequest>) -> Result<Response<RangeChunks>, Status> {
        let caller = Caller::of(&self.group, &req)?;
        let r = req.into_inner();
        validate::range(&r)?;
        caller.check(&self.group, &r.key, &r.range_end, Access::Read)?;
        if let Some(refused) = tessera_rpc::range_stream::unsupported(&r) {
            return Err(refused);
        }
        self.group.check_readable()?;
        self.group.sm.metrics.ranges.inc();
        self.group.sm.load.read(&r.key);
        let at = if r.serializable { None } else { self.group.read_revision().await? };
        self.group.check_fences(&r.key, &r.range_end).await?;
        if r.revision > 0 {
            self.group.reach(r.revision).await?;
        }
        let at = self.group.compacted_past(at);
        // As Range: the header names the revision read (a federation's read
        // revision, or the group's current one); every chunk reads the
        // client's revision, else that one.
        let current = self.group.sm.current_revision();
        let header = self.group.header(at.map_or(current, |at| at.max(r.revision)));
        let read_at = if r.revision > 0 { r.revision } else { at.unwrap_or(current) };
        if r.count_only {
            let (mut resp, _) = self.group.sm.range(&RangeRequest { revision: read_at, ..r })?;
            resp.header = Some(header);
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(RangeStreamResponse { range_response: Some(resp) })))));
        }
        let (tx, rx) = mpsc::channel(2);
        let target = self.group.settings.max_request_bytes;
        tokio::spawn(send_chunks(self.group.clone(), r, read_at, header, target, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let caller = Caller::of(&self.group, &req)?;
        let mut r = req.into_inner();
        validate::range(&r)?;
        caller.check(&self.group, &r.key, &r.range_end, Access::Read)?;
        self.group.check_readable()?;
        self.group.sm.metrics.ranges.inc();
        self.group.sm.load.read(&r.key);
        let at = if r.serializable { None } else { self.group.read_revision().await? };
        self.group.check_fences(&r.key, &r.range_end).await?;
        if r.revision > 0 {
            self.group.reach(r.revision).await?;
        }
        // In a federation a linearizable read answers at the oracle's
        // revision (its header), reading the state as of it.
        let at = self.group.compacted_past(at);
        let header = at.map(|at| at.max(r.revision));
        if r.revision == 0 {
            r.revision = at.unwrap_or(0);
        }
        let (mut resp, rev) = self.group.sm.range(&r)?;
        let rev = header.unwrap_or(rev);
        resp.header = Some(self.group.header(rev));
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = Caller::of(&self.group, &req)?;
        let r = req.into_inner();
        validate::put(&r)?;
        caller.put(&self.group, &r)?;
        self.group.sm.metrics.puts.inc();
        self.group.check_quota(r.key.len() + r.value.len())?;
        let out = self.group.propose_checked(Op::Put(r), caller.revision).await?;
        match out.result? {
            Applied::Put(mut resp) => {
                resp.header = Some(self.group.header(out.rev));
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = Caller::of(&self.group, &req)?;
        let r = req.into_inner();
        validate::delete(&r)?;
        caller.delete(&self.group, &r)?;
        self.group.sm.metrics.deletes.inc();
        let out = self.group.propose_checked(Op::DeleteRange(r), caller.revision).await?;
        match out.result? {
            Applied::DeleteRange(mut resp) => {
                resp.header = Some(self.group.header(out.rev));
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = Caller::of(&self.group, &req)?;
        let r = req.into_inner();
        validate::txn(&r, self.max_txn_ops)?;
        caller.txn(&self.group, &r)?;
        self.group.sm.metrics.txns.inc();
        if validate::txn_is_read_only(&r) {
            self.group.check_readable()?;
            let at = self.group.read_revision().await?;
            let epoch = crate::fence::routed_epoch();
            let (mut resp, rev) = self.group.settled(|| self.group.sm.read_txn(&r, epoch, at)).await?;
            resp.header = Some(self.group.header(rev));
            return Ok(Response::new(resp));
        }
        if crate::apply::txn_has_put(&r) {
            self.group.check_quota(prost::Message::encoded_len(&r))?;
        }
        // A txn whose compares choose branches that only read (an update
        // that lost its race, a second kube-apiserver's compaction txn) is
        // a read: answered at a linearizable read's revision when it still
        // chooses them there, with no log entry and no revision taken — in a
        // federation, a write's revision is taken before it is proposed, so
        // proposing it would leave a gap etcd's revisions never have.
        if self.group.sm.txn_would_only_read(&r)? {
            self.group.check_readable()?;
            let at = self.group.read_revision().await?;
            let epoch = crate::fence::routed_epoch();
            if let Some((mut resp, rev)) = self.group.settled(|| self.group.sm.txn_if_it_only_reads(&r, epoch, at)).await? {
                resp.header = Some(self.group.header(rev));
                return Ok(Response::new(resp));
            }
        }
        let out = self.group.propose_checked(Op::Txn(r), caller.revision).await?;
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
        if r.revision > self.group.sm.compact_revision() {
            // A revision the federation handed out that this group has not
            // reached yet is raised to first (its history up to it is then final).
            self.group.reach(r.revision).await?;
        }
        let out = self.group.propose(Op::Compact(r)).await?;
        out.result?;
        Ok(Response::new(CompactionResponse { header: Some(self.group.header(out.rev)) }))
    }
}
