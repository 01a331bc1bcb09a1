//! Consensus for one group: raft-rs `RawNode` over the engine.
//!
//! - `storage`: raft log, hard state, conf state in the engine (raft-rs `Storage`).
//! - `snapshot`: state-machine snapshots (build and install).
//! - `driver`: the one loop per group: step, tick, `handle_ready`, advance.
//! - `transport`: raft messages between members over gRPC streams.
//! - `logger`: raft-rs's slog records into `tracing`.

pub mod driver;
pub mod logger;
pub mod snapshot;
pub mod storage;
pub mod transport;
