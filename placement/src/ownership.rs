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

use crate::api::OwnershipChanged;
use crate::error::{PlacementError, Result};
use crate::members::{group_request, on_group};
use crate::ops::Placement;
use shardmap::ShardMap;
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_proto::tessera::shard::{BumpRequest, FenceRequest};
use tessera_rpc::tls::Dialer;

/// How often a move is fenced again when the map keeps changing under it.
const ATTEMPTS: usize = 5;

impl Placement {
    /// Pins `prefix` (and its subtree) to `group`, with its data
    /// (`crate::moves`); when pins or spreads under it keep part elsewhere,
    /// only while it holds no keys.
    pub async fn pin(&self, prefix: &str, group: u64) -> Result<OwnershipChanged> {
        crate::moves::check_prefix(prefix)?;
        if crate::moves::kept_elsewhere(&self.map().await?, prefix, group).is_none() {
            let r = self.move_prefix(prefix, group, 0).await?;
            return Ok(OwnershipChanged {
                prefix: r.prefix,
                groups: vec![group],
                epoch: r.epoch,
                changed: r.outcome != "already",
            });
        }
        self.change_owner(prefix, &[group], |map| {
            if map.pins.get(prefix) == Some(&group) {
                return false;
            }
            map.spreads.remove(prefix);
            map.pins.insert(prefix.to_string(), group);
            true
        })
        .await
    }

    /// Spreads the keys under `prefix` over `groups` (by their next segment).
    pub async fn spread(&self, prefix: &str, groups: &[u64]) -> Result<OwnershipChanged> {
        crate::moves::check_prefix(prefix)?;
        if groups.is_empty() {
            return Err(PlacementError::invalid("spread needs at least one group"));
        }
        self.change_owner(prefix, groups, |map| {
            if map.spreads.get(prefix).map(Vec::as_slice) == Some(groups) {
                return false;
            }
            map.pins.remove(prefix);
            map.spreads.insert(prefix.to_string(), groups.to_vec());
            true
        })
        .await
    }

    /// Fences `prefix` in its current owners, then commits `change` (which
    /// answers whether it changed anything) at the fence's epoch.
    async fn change_owner(&self, prefix: &str, to: &[u64], change: impl Fn(&mut ShardMap) -> bool) -> Result<OwnershipChanged> {
        if prefix.is_empty() {
            return Err(PlacementError::invalid("a prefix is needed (the empty prefix is every key)"));
        }
        let answer = |epoch, changed| OwnershipChanged { prefix: prefix.to_string(), groups: to.to_vec(), epoch, changed };
        for _ in 0..ATTEMPTS {
            let map = self.map().await?;
            if let Some(g) = to.iter().find(|g| !map.groups.contains_key(g)) {
                return Err(PlacementError::not_found(format!("no group {g}")));
            }
            if let Some(p) = map.moves.keys().find(|p| crate::moves::overlap(p, prefix)) {
                return Err(PlacementError::conflict(format!("a move of {p:?} is in flight (see `tessera moves`)")));
            }
            if !change(&mut map.clone()) {
                return Ok(answer(map.epoch, false)); // already so
            }
            let owners = map.clone().routing().groups_for_range(prefix.as_bytes(), &shardmap::prefix_end(prefix.as_bytes()));
            let epoch = map.epoch + 1;
            let fenced = match fence(self.dialer(), &map, prefix, &owners, epoch, true).await {
                Ok((0, revision)) => raise(self.dialer(), &map, to, revision).await.map(|_| 0),
                other => other.map(|(keys, _)| keys),
            };
            let keys = match fenced {
                Ok(k) => k,
                Err(e) => {
                    self.lift(epoch).await;
                    return Err(e);
                }
            };
            if keys > 0 {
                self.lift(epoch).await;
                return Err(PlacementError::conflict(format!(
                    "prefix {prefix:?} already holds {keys} keys; a spread moves no data (pin it, or move its parts with `tessera move`)"
                )));
            }
            let mut raced = false;
            let committed = self
                .store
                .update(|m| {
                    raced = m.epoch != map.epoch;
                    Ok::<_, PlacementError>(!raced && change(m))
                })
                .await?;
            if !raced {
                if committed.epoch < epoch {
                    self.lift(epoch).await; // someone made the same change first
                }
                return Ok(answer(committed.epoch, committed.epoch >= epoch));
            }
            tracing::info!(prefix, epoch, now = committed.epoch, "map changed while fencing; fencing again");
        }
        Err(PlacementError::unavailable("the map kept changing while fencing the prefix; try again"))
    }

    /// Moves the map past a fence that did not lead to a change, so routers
    /// stop being refused under the prefix (a no-op if the map already is).
    pub(crate) async fn lift(&self, epoch: u64) {
        if let Err(e) = self.store.update(|m| Ok::<_, PlacementError>(m.epoch < epoch)).await {
            tracing::warn!(error = %e, epoch, "could not lift a fence; the next map change will");
        }
    }
}

/// Fences `prefix` at `epoch` in each of `groups`; answers the keys they
/// hold under it with the fence applied (0 unless `count`), and the
/// highest revision of theirs at the fence.
pub(crate) async fn fence(
    dialer: &Dialer,
    map: &ShardMap,
    prefix: &str,
    groups: &[u64],
    epoch: u64,
    count: bool,
) -> Result<(i64, i64)> {
    let req = FenceRequest { prefix: prefix.as_bytes().to_vec(), epoch, pending: false, skip_count: !count };
    let answers = futures::future::join_all(groups.iter().map(|g| {
        on_group(
            dialer,
            map,
            *g,
            None,
            |ch| {
                let req = group_request(*g, req.clone());
                async move { ShardClient::new(ch).fence(req).await }
            },
            |_| None,
        )
    }))
    .await;
    let (mut keys, mut revision) = (0, 0);
    for a in answers {
        let a = a.map_err(|e| PlacementError::unavailable(format!("fencing {prefix:?}: {e}")))?;
        keys += a.keys;
        revision = revision.max(a.header.map_or(0, |h| h.revision));
    }
    Ok((keys, revision))
}

/// Raises each of `groups` past `revision`, so every event they will have
/// under the prefix comes after the old owners' last one (a watch routed
/// again from there misses none).
pub(crate) async fn raise(dialer: &Dialer, map: &ShardMap, groups: &[u64], revision: i64) -> Result<()> {
    let answers = futures::future::join_all(groups.iter().map(|g| {
        on_group(
            dialer,
            map,
            *g,
            None,
            |ch| {
                let req = group_request(*g, BumpRequest { revision });
                async move { ShardClient::new(ch).bump(req).await }
            },
            |_| None,
        )
    }))
    .await;
    for a in answers {
        a.map_err(|e| PlacementError::unavailable(format!("raising the new owners: {e}")))?;
    }
    Ok(())
}
