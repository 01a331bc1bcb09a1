//! Splitting a prefix over several groups with its data, and merging it
//! back, built from moves (`crate::moves`):
//!
//! - `split PREFIX GROUPS`: every subtree right under the prefix (its next
//!   segment ends with `/`: a namespace under `/registry/pods/`) moves to
//!   the group a spread over GROUPS would give it (`shardmap::spread_group`),
//!   one move each, and stays pinned there. What has no subtree of its own
//!   (keys right under the prefix) and subtrees created after the split
//!   listed them stay with the prefix's owner: a leaf key cannot move as a
//!   prefix without taking every key that starts with its letters. Run
//!   again, a split moves the subtrees created since.
//! - `merge PREFIX GROUP`: every pin and spread under the prefix moves to
//!   GROUP (deepest first, so each move finds nothing under it elsewhere),
//!   then the prefix itself; pins under it then say what the prefix's own
//!   says, and go (a map change that routes no key differently).
//!
//! Each move has the move's guarantees (online, resumable or rolled back);
//! a split or merge cut short is run again and does what is left.

use crate::api::{MergeReport, SplitReport};
use crate::error::{PlacementError, Result};
use crate::members::keys_page;
use crate::moves::{check_prefix, overlap};
use crate::ops::Placement;
use shardmap::{next_segment, prefix_end, spread_group, strictly_under, ShardMap};
use std::collections::BTreeSet;

/// Keys read per listing call.
const LIST_BATCH: i64 = 1000;

/// The subtrees (next segments ending with `/`) right under `prefix`, and
/// how many keys under it have none.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Segments {
    pub subtrees: BTreeSet<Vec<u8>>,
    pub leaves: u64,
}

impl Segments {
    /// Takes in a batch of keys (in order); where the listing goes on from.
    pub(crate) fn take(&mut self, prefix: &[u8], keys: &[Vec<u8>]) -> Option<Vec<u8>> {
        for k in keys {
            let seg = next_segment(k, prefix);
            if seg.ends_with(b"/") {
                self.subtrees.insert(seg.to_vec());
            } else {
                self.leaves += 1;
            }
        }
        let last = keys.last()?;
        let seg = next_segment(last, prefix);
        Some(if seg.ends_with(b"/") {
            // Past the whole subtree: one call per subtree, not per key.
            prefix_end(&[prefix, seg].concat())
        } else {
            [last.as_slice(), &[0]].concat()
        })
    }
}

/// The group that owns `prefix` leaving aside pins and spreads under it,
/// if one group owns all of that.
fn base_owner(map: &ShardMap, prefix: &str) -> Option<u64> {
    let mut m = map.clone();
    m.pins.retain(|p, _| !strictly_under(p, prefix));
    m.spreads.retain(|p, _| !strictly_under(p, prefix));
    match m.routing().groups_for_range(prefix.as_bytes(), &prefix_end(prefix.as_bytes()))[..] {
        [g] => Some(g),
        _ => None,
    }
}

