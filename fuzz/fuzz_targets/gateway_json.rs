//! etcd's JSON gateway: a unary call's body and a streaming call's body
//! (objects framed one by one as they arrive, split at any byte), for the
//! request types the gateway serves. Garbage must give an error, never a
//! panic, and a framed object must decode back as the gRPC message it is.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use serde::de::DeserializeOwned;
use tessera_proto::etcdserverpb::*;
use tessera_rpc::gateway::{decode_unary, next_frame, Frame};
use tessera_rpc::validate;

fn stream<T: DeserializeOwned + Message + Default>(body: &[u8], split: usize) {
    let (first, rest) = body.split_at(split.min(body.len()));
    let mut buf = BytesMut::from(first);
    let mut frames = 0;
    for (chunk, ended) in [(None, false), (Some(rest), true)] {
        if let Some(c) = chunk {
            buf.extend_from_slice(c);
        }
        loop {
            match next_frame::<T>(&mut buf, ended) {
                Frame::Message(f) => {
                    assert_eq!(f[0], 0, "uncompressed");
                    let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
                    assert_eq!(len, f.len() - 5);
                    T::decode(&f[5..]).expect("a frame decodes as the message");
                    frames += 1;
                    assert!(frames <= body.len(), "more frames than bytes");
                }
                Frame::Incomplete | Frame::Malformed(_) => break,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    let split = body.len() * (kind as usize >> 4) / 16;
    match kind % 12 {
        0 => {
            if let Ok(r) = decode_unary::<RangeRequest>(body) {
                let _ = validate::range(&r);
            }
        }
        1 => {
            if let Ok(r) = decode_unary::<PutRequest>(body) {
                let _ = validate::put(&r);
            }
        }
        2 => {
            if let Ok(r) = decode_unary::<DeleteRangeRequest>(body) {
                let _ = validate::delete(&r);
            }
        }
        3 => {
            if let Ok(t) = decode_unary::<TxnRequest>(body) {
                let _ = validate::txn(&t, 128);
            }
        }
        4 => drop(decode_unary::<CompactionRequest>(body)),
        5 => drop(decode_unary::<LeaseGrantRequest>(body)),
        6 => drop(decode_unary::<AuthenticateRequest>(body)),
        7 => drop(decode_unary::<AuthRoleGrantPermissionRequest>(body)),
        8 => drop(decode_unary::<MemberAddRequest>(body)),
        9 => stream::<WatchRequest>(body, split),
        10 => stream::<LeaseKeepAliveRequest>(body, split),
        _ => stream::<RangeRequest>(body, split),
    }
});
