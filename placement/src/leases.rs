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
use tessera_proto::etcdserverpb::lease_client::LeaseClient;
use tessera_proto::etcdserverpb::{LeaseGrantRequest, LeaseLeasesRequest, LeaseTimeToLiveRequest};
use tessera_rpc::Error as EtcdError;

impl Placement {
    /// Copies every live lease of `group` to its home among the groups
    /// that serve leases (already there: left as it is); how many it copied.
    pub(crate) async fn copy_leases_off(&self, group: u64) -> Result<u64> {
        let map = self.map().await?;
        let d = self.dialer();
        let listed = on_group(
            d,
            &map,
            group,
            None,
            |ch| {
                let r = group_request(group, LeaseLeasesRequest {});
                async move { LeaseClient::new(ch).lease_leases(r).await }
            },
            |_| None,
        )
        .await?;
        let mut copied = 0;
        for id in listed.leases.iter().map(|l| l.id) {
            let ttl = on_group(
                d,
                &map,
                group,
                None,
                |ch| {
                    let r = group_request(group, LeaseTimeToLiveRequest { id, keys: false });
                    async move { LeaseClient::new(ch).lease_time_to_live(r).await }
                },
                |_| None,
            )
            .await?;
            if ttl.ttl <= 0 {
                continue; // expired (its revoke is on the way) or revoked meanwhile
            }
            let Some(home) = map.lease_home(id).filter(|h| *h != group) else {
                return Err(PlacementError::conflict(format!("lease {id:x} of group {group} has no other group to live on")));
            };
            let grant = LeaseGrantRequest { id, ttl: ttl.granted_ttl.max(ttl.ttl) };
            let made = on_group(
                d,
                &map,
                home,
                None,
                |ch| {
                    let r = group_request(home, grant);
                    async move { LeaseClient::new(ch).lease_grant(r).await.map(|r| r.map(|_| true)) }
                },
                |e| (*e == EtcdError::LeaseExist).then_some(false),
            )
            .await?;
            copied += u64::from(made);
        }
        Ok(copied)
    }
}