impl Placement {
    /// The subtrees under `prefix` on `group`, listed with keys-only ranges.
    async fn segments(&self, map: &ShardMap, group: u64, prefix: &str) -> Result<Segments> {
        let mut out = Segments::default();
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let (keys, more) = keys_page(self.dialer(), map, group, &from, &end, LIST_BATCH).await?;
            match out.take(prefix.as_bytes(), &keys) {
                Some(next) if more || keys.len() as i64 == LIST_BATCH => from = next,
                _ => return Ok(out),
            }
            if from >= end {
                return Ok(out);
            }
        }
    }

    /// Spreads the subtrees under `prefix` over `groups`, with their data.
    pub async fn split(&self, prefix: &str, groups: &[u64], rate_bytes: u64) -> Result<SplitReport> {
        check_prefix(prefix)?;
        let map = self.map().await?;
        let groups: Vec<u64> = {
            let mut gs = groups.to_vec();
            gs.sort_unstable();
            gs.dedup();
            gs
        };
        if groups.len() < 2 {
            return Err(PlacementError::invalid("a split needs at least two groups"));
        }
        for g in &groups {
            if !map.groups.contains_key(g) {
                return Err(PlacementError::not_found(format!("no group {g}")));
            }
            if map.draining_groups.contains(g) {
                return Err(PlacementError::conflict(format!("group {g} is draining: it takes nothing")));
            }
        }
        if let Some((p, _)) = map.moves.iter().find(|(p, _)| overlap(p, prefix)) {
            return Err(PlacementError::conflict(format!("a move of {p:?} is in flight (see `tessera moves`)")));
        }
        if let Some((p, _)) = map.spreads.iter().find(|(p, _)| p.starts_with(prefix)) {
            return Err(PlacementError::conflict(format!(
                "{p:?} is spread over groups by the map (a spread's keys do not move): merge it first"
            )));
        }
        let Some(owner) = base_owner(&map, prefix) else {
            return Err(PlacementError::invalid(format!(
                "the keys under {prefix:?} are on several groups already (the ring's units under it); split a prefix one group owns, e.g. a unit"
            )));
        };
        let segments = self.segments(&map, owner, prefix).await?;
        let mut moves = vec![];
        let mut stayed = 0;
        for seg in &segments.subtrees {
            // (The listing was on the owner: subtrees a split run before moved are not in it.)
            let to = spread_group(seg, &groups);
            if to == owner {
                stayed += 1;
                continue;
            }
            let sub = format!("{prefix}{}", String::from_utf8_lossy(seg));
            moves.push(self.move_in_batch(&sub, to, rate_bytes, moves.len(), "split").await?);
        }
        let epoch = self.map().await?.epoch;
        tracing::info!(prefix, ?groups, moved = moves.len(), stayed, leaves = segments.leaves, "split");
        Ok(SplitReport { prefix: prefix.into(), groups, owner, moves, stayed, leaves: segments.leaves, epoch })
    }

    /// Moves everything under `prefix` to `group`, then drops the pins
    /// under it that the prefix's own pin makes redundant.
    pub async fn merge(&self, prefix: &str, group: u64, rate_bytes: u64) -> Result<MergeReport> {
        check_prefix(prefix)?;
        let map = self.map().await?;
        if !map.groups.contains_key(&group) {
            return Err(PlacementError::not_found(format!("no group {group}")));
        }
        let mut parts: Vec<String> =
            map.pins.keys().chain(map.spreads.keys()).filter(|p| strictly_under(p, prefix)).cloned().collect();
        // Deepest first: each move then finds nothing under it kept elsewhere.
        parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
        parts.dedup();
        let mut moves = vec![];
        for part in parts.iter().map(String::as_str).chain([prefix]) {
            let report = self.move_in_batch(part, group, rate_bytes, moves.len(), "merge").await?;
            if report.outcome != "already" {
                moves.push(report);
            }
        }
        let mut dropped = 0;
        let m = self
            .store
            .update(|m| {
                if m.pins.get(prefix) != Some(&group) {
                    return Err(PlacementError::conflict(format!("{prefix:?} was given to another group meanwhile")));
                }
                let redundant: Vec<String> =
                    m.pins.iter().filter(|(p, g)| strictly_under(p, prefix) && **g == group).map(|(p, _)| p.clone()).collect();
                dropped = redundant.len();
                for p in &redundant {
                    m.pins.remove(p);
                }
                Ok(!redundant.is_empty())
            })
            .await?;
        Ok(MergeReport { prefix: prefix.into(), group, moves, pins_dropped: dropped, epoch: m.epoch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[&str]) -> Vec<Vec<u8>> {
        ks.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_listing_counts_subtrees_once_and_skips_past_them() {
        let mut s = Segments::default();
        let next = s.take(b"/r/pods/", &keys(&["/r/pods/a/x", "/r/pods/a/y", "/r/pods/b/x"]));
        assert_eq!(next.unwrap(), b"/r/pods/b0".to_vec(), "past the subtree b/");
        let next = s.take(b"/r/pods/", &keys(&["/r/pods/c", "/r/pods/d"]));
        assert_eq!(next.unwrap(), b"/r/pods/d\0".to_vec(), "after the leaf d");
        assert_eq!(s.subtrees, [b"a/".to_vec(), b"b/".to_vec()].into());
        assert_eq!(s.leaves, 2);
        assert_eq!(s.take(b"/r/pods/", &[]), None);
    }

    #[test]
    fn the_base_owner_leaves_aside_what_is_pinned_under_the_prefix() {
        let mut m = ShardMap { ring: vec![1, 2], ..Default::default() };
        m.pins.insert("/registry/pods/".into(), 1);
        m.pins.insert("/registry/pods/ns1/".into(), 2);
        assert_eq!(base_owner(&m, "/registry/pods/"), Some(1));
        assert_eq!(base_owner(&m, "/registry/"), None, "the ring's units under it are on both groups");
        m.pins.insert("/registry/".into(), 2);
        assert_eq!(base_owner(&m, "/registry/"), Some(2));
    }
}
