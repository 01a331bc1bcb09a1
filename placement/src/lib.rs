//! Placement: the federation's control plane. Its state (the shard map:
//! nodes, groups and their replicas, ring, pins and spreads, epoch) is one
//! JSON value in its own replicated store: a shard-node group of 1 or 3
//! members, so it runs on the same raft/rocksdb code as the data and
//! routers and nodes follow it with etcd's Watch. This crate adds the admin
//! API that decides changes (`admin.rs`).

pub mod admin;
pub mod assign;
pub mod ownership;
