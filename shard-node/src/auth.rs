//! etcd's auth for one group: the store's logic is shared with the router
//! (`tessera_rpc::auth`); simple tokens, handed out through this group's
//! raft, are this node's (`tokens`).

pub mod federation;
pub mod tokens;

pub use tessera_rpc::auth::{jwt, Access, AuthApplied, AuthStore};
