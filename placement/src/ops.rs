//! Placement's operations as typed functions over its store. Every change
//! is one compare-and-swap of the map (`shardmap::store::Store::update`),
//! so concurrent admins and node registrations never lose each other's
//! changes. The HTTP layer (`http.rs`) only maps these to JSON.

use crate::api::{GroupAddRequest, GroupAdded, InitRequest};
use crate::assign;
use crate::error::{PlacementError, Result};
use shardmap::store::Store;
use shardmap::{GroupInfo, ShardMap};

#[derive(Clone)]
pub struct Placement {
    pub(crate) store: Store,
    /// The moves this placement drives (`crate::moves`).
    pub(crate) tracker: std::sync::Arc<std::sync::Mutex<crate::moves::Tracker>>,
    /// Units the rebalancer split and that had nothing to spread (every
    /// key a leaf, or every subtree already where a spread puts it): not
    /// planned again until this placement restarts. A leaf lock, never
    /// held across an await.
    pub(crate) unsplittable: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Placement {
    pub fn new(store: Store) -> Self {
        Placement { store, tracker: Default::default(), unsplittable: Default::default() }
    }

    /// How placement reaches its store and the groups.
    pub(crate) fn dialer(&self) -> &tessera_rpc::tls::Dialer {
        self.store.dialer()
    }

    /// The map as placement's store holds it now.
    pub async fn map(&self) -> Result<ShardMap> {
        Ok(self.store.read().await?)
    }

    /// The first groups of a federation, all on the ring. Only while the
    /// map has no group (so no data can exist); a no-op once it has.
    pub async fn init(&self, req: &InitRequest) -> Result<ShardMap> {
        if req.groups == 0 {
            return Err(PlacementError::invalid("groups must be at least 1"));
        }
        Ok(self
            .store
            .update(|map| {
                if !map.groups.is_empty() {
                    return Ok(false);
                }
                for _ in 0..req.groups {
                    let id = map.next_group;
                    let replicas = assign::new_group(map, id, req.replicas, req.learners).map_err(PlacementError::invalid)?;
                    map.groups.insert(id, GroupInfo { id, replicas });
                    map.ring.push(id);
                    map.next_group += 1;
                }
                Ok(true)
            })
            .await?)
    }

    /// A new group, off the ring: give it prefixes with pin or spread.
    pub async fn add_group(&self, req: &GroupAddRequest) -> Result<GroupAdded> {
        let mut created = 0;
        let map = self
            .store
            .update(|map| {
                let id = map.next_group;
                let replicas = assign::new_group(map, id, req.replicas, req.learners).map_err(PlacementError::invalid)?;
                map.groups.insert(id, GroupInfo { id, replicas });
                map.next_group += 1;
                created = id;
                Ok(true)
            })
            .await?;
        Ok(GroupAdded { group: created, epoch: map.epoch, replicas: map.groups[&created].replicas.clone() })
    }
}
