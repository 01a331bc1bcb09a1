//! Request checks done before anything is proposed (etcd's v3rpc checks):
//! the errors etcd gives malformed keys, ranges and txns. Groups check every
//! request; a fuzz target feeds them decoded garbage (fuzz/).

use crate::errors::Error;
use std::collections::HashSet;
use tessera_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use tessera_proto::etcdserverpb::request_op::Request;
use tessera_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

type Result<T> = std::result::Result<T, Error>;

pub fn range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(Error::InvalidArgument("invalid sort option".into()));
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<()> {
    check_txn_ops(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: usize) -> Result<()> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(x)) => range(x)?,
            Some(Request::RequestPut(x)) => put(x)?,
            Some(Request::RequestDeleteRange(x)) => delete(x)?,
            Some(Request::RequestTxn(x)) => check_txn_ops(x, max_ops)?,
            // etcd's checkRequestOp: an empty op is refused (a gateway body
            // with misspelled fields decodes to one).
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval: `[start, end)`, a single key when `end` is empty,
/// everything from `start` when `end` is `\0`.
struct Del(Vec<u8>, Vec<u8>);

impl Del {
    fn contains(&self, k: &[u8]) -> bool {
        crate::key_range::key_in_range(k, &self.0, &self.1)
    }
}

/// etcd's rule: within one branch no key is put twice, and no key is both
/// put and deleted; the two branches of a nested txn exclude each other.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Del>)> {
    let mut dels: Vec<Del> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Del(d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    let hit = |dels: &[Del], k: &[u8]| dels.iter().any(|d| d.contains(k));
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hit(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || hit(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else { continue };
        if puts.contains(&p.key) || hit(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// A txn with no put or delete anywhere: served as a read (ReadIndex, no
/// log entry), as etcd does.
pub fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success.iter().chain(&r.failure).all(|op| match &op.request {
        Some(Request::RequestRange(_)) | None => true,
        Some(Request::RequestTxn(t)) => txn_is_read_only(t),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp { request: Some(Request::RequestTxn(TxnRequest { compare: vec![], success, failure })) }
    }

    #[test]
    fn duplicate_keys_as_etcd() {
        let t = |s| TxnRequest { compare: vec![], success: s, failure: vec![] };
        assert_eq!(txn(&t(vec![put_op("a"), put_op("a")]), 128), Err(Error::DuplicateKey));
        assert_eq!(txn(&t(vec![put_op("b"), del_op("a", "c")]), 128), Err(Error::DuplicateKey));
        assert!(txn(&t(vec![del_op("a", "c"), del_op("b", "d")]), 128).is_ok());
        // the two branches of a nested txn are exclusive
        assert!(txn(&t(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]), 128).is_ok());
        assert_eq!(txn(&t(vec![put_op("a"), txn_op(vec![put_op("a")], vec![])]), 128), Err(Error::DuplicateKey));
        assert_eq!(txn(&t(vec![put_op("a"); 129]), 128), Err(Error::TooManyOps));
    }

    /// etcd refuses an op with no request ("key not found"), nested too:
    /// what a gateway body with misspelled fields decodes to.
    #[test]
    fn empty_ops_are_refused() {
        let t = |s| TxnRequest { compare: vec![], success: s, failure: vec![] };
        assert_eq!(txn(&t(vec![RequestOp::default()]), 128), Err(Error::KeyNotFound));
        assert_eq!(txn(&t(vec![txn_op(vec![], vec![RequestOp::default()])]), 128), Err(Error::KeyNotFound));
    }
}
