//! A prefix moved between two state machines, step by step as placement
//! drives it: history, revisions, leases and fences on both sides, and a
//! reopen of each that finds the same.

use super::*;
use crate::apply::ApplyOutput;
use crate::engine::keys::GroupKeys;
use crate::engine::{Engine, MemoryEngine};
use crate::error::Refusal;
use std::sync::Arc;
use tessera_proto::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest};
use tessera_proto::tessera::command::{command::Op, Fence};

struct Side {
    engine: Arc<dyn Engine>,
    group: u64,
    sm: StateMachine,
    index: u64,
}

impl Side {
    fn new(group: u64) -> Self {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let sm = StateMachine::open(engine.clone(), GroupKeys::new(group), 1 << 20).unwrap();
        Side { engine, group, sm, index: 0 }
    }

    fn apply_with(&mut self, op: Op, hint: i64, epoch: u64) -> ApplyOutput {
        self.index += 1;
        self.sm.apply_test_entry(self.index, op, hint, epoch).1
    }

    fn apply(&mut self, op: Op) -> ApplyOutput {
        self.apply_with(op, 0, 0)
    }

    fn put(&mut self, key: &str, lease: i64, epoch: u64) -> Result<i64> {
        let out =
            self.apply_with(Op::Put(PutRequest { key: key.into(), value: key.into(), lease, ..Default::default() }), 0, epoch);
        out.result.map(|_| out.rev)
    }

    fn keys(&self, prefix: &str) -> Vec<(String, i64)> {
        let end = shardmap::prefix_end(prefix.as_bytes());
        let (r, _) = self.sm.range(&RangeRequest { key: prefix.into(), range_end: end, ..Default::default() }).unwrap();
        r.kvs.into_iter().map(|kv| (String::from_utf8(kv.key).unwrap(), kv.mod_revision)).collect()
    }

    fn reopen(&self) -> StateMachine {
        StateMachine::open(self.engine.clone(), GroupKeys::new(self.group), 1 << 20).unwrap()
    }
}

/// Copies everything of `prefix` from `src` after `from` to `dst` in small chunks.
fn copy(src: &Side, dst: &mut Side, prefix: &[u8], from: Rev, reset: bool) -> Rev {
    let mut cursor = from;
    let mut first = reset;
    loop {
        let x = src.sm.export(prefix, cursor, 10, false).unwrap();
        let stage = MoveStage { prefix: prefix.to_vec(), reset: first, entries: x.entries, ..Default::default() };
        first = false;
        assert!(matches!(dst.apply(Op::MoveStage(stage)).result, Ok(Applied::Staged { .. })));
        cursor = x.next;
        if x.done {
            return cursor;
        }
    }
}

fn history(sm: &StateMachine, prefix: &str) -> Vec<(String, i64)> {
    let (events, _) = sm.history(1, sm.current_revision(), 1000, &|k, _| k.starts_with(prefix.as_bytes())).unwrap();
    events.into_iter().map(|e| e.kv.unwrap()).map(|kv| (String::from_utf8(kv.key).unwrap(), kv.mod_revision)).collect()
}

