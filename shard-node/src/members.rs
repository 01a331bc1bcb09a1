//! Group membership as etcd shows it (names, URLs, learner flag). The raft
//! conf state decides who votes; this table, replicated through the same
//! log, says who those members are.

use crate::engine::keys::{decode_u64, GroupKeys};
use crate::engine::{Engine, WriteBatch};
use crate::error::Result;
use prost::Message;
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
            if let Ok(m) = MemberContext::decode(v) {
                by_id.insert(decode_u64(keys.suffix(k)), m);
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

/// etcd-style member id: a stable hash of the member's peer URLs and the
/// cluster token, so every member computes the same ids from --initial-cluster.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = fnv1a(urls.join("").as_bytes());
    h = fnv1a_continue(h, token.as_bytes());
    if h == 0 {
        1
    } else {
        h
    }
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
