//! The window etcd closes with its applier: a write a router checked
//! against the federation's auth store just before a change, arriving
//! after the change was answered, is refused by the group ("revision of
//! auth store is old"), as etcd refuses it, because the router that made
//! the change installed it on every group first. The router is held behind
//! the change with a failpoint (`auth::publish`), as one whose watch has
//! not delivered it yet. A group also checks the forwarded caller itself.
//! Its own file: failpoints are armed for the whole process.
#![cfg(feature = "failpoints")]

mod common;

use common::router_of;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::auth_client::AuthClient;
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::lease_client::LeaseClient;
use tessera_proto::etcdserverpb::{
    request_op, AuthStatusRequest, AuthenticateRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use tessera_proto::tessera::command::Forwarded;
use tessera_rpc::metadata::{forward, group_request};
use tessera_testkit::auth::{run, set_up_users, ROOT};
use tessera_testkit::Federation;
use tonic::Request;

fn put(key: &str, token: &str) -> Request<PutRequest> {
    with_token(PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() }, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_checked_before_an_auth_change_is_refused_after_it() {
    let f = Federation::start(3);
    let r = router_of(&f, &[]).await;
    let at = r.addr.to_string();
    set_up_users(&at);
    let url = format!("http://{at}");
    let mut auth = AuthClient::connect(url.clone()).await.unwrap();
    let mut kv = KvClient::connect(url).await.unwrap();
    let login = AuthenticateRequest { name: "alice".into(), password: "alicepw".into() };
    let token = auth.authenticate(login).await.unwrap().into_inner().token;
    kv.put(put("/registry/pods/before", &token)).await.expect("alice may write her prefix");
    // alice may also write a prefix on another group (a txn over both
    // spans groups), and holds a key on a lease root granted.
    let other = prefix_on_another_group(&f, "/registry/pods/").await;
    for args in [
        &["role", "add", "more"][..],
        &["role", "grant-permission", "more", "readwrite", &other, "--prefix=true"],
        &["user", "grant-role", "alice", "more"],
    ] {
        let out = run(&at, &[&[ROOT][..], args].concat(), "");
        assert!(out.starts_with("ok"), "{args:?}: {out}");
    }
    let root_login = AuthenticateRequest { name: "root".into(), password: "rootpw".into() };
    let root_token = auth.authenticate(root_login).await.unwrap().into_inner().token;
    let mut leases = LeaseClient::connect(format!("http://{at}")).await.unwrap();
    let lease = leases.lease_grant(with_token(LeaseGrantRequest { ttl: 60, id: 0 }, &root_token)).await.unwrap().into_inner().id;
    let leased = PutRequest { key: b"/registry/pods/leased".to_vec(), value: b"v".to_vec(), lease, ..Default::default() };
    kv.put(with_token(leased, &token)).await.expect("alice may attach her key to a lease");
    let across = txn_putting(&["/registry/pods/txn", &format!("{other}txn")]);
    kv.txn(with_token(across.clone(), &token)).await.expect("alice may write both prefixes at once");
    let before = auth.auth_status(AuthStatusRequest {}).await.unwrap().into_inner().auth_revision;

    // The router stops taking newer auth stores; alice loses her role
    // through it (the change itself is made, and installed on the groups).
    fail::cfg("auth::publish", "return").unwrap();
    let revoked = run(&at, &[ROOT, "user", "revoke-role", "alice", "pods"], "");
    assert!(revoked.starts_with("ok"), "{revoked}");
    let after = auth.auth_status(AuthStatusRequest {}).await.unwrap().into_inner().auth_revision;
    assert!(after > before, "{before} -> {after}");

    // Checked by the router at the old revision (allowed there: a router
    // that had taken the change would answer "permission denied"), refused
    // by the group.
    let refused = kv.put(put("/registry/pods/after", &token)).await.expect_err("a write checked before the change applied");
    assert_eq!(refused.message(), "etcdserver: revision of auth store is old");
    // So are the parts of a txn across groups, and a lease revoke (prepared on every group).
    let refused = kv.txn(with_token(txn_putting(&["/registry/pods/after-txn", &format!("{other}after-txn")]), &token)).await;
    assert_eq!(
        refused.expect_err("a txn across groups checked before the change").message(),
        "etcdserver: revision of auth store is old"
    );
    let refused = leases.lease_revoke(with_token(LeaseRevokeRequest { id: lease }, &token)).await;
    assert_eq!(
        refused.expect_err("a lease revoke checked before the change").message(),
        "etcdserver: revision of auth store is old"
    );

    // Caught up (it reads the store again after such a refusal): the router refuses it itself.
    fail::remove("auth::publish");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match kv.put(put("/registry/pods/after", &token)).await {
            Err(s) if s.message() == "etcdserver: permission denied" => break,
            Err(s) if s.message() == "etcdserver: revision of auth store is old" => {}
            other => panic!("alice wrote after losing her role: {other:?}"),
        }
        assert!(Instant::now() < deadline, "the router never caught up with the change");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, out) = f.etcdctl(&[ROOT, "get", "/registry/pods/", "--prefix", "--keys-only"]);
    assert!(ok && out.contains("/registry/pods/before") && !out.contains("/registry/pods/after"), "{out}");
    assert!(out.contains("/registry/pods/leased"), "the lease was revoked: {out}");
    let (ok, out) = f.etcdctl(&[ROOT, "get", &other, "--prefix", "--keys-only"]);
    assert!(ok && out.contains("txn") && !out.contains("after-txn"), "{out}");
    r.shutdown().await;
}

fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("token", token.parse().unwrap());
    r
}

