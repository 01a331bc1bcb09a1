//! Background compaction (etcd's scheduled compaction): applying a
//! compaction only moves the group's compacted revision; this task then
//! removes the history below it from the key index and the engine, a
//! bounded number of keys at a time with a pause between steps, so
//! neither the applier nor readers wait on a large store and writes keep
//! their latency while it runs. A restart resumes an unfinished pass.

use crate::state::StateMachine;
use std::sync::Arc;
use std::time::Duration;

/// Keys per step (etcd's compaction batch limit).
const KEYS_PER_STEP: usize = 1000;
/// Pause between steps (etcd's compaction sleep interval).
const PAUSE: Duration = Duration::from_millis(10);

pub async fn run(sm: Arc<StateMachine>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        while let Some(at) = sm.compaction_due() {
            let started = std::time::Instant::now();
            let mut from = vec![];
            loop {
                let step = {
                    let (sm, key) = (sm.clone(), from.clone());
                    tokio::task::spawn_blocking(move || sm.compact_step(at, &key, KEYS_PER_STEP)).await
                };
                match step {
                    Ok(Ok(Some(next))) => from = next,
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, at, "compaction step failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(_) => return, // the runtime is shutting down
                }
                tokio::select! {
                    _ = tokio::time::sleep(PAUSE) => {}
                    _ = stop.changed() => return,
                }
            }
            tracing::info!(revision = at, took = ?started.elapsed(), "compaction finished");
        }
        tokio::select! {
            _ = sm.compaction.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::keys::GroupKeys;
    use crate::engine::{Engine, MemoryEngine};
    use crate::state::StateMachine;
    use prost::Message;
    use std::sync::Arc;
    use tessera_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
    use tessera_proto::tessera::command::{command::Op, Command};

    #[test]
    fn history_goes_in_bounded_steps_and_hashes_agree_throughout() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let sm = StateMachine::open(engine.clone(), GroupKeys::new(1), 1 << 20).unwrap();
        let twin = StateMachine::open(Arc::new(MemoryEngine::default()), GroupKeys::new(1), 1 << 20).unwrap();
        let mut index = 0;
        let mut apply = |op: Op| {
            index += 1;
            let cmd = Command { member_id: 1, seq: index, op: Some(op), ..Default::default() };
            for m in [&sm, &twin] {
                m.apply_command(index, &cmd.encode_to_vec()).unwrap();
            }
        };
        for round in 0..3 {
            for k in 0..25 {
                apply(Op::Put(PutRequest {
                    key: format!("k{k:02}").into(),
                    value: format!("{round}").into(),
                    ..Default::default()
                }));
            }
        }
        let before = sm.size_in_use();
        apply(Op::Compact(CompactionRequest { revision: 60, physical: false }));
        assert_eq!(sm.compaction_due(), Some(60));
        let at = |rev| sm.range(&RangeRequest { key: "k00".into(), revision: rev, ..Default::default() });
        assert!(at(59).is_err(), "refused as soon as applied");
        // One member compacts a step, the other not yet: same hash.
        let next = sm.compact_step(60, b"", 10).unwrap().expect("more to go");
        assert_eq!(next, b"k10");
        assert_eq!(sm.hash_kv(0).unwrap(), twin.hash_kv(0).unwrap());
        let mut from = next;
        while let Some(n) = sm.compact_step(60, &from, 10).unwrap() {
            from = n;
        }
        assert_eq!(sm.compaction_due(), None);
        assert_eq!(sm.hash_kv(0).unwrap(), twin.hash_kv(0).unwrap());
        assert!(sm.size_in_use() < before);
        assert_eq!(at(60).unwrap().0.kvs[0].value, b"2", "the value as of the compaction stays");
        // Reopened: the finished compaction is remembered, the history stays gone.
        let again = StateMachine::open(engine, GroupKeys::new(1), 1 << 20).unwrap();
        assert_eq!(again.compaction_due(), None);
        assert_eq!(again.size_in_use(), sm.size_in_use());
    }
}
