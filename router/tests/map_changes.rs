//! A pin while a router still routes by the old map (its map watch held up
//! in the network): the group that owned the prefix refuses the router's
//! reads and writes under it (it was fenced before the map changed), the
//! router waits for the new map and routes them to the new owner. Without
//! the fence the write would land in the old group, where nobody looks.

use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::watch_client::WatchClient;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
use tessera_rpc::errors::CURRENT_EPOCH_HEADER;
use tessera_rpc::metadata::{group_request, EPOCH_HEADER};
use tessera_testkit::proxy::HoldingProxy;
use tessera_testkit::Federation;

const PREFIX: &[u8] = b"/registry/widgets/";

/// Keys under PREFIX in `group`, read from its replicas directly (not routed).
async fn keys_in(map: &shardmap::ShardMap, group: u64) -> Vec<String> {
    let rep = &map.groups[&group].replicas[0];
    let url = &map.nodes[&rep.node].client_url;
    let mut kv = KvClient::connect(url.clone()).await.unwrap();
    let req = RangeRequest { key: PREFIX.to_vec(), range_end: shardmap::prefix_end(PREFIX), ..Default::default() };
    let resp = kv.range(group_request(group, req)).await.unwrap().into_inner();
    resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_with_a_stale_map_is_refused_and_routes_again() {
    let f = Federation::start(3);
    let proxy = HoldingProxy::start(f.store_url().trim_start_matches("http://").to_string()).await;
    let config = router::Config {
        listen_client_urls: "http://127.0.0.1:0".parse().unwrap(),
        placement_endpoints: proxy.url().parse().unwrap(),
        ..Default::default()
    };
    let stale = router::start(config).await.unwrap();
    let backends = stale.backends.clone();
    wait_until("the router's first map", || backends.routing().is_ok_and(|r| r.map.groups.len() == 3)).await;
    let before = backends.routing().unwrap();
    let old = before.group_of(PREFIX).unwrap();
    let new = *before.map.groups.keys().find(|g| **g != old).unwrap();
    let mut via_stale = KvClient::connect(format!("http://{}", stale.addr)).await.unwrap();

    // A watch on the prefix from before the move (through the other router):
    // the old owner ends its side at the fence, the router resumes it on the
    // new owner, and every later event arrives.
    let (watch_tx, watch_rx) = tokio::sync::mpsc::channel(4);
    watch_tx
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: PREFIX.to_vec(),
                range_end: shardmap::prefix_end(PREFIX),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let mut events = WatchClient::new(f.channel().await)
        .watch(tokio_stream::wrappers::ReceiverStream::new(watch_rx))
        .await
        .unwrap()
        .into_inner();
    assert!(events.message().await.unwrap().unwrap().created);

    // The router stops hearing from placement; the prefix moves.
    proxy.hold(true);
    let pin = f.tessera(&["pin", std::str::from_utf8(PREFIX).unwrap(), &new.to_string()]);
    assert!(pin.status.success(), "{}", String::from_utf8_lossy(&pin.stderr));
    assert_eq!(backends.routing().unwrap().epoch(), before.epoch(), "the map watch is held");

    // The up-to-date router writes under the prefix (to the new owner).
    let mut via_fresh = f.kv().await;
    via_fresh
        .put(PutRequest { key: b"/registry/widgets/ns/a".to_vec(), value: b"1".to_vec(), ..Default::default() })
        .await
        .unwrap();

    // The stale router's write and read are refused by the old owner; they
    // wait for the new map.
    let reroutes = router::metrics::REROUTES.get();
    let mut kv = via_stale.clone();
    let put = tokio::spawn(async move {
        kv.put(PutRequest { key: b"/registry/widgets/ns/b".to_vec(), value: b"2".to_vec(), ..Default::default() }).await
    });
    wait_until("the old group to refuse the stale write", || router::metrics::REROUTES.get() > reroutes).await;
    assert!(!put.is_finished(), "the write waits for the new map");
    proxy.hold(false);
    put.await.unwrap().unwrap();
    let got = via_stale
        .range(RangeRequest { key: PREFIX.to_vec(), range_end: shardmap::prefix_end(PREFIX), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.count, 2, "the read goes where the new map looks");

    let after = backends.routing().unwrap();
    assert!(after.epoch() > before.epoch());
    assert_eq!(keys_in(&after.map, new).await, ["/registry/widgets/ns/a", "/registry/widgets/ns/b"]);
    assert!(keys_in(&after.map, old).await.is_empty(), "nothing was written where the new map does not look");

    // A read routed by the old map is refused too (the node checks it after ReadIndex).
    let rep = &after.map.groups[&old].replicas[0];
    let mut direct = KvClient::connect(after.map.nodes[&rep.node].client_url.clone()).await.unwrap();
    let mut req = group_request(old, RangeRequest { key: b"/registry/widgets/ns/a".to_vec(), ..Default::default() });
    req.metadata_mut().insert(EPOCH_HEADER, before.epoch().into());
    let refused = direct.range(req).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    let current: u64 = refused.metadata().get(CURRENT_EPOCH_HEADER).unwrap().to_str().unwrap().parse().unwrap();
    assert!(current > before.epoch());
    // Keys outside the fenced prefix are still served under the old map.
    let mut req = group_request(old, RangeRequest { key: b"/registry/other/x".to_vec(), ..Default::default() });
    req.metadata_mut().insert(EPOCH_HEADER, before.epoch().into());
    direct.range(req).await.unwrap();

    let mut seen = vec![];
    while seen.len() < 2 {
        let resp = tokio::time::timeout(Duration::from_secs(20), events.message()).await.expect("watch events").unwrap().unwrap();
        assert!(!resp.canceled, "{resp:?}");
        seen.extend(resp.events.iter().map(|e| String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned()));
    }
    assert_eq!(seen, ["/registry/widgets/ns/a", "/registry/widgets/ns/b"]);
    drop(watch_tx);

    stale.shutdown().await;
}
