//! The coordinator of a transaction across groups (docs/architecture.md,
//! "Transactions across groups"), run by whichever router the client
//! called; the groups keep everything that must survive it.
//!
//! 1. Prepare on every group at once: each evaluates its compares and
//!    checks its ops, and holds its revision still (writes there wait)
//!    until the txn ends. Once every group has prepared, the txn is
//!    committed.
//! 2. Decide the branches from every group's compare outcomes, as etcd
//!    evaluates a txn's compares against the state before it.
//! 3. Take the commit revision from the oracle, above every group's
//!    revision at prepare; send every group the commit (all parts) at once.
//!    Each runs its part — the chosen ops on its keys, in order — at
//!    exactly that revision, and keeps the commit until forgotten.
//! 4. Answer the merged responses; the groups forget the commit later.
//!
//! Two raft rounds on each group, side by side across groups. A conflict
//! (another txn prepared on a group) aborts and tries again, then preparing
//! one group at a time in id order and waiting where one is held; any other
//! failure before the commits go out aborts and answers it. A router that
//! dies leaves prepared groups, which report themselves in doubt; any
//! router's poller finishes them (`finish_in_doubt`): it fences the txn on
//! every group, then commits it everywhere if any group had committed, or
//! else aborts it.

use crate::backends::{shard_client, Access, Backends};
use crate::deadline::Deadline;
use crate::leases;
use futures::future::join_all;
use shardmap::map::Routing;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::request_op::Request as OpRequest;
use tessera_proto::etcdserverpb::response_op::Response as OpResponse;
use tessera_proto::etcdserverpb::{
    DeleteRangeResponse, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use tessera_proto::tessera::command::{TxnAbort, TxnCommit, TxnPart, TxnPrepare, TxnPrepared};
use tessera_proto::tessera::shard::{OpFailure, TxnAbortResponse, TxnCommitResponse, TxnPrepareResponse};
use tessera_rpc::txn_tree::{self, Decided, Step};
use tessera_rpc::{Error, Refusal};
use tonic::{Code, Status};

/// Which groups each compare and leaf op of a txn touches (shared order):
/// how the router decides whether a txn spans groups, and how it runs one.
pub(crate) struct Plan<'a> {
    req: &'a TxnRequest,
    ops: Vec<&'a RequestOp>,
    op_groups: Vec<Vec<u64>>,
    compare_groups: Vec<Vec<u64>>,
    /// Every group, in id order.
    groups: Vec<u64>,
    /// A lease every group revokes with its part (0: none).
    revoke_lease: i64,
}

/// What a lease revoke runs as its txn: nothing but the revoke.
static NO_OPS: TxnRequest = TxnRequest { compare: Vec::new(), success: Vec::new(), failure: Vec::new() };

fn op_groups(r: &Routing, op: &RequestOp) -> Vec<u64> {
    match &op.request {
        Some(OpRequest::RequestRange(x)) => r.groups_for_range(&x.key, &x.range_end),
        Some(OpRequest::RequestPut(x)) => r.group_of(&x.key).into_iter().collect(),
        Some(OpRequest::RequestDeleteRange(x)) => r.groups_for_range(&x.key, &x.range_end),
        _ => vec![],
    }
}

impl<'a> Plan<'a> {
    pub(crate) fn new(r: &Routing, req: &'a TxnRequest) -> Self {
        let flat = txn_tree::flatten(req);
        let compare_groups: Vec<Vec<u64>> = flat.compares.iter().map(|c| r.groups_for_range(&c.key, &c.range_end)).collect();
        let op_groups: Vec<Vec<u64>> = flat.ops.iter().map(|op| op_groups(r, op)).collect();
        let groups: BTreeSet<u64> = compare_groups.iter().chain(&op_groups).flatten().copied().collect();
        Plan { req, ops: flat.ops, op_groups, compare_groups, groups: groups.into_iter().collect(), revoke_lease: 0 }
    }

