//! Group membership as etcd shows it (names, URLs, learner flag). The raft
//! conf state decides who votes; this table, replicated through the same
//! log, says who those members are.

use crate::engine::keys::{decode_u64, GroupKeys};
use crate::engine::{Engine, WriteBatch};
use crate::error::Result;
use prost::Message;
use sha1::Digest;
use std::collections::BTreeMap;
use tessera_proto::etcdserverpb::Member;
use tessera_proto::tessera::command::MemberContext;

#[derive(Default, Clone, Debug)]
pub struct Members {
    by_id: BTreeMap<u64, MemberContext>,
    /// Changes with every upsert/remove, so the transport knows to refresh.
    version: u64,
}

impl Members {
    pub fn load(engine: &dyn Engine, keys: &GroupKeys) -> Result<Self> {
        let (start, end) = keys.table(b'n');
        let mut by_id = BTreeMap::new();
        engine.scan(&start, &end, &mut |k, v| {
            if let (Ok(id), Ok(m)) = (decode_u64(keys.suffix(k)), MemberContext::decode(v)) {
                by_id.insert(id, m);
            }
            true
        })?;
        Ok(Self { by_id, version: 0 })
    }

    pub fn upsert(&mut self, m: MemberContext, keys: &GroupKeys, batch: &mut WriteBatch) {
        batch.put(keys.member(m.id), m.encode_to_vec());
        self.by_id.insert(m.id, m);
        self.version += 1;
    }

    pub fn remove(&mut self, id: u64, keys: &GroupKeys, batch: &mut WriteBatch) {
        batch.delete(keys.member(id));
        self.by_id.remove(&id);
        self.version += 1;
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn all(&self) -> impl Iterator<Item = &MemberContext> {
        self.by_id.values()
    }

    pub fn get(&self, id: u64) -> Option<&MemberContext> {
        self.by_id.get(&id)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.by_id.keys().copied().collect()
    }

    pub fn to_proto(&self) -> Vec<Member> {
        self.by_id
            .values()
            .map(|m| Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect()
    }
}

/// etcd's member id (membership.NewMember): the first 8 bytes, big-endian,
/// of SHA-1 over the sorted peer URLs and the cluster token — every member
/// computes the same ids from --initial-cluster, and they are etcd's own
/// (clients that print or compare them, like etcd's e2e tests, see etcd's).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = sha1::Sha1::new();
    urls.iter().for_each(|u| h.update(u.as_bytes()));
    h.update(token.as_bytes());
    nonzero(first_u64(&h.finalize()))
}

/// etcd's cluster id (RaftCluster.genID): SHA-1 over the members' ids,
/// sorted, each 8 bytes big-endian.
pub fn cluster_id(members: &[u64]) -> u64 {
    let mut ids = members.to_vec();
    ids.sort();
    let mut h = sha1::Sha1::new();
    ids.iter().for_each(|id| h.update(id.to_be_bytes()));
    nonzero(first_u64(&h.finalize()))
}

fn first_u64(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest[..8].try_into().expect("SHA-1 is 20 bytes"))
}

/// raft has no member 0 (a hash of 0 is as likely as any other value).
fn nonzero(id: u64) -> u64 {
    id.max(1)
}

pub fn fnv1a(b: &[u8]) -> u64 {
    fnv1a_continue(0xcbf2_9ce4_8422_2325, b)
}

fn fnv1a_continue(mut h: u64, b: &[u8]) -> u64 {
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids etcd 3.4 gives a one-member cluster of its e2e harness
    /// (--initial-cluster-token new, peer https://localhost:20001): its
    /// TestCtlV3GetFormat expects them in a protobuf-encoded header.
    #[test]
    fn ids_are_etcds() {
        let member = member_id(&["https://localhost:20001".into()], "new");
        assert_eq!(member, 0x00a8_f345_8387_986d);
        assert_eq!(cluster_id(&[member]), 0x34c2_1a2d_427d_b393);
        // Order of URLs and of members does not matter.
        let urls = ["http://b:2380".to_string(), "http://a:2380".to_string()];
        assert_eq!(member_id(&urls, "t"), member_id(&[urls[1].clone(), urls[0].clone()], "t"));
        assert_eq!(cluster_id(&[1, 2, 3]), cluster_id(&[3, 1, 2]));
        assert_ne!(member_id(&urls, "t"), member_id(&urls, "u"), "the token counts");
    }
}
