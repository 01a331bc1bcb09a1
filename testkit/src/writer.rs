//! Writes for tests that change the federation's shape: units filled with
//! keys, and a writer that checks every put's prev_kv is its own last write
//! to that key (an acknowledged write lost, or applied twice, fails the test).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::PutRequest;
use tonic::transport::Channel;

/// What a writer had acknowledged.
#[derive(Debug, Default)]
pub struct Acked {
    /// Each key's last value written.
    pub last: BTreeMap<String, String>,
    /// Every acknowledged put: (key, its revision).
    pub puts: Vec<(String, i64)>,
}

/// Writes `keys` in turn until `stop`; a put that fails, or whose prev_kv
/// is not the writer's last value of the key (once it wrote one), panics.
pub async fn prev_kv_writer(mut kv: KvClient<Channel>, keys: Vec<String>, stop: Arc<AtomicBool>) -> Acked {
    let mut acked = Acked::default();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = &keys[n % keys.len()];
        n += 1;
        let value = format!("w{n}");
        let put =
            PutRequest { key: key.clone().into_bytes(), value: value.clone().into_bytes(), prev_kv: true, ..Default::default() };
        let resp = kv.put(put).await.unwrap_or_else(|e| panic!("put {n} ({key}): {e}")).into_inner();
        if let Some(expected) = acked.last.get(key) {
            let prev = resp.prev_kv.map(|p| String::from_utf8_lossy(&p.value).into_owned());
            assert_eq!(prev.as_ref(), Some(expected), "{key} lost a write");
        }
        acked.last.insert(key.clone(), value);
        acked.puts.push((key.clone(), resp.header.expect("a header").revision));
    }
    acked
}

/// Fills each of `units` with `per_unit` keys `{unit}ns/o{i}` of 256-byte
/// values, 100 puts per txn.
pub async fn fill_units(kv: &mut KvClient<Channel>, units: &[String], per_unit: usize) {
    use tessera_proto::etcdserverpb::request_op::Request;
    use tessera_proto::etcdserverpb::{RequestOp, TxnRequest};
    for u in units {
        for first in (0..per_unit).step_by(100) {
            let success = (first..(first + 100).min(per_unit))
                .map(|i| RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: format!("{u}ns/o{i}").into_bytes(),
                        value: vec![b'v'; 256],
                        ..Default::default()
                    })),
                })
                .collect();
            kv.txn(TxnRequest { success, ..Default::default() }).await.expect("a txn filling a unit");
        }
    }
}
