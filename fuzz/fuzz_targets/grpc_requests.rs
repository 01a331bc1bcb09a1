//! A gRPC KV request as a client sends it (protobuf), through what runs
//! before anything is proposed or routed: decoding, etcd's checks, and the
//! txn tree a router and the groups of a cross-group txn share. Garbage must
//! give an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tessera_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest, WatchRequest};
use tessera_rpc::{range_stream, txn_tree, validate};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 5 {
        0 => {
            if let Ok(r) = RangeRequest::decode(body) {
                let _ = validate::range(&r);
                let _ = range_stream::unsupported(&r);
            }
        }
        1 => {
            if let Ok(r) = PutRequest::decode(body) {
                let _ = validate::put(&r);
            }
        }
        2 => {
            if let Ok(r) = DeleteRangeRequest::decode(body) {
                let _ = validate::delete(&r);
            }
        }
        3 => {
            if let Ok(t) = TxnRequest::decode(body) {
                if validate::txn(&t, 128).is_ok() {
                    let _ = validate::txn_is_read_only(&t);
                    let flat = txn_tree::flatten(&t);
                    // Every outcome pattern the input's bytes pick.
                    let holds: Vec<bool> = (0..flat.compares.len()).map(|i| body.get(i).is_some_and(|b| b & 1 == 1)).collect();
                    let decided = txn_tree::decide(&t, &holds);
                    assert!(decided.ops().iter().all(|i| *i < flat.ops.len()), "a decided op outside the txn");
                }
            }
        }
        _ => {
            let _ = WatchRequest::decode(body);
        }
    }
});
