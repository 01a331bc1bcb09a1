//! An etcd client that records every call it makes (raw gRPC, so the
//! history holds exactly what the endpoint answered: headers, revisions,
//! errors).

use super::recorder::{outcome_of, Recorder};
use crate::history::{Bytes, Call, CmpOp, CompareTarget, Kv, Outcome, Response, TxnOp, TxnResult};
use std::time::Duration;
use tessera_proto::etcdserverpb::compare::{CompareResult, CompareTarget as Target, TargetUnion};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::lease_client::LeaseClient;
use tessera_proto::etcdserverpb::request_op::Request as OpRequest;
use tessera_proto::etcdserverpb::response_op::Response as OpResponse;
use tessera_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use tessera_proto::mvccpb::KeyValue;
use tonic::transport::Channel;

/// How long one call may take before its outcome counts as unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub fn kv_of(kv: &KeyValue) -> Kv {
    Kv {
        value: Bytes::from(kv.value.clone()),
        mod_rev: kv.mod_revision,
        create_rev: kv.create_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

#[derive(Clone)]
pub struct Client {
    pub id: u32,
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    rec: Recorder,
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

impl Client {
    pub fn new(id: u32, channel: Channel, rec: Recorder) -> Self {
        Client {
            id,
            kv: KvClient::new(channel.clone()).max_decoding_message_size(usize::MAX),
            lease: LeaseClient::new(channel),
            rec,
        }
    }

    /// Runs `call` against the endpoint and records it; returns the response.
    pub async fn call(&mut self, call: Call) -> Option<Response> {
        let invoke = self.rec.now();
        let outcome = match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(1), self.send(&call)).await {
            Ok(Ok(r)) => Outcome::Ok(r),
            Ok(Err(s)) => outcome_of(&s),
            Err(_) => Outcome::Unknown("client timeout".into()),
        };
        let response = match &outcome {
            Outcome::Ok(r) => Some(r.clone()),
            _ => None,
        };
        self.rec.record(self.id, invoke, call, outcome);
        response
    }

    async fn send(&mut self, call: &Call) -> Result<Response, tonic::Status> {
        Ok(match call {
            Call::Get { key, revision, serializable } => {
                let r =
                    RangeRequest { key: key.to_vec(), revision: *revision, serializable: *serializable, ..Default::default() };
                let r = self.kv.range(request(r)).await?.into_inner();
                Response::Get { header_rev: header(&r.header), kv: r.kvs.first().map(kv_of) }
            }
            Call::Range { key, range_end, revision, limit, serializable } => {
                let r = RangeRequest {
                    key: key.to_vec(),
                    range_end: range_end.to_vec(),
                    revision: *revision,
                    limit: *limit,
                    serializable: *serializable,
                    ..Default::default()
                };
                let r = self.kv.range(request(r)).await?.into_inner();
                Response::Range {
                    header_rev: header(&r.header),
                    kvs: r.kvs.iter().map(|kv| (Bytes::from(kv.key.clone()), kv_of(kv))).collect(),
                    more: r.more,
                    count: r.count,
                }
            }
            Call::Put { key, value, lease, prev_kv } => {
                let r = PutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    lease: *lease,
                    prev_kv: *prev_kv,
                    ..Default::default()
                };
                let r = self.kv.put(request(r)).await?.into_inner();
                Response::Put { header_rev: header(&r.header), prev: r.prev_kv.as_ref().map(kv_of) }
            }
            Call::Delete { key, range_end } => {
                let r = DeleteRangeRequest { key: key.to_vec(), range_end: range_end.to_vec(), ..Default::default() };
                let r = self.kv.delete_range(request(r)).await?.into_inner();
                Response::Delete { header_rev: header(&r.header), deleted: r.deleted }
            }
            Call::Txn { compares, success, failure } => {
                let t = TxnRequest {
                    compare: compares.iter().map(compare).collect(),
                    success: success.iter().map(op).collect(),
                    failure: failure.iter().map(op).collect(),
                };
                let r = self.kv.txn(request(t)).await?.into_inner();
                let results = r
                    .responses
                    .iter()
                    .filter_map(|o| match &o.response {
                        Some(OpResponse::ResponseRange(g)) => Some(TxnResult::Get { kv: g.kvs.first().map(kv_of) }),
                        Some(OpResponse::ResponsePut(_)) => Some(TxnResult::Put),
                        Some(OpResponse::ResponseDeleteRange(d)) => Some(TxnResult::Delete { deleted: d.deleted }),
                        _ => None,
                    })
                    .collect();
                Response::Txn { header_rev: header(&r.header), succeeded: r.succeeded, results }
            }
            Call::LeaseGrant { ttl, id } => {
                let r = self.lease.lease_grant(request(LeaseGrantRequest { ttl: *ttl, id: *id })).await?.into_inner();
                Response::LeaseGrant { header_rev: header(&r.header), id: r.id, ttl: r.ttl }
            }
            Call::LeaseRevoke { id } => {
                let r = self.lease.lease_revoke(request(LeaseRevokeRequest { id: *id })).await?.into_inner();
                Response::LeaseRevoke { header_rev: header(&r.header) }
            }
            Call::LeaseKeepAlive { id } => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let _ = tx.send(LeaseKeepAliveRequest { id: *id }).await;
                let mut s =
                    self.lease.lease_keep_alive(request(tokio_stream::wrappers::ReceiverStream::new(rx))).await?.into_inner();
                let r = s.message().await?.ok_or_else(|| tonic::Status::unavailable("keepalive stream ended"))?;
                Response::LeaseKeepAlive { ttl: r.ttl }
            }
            Call::LeaseTimeToLive { id } => {
                let req = tessera_proto::etcdserverpb::LeaseTimeToLiveRequest { id: *id, keys: true };
                let r = self.lease.lease_time_to_live(request(req)).await?.into_inner();
                Response::LeaseTimeToLive { ttl: r.ttl, keys: r.keys.into_iter().map(Bytes::from).collect() }
            }
            Call::Compact { revision } => {
                let r = self.kv.compact(request(CompactionRequest { revision: *revision, physical: false })).await?.into_inner();
                Response::Compact { header_rev: header(&r.header) }
            }
        })
    }
}