fn txn_putting(keys: &[&str]) -> TxnRequest {
    let put = |k: &&str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    };
    TxnRequest { success: keys.iter().map(put).collect(), ..Default::default() }
}

/// A prefix of Kubernetes' kind held by a group other than `prefix`'s.
async fn prefix_on_another_group(f: &Federation, prefix: &str) -> String {
    let (map, _) = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap();
    let routing = map.routing();
    let home = routing.group_of(prefix.as_bytes());
    ["services", "configmaps", "secrets", "events", "leases", "nodes", "deployments", "endpoints"]
        .iter()
        .map(|kind| format!("/registry/{kind}/"))
        .find(|p| routing.group_of(p.as_bytes()) != home)
        .expect("every kind on one group")
}

/// A group told who asked (as a router tells it) checks that user's
/// permissions itself, at the auth revision it logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_checks_the_caller_a_router_forwarded() {
    let f = Federation::start(2);
    let r = router_of(&f, &[]).await;
    let at = r.addr.to_string();
    set_up_users(&at);
    let mut auth = AuthClient::connect(format!("http://{at}")).await.unwrap();
    let revision = auth.auth_status(AuthStatusRequest {}).await.unwrap().into_inner().auth_revision;
    let (map, _) = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap();
    let key = "/registry/services/forwarded";
    let group = map.clone().routing().group_of(key.as_bytes()).unwrap();
    let node = &map.nodes[&map.groups[&group].replicas[0].node];
    let mut kv = KvClient::connect(node.client_url.clone()).await.unwrap();
    let as_user = |user: &str, auth_revision: u64| {
        let mut req = group_request(group, PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() });
        forward(&mut req, &Forwarded { user: user.into(), auth_revision });
        req
    };
    let denied = kv.put(as_user("alice", revision)).await.expect_err("alice may not write services");
    assert_eq!(denied.message(), "etcdserver: permission denied");
    let stale = kv.put(as_user("root", revision - 1)).await.expect_err("checked at an older revision");
    assert_eq!(stale.message(), "etcdserver: revision of auth store is old");
    kv.put(as_user("root", revision)).await.expect("root may write anything");
    let read = kv.range(group_request(group, RangeRequest { key: key.into(), ..Default::default() })).await.unwrap();
    assert_eq!(read.into_inner().kvs.len(), 1);
    r.shutdown().await;
}
