//! kill -9 under load: a new leader takes over, no acknowledged write is
//! lost, and the killed member catches up from its data dir — by snapshot
//! when the log was compacted meanwhile.

use etcd_client::GetOptions;
use std::time::Duration;
use tessera_testkit::load::{assert_has_all, LoadWriter};
use tessera_testkit::Cluster;

#[tokio::test(flavor = "multi_thread")]
async fn leader_kill_under_writes_loses_nothing_and_member_catches_up_by_snapshot() {
    let mut c = Cluster::start(3, &["--snapshot-count", "100", "--experimental-snapshot-catchup-entries", "20"]).await;
    let leader = c.leader().await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // Write only through the survivors so the client side does not stall on the dead endpoint.
    let load = LoadWriter::start(survivors.iter().map(|i| c.members[*i].endpoint()).collect());
    load.wait_acked(100, Duration::from_secs(30)).await;

    c.kill(leader);
    let before = load.acked();
    // Enough writes after the kill to compact the log past the dead member.
    let took = load.wait_acked(before + 400, Duration::from_secs(60)).await;
    let (acked, _failed_during_election) = load.stop().await;
    eprintln!("after kill -9 of the leader: {} more writes acknowledged in {took:?}", acked.len() - before);

    let mut s = c.client(survivors[0]).await;
    assert_has_all(&mut s, &acked).await;

    // The killed member restarts from its data dir and catches up.
    c.spawn(leader);
    c.wait_ready().await;
    let mut back = c.client(leader).await;
    assert_has_all(&mut back, &acked).await;
    let log = c.log(leader);
    assert!(log.contains("installed snapshot"), "the restarted member should have needed a snapshot:\n{log}");

    // A snapshot carries the group's state, never the receiver's identity:
    // after another restart the member is still itself and still serves.
    let id_before = back.status().await.unwrap().header().unwrap().member_id();
    c.kill(leader);
    c.spawn(leader);
    c.wait_ready().await;
    let mut again = c.client(leader).await;
    assert_eq!(again.status().await.unwrap().header().unwrap().member_id(), id_before);
    let members = again.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3);
    again.put("after-snapshot", "ok", None).await.unwrap();
    assert_has_all(&mut again, &acked).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn full_restart_keeps_everything() {
    let mut c = Cluster::start(3, &[]).await;
    let mut cl = c.client(0).await;
    let mut revs = vec![];
    for i in 0..50 {
        revs.push(cl.put(format!("r/{i}"), format!("{i}"), None).await.unwrap().header().unwrap().revision());
    }
    let lease = cl.lease_grant(600, None).await.unwrap().id();
    cl.put("leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease))).await.unwrap();
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_ready().await;
    let mut cl = c.client(1).await;
    let got = cl.get("r/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(got.count(), 50);
    let old = cl.get("r/7", Some(GetOptions::new().with_revision(revs[7]))).await.unwrap();
    assert_eq!(old.kvs()[0].value(), b"7");
    let ttl = cl.lease_time_to_live(lease, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);
    // New writes continue above the old revisions.
    let next = cl.put("after", "1", None).await.unwrap().header().unwrap().revision();
    assert!(next > *revs.last().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_on_the_leader_hands_off_leadership_without_failed_writes() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let term_before = c.client(leader).await.status().await.unwrap().raft_term();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let load = LoadWriter::start(survivors.iter().map(|i| c.members[*i].endpoint()).collect());
    load.wait_acked(100, Duration::from_secs(30)).await;
    let took = c.terminate(leader);
    let before = load.acked();
    load.wait_acked(before + 100, Duration::from_secs(30)).await;
    let (acked, failures) = load.stop().await;
    eprintln!("leader stopped by SIGTERM in {took:?}");

    assert_eq!(failures, 0, "writes failed across the hand-off");
    let mut s = c.client(survivors[0]).await;
    // A hand-off is one term bump (TimeoutNow), not an election timeout plus votes.
    let st = s.status().await.unwrap();
    assert_eq!(st.raft_term(), term_before + 1, "leadership was handed off, not re-elected");
    assert_has_all(&mut s, &acked).await;
}
