//! Placement's membership operations on a running federation: a replica
//! removed from its group (`tessera replica remove`) is stopped by its
//! node with its data deleted, stays gone across a restart, and a learner
//! can be added back on the same node (`tessera learner add`).

use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::{PutRequest, RangeRequest};
use tessera_rpc::metadata::group_request;
use tessera_rpc::Refusal;
use tessera_testkit::Federation;

/// Whether `node` hosts a replica of `group` (its Stats answer).
async fn hosts(url: &str, group: u64) -> bool {
    use tessera_proto::tessera::shard::{shard_client::ShardClient, StatsRequest};
    let Ok(mut c) = ShardClient::connect(url.to_string()).await else {
        return false;
    }; // down: hosts nothing now
    match c.stats(group_request(group, StatsRequest {})).await {
        Ok(_) => true,
        Err(e) if matches!(Refusal::from_status(&e), Some(Refusal::NotHosted { .. })) => false,
        Err(e) => panic!("stats of group {group} on {url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_replica_is_stopped_and_its_data_deleted_and_can_come_back() {
    let f = Federation::start(3);
    let mut f = f;
    let (map, _) = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap();
    let (group, info) = map.groups.iter().next().unwrap();
    let learner = info.replicas.iter().find(|r| r.learner).expect("tessera dev adds a learner").node.clone();
    let url = map.nodes[&learner].client_url.clone();
    assert!(hosts(&url, *group).await);

    let out = f.tessera(&["replica", "remove", &group.to_string(), &learner]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until_async("the node to stop the replica", || hosts(&url, *group), false).await;

    // Its data is gone too: restarted, the node does not bring it back,
    // while its other replicas resume.
    let other = *map
        .groups
        .keys()
        .find(|g| *g != group && map.groups[g].replica_on(&learner).is_some())
        .expect("dev puts every group on every node");
    let args = f.kill9(f.pid(&learner));
    f.restart(&args);
    wait_until_async("the restarted node's other replicas", || hosts(&url, other), true).await;
    assert!(!hosts(&url, *group).await, "a removed replica came back after a restart");

    // The group carries on without it.
    let mut kv = f.kv().await;
    let key =
        (0..).map(|i| format!("/removal/x/{i}")).find(|k| map.clone().routing().group_of(k.as_bytes()) == Some(*group)).unwrap();
    kv.put(PutRequest { key: key.clone().into_bytes(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();

    // And the node can take a learner of the group again: it joins from scratch and catches up.
    let out = f.tessera(&["learner", "add", &group.to_string(), "--node", &learner]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until_async("the learner to be back", || hosts(&url, *group), true).await;
    let mut direct = KvClient::connect(url.clone()).await.unwrap();
    let read = RangeRequest { key: key.into_bytes(), ..Default::default() };
    let got = direct.range(group_request(*group, read)).await.unwrap().into_inner();
    assert_eq!(got.count, 1, "the new learner has the group's data");
}

async fn wait_until_async<F, Fut>(what: &str, f: F, want: bool)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while f().await != want {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
