//! etcd 3.7's RangeStream, the same requests against any server: what each
//! answered, written so two servers' answers compare equal when they behave
//! alike (keys, values, versions, chunk sizes, `more`, `count`, errors — not
//! revisions, which differ between a federation and one etcd).

use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use tessera_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::Channel;

/// The keys the scenario reads: 300 under `rs/` (spread over units, so
/// over groups), values of varied size, some overwritten.
pub async fn fill(ch: Channel) {
    let mut kv = KvClient::new(ch);
    for i in 0..300 {
        let key = format!("rs/{}/{i:03}", i % 7);
        let value = "v".repeat(1 + (i * 37) % 200);
        kv.put(PutRequest { key: key.into(), value: value.into(), ..Default::default() }).await.unwrap();
    }
    for i in (0..300).step_by(11) {
        let key = format!("rs/{}/{i:03}", i % 7);
        kv.put(PutRequest { key: key.into(), value: b"again".to_vec(), ..Default::default() }).await.unwrap();
    }
}

fn prefix(p: &str) -> (Vec<u8>, Vec<u8>) {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    (p.into(), end)
}

/// The requests of the scenario, by name.
pub fn requests() -> Vec<(&'static str, RangeRequest)> {
    let (key, range_end) = prefix("rs/");
    let all = RangeRequest { key, range_end, ..Default::default() };
    vec![
        ("whole range", all.clone()),
        ("limit 55", RangeRequest { limit: 55, ..all.clone() }),
        ("limit of one chunk", RangeRequest { limit: 10, ..all.clone() }),
        ("keys only", RangeRequest { keys_only: true, ..all.clone() }),
        ("count only", RangeRequest { count_only: true, ..all.clone() }),
        ("serializable", RangeRequest { serializable: true, ..all.clone() }),
        ("one key", RangeRequest { key: b"rs/3/003".to_vec(), range_end: vec![], ..Default::default() }),
        ("nothing there", RangeRequest { key: b"rs/none/".to_vec(), range_end: b"rs/none0".to_vec(), ..Default::default() }),
        (
            "sort by key ascending",
            RangeRequest { sort_target: SortTarget::Key as i32, sort_order: SortOrder::Ascend as i32, ..all.clone() },
        ),
        (
            "sort by mod revision",
            RangeRequest { sort_target: SortTarget::Mod as i32, sort_order: SortOrder::Ascend as i32, ..all.clone() },
        ),
        ("sort descending", RangeRequest { sort_order: SortOrder::Descend as i32, ..all.clone() }),
        ("revision filter", RangeRequest { min_mod_revision: 2, ..all.clone() }),
        ("no key", RangeRequest { key: vec![], ..all }),
    ]
}

/// What the server answered to each request: per request, its chunks' key
/// counts, every key with its value length and version, and the last
/// chunk's `more` and `count` (or the error's code and message).
pub async fn answers(ch: Channel) -> Vec<String> {
    let mut kv = KvClient::new(ch);
    let mut out = vec![];
    for (name, req) in requests() {
        let mut stream = match kv.range_stream(req).await {
            Ok(s) => s.into_inner(),
            Err(s) => {
                out.push(format!("{name}: {:?} {}", s.code(), s.message()));
                continue;
            }
        };
        let (mut chunks, mut keys, mut last) = (vec![], vec![], String::new());
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    let r = m.range_response.unwrap_or_default();
                    chunks.push(r.kvs.len());
                    keys.extend(
                        r.kvs.iter().map(|kv| format!("{}={}v{}", String::from_utf8_lossy(&kv.key), kv.value.len(), kv.version)),
                    );
                    last = format!("header {} more {} count {}", r.header.is_some_and(|h| h.revision > 0), r.more, r.count);
                }
                Ok(None) => break,
                Err(s) => {
                    last = format!("failed: {:?} {}", s.code(), s.message());
                    break;
                }
            }
        }
        out.push(format!("{name}: chunks {chunks:?}, {last}, keys {}", keys.join(" ")));
    }
    out
}
