//! A revision is (main, sub): `main` is the revision of the write txn (what
//! clients see as mod_revision), `sub` orders the changes inside that txn.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rev {
    pub main: i64,
    pub sub: i64,
}

impl Rev {
    pub fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }
}

/// Decides the revision of a write txn (the design's revision rule): strictly
/// above the group's previous revision and at least the proposer's hint, so
/// all groups of a federation stay near one shared timeline. Deterministic:
/// both inputs come from the state machine and the raft entry.
pub fn next_revision(prev: i64, hint: i64) -> i64 {
    (prev + 1).max(hint)
}
