//! Failpoints for fault injection (the `fail` crate, compiled in only with
//! the `failpoints` feature: without it every `fail_point!` is nothing).
//! chaos/ restarts a router with `FAILPOINTS="name=panic..."` to crash it
//! at one of these steps of a cross-group txn it coordinates: the groups
//! must finish what it left (docs/architecture.md, "Recovery"). Tests
//! arm them in-process with `fail::cfg`.

/// Every failpoint, by where it sits.
pub const ALL: &[&str] = &[
    // cross_txn.rs: every group has prepared, no commit sent yet.
    "cross_txn::after_prepare",
    // cross_txn.rs: one group's commit about to be sent (the others' may be
    // on their way already).
    "cross_txn::before_commit",
    // auth/store.rs: a newer auth store is not taken (the router stays
    // behind a change, as one whose watch has not delivered it yet).
    "auth::publish",
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
