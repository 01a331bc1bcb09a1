//! Per-group maintenance an etcd admin runs on one cluster, here on one raft
//! group (the router answers these per-group calls with a pointer here):
//! `tessera group hashkv|snapshot|move-leader`, and waiting for a new
//! group's leader after `group add`.

use anyhow::{bail, Context};
use serde::Serialize;
use shardmap::ShardMap;
use std::io::Write;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tessera_proto::etcdserverpb::{HashKvRequest, MoveLeaderRequest, SnapshotRequest, StatusRequest};
use tessera_rpc::metadata::group_request;
use tessera_rpc::tls::Dialer;
use tonic::transport::Channel;

/// (node, member id, client URL) of each of `group`'s replicas, voters first.
fn replicas(map: &ShardMap, group: u64) -> anyhow::Result<Vec<(String, u64, String)>> {
    if !map.groups.contains_key(&group) {
        bail!("no group {group} in the shard map");
    }
    Ok(map.replica_urls(group).into_iter().map(|(r, u)| (r.node.clone(), r.member_id, u.to_string())).collect())
}

async fn maintenance(d: &Dialer, url: &str) -> anyhow::Result<MaintenanceClient<Channel>> {
    let ch = shardmap::watcher::channel(url, d).await.map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    Ok(MaintenanceClient::new(ch).max_decoding_message_size(64 << 20))
}

/// The member id of `group`'s leader, as its replicas see it (None: no leader).
pub async fn leader(d: &Dialer, map: &ShardMap, group: u64) -> anyhow::Result<Option<u64>> {
    for (_, _, url) in replicas(map, group)? {
        let Ok(mut m) = maintenance(d, &url).await else { continue };
        let mut req = group_request(group, StatusRequest {});
        req.set_timeout(Duration::from_secs(1));
        if let Ok(s) = m.status(req).await {
            let leader = s.into_inner().leader;
            if leader != 0 {
                return Ok(Some(leader));
            }
        }
    }
    Ok(None)
}