#[test]
fn a_prefix_moves_with_its_history_leases_and_revisions() {
    let (mut src, mut dst) = (Side::new(1), Side::new(2));
    src.apply(Op::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 }));
    src.put("/a/b/1", 0, 0).unwrap();
    src.put("/a/b/2", 7, 0).unwrap();
    src.put("/a/b/3", 0, 0).unwrap();
    src.put("/a/c/x", 0, 0).unwrap();
    src.put("/a/b/1", 0, 0).unwrap();
    src.apply(Op::DeleteRange(DeleteRangeRequest { key: "/a/b/3".into(), ..Default::default() }));
    // The target writes the same main revisions for its own keys.
    for _ in 0..4 {
        dst.put("/z/q", 0, 0).unwrap();
    }
    let before = history(&src.sm, "/a/b/");
    assert_eq!(before.len(), 5);

    // Copy while the source still takes writes; staged, nothing shows.
    let cursor = copy(&src, &mut dst, b"/a/b/", Rev::default(), true);
    assert!(dst.keys("/a/b/").is_empty(), "staged entries are not read");
    assert!(dst.sm.hidden_history(3).iter().any(|h| h.prefix == b"/a/b/" && h.moved_only));
    src.put("/a/b/4", 0, 3).unwrap();
    let cursor = copy(&src, &mut dst, b"/a/b/", cursor, false);
    // A chunk sent again stages nothing twice.
    copy(&src, &mut dst, b"/a/b/", Rev::default(), false);
    assert_eq!(dst.sm.staged_size(b"/a/b/").0, 3);

    // Cutover at epoch 5: the source's pending fence holds newer maps and refuses older ones.
    let fence = Fence { prefix: b"/a/b/".to_vec(), epoch: 5, revision: 0, pending: true, released: false, settled_epoch: 0 };
    assert!(src.apply_with(Op::Fence(fence), 0, 0).result.is_ok());
    assert_eq!(src.put("/a/b/5", 0, 5), Err(Error::Refused(Refusal::PrefixMoving)));
    assert_eq!(src.put("/a/b/5", 0, 4), Err(Error::Refused(Refusal::EpochNotMatch { current: 5 })));
    assert!(src.put("/a/c/y", 0, 4).is_ok(), "the rest of the group is not held");
    copy(&src, &mut dst, b"/a/b/", cursor, false);
    let last = src.sm.export(b"/a/b/", Rev::default(), 1 << 20, true).unwrap();
    assert_eq!(last.keys, 3);
    // The copy check: the staged keys' digest is the source's, and a key
    // short of its last write (staged as it was before) changes it.
    let ask = MoveStage { prefix: b"/a/b/".to_vec(), digest: true, ..Default::default() };
    let Ok(Applied::Staged { digest, .. }) = dst.apply(Op::MoveStage(ask)).result else { panic!("staged") };
    assert!(last.digest != 0 && digest == last.digest, "{digest:x} vs {:x}", last.digest);
    let mut short = dst.sm.tables.read().mvcc.staged.clone();
    short.get_mut(b"/a/b/1".as_slice()).unwrap().pop_last();
    assert_ne!(crate::moves::live_digest(&short, b"/a/b/"), last.digest);
    assert_eq!(last.leases.iter().map(|l| l.id).collect::<Vec<_>>(), vec![7]);
    let cutover = MoveTarget { prefix: b"/a/b/".to_vec(), action: Action::Cutover as i32, epoch: 5, ..Default::default() };
    assert!(dst.apply(Op::MoveTarget(cutover)).result.is_ok());
    assert_eq!(dst.put("/a/b/5", 0, 5), Err(Error::Refused(Refusal::PrefixMoving)));

    // The map moved at epoch 6: the target adopts, the source releases.
    let adopt = MoveTarget {
        prefix: b"/a/b/".to_vec(),
        action: Action::Adopt as i32,
        epoch: 6,
        leases: last.leases.clone(),
        compact_revision: last.compact_revision,
        revision: last.revision,
        remainder: false,
    };
    // Raised past the source already (routers bump idle groups): the
    // adoption leaves its revision, and its watch ring still must not
    // answer for the revisions it brought.
    let bumped = dst.apply_with(Op::Bump(tessera_proto::tessera::command::RevisionBump {}), last.revision + 5, 0).rev;
    assert!(dst.sm.hub.recent(2, bumped).is_some());
    let adopted = dst.apply(Op::MoveTarget(adopt.clone()));
    assert!(adopted.result.is_ok());
    assert_eq!(adopted.rev, bumped);
    assert!(dst.sm.hub.recent(2, bumped).is_none(), "watchers read the moved history from the store");
    assert!(dst.apply(Op::MoveTarget(adopt)).result.is_ok(), "adopting twice changes nothing");
    let release = MoveRelease { prefix: b"/a/b/".to_vec(), epoch: 6, moved: true };
    assert!(matches!(src.apply(Op::MoveRelease(release.clone())).result, Ok(Applied::Released { keys: 3 })));
    assert!(matches!(src.apply(Op::MoveRelease(release)).result, Ok(Applied::Released { keys: 0 })));

    let moved = vec![("/a/b/1".to_string(), 6), ("/a/b/2".to_string(), 3), ("/a/b/4".to_string(), 8)];
    assert_eq!(dst.keys("/a/b/"), moved, "the same keys at the same revisions");
    assert_eq!(history(&dst.sm, "/a/b/").len(), 6, "and their history");
    assert!(src.keys("/a/b/").is_empty());
    assert_eq!(src.keys("/a/c/").len(), 2);
    assert_eq!(dst.sm.lease_time_to_live(7, true).unwrap().keys, vec![b"/a/b/2".to_vec()]);
    assert!(src.sm.lease_time_to_live(7, true).unwrap().keys.is_empty());
    assert_eq!(dst.put("/a/b/1", 0, 5), Err(Error::Refused(Refusal::EpochNotMatch { current: 6 })));
    let next = dst.put("/a/b/1", 0, 6).unwrap();
    assert!(next > last.revision);
    assert_eq!(src.put("/a/b/1", 0, 5), Err(Error::Refused(Refusal::EpochNotMatch { current: 6 })));
    // Watches routed before the move still read the source's history, not after it.
    assert!(src.sm.hidden_history(5).is_empty());
    assert_eq!(src.sm.hidden_history(6), vec![crate::fence::Hidden { prefix: b"/a/b/".to_vec(), moved_only: false }]);
    assert_eq!(history(&src.sm, "/a/b/").len(), 6, "kept for the watches routed before the move");

    // Both sides reopen to the same state.
    let (src2, dst2) = (src.reopen(), dst.reopen());
    assert_eq!(dst2.key_count(), dst.sm.key_count());
    assert_eq!(src2.key_count(), 2);
    assert_eq!(dst2.lease_time_to_live(7, true).unwrap().keys, vec![b"/a/b/2".to_vec()]);
    assert_eq!(dst2.hash_kv(0).unwrap(), dst.sm.hash_kv(0).unwrap());

    // A compaction past the fence drops the source's copy for good.
    let at = src.sm.current_revision();
    assert!(src
        .apply(Op::Compact(tessera_proto::etcdserverpb::CompactionRequest { revision: at, physical: false }))
        .result
        .is_ok());
    let mut from = vec![];
    while let Some(next) = src.sm.compact_step(at, &from, 100).unwrap() {
        from = next;
    }
    assert!(src.reopen().history(at, at, 10, &|k, _| k.starts_with(b"/a/b/")).unwrap().0.is_empty());
    let (start, end) = GroupKeys::new(1).table(b'r');
    let mut left = 0;
    src.engine
        .scan(&start, &end, &mut |_, v| {
            left += usize::from(tessera_proto::mvccpb::KeyValue::decode(v).unwrap().key.starts_with(b"/a/b/"));
            true
        })
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn a_rolled_back_move_leaves_the_prefix_where_it_was() {
    let (mut src, mut dst) = (Side::new(1), Side::new(2));
    src.put("/a/b/1", 0, 0).unwrap();
    copy(&src, &mut dst, b"/a/b/", Rev::default(), true);
    let fence = Fence { prefix: b"/a/b/".to_vec(), epoch: 5, revision: 0, pending: true, released: false, settled_epoch: 0 };
    assert!(src.apply(Op::Fence(fence)).result.is_ok());
    let cutover = MoveTarget { prefix: b"/a/b/".to_vec(), action: Action::Cutover as i32, epoch: 5, ..Default::default() };
    assert!(dst.apply(Op::MoveTarget(cutover)).result.is_ok());
    let abandon = MoveStage { prefix: b"/a/b/".to_vec(), abandon: true, ..Default::default() };
    assert!(dst.apply(Op::MoveStage(abandon)).result.is_ok());
    let release = MoveRelease { prefix: b"/a/b/".to_vec(), epoch: 6, moved: false };
    assert!(src.apply(Op::MoveRelease(release)).result.is_ok());
    assert!(src.put("/a/b/2", 0, 6).is_ok());
    assert!(src.put("/a/b/3", 0, 4).is_ok(), "no fence is left");
    assert_eq!(src.keys("/a/b/").len(), 3);
    assert!(dst.put("/a/b/1", 0, 6).is_ok(), "nothing is held on the target either");
    assert_eq!(dst.keys("/a/b/").len(), 1, "and nothing of the move is left there");
    assert!(src.sm.hidden_history(6).is_empty() && dst.sm.hidden_history(6).is_empty());
    assert_eq!(dst.sm.size_in_use(), dst.reopen().size_in_use());
}

