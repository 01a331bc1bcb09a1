//! Watch and lease behaviour through the etcd-client crate.

use etcd_client::*;
use std::time::Duration;
use tessera_testkit::Cluster;

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("watch response in time").unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_replays_history_then_streams_live() {
    let c = Cluster::start(3, &[]).await;
    let mut w = c.client(1).await;
    let mut cl = c.client(0).await;
    let first = cl.put("w/a", "1", None).await.unwrap().header().unwrap().revision();
    cl.put("w/b", "2", None).await.unwrap();
    cl.delete("w/a", None).await.unwrap();

    let mut stream =
        w.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(first).with_prev_key())).await.unwrap();
    let mut events = vec![];
    while events.len() < 3 {
        let r = next(&mut stream).await;
        events.extend(r.events().iter().map(|e| (e.event_type(), e.kv().unwrap().key_str().unwrap().to_string())));
    }
    assert_eq!(events, [(EventType::Put, "w/a".into()), (EventType::Put, "w/b".into()), (EventType::Delete, "w/a".into())]);

    // Live: one txn's events arrive together, with prev_kv.
    cl.txn(Txn::new().and_then([TxnOp::put("w/x", "1", None), TxnOp::put("w/b", "3", None)])).await.unwrap();
    let r = next(&mut stream).await;
    assert_eq!(r.events().len(), 2, "a txn is not split");
    let b = r.events().iter().find(|e| e.kv().unwrap().key() == b"w/b").unwrap();
    assert_eq!(b.prev_kv().unwrap().value(), b"2");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_filters_cancel_and_compaction() {
    let c = Cluster::start(3, &[]).await;
    let mut cl = c.client(0).await;
    let r1 = cl.put("f", "1", None).await.unwrap().header().unwrap().revision();
    let r2 = cl.put("f", "2", None).await.unwrap().header().unwrap().revision();
    cl.compact(r2, None).await.unwrap();

    let mut s = cl.watch("f", Some(WatchOptions::new().with_start_revision(r1))).await.unwrap();
    let mut r = next(&mut s).await;
    if r.created() && !r.canceled() {
        r = next(&mut s).await;
    }
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), r2);

    let mut s = cl.watch("f", Some(WatchOptions::new().with_filters([WatchFilterType::NoPut]))).await.unwrap();
    let created = next(&mut s).await;
    assert!(created.created());
    cl.put("f", "3", None).await.unwrap();
    cl.delete("f", None).await.unwrap();
    let r = next(&mut s).await;
    assert_eq!(r.events().len(), 1);
    assert_eq!(r.events()[0].event_type(), EventType::Delete);
    s.cancel(created.watch_id()).await.unwrap();
    assert!(next(&mut s).await.canceled());
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_progress_request_reports_current_revision() {
    let c = Cluster::start(3, &[]).await;
    let mut cl = c.client(0).await;
    let mut s = cl.watch("p", None).await.unwrap();
    assert!(next(&mut s).await.created());
    let rev = cl.put("other", "x", None).await.unwrap().header().unwrap().revision();
    s.request_progress().await.unwrap();
    let r = next(&mut s).await;
    assert!(r.events().is_empty());
    assert!(r.header().unwrap().revision() >= rev);
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_attach_expire_and_revoke() {
    let c = Cluster::start(3, &[]).await;
    let mut cl = c.client(1).await; // a follower or the leader: both serve leases

    let g = cl.lease_grant(60, None).await.unwrap();
    cl.put("lk", "v", Some(PutOptions::new().with_lease(g.id()))).await.unwrap();
    let ttl = cl.lease_time_to_live(g.id(), Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(ttl.ttl() > 50 && ttl.ttl() <= 60);
    assert_eq!(ttl.keys(), [b"lk".to_vec()]);
    let (mut keeper, mut ka) = cl.lease_keep_alive(g.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(ka.message().await.unwrap().unwrap().ttl(), 60);

    let rev_before = cl.get("lk", None).await.unwrap().header().unwrap().revision();
    cl.lease_revoke(g.id()).await.unwrap();
    assert!(cl.get("lk", None).await.unwrap().kvs().is_empty());
    assert!(cl.get("lk", None).await.unwrap().header().unwrap().revision() > rev_before);
    assert_eq!(cl.lease_time_to_live(g.id(), None).await.unwrap().ttl(), -1);

    // Expiry is decided by the leader and deletes the attached keys. The
    // minimum TTL with a 1 s election timeout is 2 s, as in etcd.
    let short = cl.lease_grant(1, None).await.unwrap();
    assert_eq!(short.ttl(), 2);
    cl.put("gone", "v", Some(PutOptions::new().with_lease(short.id()))).await.unwrap();
    let mut s = cl.watch("gone", None).await.unwrap();
    assert!(next(&mut s).await.created());
    let r = next(&mut s).await;
    assert_eq!(r.events()[0].event_type(), EventType::Delete);
    assert!(cl.leases().await.unwrap().leases().iter().all(|l| l.id() != short.id()));
}
