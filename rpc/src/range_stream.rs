//! etcd 3.7's RangeStream as nodes and routers serve it: the requests it
//! refuses and how its chunks grow. A stream reads at one revision — the
//! client's, else that of its first read — so its chunks join into the
//! answer Range would give; header, `more` and `count` ride on the last.

use tessera_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use tessera_proto::etcdserverpb::RangeRequest;
use tonic::Status;

/// Keys in the first chunk (etcd's `initialStreamChunkLimit`).
pub const FIRST_CHUNK: i64 = 10;

/// etcd's refusal of what RangeStream does not do: an order other than by
/// key ascending, and revision filters (both need the whole range first).
pub fn unsupported(r: &RangeRequest) -> Option<Status> {
    let default_order = r.sort_order == SortOrder::None as i32
        || (r.sort_target == SortTarget::Key as i32 && r.sort_order == SortOrder::Ascend as i32);
    if !default_order {
        return Some(Status::unimplemented("RangeStream does not support custom sort orders"));
    }
    if r.min_mod_revision != 0 || r.max_mod_revision != 0 || r.min_create_revision != 0 || r.max_create_revision != 0 {
        return Some(Status::unimplemented("RangeStream does not support revision filters"));
    }
    None
}

/// The next chunk's key limit, from the last one's and its encoded size:
/// doubled below half of `target` bytes, halved above twice it, never 0
/// (etcd's `adjustChunkLimit`).
pub fn next_chunk_limit(last: i64, last_size: usize, target: usize) -> i64 {
    let next = if last_size < target / 2 {
        last.saturating_mul(2)
    } else if last_size > target.saturating_mul(2) {
        last / 2
    } else {
        last
    };
    next.max(1)
}

/// The key right after `key` (where the next chunk starts).
pub fn after(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_grow_and_shrink_toward_the_target_size() {
        assert_eq!(next_chunk_limit(10, 100, 1000), 20);
        assert_eq!(next_chunk_limit(10, 700, 1000), 10);
        assert_eq!(next_chunk_limit(10, 2500, 1000), 5);
        assert_eq!(next_chunk_limit(1, 5000, 1000), 1);
    }

    #[test]
    fn only_key_order_without_revision_filters_is_streamed() {
        let plain = RangeRequest { key: b"a".to_vec(), ..Default::default() };
        assert!(unsupported(&plain).is_none());
        let by_key = RangeRequest { sort_target: SortTarget::Key as i32, sort_order: SortOrder::Ascend as i32, ..plain.clone() };
        assert!(unsupported(&by_key).is_none());
        let by_mod = RangeRequest { sort_target: SortTarget::Mod as i32, sort_order: SortOrder::Ascend as i32, ..plain.clone() };
        let s = unsupported(&by_mod).unwrap();
        assert_eq!((s.code(), s.message()), (tonic::Code::Unimplemented, "RangeStream does not support custom sort orders"));
        let descending = RangeRequest { sort_order: SortOrder::Descend as i32, ..plain.clone() };
        assert!(unsupported(&descending).is_some());
        let filtered = RangeRequest { min_mod_revision: 3, ..plain };
        assert_eq!(unsupported(&filtered).unwrap().message(), "RangeStream does not support revision filters");
    }

    #[test]
    fn the_next_chunk_starts_right_after_the_last_key() {
        assert_eq!(after(b"ab"), b"ab\0".to_vec());
    }
}