    /// Revoking `lease` on `groups`: its keys there go at one revision.
    fn revoke(lease: i64, groups: Vec<u64>) -> Plan<'static> {
        Plan { req: &NO_OPS, ops: vec![], op_groups: vec![], compare_groups: vec![], groups, revoke_lease: lease }
    }

    /// Every group the txn touches, in id order.
    pub(crate) fn groups(&self) -> &[u64] {
        &self.groups
    }

    fn prepare_for(&self, id: i64, wait: bool, g: u64) -> TxnPrepare {
        let having =
            |lists: &[Vec<u64>]| lists.iter().enumerate().filter(|(_, gs)| gs.contains(&g)).map(|(i, _)| i as u32).collect();
        TxnPrepare {
            id,
            request: Some(self.req.clone()),
            compares: having(&self.compare_groups),
            ops: having(&self.op_groups),
            wait,
            groups: self.groups.clone(),
            revoke_lease: self.revoke_lease,
        }
    }

    /// Each compare's outcome over every group: false if it fails where a
    /// key is; else true if it holds where one is; with no key anywhere,
    /// as against a missing key (every group answered that alike).
    fn outcomes(&self, prepared: &BTreeMap<u64, TxnPrepareResponse>) -> Vec<bool> {
        let mut per_compare: Vec<Vec<(bool, bool)>> = vec![vec![]; self.compare_groups.len()];
        for (g, resp) in prepared {
            let asked = self.compare_groups.iter().enumerate().filter(|(_, gs)| gs.contains(g)).map(|(i, _)| i);
            for (i, o) in asked.zip(&resp.compares) {
                per_compare[i].push((o.found, o.holds));
            }
        }
        per_compare
            .into_iter()
            .map(|parts| {
                let found: Vec<bool> = parts.iter().filter(|(f, _)| *f).map(|(_, h)| *h).collect();
                if found.is_empty() {
                    parts.first().is_some_and(|(_, h)| *h)
                } else {
                    found.iter().all(|h| *h)
                }
            })
            .collect()
    }

    /// Group `g`'s part: the chosen ops on its keys, in execution order.
    fn part(&self, decided: &Decided, g: u64) -> TxnRequest {
        let success =
            decided.ops().into_iter().filter(|i| self.op_groups[*i].contains(&g)).map(|i| self.ops[i].clone()).collect();
        TxnRequest { compare: vec![], success, failure: vec![] }
    }
}

/// The first chosen op that a group's check refused, as etcd answers it.
fn first_failure(decided: &Decided, prepared: &BTreeMap<u64, TxnPrepareResponse>) -> Option<(u64, usize, Status)> {
    for i in decided.ops() {
        for (g, resp) in prepared {
            if let Some(f) = resp.failures.iter().find(|f| f.op as usize == i) {
                return Some((*g, i, failure_status(f)));
            }
        }
    }
    None
}

fn failure_status(f: &OpFailure) -> Status {
    let mut s = Status::new(Code::from_i32(f.code), f.message.clone());
    if let Ok(v) = f.name.parse() {
        s.metadata_mut().insert(tessera_rpc::errors::ERROR_HEADER, v);
    }
    s
}

/// Why an attempt did not commit, and what comes next.
enum Retry {
    /// Another txn held a group, or a router finishing in-doubt txns
    /// fenced this one before it prepared everywhere: try again
    /// (preparing in group order).
    Conflict,
    /// A put names a lease the group does not hold yet: copy it, try again.
    Lease { lease: i64, group: u64 },
    /// Answer this.
    Fail(Status),
}

/// Runs the txn `plan` was made for, which spans several groups, as one
/// atomic txn.
pub(crate) async fn run(b: &Arc<Backends>, plan: &Plan<'_>, deadline: Deadline) -> Result<TxnResponse, Status> {
    Ok(run_plan(b, plan, deadline).await?.0)
}

