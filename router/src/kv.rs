//! etcd's KV service over the groups: a request whose keys fall in one
//! group goes there; a range over several groups is read at one revision
//! in each and merged; DeleteRange over several groups deletes in each
//! (atomic per group); a txn spanning groups is refused.

use crate::backends::{Backends, Prefer};
use crate::leases;
use futures::future::try_join_all;
use shardmap::map::Routing;
use std::collections::BTreeSet;
use std::sync::Arc;
use tessera_proto::etcdserverpb::kv_server::Kv;
use tessera_proto::etcdserverpb::request_op::Request as OpRequest;
use tessera_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct KvService {
    pub backends: Arc<Backends>,
}

pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";

fn empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

impl KvService {
    async fn range_in(&self, group: u64, req: RangeRequest) -> Result<RangeResponse, Status> {
        let prefer = if req.serializable { Prefer::Learner } else { Prefer::Leader };
        let resp = self.backends.call(group, prefer, false, req, |ch, r| async move { crate::backends::kv_client(ch).range(r).await }).await?;
        self.backends.observe(resp.header.as_ref());
        Ok(resp)
    }

    /// A range in `group` at revision `rev`, raising the group's watermark
    /// to `rev` first if it is behind.
    async fn range_at(&self, group: u64, mut req: RangeRequest, rev: i64) -> Result<RangeResponse, Status> {
        req.revision = rev;
        req.serializable = true; // the revision pins the data; the bump ensures it is final
        match self.range_in(group, req.clone()).await {
            // Only revisions some group has reached are raised to; past
            // every group's, the revision is in the future for all of them.
            Err(s) if s.message() == FUTURE_REV && rev <= self.known_revision().await => {
                self.backends.bump(group, rev).await?;
                req.serializable = false;
                self.range_in(group, req).await
            }
            other => other,
        }
    }

    /// The highest revision any group has reached, asking them if the
    /// cached one is not enough.
    async fn known_revision(&self) -> i64 {
        if let Ok(r) = self.backends.routing() {
            let groups: Vec<u64> = r.map.groups.keys().copied().collect();
            let _ = self.backends.current_revision(&groups).await;
        }
        self.backends.max_revision()
    }

    async fn cross_range(&self, groups: Vec<u64>, req: RangeRequest) -> Result<RangeResponse, Status> {
        let (rev, parts) = if req.revision > 0 {
            let parts = try_join_all(groups.iter().map(|g| self.range_at(*g, req.clone(), req.revision))).await?;
            (req.revision, parts)
        } else {
            // Read each group now; the highest revision R is the answer's.
            // Groups that answered below R are raised to R and read at R,
            // so every part shows the state at R.
            let mut live = req.clone();
            live.serializable = false;
            let first = try_join_all(groups.iter().map(|g| self.range_in(*g, live.clone()))).await?;
            let rev = first.iter().filter_map(|p| p.header.as_ref()).map(|h| h.revision).max().unwrap_or(0);
            let req = &req;
            let parts = try_join_all(groups.iter().zip(first).map(|(g, p)| async move {
                if p.header.as_ref().map(|h| h.revision) == Some(rev) {
                    Ok(p)
                } else {
                    self.range_at(*g, req.clone(), rev).await
                }
            }))
            .await?;
            (rev, parts)
        };
        let header = parts.iter().find_map(|p| p.header.clone()).map(|h| ResponseHeader { revision: rev, ..h });
        let mut merged = crate::merge::ranges(&req, parts);
        merged.header = header;
        Ok(merged)
    }

    async fn delete_in(&self, group: u64, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        let resp = self
            .backends
            .call(group, Prefer::Leader, true, req, |ch, r| async move { crate::backends::kv_client(ch).delete_range(r).await })
            .await?;
        self.backends.observe(resp.header.as_ref());
        Ok(resp)
    }
}

