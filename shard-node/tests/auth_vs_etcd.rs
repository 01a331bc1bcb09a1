//! etcd's auth side by side (`tessera_testkit::auth`): the same etcdctl
//! session against real etcd 3.4 and a shard-node group, outputs the same;
//! then watches and lease revokes through an etcd client, the JSON
//! gateway, and JWT tokens.

use tessera_testkit::auth::{self, jwt_flag, session_mismatches, set_up_users};
use tessera_testkit::etcd::RealEtcd;
use tessera_testkit::Cluster;

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_auth_session_matches_etcd() {
    let etcd = RealEtcd::start().await;
    let group = Cluster::start(1, &["--bcrypt-cost=4"]).await;
    let mismatches = session_mismatches(&etcd.endpoint, &group.members[0].endpoint(), "shard-node");
    assert!(mismatches.is_empty(), "{} of {} steps differ:\n\n{}", mismatches.len(), auth::SESSION.len(), mismatches.join("\n"));
}

/// With auth on: a watch of keys the user may not read is cancelled with
/// etcd's reason, a permitted one sees its events; revoking a lease that
/// holds a key the user may not write is refused. The same on both.
#[tokio::test(flavor = "multi_thread")]
async fn watches_and_lease_revokes_under_auth_match_etcd() {
    let etcd = RealEtcd::start().await;
    let group = Cluster::start(1, &["--bcrypt-cost=4"]).await;
    for endpoint in [etcd.endpoint.clone(), group.members[0].endpoint()] {
        set_up_users(&endpoint);
        auth::watches_and_lease_revokes(&endpoint).await;
    }
}

/// The JSON gateway under auth: Authenticate for a token, calls with it in
/// `Authorization`, and without it; status codes and error bodies as etcd's.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_auth_matches_etcd() {
    let etcd = RealEtcd::start().await;
    let group = Cluster::start(1, &["--bcrypt-cost=4"]).await;
    let mut seen = vec![];
    for endpoint in [etcd.endpoint.clone(), group.members[0].endpoint()] {
        set_up_users(&endpoint);
        seen.push(auth::gateway_auth(&endpoint));
    }
    assert_eq!(seen[0], seen[1], "etcd 3.4 (left) and shard-node (right) differ");
    assert!(seen[1][3].starts_with("200") && seen[1][3].contains(&tessera_testkit::json_http::b64("1")), "{:?}", seen[1]);
}

/// `--auth-token jwt,...` (RS256): the same session's auth steps with JWT
/// tokens, outputs as etcd 3.4's; a token from before an auth change is
/// refused with "revision of auth store is old", as on etcd.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_tokens_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let flag = jwt_flag(dir.path());
    let etcd = RealEtcd::start_with(std::slice::from_ref(&flag)).await;
    let group = Cluster::start(1, &["--bcrypt-cost=4", &flag]).await;
    let tessera = group.members[0].endpoint();
    let mismatches = session_mismatches(&etcd.endpoint, &tessera, "shard-node");
    assert!(mismatches.is_empty(), "{} steps differ:\n\n{}", mismatches.len(), mismatches.join("\n"));
    let seen = [auth::jwt_token_from_before_a_change(&etcd.endpoint), auth::jwt_token_from_before_a_change(&tessera)];
    assert_eq!(seen[0], seen[1], "etcd 3.4 (left) and shard-node (right)");
    assert_eq!(seen[1], "etcdserver: revision of auth store is old");
}
