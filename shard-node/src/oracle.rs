//! The revision oracle: one timeline of revisions for a whole federation,
//! served by the leader of one group (placement's store, `--revision-oracle`).
//! Shard-nodes take every write's revision hint from it and tell it of
//! revisions they applied above their hint; reads and watches take their
//! revision from it (`tessera_rpc::oracle` is the client). Why one oracle
//! rather than clocks or per-group bumps: docs/architecture.md, "One
//! revision timeline".
//!
//! Invariant: every value answered is greater than every value answered or
//! observed before the call started, whichever member answered.
//! - The leader hands out values only below the group's committed
//!   reservation (`Reservation`, replicated state); it raises the
//!   reservation through raft before passing it.
//! - A new leader first applies everything committed (ReadIndex), then
//!   starts at the reservation: above anything an old leader handed out.
//! - Values are allocated first and the answer sent only after a ReadIndex
//!   confirms this member still leads: an old leader that lost an election
//!   cannot answer after the new one did.

use crate::engine::keys::GroupKeys;
use crate::engine::WriteBatch;
use crate::error::{Error, Refusal, Result};
use crate::group::Group;
use std::sync::Arc;
use tessera_proto::tessera::command::{command::Op, OracleLimit};
use tessera_proto::tessera::shard::oracle_server::Oracle as OracleRpc;
use tessera_proto::tessera::shard::{TimestampRequest, TimestampResponse};
use tonic::{Request, Response, Status};

/// Values reserved per raft write: a new leader skips at most this many.
const WINDOW: i64 = 1 << 20;

const META_LIMIT: &str = "oracle_limit";

/// The committed reservation (replicated, under the group's state lock).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    limit: i64,
}

impl Reservation {
    pub fn load(engine: &dyn crate::engine::Engine, keys: &GroupKeys) -> Result<Self> {
        let limit = engine.get(&keys.meta(META_LIMIT))?.map(|v| crate::engine::keys::decode_i64(&v)).transpose()?.unwrap_or(0);
        Ok(Reservation { limit })
    }

    pub fn limit(&self) -> i64 {
        self.limit
    }

    /// Applies a committed raise (never lowers it).
    pub fn raise_limit(&mut self, limit: i64, keys: &GroupKeys, batch: &mut WriteBatch) {
        if limit > self.limit {
            self.limit = limit;
            batch.put(keys.meta(META_LIMIT), limit.to_be_bytes().to_vec());
        }
    }
}

/// The leader's side: what it has handed out in its term.
struct Allocator {
    /// The leader term this allocator is valid for (0: none yet).
    term: u64,
    issued: i64,
}

pub struct OracleService {
    group: Arc<Group>,
    // A tokio mutex: held across the raft write that raises the reservation
    // (rare: once per WINDOW values); not part of the node's lock hierarchy,
    // as no thread blocks on it.
    alloc: tokio::sync::Mutex<Allocator>,
}

impl OracleService {
    pub fn new(group: Arc<Group>) -> Self {
        OracleService { group, alloc: tokio::sync::Mutex::new(Allocator { term: 0, issued: 0 }) }
    }

    /// Hands out `count` fresh values after raising to `observe`: (first, issued).
    pub async fn timestamps(&self, count: u32, observe: i64) -> Result<(i64, i64)> {
        let g = &self.group;
        let (first, issued) = {
            let mut a = self.alloc.lock().await;
            let st = g.status();
            if !st.is_leader {
                return Err(Refusal::NotLeader { leader: st.leader }.into());
            }
            if a.term != st.term {
                // A new term: apply everything committed before it, so the
                // reservation read is the newest any old leader used.
                g.read_index().await?;
                *a = Allocator { term: st.term, issued: g.sm.oracle_limit() };
            }
            a.issued = a.issued.max(observe);
            let want = a.issued + count as i64;
            if want >= g.sm.oracle_limit() {
                let out = g.propose(Op::OracleLimit(OracleLimit { limit: want + WINDOW })).await?;
                out.result?;
                if g.sm.oracle_limit() <= want {
                    return Err(Error::Internal("the oracle's reservation did not rise".into()));
                }
            }
            let first = if count > 0 { a.issued + 1 } else { 0 };
            a.issued = want;
            (first, want)
        };
        // Still the leader after allocating: no newer leader has answered yet.
        g.read_index().await?;
        if g.status().term != self.alloc.lock().await.term {
            return Err(Error::LeaderChanged);
        }
        Ok((first, issued))
    }
}

#[tonic::async_trait]
impl OracleRpc for OracleService {
    async fn timestamps(&self, req: Request<TimestampRequest>) -> std::result::Result<Response<TimestampResponse>, Status> {
        let r = req.into_inner();
        let (first, issued) = OracleService::timestamps(self, r.count, r.observe).await?;
        Ok(Response::new(TimestampResponse { first, issued }))
    }
}
