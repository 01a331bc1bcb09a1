//! The in-memory history of one key (etcd's keyIndex).
//!
//! A key lives through generations: a put creates it (version 1), each put
//! raises the version, a delete ends the generation with a tombstone. The
//! entries of all generations are kept in one vector, oldest first:
//!
//! ```text
//!   put@5   put@7   del@9   put@12
//!   [v1 c5] [v2 c5] [tomb]  [v1 c12]     <- c = create revision
//! ```
//!
//! Invariant: revisions strictly increase along the vector, and an entry
//! after a tombstone (or the first entry) has version 1.

use super::Rev;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub rev: Rev,
    pub create: i64,
    /// 0 marks a tombstone.
    pub version: i64,
    pub lease: i64,
    /// Bytes the stored value takes (for the store's size in use).
    pub size: u32,
}

impl Entry {
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }
}

#[derive(Clone, Debug, Default)]
pub struct KeyIndex {
    entries: Vec<Entry>,
}

impl KeyIndex {
    /// The key as of revision `rev`: None if it did not exist then.
    pub fn at(&self, rev: i64) -> Option<&Entry> {
        let i = self.entries.partition_point(|e| e.rev.main <= rev);
        match i {
            0 => None,
            _ => Some(&self.entries[i - 1]).filter(|e| !e.is_tombstone()),
        }
    }

    /// The key just before the change at `rev` (what a watcher's prev_kv shows).
    pub fn before(&self, rev: Rev) -> Option<&Entry> {
        let i = self.entries.partition_point(|e| e.rev < rev);
        match i {
            0 => None,
            _ => Some(&self.entries[i - 1]).filter(|e| !e.is_tombstone()),
        }
    }

    pub fn latest(&self) -> Option<&Entry> {
        self.entries.last().filter(|e| !e.is_tombstone())
    }

    pub fn push(&mut self, e: Entry) {
        debug_assert!(self.entries.last().is_none_or(|l| l.rev < e.rev));
        self.entries.push(e);
    }

    /// Every stored revision of the key, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    pub fn last_size(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.size as u64)
    }

    /// Removes the newest entry (undo of an aborted txn); returns whether
    /// the key has no entries left.
    pub fn pop_last(&mut self) -> bool {
        self.entries.pop();
        self.entries.is_empty()
    }

    /// Drops every entry that no read at a revision >= `at` can reach: all
    /// but the latest entry <= `at`, and that one too if it is a tombstone.
    /// Returns whether the key has no entries left.
    pub fn compact(&mut self, at: i64, dropped: &mut Vec<Entry>) -> bool {
        let i = self.entries.partition_point(|e| e.rev.main <= at);
        if i > 0 {
            let keep_from = if self.entries[i - 1].is_tombstone() { i } else { i - 1 };
            dropped.extend(self.entries.drain(..keep_from));
        }
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(main: i64, create: i64, version: i64) -> Entry {
        Entry { rev: Rev::new(main, 0), create, version, lease: 0, size: 0 }
    }
    fn tomb(main: i64) -> Entry {
        Entry { rev: Rev::new(main, 0), create: 0, version: 0, lease: 0, size: 0 }
    }

    #[test]
    fn reads_each_generation() {
        let mut k = KeyIndex::default();
        for e in [put(5, 5, 1), put(7, 5, 2), tomb(9), put(12, 12, 1)] {
            k.push(e);
        }
        assert_eq!(k.at(4), None);
        assert_eq!(k.at(6).map(|e| e.version), Some(1));
        assert_eq!(k.at(8).map(|e| e.version), Some(2));
        assert_eq!(k.at(10), None);
        assert_eq!(k.at(12).map(|e| e.create), Some(12));
        assert_eq!(k.before(Rev::new(7, 0)).map(|e| e.rev.main), Some(5));
        assert_eq!(k.before(Rev::new(12, 0)), None);
    }

    #[test]
    fn compaction_keeps_what_later_reads_need() {
        let mut k = KeyIndex::default();
        for e in [put(5, 5, 1), put(7, 5, 2), tomb(9), put(12, 12, 1)] {
            k.push(e);
        }
        let mut dropped = vec![];
        assert!(!k.compact(8, &mut dropped));
        assert_eq!(dropped.iter().map(|e| e.rev).collect::<Vec<_>>(), vec![Rev::new(5, 0)]);
        assert_eq!(k.at(8).map(|e| e.version), Some(2));
        dropped.clear();
        assert!(!k.compact(10, &mut dropped));
        assert_eq!(dropped.iter().map(|e| e.rev).collect::<Vec<_>>(), vec![Rev::new(7, 0), Rev::new(9, 0)]);
        assert_eq!(k.at(10), None);
        assert_eq!(k.at(12).map(|e| e.version), Some(1));
        dropped.clear();
        let mut gone = KeyIndex::default();
        gone.push(put(1, 1, 1));
        gone.push(tomb(2));
        assert!(gone.compact(3, &mut dropped));
    }
}
