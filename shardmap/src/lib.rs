//! The federation's shard map: which raft group owns which key, shared by
//! placement (which writes it), routers (which route by it) and shard-nodes
//! (which host the groups it lists). Pure data and functions, plus the
//! client that follows placement's copy (`watcher`).

pub mod map;
pub mod ring;
pub mod store;
pub mod unit;
pub mod watcher;

pub use map::{GroupInfo, NodeInfo, Replica, ShardMap};
pub use unit::placement_unit;

/// gRPC metadata a request to a shard-node carries to name its group.
pub const GROUP_HEADER: &str = "tessera-group";
/// gRPC metadata: the shard-map epoch the router routed by.
pub const EPOCH_HEADER: &str = "tessera-epoch";
/// gRPC metadata on an `EpochNotMatch` error: the map epoch the call must
/// be routed by (the router waits until its map has it, then routes again).
pub const CURRENT_EPOCH_HEADER: &str = "tessera-current-epoch";
/// gRPC metadata: the highest revision the router has seen; the group's
/// revision clock is raised to it before proposing (the revision rule).
pub const REVISION_HEADER: &str = "tessera-revision";
/// A call to one group on a shard-node (client or peer port).
pub fn group_request<T>(group: u64, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(GROUP_HEADER, group.into());
    r
}

/// The key in placement's own store that holds the map (JSON).
pub const MAP_KEY: &[u8] = b"/tessera/placement/map";

/// etcd's "end of a prefix" for a range: the prefix with its last byte
/// below 0xff incremented; `\0` (every key from the start) for none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether any key under `prefix` falls in `[key, range_end)` (etcd's
/// range encoding: an empty end is the single key, `\0` every key from
/// `key` on).
pub fn prefix_overlaps(prefix: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        return key.starts_with(prefix);
    }
    let prefix_hi = prefix_end(prefix);
    let starts_before_end = range_end == [0] || prefix < range_end;
    let ends_after_key = prefix_hi == [0] || prefix_hi.as_slice() > key;
    starts_before_end && ends_after_key
}
