//! etcd's KV semantics through the etcd-client crate against a 3-member group.

use etcd_client::*;
use tessera_testkit::Cluster;

fn code_and_message(e: Error) -> (tonic::Code, String) {
    match e {
        Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_delete_across_members() {
    let c = Cluster::start(3, &[]).await;
    let mut a = c.client(0).await;
    let mut b = c.client(2).await;

    let r1 = a.put("k", "v1", None).await.unwrap().header().unwrap().revision();
    let r2 = a.put("k", "v2", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(r2.prev_key().unwrap().value(), b"v1");
    let rev2 = r2.header().unwrap().revision();
    assert!(rev2 > r1, "revisions increase: {r1} then {rev2}");

    // A linearizable read on another member sees the write.
    let got = b.get("k", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!((kv.value(), kv.version(), kv.create_revision(), kv.mod_revision()), (&b"v2"[..], 2, r1, rev2));

    // Past revision read.
    let old = b.get("k", Some(GetOptions::new().with_revision(r1))).await.unwrap();
    assert_eq!(old.kvs()[0].value(), b"v1");

    let del = b.delete("k", Some(DeleteOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(del.deleted(), 1);
    assert_eq!(del.prev_kvs()[0].value(), b"v2");
    assert!(a.get("k", None).await.unwrap().kvs().is_empty());

    // Recreated key starts a new generation.
    let r3 = a.put("k", "v3", None).await.unwrap().header().unwrap().revision();
    let kv = a.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.version(), kv.create_revision()), (1, r3));
}

#[tokio::test(flavor = "multi_thread")]
async fn range_options_follow_etcd() {
    let c = Cluster::start(3, &[]).await;
    let mut cl = c.client(1).await;
    for (k, v) in [("r/a", "3"), ("r/b", "1"), ("r/c", "2"), ("r/d", "0"), ("s", "x")] {
        cl.put(k, v, None).await.unwrap();
    }
    cl.put("r/b", "11", None).await.unwrap();

    let all = cl.get("r/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(all.count(), 4);
    let keys: Vec<_> = all.kvs().iter().map(|k| k.key_str().unwrap().to_string()).collect();
    assert_eq!(keys, ["r/a", "r/b", "r/c", "r/d"]);

    let page = cl.get("r/", Some(GetOptions::new().with_prefix().with_limit(2))).await.unwrap();
    assert_eq!((page.kvs().len(), page.more(), page.count()), (2, true, 4));

    let desc = cl
        .get("r/", Some(GetOptions::new().with_prefix().with_sort(SortTarget::Value, SortOrder::Descend).with_limit(1)))
        .await
        .unwrap();
    assert_eq!(desc.kvs()[0].key(), b"r/a");

    let by_version =
        cl.get("r/", Some(GetOptions::new().with_prefix().with_sort(SortTarget::Version, SortOrder::Descend))).await.unwrap();
    assert_eq!(by_version.kvs()[0].key(), b"r/b");

    let count = cl.get("r/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
    assert_eq!((count.count(), count.kvs().len()), (4, 0));

    let keys_only = cl.get("r/a", Some(GetOptions::new().with_keys_only())).await.unwrap();
    assert!(keys_only.kvs()[0].value().is_empty());

    let from = cl.get("r/c", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(from.count(), 3); // r/c r/d s

    let b_mod = cl.get("r/b", None).await.unwrap().kvs()[0].mod_revision();
    let newer = cl.get("r/", Some(GetOptions::new().with_prefix().with_min_mod_revision(b_mod))).await.unwrap();
    assert_eq!(newer.kvs().len(), 1);
    assert_eq!(newer.count(), 4, "count ignores the revision filters, as etcd");

    let ser = cl.get("s", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert_eq!(ser.kvs()[0].value(), b"x");
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_compare_branches_and_nesting() {
    let c = Cluster::start(3, &[]).await;
    let mut cl = c.client(0).await;

    // Kubernetes' create: succeed only if the key does not exist.
    let create = Txn::new()
        .when([Compare::mod_revision("pod", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("pod", "v1", None)])
        .or_else([TxnOp::get("pod", None)]);
    let r = cl.txn(create.clone()).await.unwrap();
    assert!(r.succeeded());
    let rev = r.header().unwrap().revision();
    let again = cl.txn(create).await.unwrap();
    assert!(!again.succeeded());
    match &again.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].mod_revision(), rev),
        other => panic!("expected get, got {other:?}"),
    }

    // All ops of a txn share one revision.
    let multi = cl.txn(Txn::new().and_then([TxnOp::put("m1", "a", None), TxnOp::put("m2", "b", None)])).await.unwrap();
    let mrev = multi.header().unwrap().revision();
    let got = cl.get("m", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert!(got.kvs().iter().all(|k| k.mod_revision() == mrev));

    // A range inside a txn sees the txn's own earlier writes.
    let seen = cl.txn(Txn::new().and_then([TxnOp::put("own", "w", None), TxnOp::get("own", None)])).await.unwrap();
    match &seen.op_responses()[1] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"w"),
        other => panic!("expected get, got {other:?}"),
    }

    // Nested txn.
    let nested = Txn::new().and_then([TxnOp::txn(
        Txn::new().when([Compare::value("pod", CompareOp::Equal, "v1")]).and_then([TxnOp::put("n", "yes", None)]),
    )]);
    cl.txn(nested).await.unwrap();
    assert_eq!(cl.get("n", None).await.unwrap().kvs()[0].value(), b"yes");

    // A value compare on a missing key fails, as in etcd.
    let missing = cl
        .txn(Txn::new().when([Compare::value("nokey", CompareOp::NotEqual, "x")]).and_then([TxnOp::put("z", "1", None)]))
        .await
        .unwrap();
    assert!(!missing.succeeded());

    // A read-only txn is served without a write.
    let before = cl.get("pod", None).await.unwrap().header().unwrap().revision();
    let ro = cl.txn(Txn::new().and_then([TxnOp::get("pod", None)])).await.unwrap();
    assert_eq!(ro.header().unwrap().revision(), before);

    let dup = cl.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)])).await.unwrap_err();
    assert_eq!(code_and_message(dup), (tonic::Code::InvalidArgument, "etcdserver: duplicate key given in txn request".into()));
    let ops: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("t{i}"), "v", None)).collect();
    let many = cl.txn(Txn::new().and_then(ops)).await.unwrap_err();
    assert_eq!(code_and_message(many).1, "etcdserver: too many operations in txn request");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_carry_etcd_codes_and_messages() {
    let c = Cluster::start(3, &["--max-request-bytes", "4096"]).await;
    let mut cl = c.client(0).await;
    let rev = cl.put("e", "1", None).await.unwrap().header().unwrap().revision();

    let future = cl.get("e", Some(GetOptions::new().with_revision(rev + 1_000_000))).await.unwrap_err();
    assert_eq!(
        code_and_message(future),
        (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision".into())
    );

    let big = cl.put("big", vec![0u8; 8192], None).await.unwrap_err();
    assert_eq!(code_and_message(big), (tonic::Code::InvalidArgument, "etcdserver: request is too large".into()));

    let lease = cl.put("l", "v", Some(PutOptions::new().with_lease(424242))).await.unwrap_err();
    assert_eq!(code_and_message(lease), (tonic::Code::NotFound, "etcdserver: requested lease not found".into()));

    let ignore = cl.put("nokey", "", Some(PutOptions::new().with_ignore_value())).await.unwrap_err();
    assert_eq!(code_and_message(ignore), (tonic::Code::InvalidArgument, "etcdserver: key not found".into()));

    let empty = cl.get("", None).await.unwrap_err();
    assert_eq!(code_and_message(empty), (tonic::Code::InvalidArgument, "etcdserver: key is not provided".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_drops_history_only() {
    let c = Cluster::start(3, &[]).await;
    let mut cl = c.client(0).await;
    let r1 = cl.put("h", "1", None).await.unwrap().header().unwrap().revision();
    let r2 = cl.put("h", "2", None).await.unwrap().header().unwrap().revision();
    let r3 = cl.put("h", "3", None).await.unwrap().header().unwrap().revision();
    cl.compact(r2, Some(CompactionOptions::new().with_physical())).await.unwrap();

    let old = cl.get("h", Some(GetOptions::new().with_revision(r1))).await.unwrap_err();
    assert_eq!(code_and_message(old), (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted".into()));
    assert_eq!(cl.get("h", Some(GetOptions::new().with_revision(r2))).await.unwrap().kvs()[0].value(), b"2");
    assert_eq!(cl.get("h", None).await.unwrap().kvs()[0].mod_revision(), r3);

    let again = cl.compact(r1, None).await.unwrap_err();
    assert_eq!(code_and_message(again).1, "etcdserver: mvcc: required revision has been compacted");
    // Every member compacted: a serializable read on another member agrees.
    let mut other = c.client(2).await;
    other.get("h", None).await.unwrap(); // linearizable: member 2 has applied the compaction
    let ser = other.get("h", Some(GetOptions::new().with_revision(r1).with_serializable())).await.unwrap_err();
    assert_eq!(code_and_message(ser).0, tonic::Code::OutOfRange);
}
