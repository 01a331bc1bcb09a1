//! Tessera's own calls on the client port: revision bumps (how a router
//! moves an idle group's watermark past a revision), fences (placement,
//! before a map change moves a prefix), the steps of moving a prefix with
//! its data (`crate::moves`), cross-group txns, replica stats, and the
//! federation's auth store (`crate::auth::federation`).

use crate::apply::Applied;
use crate::cross::Ended;
use crate::error::Error;
use crate::group::Group;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::RangeRequest;
use tessera_proto::tessera::command::{command::Op, AuthState, Fence};
use tessera_proto::tessera::command::{MoveRelease, MoveStage, MoveTarget, TxnAbort, TxnCommit, TxnPrepare};
use tessera_proto::tessera::shard::shard_server::Shard;
use tessera_proto::tessera::shard::{
    BumpRequest, BumpResponse, ExportRequest, ExportResponse, FenceRequest, FenceResponse, InstallAuthResponse,
    MoveReleaseResponse, MoveStageResponse, MoveTargetResponse, OpFailure, StatsRequest, StatsResponse, TxnAbortResponse,
    TxnCommitResponse, TxnPrepareResponse, UnitStats, UnitsRequest, UnitsResponse,
};
use tonic::{Request, Response, Status};

/// How long a member holds a cross-group txn prepared before it reports it
/// in doubt (its coordinator is likely gone; a router then finishes it).
/// Writes to the group wait meanwhile.
const IN_DOUBT_AFTER: Duration = Duration::from_secs(2);

/// Bytes of values an export answers when the caller does not say.
const DEFAULT_EXPORT_BYTES: u64 = 512 * 1024;

fn unexpected() -> Status {
    Error::Internal("unexpected outcome of a cross-group txn entry".into()).into()
}

pub struct ShardService {
    pub group: Arc<Group>,
}

#[tonic::async_trait]
impl Shard for ShardService {
    async fn bump(&self, req: Request<BumpRequest>) -> Result<Response<BumpResponse>, Status> {
        let want = req.into_inner().revision;
        let g = &self.group;
        let rev = g.raise_to(want).await?;
        Ok(Response::new(BumpResponse { header: Some(g.header(rev)) }))
    }

    async fn fence(&self, req: Request<FenceRequest>) -> Result<Response<FenceResponse>, Status> {
        let FenceRequest { prefix, epoch, pending, skip_count } = req.into_inner();
        // The empty prefix fences every key: a ring change (any unit may
        // change owner) refuses every call routed by an older map.
        if epoch == 0 {
            return Err(Status::invalid_argument("tessera: a fence needs an epoch"));
        }
        let g = &self.group;
        // Applied on this member: every write ordered before the fence is
        // counted, every later one routed by an older map is refused.
        g.propose(Op::Fence(Fence { prefix: prefix.clone(), epoch, revision: 0, pending, released: false, settled_epoch: 0 }))
            .await?
            .result?;
        if skip_count {
            return Ok(Response::new(FenceResponse { header: Some(g.header(g.sm.current_revision())), keys: 0 }));
        }
        let count =
            RangeRequest { range_end: shardmap::prefix_end(&prefix), key: prefix, count_only: true, ..Default::default() };
        let (resp, rev) = g.sm.range(&count)?;
        Ok(Response::new(FenceResponse { header: Some(g.header(rev)), keys: resp.count }))
    }

    async fn install_auth(&self, req: Request<AuthState>) -> Result<Response<InstallAuthResponse>, Status> {
        let state = req.into_inner();
        let g = &self.group;
        // Applied here means committed: every write applied after this
        // answer is after it in the log.
        if state.revision > g.sm.federation_auth_revision() {
            g.propose(Op::FederationAuth(state)).await?.result?;
        }
        // A cross-group txn prepared here before the store was logged was
        // checked against an older one, and its commit cannot be refused:
        // the change is answered once it has ended (one is prepared at a
        // time; one prepared after the store was logged was checked by it,
        // and waiting for it too only costs its commit's round trip).
        if let Some(held) = g.sm.cross_held() {
            g.sm.wait_txn_ended(held, g.settings.request_timeout).await?;
        }
        let auth_revision = g.sm.federation_auth_revision();
        Ok(Response::new(InstallAuthResponse { header: Some(g.header(g.sm.current_revision())), auth_revision }))
    }

    async fn stats(&self, _req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let g = &self.group;
        let st = g.status();
        let rev = g.sm.current_revision();
        Ok(Response::new(StatsResponse {
            header: Some(g.header(rev)),
            leader: st.leader,
            is_learner: st.is_learner,
            keys: g.sm.key_count() as u64,
            bytes_in_use: g.sm.size_in_use(),
            db_size: g.sm.engine.size_on_disk(),
            applied_index: g.sm.applied_index(),
            compact_revision: g.sm.compact_revision(),
            in_doubt: g.sm.cross_in_doubt(IN_DOUBT_AFTER),
            expired_leases: g.expired_leases(),
        }))
    }

