//! `[key, range_end)` as etcd reads a range: an empty end is the single
//! key, an end of `\0` is every key >= key. Shared by the groups' MVCC
//! reads and the request checks (`validate`).

use std::ops::Bound;

pub struct RangeBounds<'a> {
    pub start: &'a [u8],
    pub end: Bound<&'a [u8]>,
    pub single: bool,
}

impl<'a> RangeBounds<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => Self { start: key, end: Bound::Included(key), single: true },
            [0] => Self { start: key, end: Bound::Unbounded, single: false },
            end => Self { start: key, end: Bound::Excluded(end), single: false },
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        k >= self.start
            && match self.end {
                Bound::Included(e) => k == e,
                Bound::Excluded(e) => k < e,
                Bound::Unbounded => true,
            }
    }

    /// An end at or below the start: no key.
    pub fn is_empty(&self) -> bool {
        matches!(self.end, Bound::Excluded(e) if e <= self.start)
    }
}

pub fn key_in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    RangeBounds::new(key, range_end).contains(k)
}
