//! Leases: once a lease is gone, its keys are gone. A lease is gone when a
//! LeaseRevoke of it completed, or when its expiry was observed (a
//! KeepAlive answered a TTL of 0 or less, a TimeToLive answered -1). A read
//! at the latest revision invoked after that must not return a key attached
//! to it, and a put attaching a key to it must not succeed (etcd answers
//! "lease not found"). Reads invoked before are not held to it: they may be
//! linearized before the revocation. A lease granted again with the same id
//! starts a new life.

use super::{Checker, Violation};
use crate::history::{describe, Call, History, Kv, Response, TxnOp, TxnResult};
use std::collections::BTreeMap;

pub fn check(h: &History) -> Vec<Violation> {
    let ends = lease_ends(h);
    let mut out = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        let Some(resp) = op.response() else { continue };
        let gone = |lease: i64| -> Option<usize> {
            let lives = ends.get(&lease)?;
            lives.iter().find(|(end, _, regrant)| *end < op.invoke && regrant.is_none_or(|g| op.invoke < g)).map(|l| l.1)
        };
        for (key, lease, what) in attached(op, resp) {
            if lease == 0 {
                continue;
            }
            if let Some(by) = gone(lease) {
                let msg = format!(
                    "{}: {what} {key} attached to lease {lease:x}, which was gone after {}",
                    describe(h, i),
                    describe(h, by)
                );
                out.push(Violation::new(Checker::Leases, msg, vec![by, i]));
            }
        }
    }
    out
}

/// Per lease: (when it was seen gone, by which op, when it was granted again).
fn lease_ends(h: &History) -> BTreeMap<i64, Vec<(u64, usize, Option<u64>)>> {
    let mut ends: BTreeMap<i64, Vec<(u64, usize, Option<u64>)>> = BTreeMap::new();
    let mut grants: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        let (Some(resp), Some(done)) = (op.response(), op.complete) else {
            continue;
        };
        let id = match (&op.call, resp) {
            (Call::LeaseRevoke { id }, Response::LeaseRevoke { .. }) => *id,
            (Call::LeaseKeepAlive { id }, Response::LeaseKeepAlive { ttl }) if *ttl <= 0 => *id,
            (Call::LeaseTimeToLive { id }, Response::LeaseTimeToLive { ttl, .. }) if *ttl == -1 => *id,
            (Call::LeaseGrant { .. }, Response::LeaseGrant { id, .. }) => {
                grants.entry(*id).or_default().push(op.invoke);
                continue;
            }
            _ => continue,
        };
        ends.entry(id).or_default().push((done, i, None));
    }
    for (id, lives) in ends.iter_mut() {
        for life in lives.iter_mut() {
            life.2 = grants.get(id).and_then(|g| g.iter().filter(|&&t| t > life.0).min().copied());
        }
    }
    ends
}

/// The keys a successful op read at the latest revision (with their lease)
/// or attached to a lease.
fn attached<'a>(op: &'a crate::history::Op, resp: &'a Response) -> Vec<(&'a crate::history::Bytes, i64, &'static str)> {
    let read = |kv: &Kv| kv.lease;
    match (&op.call, resp) {
        (Call::Get { key, revision: 0, serializable: false }, Response::Get { kv: Some(kv), .. }) => {
            vec![(key, read(kv), "read")]
        }
        (Call::Range { revision: 0, serializable: false, .. }, Response::Range { kvs, .. }) => {
            kvs.iter().map(|(k, kv)| (k, read(kv), "read")).collect()
        }
        (Call::Put { key, lease, .. }, Response::Put { .. }) => vec![(key, *lease, "put")],
        (Call::Txn { success, failure, .. }, Response::Txn { succeeded, results, .. }) => {
            let branch = if *succeeded { success } else { failure };
            branch
                .iter()
                .zip(results)
                .filter_map(|(o, r)| match (o, r) {
                    (TxnOp::Get { key }, TxnResult::Get { kv: Some(kv) }) => Some((key, read(kv), "read")),
                    (TxnOp::Put { key, lease, .. }, TxnResult::Put) => Some((key, *lease, "put")),
                    _ => None,
                })
                .collect()
        }
        _ => Vec::new(),
    }
}
