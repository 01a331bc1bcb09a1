//! A standalone group counts and reports revisions exactly as etcd does:
//! the same session against real etcd and a group gives the same
//! revisions, errors (code and text) and watch answers, compaction
//! included. Raw gRPC, so nothing a client library smooths over is hidden.

use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::watch_client::WatchClient;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
use tessera_testkit::etcd::RealEtcd;
use tessera_testkit::Cluster;
use tonic::transport::Channel;

/// What one call answered: the revisions and counts, or the error's code and text.
async fn session(ep: &str) -> Vec<String> {
    let ch = Channel::from_shared(format!("http://{ep}")).unwrap().connect().await.unwrap();
    let mut kv = KvClient::new(ch.clone());
    let mut out = vec![];
    let put = |k: &str, v: &str| PutRequest { key: k.into(), value: v.into(), ..Default::default() };
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")] {
        let r = kv.put(put(k, v)).await.unwrap().into_inner();
        out.push(format!("put {k}: header {}", r.header.unwrap().revision));
    }
    let get = |rev: i64| RangeRequest { key: b"a".to_vec(), revision: rev, ..Default::default() };
    for rev in [0, 2, 4, 5, 6, 99] {
        out.push(match kv.range(get(rev)).await {
            Ok(r) => {
                let r = r.into_inner();
                let kvs: Vec<String> = r
                    .kvs
                    .iter()
                    .map(|kv| format!("{}@{}v{}", String::from_utf8_lossy(&kv.value), kv.mod_revision, kv.version))
                    .collect();
                format!("get a at {rev}: header {} {kvs:?}", r.header.unwrap().revision)
            }
            Err(e) => format!("get a at {rev}: {:?} {}", e.code(), e.message()),
        });
    }
    for rev in [3, 3, 2, 99] {
        out.push(match kv.compact(CompactionRequest { revision: rev, physical: true }).await {
            Ok(r) => format!("compact {rev}: header {}", r.into_inner().header.unwrap().revision),
            Err(e) => format!("compact {rev}: {:?} {}", e.code(), e.message()),
        });
    }
    for rev in [2, 3] {
        out.push(match kv.range(get(rev)).await {
            Ok(r) => format!("get a at {rev} after compaction: {} kvs", r.into_inner().kvs.len()),
            Err(e) => format!("get a at {rev} after compaction: {:?} {}", e.code(), e.message()),
        });
    }
    // A watch from a compacted revision: created, then cancelled with the compaction.
    let mut w = WatchClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create = WatchCreateRequest { key: b"a".to_vec(), start_revision: 2, ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut s = w.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for _ in 0..2 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), s.message()).await.unwrap().unwrap().unwrap();
        out.push(format!(
            "watch from 2: created {} canceled {} compact_revision {} header revision {} reason {:?}",
            r.created,
            r.canceled,
            r.compact_revision,
            r.header.map_or(-1, |h| h.revision),
            r.cancel_reason
        ));
        if r.canceled {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn revisions_errors_and_compaction_as_etcd() {
    let etcd = RealEtcd::start().await;
    let expected = session(&etcd.endpoint).await;
    let group = Cluster::start(1, &[]).await;
    let got = session(&group.endpoints()[0]).await;
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(g, e, "\netcd:    {expected:#?}\ntessera: {got:#?}");
    }
    assert_eq!(got.len(), expected.len());
}
