//! etcd's server-side Lock and Election services as a client sees them:
//! scenarios run against real etcd and a group (shard-node tests) and
//! through the router over a federation (cli tests).

use etcd_client::{Client, LockOptions, ProclaimOptions, ResignOptions};
use std::time::Duration;

pub async fn lock_scenario(ep: &str) {
    let mut a = Client::connect([ep], None).await.unwrap();
    let mut b = Client::connect([ep], None).await.unwrap();
    let la = a.lease_grant(60, None).await.unwrap().id();
    let lb = b.lease_grant(60, None).await.unwrap().id();
    let held = a.lock("mutex", Some(LockOptions::new().with_lease(la))).await.unwrap();
    assert!(held.key().starts_with(b"mutex/"));

    // B waits while A holds the lock.
    let waiter =
        tokio::spawn(async move { b.lock("mutex", Some(LockOptions::new().with_lease(lb))).await.map(|r| r.key().to_vec()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "{ep}: B got the lock while A held it");
    a.unlock(held.key()).await.unwrap();
    let b_key = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("B gets the lock").unwrap().unwrap();
    assert!(b_key.starts_with(b"mutex/"));

    // A waits again; revoking B's lease releases B's hold.
    let mut a2 = Client::connect([ep], None).await.unwrap();
    let waiter = tokio::spawn(async move { a2.lock("mutex", Some(LockOptions::new().with_lease(la))).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    a.lease_revoke(lb).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("lease revoke releases the lock").unwrap().unwrap();
}

pub async fn election_scenario(ep: &str) {
    let mut a = Client::connect([ep], None).await.unwrap();
    let mut b = Client::connect([ep], None).await.unwrap();
    let la = a.lease_grant(60, None).await.unwrap().id();
    let lb = b.lease_grant(60, None).await.unwrap().id();

    let no_leader = a.leader("el").await.unwrap_err().to_string();
    assert!(no_leader.contains("election: no leader"), "{ep}: {no_leader}");

    let won = a.campaign("el", "a1", la).await.unwrap();
    let leader_key = won.leader().unwrap().clone();
    assert_eq!(a.leader("el").await.unwrap().kv().unwrap().value(), b"a1");

    let mut observe = a.observe("el").await.unwrap();
    let first = observe.message().await.unwrap().unwrap();
    assert_eq!(first.kv().unwrap().value(), b"a1");

    let campaign_b = tokio::spawn(async move { b.campaign("el", "b1", lb).await.map(|r| r.leader().unwrap().clone()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!campaign_b.is_finished(), "{ep}: two leaders");

    a.proclaim("a2", Some(ProclaimOptions::new().with_leader(leader_key.clone()))).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), observe.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.kv().unwrap().value(), b"a2");

    a.resign(Some(ResignOptions::new().with_leader(leader_key.clone()))).await.unwrap();
    let b_key =
        tokio::time::timeout(Duration::from_secs(5), campaign_b).await.expect("B leads after A resigns").unwrap().unwrap();
    assert_eq!(a.leader("el").await.unwrap().kv().unwrap().value(), b"b1");
    assert_ne!(b_key.key(), leader_key.key());
    let after = tokio::time::timeout(Duration::from_secs(5), observe.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(after.kv().unwrap().value(), b"b1");

    let stale = a.proclaim("a3", Some(ProclaimOptions::new().with_leader(leader_key))).await.unwrap_err().to_string();
    assert!(stale.contains("election: not leader"), "{ep}: {stale}");
}