#[test]
fn a_copy_started_over_under_the_fences_keeps_the_cutover() {
    // chaos seed 31: a source compacted past the copy in the move's last
    // pass; the target staged again from scratch and forgot its cutover, so
    // a range routed by the committed map read the prefix empty there
    // before the adoption (and a write would have been lost to it).
    let (mut src, mut dst) = (Side::new(1), Side::new(2));
    src.put("/a/b/1", 0, 0).unwrap();
    let reset = |epoch| MoveStage { prefix: b"/a/b/".to_vec(), reset: true, epoch, ..Default::default() };
    // The move began at map epoch 4 and cuts over at 5.
    assert!(dst.apply(Op::MoveStage(reset(4))).result.is_ok());
    copy(&src, &mut dst, b"/a/b/", Rev::default(), false);
    let fence = Fence { prefix: b"/a/b/".to_vec(), epoch: 5, revision: 0, pending: true, released: false, settled_epoch: 0 };
    assert!(src.apply(Op::Fence(fence)).result.is_ok());
    let cutover = MoveTarget { prefix: b"/a/b/".to_vec(), action: Action::Cutover as i32, epoch: 5, ..Default::default() };
    assert!(dst.apply(Op::MoveTarget(cutover)).result.is_ok());
    assert!(dst.apply(Op::MoveStage(reset(4))).result.is_ok());
    assert_eq!(dst.put("/a/b/2", 0, 5), Err(Error::Refused(Refusal::PrefixMoving)), "a write waits for the adoption");
    assert_eq!(dst.sm.check_fences(5, b"/a/", b"/a0"), Err(Error::Refused(Refusal::PrefixMoving)), "so does a read");
    assert_eq!(dst.reopen().check_fences(5, b"/a/b/1", &[]), Err(Error::Refused(Refusal::PrefixMoving)));
    copy(&src, &mut dst, b"/a/b/", Rev::default(), false);
    assert_eq!(dst.sm.staged_size(b"/a/b/").0, 1);
    // A move of the prefix begun later (this one rolled back without its
    // abandon arriving) does not inherit the cutover.
    assert!(dst.apply(Op::MoveStage(reset(6))).result.is_ok());
    assert!(dst.put("/a/b/2", 0, 6).is_ok());
}

