//! Failpoints for fault injection (the `fail` crate, compiled in only with
//! the `failpoints` feature: without it every `fail_point!` is nothing).
//! chaos/ and the move tests restart placement with `FAILPOINTS="name=panic"`
//! to kill it at one step of a move: the next placement must finish or roll
//! back what it left (`moves.rs`).

/// Every failpoint, by where it sits.
pub const ALL: &[&str] = &[
    // moves.rs: a chunk of the copy is staged on the target.
    "move::after_stage",
    // moves.rs: the sources are fenced and the copy checked; the map not committed.
    "move::before_commit",
    // moves.rs: the map gives the prefix to the target; nobody adopted it yet.
    "move::after_commit",
    // moves.rs: the target adopted; the sources not released yet.
    "move::after_adopt",
];

/// Whether this build has them (the `failpoints` feature).
pub const COMPILED_IN: bool = cfg!(feature = "failpoints");

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique() {
        assert!(tessera_rpc::process::all_distinct(super::ALL));
    }
}
