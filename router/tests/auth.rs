//! etcd's auth through the router, with keys on several groups: the
//! federation has one auth store (in placement's store) that every router
//! follows and checks each call against. The same etcdctl session as a
//! shard-node's (`tessera_testkit::auth`) must print what etcd 3.4 prints,
//! with simple tokens and with JWTs; a user named by its client
//! certificate is allowed only its prefix, including on a range across
//! groups; a change made through one router holds at the others.

mod common;

use common::router_of;
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::auth_client::AuthClient;
use tessera_proto::etcdserverpb::AuthStatusRequest;
use tessera_testkit::auth::{self, jwt_flag, run, session_mismatches, set_up_users, ALICE, ROOT};
use tessera_testkit::etcd::{etcdctl_with_cert, RealEtcd};
use tessera_testkit::Federation;

/// The groups a range of keys spans in `f`'s map.
async fn groups_of_range(f: &Federation, key: &[u8], end: &[u8]) -> usize {
    let (map, _) = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap();
    map.routing().groups_for_range(key, end).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_session_through_the_router_matches_etcd() {
    let f = Federation::start(3);
    let registry = groups_of_range(&f, b"/registry/", b"/registry0").await;
    assert!(registry > 1, "the session's ranges must span groups; /registry/ is on {registry}");
    let etcd = RealEtcd::start().await;
    let r = router_of(&f, &[]).await;
    let mismatches = session_mismatches(&etcd.endpoint, &r.addr.to_string(), "router");
    assert!(mismatches.is_empty(), "{} of {} steps differ:\n\n{}", mismatches.len(), auth::SESSION.len(), mismatches.join("\n"));
    r.shutdown().await;
}

/// `--auth-token jwt,...` on the router: the session with JWTs as etcd's,
/// and a token from before an auth change refused as etcd refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_through_the_router_match_etcd() {
    let f = Federation::start(3);
    let dir = tempfile::tempdir().unwrap();
    let flag = jwt_flag(dir.path());
    let etcd = RealEtcd::start_with(std::slice::from_ref(&flag)).await;
    let r = router_of(&f, &[&flag]).await;
    let tessera = r.addr.to_string();
    let mismatches = session_mismatches(&etcd.endpoint, &tessera, "router");
    assert!(mismatches.is_empty(), "{} steps differ:\n\n{}", mismatches.len(), mismatches.join("\n"));
    let seen = [auth::jwt_token_from_before_a_change(&etcd.endpoint), auth::jwt_token_from_before_a_change(&tessera)];
    assert_eq!(seen[0], seen[1], "etcd 3.4 (left) and the router (right)");
    assert_eq!(seen[1], "etcdserver: revision of auth store is old");
    r.shutdown().await;
}

/// Users set up through one router; at another: watches, lease revokes and
/// the JSON gateway under auth as on etcd, a client certificate's common
/// name taken as the user (etcd's --client-cert-auth), and a permission
/// revoked through the first router refused at the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_holds_at_every_router() {
    let f = Federation::start(3);
    let etcd = RealEtcd::start().await;
    set_up_users(&etcd.endpoint);
    let first = router_of(&f, &[]).await;
    set_up_users(&first.addr.to_string());

    // Another router, started after the changes, with TLS and client certificates.
    let tls = tempfile::tempdir().unwrap();
    let ca = tessera_rpc::tls::DevCa::create(tls.path()).unwrap();
    let server = ca.issue("router", &["127.0.0.1".to_string()]).unwrap();
    let alice = ca.issue("alice", &[]).unwrap();
    let root = ca.issue("root", &[]).unwrap();
    let flags = [
        "--listen-client-urls=https://127.0.0.1:0".to_string(),
        format!("--cert-file={}", server.cert_file.display()),
        format!("--key-file={}", server.key_file.display()),
        format!("--trusted-ca-file={}", ca.ca_file.display()),
        "--client-cert-auth".to_string(),
    ];
    let second = router_of(&f, &flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let endpoint = format!("https://{}", second.addr);
    let as_cert = |cert: &tessera_rpc::tls::CertFiles, args: &[&str]| {
        etcdctl_with_cert(&endpoint, &ca.ca_file, &cert.cert_file, &cert.key_file, args)
    };
    let (ok, out) = as_cert(&alice, &["put", "/registry/pods/ns1/by-cert", "1"]);
    assert!(ok, "alice may write her prefix: {out}");
    let (ok, out) = as_cert(&alice, &["get", "/registry/pods/", "--prefix", "--keys-only"]);
    assert!(ok && out.contains("/registry/pods/ns1/by-cert"), "{out}");
    for denied in
        [&["put", "/registry/services/ns1/by-cert", "1"][..], &["get", "/registry/", "--prefix"], &["get", "", "--from-key"]]
    {
        let (ok, out) = as_cert(&alice, denied);
        assert!(!ok && out.contains("etcdserver: permission denied"), "alice {denied:?}: {out}");
    }
    let (ok, out) = as_cert(&root, &["put", "/registry/services/ns1/by-cert", "1"]);
    assert!(ok, "{out}");
    // root reads across groups.
    let (ok, out) = as_cert(&root, &["get", "/registry/", "--prefix", "--keys-only"]);
    assert!(ok && out.contains("/registry/pods/ns1/by-cert") && out.contains("/registry/services/ns1/by-cert"), "{out}");
    assert!(groups_of_range(&f, b"/registry/", b"/registry0").await > 1);

    // Watches, lease revokes and the gateway, at a third router, as on etcd.
    let third = router_of(&f, &[]).await;
    let at = third.addr.to_string();
    auth::watches_and_lease_revokes(&etcd.endpoint).await;
    auth::watches_and_lease_revokes(&at).await;
    assert_eq!(auth::gateway_auth(&etcd.endpoint), auth::gateway_auth(&at), "etcd 3.4 (left) and the router (right)");

    // A permission revoked through the first router: refused at the third
    // as soon as it follows (it watches the auth store), at the same auth revision.
    let out = run(&at, &[ALICE, "put", "/registry/pods/later", "1"], "");
    assert!(out.starts_with("ok"), "{out}");
    let revoked = run(&first.addr.to_string(), &[ROOT, "user", "revoke-role", "alice", "pods"], "");
    assert!(revoked.starts_with("ok"), "{revoked}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = run(&at, &[ALICE, "put", "/registry/pods/later", "2"], "");
        if out.contains("etcdserver: permission denied") {
            break;
        }
        assert!(Instant::now() < deadline, "the revoked permission still works at another router: {out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut revisions = vec![];
    for endpoint in [first.addr.to_string(), at.clone()] {
        let mut c = AuthClient::connect(format!("http://{endpoint}")).await.unwrap();
        let status = c.auth_status(AuthStatusRequest {}).await.unwrap().into_inner();
        assert!(status.enabled);
        revisions.push(status.auth_revision);
    }
    assert_eq!(revisions[0], revisions[1], "one auth revision at every router");

    for r in [first, second, third] {
        r.shutdown().await;
    }
}
