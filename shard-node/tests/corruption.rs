//! A member whose stored data diverges is caught by the HashKV checks:
//! refused at start, or marked CORRUPT by the leader's periodic check.

use prost::Message;
use shard_node::engine::keys::GroupKeys;
use shard_node::engine::{Engine, RocksEngine, WriteBatch};
use std::time::{Duration, Instant};
use tessera_proto::mvccpb::KeyValue;
use tessera_testkit::Cluster;

/// Rewrites the value of the oldest stored revision in a stopped member's data.
fn tamper(dir: &std::path::Path) {
    let engine = RocksEngine::open(&dir.join("db")).unwrap();
    let (start, end) = GroupKeys::new(0).table(b'r');
    let mut first = None;
    engine
        .scan(&start, &end, &mut |k, v| {
            first = Some((k.to_vec(), v.to_vec()));
            false
        })
        .unwrap();
    let (k, v) = first.expect("the member has data");
    let mut kv = KeyValue::decode(v.as_slice()).unwrap();
    kv.value = b"tampered".to_vec();
    let mut batch = WriteBatch::default();
    batch.put(k, kv.encode_to_vec());
    engine.write(batch, true).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn diverged_member_is_refused_at_start_then_marked_corrupt() {
    let mut c = Cluster::start(3, &["--experimental-corrupt-check-time", "300ms"]).await;
    let mut cl = c.client(0).await;
    for i in 0..20 {
        cl.put(format!("c/{i}"), "v", None).await.unwrap();
    }
    for i in 0..3 {
        c.client(i).await.get("c/0", None).await.unwrap(); // every member has applied it
    }
    let leader = c.leader().await;
    let victim = (leader + 1) % 3;
    c.kill(victim);
    tamper(&c.members[victim].dir);

    // The initial check refuses to serve divergent data.
    c.spawn(victim);
    let exit = c.wait_exit(victim, Duration::from_secs(20)).expect("the diverged member should refuse to start");
    assert!(!exit.success());
    assert!(c.log(victim).contains("data inconsistency"), "{}", c.log(victim));

    // Without the initial check it starts, and the leader's periodic check
    // raises CORRUPT for it.
    c.spawn_with(victim, &["--experimental-initial-corrupt-check=false"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alarms = String::from_utf8_lossy(&c.etcdctl(leader, &["alarm", "list"]).stdout).to_string();
        if alarms.contains("alarm:CORRUPT") {
            break;
        }
        assert!(Instant::now() < deadline, "no CORRUPT alarm raised; alarms: {alarms:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The victim refuses reads once it has applied the alarm itself.
    let mut bad = c.client(victim).await;
    loop {
        match bad.get("c/0", None).await {
            Err(e) => {
                assert!(e.to_string().contains("etcdserver: corrupt cluster"), "{e}");
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "the diverged member kept serving reads"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let write = cl.put("c/new", "v", None).await.unwrap_err().to_string();
    assert!(write.contains("etcdserver: corrupt cluster"), "{write}");
    // Healthy members still serve reads.
    let mut good = c.client(leader).await;
    assert_eq!(good.get("c/0", None).await.unwrap().kvs()[0].value(), b"v");
}
