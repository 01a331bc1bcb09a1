//! Placement's admin API (JSON over HTTP on its client port), used by the
//! `tessera` CLI. Every change is one compare-and-swap of the map in
//! placement's own store (`shardmap::store::update`), so concurrent admins
//! and node registrations never lose each other's changes.

use crate::assign;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use shardmap::store::{update, UpdateError};
use shardmap::{GroupInfo, Replica, ShardMap};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tessera_proto::etcdserverpb::cluster_client::ClusterClient;
use tessera_proto::etcdserverpb::{MemberAddRequest, MemberRemoveRequest};

#[derive(Clone)]
pub struct Admin {
    /// This placement member's own client URL (its store's etcd API).
    pub store_url: String,
}

pub(crate) type Reply = Result<Json<serde_json::Value>, (StatusCode, Json<serde_json::Value>)>;

pub(crate) fn fail(code: StatusCode, msg: impl ToString) -> (StatusCode, Json<serde_json::Value>) {
    (code, Json(serde_json::json!({ "error": msg.to_string() })))
}

pub(crate) fn from_update(e: UpdateError) -> (StatusCode, Json<serde_json::Value>) {
    match e {
        UpdateError::Refused(m) => fail(StatusCode::BAD_REQUEST, m),
        UpdateError::Fetch(f) => fail(StatusCode::SERVICE_UNAVAILABLE, f),
    }
}

pub(crate) fn map_reply(map: &ShardMap) -> Reply {
    Ok(Json(serde_json::to_value(map).map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))?))
}

pub fn routes(admin: Admin) -> Router {
    Router::new()
        .route("/tessera/v1/map", get(get_map))
        .route("/tessera/v1/init", post(init))
        .route("/tessera/v1/groups", post(add_group))
        .route("/tessera/v1/groups/{id}/learners", post(add_learner))
        .route("/tessera/v1/groups/{id}/replicas/{node}", delete(remove_replica))
        .route("/tessera/v1/pins", put(crate::ownership::pin))
        .route("/tessera/v1/spreads", put(crate::ownership::spread))
        .with_state(Arc::new(admin))
}

async fn get_map(State(a): State<Arc<Admin>>) -> Reply {
    map_reply(&update(&a.store_url, |_| Ok(false)).await.map_err(from_update)?)
}

#[derive(Deserialize)]
pub struct InitRequest {
    pub groups: usize,
    pub replicas: usize,
    #[serde(default)]
    pub learners: usize,
}

/// The first groups of a federation, all on the ring. Only while the map
/// has no group (so no data can exist); a no-op once it has.
async fn init(State(a): State<Arc<Admin>>, Json(req): Json<InitRequest>) -> Reply {
    if req.groups == 0 {
        return Err(fail(StatusCode::BAD_REQUEST, "groups must be at least 1"));
    }
    let map = update(&a.store_url, |map| {
        if !map.groups.is_empty() {
            return Ok(false);
        }
        for _ in 0..req.groups {
            let id = map.next_group;
            let replicas = assign::new_group(map, id, req.replicas, req.learners)?;
            map.groups.insert(id, GroupInfo { id, replicas });
            map.ring.push(id);
            map.next_group += 1;
        }
        Ok(true)
    })
    .await
    .map_err(from_update)?;
    map_reply(&map)
}

#[derive(Deserialize)]
pub struct GroupRequest {
    pub replicas: usize,
    #[serde(default)]
    pub learners: usize,
}

/// A new group, off the ring: give it prefixes with pin or spread.
async fn add_group(State(a): State<Arc<Admin>>, Json(req): Json<GroupRequest>) -> Reply {
    let mut created = 0;
    let map = update(&a.store_url, |map| {
        let id = map.next_group;
        let replicas = assign::new_group(map, id, req.replicas, req.learners)?;
        map.groups.insert(id, GroupInfo { id, replicas });
        map.next_group += 1;
        created = id;
        Ok(true)
    })
    .await
    .map_err(from_update)?;
    Ok(Json(serde_json::json!({ "group": created, "epoch": map.epoch, "replicas": map.groups[&created].replicas })))
}

pub(crate) fn group_request<T>(group: u64, msg: T) -> tonic::Request<T> {
    let mut r = shardmap::group_request(group, msg);
    r.set_timeout(Duration::from_secs(10));
    r
}

