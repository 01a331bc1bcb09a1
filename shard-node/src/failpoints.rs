//! Failpoints for fault injection (the `fail` crate, compiled in only with
//! the `failpoints` feature: without it every `fail_point!` is nothing).
//! chaos/ restarts a node with `FAILPOINTS="name=action;..."` to crash it
//! at one of these steps (`panic`: the process aborts, as a crash would
//! leave it) or to slow its disk (`sleep(ms)` before an fsync).
//!
//! Each name is a step where a crash must lose nothing acknowledged and
//! leave nothing half-written: chaos checks both after the node restarts.

/// Every failpoint, by where it sits.
pub const ALL: &[&str] = &[
    // raft/driver.rs: the raft log and hard state, before and after they are fsynced.
    "raft::before_persist",
    "raft::after_persist",
    // raft/driver.rs: a snapshot received from the leader, before and after it is written.
    "raft::before_snapshot_install",
    "raft::after_snapshot_install",
    // raft/transport: a snapshot about to be sent to a follower.
    "raft::before_snapshot_send",
    // apply.rs: an entry applied in memory, before and after its batch is written.
    "apply::before_commit",
    "apply::after_commit",
    // apply.rs: a fence raised (a map change on its way).
    "apply::fence",
    // apply.rs: the steps of a move with its data, before they are applied:
    // history staged on the target, the target adopting it, a source
    // releasing the prefix.
    "apply::move_stage",
    "apply::move_adopt",
    "apply::move_release",
    // apply/cross.rs: a cross-group txn's prepare and commit (its part),
    // before they are applied.
    "apply::txn_prepare",
    "apply::txn_commit",
    // compactor.rs: history below the compaction revision, before and after its deletion.
    "compact::before_delete",
    "compact::after_delete",
    // engine/rocks.rs: a write batch that asks for fsync (a slow or failing disk).
    "engine::before_sync",
];

/// Whether this build has them (the `failpoints` feature): the binary
/// passes it with `ALL` to `tessera_rpc::process::arm_failpoints`.
pub const COMPILED_IN: bool = cfg!(feature = "failpoints");

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique() {
        assert!(tessera_rpc::process::all_distinct(super::ALL));
    }
}
