//! Building blocks of txn requests for tests: ops and compares by key.

use tessera_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use tessera_proto::etcdserverpb::request_op::Request as Op;
use tessera_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp};

/// Put `v` at `k` (lease 0: none).
pub fn put(k: &str, v: &str, lease: i64) -> RequestOp {
    RequestOp { request: Some(Op::RequestPut(PutRequest { key: k.into(), value: v.into(), lease, ..Default::default() })) }
}

/// Get `k`.
pub fn get(k: &str) -> RequestOp {
    RequestOp { request: Some(Op::RequestRange(RangeRequest { key: k.into(), ..Default::default() })) }
}

/// `k`'s mod revision is `rev` (0: `k` does not exist).
pub fn mod_is(k: &str, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: k.into(),
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}
