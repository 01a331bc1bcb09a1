//! Hand-made histories, one guarantee at a time.

use crate::check::{check_all, check_all_with, Checker, Options};
use crate::history::{Bytes, Call, CmpOp, Compare, CompareTarget, Event, EventKind, FinalRead, History, Kv, Op, Response};
use crate::history::{TxnOp, TxnResult, Watch, WatchResponseRecord, WatchStream};

fn kv(value: &str, mod_rev: i64, create_rev: i64, version: i64) -> Kv {
    Kv { value: value.into(), mod_rev, create_rev, version, lease: 0 }
}
fn put(client: u32, t: (u64, u64), key: &str, value: &str, rev: i64) -> Op {
    let call = Call::Put { key: key.into(), value: value.into(), lease: 0, prev_kv: false };
    Op::ok(client, t.0, t.1, call, Response::Put { header_rev: rev, prev: None })
}
fn put_unknown(client: u32, invoke: u64, key: &str, value: &str) -> Op {
    Op::unknown(client, invoke, Call::Put { key: key.into(), value: value.into(), lease: 0, prev_kv: false }, "timeout")
}
fn get(client: u32, t: (u64, u64), key: &str, header: i64, got: Option<Kv>) -> Op {
    let call = Call::Get { key: key.into(), revision: 0, serializable: false };
    Op::ok(client, t.0, t.1, call, Response::Get { header_rev: header, kv: got })
}
fn history(ops: Vec<Op>) -> History {
    History { ops, ..History::default() }
}

#[test]
fn stale_read_is_not_linearizable() {
    let h = history(vec![
        put(1, (0, 10), "x", "a", 2),
        put(1, (20, 30), "x", "b", 3),
        get(2, (40, 50), "x", 3, Some(kv("a", 2, 2, 1))),
    ]);
    let r = check_all(&h);
    assert_eq!(r.count(Checker::Linearizable), 1, "{r}");
    assert!(r.count(Checker::Revisions) > 0, "the snapshot at header 3 is b: {r}");
}

#[test]
fn concurrent_read_may_see_either_value() {
    let h = history(vec![
        put(1, (0, 10), "x", "a", 2),
        put(1, (20, 30), "x", "b", 3),
        get(2, (25, 35), "x", 2, Some(kv("a", 2, 2, 1))),
        get(3, (26, 36), "x", 3, Some(kv("b", 3, 2, 2))),
    ]);
    assert!(check_all(&h).is_ok(), "{}", check_all(&h));
}

#[test]
fn read_after_a_newer_read_must_not_go_back() {
    let h = history(vec![
        put(1, (0, 10), "x", "a", 2),
        put(1, (20, 60), "x", "b", 3),
        get(2, (25, 30), "x", 3, Some(kv("b", 3, 2, 2))),
        get(3, (40, 45), "x", 2, Some(kv("a", 2, 2, 1))),
    ]);
    let r = check_all(&h);
    assert_eq!(r.count(Checker::Linearizable), 1, "{r}");
    assert!(r.count(Checker::Revisions) > 0, "header 2 after 3: {r}");
}

#[test]
fn unknown_put_may_apply_late_or_never() {
    let ok = history(vec![
        put(1, (0, 10), "x", "a", 2),
        put_unknown(2, 15, "x", "lost"),
        put_unknown(3, 16, "x", "late"),
        get(1, (20, 30), "x", 2, Some(kv("a", 2, 2, 1))),
        get(1, (40, 50), "x", 3, Some(kv("late", 3, 2, 2))),
    ]);
    assert!(check_all(&ok).is_ok(), "{}", check_all(&ok));
    // Once "late" was seen, the key cannot go back to "a".
    let mut bad = ok.clone();
    bad.ops.push(get(1, (60, 70), "x", 3, Some(kv("a", 2, 2, 1))));
    assert_eq!(check_all(&bad).count(Checker::Linearizable), 1);
}

#[test]
fn write_revision_must_exceed_what_was_seen() {
    let h = history(vec![
        put(1, (0, 10), "x", "a", 5),
        get(2, (20, 30), "x", 5, Some(kv("a", 5, 5, 1))),
        put(1, (40, 50), "x", "b", 4),
    ]);
    let r = check_all(&h);
    assert!(r.count(Checker::Linearizable) > 0 && r.count(Checker::Revisions) > 0, "{r}");
}