/// Revokes `lease` on every group at once (one revision for all of its
/// keys, as etcd deletes them): the router's LeaseRevoke, and how an
/// expired lease ends. Answers the header, or None if no group held it.
pub(crate) async fn revoke_lease(b: &Arc<Backends>, lease: i64, deadline: Deadline) -> Result<Option<ResponseHeader>, Status> {
    let groups: Vec<u64> = b.routing()?.map.groups.keys().copied().collect();
    if groups.is_empty() {
        return Err(Status::unavailable("tessera: the shard map has no groups yet"));
    }
    let (resp, revoked) = run_plan(b, &Plan::revoke(lease, groups), deadline).await?;
    Ok(revoked.then_some(resp.header.unwrap_or_default()))
}

/// Runs `plan`'s txn; answers it and whether a group revoked its lease.
async fn run_plan(b: &Arc<Backends>, plan: &Plan<'_>, deadline: Deadline) -> Result<(TxnResponse, bool), Status> {
    // The first attempt prepares every group at once; after a conflict,
    // one group at a time in id order, waiting where another txn holds one
    // (all waiting coordinators take groups in the same order, so none
    // waits for another that waits for it): contended txns queue instead
    // of aborting each other over and over.
    for attempt in 0u32.. {
        match attempt_once(b, plan, attempt > 0, deadline).await {
            Ok((resp, revoked)) => {
                b.observe(resp.header.as_ref());
                return Ok((resp, revoked));
            }
            Err(Retry::Fail(s)) => return Err(s),
            Err(Retry::Lease { lease, group }) if attempt < 3 => leases::replicate(b, lease, group, deadline).await?,
            Err(Retry::Lease { .. }) => return Err(Error::LeaseNotFound.into()),
            Err(Retry::Conflict) => {
                crate::metrics::CROSS_TXN_CONFLICTS.inc();
                if deadline.expired() {
                    return Err(crate::deadline::exceeded());
                }
            }
        }
    }
    unreachable!()
}

async fn prepare(b: &Backends, g: u64, msg: TxnPrepare, deadline: Deadline) -> Result<TxnPrepareResponse, Status> {
    // Safe to repeat: a group answers the same prepare again.
    b.call(g, Access::Read, deadline, msg, |ch, r| async move { shard_client(ch).txn_prepare(r).await }).await
}

/// Ends txn `id` on group `g` (see `TxnAbort`): aborts it, fences it, or
/// forgets its commit.
async fn end(b: &Backends, g: u64, msg: TxnAbort, deadline: Deadline) -> Result<TxnAbortResponse, Status> {
    b.call(g, Access::Read, deadline, msg, |ch, r| async move { shard_client(ch).txn_abort(r).await }).await
}

fn abort_msg(id: i64) -> TxnAbort {
    TxnAbort { id, ..Default::default() }
}

async fn commit(b: &Backends, g: u64, msg: TxnCommit, deadline: Deadline) -> Result<TxnCommitResponse, Status> {
    b.call(g, Access::Read, deadline, msg, |ch, r| async move { shard_client(ch).txn_commit(r).await }).await
}

/// Aborts on every group (no commit went out), best effort: a group left
/// prepared reports itself in doubt and is finished by a router's poller.
async fn abort_all(b: &Backends, plan: &Plan<'_>, id: i64, deadline: Deadline) {
    join_all(plan.groups.iter().map(|g| end(b, *g, abort_msg(id), deadline))).await;
}

fn conflict_or(s: Status) -> Retry {
    match Refusal::from_status(&s) {
        Some(Refusal::TxnConflict { .. } | Refusal::TxnAborted { .. }) => Retry::Conflict,
        _ => Retry::Fail(s),
    }
}

