//! `tessera status`: the shard map with every replica's live view (role,
//! leader, keys, bytes), from placement's map and each replica's stats.

use serde::Serialize;
use shardmap::ShardMap;
use std::time::Duration;
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_proto::tessera::shard::StatsRequest;
use tessera_rpc::tls::Dialer;

#[derive(Serialize)]
pub struct ReplicaStatus {
    pub node: String,
    pub member_id: String,
    pub role: String,
    pub reachable: bool,
    pub keys: u64,
    pub bytes_in_use: u64,
    pub revision: i64,
    pub applied_index: u64,
}

#[derive(Serialize)]
pub struct GroupStatus {
    pub id: u64,
    pub on_ring: bool,
    pub leader: Option<String>,
    pub keys: u64,
    pub bytes_in_use: u64,
    pub revision: i64,
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Serialize)]
pub struct Status {
    pub epoch: u64,
    pub depth: usize,
    pub ring: Vec<u64>,
    pub pins: std::collections::BTreeMap<String, u64>,
    pub spreads: std::collections::BTreeMap<String, Vec<u64>>,
    /// Units kept on a group by a ring change (their own keys only).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub unit_pins: std::collections::BTreeMap<String, u64>,
    pub nodes: Vec<shardmap::NodeInfo>,
    pub groups: Vec<GroupStatus>,
}

async fn stats(d: &Dialer, url: &str, group: u64) -> Option<tessera_proto::tessera::shard::StatsResponse> {
    let ch = shardmap::watcher::channel(url, d).await.ok()?;
    let mut req = tessera_rpc::metadata::group_request(group, StatsRequest {});
    req.set_timeout(Duration::from_secs(1));
    Some(ShardClient::new(ch).stats(req).await.ok()?.into_inner())
}

pub async fn collect(d: &Dialer, map: &ShardMap) -> Status {
    let mut groups = vec![];
    for (id, g) in &map.groups {
        let mut replicas = vec![];
        for r in &g.replicas {
            let url = map.nodes.get(&r.node).map(|n| n.client_url.clone()).unwrap_or_default();
            let s = stats(d, &url, *id).await;
            let role = match &s {
                None => "unreachable",
                Some(s) if s.leader == r.member_id => "leader",
                Some(s) if s.is_learner => "learner",
                Some(_) if r.learner => "learner",
                Some(_) => "follower",
            };
            replicas.push(ReplicaStatus {
                node: r.node.clone(),
                member_id: format!("{:x}", r.member_id),
                role: role.into(),
                reachable: s.is_some(),
                keys: s.as_ref().map_or(0, |s| s.keys),
                bytes_in_use: s.as_ref().map_or(0, |s| s.bytes_in_use),
                revision: s.as_ref().and_then(|s| s.header.as_ref()).map_or(0, |h| h.revision),
                applied_index: s.as_ref().map_or(0, |s| s.applied_index),
            });
        }
        let best = replicas
            .iter()
            .find(|r| r.role == "leader")
            .or_else(|| replicas.iter().filter(|r| r.reachable).max_by_key(|r| r.applied_index));
        groups.push(GroupStatus {
            id: *id,
            on_ring: map.ring.contains(id),
            leader: replicas.iter().find(|r| r.role == "leader").map(|r| r.node.clone()),
            keys: best.map_or(0, |r| r.keys),
            bytes_in_use: best.map_or(0, |r| r.bytes_in_use),
            revision: best.map_or(0, |r| r.revision),
            replicas,
        });
    }
    Status {
        epoch: map.epoch,
        depth: map.depth,
        ring: map.ring.clone(),
        pins: map.pins.clone(),
        spreads: map.spreads.clone(),
        unit_pins: map.unit_pins.clone(),
        nodes: map.nodes.values().cloned().collect(),
        groups,
    }
}

pub fn print(s: &Status) {
    println!("shard map epoch {}  (units: up to {} slashes; ring groups {:?})", s.epoch, s.depth, s.ring);
    for (p, g) in &s.pins {
        println!("  pin    {p:?} -> group {g}");
    }
    for (p, gs) in &s.spreads {
        println!("  spread {p:?} -> groups {gs:?}");
    }
    for (u, g) in &s.unit_pins {
        println!("  unit   {u:?} (its own keys only) -> group {g}");
    }
    for g in &s.groups {
        println!(
            "group {}{}: leader {}, {} keys, {} bytes, revision {}",
            g.id,
            if g.on_ring { "" } else { " (off ring)" },
            g.leader.as_deref().unwrap_or("none"),
            g.keys,
            g.bytes_in_use,
            g.revision
        );
        for r in &g.replicas {
            println!("  {:<6} {:<16} {:<11} keys {:<8} applied {}", r.node, r.member_id, r.role, r.keys, r.applied_index);
        }
    }
}