fn cas(client: u32, t: (u64, u64), key: &str, expect: i64, value: &str, outcome: Option<(i64, bool, Option<Kv>)>) -> Op {
    let call = Call::Txn {
        compares: vec![Compare { key: key.into(), op: CmpOp::Eq, target: CompareTarget::ModRev(expect) }],
        success: vec![TxnOp::Put { key: key.into(), value: value.into(), lease: 0 }],
        failure: vec![TxnOp::Get { key: key.into() }],
    };
    match outcome {
        Some((rev, true, _)) => {
            Op::ok(client, t.0, t.1, call, Response::Txn { header_rev: rev, succeeded: true, results: vec![TxnResult::Put] })
        }
        Some((rev, false, got)) => {
            let results = vec![TxnResult::Get { kv: got }];
            Op::ok(client, t.0, t.1, call, Response::Txn { header_rev: rev, succeeded: false, results })
        }
        None => Op::unknown(client, t.0, call, "timeout"),
    }
}

/// A txn over two keys ties them into one partition; two writes of it at
/// one revision are refused there as everywhere (etcd gives each txn its
/// own revision, and so does a federation: its groups share one timeline).
#[test]
fn writes_of_different_keys_tied_by_a_txn_never_share_a_revision() {
    let both = |rev: i64| {
        let call = Call::Txn {
            compares: vec![],
            success: vec![
                TxnOp::Put { key: "x".into(), value: format!("x{rev}").into(), lease: 0 },
                TxnOp::Put { key: "y".into(), value: format!("y{rev}").into(), lease: 0 },
            ],
            failure: vec![],
        };
        Op::ok(3, 0, 5, call, Response::Txn { header_rev: rev, succeeded: true, results: vec![TxnResult::Put, TxnResult::Put] })
    };
    let ops = |y_rev: i64| {
        history(vec![
            both(2),
            put(1, (10, 40), "x", "a", 7),
            put(2, (20, 50), "y", "b", y_rev),
            get(4, (60, 70), "y", 8, Some(kv("b", y_rev, 2, 2))),
            get(4, (80, 90), "x", 8, Some(kv("a", 7, 2, 2))),
        ])
    };
    assert!(check_all(&ops(8)).is_ok(), "{}", check_all(&ops(8)));
    let shared = check_all(&ops(7));
    assert_eq!(shared.count(Checker::Linearizable), 1, "{shared}");
    assert_eq!(shared.count(Checker::Revisions), 1, "{shared}");
}

#[test]
fn compare_and_swap_follows_mod_revisions() {
    let ok = history(vec![
        cas(1, (0, 10), "x", 0, "a", Some((2, true, None))),
        cas(2, (5, 15), "x", 0, "b", Some((2, false, Some(kv("a", 2, 2, 1))))),
        cas(2, (20, 30), "x", 2, "c", Some((3, true, None))),
        get(1, (40, 50), "x", 3, Some(kv("c", 3, 2, 2))),
    ]);
    assert!(check_all(&ok).is_ok(), "{}", check_all(&ok));
    // Two creates of the same key cannot both succeed.
    let mut bad = ok.clone();
    bad.ops[1] = cas(2, (5, 15), "x", 0, "b", Some((3, true, None)));
    assert!(check_all(&bad).count(Checker::Linearizable) > 0);
}

#[test]
fn unknown_cas_binds_an_unknown_revision() {
    // u (unknown, never seen) must have landed at 3 for the CAS on mod_rev 3 to succeed.
    let ok = history(vec![
        put(1, (0, 10), "x", "a", 2),
        put_unknown(2, 12, "x", "u"),
        cas(3, (20, 30), "x", 3, "c", None),
        get(1, (40, 50), "x", 4, Some(kv("c", 4, 2, 3))),
    ]);
    assert!(check_all(&ok).is_ok(), "{}", check_all(&ok));
    // Version 2: u never landed, so mod_rev was 2 and the CAS could not succeed.
    let mut bad = ok.clone();
    bad.ops[3] = get(1, (40, 50), "x", 4, Some(kv("c", 4, 2, 2)));
    assert!(check_all(&bad).count(Checker::Linearizable) > 0);
}

