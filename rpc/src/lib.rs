//! What every etcd-facing Tessera server shares, and nothing of storage or
//! consensus: shard-nodes, routers and placement all link it.
//!
//! - `errors`: every error a server answers with, etcd's and Tessera's
//!   routing refusals, and the one `from_status` that reads them back.
//! - `metadata`: what a routed call carries (group, map epoch, revision).
//! - `client`: what became of a failed call (never sent, or not).
//! - `oracle`: the client of the revision oracle (one timeline for a federation).
//! - `serve`, `authority`: a client port with etcd's HTTP/2 limits, and the
//!   repair of the invalid `:authority` values some etcd clients send.
//! - `services`, `gateway`: etcd's gRPC services and its JSON gateway over them.
//! - `endpoints`: `/version`, `/health`, `/metrics`; `grpc_metrics`: etcd's
//!   `grpc_server_*` series for every call.
//! - `range_stream`: etcd 3.7's RangeStream rules (refusals, chunk sizes).
//! - `txn_tree`: a txn's compares and ops by index, decided by the compares
//!   (what a router and the groups of a cross-group txn share).
//! - `key_range`: `[key, range_end)` as etcd reads it.
//! - `validate`: etcd's checks of keys, ranges and txns before anything runs.
//! - `auth`: etcd's auth store (users, roles, permission checks) and JWT
//!   tokens, kept by a group for itself and by the router for a federation.
//! - `flags`: typed flag values (URL lists, durations).
//! - `process`: logging and shutdown signals.

pub mod auth;
pub mod authority;
pub mod client;
pub mod endpoints;
pub mod errors;
pub mod flags;
pub mod gateway;
pub mod grpc_metrics;
pub mod key_range;
pub mod metadata;
pub mod oracle;
pub mod process;
pub mod range_stream;
pub mod serve;
pub mod services;
pub mod tls;
pub mod txn_tree;
pub mod validate;

pub use errors::{Error, Refusal};
pub use services::EtcdServices;
