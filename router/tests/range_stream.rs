//! etcd 3.7's RangeStream through the router of a 3-group federation: the
//! same answers as etcd 3.7 itself, and one snapshot while writes go on.

use std::collections::BTreeMap;
use tessera_proto::etcdserverpb::{PutRequest, RangeRequest};
use tessera_testkit::etcd::RealEtcd;
use tessera_testkit::range_stream::{answers, fill};
use tessera_testkit::Federation;
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_stream_answers_as_etcd_3_7_across_groups() {
    let etcd = RealEtcd::start_version("3.7").await;
    let etcd_ch = Channel::from_shared(format!("http://{}", etcd.endpoint)).unwrap().connect().await.unwrap();
    fill(etcd_ch.clone()).await;
    let expected = answers(etcd_ch).await;
    let f = Federation::start(3);
    fill(f.channel().await).await;
    // The range spans groups: every group holds some of its keys.
    let (holding, status) = f.groups_with_keys();
    assert!(holding >= 2, "the keys should spread over groups: {status}");
    let got = answers(f.channel().await).await;
    assert_eq!(got.len(), expected.len());
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(g, e);
    }
}

/// A stream over several groups is one snapshot at its header's revision,
/// though writes change its keys while it runs: it equals a Range at that
/// revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_across_groups_is_one_snapshot() {
    let f = Federation::start(3);
    let mut kv = f.kv().await;
    let put = |k: String, v: String| PutRequest { key: k.into(), value: v.into(), ..Default::default() };
    for i in 0..1500 {
        kv.put(put(format!("snap/{}/{i:04}", i % 13), "0".into())).await.unwrap();
    }
    let writer = {
        let mut kv = f.kv().await;
        tokio::spawn(async move {
            for round in 1..=400 {
                let i = (round * 7919) % 1500;
                kv.put(put(format!("snap/{}/{i:04}", i % 13), round.to_string())).await.unwrap();
            }
        })
    };
    let all = RangeRequest { key: b"snap/".to_vec(), range_end: b"snap0".to_vec(), ..Default::default() };
    let mut stream = kv.range_stream(all.clone()).await.unwrap().into_inner();
    let (mut streamed, mut chunks, mut header) = (BTreeMap::new(), 0, None);
    while let Some(m) = stream.message().await.unwrap() {
        let r = m.range_response.unwrap();
        chunks += 1;
        for kv in r.kvs {
            assert!(streamed.insert(kv.key.clone(), (kv.value, kv.mod_revision)).is_none(), "a key came twice");
        }
        header = header.or(r.header);
        if r.header.is_some() {
            assert_eq!(r.count, 1500);
            assert!(!r.more);
        }
    }
    writer.await.unwrap();
    let at = header.expect("the last chunk has the header").revision;
    assert!(chunks > 3, "{chunks} chunks");
    let then = kv.range(RangeRequest { revision: at, ..all }).await.unwrap().into_inner();
    let expected: BTreeMap<_, _> = then.kvs.into_iter().map(|kv| (kv.key, (kv.value, kv.mod_revision))).collect();
    assert_eq!(streamed.len(), 1500);
    assert!(streamed == expected, "the stream differs from a read at its revision {at}");
    assert!(streamed.keys().zip(streamed.keys().skip(1)).all(|(a, b)| a < b));
}
