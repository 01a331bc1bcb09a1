//! The federation end to end, through the router, with keys on different
//! groups: etcdctl, Kubernetes' storage patterns, and faults.

use std::collections::BTreeSet;
use std::time::Duration;
use tessera_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::request_op::Request as Op;
use tessera_proto::etcdserverpb::response_op::Response as OpResp;
use tessera_proto::etcdserverpb::watch_client::WatchClient;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::*;
use tessera_testkit::txn::{get, mod_is, put};
use tessera_testkit::Federation;
use tonic::Request;

const KEYS: &[&str] = &[
    "/registry/pods/ns1/a",
    "/registry/pods/ns2/b",
    "/registry/services/specs/ns1/s",
    "/registry/configmaps/ns1/c",
    "/registry/leases/kube-node-lease/n1",
    "/registry/events/ns1/e1",
    "/registry/secrets/ns1/x",
    "/registry/deployments/ns1/d",
    "foo",
    "tx/1",
    "app/lock/7f3a",
    "zeta/q",
];

fn watch_create(key: &[u8], end: &[u8], start: i64, prev_kv: bool, progress: bool) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            start_revision: start,
            prev_kv,
            progress_notify: progress,
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_through_the_router_across_groups() {
    let f = Federation::start(3);
    let mut kv = f.kv().await;
    let start = kv
        .range(RangeRequest { key: b"foo".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    for k in KEYS {
        let (ok, out) = f.etcdctl(&["put", k, &format!("v-{k}")]);
        assert!(ok, "{out}");
    }

    // Sharding is real: keys of different units live on different groups,
    // and every key on exactly one.
    let status = f.status_json();
    let per_group: Vec<u64> = status["groups"].as_array().unwrap().iter().map(|g| g["keys"].as_u64().unwrap()).collect();
    assert!(per_group.iter().filter(|n| **n > 0).count() >= 2, "all keys on one group: {per_group:?}");
    assert_eq!(per_group.iter().sum::<u64>(), KEYS.len() as u64, "{per_group:?}");
    // ... and each group's own members hold only the keys the map gives it.
    let (map, _) = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap();
    let routing = map.clone().routing();
    for (gid, g) in &map.groups {
        let node = &map.nodes[&g.replicas[0].node];
        let mut direct = tessera_proto::etcdserverpb::kv_client::KvClient::connect(node.client_url.clone()).await.unwrap();
        let mut req = Request::new(RangeRequest { key: vec![0], range_end: vec![0], keys_only: true, ..Default::default() });
        req.metadata_mut().insert(tessera_rpc::metadata::GROUP_HEADER, (*gid).into());
        let resp = direct.range(req).await.unwrap().into_inner();
        for k in resp.kvs {
            assert_eq!(routing.group_of(&k.key), Some(*gid), "group {gid} holds {:?}", String::from_utf8_lossy(&k.key));
        }
    }

    // One sorted result across groups.
    let mut sorted: Vec<&str> = KEYS.to_vec();
    sorted.sort();
    let (ok, out) = f.etcdctl(&["get", "", "--from-key", "--keys-only"]);
    assert!(ok, "{out}");
    let got: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(got, sorted);
    let (_, out) = f.etcdctl(&["get", "/registry", "--prefix", "--keys-only", "--limit", "3"]);
    let got: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(got, sorted.iter().filter(|k| k.starts_with("/registry")).take(3).copied().collect::<Vec<_>>());
    let (_, out) = f.etcdctl(&["get", "", "--from-key", "--limit", "2", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["count"], KEYS.len());
    assert_eq!(v["more"], true);
    let (_, out) =
        f.etcdctl(&["get", "/registry", "--prefix", "--order", "DESCEND", "--sort-by", "KEY", "--keys-only", "--limit", "1"]);
    assert_eq!(out.trim(), "/registry/services/specs/ns1/s");

    // Every event exactly once, in revision order, across groups.
    let mut w = WatchClient::new(f.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(watch_create(&[0], &[0], start + 1, false, false)).await.unwrap();
    let mut s = w.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut seen = vec![];
    while seen.len() < KEYS.len() {
        let r = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("watch stalled").unwrap().unwrap();
        for e in r.events {
            let kv = e.kv.unwrap();
            seen.push((kv.mod_revision, String::from_utf8(kv.key).unwrap()));
        }
    }
    assert!(seen.windows(2).all(|p| p[0].0 < p[1].0), "not in revision order: {seen:?}");
    let keys: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(keys, KEYS, "events in write order, each once");

    // A txn over several groups is one txn: its compares see every group,
    // its writes take one revision, and the merged watch delivers them in
    // one response, as etcd does.
    let (a, b) = ("/registry/pods/ns1/a", "foo");
    let routing = shardmap::watcher::fetch(&f.store_url(), &Default::default()).await.unwrap().0.routing();
    assert_ne!(routing.group_of(a.as_bytes()), routing.group_of(b.as_bytes()), "the test needs two groups");
    let value_is = |k: &str, v: &str| Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key: k.into(),
        target_union: Some(TargetUnion::Value(v.into())),
        ..Default::default()
    };
    let txn = |cmp: Vec<Compare>| TxnRequest {
        compare: cmp,
        success: vec![put(a, "t1", 0), put(b, "t2", 0), get(b)],
        failure: vec![get(a), get(b)],
    };
    let lost = kv.txn(txn(vec![value_is(a, &format!("v-{a}")), value_is(b, "nope")])).await.unwrap().into_inner();
    assert!(!lost.succeeded, "one compare failed on its group");
    let values: Vec<Vec<u8>> = lost
        .responses
        .iter()
        .map(|r| match &r.response {
            Some(OpResp::ResponseRange(g)) => g.kvs[0].value.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, vec![format!("v-{a}").into_bytes(), format!("v-{b}").into_bytes()]);
    let won = kv.txn(txn(vec![value_is(a, &format!("v-{a}")), value_is(b, &format!("v-{b}"))])).await.unwrap().into_inner();
    assert!(won.succeeded);
    let rev = won.header.unwrap().revision;
    let Some(OpResp::ResponseRange(after)) = &won.responses[2].response else { panic!("{won:?}") };
    assert_eq!((after.kvs[0].value.as_slice(), after.kvs[0].mod_revision), (&b"t2"[..], rev), "a get after the put sees it");
    let r = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("watch stalled").unwrap().unwrap();
    let mut got: Vec<(String, i64)> = r
        .events
        .iter()
        .map(|e| e.kv.as_ref().unwrap())
        .map(|kv| (String::from_utf8_lossy(&kv.key).into(), kv.mod_revision))
        .collect();
    got.sort();
    assert_eq!(got, vec![(a.to_string(), rev), (b.to_string(), rev)], "both writes, one revision, one response");
    let (_, out) = f.etcdctl(&["get", a, "--print-value-only"]);
    assert_eq!(out.trim(), "t1");

    // DeleteRange across groups deletes in each.
    let (ok, out) = f.etcdctl(&["del", "", "--from-key"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), KEYS.len().to_string());
    let r = tokio::time::timeout(Duration::from_secs(10), s.message()).await.unwrap().unwrap().unwrap();
    assert!(!r.events.is_empty());
    assert!(f.etcdctl(&["get", "", "--from-key"]).1.trim().is_empty());
}

/// etcd's JSON gateway on the router: the same cross-group semantics as
/// gRPC (one sorted range, merged watch, a txn over groups, leases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_gateway_through_the_router() {
    use serde_json::json;
    use tessera_testkit::json_http::{b64, post, Stream};
    let f = Federation::start(3);
    let ep = f.endpoint();
    let rev = |v: &serde_json::Value| v["header"]["revision"].as_str().unwrap().parse::<i64>().unwrap();
    let (status, first) = post(&ep, "/v3/kv/range", &json!({"key": b64("foo")}).to_string());
    assert_eq!(status, 200, "{first}");
    let start = rev(&first);
    for k in KEYS {
        let (status, v) = post(&ep, "/v3/kv/put", &json!({"key": b64(k), "value": b64(&format!("v-{k}"))}).to_string());
        assert_eq!(status, 200, "{v}");
    }
    let mut sorted: Vec<&str> = KEYS.to_vec();
    sorted.sort();
    let sorted: Vec<String> = sorted.iter().map(|k| b64(k)).collect();
    let all = json!({"key": "AA==", "range_end": "AA=="});
    let (_, v) = post(&ep, "/v3/kv/range", &all.to_string());
    let keys: Vec<&str> = v["kvs"].as_array().unwrap().iter().map(|kv| kv["key"].as_str().unwrap()).collect();
    assert_eq!(keys, sorted.iter().map(String::as_str).collect::<Vec<_>>(), "one sorted result across groups");
    assert_eq!(v["count"], json!(KEYS.len().to_string()));
    let (_, v) =
        post(&ep, "/v3/kv/range", &json!({"key": "AA==", "range_end": "AA==", "limit": 2, "keys_only": true}).to_string());
    assert_eq!((v["kvs"].as_array().unwrap().len(), &v["more"]), (2, &json!(true)));

    // The merged watch streams every event once, in revision order.
    let watch = json!({"create_request": {"key": "AA==", "range_end": "AA==", "start_revision": (start + 1).to_string()}});
    let mut w = Stream::open(&ep, "/v3/watch", &watch.to_string());
    assert_eq!(w.status, 200);
    let mut seen: Vec<(i64, String)> = vec![];
    while seen.len() < KEYS.len() {
        let line = w.next_line().expect("watch stream ended");
        for e in line["result"]["events"].as_array().into_iter().flatten() {
            let kv = &e["kv"];
            seen.push((kv["mod_revision"].as_str().unwrap().parse().unwrap(), kv["key"].as_str().unwrap().to_string()));
        }
    }
    assert!(seen.windows(2).all(|p| p[0].0 < p[1].0), "not in revision order: {seen:?}");
    assert_eq!(seen.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>(), KEYS.iter().map(|k| b64(k)).collect::<Vec<_>>());

    // A txn over two groups runs as one, answered as etcd's gateway does.
    let span = json!({
        "compare": [{"key": b64("foo"), "target": "VERSION", "result": "GREATER", "version": "0"}],
        "success": [{"request_put": {"key": b64("/registry/pods/ns1/a"), "value": b64("t")}}, {"request_put": {"key": b64("foo"), "value": b64("t")}}]
    });
    let (status, v) = post(&ep, "/v3/kv/txn", &span.to_string());
    assert_eq!((status, &v["succeeded"]), (200, &json!(true)), "{v}");
    let line = w.next_line().expect("watch stream ended");
    let events = line["result"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "one response holds the txn's writes: {line}");
    assert_eq!(events[0]["kv"]["mod_revision"], v["header"]["revision"]);

    // A lease used on two groups: keepalive renews it, revoke deletes both keys.
    let (_, grant) = post(&ep, "/v3/lease/grant", &json!({"TTL": "30"}).to_string());
    let id = grant["ID"].as_str().unwrap().to_string();
    for k in ["/registry/leases/kube-node-lease/n1", "foo"] {
        let (status, v) = post(&ep, "/v3/kv/put", &json!({"key": b64(k), "lease": id}).to_string());
        assert_eq!(status, 200, "{v}");
    }
    let mut ka = Stream::open(&ep, "/v3/lease/keepalive", &json!({"ID": id}).to_string());
    let renewed = ka.next_line().unwrap();
    assert_eq!(renewed["result"]["TTL"], json!("30"), "{renewed}");
    let (_, ttl) = post(&ep, "/v3/lease/timetolive", &json!({"ID": id, "keys": true}).to_string());
    assert_eq!(ttl["keys"].as_array().map(Vec::len), Some(2), "{ttl}");
    let (status, _) = post(&ep, "/v3/lease/revoke", &json!({"ID": id}).to_string());
    assert_eq!(status, 200);
    for k in ["/registry/leases/kube-node-lease/n1", "foo"] {
        let (_, v) = post(&ep, "/v3/kv/range", &json!({"key": b64(k)}).to_string());
        assert!(v.get("kvs").is_none(), "{k} outlived its lease: {v}");
    }

    // DeleteRange over all groups; Status describes the federation.
    let (_, v) = post(&ep, "/v3/kv/deleterange", &all.to_string());
    assert_eq!(v["deleted"], json!((KEYS.len() - 2).to_string()));
    let (status, v) = post(&ep, "/v3/maintenance/status", "{}");
    assert_eq!(status, 200);
    assert!(v["version"].as_str().unwrap().starts_with("3."), "{v}");
}

/// kube-apiserver's storage calls (k8s.io/apiserver/pkg/storage/etcd3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_storage_patterns() {
    let f = Federation::start(3);
    let ch = f.channel().await;
    let mut kv = tessera_proto::etcdserverpb::kv_client::KvClient::new(ch.clone());
    let mut lease = tessera_proto::etcdserverpb::lease_client::LeaseClient::new(ch.clone());
    let mut maint = tessera_proto::etcdserverpb::maintenance_client::MaintenanceClient::new(ch.clone());

    // Version check.
    let st = maint.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(st.version.starts_with("3."), "{}", st.version);

    // Create = txn on mod_revision 0, for resources on different groups.
    let mut created = vec![];
    for (i, k) in [
        "/registry/pods/default/p0",
        "/registry/configmaps/default/c0",
        "/registry/secrets/default/s0",
        "/registry/services/specs/default/v0",
    ]
    .iter()
    .enumerate()
    {
        let t = TxnRequest { compare: vec![mod_is(k, 0)], success: vec![put(k, &format!("obj{i}"), 0)], failure: vec![] };
        let r = kv.txn(t.clone()).await.unwrap().into_inner();
        assert!(r.succeeded);
        created.push((k.to_string(), r.header.unwrap().revision));
        // creating again fails (AlreadyExists)
        assert!(!kv.txn(t).await.unwrap().into_inner().succeeded);
    }
    // Update = txn on mod_revision, else get (conflict answers the current object).
    let (k, rev) = created[0].clone();
    let t = TxnRequest { compare: vec![mod_is(&k, rev)], success: vec![put(&k, "v2", 0)], failure: vec![get(&k)] };
    let r = kv.txn(t.clone()).await.unwrap().into_inner();
    assert!(r.succeeded);
    let r = kv.txn(t).await.unwrap().into_inner();
    assert!(!r.succeeded);
    let Some(OpResp::ResponseRange(cur)) = &r.responses[0].response else { panic!("no else-get") };
    assert_eq!(cur.kvs[0].value, b"v2");
    // Delete = txn on mod_revision with a delete.
    let (k3, rev3) = created[3].clone();
    let del =
        RequestOp { request: Some(Op::RequestDeleteRange(DeleteRangeRequest { key: k3.clone().into(), ..Default::default() })) };
    assert!(
        kv.txn(TxnRequest { compare: vec![mod_is(&k3, rev3)], success: vec![del], failure: vec![get(&k3)] })
            .await
            .unwrap()
            .into_inner()
            .succeeded
    );

    // Paginated list across groups, pinned at the first page's revision.
    for i in 0..25 {
        kv.put(PutRequest {
            key: format!("/registry/pods/ns{}/p{i:02}", i % 3).into(),
            value: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        kv.put(PutRequest { key: format!("/registry/events/ns/e{i:02}").into(), value: b"x".to_vec(), ..Default::default() })
            .await
            .unwrap();
    }
    let (key, end) = (b"/registry/".to_vec(), b"/registry0".to_vec());
    let first = kv
        .range(RangeRequest { key: key.clone(), range_end: end.clone(), limit: 10, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let rv = first.header.unwrap().revision;
    let total = first.count;
    // writes after the first page must not show in later pages
    kv.put(PutRequest { key: b"/registry/aaa/new".to_vec(), value: b"x".to_vec(), ..Default::default() }).await.unwrap();
    kv.put(PutRequest { key: b"/registry/zzz/new".to_vec(), value: b"x".to_vec(), ..Default::default() }).await.unwrap();
    let mut listed: Vec<Vec<u8>> = first.kvs.iter().map(|k| k.key.clone()).collect();
    let mut more = first.more;
    while more {
        let mut next = listed.last().unwrap().clone();
        next.push(0);
        let page = kv
            .range(RangeRequest { key: next, range_end: end.clone(), limit: 10, revision: rv, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.kvs.iter().map(|k| k.key.clone()));
        more = page.more;
    }
    assert_eq!(listed.len() as i64, total);
    assert!(listed.windows(2).all(|w| w[0] < w[1]));
    assert!(!listed.iter().any(|k| k.ends_with(b"/new")));
    // count_only
    let c = kv
        .range(RangeRequest { key: key.clone(), range_end: end.clone(), count_only: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.count, total + 2);
    assert!(c.kvs.is_empty());

    // Watch from rv+1 with prev_kv and progress notify, over all resources.
    let mut w = WatchClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(watch_create(&key, &end, rv + 1, true, true)).await.unwrap();
    let mut s = w.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    // Events with a reused lease (kube-apiserver attaches events to one lease).
    let l = lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.unwrap().into_inner();
    kv.put(PutRequest {
        key: b"/registry/events/ns/e00".to_vec(),
        value: b"again".to_vec(),
        lease: l.id,
        prev_kv: false,
        ..Default::default()
    })
    .await
    .unwrap();
    kv.put(PutRequest { key: b"/registry/pods/ns0/p00".to_vec(), value: b"leased".to_vec(), lease: l.id, ..Default::default() })
        .await
        .unwrap();
    let mut events = vec![];
    while events.len() < 4 {
        let r = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("watch stalled").unwrap().unwrap();
        events.extend(r.events);
    }
    let keys: Vec<String> = events.iter().map(|e| String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into()).collect();
    assert_eq!(keys, ["/registry/aaa/new", "/registry/zzz/new", "/registry/events/ns/e00", "/registry/pods/ns0/p00"]);
    assert_eq!(events[2].prev_kv.as_ref().unwrap().value, b"x");
    assert!(events.windows(2).all(|p| p[0].kv.as_ref().unwrap().mod_revision < p[1].kv.as_ref().unwrap().mod_revision));
    // WatchProgressRequest: answered with a revision covering everything sent.
    let last = events.last().unwrap().kv.as_ref().unwrap().mod_revision;
    tx.send(WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) }).await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("no progress").unwrap().unwrap();
    assert!(p.events.is_empty());
    assert!(p.header.unwrap().revision >= last);
    // the lease's keys on both groups go when it is revoked
    let ttl = lease.lease_time_to_live(LeaseTimeToLiveRequest { id: l.id, keys: true }).await.unwrap().into_inner();
    assert_eq!(ttl.keys.len(), 2, "{ttl:?}");
    lease.lease_revoke(LeaseRevokeRequest { id: l.id }).await.unwrap();
    let mut deletes = 0;
    while deletes < 2 {
        let r = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("no delete events").unwrap().unwrap();
        deletes += r.events.iter().filter(|e| e.r#type == 1).count();
    }

    // Compaction: the compact key txn, then Compact.
    let cur = kv.range(RangeRequest { key: b"compact_rev_key".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    let now = cur.header.unwrap().revision;
    let t = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: b"compact_rev_key".to_vec(),
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![put("compact_rev_key", &now.to_string(), 0)],
        failure: vec![get("compact_rev_key")],
    };
    assert!(kv.txn(t).await.unwrap().into_inner().succeeded);
    kv.compact(CompactionRequest { revision: rv, physical: true }).await.unwrap();
    let err = kv
        .range(RangeRequest { key: key.clone(), range_end: end.clone(), revision: rv - 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: mvcc: required revision has been compacted");
    let page =
        kv.range(RangeRequest { key, range_end: end, revision: rv, limit: 5, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(page.kvs.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_no_acknowledged_write() {
    let mut f = Federation::start(3);
    let ch = f.channel().await;
    let mut kv = tessera_proto::etcdserverpb::kv_client::KvClient::new(ch.clone());
    let start =
        kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap().into_inner().header.unwrap().revision;
    // a merged watch over every group, open across all the faults
    let mut w = WatchClient::new(ch.clone());
    let (wtx, wrx) = tokio::sync::mpsc::channel(4);
    wtx.send(watch_create(&[0], &[0], start + 1, false, false)).await.unwrap();
    let mut ws = w.watch(tokio_stream::wrappers::ReceiverStream::new(wrx)).await.unwrap().into_inner();

    let acked = std::sync::Arc::new(shared::Acked::default());
    let writer = {
        let acked = acked.clone();
        let mut kv = kv.clone();
        tokio::spawn(async move {
            for i in 0..100000u32 {
                let k = format!("/registry/r{}/ns/k{i:05}", i % 7);
                if kv.put(PutRequest { key: k.clone().into(), value: b"v".to_vec(), ..Default::default() }).await.is_ok() {
                    acked.0.lock().unwrap().insert(k);
                }
                if acked.1.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
        })
    };
    let wait_more = |n: usize| {
        let acked = acked.clone();
        async move {
            let base = acked.0.lock().unwrap().len();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while acked.0.lock().unwrap().len() < base + n {
                assert!(tokio::time::Instant::now() < deadline, "writes stopped");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_more(50).await;

    // kill -9 the node leading the most groups; writes carry on, it restarts.
    let status = f.status_json();
    let mut leads = std::collections::BTreeMap::<String, usize>::new();
    for g in status["groups"].as_array().unwrap() {
        if let Some(l) = g["leader"].as_str() {
            *leads.entry(l.to_string()).or_default() += 1;
        }
    }
    let victim = leads.into_iter().max_by_key(|(_, n)| *n).unwrap().0;
    let args = f.kill9(f.pid(&victim));
    wait_more(100).await;
    f.restart(&args);

    // kill -9 placement's store: the data path keeps serving on the cached map.
    let pargs = f.kill9(f.pid("placement-store-1"));
    wait_more(100).await;
    f.restart(&pargs);

    // kill -9 the router: another router serves the same data.
    let _ = f.kill9(f.pid_of_router());
    acked.1.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.await;
    let router2 = format!("http://{}:3379", f.host);
    let mut r2 = tessera_testkit::bins::command(tessera_testkit::bins::path("router"))
        .args([format!("--listen-client-urls={router2}"), format!("--placement-endpoints={}", f.store())])
        .spawn()
        .unwrap();
    let ch2 = loop {
        if let Ok(c) = tonic::transport::Channel::from_shared(router2.clone()).unwrap().connect().await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut kv2 = tessera_proto::etcdserverpb::kv_client::KvClient::new(ch2);
    let acked: BTreeSet<String> = acked.0.lock().unwrap().clone();
    let stored = loop {
        match kv2
            .range(RangeRequest {
                key: b"/registry/".to_vec(),
                range_end: b"/registry0".to_vec(),
                keys_only: true,
                ..Default::default()
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let stored: BTreeSet<String> = stored.kvs.into_iter().map(|k| String::from_utf8(k.key).unwrap()).collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), lost.first());
    assert!(acked.len() > 250);

    // The merged watch saw every stored key once, in revision order, with
    // no gap across the faults (its router was killed: it ends there, and
    // what it delivered is a gap-free prefix of the history).
    let mut seen = vec![];
    while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_secs(2), ws.message()).await {
        for e in r.events {
            let kv = e.kv.unwrap();
            seen.push((kv.mod_revision, String::from_utf8(kv.key).unwrap()));
        }
    }
    assert!(seen.windows(2).all(|p| p[0].0 < p[1].0), "watch out of order");
    let seen_keys: BTreeSet<String> = seen.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(seen_keys.len(), seen.len(), "duplicate events");
    let upto = seen.last().map_or(0, |s| s.0);
    let expected: BTreeSet<String> = {
        let all = kv2
            .range(RangeRequest { key: b"/registry/".to_vec(), range_end: b"/registry0".to_vec(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        all.kvs.into_iter().filter(|k| k.mod_revision <= upto).map(|k| String::from_utf8(k.key).unwrap()).collect()
    };
    assert_eq!(seen_keys, expected, "the watch has a gap");
    assert!(seen.len() > 200, "watch delivered only {}", seen.len());
    let _ = r2.kill();
    let _ = r2.wait();
}

mod shared {
    /// Acknowledged keys, and a stop flag for the writer.
    #[derive(Default)]
    pub struct Acked(pub std::sync::Mutex<std::collections::BTreeSet<String>>, pub std::sync::atomic::AtomicBool);
}

/// Watchers whose client does not read must not stall anyone else: the
/// router shares one connection per node between all calls, so an upstream
/// watch left unread would hold that connection's flow-control window (the
/// puts below would then hang). Afterwards the slow watchers still get
/// every event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_that_do_not_read_stall_no_other_call() {
    let f = Federation::start(3);
    // As etcd's client, no 4 MiB cap on answers (a catch-up can be large).
    let lazy = WatchClient::new(f.channel().await).max_decoding_message_size(usize::MAX);
    let mut watches = vec![];
    for _ in 0..3 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(watch_create(b"\0", b"\0", 0, false, false)).await.unwrap();
        let mut s = lazy.clone().watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        assert!(s.message().await.unwrap().unwrap().created);
        watches.push((tx, s));
    }
    let mut kv = f.kv().await;
    let value = vec![b'x'; 16 * 1024];
    const PUTS: usize = 1500;
    for i in 0..PUTS {
        let key = format!("/blob{}/x/{i:05}", i % 9).into_bytes();
        let put = kv.put(PutRequest { key, value: value.clone(), ..Default::default() });
        tokio::time::timeout(Duration::from_secs(10), put).await.expect("a put stalled behind unread watches").unwrap();
    }
    for (_tx, mut s) in watches {
        let (mut n, mut last) = (0, 0);
        while n < PUTS {
            let resp = tokio::time::timeout(Duration::from_secs(30), s.message()).await.expect("events").unwrap().unwrap();
            assert!(!resp.canceled, "{resp:?}");
            for e in resp.events {
                let rev = e.kv.unwrap().mod_revision;
                assert!(rev >= last, "revision order");
                last = rev;
                n += 1;
            }
        }
        assert_eq!(n, PUTS);
    }
}

/// etcd's Lock and Election gRPC services through the router: each lock or
/// election runs in the group of its name's prefix (the same scenarios as
/// against etcd and a single group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services_through_the_router() {
    let f = Federation::start(3);
    tessera_testkit::recipes::lock_scenario(&f.endpoint()).await;
    tessera_testkit::recipes::election_scenario(&f.endpoint()).await;
}

/// A linearizable read over several groups is one snapshot at the revision
/// its header names: every key created at or below that revision is in it,
/// even while writes on every group race the read. (A header above the
/// snapshot made etcd's election recipe — get, then watch from the header's
/// revision — miss a leader's key.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_across_groups_answer_the_revision_they_read_at() {
    let f = Federation::start(3);
    let ch = f.channel().await;
    let writers = (0..8).map(|w| {
        let (mut kv, mut reader) = (KvClient::new(ch.clone()), KvClient::new(ch.clone()));
        tokio::spawn(async move {
            let mut reads = vec![];
            for j in 0..15 {
                let k = format!("lin/{w}-{j}");
                let create = TxnRequest { compare: vec![mod_is(&k, 0)], success: vec![put(&k, "v", 0)], failure: vec![] };
                let all =
                    RangeRequest { key: b"lin/".to_vec(), range_end: b"lin0".to_vec(), keys_only: true, ..Default::default() };
                let (created, read) = tokio::join!(kv.txn(create), reader.range(all));
                assert!(created.unwrap().into_inner().succeeded);
                let read = read.unwrap().into_inner();
                let keys: BTreeSet<Vec<u8>> = read.kvs.into_iter().map(|kv| kv.key).collect();
                reads.push((read.header.unwrap().revision, keys));
            }
            reads
        })
    });
    let reads: Vec<_> = futures::future::join_all(writers).await.into_iter().flat_map(|r| r.unwrap()).collect();
    let all = RangeRequest { key: b"lin/".to_vec(), range_end: b"lin0".to_vec(), ..Default::default() };
    let created = KvClient::new(ch).range(all).await.unwrap().into_inner().kvs;
    assert_eq!(created.len(), 8 * 15);
    let mut missed = vec![];
    for (at, seen) in &reads {
        for kv in created.iter().filter(|kv| kv.create_revision <= *at && !seen.contains(&kv.key)) {
            missed.push(format!("read at {at} lacks {} created at {}", String::from_utf8_lossy(&kv.key), kv.create_revision));
        }
    }
    assert!(missed.is_empty(), "reads that are not a snapshot at their header's revision:\n{}", missed.join("\n"));
}

/// Every answer names one cluster and the router, as `member list` shows
/// them, whichever group answered underneath (etcd clients compare them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_names_one_cluster_and_the_router() {
    let f = Federation::start(3);
    let ch = f.channel().await;
    let mut cluster = tessera_proto::etcdserverpb::cluster_client::ClusterClient::new(ch.clone());
    let members = cluster.member_list(MemberListRequest::default()).await.unwrap().into_inner();
    let me = members.header.unwrap();
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.members[0].id, me.member_id);
    assert_ne!(me.cluster_id, 0);
    let mut kv = KvClient::new(ch.clone());
    let mut headers = vec![];
    for k in KEYS {
        headers.push(
            kv.put(PutRequest { key: k.as_bytes().to_vec(), value: b"v".to_vec(), ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .header,
        );
        headers
            .push(kv.range(RangeRequest { key: k.as_bytes().to_vec(), ..Default::default() }).await.unwrap().into_inner().header);
    }
    headers.push(
        kv.range(RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).await.unwrap().into_inner().header,
    );
    let t = TxnRequest { compare: vec![mod_is("foo", 0)], success: vec![], failure: vec![get("foo")] };
    headers.push(kv.txn(t).await.unwrap().into_inner().header);
    let mut lease = tessera_proto::etcdserverpb::lease_client::LeaseClient::new(ch.clone());
    headers.push(lease.lease_grant(LeaseGrantRequest { ttl: 30, id: 0 }).await.unwrap().into_inner().header);
    let mut maint = tessera_proto::etcdserverpb::maintenance_client::MaintenanceClient::new(ch.clone());
    headers.push(maint.status(StatusRequest {}).await.unwrap().into_inner().header);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(watch_create(b"foo", b"", 0, false, false)).await.unwrap();
    let mut w = WatchClient::new(ch).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    headers.push(w.message().await.unwrap().unwrap().header);
    for h in headers {
        let h = h.expect("every answer has a header");
        assert_eq!((h.cluster_id, h.member_id), (me.cluster_id, me.member_id), "{h:?}");
    }
}

/// Many watches created at once on one stream (as kube-apiserver opens
/// them): each creation is answered in the order it was asked (clientv3
/// matches a `created` to its oldest create), and each watch then sees the
/// write made after all of them were created, from whichever group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_created_at_once_are_answered_in_order_and_see_later_writes() {
    let f = Federation::start(3);
    let ch = f.channel().await;
    let (tx, rx) = tokio::sync::mpsc::channel(KEYS.len() * 2);
    let mut w = WatchClient::new(ch.clone()).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    // Each key twice: alone, and as a prefix range (several groups for the short ones).
    let mut asked = vec![];
    for k in KEYS {
        let prefix = k.split('/').take(2).collect::<Vec<_>>().join("/");
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        asked.push((k.as_bytes().to_vec(), vec![]));
        asked.push((prefix.into_bytes(), end));
    }
    for (id, (key, end)) in asked.iter().enumerate() {
        let mut req = watch_create(key, end, 0, false, false);
        if let Some(RequestUnion::CreateRequest(c)) = &mut req.request_union {
            c.watch_id = id as i64 + 1;
        }
        tx.send(req).await.unwrap();
    }
    let mut created = vec![];
    while created.len() < asked.len() {
        let resp = w.message().await.unwrap().expect("the stream ended");
        assert!(!resp.canceled, "{resp:?}");
        if resp.created {
            created.push(resp.watch_id);
        }
    }
    assert_eq!(created, (1..=asked.len() as i64).collect::<Vec<_>>(), "creations answered out of order");
    let mut kv = KvClient::new(ch);
    for k in KEYS {
        kv.put(PutRequest { key: k.as_bytes().to_vec(), value: b"after".to_vec(), ..Default::default() }).await.unwrap();
    }
    let mut seen: BTreeSet<(i64, Vec<u8>)> = BTreeSet::new();
    let want: BTreeSet<(i64, Vec<u8>)> = asked
        .iter()
        .enumerate()
        .flat_map(|(i, (key, end))| {
            KEYS.iter()
                .map(|k| k.as_bytes().to_vec())
                .filter(move |k| if end.is_empty() { k == key } else { k >= key && k < end })
                .map(move |k| (i as i64 + 1, k))
        })
        .collect();
    while !want.is_subset(&seen) {
        let resp = tokio::time::timeout(Duration::from_secs(20), w.message()).await.expect("events missing").unwrap().unwrap();
        seen.extend(resp.events.iter().map(|e| (resp.watch_id, e.kv.as_ref().unwrap().key.clone())));
    }
    assert_eq!(seen, want);

    // As etcd, ids the router picks are never given twice on a stream: a
    // client cancels an id it gets events for after its watch ended.
    async fn next_created(w: &mut tonic::Streaming<WatchResponse>) -> i64 {
        loop {
            let resp = tokio::time::timeout(Duration::from_secs(20), w.message()).await.expect("no answer").unwrap().unwrap();
            if resp.created {
                return resp.watch_id;
            }
        }
    }
    tx.send(watch_create(b"idcheck", b"", 0, false, false)).await.unwrap();
    let first = next_created(&mut w).await;
    let cancel = WatchCancelRequest { watch_id: first };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CancelRequest(cancel)) }).await.unwrap();
    tx.send(watch_create(b"idcheck", b"", 0, false, false)).await.unwrap();
    let second = next_created(&mut w).await;
    assert_ne!(first, second, "a watch id given twice");
}

/// etcd gives every write its own revision; across groups too. Writers on
/// keys of every group, with cross-group reads raising idle groups to the
/// federation's revision meanwhile: no two writes answer the same revision
/// (a group whose revision had passed a write's hint took prev + 1, which
/// another group could already have taken: two transfers in one watch
/// event batch of `cross_txn.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_two_writes_take_one_revision() {
    let f = Federation::start(3);
    let ch = f.channel().await;
    let writers = (0..12).map(|w| {
        let mut kv = KvClient::new(ch.clone());
        tokio::spawn(async move {
            let mut revs = vec![];
            for j in 0..40 {
                // Keys of different placement units (3 levels deep): several groups.
                let k = format!("uniq/{}/a/v", (w * 40 + j) % 16);
                let put = PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() };
                revs.push(kv.put(put).await.unwrap().into_inner().header.unwrap().revision);
            }
            revs
        })
    });
    let readers = (0..4).map(|r| {
        let mut kv = KvClient::new(ch.clone());
        tokio::spawn(async move {
            for j in 0..60 {
                let k = format!("uniq/{}/a/v", (r * 60 + j) % 16);
                kv.range(RangeRequest { key: k.into(), ..Default::default() }).await.unwrap();
            }
        })
    });
    let (writes, reads) = tokio::join!(futures::future::join_all(writers), futures::future::join_all(readers));
    reads.into_iter().for_each(|r| r.unwrap());
    let mut seen: std::collections::BTreeMap<i64, usize> = Default::default();
    for rev in writes.into_iter().flat_map(|w| w.unwrap()) {
        *seen.entry(rev).or_default() += 1;
    }
    let shared: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(seen.values().sum::<usize>(), 12 * 40);
    assert!(shared.is_empty(), "revisions two writes answered: {shared:?}");
}
