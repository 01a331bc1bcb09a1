//! Merging per-group range results read at one revision into the one
//! response etcd would give: order by the requested sort, then limit,
//! `more` and `count` over all groups.

use std::cmp::Ordering;
use tessera_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use tessera_proto::etcdserverpb::{RangeRequest, RangeResponse};
use tessera_proto::mvccpb::KeyValue;

fn by_target(target: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    let primary = match target {
        SortTarget::Key => Ordering::Equal,
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    primary.then_with(|| a.key.cmp(&b.key))
}

pub fn merge(req: &RangeRequest, parts: Vec<RangeResponse>) -> RangeResponse {
    let count = parts.iter().map(|p| p.count).sum();
    let any_more = parts.iter().any(|p| p.more);
    let mut kvs: Vec<KeyValue> = parts.into_iter().flat_map(|p| p.kvs).collect();
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let descend = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None) == SortOrder::Descend;
    kvs.sort_by(|a, b| {
        let o = by_target(target, a, b);
        if descend {
            o.reverse()
        } else {
            o
        }
    });
    let mut more = any_more;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    RangeResponse { header: None, kvs, more, count }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, m: i64) -> KeyValue {
        KeyValue { key: k.into(), mod_revision: m, ..Default::default() }
    }

    #[test]
    fn merges_sorted_limited_and_counted() {
        let a = RangeResponse { kvs: vec![kv("a", 5), kv("c", 1)], count: 2, ..Default::default() };
        let b = RangeResponse { kvs: vec![kv("b", 3), kv("d", 2)], count: 3, more: true, ..Default::default() };
        let req = RangeRequest { limit: 3, ..Default::default() };
        let r = merge(&req, vec![a.clone(), b.clone()]);
        assert_eq!(r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(r.more);
        assert_eq!(r.count, 5);
        let req =
            RangeRequest { sort_target: SortTarget::Mod as i32, sort_order: SortOrder::Descend as i32, ..Default::default() };
        let r = merge(&req, vec![a, b]);
        assert_eq!(r.kvs.iter().map(|k| k.mod_revision).collect::<Vec<_>>(), vec![5, 3, 2, 1]);
    }
}
