//! The HTTP endpoints etcd serves on its client port, over plain HTTP/1.1.

use std::io::{Read, Write};
use tessera_testkit::Cluster;

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
    // A node's series of a group carry its label (a standalone group is group 0).
    for name in [
        "etcd_server_has_leader{group=\"0\"} 1",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_server_proposals_applied_total{group=\"0\"}",
        // etcd's client-facing gRPC series (go-grpc-prometheus names).
        "grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
        "grpc_server_msg_received_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
        "grpc_server_msg_sent_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    assert!(metrics.contains("etcd_debugging_mvcc_keys_total{group=\"0\"} 1\n"), "one key was put:\n{metrics}");
    let size = metrics.lines().find_map(|l| l.strip_prefix("etcd_mvcc_db_total_size_in_bytes ")).unwrap();
    assert!(size.trim().parse::<u64>().unwrap() > 0, "db size is read at scrape time");
    // Exactly one member reports itself leader.
    let leaders =
        c.members.iter().filter(|m| get(&m.endpoint(), "/metrics").contains("etcd_server_is_leader{group=\"0\"} 1\n")).count();
    assert_eq!(leaders, 1);
    let health = get(&ep, "/health");
    assert!(health.starts_with("HTTP/1.1 200") && health.contains(r#"{"health":"true"}"#), "{health}");
    let version = get(&ep, "/version");
    assert!(version.contains(r#""etcdserver":"3.5"#), "{version}");
}

/// An HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// etcd clients cancel calls and watches in bursts (a kube-apiserver
/// re-listing, etcd-runner ending its watchers). A burst of streams reset
/// before the server accepted them must not get the connection closed (h2's
/// default closes it after 20, with ENHANCE_YOUR_CALM, killing every other
/// call on it): grpc-go, and so etcd, does not.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_cancelled_calls_keeps_the_connection() {
    let etcd = tessera_testkit::etcd::RealEtcd::start().await;
    burst_of_resets_then_ping(&etcd.endpoint);
    let c = Cluster::start(1, &[]).await;
    burst_of_resets_then_ping(&c.members[0].endpoint());
}

/// 100 requests each reset at once, then a PING: the PING is answered.
fn burst_of_resets_then_ping(endpoint: &str) {
    let mut s = std::net::TcpStream::connect(endpoint).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    burst.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                         // :method POST, :scheme http, :path /, :authority "a:1" (not indexed).
    let headers = [0x83, 0x86, 0x84, 0x01, 0x03, b'a', b':', b'1'];
    const END_HEADERS: u8 = 0x4;
    const CANCEL: [u8; 4] = [0, 0, 0, 8];
    for i in 0..100u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(0x1, END_HEADERS, stream, &headers));
        burst.extend(frame(0x3, 0, stream, &CANCEL)); // RST_STREAM
    }
    burst.extend(frame(0x6, 0, 0, b"stillok!")); // PING
    s.write_all(&burst).unwrap();
    // Read frames until the PING's answer; a GOAWAY first fails the test.
    let mut buf = vec![];
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap_or_else(|e| panic!("{endpoint} answers the ping: {e}"));
        assert!(n > 0, "{endpoint} closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = (buf[at] as usize) << 16 | (buf[at + 1] as usize) << 8 | buf[at + 2] as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            let (kind, flags, payload) = (buf[at + 3], buf[at + 4], &buf[at + 9..at + 9 + len]);
            assert_ne!(kind, 0x7, "{endpoint}: GOAWAY (error code {:?})", payload.get(4..8));
            if kind == 0x6 && flags & 0x1 != 0 {
                assert_eq!(payload, b"stillok!");
                return;
            }
            at += 9 + len;
        }
    }
}

/// Opens `n` watch streams on one connection, then puts on it; all within
/// 20 s. etcd allows 2^32 − 1 streams per connection; h2's usual 200 would
/// leave the 201st waiting for one to end.
async fn many_streams_on_one_connection(endpoint: &str, n: usize) {
    use tessera_proto::etcdserverpb::watch_client::WatchClient;
    use tessera_proto::etcdserverpb::watch_request::RequestUnion;
    use tessera_proto::etcdserverpb::{kv_client::KvClient, PutRequest, WatchCreateRequest, WatchRequest};
    let ch = tonic::transport::Channel::from_shared(format!("http://{endpoint}")).unwrap().connect().await.unwrap();
    let work = async {
        let mut open = vec![];
        for i in 0..n {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let create = WatchCreateRequest { key: format!("many/{i}").into_bytes(), ..Default::default() };
            tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
            let mut s =
                WatchClient::new(ch.clone()).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
            assert!(s.message().await.unwrap().unwrap().created);
            open.push((tx, s));
        }
        KvClient::new(ch.clone())
            .put(PutRequest { key: b"many/put".to_vec(), value: b"v".to_vec(), ..Default::default() })
            .await
            .unwrap();
        open.len()
    };
    let opened = tokio::time::timeout(std::time::Duration::from_secs(20), work).await;
    assert_eq!(opened.unwrap_or_else(|_| panic!("{endpoint}: stuck with many streams on one connection")), n);
}

#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_watches_on_one_connection() {
    let etcd = tessera_testkit::etcd::RealEtcd::start().await;
    many_streams_on_one_connection(&etcd.endpoint, 300).await;
    let c = Cluster::start(1, &[]).await;
    many_streams_on_one_connection(&c.members[0].endpoint(), 300).await;
}
