//! Watch fan-out of one group.
//!
//! Writers never wait on watchers: the applier appends each applied txn's
//! events to a bounded ring and moves a revision signal. Every watch stream
//! reads at its own pace: from the ring while its next revision is still
//! there, from the store's history once it has fallen behind (etcd's
//! unsynced/victim watchers), so a slow client costs neither write latency
//! nor unbounded memory.

mod hub;

pub use hub::{RevEvents, WatchHub};
