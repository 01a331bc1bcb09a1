//! etcd's Lease service. Grants and revokes go through raft; liveness
//! (keepalive, time-to-live) is answered by the leader, to which other
//! members forward.

use super::leader::{forward_error, LeaderClient};
use crate::apply::Applied;
use crate::error::Error;
use crate::group::Group;
use crate::lease::MAX_LEASE_TTL;
use crate::state::{LeaseTtl, Renewal};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::lease_server::Lease;
use tessera_proto::etcdserverpb::*;
use tessera_proto::tessera::command::command::Op;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub struct LeaseService {
    pub group: Arc<Group>,
    pub leader: Arc<LeaderClient>,
    /// etcd's minimum TTL: 1.5 election timeouts, in whole seconds.
    pub min_ttl: i64,
}

/// Renews on the leader; a renewal clears a checkpointed remaining TTL
/// through raft so a later leader does not resurrect a stale one. An
/// expired lease is answered only once its revoke has deleted its keys (as
/// etcd's lessor waits for the revoke): a client told its lease is gone
/// must not read a key of it afterwards.
pub async fn renew_local(group: &Arc<Group>, id: i64) -> Result<i64, Status> {
    if !group.status().is_leader {
        return Err(Error::NotLeader.into());
    }
    match group.sm.lease_renew(id) {
        Renewal::NotFound => Ok(0), // etcd answers TTL 0 for an unknown lease
        Renewal::Expired => {
            let deadline = tokio::time::Instant::now() + group.settings.request_timeout;
            while group.sm.lease_exists(id) {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Timeout.into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(0)
        }
        Renewal::Renewed { ttl, clear_checkpoint } => {
            if clear_checkpoint {
                let g = group.clone();
                tokio::spawn(async move {
                    let cp = LeaseCheckpointRequest { checkpoints: vec![LeaseCheckpoint { id, remaining_ttl: 0 }] };
                    let _ = g.propose(Op::LeaseCheckpoint(cp)).await;
                });
            }
            Ok(ttl)
        }
    }
}

pub fn time_to_live_local(group: &Group, r: &LeaseTimeToLiveRequest) -> Result<LeaseTimeToLiveResponse, Status> {
    if !group.status().is_leader {
        return Err(Error::NotLeader.into());
    }
    let lease = group.sm.lease_time_to_live(r.id, r.keys);
    let rev = group.sm.current_revision();
    match lease {
        Some(LeaseTtl { granted_ttl, remaining: Some(left), keys }) => {
            Ok(LeaseTimeToLiveResponse { header: Some(group.header(rev)), id: r.id, ttl: left, granted_ttl, keys })
        }
        _ => Ok(LeaseTimeToLiveResponse { header: Some(group.header(rev)), id: r.id, ttl: -1, ..Default::default() }),
    }
}

impl LeaseService {
    async fn renew(&self, id: i64) -> Result<i64, Status> {
        if self.group.status().is_leader {
            return renew_local(&self.group, id).await;
        }
        let mut c = self.leader.get()?;
        let resp = c.lease_renew(self.group.request(LeaseKeepAliveRequest { id })).await.map_err(forward_error)?;
        Ok(resp.into_inner().ttl)
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut r = req.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge.into());
        }
        r.ttl = r.ttl.max(self.min_ttl);
        self.group.check_quota(64)?;
        if r.id == 0 {
            // The id is fixed before proposing, so every member applies the same.
            r.id = loop {
                let id = rand::random::<i64>() & i64::MAX;
                if id != 0 && !self.group.sm.lease_exists(id) {
                    break id;
                }
            };
        }
        let out = self.group.propose(Op::LeaseGrant(r)).await?;
        match out.result? {
            Applied::LeaseGrant { id, ttl } => {
                Ok(Response::new(LeaseGrantResponse { header: Some(self.group.header(out.rev)), id, ttl, error: String::new() }))
            }
            other => Err(Status::internal(format!("unexpected apply result {other:?}"))),
        }
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = super::auth::Caller::of(&self.group, &req)?;
        let r = req.into_inner();
        caller.lease_puts(&self.group, r.id)?;
        let out = self.group.propose_checked(Op::LeaseRevoke(r), caller.revision).await?;
        out.result?;
        Ok(Response::new(LeaseRevokeResponse { header: Some(self.group.header(out.rev)) }))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let svc = LeaseService { group: self.group.clone(), leader: self.leader.clone(), min_ttl: self.min_ttl };
        tokio::spawn(async move {
            while let Ok(Some(r)) = input.message().await {
                let resp = svc.renew(r.id).await.map(|ttl| LeaseKeepAliveResponse {
                    header: Some(svc.group.header(svc.group.sm.current_revision())),
                    id: r.id,
                    ttl,
                });
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        if self.group.status().is_leader {
            return Ok(Response::new(time_to_live_local(&self.group, &r)?));
        }
        let mut c = self.leader.get()?;
        c.lease_time_to_live(self.group.request(r)).await.map_err(forward_error)
    }

    async fn lease_leases(&self, _req: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.group.read_index().await?;
        let leases = self.group.sm.lease_ids().into_iter().map(|id| LeaseStatus { id }).collect();
        let rev = self.group.sm.current_revision();
        Ok(Response::new(LeaseLeasesResponse { header: Some(self.group.header(rev)), leases }))
    }
}

/// On the leader: revokes expired leases through raft (in a federation it
/// lists them for a router, which revokes each on every group holding it
/// at one revision), and checkpoints remaining TTLs so a leader change
/// cannot extend them indefinitely.
/// How many expired leases a federated group lists at once (the rest come
/// as those are revoked).
const MAX_EXPIRED_LISTED: usize = 64;

pub async fn run_lease_loops(group: Arc<Group>, checkpoint_every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut revoking: HashMap<i64, Instant> = HashMap::new();
    let mut last_checkpoint = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (primary, expired, checkpoints) = group.sm.lease_clock(last_checkpoint.elapsed() >= checkpoint_every);
        if !primary {
            revoking.clear();
            group.set_expired_leases(vec![]);
            continue;
        }
        if group.federated() {
            group.set_expired_leases(expired.into_iter().take(MAX_EXPIRED_LISTED).collect());
        } else {
            revoking.retain(|_, at| at.elapsed() < Duration::from_secs(3));
            for id in expired {
                if revoking.insert(id, Instant::now()).is_some() {
                    continue;
                }
                let g = group.clone();
                tokio::spawn(async move {
                    let _ = g.propose(Op::LeaseRevoke(LeaseRevokeRequest { id })).await;
                });
            }
        }
        if last_checkpoint.elapsed() >= checkpoint_every {
            last_checkpoint = Instant::now();
            if !checkpoints.is_empty() {
                let req = LeaseCheckpointRequest {
                    checkpoints: checkpoints
                        .into_iter()
                        .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                        .collect(),
                };
                let g = group.clone();
                tokio::spawn(async move {
                    let _ = g.propose(Op::LeaseCheckpoint(req)).await;
                });
            }
        }
    }
}