async fn attempt_once(
    b: &Arc<Backends>,
    plan: &Plan<'_>,
    in_order: bool,
    deadline: Deadline,
) -> Result<(TxnResponse, bool), Retry> {
    // Unique per attempt (an aborted one's id stays refused where it was
    // aborted); random rather than the oracle's: one round trip less.
    let id = rand::random::<i64>() & i64::MAX;
    let prepares = async {
        if in_order {
            let mut answers = vec![];
            for g in &plan.groups {
                let a = prepare(b, *g, plan.prepare_for(id, true, *g), deadline).await;
                let failed = a.is_err();
                answers.push(a);
                if failed {
                    break;
                }
            }
            answers
        } else {
            join_all(plan.groups.iter().map(|g| prepare(b, *g, plan.prepare_for(id, false, *g), deadline))).await
        }
    };
    // The commit revision is taken meanwhile: any timestamp issued after
    // the txn began orders it after everything that completed before it.
    // Not for a lease revoke: the lease may be gone already (another
    // router revoked it), and a revision taken for nothing would show as
    // a revision no write has.
    let revoking = plan.revoke_lease != 0;
    let (answers, fresh) = if revoking {
        (prepares.await, None)
    } else {
        let (answers, fresh) = tokio::join!(prepares, b.fresh(deadline));
        (answers, Some(fresh))
    };
    let mut prepared = BTreeMap::new();
    for (g, a) in plan.groups.iter().zip(answers) {
        match a {
            Ok(p) => {
                prepared.insert(*g, p);
            }
            Err(s) => {
                abort_all(b, plan, id, deadline).await;
                return Err(conflict_or(s));
            }
        }
    }
    let decided = txn_tree::decide(plan.req, &plan.outcomes(&prepared));
    if let Some((group, i, s)) = first_failure(&decided, &prepared) {
        abort_all(b, plan, id, deadline).await;
        return Err(match &plan.ops[i].request {
            Some(OpRequest::RequestPut(p)) if p.lease != 0 && leases::is_not_found(&s) => Retry::Lease { lease: p.lease, group },
            _ => Retry::Fail(s),
        });
    }
    if revoking && !prepared.values().any(|p| p.lease_held) {
        abort_all(b, plan, id, deadline).await;
        return Ok((TxnResponse::default(), false));
    }
    let fresh = match fresh {
        Some(f) => f,
        None => b.fresh(deadline).await,
    };
    // One revision for every group: fresh, and above each one's revision
    // at prepare (a write may have landed there after the timestamp was
    // taken).
    let highest = prepared.values().map(|p| p.revision).max().unwrap_or(0);
    let revision = match commit_revision(b, fresh, highest, deadline).await {
        Ok(r) => r,
        Err(s) => {
            abort_all(b, plan, id, deadline).await;
            return Err(Retry::Fail(s));
        }
    };
    // Every group prepared: the txn is committed. Any failure from here on
    // is answered as etcd answers a write whose outcome it could not learn
    // (a request timeout), never with an inner call's error, which could
    // read as "not applied"; a group left prepared is finished by recovery.
    fail::fail_point!("cross_txn::after_prepare");
    let parts: Vec<TxnPart> = plan
        .groups
        .iter()
        .map(|g| TxnPart { group: *g, ops: Some(plan.part(&decided, *g)), revoke_lease: plan.revoke_lease })
        .collect();
    // Whether a group's part has results to answer (a commit sent again
    // after its answer was lost has them no more).
    let answers_due: Vec<bool> =
        parts.iter().map(|p| p.ops.as_ref().is_some_and(|o| !o.success.is_empty()) || p.revoke_lease != 0).collect();
    let decision = TxnCommit { id, revision, parts, recover: false };
    let results = join_all(plan.groups.iter().map(|g| {
        let decision = decision.clone();
        async move {
            fail::fail_point!("cross_txn::before_commit");
            commit(b, *g, decision, deadline).await
        }
    }))
    .await;
    let mut answers: BTreeMap<u64, VecDeque<ResponseOp>> = BTreeMap::new();
    let (mut raft_term, mut revoked) = (0, false);
    for ((g, r), due) in plan.groups.iter().zip(results).zip(answers_due) {
        match r {
            // A group that had committed its part before (a commit sent
            // again after its answer was lost) no longer has its results
            // (nor whether it revoked the lease).
            Ok(resp) if resp.response.is_none() && due => {
                return Err(Retry::Fail(Error::Timeout.into()));
            }
            Ok(resp) => {
                raft_term = raft_term.max(resp.header.as_ref().map_or(0, |h| h.raft_term));
                revoked |= resp.lease_revoked;
                answers.insert(*g, resp.response.unwrap_or_default().responses.into());
            }
            Err(s) => {
                tracing::warn!(txn = id, group = g, error = %s, "a cross-group txn's commit failed; recovery finishes it");
                return Err(Retry::Fail(Error::Timeout.into()));
            }
        }
    }
    b.forget_later(&plan.groups, id);
    crate::metrics::CROSS_TXNS.inc();
    let mut written = false;
    let mut resp = assemble(plan, &decided, &mut answers, revision, &mut written);
    resp.header = Some(ResponseHeader { revision, raft_term, ..Default::default() });
    Ok((resp, revoked))
}

