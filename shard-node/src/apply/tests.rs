//! The state machine on an in-memory engine: each command as etcd applies
//! it, failures that leave nothing behind, and a reopen that finds exactly
//! what was applied.

use super::*;
use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, MemoryEngine};
use std::sync::Arc;
use tessera_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use tessera_proto::etcdserverpb::request_op::Request;
use tessera_proto::etcdserverpb::{response_op, ResponseOp};
use tessera_proto::etcdserverpb::{
    AlarmRequest, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp,
};
use tessera_proto::tessera::command::{RevisionBump, TxnAbort, TxnPrepare};

struct Fixture {
    engine: Arc<dyn Engine>,
    sm: StateMachine,
    index: u64,
}

impl Fixture {
    fn new() -> Self {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let sm = StateMachine::open(engine.clone(), GroupKeys::new(1), 1 << 20).unwrap();
        Fixture { engine, sm, index: 0 }
    }

    /// Applies `op` as the next entry, proposed with `hint` and `epoch`.
    fn apply_with(&mut self, op: Op, hint: i64, epoch: u64) -> ApplyOutput {
        self.index += 1;
        let (p, out) = self.sm.apply_test_entry(self.index, op, hint, epoch);
        assert_eq!(p, Proposer { member: 1, seq: self.index });
        out
    }

    fn apply(&mut self, op: Op) -> ApplyOutput {
        self.apply_with(op, 0, 0)
    }

    fn put(&mut self, key: &str, value: &str, lease: i64) -> Result<i64> {
        let out = self.apply(Op::Put(PutRequest { key: key.into(), value: value.into(), lease, ..Default::default() }));
        out.result.map(|_| out.rev)
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let (r, _) = self.sm.range(&RangeRequest { key: key.into(), ..Default::default() }).unwrap();
        r.kvs.into_iter().next().map(|kv| kv.value)
    }

    fn reopen(&self) -> StateMachine {
        StateMachine::open(self.engine.clone(), GroupKeys::new(1), 1 << 20).unwrap()
    }
}

#[test]
fn writes_take_etcd_revisions_and_survive_a_reopen() {
    let mut f = Fixture::new();
    assert_eq!(f.sm.current_revision(), 1, "an empty store is at revision 1, as etcd's");
    assert_eq!(f.put("a", "1", 0), Ok(2));
    assert_eq!(f.put("b", "2", 0), Ok(3));
    assert_eq!(f.put("a", "3", 0), Ok(4));
    let del = f.apply(Op::DeleteRange(DeleteRangeRequest { key: "b".into(), ..Default::default() }));
    assert!(matches!(del.result, Ok(Applied::DeleteRange(ref d)) if d.deleted == 1));
    assert_eq!(del.rev, 5);
    assert_eq!(f.get("a").as_deref(), Some(&b"3"[..]));
    assert_eq!(f.get("b"), None);

    let again = f.reopen();
    assert_eq!(again.applied_index(), f.index);
    assert_eq!(again.current_revision(), 5);
    assert_eq!(again.hash_kv(0).unwrap(), f.sm.hash_kv(0).unwrap());
    let (old, _) = again.range(&RangeRequest { key: "a".into(), revision: 2, ..Default::default() }).unwrap();
    assert_eq!(old.kvs[0].value, b"1", "history is on disk");
}

#[test]
fn a_hint_raises_the_revision_and_a_bump_moves_it_without_data() {
    let mut f = Fixture::new();
    let out = f.apply_with(Op::Put(PutRequest { key: "k".into(), ..Default::default() }), 1000, 0);
    assert_eq!(out.rev, 1000);
    assert_eq!(f.apply_with(Op::Bump(RevisionBump {}), 2000, 0).rev, 2000);
    assert_eq!(f.apply_with(Op::Bump(RevisionBump {}), 10, 0).rev, 2000, "never back");
    assert_eq!(f.put("k", "v", 0), Ok(2001), "no hint (a standalone group): the next revision, as etcd");
}