/// Every group a txn touches (compares and ops, nested txns included).
fn txn_groups(r: &Routing, t: &TxnRequest, out: &mut BTreeSet<u64>) {
    for c in &t.compare {
        out.extend(r.groups_for_range(&c.key, &c.range_end));
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(OpRequest::RequestRange(x)) => out.extend(r.groups_for_range(&x.key, &x.range_end)),
            Some(OpRequest::RequestPut(x)) => out.extend(r.group_of(&x.key)),
            Some(OpRequest::RequestDeleteRange(x)) => out.extend(r.groups_for_range(&x.key, &x.range_end)),
            Some(OpRequest::RequestTxn(x)) => txn_groups(r, x, out),
            None => {}
        }
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

pub fn spans_groups(groups: &BTreeSet<u64>) -> Status {
    let names: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    Status::failed_precondition(format!(
        "tessera: transaction spans groups [{}]; a transaction must keep its keys in one group (one placement unit, or prefixes pinned together)",
        names.join(", ")
    ))
}

/// Each call routes by the map it finds; `Backends::rerouting` runs it
/// again when a group refuses it for an older one.
impl KvService {
    async fn range_routed(&self, req: &RangeRequest) -> Result<RangeResponse, Status> {
        let req = req.clone();
        let r = self.backends.routing()?;
        let groups = r.groups_for_range(&req.key, &req.range_end);
        crate::metrics::RANGE_GROUPS.observe(groups.len() as f64);
        match groups.as_slice() {
            [] => Err(Status::unavailable("tessera: the shard map has no groups yet")),
            [g] => {
                let rev = req.revision;
                match self.range_in(*g, req.clone()).await {
                    Err(s) if s.message() == FUTURE_REV && rev <= self.known_revision().await => {
                        self.backends.bump(*g, rev).await?;
                        self.range_in(*g, req).await
                    }
                    other => other,
                }
            }
            _ => self.cross_range(groups, req).await,
        }
    }

    async fn put_routed(&self, req: &PutRequest) -> Result<PutResponse, Status> {
        let r = self.backends.routing()?;
        let group = r.group_of(&req.key).ok_or_else(|| Status::unavailable("tessera: the shard map has no groups yet"))?;
        let lease = [req.lease];
        let resp =
            leases::write_with_leases(&self.backends, group, &lease, req.clone(), |ch, r| async move { crate::backends::kv_client(ch).put(r).await })
                .await?;
        self.backends.observe(resp.header.as_ref());
        Ok(resp)
    }

    async fn delete_routed(&self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        let r = self.backends.routing()?;
        let groups = r.groups_for_range(&req.key, &req.range_end);
        match groups.as_slice() {
            [] => Err(Status::unavailable("tessera: the shard map has no groups yet")),
            [g] => self.delete_in(*g, req.clone()).await,
            _ => {
                // Atomic within each group, not across them (documented).
                let parts = try_join_all(groups.iter().map(|g| self.delete_in(*g, req.clone()))).await?;
                let header = parts.iter().filter_map(|p| p.header.clone()).max_by_key(|h| h.revision);
                let deleted = parts.iter().map(|p| p.deleted).sum();
                let mut prev_kvs: Vec<_> = parts.into_iter().flat_map(|p| p.prev_kvs).collect();
                prev_kvs.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(DeleteRangeResponse { header, deleted, prev_kvs })
            }
        }
    }

    async fn txn_routed(&self, req: &TxnRequest) -> Result<TxnResponse, Status> {
        let r = self.backends.routing()?;
        let mut groups = BTreeSet::new();
        txn_groups(&r, &req, &mut groups);
        if groups.len() > 1 {
            return Err(spans_groups(&groups));
        }
        // A txn without keys touches nothing: any group answers it.
        let group = match groups.first() {
            Some(g) => *g,
            None => *r.map.groups.keys().next().ok_or_else(|| Status::unavailable("tessera: the shard map has no groups yet"))?,
        };
        let mut ls = BTreeSet::new();
        txn_leases(&req, &mut ls);
        let ls: Vec<i64> = ls.into_iter().collect();
        let resp =
            leases::write_with_leases(&self.backends, group, &ls, req.clone(), |ch, r| async move { crate::backends::kv_client(ch).txn(r).await })
                .await?;
        self.backends.observe(resp.header.as_ref());
        Ok(resp)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        Ok(Response::new(self.backends.rerouting(|| self.range_routed(&req)).await?))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        Ok(Response::new(self.backends.rerouting(|| self.put_routed(&req)).await?))
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        Ok(Response::new(self.backends.rerouting(|| self.delete_routed(&req)).await?))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(self.backends.rerouting(|| self.txn_routed(&req)).await?))
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let req = req.into_inner();
        let r = self.backends.routing()?;
        let groups: Vec<u64> = r.map.groups.keys().copied().collect();
        // Every group compacts at the same revision; a group behind it is
        // raised first (its history up to there is then final).
        let results = futures::future::join_all(groups.iter().map(|g| {
            let req = req.clone();
            async move {
                let call = || {
                    self.backends
                        .call(*g, Prefer::Leader, true, req.clone(), |ch, r| async move { crate::backends::kv_client(ch).compact(r).await })
                };
                match call().await {
                    Err(s) if s.message() == FUTURE_REV => {
                        self.backends.bump(*g, req.revision).await?;
                        call().await
                    }
                    other => other,
                }
            }
        }))
        .await;
        let mut header = None;
        let mut first_err = None;
        let mut ok = 0;
        for r in results {
            match r {
                Ok(resp) => {
                    ok += 1;
                    header = header.or(resp.header);
                }
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        match first_err {
            // Already compacted somewhere (a retried fan-out): fine if the rest did.
            Some(e) if ok > 0 && e.message().contains("compacted") => Ok(Response::new(CompactionResponse { header })),
            Some(e) => Err(e),
            None => Ok(Response::new(CompactionResponse { header })),
        }
    }
}
