//! Leases across groups. A lease is granted on its home group (chosen from
//! its id). A key on another group that names it makes the router copy the
//! lease there (same id, the home's remaining TTL) before the write, so
//! every group that holds keys of a lease holds the lease itself.
//! Keepalive, TimeToLive and Leases go to every group. A revoke — the
//! client's, or a router's once any copy's time ran out (groups report
//! expired leases; they do not revoke them alone) — is one txn across all
//! groups (`cross_txn::revoke_lease`): every copy and every key of the
//! lease goes at one revision, as on etcd.

use crate::auth::Caller;
use crate::backends::{lease_client, Access, Backends};
use crate::deadline::Deadline;
use futures::future::join_all;
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use tessera_proto::etcdserverpb::lease_server::Lease;
use tessera_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tessera_rpc::Error;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub fn is_not_found(s: &Status) -> bool {
    Error::from_status(s) == Some(Error::LeaseNotFound)
}

fn all_groups(b: &Backends) -> Result<Vec<u64>, Status> {
    Ok(b.routing()?.map.groups.keys().copied().collect())
}

/// The home group of a lease: stable across ring changes (`ShardMap::lease_home`).
pub fn home(b: &Backends, id: i64) -> Result<u64, Status> {
    b.routing()?.map.lease_home(id).ok_or_else(|| Status::unavailable("tessera: the shard map has no groups yet"))
}

async fn ttl_in(
    b: &Backends,
    group: u64,
    req: LeaseTimeToLiveRequest,
    deadline: Deadline,
) -> Result<LeaseTimeToLiveResponse, Status> {
    b.call(group, Access::Read, deadline, req, |ch, r| async move { lease_client(ch).lease_time_to_live(r).await }).await
}

/// Every group's answer for a lease, those that hold it (an expired one
/// too, answered TTL 0, until its revoke: only then is it gone).
/// etcd's checkLeasePuts: whoever revokes lease `id`, or attaches a key to
/// it, must be allowed to write every key it holds (on whichever groups) —
/// a revoke deletes them all, and a key attached to a lease is deleted with
/// the others. Nothing to ask while auth is off.
pub(crate) async fn check_lease_puts(b: &Backends, caller: &Caller, id: i64, deadline: Deadline) -> Result<(), Status> {
    if !caller.checked() {
        return Ok(());
    }
    for (_, a) in ttl_everywhere(b, LeaseTimeToLiveRequest { id, keys: true }, deadline).await? {
        for k in &a.keys {
            caller.check(k, &[], tessera_rpc::auth::Access::Write)?;
        }
    }
    Ok(())
}

async fn ttl_everywhere(
    b: &Backends,
    req: LeaseTimeToLiveRequest,
    deadline: Deadline,
) -> Result<Vec<(u64, LeaseTimeToLiveResponse)>, Status> {
    let groups = all_groups(b)?;
    let answers = join_all(groups.iter().map(|g| ttl_in(b, *g, req, deadline))).await;
    let mut found = vec![];
    for (g, a) in groups.into_iter().zip(answers) {
        let a = a?;
        if a.ttl >= 0 {
            found.push((g, a));
        }
    }
    Ok(found)
}

/// Copies lease `id` onto `group` from a group that holds it.
pub(crate) async fn replicate(b: &Backends, id: i64, group: u64, deadline: Deadline) -> Result<(), Status> {
    let found = ttl_everywhere(b, LeaseTimeToLiveRequest { id, keys: false }, deadline).await?;
    // An expired lease (TTL 0, its revoke on the way) is not copied.
    let Some((_, src)) = found.iter().filter(|(_, a)| a.ttl > 0).max_by_key(|(_, a)| a.ttl) else {
        return Err(Error::LeaseNotFound.into());
    };
    let grant = LeaseGrantRequest { id, ttl: src.ttl };
    match b.call(group, Access::Write, deadline, grant, |ch, r| async move { lease_client(ch).lease_grant(r).await }).await {
        Ok(_) => Ok(()),
        Err(s) if Error::from_status(&s) == Some(Error::LeaseExist) => Ok(()),
        Err(s) => Err(s),
    }
}

/// A write to `group` that names `leases` (0 = none): when the group does
/// not hold one of them yet, the write failed without effect; copy them
/// there and retry.
pub async fn write_with_leases<T, R, F, Fut>(
    b: &Backends,
    group: u64,
    leases: &[i64],
    deadline: Deadline,
    msg: T,
    f: F,
) -> Result<R, Status>
where
    T: Clone,
    F: Fn(tonic::transport::Channel, Request<T>) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<Response<R>, Status>>,
{
    match b.call(group, Access::Write, deadline, msg.clone(), f).await {
        Err(s) if is_not_found(&s) && leases.iter().any(|l| *l != 0) => {
            for l in leases.iter().filter(|l| **l != 0) {
                replicate(b, *l, group, deadline).await?;
            }
            b.call(group, Access::Write, deadline, msg, f).await
        }
        other => other,
    }
}

#[derive(Clone)]
pub struct LeaseService {
    pub backends: Arc<Backends>,
    pub auth: Arc<crate::auth::Gate>,
}

type KeepAliveStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