#[test]
fn a_tiny_step_budget_is_inconclusive_not_a_violation() {
    let h = history(vec![put(1, (0, 10), "x", "a", 2), get(2, (5, 15), "x", 2, Some(kv("a", 2, 2, 1)))]);
    let r = check_all_with(&h, &Options { step_budget: 1 });
    assert_eq!(r.inconclusive.len(), 1);
    assert_eq!(r.count(Checker::Linearizable), 0);
    assert!(!r.is_ok());
}

fn event(key: &str, value: &str, rev: i64, create: i64, version: i64) -> Event {
    Event {
        kind: EventKind::Put,
        key: key.into(),
        value: value.into(),
        mod_rev: rev,
        create_rev: create,
        version,
        lease: 0,
        prev: None,
    }
}
fn resp(at: u64, header: i64, id: i64, events: Vec<Event>) -> WatchResponseRecord {
    WatchResponseRecord {
        at,
        header_rev: header,
        watch_id: id,
        created: false,
        events,
        canceled: false,
        compact_revision: 0,
        cancel_reason: String::new(),
    }
}
fn stream(responses: Vec<WatchResponseRecord>, requests: Vec<u64>) -> WatchStream {
    let w = Watch {
        watch_id: 0,
        key: "x".into(),
        range_end: "y".into(),
        start_revision: 2,
        prev_kv: false,
        filters: vec![],
        progress_notify: false,
        created_at: 0,
        cancel_sent_at: None,
    };
    let mut created = resp(1, 1, 0, vec![]);
    created.created = true;
    let mut all = vec![created];
    all.extend(responses);
    WatchStream { client: 9, id: 0, watches: vec![w], responses: all, progress_requests: requests }
}

#[test]
fn watch_gap_and_late_progress_are_caught() {
    let ops = vec![put(1, (0, 10), "x", "a", 2), put(1, (20, 30), "x", "b", 3), put(1, (40, 50), "x", "c", 4)];
    let mut h = history(ops);
    h.watches = vec![stream(vec![resp(60, 4, 0, vec![event("x", "a", 2, 2, 1), event("x", "c", 4, 2, 3)])], vec![])];
    let r = check_all(&h);
    assert!(r.of(Checker::Watch).any(|v| v.message.contains("missed 1")), "{r}");
    // A progress answer below a write acknowledged before the request.
    h.watches = vec![stream(
        vec![
            resp(60, 4, 0, vec![event("x", "a", 2, 2, 1), event("x", "b", 3, 2, 2), event("x", "c", 4, 2, 3)]),
            resp(80, 3, -1, vec![]),
        ],
        vec![70],
    )];
    let r = check_all(&h);
    assert!(r.of(Checker::Watch).any(|v| v.message.contains("progress answer 3")), "{r}");
}

#[test]
fn events_before_the_history_are_not_judged() {
    let mut h = history(vec![put(1, (0, 10), "x", "a", 6)]);
    h.initial = vec![("x".into(), kv("old", 4, 3, 2))];
    let old = event("x", "old", 4, 3, 2);
    h.watches = vec![stream(vec![resp(60, 6, 0, vec![old, event("x", "a", 6, 3, 3)])], vec![])];
    let r = check_all(&h);
    assert!(r.of(Checker::Watch).any(|v| v.message.contains("no op of the history")), "{r}");
    h.start_revision = 5;
    let r = check_all(&h);
    assert!(r.is_ok(), "{r}");
}

#[test]
fn a_write_of_unknown_outcome_one_watch_delivered_counts_as_applied() {
    let delete = Call::Delete { key: "x".into(), range_end: Bytes::default() };
    let mut h = history(vec![put(1, (0, 10), "x", "a", 2), Op::unknown(2, 15, delete, "timeout"), put(1, (30, 40), "x", "b", 4)]);
    let gone = Event { kind: EventKind::Delete, value: Bytes::default(), create_rev: 0, version: 0, ..event("x", "", 3, 0, 0) };
    let (a, b) = (event("x", "a", 2, 2, 1), event("x", "b", 4, 4, 1));
    let all = vec![a.clone(), gone, b.clone()];
    h.watches = vec![stream(vec![resp(60, 4, 0, all.clone())], vec![]), stream(vec![resp(60, 4, 0, all)], vec![])];
    assert!(check_all(&h).is_ok(), "{}", check_all(&h));
    h.watches[1] = stream(vec![resp(60, 4, 0, vec![a, b])], vec![]);
    let r = check_all(&h);
    assert!(r.of(Checker::Watch).any(|v| v.message.contains("another watch delivered")), "{r}");
}

