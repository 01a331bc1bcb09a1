//! Multi-version store of one group (etcd's mvcc): the in-memory key index
//! points at revisions; values live in the engine under their revision.

mod key_index;
mod range;
mod revision;
mod store;
mod txn;

pub use key_index::{Entry, KeyIndex};
pub(crate) use range::read_revision;
pub use range::{key_in_range, RangeBounds};
pub use revision::{next_revision, Rev};
pub use store::{MvccStore, Place, State};
pub(crate) use store::{META_COMPACT, META_COMPACTED};
pub use txn::{LeaseMove, TxnOutcome, WriteTxn};