/// The one revision a txn commits at on every group: `fresh` (a timestamp
/// issued after the txn began), or if a write landed on a group after it
/// (above `highest`, every group's revision at prepare) a timestamp taken
/// now: every revision a group holds was handed out by the oracle, so a
/// later one is above it. Never `highest + 1`: the oracle may have handed
/// that to a write of another group (two writes at one revision).
async fn commit_revision(b: &Backends, fresh: Result<i64, Status>, highest: i64, deadline: Deadline) -> Result<i64, Status> {
    let mut fresh = fresh?;
    while fresh <= highest {
        fresh = b.fresh(deadline).await?;
    }
    Ok(fresh)
}

/// Every group drops the commits of txns all of whose groups committed,
/// in one entry per group for all the txns queued since the last time
/// (one entry per txn would cost each group a third raft round per txn).
/// Best effort: a commit record left behind costs its bytes, nothing else.
async fn send_forgets(b: &Backends) {
    let deadline = Deadline::default_from_now();
    let batches = b.take_forgets();
    join_all(batches.into_iter().map(|(g, ids)| end(b, g, TxnAbort { forget: ids, ..Default::default() }, deadline))).await;
}

/// The client's answer: each chosen op's results from the groups it
/// touched, merged as a plain call over those groups would be.
fn assemble(
    plan: &Plan<'_>,
    decided: &Decided,
    answers: &mut BTreeMap<u64, VecDeque<ResponseOp>>,
    revision: i64,
    written: &mut bool,
) -> TxnResponse {
    let mut responses = vec![];
    for step in &decided.steps {
        let response = match step {
            Step::Txn(d) => {
                let inner = assemble(plan, d, answers, revision, written);
                OpResponse::ResponseTxn(TxnResponse { header: Some(Default::default()), ..inner })
            }
            Step::Op(i) => {
                let parts: Vec<OpResponse> = plan.op_groups[*i]
                    .iter()
                    .filter_map(|g| answers.get_mut(g).and_then(|q| q.pop_front()).and_then(|r| r.response))
                    .collect();
                let op = &plan.ops[*i].request;
                *written |= !matches!(op, Some(OpRequest::RequestRange(_)));
                // As etcd: an op's header is the txn's revision as it saw it.
                let header =
                    Some(ResponseHeader { revision: if *written { revision } else { revision - 1 }, ..Default::default() });
                merge_op(op, parts, header)
            }
        };
        responses.push(ResponseOp { response: Some(response) });
    }
    TxnResponse { header: None, succeeded: decided.succeeded, responses }
}

