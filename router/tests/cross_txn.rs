//! Transactions across groups through the router: etcdctl's txn and lock
//! answer as etcd 3.4 does with keys on several groups; concurrent
//! transfers between accounts on different groups keep their sum in every
//! read and every watched revision; a txn left behind by a lost
//! coordinator is finished by the router — aborted if it had committed
//! nowhere, else committed on every group at its revision.

use std::collections::BTreeMap;
use std::time::Duration;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::*;
use tessera_proto::tessera::command::{TxnCommit, TxnPart, TxnPrepare};
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_rpc::{Error, Refusal};
use tessera_testkit::etcd::{etcdctl, etcdctl_stdin, RealEtcd};
use tessera_testkit::txn::{mod_is, put};
use tessera_testkit::Federation;
use tonic::transport::Channel;

/// etcdctl's output with what legitimately differs between two servers (lease ids) masked.
fn session(endpoint: &str) -> Vec<String> {
    let mut out = vec![];
    let mut record = |o: std::process::Output| {
        let mut s = String::from_utf8_lossy(&o.stdout).to_string();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        out.push(format!("{} {}", o.status.success(), s));
    };
    // Keys of four placement units (3 levels deep), so on several groups.
    for (k, v) in [("/t/a/k", "1"), ("/t/b/k", "2"), ("/t/c/k", "3"), ("/t/d/k", "4"), ("/t/e/x/y", "5")] {
        record(etcdctl(endpoint, &["put", k, v]));
    }
    // Compares on three keys, writes and reads after them.
    let txn = concat!(
        "val(\"/t/a/k\") = \"1\"\nval(\"/t/b/k\") = \"2\"\nversion(\"/t/zz/k\") = \"0\"\n\n",
        "put /t/c/k 30\ndel /t/a/k\nput /t/d/k 40\nget /t/b/k\nget /t/c/k\n\n",
        "get /t/c/k\nget /t/d/k\n\n"
    );
    record(etcdctl_stdin(endpoint, &["txn"], txn));
    // Now `a` is gone: the else branch.
    record(etcdctl_stdin(endpoint, &["txn"], txn));
    record(etcdctl_stdin(endpoint, &["txn", "-w", "json"], "mod(\"/t/b/k\") > \"0\"\n\nget /t/ --prefix --keys-only\n\n\n"));
    record(etcdctl(endpoint, &["lock", "cr/lock", "--", "echo", "held"]));
    record(etcdctl(endpoint, &["lock", "cr/lock", "--", "echo", "held again"]));
    record(etcdctl(endpoint, &["del", "", "--from-key"]));
    record(etcdctl(endpoint, &["get", "", "--from-key"]));
    // Revisions and ids differ between servers; the shapes must not.
    out.into_iter().map(|s| mask_numbers(&s)).collect()
}

