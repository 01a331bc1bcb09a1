//! The router's view of the groups, one concern per module, all reached
//! through `Backends`, which holds their state:
//! - `rerouting`: the shard map followed from placement, and running a call
//!   again by a newer map when a group refuses it for an older one;
//! - `connections`: lazy channels per node and lane, and clients whose
//!   answers are not size-limited;
//! - `health`: leader hints and nodes marked down (the 1 s poller), which
//!   order a group's replicas for a call;
//! - `call`: the call-with-retry every service uses, deciding from types
//!   alone whether a failed call may be sent again;
//! - `revisions`: the federation's revision timeline (the revision oracle)
//!   and revision bumps, coalesced router-wide.
//!
//! Every request to a group names the group and the map epoch it was routed by.

mod call;
mod connections;
mod health;
mod rerouting;
mod revisions;

pub use call::Access;
pub use connections::{kv_client, lease_client, shard_client, watch_client, Lane};
pub use health::Prefer;

use connections::Connections;
use health::Health;
use revisions::Revisions;
use shardmap::map::Routing;
use shardmap::watcher::MapRx;
use std::sync::Arc;
use tessera_rpc::metadata;
use tessera_rpc::oracle::OracleClient;
use tonic::Request;

pub struct Backends {
    /// This router's etcd member id (its answers' headers carry it).
    member_id: u64,
    maps: MapRx,
    connections: Connections,
    health: Health,
    revisions: Revisions,
    /// Committed cross-group txns each group may forget, sent in batches.
    forgets: parking_lot::Mutex<std::collections::BTreeMap<u64, Vec<i64>>>,
}

impl Backends {
    /// Backends of the router `member_id` over the map `maps` follows, with
    /// the federation's revision `oracle` (placement's store serves it).
    /// Nodes are dialed through `dialer` (TLS for `https://` nodes).
    pub(crate) fn new(member_id: u64, maps: MapRx, oracle: Arc<OracleClient>, dialer: tessera_rpc::tls::Dialer) -> Arc<Self> {
        let (connections, health, revisions) = (Connections::new(dialer), Health::default(), Revisions::new(oracle));
        let forgets = Default::default();
        Arc::new(Self { member_id, maps, connections, health, revisions, forgets })
    }

    /// Queues forgetting committed cross-group txn `id` on `groups`.
    pub(crate) fn forget_later(&self, groups: &[u64], id: i64) {
        let mut f = self.forgets.lock();
        for g in groups {
            f.entry(*g).or_default().push(id);
        }
    }

    /// The queued forgets, by group (taken: sent once, best effort).
    pub(crate) fn take_forgets(&self) -> std::collections::BTreeMap<u64, Vec<i64>> {
        std::mem::take(&mut *self.forgets.lock())
    }

    pub(crate) fn member_id(&self) -> u64 {
        self.member_id
    }

    /// A request to `group` with the router's metadata (and the client's
    /// identity, for a write made for one: `auth::Gate::write_for`). Its
    /// timeout is the caller's: what is left of the client's deadline, or a
    /// stream's own.
    pub(crate) fn request<T>(&self, r: &Routing, group: u64, msg: T) -> Request<T> {
        let mut req = metadata::group_request(group, msg);
        req.metadata_mut().insert(metadata::EPOCH_HEADER, r.epoch().into());
        if let Some(caller) = crate::auth::acting_for() {
            metadata::forward(&mut req, &caller);
        }
        req
    }
}

#[cfg(test)]
mod tests;
