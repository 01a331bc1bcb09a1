//! etcd's JSON gateway: the same HTTP session against real etcd 3.4 and a
//! Tessera group must give the same statuses, the same JSON shape (field
//! names, which fields are present, types) and the same keys, values and
//! etcd error texts. Revisions and ids are masked: they differ by design.

use serde_json::{json, Value};
use tessera_testkit::etcd::RealEtcd;
use tessera_testkit::json_http::{b64, post, Stream};
use tessera_testkit::Cluster;

/// Fields whose values differ between two correct servers.
const MASKED: &[&str] = &[
    "cluster_id",
    "member_id",
    "revision",
    "raft_term",
    "create_revision",
    "mod_revision",
    "compact_revision",
    "ID",
    "dbSize",
    "dbSizeInUse",
    "leader",
    "raftIndex",
    "raftTerm",
    "raftAppliedIndex",
    "peerURLs",
    "clientURLs",
    "name",
    "grantedTTL",
    "TTL",
];

/// The comparable part of an answer: masked fields keep only their type;
/// parse-error texts (Go's vs serde's wording) keep only that they exist.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let masked = MASKED.contains(&k.as_str())
                        || (k == "version" && v.as_str().is_some_and(|s| s.contains('.')))
                        || ((k == "error" || k == "message") && v.as_str().is_some_and(|s| !s.starts_with("etcdserver:")));
                    let v = if masked { json!(type_name(v)) } else { shape(v) };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        other => other.clone(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "<string>",
        Value::Number(_) => "<number>",
        Value::Array(_) => "<array>",
        Value::Object(_) => "<object>",
        _ => "<other>",
    }
}

fn revision(v: &Value) -> i64 {
    v["header"]["revision"].as_str().unwrap().parse().unwrap()
}

/// The session; `rev` is the server's own revision after the first put, so
/// requests naming revisions mean the same thing on both.
#[allow(clippy::disallowed_names)] // etcd's documentation's own key and value
fn session(ep: &str) -> Vec<(String, u16, Value)> {
    let mut out = vec![];
    let mut call = |name: &str, path: &str, body: String| {
        let (status, v) = post(ep, path, &body);
        out.push((name.to_string(), status, shape(&v)));
        v
    };
    let (foo, bar) = (b64("foo"), b64("bar"));
    let first = call("put", "/v3/kv/put", json!({"key": foo, "value": bar}).to_string());
    let rev = revision(&first);
    call("put prev_kv", "/v3/kv/put", json!({"key": foo, "value": b64("baz"), "prev_kv": true}).to_string());
    call("put a", "/v3/kv/put", json!({"key": b64("a"), "value": b64("1")}).to_string());
    call("range", "/v3/kv/range", json!({"key": foo}).to_string());
    call("range at a revision", "/v3/kv/range", json!({"key": foo, "revision": rev.to_string()}).to_string());
    call(
        "range all, sorted, keys only, limit",
        "/v3/kv/range",
        json!({"key": "AA==", "range_end": "AA==", "sort_order": "DESCEND", "sort_target": "KEY", "keys_only": true, "limit": 1})
            .to_string(),
    );
    call("count only", "/v3/kv/range", json!({"key": "AA==", "range_end": "AA==", "count_only": true}).to_string());
    call("unknown fields are ignored", "/v3/kv/range", json!({"key": foo, "no_such_field": 1}).to_string());
    call("empty body", "/v3/kv/range", String::new());
    call("v3beta prefix", "/v3beta/kv/range", json!({"key": foo}).to_string());
    call(
        "txn create fails, else get",
        "/v3/kv/txn",
        json!({"compare": [{"target": "MOD", "key": foo, "mod_revision": "0"}],
               "success": [{"request_put": {"key": foo, "value": bar}}],
               "failure": [{"request_range": {"key": foo}}]})
        .to_string(),
    );
    call(
        "txn writes",
        "/v3/kv/txn",
        json!({"success": [{"request_put": {"key": b64("t")}}, {"request_delete_range": {"key": b64("a")}},
                           {"request_range": {"key": b64("t")}}, {"request_txn": {}}]})
        .to_string(),
    );
    call(
        "txn duplicate key",
        "/v3/kv/txn",
        json!({"success": [{"request_put": {"key": "YQ=="}}, {"request_put": {"key": "YQ=="}}]}).to_string(),
    );
    call("delete with prev_kv", "/v3/kv/deleterange", json!({"key": foo, "prev_kv": true}).to_string());
    call("put without key", "/v3/kv/put", json!({"value": bar}).to_string());
    call("future revision", "/v3/kv/range", json!({"key": foo, "revision": "4611686018427387903"}).to_string());
    call("bad enum", "/v3/kv/range", json!({"key": foo, "sort_order": "SIDEWAYS"}).to_string());
    call("bad base64", "/v3/kv/range", json!({"key": "!!"}).to_string());
    call("not JSON", "/v3/kv/range", "{nope".to_string());
    call("put with unknown lease", "/v3/kv/put", json!({"key": foo, "lease": "1234"}).to_string());
    call("grant", "/v3/lease/grant", json!({"TTL": "60", "ID": "77"}).to_string());
    call("grant existing", "/v3/lease/grant", json!({"TTL": "60", "ID": "77"}).to_string());
    call("put with lease", "/v3/kv/put", json!({"key": b64("l"), "lease": "77"}).to_string());
    call("leases", "/v3/lease/leases", "{}".to_string());
    call("leases (kv path)", "/v3/kv/lease/leases", "{}".to_string());
    call("time to live with keys", "/v3/lease/timetolive", json!({"ID": "77", "keys": true}).to_string());
    call("revoke", "/v3/lease/revoke", json!({"ID": "77"}).to_string());
    call("revoke again", "/v3/kv/lease/revoke", json!({"ID": "77"}).to_string());
    call("status", "/v3/maintenance/status", "{}".to_string());
    call("member list", "/v3/cluster/member/list", "{}".to_string());
    call("range for the revision", "/v3/kv/range", json!({"key": foo}).to_string());
    call("compact", "/v3/kv/compaction", json!({"revision": rev.to_string()}).to_string());
    call("compact again", "/v3/kv/compaction", json!({"revision": rev.to_string()}).to_string());
    call("range compacted", "/v3/kv/range", json!({"key": foo, "revision": (rev - 1).max(1).to_string()}).to_string());

    // Streams: a watch from a past revision with prev_kv; a keepalive of a
    // live and of an unknown lease.
    let watch = json!({"create_request": {"key": foo, "start_revision": rev.to_string(), "prev_kv": true}}).to_string();
    let mut s = Stream::open(ep, "/v3/watch", &watch);
    for i in 0..2 {
        out.push((format!("watch line {i}"), s.status, shape(&s.next_line().unwrap())));
    }
    post(ep, "/v3/lease/grant", &json!({"TTL": "60", "ID": "78"}).to_string());
    for (name, id) in [("keepalive", "78"), ("keepalive unknown", "79")] {
        let mut s = Stream::open(ep, "/v3/lease/keepalive", &json!({"ID": id}).to_string());
        out.push((name.to_string(), s.status, shape(&s.next_line().unwrap())));
    }
    out
}