/// Client URLs of a group's replicas, voters first.
fn group_urls(map: &ShardMap, group: u64) -> Vec<String> {
    let Some(g) = map.groups.get(&group) else {
        return vec![];
    };
    let mut rs: Vec<&Replica> = g.replicas.iter().collect();
    rs.sort_by_key(|r| r.learner);
    rs.iter().filter_map(|r| map.nodes.get(&r.node)).map(|n| n.client_url.clone()).collect()
}

/// Calls `group` on its replicas in turn (voters first) until one answers.
pub(crate) async fn on_group<R, Fut>(map: &ShardMap, group: u64, call: impl Fn(Channel) -> Fut) -> Result<R, String>
where
    Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let mut last = String::from("no reachable member");
    for url in group_urls(map, group) {
        match shardmap::watcher::channel(&url).await {
            Ok(ch) => match call(ch).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(e) => last = e.message().to_string(),
            },
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("group {group}: {last}"))
}

#[derive(Deserialize, Default)]
pub struct LearnerRequest {
    #[serde(default)]
    pub node: Option<String>,
}

/// Adds a learner: a raft conf change in the group first (etcd's member
/// add), then the map names the node, which joins and catches up.
async fn add_learner(State(a): State<Arc<Admin>>, Path(group): Path<u64>, body: Option<Json<LearnerRequest>>) -> Reply {
    let map = update(&a.store_url, |_| Ok(false)).await.map_err(from_update)?;
    let node = match body.and_then(|b| b.0.node) {
        Some(n) => n,
        None => assign::extra_replica(&map, group).map_err(|e| fail(StatusCode::BAD_REQUEST, e))?,
    };
    let info = map.nodes.get(&node).ok_or_else(|| fail(StatusCode::BAD_REQUEST, format!("no node {node}")))?.clone();
    if map.groups.get(&group).is_none_or(|g| g.replica_on(&node).is_some()) {
        return Err(fail(StatusCode::BAD_REQUEST, format!("group {group} does not exist or already has a replica on {node}")));
    }
    let added = on_group(&map, group, |ch| {
        let req = MemberAddRequest { peer_ur_ls: vec![info.peer_url.clone()], is_learner: true };
        let req = group_request(group, req);
        async move { ClusterClient::new(ch).member_add(req).await }
    })
    .await
    .map_err(|e| fail(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let member_id = added.member.map(|m| m.id).ok_or_else(|| fail(StatusCode::SERVICE_UNAVAILABLE, "member add answered no member"))?;
    let map = update(&a.store_url, |map| {
        let g = map.groups.get_mut(&group).ok_or("group vanished")?;
        g.replicas.push(Replica { node: node.clone(), member_id, learner: true, initial: false });
        Ok(true)
    })
    .await
    .map_err(from_update)?;
    Ok(Json(serde_json::json!({ "group": group, "node": node, "member_id": format!("{member_id:x}"), "epoch": map.epoch })))
}

async fn remove_replica(State(a): State<Arc<Admin>>, Path((group, node)): Path<(u64, String)>) -> Reply {
    let map = update(&a.store_url, |_| Ok(false)).await.map_err(from_update)?;
    let replica = map
        .groups
        .get(&group)
        .and_then(|g| g.replica_on(&node))
        .cloned()
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, format!("group {group} has no replica on {node}")))?;
    let mut last = String::from("group has no reachable member");
    let mut done = false;
    for url in group_urls(&map, group).into_iter().filter(|u| map.nodes.get(&node).is_none_or(|n| &n.client_url != u)) {
        let r = async {
            let mut c = ClusterClient::new(shardmap::watcher::channel(&url).await.map_err(|e| e.to_string())?);
            c.member_remove(group_request(group, MemberRemoveRequest { id: replica.member_id }))
                .await
                .map_err(|e| e.message().to_string())
        }
        .await;
        match r {
            Ok(_) => {
                done = true;
                break;
            }
            Err(e) if e.contains("member not found") => {
                done = true;
                break;
            }
            Err(e) => last = e,
        }
    }
    if !done {
        return Err(fail(StatusCode::SERVICE_UNAVAILABLE, last));
    }
    let map = update(&a.store_url, |map| {
        let g = map.groups.get_mut(&group).ok_or("group vanished")?;
        g.replicas.retain(|r| r.node != node);
        Ok(true)
    })
    .await
    .map_err(from_update)?;
    Ok(Json(serde_json::json!({ "group": group, "removed": node, "epoch": map.epoch })))
}
