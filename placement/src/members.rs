//! Changing a group's members: the raft conf change in the group first
//! (etcd's MemberAdd/MemberRemove on one of its replicas), then the map, so
//! the node the map names joins a group that already expects it, and a
//! node drops a replica only once its group no longer counts it.

use crate::api::{LearnerAdded, ReplicaRemoved};
use crate::assign;
use crate::error::{PlacementError, Result};
use crate::ops::Placement;
use shardmap::{Replica, ShardMap};
use std::time::Duration;
use tessera_proto::etcdserverpb::cluster_client::ClusterClient;
use tessera_proto::etcdserverpb::{MemberAddRequest, MemberRemoveRequest};
use tessera_rpc::Error as EtcdError;
use tonic::transport::Channel;

/// How long placement waits for one call to a group.
const GROUP_CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn group_request<T>(group: u64, msg: T) -> tonic::Request<T> {
    let mut r = tessera_rpc::metadata::group_request(group, msg);
    r.set_timeout(GROUP_CALL_TIMEOUT);
    r
}

/// Client URLs of a group's replicas (voters first), skipping `except`'s.
fn group_urls(map: &ShardMap, group: u64, except: Option<&str>) -> Vec<String> {
    map.replica_urls(group).into_iter().filter(|(r, _)| Some(r.node.as_str()) != except).map(|(_, u)| u.to_string()).collect()
}

/// Calls `group` on its replicas in turn (voters first, none on `except`)
/// until one answers; `done` turns a failure that means "already so" into
/// success.
pub(crate) async fn on_group<R, Fut>(
    dialer: &tessera_rpc::tls::Dialer,
    map: &ShardMap,
    group: u64,
    except: Option<&str>,
    call: impl Fn(Channel) -> Fut,
    done: impl Fn(&EtcdError) -> Option<R>,
) -> Result<R>
where
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
{
    let mut last = String::from("no reachable member");
    for url in group_urls(map, group, except) {
        match shardmap::watcher::channel(&url, dialer).await {
            Ok(ch) => match call(ch).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(e) => {
                    if let Some(r) = EtcdError::from_status(&e).as_ref().and_then(&done) {
                        return Ok(r);
                    }
                    last = e.message().to_string();
                }
            },
            Err(e) => last = e.to_string(),
        }
    }
    Err(PlacementError::unavailable(format!("group {group}: {last}")))
}

/// A page of at most `limit` of `group`'s keys in `[from, end)` (etcd's
/// range encoding), keys only, linearizable, and whether more follow. Not
/// routed by a map, so never fenced: placement's listings see everything
/// the group holds.
pub(crate) async fn keys_page(
    dialer: &tessera_rpc::tls::Dialer,
    map: &ShardMap,
    group: u64,
    from: &[u8],
    end: &[u8],
    limit: i64,
) -> Result<(Vec<Vec<u8>>, bool)> {
    use tessera_proto::etcdserverpb::kv_client::KvClient;
    use tessera_proto::etcdserverpb::RangeRequest;
    let req = RangeRequest { key: from.to_vec(), range_end: end.to_vec(), keys_only: true, limit, ..Default::default() };
    let resp = on_group(
        dialer,
        map,
        group,
        None,
        |ch| {
            let r = group_request(group, req.clone());
            async move { KvClient::new(ch).range(r).await }
        },
        |_| None,
    )
    .await?;
    Ok((resp.kvs.into_iter().map(|kv| kv.key).collect(), resp.more))
}

impl Placement {
    /// Adds a learner to `group` on `node` (or the least loaded node
    /// without a replica of it): a raft conf change in the group first,
    /// then the map names the node, which joins and catches up.
    pub async fn add_learner(&self, group: u64, node: Option<String>) -> Result<LearnerAdded> {
        let map = self.map().await?;
        if !map.groups.contains_key(&group) {
            return Err(PlacementError::not_found(format!("no group {group}")));
        }
        let node = match node {
            Some(n) => n,
            None => assign::extra_replica(&map, group).map_err(PlacementError::invalid)?,
        };
        let info = map.nodes.get(&node).ok_or_else(|| PlacementError::not_found(format!("no node {node}")))?.clone();
        if map.groups.get(&group).is_some_and(|g| g.replica_on(&node).is_some()) {
            return Err(PlacementError::invalid(format!("group {group} already has a replica on {node}")));
        }
        let req = MemberAddRequest { peer_ur_ls: vec![info.peer_url.clone()], is_learner: true };
        let added = on_group(
            self.dialer(),
            &map,
            group,
            None,
            |ch| {
                let req = group_request(group, req.clone());
                async move { ClusterClient::new(ch).member_add(req).await }
            },
            |_| None,
        )
        .await?;
        let member_id = added.member.map(|m| m.id).ok_or_else(|| PlacementError::unavailable("member add answered no member"))?;
        let map = self
            .store
            .update(|map| {
                let g = map.groups.get_mut(&group).ok_or_else(|| PlacementError::not_found(format!("group {group} vanished")))?;
                g.replicas.push(Replica { node: node.clone(), member_id, learner: true, initial: false });
                Ok(true)
            })
            .await?;
        Ok(LearnerAdded { group, node, member_id: format!("{member_id:x}"), epoch: map.epoch })
    }

    /// Takes `group`'s replica off `node`: member remove in the group (by
    /// its other replicas), then the map; the node then stops the replica
    /// and deletes its data.
    pub async fn remove_replica(&self, group: u64, node: &str) -> Result<ReplicaRemoved> {
        let map = self.map().await?;
        let replica = map
            .groups
            .get(&group)
            .and_then(|g| g.replica_on(node))
            .cloned()
            .ok_or_else(|| PlacementError::not_found(format!("group {group} has no replica on {node}")))?;
        on_group(
            self.dialer(),
            &map,
            group,
            Some(node),
            |ch| {
                let req = group_request(group, MemberRemoveRequest { id: replica.member_id });
                async move { ClusterClient::new(ch).member_remove(req).await }
            },
            // Removed before (a retried call): done.
            |e| (*e == EtcdError::MemberNotFound).then(Default::default),
        )
        .await?;
        let map = self
            .store
            .update(|map| {
                let g = map.groups.get_mut(&group).ok_or_else(|| PlacementError::not_found(format!("group {group} vanished")))?;
                g.replicas.retain(|r| r.node != node);
                Ok(true)
            })
            .await?;
        Ok(ReplicaRemoved { group, node: node.to_string(), epoch: map.epoch })
    }
}
