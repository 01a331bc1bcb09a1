//! How the groups keep the federation's auth store: an auth change is
//! answered only once no txn across groups checked against the older store
//! is still prepared on a group (its commit cannot be refused), a prepare
//! is checked like the write it prepares, and a group added after the
//! change gets the store from its nodes, which follow placement's copy.

mod common;

use common::router_of;
use prost::Message;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::auth_client::AuthClient;
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::{request_op, AuthStatusRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tessera_proto::tessera::command::{AuthState, Forwarded, TxnAbort, TxnPrepare};
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_rpc::metadata::{forward, group_request};
use tessera_testkit::auth::set_up_users;
use tessera_testkit::Federation;
use tonic::transport::Channel;

async fn auth_revision(router: &str) -> u64 {
    let mut auth = AuthClient::connect(format!("http://{router}")).await.unwrap();
    auth.auth_status(AuthStatusRequest {}).await.unwrap().into_inner().auth_revision
}

/// The federation's auth store as placement's store holds it.
async fn federation_state(f: &Federation) -> AuthState {
    let mut kv = KvClient::connect(f.store_url()).await.unwrap();
    let key = shardmap::AUTH_STATE_KEY.to_vec();
    let resp = kv.range(RangeRequest { key, ..Default::default() }).await.unwrap().into_inner();
    AuthState::decode(&resp.kvs[0].value[..]).unwrap()
}

/// A Shard client of a node hosting `group`.
async fn shard_of(f: &Federation, group: u64) -> ShardClient<Channel> {
    ShardClient::connect(node_of(f, group).await).await.unwrap()
}

/// The client URL of a node hosting `group`.
async fn node_of(f: &Federation, group: u64) -> String {
    let (map, _) = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap();
    map.nodes[&map.groups[&group].replicas[0].node].client_url.clone()
}

fn prepare(group: u64, id: i64, key: &str, caller: Forwarded) -> tonic::Request<TxnPrepare> {
    let put = PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() };
    let success = vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }];
    let request = Some(TxnRequest { success, ..Default::default() });
    let mut req = group_request(group, TxnPrepare { id, request, ops: vec![0], groups: vec![group], ..Default::default() });
    forward(&mut req, &caller);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_change_waits_for_a_txn_prepared_before_it() {
    let f = Federation::start(2);
    let r = router_of(&f, &[]).await;
    set_up_users(&r.addr.to_string());
    let revision = auth_revision(&r.addr.to_string()).await;
    let (map, _) = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap();
    let group = map.routing().group_of(b"/registry/pods/prepared").unwrap();
    let mut shard = shard_of(&f, group).await;
    let root = |auth_revision| Forwarded { user: "root".into(), auth_revision };
    shard.txn_prepare(prepare(group, 7, "/registry/pods/prepared", root(revision))).await.expect("root may write");

    // The next store (as a router installs it after a change): not answered
    // while the txn checked against the older one is prepared.
    let mut next = federation_state(&f).await;
    next.revision = revision + 1;
    let mut install = group_request(group, next.clone());
    install.set_timeout(Duration::from_millis(1500));
    let held = shard.install_auth(install).await;
    assert!(held.is_err(), "an auth change answered while a txn checked before it may still commit: {held:?}");

    shard.txn_abort(group_request(group, TxnAbort { id: 7, ..Default::default() })).await.unwrap();
    let installed = shard.install_auth(group_request(group, next)).await.expect("nothing prepared any more");
    assert_eq!(installed.into_inner().auth_revision, revision + 1);

    // A prepare checked at the older store is refused, as the write it prepares would be.
    let stale = shard.txn_prepare(prepare(group, 8, "/registry/pods/prepared", root(revision))).await;
    assert_eq!(stale.expect_err("checked before the change").message(), "etcdserver: revision of auth store is old");
    let alice = Forwarded { user: "alice".into(), auth_revision: revision + 1 };
    let denied = shard.txn_prepare(prepare(group, 9, "/registry/services/x", alice)).await;
    assert_eq!(denied.expect_err("alice may not write services").message(), "etcdserver: permission denied");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_added_after_an_auth_change_gets_the_store() {
    let f = Federation::start(1);
    let r = router_of(&f, &[]).await;
    set_up_users(&r.addr.to_string());
    let revision = auth_revision(&r.addr.to_string()).await;
    let (before, _) = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap();
    let added = f.tessera(&["group", "add", "--replicas", "3"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let (after, _) = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap();
    let group = *after.groups.keys().find(|g| !before.groups.contains_key(g)).expect("a new group in the map");

    // No router installed anything there: its nodes do, from placement's copy.
    let mut shard = shard_of(&f, group).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // An older store than any logged: changes nothing, answers the group's revision.
        let probe = shard.install_auth(group_request(group, AuthState::default())).await;
        if probe.is_ok_and(|p| p.into_inner().auth_revision == revision) {
            break;
        }
        assert!(Instant::now() < deadline, "the new group never got the federation's auth store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And checks the callers routers forward against it.
    let mut kv = KvClient::connect(node_of(&f, group).await).await.unwrap();
    let mut put = group_request(group, PutRequest { key: b"/registry/services/x".to_vec(), ..Default::default() });
    forward(&mut put, &Forwarded { user: "alice".into(), auth_revision: revision });
    assert_eq!(kv.put(put).await.expect_err("alice may not write services").message(), "etcdserver: permission denied");
    r.shutdown().await;
}
