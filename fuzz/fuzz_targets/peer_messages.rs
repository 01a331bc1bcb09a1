//! What the peer port decodes before raft sees it: a batch of raft
//! messages (`Peer.Raft`), each in raft's own codec. Garbage is an error,
//! never a panic. (What raft does with a decodable but inconsistent message
//! is raft-rs's contract with its peers — they are members of the group,
//! authenticated by peer TLS — as it is etcd's raft's; a snapshot a message
//! carries is the `snapshots` target.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use protobuf::Message as _;
use tessera_proto::tessera::transport::RaftBatch;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = RaftBatch::decode(data) {
        for bytes in &batch.messages {
            if let Ok(m) = raft::prelude::Message::parse_from_bytes(bytes) {
                // What the driver reads of a message it steps.
                let _ = (m.get_msg_type(), m.get_entries().len(), m.get_snapshot().get_metadata().get_index());
            }
        }
    }
});