/// Waits (up to `within`) until `group` has a leader; its member id.
pub async fn wait_for_leader(p: &placement::PlacementClient, group: u64, within: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + within;
    loop {
        let map = p.map().await?;
        if let Some(l) = leader(p.dialer(), &map, group).await? {
            return Ok(l);
        }
        if Instant::now() > deadline {
            bail!("group {group} has no leader after {within:?} (are its nodes up? `tessera status`)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Serialize)]
pub struct MemberHash {
    pub node: String,
    pub member_id: String,
    pub hash: u32,
    pub hash_revision: i64,
    pub compact_revision: i64,
}

#[derive(Serialize)]
pub struct Hashes {
    pub group: u64,
    pub members: Vec<MemberHash>,
    pub errors: Vec<String>,
    /// Every member that answered has the same hash at the same revision.
    pub agree: bool,
}

/// etcd's HashKV on every replica of `group` at `rev` (0: each one's current).
pub async fn hashkv(d: &Dialer, map: &ShardMap, group: u64, rev: i64) -> anyhow::Result<Hashes> {
    let mut members = vec![];
    let mut errors = vec![];
    for (node, id, url) in replicas(map, group)? {
        let answer = async {
            let mut m = maintenance(d, &url).await?;
            anyhow::Ok(m.hash_kv(group_request(group, HashKvRequest { revision: rev })).await?.into_inner())
        };
        match answer.await {
            Ok(h) => members.push(MemberHash {
                node,
                member_id: format!("{id:x}"),
                hash: h.hash,
                hash_revision: h.hash_revision,
                compact_revision: h.compact_revision,
            }),
            Err(e) => errors.push(format!("{node}: {e}")),
        }
    }
    let agree = members.windows(2).all(|w| (w[0].hash, w[0].hash_revision) == (w[1].hash, w[1].hash_revision));
    Ok(Hashes { group, members, errors, agree })
}

pub fn print_hashes(h: &Hashes) -> String {
    let mut out: Vec<String> = h
        .members
        .iter()
        .map(|m| {
            format!(
                "{:<8} {:>16}  hash {:>10}  revision {:>8}  compacted {:>8}",
                m.node, m.member_id, m.hash, m.hash_revision, m.compact_revision
            )
        })
        .collect();
    out.extend(h.errors.iter().map(|e| format!("unreachable: {e}")));
    out.push(match (h.agree, h.members.len()) {
        (_, 0) => format!("group {}: no member answered", h.group),
        (true, n) => format!("group {}: the {n} members that answered agree", h.group),
        (false, _) => format!("group {}: members DIFFER (compare at one revision: --rev)", h.group),
    });
    out.join("\n")
}

#[derive(Serialize)]
pub struct Saved {
    pub group: u64,
    pub node: String,
    pub file: String,
    pub bytes: u64,
}

/// etcd's Snapshot of `group` from its first voter that answers, into `file`
/// (restorable by `shard-node`'s snapshot restore, as etcdutl's).
pub async fn snapshot(d: &Dialer, map: &ShardMap, group: u64, file: &str) -> anyhow::Result<Saved> {
    let mut last = anyhow::anyhow!("group {group} has no replica");
    for (node, _, url) in replicas(map, group)? {
        let streamed = async {
            let mut m = maintenance(d, &url).await?;
            let mut stream = m.snapshot(group_request(group, SnapshotRequest {})).await?.into_inner();
            let part = format!("{file}.part");
            let mut out = std::fs::File::create(&part).with_context(|| format!("creating {part}"))?;
            let mut bytes = 0u64;
            while let Some(chunk) = stream.message().await? {
                out.write_all(&chunk.blob)?;
                bytes += chunk.blob.len() as u64;
            }
            out.sync_all()?;
            std::fs::rename(&part, file)?;
            anyhow::Ok(bytes)
        };
        match streamed.await {
            Ok(bytes) => return Ok(Saved { group, node, file: file.into(), bytes }),
            Err(e) => last = e.context(format!("snapshot from {node}")),
        }
    }
    Err(last)
}

/// etcd's MoveLeader for `group`: its leadership to the replica on `node`.
pub async fn move_leader(d: &Dialer, map: &ShardMap, group: u64, node: &str) -> anyhow::Result<String> {
    let rs = replicas(map, group)?;
    let (_, target, _) =
        rs.iter().find(|(n, _, _)| n == node).with_context(|| format!("group {group} has no replica on {node}"))?;
    let leader = leader(d, map, group).await?.with_context(|| format!("group {group} has no leader now"))?;
    if leader == *target {
        return Ok(format!("the replica on {node} already leads group {group}"));
    }
    let (_, _, url) = rs
        .iter()
        .find(|(_, id, _)| *id == leader)
        .with_context(|| format!("group {group}'s leader {leader:x} is not in the map"))?;
    let mut m = maintenance(d, url).await?;
    m.move_leader(group_request(group, MoveLeaderRequest { target_id: *target })).await?;
    Ok(format!("group {group}'s leader is now the replica on {node} ({target:x})"))
}

/// `group join` / `group add --ring`: each move, then the ring change.
pub fn joined(j: &placement::api::RingJoined) -> String {
    let mut out: Vec<String> = j.moves.iter().map(crate::moves::summary).collect();
    let bytes: u64 = j.moves.iter().map(|m| m.bytes).sum();
    out.push(format!(
        "group {} is on the ring (map epoch {}): {} units moved there with {}; older maps refused for {} ms at the ring change",
        j.group,
        j.epoch,
        j.moves.len(),
        crate::moves::mb(bytes),
        j.flip_ms
    ));
    for k in &j.kept {
        out.push(format!(
            "unit {:?} stays on group {} (fewer slashes than the depth: it cannot move as a prefix)",
            k.unit, k.group
        ));
    }
    out.join("\n")
}