/// Renews lease `id` on every group (every copy's clock restarts). Each
/// renewal is its own request with the default deadline: the keepalive
/// stream itself lives as long as its client. The answer is the home
/// group's, which granted the lease: TTL 0 there means it is gone (never
/// granted, or revoked — on every group at once, an expired one only after
/// its keys are deleted), whatever copies elsewhere answered before that.
/// Once its home drains (it leaves the federation), the copies answer: the
/// longest TTL among them (placement copies every lease of a leaving group
/// to the lease's new home before it goes).
async fn renew_everywhere(b: &Backends, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    let groups = all_groups(b)?;
    let Some(home) = b.routing()?.map.lease_answerer(id) else {
        let answers = join_all(groups.iter().map(|g| renew_on(b, *g, id))).await;
        let mut best: Option<LeaseKeepAliveResponse> = None;
        let mut failed = None;
        for a in answers {
            match a {
                Ok(a) if best.as_ref().is_none_or(|x| a.ttl > x.ttl) => best = Some(a),
                Ok(_) => {}
                Err(e) => failed = Some(e),
            }
        }
        // A copy that did not answer may be the one with time left.
        return match (best, failed) {
            (Some(a), None) => Ok(a),
            (Some(a), Some(_)) if a.ttl > 0 => Ok(a),
            (_, Some(e)) => Err(e),
            (None, None) => Err(Status::unavailable("tessera: the shard map has no groups")),
        };
    };
    let answers = join_all(groups.iter().map(|g| renew_on(b, *g, id))).await;
    groups
        .iter()
        .zip(answers)
        .find(|(g, _)| **g == home)
        .map(|(_, a)| a)
        .unwrap_or_else(|| Err(Status::unavailable("tessera: the lease's home group is not in the shard map")))
}

/// One keepalive of lease `id` on `group`.
async fn renew_on(b: &Backends, group: u64, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    let deadline = Deadline::default_from_now();
    b.call(group, Access::Read, deadline, LeaseKeepAliveRequest { id }, |ch, r| async move {
        let (md, ext, msg) = r.into_parts();
        let req = Request::from_parts(md, ext, tokio_stream::once(msg));
        let mut s = lease_client(ch).lease_keep_alive(req).await?.into_inner();
        match s.message().await? {
            Some(m) => Ok(Response::new(m)),
            None => Err(Status::unavailable("keepalive stream closed")),
        }
    })
    .await
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let deadline = Deadline::of(&req);
        let mut req = req.into_inner();
        if req.id == 0 {
            // etcd's ids are positive; the router picks one so it knows the home.
            req.id = (rand::random::<u64>() >> 1).max(1) as i64;
        }
        let home = home(&self.backends, req.id)?;
        let resp = self
            .backends
            .call(home, Access::Write, deadline, req, |ch, r| async move { lease_client(ch).lease_grant(r).await })
            .await?;
        self.backends.observe(resp.header.as_ref());
        self.backends.answer_now(resp, deadline).await
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        let deadline = Deadline::of(&req);
        let caller = self.auth.caller(&req).await?;
        let id = req.into_inner().id;
        // etcd: revoking deletes the lease's keys, so the caller must be
        // allowed to write every one of them.
        check_lease_puts(&self.backends, &caller, id, deadline).await?;
        // On every group at once: all of the lease's keys go at one revision.
        // Its prepares name the caller: a group that logged a newer auth
        // store refuses them (`auth::Gate::write_for`).
        let revoked = self.auth.write_for(&caller, crate::cross_txn::revoke_lease(&self.backends, id, deadline));
        match revoked.await? {
            Some(h) => self.backends.answer_now(LeaseRevokeResponse { header: Some(h) }, deadline).await,
            None => Err(Error::LeaseNotFound.into()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut input = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let b = self.backends.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = input.message().await {
                let resp = match renew_everywhere(&b, r.id).await {
                    Ok(resp) => b.answer_now(resp, Deadline::default_from_now()).await.map(Response::into_inner),
                    Err(e) => Err(e),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let deadline = Deadline::of(&req);
        let req = req.into_inner();
        let found = ttl_everywhere(&self.backends, req, deadline).await?;
        if found.is_empty() {
            let header = ttl_in(&self.backends, home(&self.backends, req.id)?, req, deadline).await?.header;
            return self
                .backends
                .answer_now(LeaseTimeToLiveResponse { header, id: req.id, ttl: -1, ..Default::default() }, deadline)
                .await;
        }
        let mut keys = BTreeSet::new();
        for (_, a) in &found {
            keys.extend(a.keys.iter().cloned());
        }
        let (_, mut best) = found.into_iter().max_by_key(|(_, a)| a.ttl).expect("non-empty");
        best.keys = keys.into_iter().collect();
        self.backends.answer_now(best, deadline).await
    }

    async fn lease_leases(&self, req: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        let deadline = Deadline::of(&req);
        let req = req.into_inner();
        let groups = all_groups(&self.backends)?;
        let answers = join_all(groups.iter().map(|g| {
            self.backends.call(*g, Access::Read, deadline, req, |ch, r| async move { lease_client(ch).lease_leases(r).await })
        }))
        .await;
        let mut ids = BTreeSet::new();
        let mut header = None;
        for a in answers {
            let a = a?;
            header = header.or(a.header);
            ids.extend(a.leases.iter().map(|l| l.id));
        }
        self.backends
            .answer_now(LeaseLeasesResponse { header, leases: ids.into_iter().map(|id| LeaseStatus { id }).collect() }, deadline)
            .await
    }
}