/// The oracle handed the hint to this write alone; the next revision may be
/// another group's write's: a write whose hint the group passed is refused
/// untouched (its proposer takes a fresh hint), never applied at prev + 1.
#[test]
fn a_write_whose_hint_the_group_passed_takes_no_revision() {
    let mut f = Fixture::new();
    assert_eq!(f.apply_with(Op::Bump(RevisionBump {}), 2000, 0).rev, 2000);
    let put = |key: &str| Op::Put(PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() });
    for hint in [1999, 2000] {
        let out = f.apply_with(put("k"), hint, 0);
        assert_eq!(out.result.err(), Some(Error::Refused(Refusal::RevisionPassed { current: 2000 })));
        assert_eq!((out.rev, f.get("k")), (2000, None));
    }
    let del = Op::DeleteRange(DeleteRangeRequest { key: "none".into(), ..Default::default() });
    assert!(f.apply_with(del, 1500, 0).result.is_err(), "a delete of nothing too: its answer names its revision");
    let out = f.apply_with(put("k"), 2001, 0);
    assert_eq!((out.result.is_ok(), out.rev, f.get("k")), (true, 2001, Some(b"v".to_vec())));
    assert_eq!(f.reopen().current_revision(), 2001);
}

/// Its answer names the revision, so the group must be there: a delete of
/// nothing answering below its hint let a client see the header go back.
#[test]
fn a_write_that_changes_nothing_still_raises_the_group_to_its_hint() {
    let mut f = Fixture::new();
    let del = f.apply_with(Op::DeleteRange(DeleteRangeRequest { key: "none".into(), ..Default::default() }), 500, 0);
    assert!(matches!(del.result, Ok(Applied::DeleteRange(ref d)) if d.deleted == 0));
    assert_eq!((del.rev, f.sm.current_revision()), (500, 500));
    let standalone = f.apply(Op::DeleteRange(DeleteRangeRequest { key: "none".into(), ..Default::default() }));
    assert_eq!(standalone.rev, 500, "no hint (a standalone group): no change, as etcd");
    assert_eq!(f.reopen().current_revision(), 500);
    assert_eq!(f.put("k", "v", 0), Ok(501));
}

#[test]
fn a_failed_txn_leaves_no_trace_in_memory_or_on_disk() {
    let mut f = Fixture::new();
    f.put("a", "1", 0).unwrap();
    let hash = f.sm.hash_kv(0).unwrap();
    // The second put names a lease that does not exist: the whole txn fails
    // after its first put already touched the index.
    let put = |k: &str, lease| RequestOp {
        request: Some(Request::RequestPut(PutRequest { key: k.into(), value: b"x".to_vec(), lease, ..Default::default() })),
    };
    let txn = TxnRequest { success: vec![put("a", 0), put("b", 77)], ..Default::default() };
    let out = f.apply(Op::Txn(txn));
    assert_eq!(out.result.unwrap_err(), Error::LeaseNotFound);
    assert_eq!(out.rev, 2, "no revision was used");
    assert_eq!(f.get("a").as_deref(), Some(&b"1"[..]));
    assert_eq!(f.sm.hash_kv(0).unwrap(), hash);
    assert_eq!(f.reopen().hash_kv(0).unwrap(), hash);
}

#[test]
fn a_txn_compares_before_and_writes_at_one_revision() {
    let mut f = Fixture::new();
    f.put("a", "1", 0).unwrap();
    let cas = |mod_rev| TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: b"a".to_vec(),
            target_union: Some(TargetUnion::ModRevision(mod_rev)),
            ..Default::default()
        }],
        success: vec![
            RequestOp {
                request: Some(Request::RequestPut(PutRequest { key: "a".into(), value: "2".into(), ..Default::default() })),
            },
            RequestOp {
                request: Some(Request::RequestPut(PutRequest { key: "c".into(), value: "3".into(), ..Default::default() })),
            },
        ],
        failure: vec![RequestOp { request: Some(Request::RequestRange(RangeRequest { key: "a".into(), ..Default::default() })) }],
    };
    let won = f.apply(Op::Txn(cas(2)));
    assert!(matches!(won.result, Ok(Applied::Txn(ref t)) if t.succeeded));
    assert_eq!(won.rev, 3);
    let (r, _) = f.sm.range(&RangeRequest { key: "a".into(), range_end: "d".into(), ..Default::default() }).unwrap();
    assert!(r.kvs.iter().all(|kv| kv.mod_revision == 3), "one revision for the whole txn");
    let lost = f.apply(Op::Txn(cas(2)));
    assert!(matches!(lost.result, Ok(Applied::Txn(ref t)) if !t.succeeded));
    assert_eq!(lost.rev, 3, "a txn that only read moves nothing");
}

