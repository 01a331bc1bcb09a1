//! etcd 3.7's RangeStream on a standalone group, side by side with etcd 3.7:
//! the same requests get the same chunks, keys, `more`, `count` and errors.

use tessera_testkit::etcd::RealEtcd;
use tessera_testkit::range_stream::{answers, fill};
use tessera_testkit::Cluster;
use tonic::transport::Channel;

async fn channel(ep: &str) -> Channel {
    Channel::from_shared(format!("http://{ep}")).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn range_stream_answers_as_etcd_3_7() {
    let etcd = RealEtcd::start_version("3.7").await;
    fill(channel(&etcd.endpoint).await).await;
    let expected = answers(channel(&etcd.endpoint).await).await;
    let group = Cluster::start(3, &[]).await;
    let leader = group.leader().await;
    let ep = &group.endpoints()[leader];
    fill(channel(ep).await).await;
    let got = answers(channel(ep).await).await;
    assert_eq!(got.len(), expected.len());
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(g, e);
    }
}
