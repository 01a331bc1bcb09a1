//! What a member applies from its raft log: each committed entry's bytes
//! (a Command, or a conf change with its context) through the group's
//! state machine, as the raft driver hands them over. The log is written by
//! members of the group only, but a node must survive an entry written by
//! another version or a corrupted one: an entry that does not decode is
//! skipped, a command the store refuses answers an error — never a panic.
//! Each applied entry advances the applied index, the revision never goes
//! back, and the state the entries left opens again at the same revision
//! (what a restart does).
//!
//! Input: entries, each `[kind][u16 BE length][bytes]`; a conf change's
//! bytes are `[u16 BE length][change][context]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2};
use shard_node::engine::keys::GroupKeys;
use shard_node::engine::{Engine, MemoryEngine, WriteBatch};
use shard_node::raft::StateMachine as _;
use shard_node::state::StateMachine;
use std::sync::Arc;

/// The next `[u16 BE length][bytes]` of `rest` (what is left if shorter).
fn take<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    let len = match rest {
        [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
        _ => 0,
    };
    let body = rest.get(2..).unwrap_or_default();
    let (entry, left) = body.split_at(len.min(body.len()));
    *rest = left;
    entry
}

fuzz_target!(|data: &[u8]| {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
    let keys = GroupKeys::new(7);
    let sm = StateMachine::open(engine.clone(), keys, 1 << 12).expect("an empty store opens");
    let mut rest = data;
    let mut index = 0;
    let mut revision = sm.current_revision();
    while let Some((&kind, tail)) = rest.split_first() {
        rest = tail;
        let mut entry = take(&mut rest);
        index += 1;
        match kind % 4 {
            // A conf change raft took (v1, or v2): the member table follows it.
            k @ (2 | 3) => {
                let change = take(&mut entry);
                let decoded = if k == 2 {
                    ConfChange::parse_from_bytes(change).map(raft_proto::ConfChangeI::into_v2)
                } else {
                    ConfChangeV2::parse_from_bytes(change)
                };
                match decoded {
                    Ok(cc) => drop(sm.apply_conf_change(index, &cc, entry, Ok(()), WriteBatch::default())),
                    // The driver skips it as an empty entry.
                    Err(_) => drop(sm.apply_entry(index, &[])),
                }
            }
            _ => drop(sm.apply_entry(index, entry)),
        }
        assert_eq!(sm.applied_index(), index, "every entry is applied once, in order");
        let now = sm.current_revision();
        assert!(now >= revision, "the revision went back: {revision} -> {now}");
        revision = now;
    }
    let reopened = StateMachine::open(engine, keys, 1 << 12).expect("the state the log left opens again");
    assert_eq!(reopened.current_revision(), revision, "a restart finds the revision applied");
    assert_eq!(reopened.applied_index(), index, "a restart finds the index applied");
});
