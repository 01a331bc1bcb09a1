//! etcd's lock and election recipes run server-side (its v3lock and
//! v3election services), directly on the group: a contender's key is
//! `<name>/<lease id in hex>`, created in a txn and tied to its lease; the
//! contender with the lowest create revision holds the lock or leads.
//! Waiting re-checks after every applied revision (the watch hub's signal).

use crate::apply::Applied;
use crate::error::{Error, Result};
use crate::group::Group;
use std::sync::Arc;
use tessera_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use tessera_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use tessera_proto::etcdserverpb::request_op::Request;
use tessera_proto::etcdserverpb::response_op::Response;
use tessera_proto::etcdserverpb::*;
use tessera_proto::mvccpb::KeyValue;
use tessera_proto::tessera::command::command::Op;

pub fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

pub use shardmap::prefix_end;

pub fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = prefix_of(name);
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn create_rev_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        range_end: vec![],
    }
}

pub async fn txn(group: &Group, t: TxnRequest) -> Result<(TxnResponse, i64)> {
    let out = group.propose(Op::Txn(t)).await?;
    match out.result? {
        Applied::Txn(resp) => Ok((resp, out.rev)),
        other => Err(Error::Internal(format!("unexpected apply result {other:?}"))),
    }
}

/// Creates the contender's key (or finds it) and returns its create revision.
pub async fn enter(group: &Group, key: &[u8], value: &[u8], lease: i64) -> Result<(i64, KeyValue)> {
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    let get = RangeRequest { key: key.to_vec(), ..Default::default() };
    let (resp, rev) = txn(
        group,
        TxnRequest {
            compare: vec![create_rev_is(key, 0)],
            success: vec![RequestOp { request: Some(Request::RequestPut(put)) }],
            failure: vec![RequestOp { request: Some(Request::RequestRange(get)) }],
        },
    )
    .await?;
    if resp.succeeded {
        let kv =
            KeyValue { key: key.to_vec(), create_revision: rev, mod_revision: rev, version: 1, value: value.to_vec(), lease };
        return Ok((rev, kv));
    }
    match resp.responses.into_iter().next().and_then(|r| r.response) {
        Some(Response::ResponseRange(r)) if !r.kvs.is_empty() => {
            let kv = r.kvs.into_iter().next().expect("checked");
            Ok((kv.create_revision, kv))
        }
        _ => Err(Error::Internal("contender key vanished".into())),
    }
}

/// The oldest contender under `prefix`, read linearizably.
pub async fn first_contender(group: &Group, prefix: &[u8]) -> Result<(Option<KeyValue>, i64)> {
    group.read_index().await?;
    group.check_fences(prefix, &shardmap::prefix_end(prefix)).await?;
    let r = RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    };
    let (resp, rev) = group.sm.range(&r)?;
    Ok((resp.kvs.into_iter().next(), rev))
}

/// Waits until no contender under `prefix` was created before `my_rev`,
/// then checks the contender's own key still stands (its lease may have
/// expired meanwhile). Returns the revision at which it holds.
pub async fn wait_turn(group: &Arc<Group>, prefix: &[u8], key: &[u8], my_rev: i64) -> Result<i64> {
    let mut changed = group.sm.hub.subscribe();
    loop {
        let (first, rev) = first_contender(group, prefix).await?;
        match first {
            Some(kv) if kv.key == key && kv.create_revision == my_rev => return Ok(rev),
            Some(kv) if kv.create_revision < my_rev => {}
            // Our own key is gone: the lease expired or it was deleted.
            _ => return Err(Error::InvalidArgument("session is expired".into())),
        }
        if changed.changed().await.is_err() {
            return Err(Error::Stopped);
        }
    }
}

/// Runs `op` if `key` still has create revision `rev` (the contender
/// still holds its place); returns whether it ran and the revision after.
async fn if_created_at(group: &Group, key: &[u8], rev: i64, op: Request) -> Result<(bool, i64)> {
    let t =
        TxnRequest { compare: vec![create_rev_is(key, rev)], success: vec![RequestOp { request: Some(op) }], failure: vec![] };
    let (resp, after) = txn(group, t).await?;
    Ok((resp.succeeded, after))
}

pub async fn delete_if_created_at(group: &Group, key: &[u8], rev: i64) -> Result<(bool, i64)> {
    let del = DeleteRangeRequest { key: key.to_vec(), ..Default::default() };
    if_created_at(group, key, rev, Request::RequestDeleteRange(del)).await
}

pub async fn put_if_created_at(group: &Group, key: &[u8], rev: i64, value: &[u8], lease: i64) -> Result<(bool, i64)> {
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    if_created_at(group, key, rev, Request::RequestPut(put)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes() {
        assert_eq!(contender_key(b"lk", 255), b"lk/ff");
        assert_eq!(prefix_end(b"lk/"), b"lk0");
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }
}
