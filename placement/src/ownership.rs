//! Pins and spreads: changes of which group owns a prefix.
//!
//! A map change that moves a prefix must not let a router that still has
//! the old map put a key where the new map will not look. So, before the
//! map commits at epoch E, every group that owns part of the prefix now
//! applies a fence for it at E through its raft log (`shard-node`'s
//! `fence`): from then on it refuses calls under the prefix routed by an
//! older map, and the router waits for map E and routes again. The fence
//! answers how many keys the group holds under the prefix once it is in
//! place; data moves between groups are a later feature, so only a prefix
//! without keys changes owner. The new owners are then raised past the
//! old owners' revision at the fence, so a watch that the fence ended and
//! the router resumed on the new owners from there misses no event.
//!
//! If the map changed in between (another admin, a node registering), the
//! fence's epoch is no longer the next one and routers with that newer map
//! may have written past it: fence again at the new epoch and recount. If
//! the move is refused after fencing, one more epoch lifts the fence (the
//! routers' maps pass it), so the prefix stays writable where it is.

use crate::admin::{fail, from_update, group_request, map_reply, on_group, Admin, Reply};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use shardmap::store::update;
use shardmap::ShardMap;
use std::sync::Arc;
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_proto::tessera::shard::{BumpRequest, FenceRequest};

/// How often a move is fenced again when the map keeps changing under it.
const ATTEMPTS: usize = 5;

#[derive(Deserialize)]
pub struct PinRequest {
    pub prefix: String,
    pub group: u64,
}

pub async fn pin(State(a): State<Arc<Admin>>, Json(req): Json<PinRequest>) -> Reply {
    let PinRequest { prefix, group } = req;
    move_prefix(&a, &prefix, &[group], |map| {
        if map.pins.get(&prefix) == Some(&group) {
            return false;
        }
        map.spreads.remove(&prefix);
        map.pins.insert(prefix.clone(), group);
        true
    })
    .await
}

#[derive(Deserialize)]
pub struct SpreadRequest {
    pub prefix: String,
    pub groups: Vec<u64>,
}

pub async fn spread(State(a): State<Arc<Admin>>, Json(req): Json<SpreadRequest>) -> Reply {
    let SpreadRequest { prefix, groups } = req;
    if groups.is_empty() {
        return Err(fail(StatusCode::BAD_REQUEST, "spread needs at least one group"));
    }
    move_prefix(&a, &prefix, &groups, |map| {
        if map.spreads.get(&prefix) == Some(&groups) {
            return false;
        }
        map.pins.remove(&prefix);
        map.spreads.insert(prefix.clone(), groups.clone());
        true
    })
    .await
}

/// Fences `prefix` in its current owners, then commits `change` (which
/// answers whether it changed anything) at the fence's epoch.
async fn move_prefix(a: &Admin, prefix: &str, to: &[u64], change: impl Fn(&mut ShardMap) -> bool) -> Reply {
    if prefix.is_empty() {
        return Err(fail(StatusCode::BAD_REQUEST, "a prefix is needed (the empty prefix is every key)"));
    }
    for _ in 0..ATTEMPTS {
        let map = update(&a.store_url, |_| Ok(false)).await.map_err(from_update)?;
        if let Some(g) = to.iter().find(|g| !map.groups.contains_key(g)) {
            return Err(fail(StatusCode::BAD_REQUEST, format!("no group {g}")));
        }
        if !change(&mut map.clone()) {
            return map_reply(&map); // already so
        }
        let owners = map.clone().routing().groups_for_range(prefix.as_bytes(), &shardmap::prefix_end(prefix.as_bytes()));
        let epoch = map.epoch + 1;
        let fenced = match fence(&map, prefix, &owners, epoch).await {
            Ok((keys, revision)) if keys == 0 => raise(&map, to, revision).await.map(|_| keys),
            other => other.map(|(keys, _)| keys),
        };
        let keys = match fenced {
            Ok(k) => k,
            Err(e) => {
                lift(a, epoch).await;
                return Err(fail(StatusCode::SERVICE_UNAVAILABLE, e));
            }
        };
        if keys > 0 {
            lift(a, epoch).await;
            return Err(fail(
                StatusCode::CONFLICT,
                format!("prefix {prefix:?} already holds {keys} keys; moving data between groups is not supported yet"),
            ));
        }
        let mut raced = false;
        let committed = update(&a.store_url, |m| {
            raced = m.epoch != map.epoch;
            Ok(!raced && change(m))
        })
        .await
        .map_err(from_update)?;
        if !raced {
            if committed.epoch < epoch {
                lift(a, epoch).await; // someone made the same change first
            }
            return map_reply(&committed);
        }
        tracing::info!(prefix, epoch, now = committed.epoch, "map changed while fencing; fencing again");
    }
    Err(fail(StatusCode::SERVICE_UNAVAILABLE, "the map kept changing while fencing the prefix; try again"))
}

/// Fences `prefix` at `epoch` in each of `groups`; answers the keys they
/// hold under it with the fence applied, and the highest revision of theirs
/// at the fence.
async fn fence(map: &ShardMap, prefix: &str, groups: &[u64], epoch: u64) -> Result<(i64, i64), String> {
    let req = FenceRequest { prefix: prefix.as_bytes().to_vec(), epoch };
    let answers = futures::future::join_all(groups.iter().map(|g| {
        on_group(map, *g, |ch| {
            let req = group_request(*g, req.clone());
            async move { ShardClient::new(ch).fence(req).await }
        })
    }))
    .await;
    let (mut keys, mut revision) = (0, 0);
    for a in answers {
        let a = a.map_err(|e| format!("fencing {prefix:?}: {e}"))?;
        keys += a.keys;
        revision = revision.max(a.header.map_or(0, |h| h.revision));
    }
    Ok((keys, revision))
}

/// Raises each of `groups` past `revision`, so every event they will have
/// under the prefix comes after the old owners' last one (a watch routed
/// again from there misses none).
async fn raise(map: &ShardMap, groups: &[u64], revision: i64) -> Result<(), String> {
    let answers = futures::future::join_all(groups.iter().map(|g| {
        on_group(map, *g, |ch| {
            let req = group_request(*g, BumpRequest { revision });
            async move { ShardClient::new(ch).bump(req).await }
        })
    }))
    .await;
    answers.into_iter().map(|a| a.map(|_| ())).collect::<Result<(), String>>().map_err(|e| format!("raising the new owners: {e}"))
}

/// Moves the map past a fence that did not lead to a change, so routers
/// stop being refused under the prefix (a no-op if the map already is).
async fn lift(a: &Admin, epoch: u64) {
    if let Err(e) = update(&a.store_url, |m| Ok(m.epoch < epoch)).await {
        tracing::warn!(error = %e, epoch, "could not lift a fence; the next map change will");
    }
}