/// `"revision":123` (and the other numbers that differ between servers) as `"revision":N`.
fn mask_numbers(s: &str) -> String {
    let mut out = s.to_string();
    for field in ["revision", "cluster_id", "member_id", "raft_term", "create_revision", "mod_revision"] {
        let pat = format!("\"{field}\":");
        let mut at = 0;
        while let Some(i) = out[at..].find(&pat) {
            let start = at + i + pat.len();
            let end = start + out[start..].chars().take_while(|c| c.is_ascii_digit()).count();
            out.replace_range(start..end, "N");
            at = start;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_txn_and_lock_over_groups_answer_as_etcd() {
    let etcd = RealEtcd::start().await;
    let expected = session(&etcd.endpoint);
    let f = Federation::start(3);
    let routing = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap().0.routing();
    let groups: std::collections::BTreeSet<u64> =
        ["/t/a/k", "/t/b/k", "/t/c/k", "/t/d/k"].iter().filter_map(|k| routing.group_of(k.as_bytes())).collect();
    assert!(groups.len() >= 2, "the keys should be on several groups");
    let got = session(&f.endpoint());
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
    }
}

/// Runs a recipes client (it prints one JSON object) against `endpoint`.
async fn recipes(mut cmd: std::process::Command, endpoint: String) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || cmd.arg(&endpoint).output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    eprintln!("{stderr}");
    serde_json::from_str(stdout.trim()).unwrap()
}

/// npm etcd3's recipes (router/tests/npm/recipes.js) through one endpoint.
async fn npm_recipes(endpoint: String) -> serde_json::Value {
    let mut cmd = tessera_testkit::bins::command("node");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/npm/recipes.js"));
    cmd.env("NODE_PATH", tessera_testkit::bins::npm_etcd3_modules());
    recipes(cmd, endpoint).await
}

/// clientv3's Mutex, Election and STM (tests/go-recipes): through the
/// router as on etcd 3.4, with the accounts on several groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clientv3_mutex_election_and_stm_work_over_groups() {
    let go = || tessera_testkit::bins::command(tessera_testkit::bins::go_recipes());
    let etcd = RealEtcd::start().await;
    let want = serde_json::json!({
        "mutexDone": 12, "mutexMaxInside": 1, "leader": "candidate-1",
        "stmSerializableSnapshot": 600, "stmSerializable": 600, "stmRepeatableReads": 600
    });
    assert_eq!(recipes(go(), etcd.endpoint.clone()).await, want, "etcd 3.4 itself");
    let f = Federation::start(3);
    let routing = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap().0.routing();
    let groups: std::collections::BTreeSet<u64> =
        (0..6).filter_map(|i| routing.group_of(format!("go/acct/{i}/balance").as_bytes())).collect();
    assert!(groups.len() >= 2, "the accounts should be on several groups");
    assert_eq!(recipes(go(), f.endpoint()).await, want, "through the router");
}

/// npm etcd3's Lock keeps mutual exclusion among contenders, its Election
/// elects, and its STM keeps the total of transfers between accounts on
/// several groups: through the router as on etcd 3.4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_etcd3_lock_election_and_stm_work_over_groups() {
    let etcd = RealEtcd::start().await;
    let expected = npm_recipes(etcd.endpoint.clone()).await;
    let want = serde_json::json!({
        "done": 12, "maxInside": 1, "leader": "candidate-1", "stmSerializable": 600, "stmRepeatableReads": 600
    });
    assert_eq!(expected, want, "etcd 3.4 itself");
    let f = Federation::start(3);
    let routing = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap().0.routing();
    let groups: std::collections::BTreeSet<u64> =
        (0..6).filter_map(|i| routing.group_of(format!("npm/acct/{i}/balance").as_bytes())).collect();
    assert!(groups.len() >= 2, "the accounts should be on several groups");
    assert_eq!(npm_recipes(f.endpoint()).await, want, "through the router");
}

