//! A leaving group's leases. Each lease is granted on its home group
//! (`ShardMap::lease_home`) and copied to every group holding keys of it;
//! a keepalive's answer is the home's while it serves, the copies' once it
//! drains (`ShardMap::lease_answerer`). A lease with no keys anywhere else
//! lives only on its home, so before the home goes the drain copies every
//! lease it holds to the lease's new home (`lease_home`, which skips
//! draining groups), with its granted TTL: the copy answers keepalives from
//! then on, as a home's does.

use crate::error::{PlacementError, Result};
use crate::members::{group_request, on_group};
use crate::ops::Placement;
use shardmap::ShardMap;
use tessera_proto::etcdserverpb::lease_client::LeaseClient;
use tessera_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tessera_rpc::Error as EtcdError;

impl Placement {
    /// Copies every live lease of `group` to its home among the groups
    /// that serve leases (already there: left as it is); how many it copied.
    pub(crate) async fn copy_leases_off(&self, group: u64) -> Result<u64> {
        let map = self.map().await?;
        let list = |mut c: Leases| async move { c.lease_leases(group_request(group, LeaseLeasesRequest {})).await };
        let mut copied = 0;
        for id in self.on_leases(&map, group, list, |_| None).await?.leases.iter().map(|l| l.id) {
            let ttl = self.time_to_live(&map, group, id).await?;
            if ttl.ttl <= 0 {
                continue; // expired (its revoke is on the way) or revoked meanwhile
            }
            let Some(home) = map.lease_home(id).filter(|h| *h != group) else {
                return Err(PlacementError::conflict(format!("lease {id:x} of group {group} has no other group to live on")));
            };
            let grant = LeaseGrantRequest { id, ttl: ttl.granted_ttl.max(ttl.ttl) };
            let copy = |mut c: Leases| async move { c.lease_grant(group_request(home, grant)).await.map(|r| r.map(|_| true)) };
            let made = self.on_leases(&map, home, copy, |e| (*e == EtcdError::LeaseExist).then_some(false)).await?;
            // A revoke (or expiry) between the read above and the grant
            // reached every group before the copy existed: the copy would
            // outlive it. Read again, and take back a copy made for nothing.
            if made && self.time_to_live(&map, group, id).await?.ttl <= 0 {
                let revoke = |mut c: Leases| async move {
                    c.lease_revoke(group_request(home, LeaseRevokeRequest { id })).await.map(|r| r.map(|_| ()))
                };
                self.on_leases(&map, home, revoke, |e| (*e == EtcdError::LeaseNotFound).then_some(())).await?;
                continue;
            }
            copied += u64::from(made);
        }
        Ok(copied)
    }

    /// Lease `id`'s time to live on `group` (TTL -1: not there).
    async fn time_to_live(&self, map: &ShardMap, group: u64, id: i64) -> Result<LeaseTimeToLiveResponse> {
        let ask = |mut c: Leases| async move {
            c.lease_time_to_live(group_request(group, LeaseTimeToLiveRequest { id, keys: false })).await
        };
        self.on_leases(map, group, ask, |_| None).await
    }

    /// One Lease call on a member of `group` (`members::on_group`).
    async fn on_leases<R, Fut>(
        &self,
        map: &ShardMap,
        group: u64,
        call: impl Fn(Leases) -> Fut,
        done: impl Fn(&EtcdError) -> Option<R>,
    ) -> Result<R>
    where
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
    {
        on_group(self.dialer(), map, group, None, |ch| call(LeaseClient::new(ch)), done).await
    }
}

type Leases = LeaseClient<tonic::transport::Channel>;