/// The whole protocol from `a` to `b` at map epoch `epoch` (cutover) / `epoch + 1` (commit).
fn move_all(a: &mut Side, b: &mut Side, prefix: &[u8], epoch: u64) {
    copy(a, b, prefix, Rev::default(), true);
    let fence = Fence { prefix: prefix.to_vec(), epoch, revision: 0, pending: true, released: false, settled_epoch: 0 };
    assert!(a.apply(Op::Fence(fence)).result.is_ok());
    let last = a.sm.export(prefix, Rev::default(), 1 << 20, true).unwrap();
    copy(a, b, prefix, Rev::default(), false);
    let cutover = MoveTarget { prefix: prefix.to_vec(), action: Action::Cutover as i32, epoch, ..Default::default() };
    assert!(b.apply(Op::MoveTarget(cutover)).result.is_ok());
    let adopt = MoveTarget {
        prefix: prefix.to_vec(),
        action: Action::Adopt as i32,
        epoch: epoch + 1,
        leases: last.leases,
        compact_revision: last.compact_revision,
        revision: last.revision,
        remainder: false,
    };
    assert!(b.apply(Op::MoveTarget(adopt)).result.is_ok());
    let release = MoveRelease { prefix: prefix.to_vec(), epoch: epoch + 1, moved: true };
    assert!(a.apply(Op::MoveRelease(release)).result.is_ok());
}

