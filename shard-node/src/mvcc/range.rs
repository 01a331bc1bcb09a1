//! Range semantics shared by plain reads and reads inside a txn, following
//! etcd's applier: count is the number of keys in the range (ignoring limit
//! and the revision filters), filters and sorting need the whole range, and
//! `more` says the limit cut something off.

use super::{Entry, Rev, State};
use crate::error::{Error, Result};
use std::ops::Bound;
use tessera_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use tessera_proto::etcdserverpb::{RangeRequest, RangeResponse};
use tessera_proto::mvccpb::KeyValue;

pub use tessera_rpc::key_range::{key_in_range, RangeBounds};

/// Every key of the range alive at `rev`, in key order.
pub(crate) fn entries_at<'s>(st: &'s State, key: &[u8], range_end: &[u8], rev: i64) -> Vec<(&'s [u8], Entry)> {
    let b = RangeBounds::new(key, range_end);
    if b.is_empty() {
        return vec![];
    }
    st.index
        .range::<[u8], _>((Bound::Included(b.start), b.end))
        .filter_map(|(k, ki)| ki.at(rev).map(|e| (k.as_slice(), *e)))
        .collect()
}

/// Checks a read revision against the store: 0 means current.
pub(crate) fn read_revision(st: &State, requested: i64) -> Result<i64> {
    if requested > st.rev {
        return Err(Error::FutureRev);
    }
    if requested > 0 && requested < st.compact_rev {
        return Err(Error::Compacted);
    }
    Ok(if requested <= 0 { st.rev } else { requested })
}

/// Runs `req` at `rev`; `fetch` loads the values of the chosen revisions.
pub(crate) fn range(
    st: &State,
    req: &RangeRequest,
    rev: i64,
    fetch: &dyn Fn(&[Rev]) -> Result<Vec<KeyValue>>,
) -> Result<RangeResponse> {
    let mut found = entries_at(st, &req.key, &req.range_end, rev);
    let count = found.len() as i64;
    if req.count_only {
        return Ok(RangeResponse { count, ..Default::default() });
    }
    let keep = |e: &Entry| {
        (req.min_mod_revision == 0 || e.rev.main >= req.min_mod_revision)
            && (req.max_mod_revision == 0 || e.rev.main <= req.max_mod_revision)
            && (req.min_create_revision == 0 || e.create >= req.min_create_revision)
            && (req.max_create_revision == 0 || e.create <= req.max_create_revision)
    };
    found.retain(|(_, e)| keep(e));

    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    let limit = if req.limit > 0 { req.limit as usize } else { usize::MAX };

    // `more`: the filtered range holds more than the limit lets through.
    let more = found.len() > limit;
    // Sorting by value needs the values of the whole range; every other
    // target is in the index, so only the returned page is loaded.
    let mut kvs = if target == SortTarget::Value && order != SortOrder::None {
        let revs: Vec<Rev> = found.iter().map(|(_, e)| e.rev).collect();
        let mut kvs = fetch(&revs)?;
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| b.value.cmp(&a.value));
        } else {
            kvs.sort_by(|a, b| a.value.cmp(&b.value));
        }
        kvs.truncate(limit);
        kvs
    } else {
        if order != SortOrder::None {
            let field = |e: &Entry| match target {
                SortTarget::Version => e.version,
                SortTarget::Create => e.create,
                SortTarget::Mod => e.rev.main,
                _ => 0,
            };
            // Stable, in either direction: ties keep key order, as etcd's
            // results show.
            match (target, order) {
                (SortTarget::Key, SortOrder::Descend) => found.reverse(),
                (SortTarget::Key, _) => {}
                (_, SortOrder::Descend) => found.sort_by_key(|(_, e)| std::cmp::Reverse(field(e))),
                _ => found.sort_by_key(|(_, e)| field(e)),
            }
        }
        found.truncate(limit);
        let page: Vec<Rev> = found.iter().map(|(_, e)| e.rev).collect();
        fetch(&page)?
    };
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse { kvs, more, count, header: None })
}