fn merge_op(op: &Option<OpRequest>, parts: Vec<OpResponse>, header: Option<ResponseHeader>) -> OpResponse {
    match op {
        Some(OpRequest::RequestRange(req)) => {
            let ranges = parts.into_iter().filter_map(|p| if let OpResponse::ResponseRange(r) = p { Some(r) } else { None });
            let merged = crate::ranges::merge(req, ranges.collect());
            OpResponse::ResponseRange(RangeResponse { header, ..merged })
        }
        Some(OpRequest::RequestDeleteRange(_)) => {
            let mut out = DeleteRangeResponse { header, ..Default::default() };
            for p in parts {
                if let OpResponse::ResponseDeleteRange(d) = p {
                    out.deleted += d.deleted;
                    out.prev_kvs.extend(d.prev_kvs);
                }
            }
            out.prev_kvs.sort_by(|a, b| a.key.cmp(&b.key));
            OpResponse::ResponseDeleteRange(out)
        }
        _ => match parts.into_iter().next() {
            Some(OpResponse::ResponsePut(p)) => OpResponse::ResponsePut(tessera_proto::etcdserverpb::PutResponse { header, ..p }),
            Some(other) => other,
            None => OpResponse::ResponsePut(Default::default()),
        },
    }
}

/// Finishes a txn a group has held prepared for a while (its coordinator is
/// likely gone). First fences it on every group: a prepared one stays
/// prepared but refuses the coordinator's commit, one that had not
/// prepared aborts it (so no commit ever went out). Then only recovery
/// ends it: committed everywhere if a group had committed (its record has
/// every part), else aborted everywhere. Several routers may run this for
/// one txn at once, and a live coordinator too: each group's log orders
/// their calls, and every recoverer reaches the same outcome.
pub async fn finish_in_doubt(b: &Backends, group: u64, txn: TxnPrepared) -> Result<(), Status> {
    let deadline = Deadline::default_from_now();
    let id = txn.id;
    tracing::info!(txn = id, group, groups = ?txn.groups, "finishing a cross-group txn left in doubt");
    let fence = TxnAbort { id, fence: true, ..Default::default() };
    let answers = join_all(txn.groups.iter().map(|g| end(b, *g, fence.clone(), deadline))).await;
    let mut held = vec![];
    let mut decision = None;
    let mut aborted = vec![];
    for (g, a) in txn.groups.iter().zip(answers) {
        let a = a?;
        if a.prepared {
            held.push(*g);
        } else if a.committed.is_none() {
            aborted.push(*g);
        }
        decision = decision.or(a.committed);
    }
    if decision.is_some() && !aborted.is_empty() {
        // Commits go out only once every group has prepared, and a group
        // aborts a fenced txn only when none committed: a bug if seen.
        tracing::error!(txn = id, ?aborted, "a cross-group txn committed on some groups was aborted on others");
    }
    match decision {
        Some(c) => {
            let c = TxnCommit { recover: true, ..c };
            for r in join_all(held.iter().map(|g| commit(b, *g, c.clone(), deadline))).await {
                r?;
            }
            b.forget_later(&txn.groups, id);
        }
        None => {
            for r in join_all(held.iter().map(|g| end(b, *g, abort_msg(id), deadline))).await {
                r?;
            }
        }
    }
    crate::metrics::CROSS_TXNS_FINISHED.inc();
    Ok(())
}

/// Once a second: finishes the txns the groups report in doubt, revokes
/// the leases they report expired (on every group at once), and sends the
/// groups the committed txns they may forget.
pub async fn recover(b: Arc<Backends>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        send_forgets(&b).await;
        for (group, txn) in b.in_doubt() {
            if let Err(e) = finish_in_doubt(&b, group, txn).await {
                tracing::warn!(group, error = %e, "could not finish a cross-group txn left in doubt yet");
            }
        }
        for lease in b.expired_leases() {
            match revoke_lease(&b, lease, Deadline::default_from_now()).await {
                Ok(Some(_)) => crate::metrics::LEASES_EXPIRED.inc(),
                Ok(None) => {} // another router revoked it first
                Err(e) => tracing::warn!(lease, error = %e, "could not revoke an expired lease yet"),
            }
        }
    }
}
