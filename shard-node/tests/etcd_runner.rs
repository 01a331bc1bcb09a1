//! etcd's own client workloads (etcd-runner, installed by
//! scripts/etcd-tools.sh) against a 3-member group.

use std::time::Duration;
use tessera_testkit::{bins, Cluster};

/// Runs a workload to completion; etcd-runner panics (exit 2) when a round
/// makes no progress for a minute, and exits non-zero on a broken invariant.
fn run(cluster: &Cluster, args: &[&str]) {
    let out = bins::command(bins::etcd_tool("3.4", "etcd-runner"))
        .args(args)
        .arg(format!("--endpoints={}", cluster.endpoints().join(",")))
        .output()
        .expect("etcd-runner runs");
    assert!(out.status.success(), "etcd-runner {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn election_lock_racer_and_watcher() {
    let c = Cluster::start(3, &[]).await;
    // Fresh names: the runner leaves its last holder's key behind until its
    // lease expires (as with etcd), which would stall a second run.
    run(&c, &["election", "tessera-election", "--rounds=10", "--req-rate=200"]);
    run(&c, &["lock-racer", "tessera-lock", "--rounds=10", "--req-rate=200"]);
    run(&c, &["watcher", "--rounds=1", "--req-rate=200"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_renewer_never_loses_its_lease() {
    let c = Cluster::start(3, &[]).await;
    // The renewer loops forever and exits non-zero on a lost or badly renewed lease.
    let mut child = bins::command(bins::etcd_tool("3.4", "etcd-runner"))
        .args(["lease-renewer", "--ttl=4"])
        .arg(format!("--endpoints={}", c.endpoints().join(",")))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("etcd-runner");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(child.try_wait().unwrap().is_none(), "lease-renewer exited early");
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let renewed = log.matches("renewed lease").count();
    assert!(renewed >= 4, "expected steady renewals, got {renewed}:\n{log}");
    assert!(!log.contains("lost lease") && !log.contains("bad renew"), "{log}");
}
