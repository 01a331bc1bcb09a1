//! kill -9 under load: a new leader takes over, no acknowledged write is
//! lost, and the killed member catches up from its data dir — by snapshot
//! when the log was compacted meanwhile.

mod common;
use common::Cluster;
use etcd_client::{Client, GetOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Writes distinct keys through every endpoint until stopped; records the
/// acknowledged ones.
fn spawn_writer(endpoints: Vec<String>, acked: Arc<Mutex<Vec<String>>>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut clients = vec![];
        for ep in &endpoints {
            clients.push(Client::connect([ep.clone()], None).await.unwrap());
        }
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("load/{i:08}");
            let c = &mut clients[(i as usize) % endpoints.len()];
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), c.put(key.clone(), "v", None)).await {
                acked.lock().await.push(key);
            }
            i += 1;
        }
    })
}

async fn wait_acked(acked: &Arc<Mutex<Vec<String>>>, n: usize, within: Duration) -> Duration {
    let start = Instant::now();
    while acked.lock().await.len() < n {
        assert!(start.elapsed() < within, "writes stalled at {} acknowledged", acked.lock().await.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn assert_has_all(c: &mut Client, acked: &[String]) {
    let got = c.get("load/", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    let have: std::collections::HashSet<&[u8]> = got.kvs().iter().map(|k| k.key()).collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !have.contains(k.as_bytes())).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_kill_under_writes_loses_nothing_and_member_catches_up_by_snapshot() {
    let mut c = Cluster::start(3, &["--snapshot-count", "100", "--experimental-snapshot-catchup-entries", "20"]).await;
    let leader = c.leader().await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    let acked = Arc::new(Mutex::new(vec![]));
    let stop = Arc::new(AtomicBool::new(false));
    // Write only through the survivors so the client side does not stall on the dead endpoint.
    let eps: Vec<String> = survivors.iter().map(|i| c.members[*i].endpoint()).collect();
    let writer = spawn_writer(eps, acked.clone(), stop.clone());
    wait_acked(&acked, 100, Duration::from_secs(30)).await;

    c.kill(leader);
    let before = acked.lock().await.len();
    // Enough writes after the kill to compact the log past the dead member.
    let took = wait_acked(&acked, before + 400, Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked = acked.lock().await.clone();
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
    let acked = Arc::new(Mutex::new(vec![]));
    let stop = Arc::new(AtomicBool::new(false));
    let eps: Vec<String> = survivors.iter().map(|i| c.members[*i].endpoint()).collect();
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (acked, stop, failures) = (acked.clone(), stop.clone(), failures.clone());
        tokio::spawn(async move {
            let mut clients = vec![];
            for ep in &eps {
                clients.push(Client::connect([ep.clone()], None).await.unwrap());
            }
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/{i:08}");
                match clients[i % 2].put(key.clone(), "v", None).await {
                    Ok(_) => acked.lock().await.push(key),
                    Err(e) => {
                        eprintln!("write failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        })
    };
    wait_acked(&acked, 100, Duration::from_secs(30)).await;
    let took = c.terminate(leader);
    let before = acked.lock().await.len();
    wait_acked(&acked, before + 100, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    eprintln!("leader stopped by SIGTERM in {took:?}");

    assert_eq!(failures.load(Ordering::Relaxed), 0, "writes failed across the hand-off");
    let mut s = c.client(survivors[0]).await;
    // A hand-off is one term bump (TimeoutNow), not an election timeout plus votes.
    let st = s.status().await.unwrap();
    assert_eq!(st.raft_term(), term_before + 1, "leadership was handed off, not re-elected");
    assert_has_all(&mut s, &acked.lock().await).await;
}
