//! The coordinator of a transaction across groups (docs/architecture.md,
//! "Transactions across groups"), run by whichever router the client
//! called; the groups keep everything that must survive it.
//!
//! 1. Prepare on every group at once (the first is the primary): each
//!    evaluates its compares and checks its ops, and holds its revision
//!    still (writes there wait) until the txn ends.
//! 2. Decide the branches from every group's compare outcomes, as etcd
//!    evaluates a txn's compares against the state before it.
//! 3. Take the commit revision from the oracle, above every group's
//!    revision at prepare; commit on the primary (the decision, durable in
//!    its log), then on the others. Each runs its part — the chosen ops on
//!    its keys, in order — at exactly that revision.
//! 4. Answer the merged responses; the primary forgets the decision later.
//!
//! A conflict (another txn prepared on a group) aborts and tries again,
//! then preparing one group at a time in id order and waiting where one is
//! held; any other failure before the decision aborts and answers it. A
//! router that dies leaves prepared groups, which report themselves in
//! doubt; any router's poller finishes them (`finish_in_doubt`) with the
//! primary's outcome, aborting there if it had not committed.

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
use tessera_proto::tessera::shard::{OpFailure, TxnCommitResponse, TxnPrepareResponse};
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
    /// Every group, the primary first.
    groups: Vec<u64>,
}

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
        Plan { req, ops: flat.ops, op_groups, compare_groups, groups: groups.into_iter().collect() }
    }

    /// Every group the txn touches, in id order (the primary first).
    pub(crate) fn groups(&self) -> &[u64] {
        &self.groups
    }

    fn primary(&self) -> u64 {
        self.groups[0]
    }

    fn prepare_for(&self, id: i64, wait: bool, g: u64) -> TxnPrepare {
        let having =
            |lists: &[Vec<u64>]| lists.iter().enumerate().filter(|(_, gs)| gs.contains(&g)).map(|(i, _)| i as u32).collect();
        TxnPrepare {
            id,
            primary: self.primary(),
            request: Some(self.req.clone()),
            compares: having(&self.compare_groups),
            ops: having(&self.op_groups),
            wait,
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
    /// aborted this one: try again (preparing in group order).
    Conflict,
    /// A put names a lease the group does not hold yet: copy it, try again.
    Lease { lease: i64, group: u64 },
    /// Answer this.
    Fail(Status),
}

/// Runs the txn `plan` was made for, which spans several groups, as one
/// atomic txn.
pub(crate) async fn run(b: &Arc<Backends>, plan: &Plan<'_>, deadline: Deadline) -> Result<TxnResponse, Status> {
    // The first attempt prepares every group at once; after a conflict,
    // one group at a time in id order, waiting where another txn holds one
    // (all waiting coordinators take groups in the same order, so none
    // waits for another that waits for it): contended txns queue instead
    // of aborting each other over and over.
    for attempt in 0u32.. {
        match attempt_once(b, plan, attempt > 0, deadline).await {
            Ok(resp) => {
                b.observe(resp.header.as_ref());
                return Ok(resp);
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

async fn abort(b: &Backends, g: u64, id: i64, decide: bool, deadline: Deadline) -> Result<Option<TxnCommit>, Status> {
    let msg = TxnAbort { id, decide, forget: false };
    let resp = b.call(g, Access::Read, deadline, msg, |ch, r| async move { shard_client(ch).txn_abort(r).await }).await?;
    Ok(resp.committed)
}

async fn commit(b: &Backends, g: u64, msg: TxnCommit, deadline: Deadline) -> Result<TxnCommitResponse, Status> {
    b.call(g, Access::Read, deadline, msg, |ch, r| async move { shard_client(ch).txn_commit(r).await }).await
}

/// Aborts on every group (the primary deciding), best effort: a group left
/// prepared reports itself in doubt and is finished by a router's poller.
async fn abort_all(b: &Backends, plan: &Plan<'_>, id: i64, deadline: Deadline) {
    if abort(b, plan.primary(), id, true, deadline).await.is_err() {
        return; // the primary's outcome is unknown: leave the rest to recovery
    }
    join_all(plan.groups[1..].iter().map(|g| abort(b, *g, id, false, deadline))).await;
}

fn conflict_or(s: Status) -> Retry {
    match Refusal::from_status(&s) {
        Some(Refusal::TxnConflict { .. } | Refusal::TxnAborted { .. }) => Retry::Conflict,
        _ => Retry::Fail(s),
    }
}

async fn attempt_once(b: &Arc<Backends>, plan: &Plan<'_>, in_order: bool, deadline: Deadline) -> Result<TxnResponse, Retry> {
    // Unique per attempt (an aborted one's id stays refused at its primary);
    // random rather than the oracle's: one round trip less.
    let id = rand::random::<i64>() & i64::MAX;
    let primary = plan.primary();
    // A router finishing an in-doubt group asks the primary, which — if
    // its own prepare has not arrived yet — aborts the txn for good there,
    // so that prepare is refused when it comes.
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
    let (answers, fresh) = tokio::join!(prepares, b.fresh(deadline));
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
    // One revision for every group: fresh, and above each one's revision
    // at prepare (a write may have landed there after the timestamp was
    // taken, or passed the oracle; the oracle then learns of the raise).
    let mut revision = fresh.map_err(Retry::Fail)?;
    let highest = prepared.values().map(|p| p.revision).max().unwrap_or(0);
    if revision <= highest {
        revision = highest + 1;
        b.tell(revision, deadline).await.map_err(Retry::Fail)?;
    }
    let parts: Vec<TxnPart> = plan.groups.iter().map(|g| TxnPart { group: *g, ops: Some(plan.part(&decided, *g)) }).collect();
    let decision = TxnCommit { id, revision, parts: parts.clone() };
    let mut answers: BTreeMap<u64, VecDeque<ResponseOp>> = BTreeMap::new();
    // From here on the txn may have committed: a failure is answered as
    // etcd answers a write whose outcome it could not learn (a request
    // timeout), never with an inner call's error, which could read as "not
    // applied" (a connect failure on the last replica tried, a refusal).
    let unknown = || Retry::Fail(Error::Timeout.into());
    // A group that had committed its part before (a commit sent again after
    // its answer was lost) no longer has the part's results.
    let lost = |resp: &TxnCommitResponse, g: u64| {
        resp.response.is_none() && parts.iter().any(|p| p.group == g && p.ops.as_ref().is_some_and(|o| !o.success.is_empty()))
    };
    let raft_term = match commit(b, primary, decision, deadline).await {
        Ok(resp) if lost(&resp, primary) => {
            finish_others(b, plan, id, revision, &parts, deadline).await;
            return Err(unknown());
        }
        Ok(resp) => {
            answers.insert(primary, resp.response.unwrap_or_default().responses.into());
            resp.header.map_or(0, |h| h.raft_term)
        }
        Err(s) => {
            // Not committed for sure only if refused; otherwise ask.
            let committed = match Refusal::from_status(&s) {
                Some(Refusal::TxnAborted { .. }) => None,
                _ => abort(b, primary, id, true, deadline).await.map_err(|_| unknown())?,
            };
            if committed.is_none() {
                abort_all(b, plan, id, deadline).await;
                return Err(Retry::Conflict);
            }
            // Committed, but its answer was lost with the primary's results.
            finish_others(b, plan, id, revision, &parts, deadline).await;
            return Err(unknown());
        }
    };
    let results = finish_others(b, plan, id, revision, &parts, deadline).await;
    for (g, r) in results {
        match r {
            Ok(resp) if lost(&resp, g) => return Err(unknown()),
            Ok(resp) => {
                answers.insert(g, resp.response.unwrap_or_default().responses.into());
            }
            // Committed (the primary decided): the group is finished by
            // recovery; this client cannot be given its part's results.
            Err(s) => {
                tracing::warn!(txn = id, group = g, error = %s, "cross-group txn committed; a participant's commit failed");
                return Err(unknown());
            }
        }
    }
    forget_later(b, primary, id);
    crate::metrics::CROSS_TXNS.inc();
    let mut written = false;
    let mut resp = assemble(plan, &decided, &mut answers, revision, &mut written);
    resp.header = Some(ResponseHeader { revision, raft_term, ..Default::default() });
    Ok(resp)
}

async fn finish_others(
    b: &Backends,
    plan: &Plan<'_>,
    id: i64,
    revision: i64,
    parts: &[TxnPart],
    deadline: Deadline,
) -> Vec<(u64, Result<TxnCommitResponse, Status>)> {
    let others = &plan.groups[1..];
    let own = |g: u64| TxnCommit { id, revision, parts: parts.iter().filter(|p| p.group == g).cloned().collect() };
    let results = join_all(others.iter().map(|g| commit(b, *g, own(*g), deadline))).await;
    others.iter().copied().zip(results).collect()
}

/// The primary drops the decision once every group has committed (in the
/// background: the client has its answer).
fn forget_later(b: &Arc<Backends>, primary: u64, id: i64) {
    let b = b.clone();
    tokio::spawn(async move {
        let msg = TxnAbort { id, decide: false, forget: true };
        let deadline = Deadline::default_from_now();
        let _ = b.call(primary, Access::Read, deadline, msg, |ch, r| async move { shard_client(ch).txn_abort(r).await }).await;
    });
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
/// likely gone): the primary's outcome — aborting it there unless it
/// committed — applied to the group. Safe to run alongside a live
/// coordinator: the primary's log orders its commit against this abort.
pub async fn finish_in_doubt(b: &Backends, group: u64, txn: TxnPrepared) -> Result<(), Status> {
    let deadline = Deadline::default_from_now();
    tracing::info!(txn = txn.id, group, primary = txn.primary, "finishing a cross-group txn left in doubt");
    match abort(b, txn.primary, txn.id, true, deadline).await? {
        Some(decision) => {
            let parts = decision.parts.into_iter().filter(|p| p.group == group).collect();
            commit(b, group, TxnCommit { id: txn.id, revision: decision.revision, parts }, deadline).await?;
        }
        None if group != txn.primary => {
            abort(b, group, txn.id, false, deadline).await?;
        }
        None => {}
    }
    crate::metrics::CROSS_TXNS_FINISHED.inc();
    Ok(())
}

/// Finishes, once a second, the txns the groups report in doubt.
pub async fn recover(b: Arc<Backends>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (group, txn) in b.in_doubt() {
            if let Err(e) = finish_in_doubt(&b, group, txn).await {
                tracing::warn!(group, error = %e, "could not finish a cross-group txn left in doubt yet");
            }
        }
    }
}
