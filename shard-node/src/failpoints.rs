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
    // apply/cross.rs: a cross-group txn's prepare and commit (its part, or
    // on the primary the decision), before they are applied.
    "apply::txn_prepare",
    "apply::txn_commit",
    // compactor.rs: history below the compaction revision, before and after its deletion.
    "compact::before_delete",
    "compact::after_delete",
    // engine/rocks.rs: a write batch that asks for fsync (a slow or failing disk).
    "engine::before_sync",
];

/// Configures the failpoints named in `$FAILPOINTS` (`name=action;...`, the
/// `fail` crate's syntax) and makes any panic abort the process: a node
/// that hits a `panic` failpoint in one thread is down as a whole, as after
/// a crash. Does nothing without the `failpoints` feature.
pub fn setup() -> anyhow::Result<()> {
    #[cfg(feature = "failpoints")]
    if let Ok(spec) = std::env::var("FAILPOINTS") {
        for part in spec.split(';').filter(|p| !p.trim().is_empty()) {
            let (name, actions) =
                part.split_once('=').ok_or_else(|| anyhow::anyhow!("FAILPOINTS: {part:?} is not name=action"))?;
            if !ALL.contains(&name.trim()) {
                anyhow::bail!("FAILPOINTS: no failpoint {name:?} (one of {})", ALL.join(", "));
            }
            fail::cfg(name.trim(), actions.trim()).map_err(|e| anyhow::anyhow!("FAILPOINTS: {name}: {e}"))?;
        }
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::abort();
        }));
        tracing::warn!(failpoints = %spec, "failpoints armed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique() {
        let mut names = super::ALL.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), super::ALL.len());
    }
}
