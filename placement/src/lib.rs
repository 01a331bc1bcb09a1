//! Placement: the federation's control plane. It decides the shard map —
//! nodes, groups and their replicas, the ring, pins and spreads, the epoch
//! — and keeps it as one JSON value in its store: any etcd API (a
//! standalone Tessera group in `tessera dev`), which routers and nodes
//! follow with etcd's Watch. Placement itself holds no state: any number
//! may run, each change is one compare-and-swap of the map.
//!
//! - `Placement`: the operations, as typed functions (`ops`, `members`,
//!   `ownership` for fenced pins and spreads, `moves` for moving a prefix
//!   with its data, `split` for spreading one over groups and merging it
//!   back, `drain` for a group leaving — off the ring, `leases` copied —, `ring`
//!   for one joining or leaving the ring).
//! - `api`: their requests and answers; `http::routes` serves them as
//!   JSON, `client::PlacementClient` (the CLI) calls them.

pub mod api;
mod assign;
pub mod client;
mod drain;
mod error;
pub mod failpoints;
pub mod http;
mod leases;
mod members;
mod moves;
mod ops;
mod ownership;
pub mod rebalance;
mod ring;
mod split;
mod units;

pub use client::PlacementClient;
pub use error::{ErrorKind, PlacementError};
pub use ops::Placement;