fn header(h: &Option<tessera_proto::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

fn compare(c: &crate::history::Compare) -> Compare {
    let result = match c.op {
        CmpOp::Eq => CompareResult::Equal,
        CmpOp::NotEq => CompareResult::NotEqual,
        CmpOp::Less => CompareResult::Less,
        CmpOp::Greater => CompareResult::Greater,
    };
    let (target, union) = match &c.target {
        CompareTarget::ModRev(v) => (Target::Mod, TargetUnion::ModRevision(*v)),
        CompareTarget::CreateRev(v) => (Target::Create, TargetUnion::CreateRevision(*v)),
        CompareTarget::Version(v) => (Target::Version, TargetUnion::Version(*v)),
        CompareTarget::Value(v) => (Target::Value, TargetUnion::Value(v.to_vec())),
        CompareTarget::Lease(v) => (Target::Lease, TargetUnion::Lease(*v)),
    };
    Compare { result: result as i32, target: target as i32, key: c.key.to_vec(), target_union: Some(union), ..Default::default() }
}

fn op(o: &TxnOp) -> RequestOp {
    let request = match o {
        TxnOp::Get { key } => OpRequest::RequestRange(RangeRequest { key: key.to_vec(), ..Default::default() }),
        TxnOp::Put { key, value, lease } => {
            OpRequest::RequestPut(PutRequest { key: key.to_vec(), value: value.to_vec(), lease: *lease, ..Default::default() })
        }
        TxnOp::Delete { key } => OpRequest::RequestDeleteRange(DeleteRangeRequest { key: key.to_vec(), ..Default::default() }),
    };
    RequestOp { request: Some(request) }
}
