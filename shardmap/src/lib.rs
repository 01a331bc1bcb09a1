//! The federation's shard map: which raft group owns which key, shared by
//! placement (which writes it), routers (which route by it) and shard-nodes
//! (which host the groups it lists). Pure data and functions, plus the
//! client that follows placement's copy (`watcher`).

pub mod map;
pub mod ring;
pub mod store;
pub mod unit;
pub mod watcher;

pub use map::{next_segment, spread_group, Adoption, GroupInfo, MovePhase, MoveRecord, NodeInfo, Replica, ShardMap};
pub use unit::placement_unit;

/// The key in placement's own store that holds the map (JSON).
pub const MAP_KEY: &[u8] = b"/tessera/placement/map";
/// The federation's auth store (an encoded `AuthState`): changed by
/// routers, followed by routers (which check calls against it) and by
/// nodes (which install it on the groups they lead).
pub const AUTH_STATE_KEY: &[u8] = b"/tessera/auth/state";

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

/// Whether prefix `p` lies strictly under `prefix` (a deeper pin or spread
/// of its subtree).
pub fn strictly_under(p: &str, prefix: &str) -> bool {
    p.len() > prefix.len() && p.starts_with(prefix)
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