/// A progress request answered with the current revision, after the history
/// the watch owes. (etcd 3.4 may answer it before the history, which
/// Kubernetes' watch cache would misread; 3.5 and Tessera do not.)
fn progress_after_history(ep: &str) {
    let key = b64("progress");
    let from = revision(&post(ep, "/v3/kv/put", &json!({"key": key}).to_string()).1);
    post(ep, "/v3/kv/put", &json!({"key": key}).to_string());
    let now = revision(&post(ep, "/v3/kv/put", &json!({"key": key}).to_string()).1);
    let body = json!({"create_request": {"key": key, "start_revision": from.to_string()}}).to_string()
        + &json!({"progress_request": {}}).to_string();
    let mut s = Stream::open(ep, "/v3/watch", &body);
    assert_eq!(s.next_line().unwrap()["result"]["created"], json!(true));
    let mut events = 0;
    loop {
        let line = s.next_line().unwrap();
        let r = &line["result"];
        if let Some(e) = r["events"].as_array() {
            events += e.len();
            continue;
        }
        assert_eq!(r["watch_id"], json!("-1"), "{line}");
        assert_eq!(revision(r), now, "progress reports the current revision");
        assert_eq!(events, 3, "the history came first");
        return;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_gateway_matches_etcd() {
    let etcd = RealEtcd::start().await;
    let c = Cluster::start(1, &[]).await;
    let ep = c.members[0].endpoint();
    let (ours, theirs) = (session(&ep), session(&etcd.endpoint));
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o, t, "step {:?}: Tessera (left) differs from etcd 3.4 (right)", o.0);
    }
    // Only POST, as etcd.
    let get = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&ep).unwrap();
        write!(s, "GET /v3/kv/range HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(get.starts_with("HTTP/1.0 405") || get.starts_with("HTTP/1.1 405"), "{get}");
    progress_after_history(&ep);
    // A malformed object in a stream ends it with an error line (etcd 3.4
    // stalls silently).
    let mut bad = Stream::open(&ep, "/v3/watch", r#"{"create_request":{"key":"Zm9v"}}{"create_request":{"start_revision":"x"}}"#);
    assert_eq!(bad.next_line().unwrap()["result"]["created"], json!(true));
    let err = bad.next_line().unwrap();
    assert_eq!(err["error"]["grpc_code"], json!(3), "{err}");
    assert_eq!(bad.next_line(), None, "the stream ends after its error");
}