#[test]
fn a_prefix_moves_back_and_forth_and_keeps_its_history() {
    let (mut a, mut b) = (Side::new(1), Side::new(2));
    a.put("/p/q/1", 0, 0).unwrap();
    a.put("/p/q/2", 0, 0).unwrap();
    // A txn's two writes share a revision: their order stays across moves.
    let txn = tessera_proto::etcdserverpb::TxnRequest {
        success: ["/p/q/1", "/p/q/3"]
            .iter()
            .map(|k| tessera_proto::etcdserverpb::RequestOp {
                request: Some(tessera_proto::etcdserverpb::request_op::Request::RequestPut(PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: b"t".to_vec(),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    };
    assert!(a.apply(Op::Txn(txn)).result.is_ok());
    let before = history(&a.sm, "/p/q/");
    move_all(&mut a, &mut b, b"/p/q/", 3);
    let rewritten = b.put("/p/q/2", 0, 4).unwrap();
    move_all(&mut b, &mut a, b"/p/q/", 5);
    move_all(&mut a, &mut b, b"/p/q/", 7);
    let mut expected = before;
    expected.push(("/p/q/2".to_string(), rewritten));
    assert_eq!(history(&b.sm, "/p/q/"), expected, "every revision, in order, after three moves");
    assert!(a.keys("/p/q/").is_empty());
    assert_eq!(b.keys("/p/q/").len(), 3);
    assert_eq!(b.reopen().key_count(), 3);
    assert!(b.put("/p/q/9", 0, 8).is_ok());
    assert_eq!(a.put("/p/q/9", 0, 7), Err(Error::Refused(Refusal::EpochNotMatch { current: 8 })));
}

#[test]
fn a_leaving_groups_remainder_moves_under_the_empty_prefix_and_the_target_keeps_what_it_gave_away() {
    let (mut src, mut dst) = (Side::new(1), Side::new(2));
    // The leaving group holds only its unit pins' keys (kube-apiserver's shallow keys).
    src.put("compact_rev_key", 0, 0).unwrap();
    src.put("/registry/health", 0, 0).unwrap();
    src.put("/registry/health", 0, 0).unwrap();
    // The target has keys of its own, a ring flip's fence on every key, and
    // a prefix it gave away (released: its history retired here).
    dst.put("/z/own", 0, 0).unwrap();
    dst.put("/g/x", 0, 0).unwrap();
    let flip = Fence { prefix: vec![], epoch: 2, revision: 0, pending: false, released: false, settled_epoch: 0 };
    assert!(dst.apply(Op::Fence(flip)).result.is_ok());
    let gave = Fence { prefix: b"/g/".to_vec(), epoch: 3, revision: 0, pending: true, released: false, settled_epoch: 0 };
    assert!(dst.apply(Op::Fence(gave)).result.is_ok());
    let release = MoveRelease { prefix: b"/g/".to_vec(), epoch: 3, moved: true };
    assert!(matches!(dst.apply(Op::MoveRelease(release)).result, Ok(Applied::Released { keys: 1 })));
    // ... and a prefix an earlier move brought it (in the moved band).
    let mut other = Side::new(3);
    other.put("/m/k", 0, 0).unwrap();
    copy(&other, &mut dst, b"/m/", Rev::default(), true);
    let m = other.sm.export(b"/m/", Rev::default(), 1 << 20, true).unwrap();
    let adopt_m = MoveTarget {
        prefix: b"/m/".to_vec(),
        action: Action::Adopt as i32,
        epoch: 4,
        compact_revision: m.compact_revision,
        revision: m.revision,
        ..Default::default()
    };
    assert!(dst.apply(Op::MoveTarget(adopt_m)).result.is_ok());
    let sub_of = |sm: &StateMachine, key: &str, staged: bool| {
        let t = sm.tables.read();
        let index = if staged { &t.mvcc.staged } else { &t.mvcc.index };
        index.get(key.as_bytes()).and_then(|k| k.latest()).map(|e| e.rev.sub)
    };
    let moved_sub = sub_of(&dst.sm, "/m/k", false).unwrap();
    assert!(is_moved(moved_sub));

    // The empty prefix is only a remainder's.
    let plain = MoveStage { reset: true, ..Default::default() };
    assert!(dst.apply(Op::MoveStage(plain)).result.is_err());
    let x = src.sm.export(b"", Rev::default(), 1 << 20, true).unwrap();
    assert!(x.done && x.keys == 2);
    let stage = MoveStage { reset: true, entries: x.entries, remainder: true, epoch: 5, digest: true, ..Default::default() };
    let Ok(Applied::Staged { keys, digest, .. }) = dst.apply(Op::MoveStage(stage)).result else { panic!("staged") };
    assert_eq!((keys, digest), (2, x.digest));
    assert_eq!(dst.keys("").len(), 2, "staged keys are not read; the target's own are");
    // What earlier moves brought stays the target's while the remainder
    // stages under the empty prefix: read, shown to watches, and so after
    // a reopen (a restart, or a snapshot, rebuilds the index by band).
    let staged_sub = sub_of(&dst.sm, "compact_rev_key", true).unwrap();
    let hidden = dst.sm.hidden_history(5);
    assert!(hidden.iter().any(|h| h.hides(b"compact_rev_key", staged_sub)));
    assert!(!hidden.iter().any(|h| h.hides(b"/m/k", moved_sub) || h.hides(b"/z/own", 0)));
    let reopened = dst.reopen();
    assert_eq!(sub_of(&reopened, "/m/k", false), Some(moved_sub));
    assert_eq!(reopened.staged_size(b"").0, 2);
    let cutover = MoveTarget { action: Action::Cutover as i32, epoch: 6, remainder: true, ..Default::default() };
    assert!(dst.apply(Op::MoveTarget(cutover)).result.is_ok());
    let adopt = MoveTarget {
        action: Action::Adopt as i32,
        epoch: 6,
        compact_revision: x.compact_revision,
        revision: x.revision,
        remainder: true,
        ..Default::default()
    };
    assert!(dst.apply(Op::MoveTarget(adopt)).result.is_ok());
    let release = MoveRelease { prefix: vec![], epoch: 6, moved: true };
    assert!(src
        .apply(Op::Fence(Fence { prefix: vec![], epoch: 6, revision: 0, pending: true, released: false, settled_epoch: 0 }))
        .result
        .is_ok());
    assert!(matches!(src.apply(Op::MoveRelease(release)).result, Ok(Applied::Released { keys: 2 })));

    // The target reads its own keys and the remainder's, not what it gave
    // away; its fences stay; so after a reopen.
    let want: Vec<&str> = vec!["/m/k", "/registry/health", "/z/own", "compact_rev_key"];
    for sm in [&dst.sm, &dst.reopen()] {
        let end = vec![0];
        let (r, _) = sm.range(&RangeRequest { key: vec![0], range_end: end, ..Default::default() }).unwrap();
        let keys: Vec<String> = r.kvs.into_iter().map(|kv| String::from_utf8(kv.key).unwrap()).collect();
        assert_eq!(keys, want);
        let fences = sm.tables.read().fences.given_away_at(b"/g/x");
        assert!(fences.is_some(), "the given-away prefix stays given away");
    }
    assert_eq!(dst.put("/z/own", 0, 1), Err(Error::Refused(Refusal::EpochNotMatch { current: 6 })));
    assert!(src.keys("").is_empty(), "the leaving group holds nothing");
    // A reset of this (adopted) move repeated is refused; a later move's is not.
    let stale = MoveStage { reset: true, remainder: true, epoch: 5, ..Default::default() };
    assert!(dst.apply(Op::MoveStage(stale)).result.is_err());
    let later = MoveStage { reset: true, remainder: true, epoch: 7, ..Default::default() };
    assert!(dst.apply(Op::MoveStage(later)).result.is_ok());
}
