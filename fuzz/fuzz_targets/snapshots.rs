//! A group's state as a snapshot carries it — sent by the leader to a
//! member behind its log, or read from a backup file by `snapshot restore`
//! (the operator's file: anything) — staged and loaded by a state machine,
//! then read. A corrupt snapshot must be refused with an error, never
//! panic, and whatever loads must answer reads.
//!
//! Input: `[mode][bytes]`; mode 1 (of 4): a backup file (checksum checked,
//! then its state read from the bbolt file), 2 and 3: a backup file's body
//! without the checksum (so the bbolt reader meets what the fuzzer makes),
//! 0: the state itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shard_node::engine::keys::GroupKeys;
use shard_node::engine::{Engine, MemoryEngine, WriteBatch};
use shard_node::raft::StateMachine as _;
use shard_node::snapshot::{backup_state, decode_backup};
use shard_node::state::StateMachine;
use std::sync::Arc;
use tessera_proto::etcdserverpb::RangeRequest;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let state = match mode & 3 {
        0 => body,
        1 => match decode_backup(body) {
            Ok(state) => state,
            Err(_) => return,
        },
        _ => match backup_state(body) {
            Ok(state) => state,
            Err(_) => return,
        },
    };
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
    let sm = StateMachine::open(engine.clone(), GroupKeys::new(3), 1 << 12).expect("an empty store opens");
    let mut batch = WriteBatch::default();
    if sm.stage_restore(state, &mut batch).is_err() {
        return;
    }
    engine.write(batch, false).expect("the memory engine writes");
    if sm.restored().is_err() {
        return;
    }
    let everything = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    let _ = sm.range(&everything);
    let _ = sm.range(&RangeRequest { count_only: true, ..everything });
    for id in sm.lease_ids() {
        let _ = sm.lease_time_to_live(id, true);
    }
    let _ = sm.members();
    let _ = sm.alarms();
    let _ = sm.hash_kv(0);
    let _ = sm.snapshot();
});
