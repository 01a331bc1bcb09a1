//! The HTTP endpoints etcd serves on its client port, over plain HTTP/1.1.

mod common;
use common::Cluster;
use std::io::{Read, Write};

fn get(endpoint: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(endpoint).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_version() {
    let c = Cluster::start(3, &[]).await;
    let mut cl = c.client(0).await;
    cl.put("m", "1", None).await.unwrap();
    let ep = c.members[0].endpoint();

    let metrics = get(&ep, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for name in ["etcd_server_has_leader 1", "etcd_disk_wal_fsync_duration_seconds_count", "etcd_server_proposals_applied_total"] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    assert!(metrics.contains("etcd_debugging_mvcc_keys_total 1\n"), "one key was put:\n{metrics}");
    let size = metrics.lines().find_map(|l| l.strip_prefix("etcd_mvcc_db_total_size_in_bytes ")).unwrap();
    assert!(size.trim().parse::<u64>().unwrap() > 0, "db size is read at scrape time");
    // Exactly one member reports itself leader.
    let leaders = c
        .members
        .iter()
        .filter(|m| get(&m.endpoint(), "/metrics").contains("etcd_server_is_leader 1\n"))
        .count();
    assert_eq!(leaders, 1);
    let health = get(&ep, "/health");
    assert!(health.starts_with("HTTP/1.1 200") && health.contains(r#"{"health":"true"}"#), "{health}");
    let version = get(&ep, "/version");
    assert!(version.contains(r#""etcdserver":"3.5"#), "{version}");
}
