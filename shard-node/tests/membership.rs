//! Membership and maintenance driven through etcdctl only, as an operator
//! would: learners under load, promotion, removal, leader moves, backups,
//! hashes and the space quota.

use etcd_client::{Client, GetOptions};
use std::time::{Duration, Instant};
use tessera_testkit::etcd::{etcdctl, RealEtcd};
use tessera_testkit::load::{assert_has_all, LoadWriter};
use tessera_testkit::Cluster;

fn ok(out: std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "etcdctl failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    text
}

fn member_id(c: &Cluster, at: usize, name: &str) -> String {
    let list = ok(c.etcdctl(at, &["member", "list"]));
    list.lines().find(|l| l.split(", ").nth(2) == Some(name)).and_then(|l| l.split(',').next()).unwrap().to_string()
}

async fn status(ep: &str) -> etcd_client::StatusResponse {
    Client::connect([ep], None).await.unwrap().status().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn learner_joins_under_load_then_is_promoted_and_replaces_a_voter() {
    let mut c = Cluster::start(3, &[]).await;
    // Continuous writes through n2 and n3 (n1 is removed later).
    let load = LoadWriter::start(vec![c.members[1].endpoint(), c.members[2].endpoint()]);
    load.wait_acked(200, Duration::from_secs(30)).await;

    // Add a learner with etcdctl and start it as `member add` says.
    let n4 = c.add_member_slot();
    let out = ok(c.etcdctl(0, &["member", "add", "n4", "--learner", &format!("--peer-urls={}", c.peer_url(n4))]));
    let initial_cluster =
        out.lines().find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=")).unwrap().trim_matches('"').to_string();
    c.spawn_joining(n4, &initial_cluster);

    // It catches up while the group keeps serving.
    let ep4 = c.members[n4].endpoint();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut cl) = Client::connect([ep4.clone()], None).await {
            if let Ok(s) = cl.status().await {
                let leader = status(&c.members[1].endpoint()).await;
                if s.is_learner() && s.raft_index() + 5 >= leader.raft_index() && s.raft_index() > 0 {
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "learner did not catch up:\n{}", c.log(n4));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok(etcdctl(&ep4, &["endpoint", "status"])).contains("true"), "status marks the learner");

    // Reads on the learner: serializable, linearizable (ReadIndex via the leader), watch.
    let mut learner = Client::connect([ep4.clone()], None).await.unwrap();
    let mut direct = c.client(1).await;
    let rev = direct.put("fresh", "1", None).await.unwrap().header().unwrap().revision();
    let lin = learner.get("fresh", None).await.unwrap();
    assert_eq!(lin.kvs()[0].mod_revision(), rev, "linearizable read on a learner sees the latest write");
    let ser = learner.get("load/", Some(GetOptions::new().with_prefix().with_serializable().with_count_only())).await.unwrap();
    assert!(ser.count() >= 200);
    let mut w = learner.watch("fresh", None).await.unwrap();
    assert!(w.message().await.unwrap().unwrap().created());
    direct.put("fresh", "2", None).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(ev.events()[0].kv().unwrap().value(), b"2");
    // A write sent to the learner is forwarded to the leader.
    learner.put("via-learner", "ok", None).await.unwrap();

    // Promote (asked of a follower: forwarded to the leader), move the
    // leader to it, and remove an old voter.
    let id4 = member_id(&c, 1, "n4");
    ok(c.etcdctl(2, &["member", "promote", &id4]));
    // Promote answers once the leader applied it; a linearizable read makes
    // n4 apply up to there too before its own status is asked.
    learner.get("fresh", None).await.unwrap();
    assert!(!status(&ep4).await.is_learner());
    let again = c.etcdctl(1, &["member", "promote", &id4]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("etcdserver: can only promote a learner member"));
    let leader_at = c.leader().await;
    ok(c.etcdctl(leader_at, &["move-leader", &id4]));
    assert_eq!(c.leader().await, n4);
    let id1 = member_id(&c, 1, "n1");
    ok(c.etcdctl(n4, &["member", "remove", &id1]));
    let list = ok(c.etcdctl(1, &["member", "list"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains(" n1,"), "{list}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acked, failed) = load.stop().await;
    assert_eq!(failed, 0, "client requests failed during the changes");
    let mut check = Client::connect([ep4.clone()], None).await.unwrap();
    assert_has_all(&mut check, &acked).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hashkv_agrees_and_backup_restores_into_a_new_group() {
    let c = Cluster::start(3, &[]).await;
    let mut cl = c.client(0).await;
    for i in 0..50 {
        cl.put(format!("b/{i}"), format!("{i}"), None).await.unwrap();
    }
    cl.delete("b/7", None).await.unwrap();
    // Every member has applied everything (linearizable read on each), then hashes agree.
    for i in 0..3 {
        c.client(i).await.get("b/1", None).await.unwrap();
    }
    let hashes = ok(etcdctl(&c.endpoints().join(","), &["endpoint", "hashkv"]));
    let values: Vec<&str> = hashes.lines().map(|l| l.split(", ").nth(1).unwrap()).collect();
    assert_eq!(values.len(), 3);
    assert!(values.iter().all(|h| *h == values[0]), "{hashes}");

    ok(c.etcdctl(0, &["defrag"]));
    let file = c.members[0].dir.with_file_name("backup.db");
    let saved = c.etcdctl(1, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));

    // A new single-member group from the backup.
    let restored = Cluster::start(1, &["--restore-from", file.to_str().unwrap()]).await;
    let mut r = restored.client(0).await;
    let got = r.get("b/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(got.count(), 49);
    assert!(r.get("b/7", None).await.unwrap().kvs().is_empty());
    r.put("b/new", "x", None).await.unwrap();
    assert_eq!(r.member_list().await.unwrap().members().len(), 1);

    // The backup is etcd's file: etcdctl reads it, and restores it into a
    // real etcd with the same keys at the same revisions.
    let status = ok(etcdctl("unused:1", &["snapshot", "status", file.to_str().unwrap(), "-w", "json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let before = cl.get("b/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(status["revision"].as_i64(), Some(before.header().unwrap().revision()), "{status}");
    let etcd = RealEtcd::restored_from(&file).await;
    let mut e = Client::connect([etcd.endpoint.clone()], None).await.unwrap();
    let after = e.get("b/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let of = |r: &etcd_client::GetResponse| -> Vec<String> {
        let kvs = r.kvs().iter();
        kvs.map(|k| format!("{:?}={:?} {}/{}/{}", k.key(), k.value(), k.create_revision(), k.mod_revision(), k.version()))
            .collect()
    };
    assert_eq!(of(&after), of(&before), "etcd restored from a shard-node's backup");
    assert_eq!(after.header().unwrap().revision(), before.header().unwrap().revision());
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_raises_nospace_and_the_documented_recovery_clears_it() {
    let c = Cluster::start(3, &["--quota-backend-bytes", "262144"]).await;
    let value = "x".repeat(30_000);
    let mut full = false;
    for i in 0..20 {
        let out = c.etcdctl(0, &["put", &format!("q/{i}"), &value]);
        if !out.status.success() {
            assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: mvcc: database space exceeded"));
            full = true;
            break;
        }
    }
    assert!(full, "the quota was never reached");
    let alarms = ok(c.etcdctl(1, &["alarm", "list"]));
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    // Reads and deletes still work; writes fail on every member.
    assert!(ok(c.etcdctl(2, &["get", "q/0", "--keys-only"])).contains("q/0"));
    assert!(!c.etcdctl(2, &["put", "more", "x"]).status.success());
    ok(c.etcdctl(0, &["del", "q/", "--prefix"]));

    // Recovery: compact, defrag, disarm.
    let mut cl = c.client(0).await;
    let rev = cl.get("q/", None).await.unwrap().header().unwrap().revision();
    ok(c.etcdctl(0, &["compact", &rev.to_string()]));
    ok(c.etcdctl(0, &["defrag"]));
    ok(c.etcdctl(0, &["alarm", "disarm"]));
    assert_eq!(ok(c.etcdctl(0, &["alarm", "list"])).trim(), "");
    ok(c.etcdctl(2, &["put", "more", "x"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn member_update_moves_a_peer_url() {
    let mut c = Cluster::start(3, &[]).await;
    let id3 = member_id(&c, 0, "n3");
    let new_port = c.members[2].peer_port + 5;
    let new_url = format!("http://{}:{new_port}", c.members[2].host);
    ok(c.etcdctl(0, &["member", "update", &id3, &format!("--peer-urls={new_url}")]));
    assert!(ok(c.etcdctl(1, &["member", "list"])).contains(&new_url));

    // The member moves to its new address; the others reach it there.
    c.kill(2);
    c.set_peer_port(2, new_port);
    c.spawn(2);
    c.wait_ready().await;
    let mut n1 = c.client(0).await;
    let rev = n1.put("moved", "yes", None).await.unwrap().header().unwrap().revision();
    let mut n3 = c.client(2).await;
    let got = n3.get("moved", None).await.unwrap(); // linearizable: a ReadIndex round over raft
    assert_eq!(got.kvs()[0].mod_revision(), rev);
    n3.put("from-n3", "ok", None).await.unwrap();
}

/// etcd's --strict-reconfig-check (on by default): a voter is added only
/// while a quorum of the voters has started. Of three started members, two
/// voters added but never started still leave a quorum (3 of 5); a third
/// would not (3 of 6) and is refused with etcd's error, the group untouched.
#[tokio::test(flavor = "multi_thread")]
async fn voters_are_added_only_while_a_quorum_has_started() {
    let mut c = Cluster::start(3, &[]).await;
    let mut refused = None;
    for _ in 0..3 {
        let slot = c.add_member_slot();
        let out = c.etcdctl(0, &["member", "add", &format!("n{}", slot + 1), &format!("--peer-urls={}", c.peer_url(slot))]);
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).to_string());
            break;
        }
    }
    let refused = refused.expect("the third unstarted voter was refused");
    assert!(refused.contains("etcdserver: re-configuration failed due to not enough started members"), "{refused}");
    assert_eq!(ok(c.etcdctl(0, &["member", "list"])).lines().count(), 5, "two voters were added, not the third");
    ok(c.etcdctl(0, &["put", "k", "v"]));
}
