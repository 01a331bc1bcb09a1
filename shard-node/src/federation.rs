//! Federated mode: this node registers its addresses with placement,
//! follows the shard map, and hosts the replicas the map assigns to it.
//! The map is the desired state and this loop converges on it, so a node
//! that restarts or misses a change catches up from the latest map; the
//! replicas it already hosts resume from its own data without placement.

use crate::engine::keys::GroupKeys;
use crate::engine::WriteBatch;
use crate::members::fnv1a;
use crate::node::Node;
use crate::replica::{has_identity, Bootstrap};
use shardmap::map::Routing;
use shardmap::NodeInfo;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::tessera::command::MemberContext;

/// Node-level records live under a group id no group uses.
const NODE_RECORDS: u64 = u64::MAX;

/// The cluster id of a federation group (the same on all its members).
pub fn cluster_id(group: u64) -> u64 {
    fnv1a(format!("tessera-group-{group}").as_bytes())
}

fn hosted_key() -> Vec<u8> {
    GroupKeys::new(NODE_RECORDS).meta("hosted")
}

fn hosted(node: &Node) -> BTreeSet<u64> {
    match node.parts.engine.get(&hosted_key()) {
        Ok(Some(v)) => serde_json::from_slice(&v).unwrap_or_default(),
        _ => BTreeSet::new(),
    }
}

fn record_hosted(node: &Node, groups: &BTreeSet<u64>) -> anyhow::Result<()> {
    let mut batch = WriteBatch::default();
    batch.put(hosted_key(), serde_json::to_vec(groups)?);
    node.parts.engine.write(batch, true)?;
    Ok(())
}

/// Starts every replica this node hosted before, from its own data.
pub async fn resume_hosted(node: &Arc<Node>) -> anyhow::Result<()> {
    for g in hosted(node) {
        if has_identity(&*node.parts.engine, g) {
            node.start_replica(g, Bootstrap::Resume).await?;
        }
    }
    Ok(())
}

/// Stops a replica removed from its group and deletes its data (log,
/// state machine, identity), so a restart does not bring it back.
async fn retire(node: &Arc<Node>, group: u64) -> anyhow::Result<()> {
    node.stop_replica(group).await;
    let _guard = node.lifecycle.lock().await;
    let (start, end) = GroupKeys::new(group).all();
    let mut batch = WriteBatch::default();
    batch.delete_range(start.clone(), end.clone());
    node.parts.engine.write(batch, true)?;
    let mut h = hosted(node);
    if h.remove(&group) {
        record_hosted(node, &h)?;
    }
    node.parts.engine.compact_range(&start, &end);
    tracing::info!(group, "replica removed from its group: stopped, data deleted");
    Ok(())
}

pub async fn run(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let config = &node.parts.config;
    let endpoints = config.placement_endpoints.to_vec();
    let me = NodeInfo {
        name: config.name.clone(),
        peer_url: config.advertise_peer_urls()[0].clone(),
        client_url: config.advertise_client_urls.first().unwrap_or_default().to_string(),
    };
    // Register (or update our addresses), retrying until placement answers.
    let store = shardmap::store::Store::new(endpoints.clone(), node.parts.dialer.clone());
    loop {
        let r = store
            .update(|map| {
                if map.nodes.get(&me.name) == Some(&me) {
                    return Ok::<_, std::convert::Infallible>(false);
                }
                map.nodes.insert(me.name.clone(), me.clone());
                Ok(true)
            })
            .await;
        match r {
            Ok(_) => break,
            Err(e) => tracing::debug!(error = %e, "registering with placement"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.changed() => return,
        }
    }
    tracing::info!(name = me.name, "registered with placement");
    let mut maps = shardmap::watcher::follow(endpoints.clone(), node.parts.dialer.clone());
    let (auth_tx, mut auth) = tokio::sync::watch::channel(None);
    let followed = crate::auth::federation::FollowedAuthState(auth_tx);
    tokio::spawn(shardmap::watcher::follow_key(endpoints, node.parts.dialer.clone(), followed));
    loop {
        let map = maps.borrow_and_update().clone();
        if let Some(map) = map {
            reconcile(&node, &map).await;
        }
        if let Some(state) = auth.borrow_and_update().clone() {
            crate::auth::federation::install_led(&node, &state);
        }
        tokio::select! {
            r = maps.changed() => if r.is_err() { return },
            r = auth.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
            // Retry what failed (a join whose group had no leader yet).
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Starts the replicas the map gives this node and it does not run yet;
/// retires those the map took away.
async fn reconcile(node: &Arc<Node>, routing: &Routing) {
    let map = &routing.map;
    let name = &node.parts.config.name;
    for r in node.replicas() {
        // Placement drops a replica from the map only after the group
        // committed its removal, so the data is no longer needed. A group
        // missing from the map altogether is left alone (a map that lost
        // it is more likely a mistake than an instruction); one `group
        // remove` took out is listed as removed.
        let id = r.group.id;
        let removed = map.removed_groups.contains(&id);
        if removed || map.groups.get(&id).is_some_and(|info| info.replica_on(name).is_none()) {
            if let Err(e) = retire(node, id).await {
                tracing::error!(group = id, error = %e, "retiring a removed replica");
            }
        }
    }
    for (id, info) in &map.groups {
        let Some(mine) = info.replica_on(name) else {
            continue;
        };
        if node.replica(*id).is_some() {
            continue;
        }
        let boot = if has_identity(&*node.parts.engine, *id) {
            Bootstrap::Resume
        } else if mine.initial {
            let members = info
                .replicas
                .iter()
                .filter(|r| r.initial)
                .filter_map(|r| {
                    let n = map.nodes.get(&r.node)?;
                    Some(MemberContext {
                        id: r.member_id,
                        name: r.node.clone(),
                        peer_urls: vec![n.peer_url.clone()],
                        client_urls: vec![n.client_url.clone()],
                        is_learner: r.learner,
                    })
                })
                .collect();
            Bootstrap::New { member_id: mine.member_id, cluster_id: cluster_id(*id), members, restore_from: String::new() }
        } else {
            let peer_urls = info
                .replicas
                .iter()
                .filter(|r| r.node != *name)
                .filter_map(|r| map.nodes.get(&r.node))
                .map(|n| n.peer_url.clone())
                .collect();
            Bootstrap::Join { peer_urls }
        };
        let node = node.clone();
        let id = *id;
        // A join waits on its peers: never hold up the other groups.
        tokio::spawn(async move {
            match node.start_replica(id, boot).await {
                Ok(_) => {
                    let _guard = node.lifecycle.lock().await;
                    let mut h = hosted(&node);
                    if h.insert(id) {
                        if let Err(e) = record_hosted(&node, &h) {
                            tracing::error!(error = %e, "recording hosted groups");
                        }
                    }
                    tracing::info!(group = id, "replica started");
                }
                Err(e) => tracing::warn!(group = id, error = %e, "cannot start replica yet"),
            }
        });
    }
}
