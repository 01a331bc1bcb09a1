//! etcd's server-side Lock and Election services, run the same way against
//! real etcd and against Tessera.

use tessera_testkit::etcd::RealEtcd;
use tessera_testkit::recipes::{election_scenario, lock_scenario};
use tessera_testkit::Cluster;

#[tokio::test(flavor = "multi_thread")]
async fn lock_behaves_as_etcd() {
    let etcd = RealEtcd::start().await;
    lock_scenario(&etcd.endpoint).await;
    let c = Cluster::start(3, &[]).await;
    lock_scenario(&c.members[1].endpoint()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn election_behaves_as_etcd() {
    let etcd = RealEtcd::start().await;
    election_scenario(&etcd.endpoint).await;
    let c = Cluster::start(3, &[]).await;
    election_scenario(&c.members[2].endpoint()).await;
}