#[test]
fn revoking_a_lease_deletes_its_keys_on_every_member_alike() {
    let mut f = Fixture::new();
    assert!(f.apply(Op::LeaseGrant(LeaseGrantRequest { id: 9, ttl: 60 })).result.is_ok());
    assert_eq!(f.apply(Op::LeaseGrant(LeaseGrantRequest { id: 9, ttl: 60 })).result.unwrap_err(), Error::LeaseExist);
    f.put("l1", "x", 9).unwrap();
    f.put("l2", "x", 9).unwrap();
    f.put("free", "x", 0).unwrap();
    f.put("l2", "y", 0).unwrap(); // detached again
    let ttl = f.sm.lease_time_to_live(9, true).unwrap();
    assert_eq!(ttl.keys, vec![b"l1".to_vec()]);
    assert_eq!(f.reopen().lease_time_to_live(9, true).map(|t| t.keys), Some(vec![b"l1".to_vec()]), "rebuilt from the store");
    let out = f.apply(Op::LeaseRevoke(LeaseRevokeRequest { id: 9 }));
    assert!(out.result.is_ok());
    assert_eq!(f.get("l1"), None);
    assert!(f.get("l2").is_some() && f.get("free").is_some());
    assert_eq!(f.apply(Op::LeaseRevoke(LeaseRevokeRequest { id: 9 })).result.unwrap_err(), Error::LeaseNotFound);
}

#[test]
fn alarms_refuse_what_etcd_refuses() {
    let mut f = Fixture::new();
    let raise = AlarmRequest { action: AlarmAction::Activate as i32, member_id: 5, alarm: AlarmType::Nospace as i32 };
    assert!(matches!(f.apply(Op::Alarm(raise)).result, Ok(Applied::Alarms(ref a)) if a.len() == 1));
    assert_eq!(f.put("a", "1", 0), Err(Error::NoSpace));
    let del = f.apply(Op::DeleteRange(DeleteRangeRequest { key: "a".into(), ..Default::default() }));
    assert!(del.result.is_ok(), "deletes still work under NOSPACE");
    let prepare = |f: &mut Fixture, id, success| {
        let request = Some(TxnRequest { success, ..Default::default() });
        f.apply(Op::TxnPrepare(TxnPrepare { id, request, groups: vec![1, 2], ..Default::default() })).result.map(|_| ())
    };
    let put = RequestOp { request: Some(Request::RequestPut(PutRequest { key: "b".into(), ..Default::default() })) };
    assert_eq!(prepare(&mut f, 7, vec![put]), Err(Error::NoSpace), "a cross-group txn with a put, as etcd's txn");
    let get = RequestOp { request: Some(Request::RequestRange(RangeRequest { key: "b".into(), ..Default::default() })) };
    assert!(prepare(&mut f, 8, vec![get]).is_ok(), "a read-only one is not refused");
    f.apply(Op::TxnAbort(TxnAbort { id: 8, ..Default::default() })).result.unwrap();
    assert!(f.reopen().has_alarm(AlarmType::Nospace), "alarms are replicated state");
    let disarm = AlarmRequest { action: AlarmAction::Deactivate as i32, ..raise };
    f.apply(Op::Alarm(disarm));
    assert_eq!(f.put("a", "1", 0), Ok(2), "nothing was written under the alarm");
}

