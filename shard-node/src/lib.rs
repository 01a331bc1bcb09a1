//! A Tessera shard node: members of raft groups, each group a complete,
//! durable etcd store (MVCC, txn, leases, watch) behind etcd's v3 API.
//!
//! Layers, bottom up: `engine` (storage trait, rocksdb) → `mvcc`, `lease`,
//! `watch` (the etcd store) → `apply` (the state machine) → `raft` (log,
//! driver, transport) → `group` (the handle) → `server` (etcd's gRPC API) →
//! `node` (assembly, start/stop).

pub mod apply;
pub mod auth;
pub mod compactor;
pub mod config;
pub mod corruption;
mod cross;
pub mod engine;
pub mod error;
pub mod failpoints;
pub mod federation;
pub mod fence;
pub mod group;
pub mod lease;
pub mod load;
pub mod locks;
pub mod members;
pub mod membership;
pub mod metrics;
pub mod moves;
pub mod mvcc;
pub mod node;
pub mod oracle;
pub mod raft;
pub mod replica;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod watch;

pub use config::Config;
pub use node::{run, start, Running};
