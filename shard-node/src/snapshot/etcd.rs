//! A group's state as etcd's backend lays it out (the buckets of etcd's
//! bbolt file), so a backup reads as etcd's to etcd's tools: `etcdctl
//! snapshot status` counts its keys and finds its revision there, and
//! `etcdctl snapshot restore` makes an etcd data directory of it.
//!
//! ```text
//! key        [main u64 BE]['_'][sub u64 BE]['t' if a tombstone] → mvccpb.KeyValue
//! meta       consistent_index → applied index (u64 BE); scheduledCompactRev, finishedCompactRev → [rev]
//! lease      [id u64 BE] → leasepb.Lease {ID, TTL}
//! auth       authEnabled → [0|1]; authRevision → u64 BE
//! authUsers  name → authpb.User;   authRoles  name → authpb.Role
//! members, members_removed, alarm   (empty: a restore names its own members)
//! ```
//!
//! Only the group's live history goes there: revisions a move staged here
//! and not adopted yet, and those of prefixes this group gave away, stay
//! in Tessera's own copy of the state beside them (`super::encode_backup`).

use super::bolt::Bucket;
use crate::engine::keys::{decode_i64, decode_pair, decode_u64};
use crate::error::{Error, Result};
use crate::fence::{Fences, META_FENCES};
use crate::mvcc::Place;
use prost::Message;
use tessera_proto::mvccpb::KeyValue;
use tessera_proto::tessera::command::AuthState;

/// etcd's lease record (`leasepb.Lease`; etcd keeps RemainingTTL only
/// with lease checkpoints, 0 otherwise).
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// etcd's revision key: main, '_', sub, both big-endian.
fn revision_key(main: i64, sub: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

/// The buckets etcd would hold for the state `entries` (the state tables'
/// keys without the group prefix, table byte first, in key order).
pub fn buckets<'a>(entries: impl Iterator<Item = Result<(&'a [u8], &'a [u8])>> + Clone) -> Result<Vec<Bucket>> {
    // The meta table in one pass (the fences decide what is live).
    let mut metas: std::collections::BTreeMap<&'a [u8], &'a [u8]> = Default::default();
    for e in entries.clone() {
        let (k, v) = e?;
        if let Some(name) = k.strip_prefix(b"m") {
            metas.insert(name, v);
        }
    }
    let meta = |name: &str| metas.get(name.as_bytes()).copied();
    let fences = Fences::decode(meta(META_FENCES))?;
    let (mut keys, mut leases) = (vec![], vec![]);
    for e in entries.clone() {
        let (k, v) = e?;
        match k.first() {
            Some(b'r') => {
                let (main, sub) = decode_pair(&k[1..])?;
                let kv = KeyValue::decode(v).map_err(|e| Error::Internal(format!("corrupt revision value: {e}")))?;
                if fences.place(&kv.key, sub) != Place::Live {
                    continue;
                }
                let mut key = revision_key(main, sub);
                if kv.version == 0 {
                    key.push(b't'); // etcd's tombstone mark
                }
                keys.push((key, v.to_vec()));
            }
            Some(b'l') => {
                let id = decode_i64(&k[1..])?;
                let (ttl, _) = decode_pair(v)?;
                leases.push((id.to_be_bytes().to_vec(), LeaseRecord { id, ttl, remaining_ttl: 0 }.encode_to_vec()));
            }
            _ => {}
        }
    }
    let mut meta_items = vec![];
    if let Some(applied) = meta(crate::state::META_APPLIED) {
        meta_items.push((b"consistent_index".to_vec(), decode_u64(applied)?.to_be_bytes().to_vec()));
    }
    let scheduled = meta(crate::mvcc::META_COMPACT).map(decode_i64).transpose()?.unwrap_or(0);
    let finished = meta(crate::mvcc::META_COMPACTED).map(decode_i64).transpose()?.unwrap_or(scheduled);
    if finished > 0 {
        meta_items.push((b"finishedCompactRev".to_vec(), revision_key(finished, 0)));
    }
    if scheduled > 0 {
        meta_items.push((b"scheduledCompactRev".to_vec(), revision_key(scheduled, 0)));
    }
    meta_items.sort();
    let auth = match meta(crate::state::META_AUTH) {
        Some(v) => AuthState::decode(v).map_err(|e| Error::Internal(format!("corrupt auth state: {e}")))?,
        None => AuthState::default(),
    };
    let auth_items = vec![
        (b"authEnabled".to_vec(), vec![u8::from(auth.enabled)]),
        (b"authRevision".to_vec(), auth.revision.to_be_bytes().to_vec()),
    ];
    let mut users: Vec<(Vec<u8>, Vec<u8>)> = auth.users.iter().map(|u| (u.name.clone(), u.encode_to_vec())).collect();
    let mut roles: Vec<(Vec<u8>, Vec<u8>)> = auth.roles.iter().map(|r| (r.name.clone(), r.encode_to_vec())).collect();
    users.sort();
    roles.sort();
    let bucket = |name: &str, items| Bucket { name: name.as_bytes().to_vec(), items };
    Ok(vec![
        bucket("key", keys),
        bucket("meta", meta_items),
        bucket("lease", leases),
        bucket("auth", auth_items),
        bucket("authUsers", users),
        bucket("authRoles", roles),
        bucket("members", vec![]),
        bucket("members_removed", vec![]),
        bucket("alarm", vec![]),
    ])
}