#[test]
fn a_txn_read_at_a_revision_a_compaction_passed_reads_at_the_compaction() {
    // chaos seed 33: a txn whose compare failed was read at the federation's
    // read revision after a compaction had passed it (a slow ReadIndex), and
    // answered a live key as missing.
    let mut f = Fixture::new();
    f.put("a", "1", 0).unwrap(); // 2
    f.put("a", "2", 0).unwrap(); // 3
    f.put("b", "1", 0).unwrap(); // 4
    assert!(f.apply(Op::Compact(CompactionRequest { revision: 4, physical: false })).result.is_ok());
    let get_a = RequestOp { request: Some(Request::RequestRange(RangeRequest { key: "a".into(), ..Default::default() })) };
    let lost_cas = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: b"a".to_vec(),
            target_union: Some(TargetUnion::ModRevision(99)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest { key: "a".into(), value: "x".into(), ..Default::default() })),
        }],
        failure: vec![get_a],
    };
    let (resp, rev) = f.sm.txn_if_it_only_reads(&lost_cas, 0, Some(2)).unwrap().expect("it only reads");
    assert_eq!(rev, 4, "read at the compaction, not below it");
    let Some(ResponseOp { response: Some(response_op::Response::ResponseRange(r)) }) = resp.responses.first() else {
        panic!("a range")
    };
    assert_eq!(r.kvs.len(), 1, "the key is live");
    assert_eq!((r.kvs[0].value.as_slice(), r.kvs[0].mod_revision), (b"2".as_slice(), 3));
}

#[test]
fn compaction_drops_history_below_it_only() {
    let mut f = Fixture::new();
    for v in ["1", "2", "3"] {
        f.put("k", v, 0).unwrap();
    }
    let compact = |f: &mut Fixture, revision| f.apply(Op::Compact(CompactionRequest { revision, physical: false })).result;
    assert!(compact(&mut f, 3).is_ok());
    assert_eq!(compact(&mut f, 3).unwrap_err(), Error::Compacted);
    assert_eq!(compact(&mut f, 99).unwrap_err(), Error::FutureRev);
    let at =
        |f: &Fixture, revision| f.sm.range(&RangeRequest { key: "k".into(), revision, ..Default::default() }).map(|r| r.0.kvs);
    assert_eq!(at(&f, 2).unwrap_err(), Error::Compacted);
    assert_eq!(at(&f, 3).unwrap()[0].value, b"2");
    assert_eq!(f.reopen().compact_revision(), 3);
}

#[test]
fn a_fence_refuses_writes_routed_by_an_older_map() {
    let mut f = Fixture::new();
    let fence = Fence { prefix: b"/moved/".to_vec(), epoch: 7, revision: 0, pending: false, released: false, settled_epoch: 0 };
    assert!(f.apply(Op::Fence(fence)).result.is_ok());
    let put = |key: &str| Op::Put(PutRequest { key: key.into(), ..Default::default() });
    let refused = f.apply_with(put("/moved/a"), 0, 6).result.unwrap_err();
    assert_eq!(refused, Error::Refused(crate::error::Refusal::EpochNotMatch { current: 7 }));
    assert!(f.apply_with(put("/moved/a"), 0, 7).result.is_ok(), "routed by the new map");
    assert!(f.apply_with(put("/other"), 0, 6).result.is_ok(), "other prefixes are untouched");
    assert!(f.apply_with(put("/moved/b"), 0, 0).result.is_ok(), "epoch 0: not routed by a map");
}

#[test]
fn an_undecodable_entry_is_skipped_but_counted_as_applied() {
    let mut f = Fixture::new();
    assert!(f.sm.apply_command(1, b"\xff\xff not a command").is_none());
    assert_eq!(f.sm.applied_index(), 1);
    f.index = 1;
    assert_eq!(f.put("a", "1", 0), Ok(2));
}

#[test]
fn a_store_at_the_last_revision_refuses_writes_and_reopens() {
    let mut f = Fixture::new();
    let put = |k: &str| Op::Put(PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() });
    // A hint no oracle hands out (a corrupted log): taken, then nothing more.
    assert!(f.apply_with(put("/a"), i64::MAX, 0).result.is_ok());
    assert_eq!(f.sm.current_revision(), i64::MAX);
    let refused = f.apply(put("/a")).result.unwrap_err();
    assert_eq!(refused.to_string(), Error::Internal("revision space exhausted".into()).to_string());
    assert_eq!(f.reopen().current_revision(), i64::MAX);
}