/// Transfers between accounts spread over the groups: every read of all
/// accounts, at any revision, sees the same total, and the watch delivers
/// each transfer's two writes at one revision in one response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_across_groups_are_atomic_to_reads_and_watches() {
    const ACCOUNTS: usize = 8;
    const START: i64 = 100;
    let f = Federation::start(3);
    let mut kv = f.kv().await;
    // Keys of different placement units (3 levels deep), so on several groups.
    let key = |i: usize| format!("acct/{i}/a/v");
    for i in 0..ACCOUNTS {
        kv.put(PutRequest { key: key(i).into(), value: START.to_string().into(), ..Default::default() }).await.unwrap();
    }
    let (holding, status) = f.groups_with_keys();
    assert!(holding >= 2, "accounts on one group: {status}");
    let all = RangeRequest { key: b"acct/".to_vec(), range_end: b"acct0".to_vec(), ..Default::default() };
    let first = kv.range(all.clone()).await.unwrap().into_inner();
    let from = first.header.unwrap().revision + 1;

    let mut watch = tessera_proto::etcdserverpb::watch_client::WatchClient::new(f.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create =
        WatchCreateRequest { key: all.key.clone(), range_end: all.range_end.clone(), start_revision: from, ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut events = watch.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    events.message().await.unwrap().unwrap(); // created

    let total = |kvs: &[tessera_proto::mvccpb::KeyValue]| -> i64 {
        kvs.iter().map(|kv| std::str::from_utf8(&kv.value).unwrap().parse::<i64>().unwrap()).sum()
    };
    let mut workers = vec![];
    for w in 0..3usize {
        let mut kv = f.kv().await;
        let all = all.clone();
        workers.push(tokio::spawn(async move {
            let mut done = 0;
            let mut n = w;
            while done < 15 {
                n = (n * 7 + 3) % 64;
                let (a, b) = (n % ACCOUNTS, (n / ACCOUNTS + 1 + n % ACCOUNTS) % ACCOUNTS);
                if a == b {
                    continue;
                }
                let now = kv.range(all.clone()).await.unwrap().into_inner();
                let name = |i: usize| format!("acct/{i}/a/v");
                let find = |i: usize| now.kvs.iter().find(|kv| kv.key == name(i).as_bytes()).unwrap().clone();
                let (ka, kb) = (find(a), find(b));
                let value =
                    |kv: &tessera_proto::mvccpb::KeyValue| std::str::from_utf8(&kv.value).unwrap().parse::<i64>().unwrap();
                let t = TxnRequest {
                    compare: vec![mod_is(&name(a), ka.mod_revision), mod_is(&name(b), kb.mod_revision)],
                    success: vec![
                        put(&name(a), &(value(&ka) - 1).to_string(), 0),
                        put(&name(b), &(value(&kb) + 1).to_string(), 0),
                    ],
                    failure: vec![],
                };
                if kv.txn(t).await.unwrap().into_inner().succeeded {
                    done += 1;
                }
            }
            done
        }));
    }
    // Reads while they run: the current state and past revisions.
    let mut reads = 0;
    let mut last = from - 1;
    while !workers.iter().all(|w| w.is_finished()) {
        let now = kv.range(all.clone()).await.unwrap().into_inner();
        assert_eq!(total(&now.kvs), START * ACCOUNTS as i64, "a read saw half a transfer: {now:?}");
        let rev = now.header.unwrap().revision;
        for at in [(rev - 1).max(from - 1), (last + rev) / 2] {
            let past = kv.range(RangeRequest { revision: at, ..all.clone() }).await.unwrap().into_inner();
            assert_eq!(total(&past.kvs), START * ACCOUNTS as i64, "a read at {at} saw half a transfer");
        }
        last = rev;
        reads += 1;
    }
    let mut transfers = 0;
    for w in workers {
        transfers += w.await.unwrap();
    }
    assert_eq!(transfers, 45);
    assert!(reads > 0);

    // Every transfer: two events, one revision, one response.
    let mut seen = 0;
    let mut last_rev = 0;
    while seen < transfers {
        let r = tokio::time::timeout(Duration::from_secs(10), events.message()).await.expect("watch stalled").unwrap().unwrap();
        let mut by_rev: BTreeMap<i64, usize> = BTreeMap::new();
        for e in &r.events {
            *by_rev.entry(e.kv.as_ref().unwrap().mod_revision).or_default() += 1;
        }
        for (rev, n) in by_rev {
            assert_eq!(n, 2, "revision {rev}: a transfer's writes split: {r:?}");
            assert!(rev > last_rev);
            last_rev = rev;
            seen += 1;
        }
    }
    let end = kv.range(all).await.unwrap().into_inner();
    assert_eq!(total(&end.kvs), START * ACCOUNTS as i64);
}

/// A client of one group's Shard service, on its first replica.
async fn shard(f: &Federation, group: u64) -> (ShardClient<Channel>, u64) {
    let (map, _) = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap();
    let node = &map.nodes[&map.groups[&group].replicas[0].node];
    (ShardClient::connect(node.client_url.clone()).await.unwrap(), group)
}

fn to<T>(group: u64, msg: T) -> tonic::Request<T> {
    tessera_rpc::metadata::group_request(group, msg)
}

/// Two keys on different groups, the first one's group first.
async fn keys_on_two_groups(f: &Federation) -> ((String, u64), (String, u64)) {
    let routing = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap().0.routing();
    let mut found: Vec<(String, u64)> = vec![];
    for i in 0..1000 {
        let k = format!("orphan/{i}/a/v");
        let g = routing.group_of(k.as_bytes()).unwrap();
        if found.iter().all(|(_, h)| *h != g) {
            found.push((k, g));
        }
        if found.len() == 2 {
            break;
        }
    }
    (found[0].clone(), found[1].clone())
}

/// Prepares a txn that puts `x` and `y` on their groups, as a coordinator
/// would; answers the groups' highest revision.
async fn prepare(f: &Federation, id: i64, x: &(String, u64), y: &(String, u64)) -> i64 {
    let request =
        TxnRequest { compare: vec![], success: vec![put(&x.0, "from-txn", 0), put(&y.0, "from-txn", 0)], failure: vec![] };
    let mut highest = 0;
    let groups = vec![x.1.min(y.1), x.1.max(y.1)];
    for (i, (_, g)) in [x, y].into_iter().enumerate() {
        let (mut c, g) = shard(f, *g).await;
        let msg = TxnPrepare {
            id,
            request: Some(request.clone()),
            compares: vec![],
            ops: vec![i as u32],
            wait: false,
            groups: groups.clone(),
            revoke_lease: 0,
        };
        let resp = c.txn_prepare(to(g, msg)).await.unwrap().into_inner();
        assert!(resp.failures.is_empty());
        highest = highest.max(resp.revision);
    }
    highest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_its_coordinator_left_is_finished_by_the_router() {
    let f = Federation::start(3);
    let mut kv = f.kv().await;
    let (x, y) = keys_on_two_groups(&f).await;
    let get = |k: &str| RangeRequest { key: k.into(), ..Default::default() };

    // Left after prepare: the groups hold their revisions (a write there
    // waits), until a router fences the txn on both, finds it committed
    // nowhere and aborts it.
    prepare(&f, 1 << 50, &x, &y).await;
    let started = std::time::Instant::now();
    let w = kv.put(PutRequest { key: y.0.clone().into(), value: b"after".to_vec(), ..Default::default() }).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "the write waited for the prepared txn: {:?}", started.elapsed());
    let now = kv.range(get(&y.0)).await.unwrap().into_inner();
    assert_eq!(now.kvs[0].value, b"after");
    assert!(kv.range(get(&x.0)).await.unwrap().into_inner().kvs.is_empty(), "the aborted txn wrote nothing");
    let (mut c, g) = shard(&f, y.1).await;
    let late = TxnCommit { id: 1 << 50, revision: w.into_inner().header.unwrap().revision + 1, parts: vec![], recover: false };
    let refused = c.txn_commit(to(g, late)).await.unwrap_err();
    assert_eq!(Error::from_status(&refused), Some(Error::Refused(Refusal::TxnAborted { txn: 1 << 50 })));

    // Left after one group committed: the router commits the other group's
    // part at the same revision.
    let id = (1 << 50) + 1;
    let highest = prepare(&f, id, &x, &y).await;
    let part = |k: &(String, u64)| TxnPart {
        group: k.1,
        ops: Some(TxnRequest { success: vec![put(&k.0, "from-txn", 0)], ..Default::default() }),
        revoke_lease: 0,
    };
    let (mut p, pg) = shard(&f, x.1).await;
    // A revision of the timeline, as a coordinator takes it.
    let oracle = tessera_rpc::oracle::OracleClient::new(f.store().split(',').map(String::from).collect(), Default::default());
    let revision = oracle.next().await.unwrap().max(highest + 1);
    let decision = TxnCommit { id, revision, parts: vec![part(&x), part(&y)], recover: false };
    let first = p.txn_commit(to(pg, decision.clone())).await.unwrap().into_inner();
    assert!(first.response.is_some());
    // A commit sent again (its answer lost) is answered without the part's
    // results, which are gone: the router then answers "timed out", never
    // made-up results (chaos found a delete reported as deleting nothing).
    let again = p.txn_commit(to(pg, decision)).await.unwrap().into_inner();
    assert!(again.response.is_none(), "{again:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let finished = loop {
        let r = kv.range(get(&y.0)).await.unwrap().into_inner();
        if r.kvs[0].value == b"from-txn" {
            break r.kvs[0].mod_revision;
        }
        assert!(std::time::Instant::now() < deadline, "the participant was never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finished, revision);
    assert_eq!(kv.range(get(&x.0)).await.unwrap().into_inner().kvs[0].mod_revision, revision);
}

/// A lease with keys on several groups ends at one revision on all of
/// them, as etcd deletes a lease's keys: when it expires (each group only
/// reports its copy's expiry; a router revokes the lease everywhere at
/// once) and when a client revokes it. A watch gets all the deletes in one
/// response, and a revoke after the expiry answers "lease not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_on_several_groups_ends_at_one_revision_on_all() {
    let f = Federation::start(3);
    let mut kv = f.kv().await;
    let mut lease = tessera_proto::etcdserverpb::lease_client::LeaseClient::new(f.channel().await);
    let keys = |l: &str| -> Vec<String> { ["a", "b", "c", "d", "e"].iter().map(|u| format!("lease-{l}/{u}/x/k")).collect() };
    let routing = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap().0.routing();
    let groups: std::collections::BTreeSet<u64> = keys("1").iter().filter_map(|k| routing.group_of(k.as_bytes())).collect();
    assert!(groups.len() >= 2, "the keys should be on several groups");

    let mut watch = tessera_proto::etcdserverpb::watch_client::WatchClient::new(f.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut events = watch.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for (name, ttl, expire) in [("1", 2, true), ("2", 60, false)] {
        let id = lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await.unwrap().into_inner().id;
        for k in keys(name) {
            kv.put(PutRequest { key: k.into(), value: b"v".to_vec(), lease: id, ..Default::default() }).await.unwrap();
        }
        let prefix = format!("lease-{name}/");
        let create = WatchCreateRequest {
            key: prefix.clone().into(),
            range_end: shardmap::prefix_end(prefix.as_bytes()),
            filters: vec![0], // no puts: deletes only
            ..Default::default()
        };
        tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
        let created = events.message().await.unwrap().unwrap();
        assert!(created.created);
        if !expire {
            let revoked = lease.lease_revoke(LeaseRevokeRequest { id }).await.unwrap().into_inner();
            assert!(revoked.header.unwrap().revision > 0);
        }
        let deletes = tokio::time::timeout(Duration::from_secs(20), events.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(deletes.watch_id, created.watch_id);
        assert_eq!(deletes.events.len(), 5, "every key's delete in one response: {deletes:?}");
        let revisions: std::collections::BTreeSet<i64> =
            deletes.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect();
        assert_eq!(revisions.len(), 1, "one revision for all of the lease's keys: {deletes:?}");
        let after = kv.range(RangeRequest {
            key: prefix.clone().into(),
            range_end: shardmap::prefix_end(prefix.as_bytes()),
            ..Default::default()
        });
        assert!(after.await.unwrap().into_inner().kvs.is_empty());
        let again = lease.lease_revoke(LeaseRevokeRequest { id }).await.unwrap_err();
        assert_eq!(again.message(), "etcdserver: requested lease not found");
    }
}