    async fn txn_prepare(&self, req: Request<TxnPrepare>) -> Result<Response<TxnPrepareResponse>, Status> {
        let g = &self.group;
        let req = req.into_inner();
        let revoke = req.revoke_lease;
        // Checked as the write it prepares: refused if the group logged a
        // newer federation auth store than the router checked it at
        // (`crate::auth::federation`). Its commit is never refused: once
        // prepared everywhere the txn is decided (an auth change waits for
        // it instead, `install_auth`). The group's own auth is off in a
        // federation: no revision of its own store to check.
        let out = g.propose_checked(Op::TxnPrepare(req), 0).await?;
        let Applied::Prepared { revision, compares, failures } = out.result? else {
            return Err(unexpected());
        };
        let failures = failures
            .into_iter()
            .map(|(op, e)| {
                let s = Status::from(e);
                let name = s.metadata().get(tessera_rpc::errors::ERROR_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
                OpFailure { op, code: s.code() as i32, message: s.message().to_string(), name: name.to_string() }
            })
            .collect();
        // Prepared, the group applies no revoke until the txn ends: the
        // lease is still there, or still gone, at its commit.
        let lease_held = revoke != 0 && g.sm.lease_exists(revoke);
        Ok(Response::new(TxnPrepareResponse { header: Some(g.header(out.rev)), revision, compares, failures, lease_held }))
    }

    async fn txn_commit(&self, req: Request<TxnCommit>) -> Result<Response<TxnCommitResponse>, Status> {
        let g = &self.group;
        let out = g.propose(Op::TxnCommit(req.into_inner())).await?;
        let (response, lease_revoked) = match out.result? {
            Applied::Committed(r, revoked) => (r, revoked),
            Applied::CommitFailed(e) => return Err(e.into()),
            _ => return Err(unexpected()),
        };
        Ok(Response::new(TxnCommitResponse { header: Some(g.header(out.rev)), response, lease_revoked }))
    }

    async fn txn_abort(&self, req: Request<TxnAbort>) -> Result<Response<TxnAbortResponse>, Status> {
        let g = &self.group;
        let out = g.propose(Op::TxnAbort(req.into_inner())).await?;
        let Applied::Ended(ended) = out.result? else {
            return Err(unexpected());
        };
        let (committed, prepared) = match ended {
            Ended::Committed(c) => (Some(c), false),
            Ended::Prepared => (None, true),
            Ended::Aborted => (None, false),
        };
        Ok(Response::new(TxnAbortResponse { header: Some(g.header(out.rev)), committed, prepared }))
    }

    async fn export(&self, req: Request<ExportRequest>) -> Result<Response<ExportResponse>, Status> {
        let r = req.into_inner();
        // The empty prefix exports everything the group holds: a leaving
        // group's remainder (its unit pins) once it owns nothing else.
        let g = &self.group;
        // Everything committed before the call is here.
        g.read_index().await?;
        let after = crate::mvcc::Rev::new(r.after_main, r.after_sub);
        let max_bytes =
            if r.max_bytes == 0 { DEFAULT_EXPORT_BYTES } else { r.max_bytes.min(g.settings.max_request_bytes as u64 / 2) };
        let x = g.sm.export(&r.prefix, after, max_bytes, r.leases)?;
        Ok(Response::new(ExportResponse {
            header: Some(g.header(x.revision)),
            entries: x.entries,
            next_main: x.next.main,
            next_sub: x.next.sub,
            done: x.done,
            compact_revision: x.compact_revision,
            leases: x.leases,
            keys: x.keys,
            digest: x.digest,
        }))
    }

    async fn move_stage(&self, req: Request<MoveStage>) -> Result<Response<MoveStageResponse>, Status> {
        let g = &self.group;
        let out = g.propose(Op::MoveStage(req.into_inner())).await?;
        let Applied::Staged { keys, bytes, digest } = out.result? else {
            return Err(unexpected());
        };
        Ok(Response::new(MoveStageResponse { header: Some(g.header(out.rev)), keys, bytes, digest }))
    }

    async fn move_target(&self, req: Request<MoveTarget>) -> Result<Response<MoveTargetResponse>, Status> {
        let g = &self.group;
        let out = g.propose(Op::MoveTarget(req.into_inner())).await?;
        out.result?;
        Ok(Response::new(MoveTargetResponse { header: Some(g.header(out.rev)) }))
    }

    async fn move_release(&self, req: Request<MoveRelease>) -> Result<Response<MoveReleaseResponse>, Status> {
        let g = &self.group;
        let out = g.propose(Op::MoveRelease(req.into_inner())).await?;
        let Applied::Released { keys } = out.result? else {
            return Err(unexpected());
        };
        Ok(Response::new(MoveReleaseResponse { header: Some(g.header(out.rev)), keys }))
    }

    async fn units(&self, req: Request<UnitsRequest>) -> Result<Response<UnitsResponse>, Status> {
        let g = &self.group;
        let depth = match req.into_inner().depth {
            0 => shardmap::map::DEFAULT_DEPTH,
            d => d as usize,
        };
        let mut load = g.sm.load.counts();
        let mut units: Vec<UnitStats> =
            g.sm.unit_sizes(depth)
                .into_iter()
                .map(|(unit, (keys, bytes))| {
                    let c = load.remove(&unit).unwrap_or_default();
                    UnitStats { unit, keys, bytes, writes: c.writes, reads: c.reads }
                })
                .collect();
        // Units with load and no key left (deleted, or moved away).
        units.extend(load.into_iter().map(|(unit, c)| UnitStats {
            unit,
            writes: c.writes,
            reads: c.reads,
            ..Default::default()
        }));
        units.sort_by(|a, b| a.unit.cmp(&b.unit));
        Ok(Response::new(UnitsResponse { header: Some(g.header(g.sm.current_revision())), units }))
    }
}