#[test]
fn watch_cancel_needs_a_compaction() {
    let mut h = history(vec![put(1, (0, 10), "x", "a", 2)]);
    let mut cancel = resp(60, 2, 0, vec![]);
    cancel.canceled = true;
    cancel.compact_revision = 5;
    h.watches = vec![stream(vec![cancel], vec![])];
    let r = check_all(&h);
    assert!(r.of(Checker::Watch).any(|v| v.message.contains("no compaction to 5")), "{r}");
}

#[test]
fn keys_of_a_revoked_lease_are_gone() {
    let lease = 0x42;
    let call = Call::Put { key: "x".into(), value: "a".into(), lease, prev_kv: false };
    let ops = vec![
        Op::ok(1, 0, 5, Call::LeaseGrant { ttl: 10, id: 0 }, Response::LeaseGrant { header_rev: 1, id: lease, ttl: 10 }),
        Op::ok(1, 10, 20, call, Response::Put { header_rev: 2, prev: None }),
        Op::ok(1, 30, 40, Call::LeaseRevoke { id: lease }, Response::LeaseRevoke { header_rev: 3 }),
        get(2, (50, 60), "x", 3, Some(Kv { lease, ..kv("a", 2, 2, 1) })),
    ];
    let r = check_all(&history(ops));
    assert!(r.count(Checker::Leases) > 0, "{r}");
    assert!(r.count(Checker::Linearizable) > 0, "{r}");
}

#[test]
fn final_read_must_hold_acknowledged_writes() {
    let del = Op::ok(
        1,
        20,
        30,
        Call::Delete { key: "x".into(), range_end: Bytes::default() },
        Response::Delete { header_rev: 3, deleted: 1 },
    );
    let mut h = history(vec![put(1, (0, 10), "x", "a", 2), del, put(1, (40, 50), "y", "b", 4)]);
    let kvs = vec![(Bytes::from("x"), kv("a", 2, 2, 1))];
    h.final_read = Some(FinalRead { at: 100, key: Bytes(vec![0]), range_end: Bytes(vec![0]), header_rev: 4, kvs });
    let r = check_all(&h);
    let texts: Vec<&str> = r.of(Checker::Durability).map(|v| v.message.as_str()).collect();
    assert!(texts.iter().any(|t| t.contains("deleted key came back")), "{r}");
    assert!(texts.iter().any(|t| t.contains("acknowledged write lost")), "{r}");
}

#[test]
fn malformed_history_is_reported_not_a_panic() {
    let mut h = history(vec![put(1, (10, 5), "x", "a", 2)]);
    h.ops.push(Op::ok(
        1,
        0,
        1,
        Call::Get { key: "x".into(), revision: 0, serializable: false },
        Response::Delete { header_rev: 1, deleted: 0 },
    ));
    h.ops.push(Op { complete: None, ..put(1, (0, 1), "x", "b", 3) });
    let txn = Call::Txn { compares: vec![], success: vec![TxnOp::Get { key: "x".into() }], failure: vec![] };
    h.ops.push(Op::ok(1, 0, 1, txn, Response::Txn { header_rev: 1, succeeded: true, results: vec![] }));
    h.watches = vec![WatchStream {
        client: 1,
        id: 0,
        watches: vec![],
        responses: vec![resp(1, 1, 7, vec![])],
        progress_requests: vec![],
    }];
    let r = check_all(&h);
    assert_eq!(r.count(Checker::History), 5, "{r}");
}

/// Two groups of a federation gave two writes one revision (a group took
/// prev + 1 past its hint): etcd gives every txn its own.
#[test]
fn two_writes_of_different_keys_never_share_a_revision() {
    let ok = history(vec![put(1, (0, 10), "x", "a", 2), put(2, (0, 10), "y", "b", 3)]);
    assert!(check_all(&ok).is_ok(), "{}", check_all(&ok));
    let shared = history(vec![put(1, (0, 10), "x", "a", 2), put(2, (0, 10), "y", "b", 2)]);
    let r = check_all(&shared);
    assert_eq!(r.count(Checker::Revisions), 1, "{r}");
}
