//! The shard map as placement stores it (JSON under `MAP_KEY`) and the
//! routing it implies. Every key maps to exactly one group for an epoch:
//! the longest pin/spread entry that prefixes the key decides, otherwise
//! the consistent-hash ring of placement units.

use crate::ring::{hash, Ring};
use crate::unit::{common_prefix, placement_unit, prefix_fixes_unit};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub const DEFAULT_DEPTH: usize = 3;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub peer_url: String,
    pub client_url: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub node: String,
    pub member_id: u64,
    pub learner: bool,
    /// In the group's initial configuration (bootstraps with it) rather
    /// than added to a running group (joins it).
    pub initial: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub id: u64,
    pub replicas: Vec<Replica>,
}

impl GroupInfo {
    pub fn replica_on(&self, node: &str) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.node == node)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    /// Increases on every change.
    pub epoch: u64,
    /// The federation's etcd cluster id, as every router's response header
    /// carries it: its placement store's, recorded with the first map.
    #[serde(default)]
    pub cluster_id: u64,
    /// Placement units hold at most this many slashes.
    pub depth: usize,
    pub next_group: u64,
    pub nodes: BTreeMap<String, NodeInfo>,
    pub groups: BTreeMap<u64, GroupInfo>,
    /// Groups on the consistent-hash ring. `group add` leaves a new group
    /// off it (give it prefixes with move, or let the rebalancer); `group
    /// add --ring` / `group join` moves it onto it with the units the ring
    /// then gives it (placement's `ring` module).
    pub ring: Vec<u64>,
    /// prefix → group, for the prefix and its subtree.
    pub pins: BTreeMap<String, u64>,
    /// prefix → groups; keys under it are hashed by their next segment.
    pub spreads: BTreeMap<String, Vec<u64>>,
    /// Prefixes being moved with their data (placement's record, so a move
    /// survives the placement that drove it: another finishes or rolls it
    /// back). Routing does not read it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub moves: BTreeMap<String, MoveRecord>,
    /// Groups taken out (`group remove`): their nodes stop the replicas and
    /// delete the data. A group merely missing from the map is left alone
    /// (a map that lost it is more likely a mistake than an order).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed_groups: BTreeSet<u64>,
    /// Groups being drained (`group drain`): the rebalancer gives them nothing.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub draining_groups: BTreeSet<u64>,
    /// Placement units kept on a group the ring no longer gives them: a
    /// unit with fewer slashes than `depth` (`""`, `/registry/`) holds
    /// data when the ring changes, and cannot move as a prefix without its
    /// subtree. Only the unit's own keys follow it (unlike a pin); pins and
    /// spreads still win, the ring decides the rest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unit_pins: BTreeMap<String, u64>,
    /// The groups leases are granted on (by id), once the ring has changed:
    /// the ring as it was then, so a lease's home stays where it was
    /// granted. Empty: the ring's groups (or every group, without a ring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lease_homes: Vec<u64>,
    /// Groups that took a leaving group's remainder (its unit pins' keys,
    /// moved under the empty prefix): each takes one, as a second would be
    /// staged under the same (empty) prefix as the first's keys.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub took_remainder: BTreeSet<u64>,
}

/// A move of a prefix with its data, as the map records it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MoveRecord {
    pub to: u64,
    /// The groups the prefix's keys come from.
    pub from: Vec<u64>,
    pub phase: MovePhase,
    /// The epoch of the sources' fences (0 before the cutover).
    #[serde(default)]
    pub epoch: u64,
    /// Once committed: what the target needs to adopt the prefix.
    #[serde(default)]
    pub adopt: Option<Adoption>,
    /// A leaving group's remainder (its unit pins' keys, under the empty
    /// prefix): the commit moves its unit pins, not a pin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remainder: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    /// Copying and cutting over: rolled back if its driver is lost.
    Copying,
    /// The map gives the prefix to the target: finished if its driver is lost.
    Committed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    /// The sources' highest revision at their fences.
    pub revision: i64,
    pub compact_revision: i64,
    /// (lease id, seconds left) of the leases the moved keys are attached to.
    pub leases: Vec<(i64, i64)>,
}

impl ShardMap {
    /// `group`'s replicas with the client URL each serves on, voters first
    /// (replicas on nodes the map does not list are left out).
    pub fn replica_urls(&self, group: u64) -> Vec<(&Replica, &str)> {
        let Some(g) = self.groups.get(&group) else {
            return vec![];
        };
        let mut rs: Vec<(&Replica, &str)> =
            g.replicas.iter().filter_map(|r| self.nodes.get(&r.node).map(|n| (r, n.client_url.as_str()))).collect();
        rs.sort_by_key(|(r, _)| r.learner);
        rs
    }

    /// The group lease `id` was granted on, if it still answers for it (its
    /// answer is the keepalive's): hashed from the id over `lease_homes`,
    /// else the ring, else every group — None once that group is draining
    /// or gone (the lease's copies answer then: placement copies a leaving
    /// group's leases to their new homes before it goes).
    pub fn lease_answerer(&self, id: i64) -> Option<u64> {
        let pool: Vec<u64> = if !self.lease_homes.is_empty() {
            self.lease_homes.clone()
        } else if !self.ring.is_empty() {
            self.ring.clone()
        } else {
            self.groups.keys().copied().collect()
        };
        let home = *pool.get((hash(&id.to_be_bytes()) % pool.len().max(1) as u64) as usize)?;
        self.serves_leases(home).then_some(home)
    }

    /// The group lease `id` is granted on (and copied to when its home
    /// leaves): its home while that serves, else hashed from the id over
    /// the pool's groups that still serve (the ring's, or every group's).
    pub fn lease_home(&self, id: i64) -> Option<u64> {
        if let Some(home) = self.lease_answerer(id) {
            return Some(home);
        }
        let serving = |pool: &[u64]| pool.iter().copied().filter(|g| self.serves_leases(*g)).collect::<Vec<u64>>();
        let mut pool = serving(&self.lease_homes);
        if pool.is_empty() {
            pool = serving(&self.ring);
        }
        if pool.is_empty() {
            pool = serving(&self.groups.keys().copied().collect::<Vec<_>>());
        }
        pool.get((hash(&id.to_be_bytes()) % pool.len().max(1) as u64) as usize).copied()
    }

    /// Fixes the lease homes as they are now (the pool `lease_answerer`
    /// hashes over), before a change to the ring or the groups would move
    /// them: a lease's home is where it was granted.
    pub fn freeze_lease_homes(&mut self) {
        if self.lease_homes.is_empty() {
            self.lease_homes = if self.ring.is_empty() { self.groups.keys().copied().collect() } else { self.ring.clone() };
        }
    }

    /// Whether `group` is in the map and not draining (it takes new leases).
    fn serves_leases(&self, group: u64) -> bool {
        self.groups.contains_key(&group) && !self.draining_groups.contains(&group)
    }
}

impl Default for ShardMap {
    fn default() -> Self {
        Self {
            epoch: 0,
            cluster_id: 0,
            depth: DEFAULT_DEPTH,
            next_group: 1,
            nodes: BTreeMap::new(),
            groups: BTreeMap::new(),
            ring: vec![],
            pins: BTreeMap::new(),
            spreads: BTreeMap::new(),
            moves: BTreeMap::new(),
            removed_groups: BTreeSet::new(),
            draining_groups: BTreeSet::new(),
            unit_pins: BTreeMap::new(),
            lease_homes: vec![],
            took_remainder: BTreeSet::new(),
        }
    }
}

enum Entry<'a> {
    Pin(u64),
    Spread(&'a [u64]),
}

/// A map ready to route by (the ring is built once per map version).
#[derive(Clone, Debug)]
pub struct Routing {
    pub map: ShardMap,
    ring: Ring,
}

impl ShardMap {
    pub fn routing(self) -> Routing {
        let ring = Ring::new(&self.ring);
        Routing { map: self, ring }
    }
}

/// The segment of `key` after `prefix`, up to and including the next `/`.
pub fn next_segment<'a>(key: &'a [u8], prefix: &[u8]) -> &'a [u8] {
    let rest = &key[prefix.len()..];
    match rest.iter().position(|b| *b == b'/') {
        Some(i) => &rest[..=i],
        None => rest,
    }
}

/// The group of `groups` a spread gives the keys whose next segment is
/// `segment` (a split moves a subtree where a spread would put it).
pub fn spread_group(segment: &[u8], groups: &[u64]) -> u64 {
    groups[(hash(segment) % groups.len() as u64) as usize]
}

impl Routing {
    pub fn epoch(&self) -> u64 {
        self.map.epoch
    }

    /// The longest pin or spread entry that prefixes `key`.
    fn entry(&self, key: &[u8]) -> Option<(&[u8], Entry<'_>)> {
        let pin = self.map.pins.iter().filter(|(p, _)| key.starts_with(p.as_bytes())).max_by_key(|(p, _)| p.len());
        let spread =
            self.map.spreads.iter().filter(|(p, g)| !g.is_empty() && key.starts_with(p.as_bytes())).max_by_key(|(p, _)| p.len());
        match (pin, spread) {
            (Some((p, g)), Some((s, _))) if p.len() >= s.len() => Some((p.as_bytes(), Entry::Pin(*g))),
            (_, Some((s, gs))) => Some((s.as_bytes(), Entry::Spread(gs))),
            (Some((p, g)), None) => Some((p.as_bytes(), Entry::Pin(*g))),
            (None, None) => None,
        }
    }

    /// The group that owns `key` (None: the map has no groups yet).
    pub fn group_of(&self, key: &[u8]) -> Option<u64> {
        match self.entry(key) {
            Some((_, Entry::Pin(g))) => Some(g),
            Some((p, Entry::Spread(gs))) => Some(spread_group(next_segment(key, p), gs)),
            None => self.unit_owner(placement_unit(key, self.map.depth)),
        }
    }

    /// The owner of placement unit `unit`'s keys that no pin or spread
    /// covers: its unit pin, else the ring.
    fn unit_owner(&self, unit: &[u8]) -> Option<u64> {
        match std::str::from_utf8(unit).ok().and_then(|u| self.map.unit_pins.get(u)) {
            Some(g) => Some(*g),
            None => self.ring.owner(unit),
        }
    }

    /// Whether the keys of placement unit `unit` (those no deeper pin or
    /// spread takes) are placed by the ring: no pin, spread or unit pin
    /// covers the unit itself.
    pub fn ring_places(&self, unit: &[u8]) -> bool {
        self.entry(unit).is_none() && !std::str::from_utf8(unit).is_ok_and(|u| self.map.unit_pins.contains_key(u))
    }

    /// The ring's owner of `unit`, whatever covers it.
    pub fn ring_owner(&self, unit: &[u8]) -> Option<u64> {
        self.ring.owner(unit)
    }

    /// Every group that may hold keys in `[key, range_end)` (etcd's range
    /// encoding: empty end = the single key), in id order.
    pub fn groups_for_range(&self, key: &[u8], range_end: &[u8]) -> Vec<u64> {
        if range_end.is_empty() {
            return self.group_of(key).into_iter().collect();
        }
        let common = common_prefix(key, range_end);
        let mut out = BTreeSet::new();
        // Entries deeper than the common prefix may own part of the range.
        for (p, g) in &self.map.pins {
            if p.as_bytes().starts_with(common) && crate::prefix_overlaps(p.as_bytes(), key, range_end) {
                out.insert(*g);
            }
        }
        for (p, gs) in &self.map.spreads {
            if p.as_bytes().starts_with(common) && crate::prefix_overlaps(p.as_bytes(), key, range_end) {
                out.extend(gs.iter().copied());
            }
        }
        match self.entry(common) {
            Some((_, Entry::Pin(g))) => {
                out.insert(g);
            }
            Some((_, Entry::Spread(gs))) => out.extend(gs.iter().copied()),
            None if prefix_fixes_unit(common, self.map.depth) => {
                out.extend(self.unit_owner(placement_unit(common, self.map.depth)))
            }
            None => {
                out.extend(self.map.ring.iter().copied());
                // Kept units' keys may fall in the range (a superset is safe).
                out.extend(self.map.unit_pins.values().copied());
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Routing {
        let mut m = ShardMap { ring: vec![1, 2, 3], ..Default::default() };
        m.pins.insert("/registry/pinned/".into(), 7);
        m.spreads.insert("/registry/leases/kube-node-lease/".into(), vec![4, 5]);
        m.routing()
    }

    #[test]
    fn siblings_share_a_group_and_pins_win() {
        let r = map();
        let a = r.group_of(b"/registry/pods/ns1/a").unwrap();
        assert_eq!(r.group_of(b"/registry/pods/ns2/b"), Some(a));
        assert_eq!(r.group_of(b"/registry/pinned/x/y"), Some(7));
        let s = r.group_of(b"/registry/leases/kube-node-lease/node-1").unwrap();
        assert!(s == 4 || s == 5);
        let spread: BTreeSet<u64> =
            (0..50).filter_map(|i| r.group_of(format!("/registry/leases/kube-node-lease/node-{i}").as_bytes())).collect();
        assert_eq!(spread.len(), 2);
    }

    #[test]
    fn ranges_touch_only_overlapping_groups() {
        let r = map();
        let pods = r.group_of(b"/registry/pods/x").unwrap();
        assert_eq!(r.groups_for_range(b"/registry/pods/", b"/registry/pods0"), vec![pods]);
        assert_eq!(r.groups_for_range(b"/registry/pinned/", b"/registry/pinned0"), vec![7]);
        assert_eq!(r.groups_for_range(b"", b"\0"), vec![1, 2, 3, 4, 5, 7]);
        let reg = r.groups_for_range(b"/registry/", b"/registry0");
        assert!(reg.contains(&7) && reg.contains(&4) && reg.contains(&1));
        // a range past every pinned prefix does not name the pinned group
        assert!(!r.groups_for_range(b"a", b"b").contains(&7));
    }

    #[test]
    fn a_unit_pin_keeps_only_its_units_keys() {
        let mut m = map().map;
        m.unit_pins.insert("/registry/".into(), 9);
        m.unit_pins.insert("".into(), 8);
        let before = map();
        let r = m.routing();
        assert_eq!(r.group_of(b"/registry/health"), Some(9));
        assert_eq!(r.group_of(b"compact_rev_key"), Some(8));
        // deeper units still follow the ring, pins still win
        assert_eq!(r.group_of(b"/registry/pods/ns/a"), before.group_of(b"/registry/pods/ns/a"));
        assert_eq!(r.group_of(b"/registry/pinned/x"), Some(7));
        assert_eq!(r.groups_for_range(b"/registry/health", b""), vec![9]);
        let all = r.groups_for_range(b"", b"\0");
        assert!(all.contains(&8) && all.contains(&9), "{all:?}");
        assert!(!r.ring_places(b"/registry/") && !r.ring_places(b"/registry/pinned/") && r.ring_places(b"/registry/pods/"));
    }

    #[test]
    fn a_lease_keeps_its_home_once_lease_homes_are_set() {
        let mut m = ShardMap { ring: vec![1, 2, 3], ..Default::default() };
        for g in 1..=4 {
            m.groups.insert(g, GroupInfo { id: g, replicas: vec![] });
        }
        let homes: Vec<Option<u64>> = (0..100).map(|id| m.lease_home(id)).collect();
        m.lease_homes = m.ring.clone();
        m.ring.push(4);
        assert_eq!((0..100).map(|id| m.lease_home(id)).collect::<Vec<_>>(), homes);
        assert_eq!(ShardMap::default().lease_home(1), None);
        // A home that drains stops answering; its leases get a new home
        // among the serving groups, the others keep theirs.
        let gone = homes[0].unwrap();
        m.draining_groups.insert(gone);
        for id in 0..100 {
            match homes[id as usize] {
                Some(h) if h == gone => {
                    assert_eq!(m.lease_answerer(id), None);
                    assert!(m.lease_home(id).is_some_and(|n| n != gone));
                }
                h => assert_eq!((m.lease_answerer(id), m.lease_home(id)), (h, h)),
            }
        }
    }
}

#[cfg(test)]
mod replica_url_tests {
    use super::*;

    #[test]
    fn replica_urls_list_voters_first_and_skip_unknown_nodes() {
        let mut m = ShardMap::default();
        for n in ["n1", "n2"] {
            m.nodes.insert(n.into(), NodeInfo { name: n.into(), peer_url: String::new(), client_url: format!("http://{n}") });
        }
        let r = |node: &str, learner| Replica { node: node.into(), member_id: 1, learner, initial: true };
        m.groups.insert(7, GroupInfo { id: 7, replicas: vec![r("n1", true), r("gone", false), r("n2", false)] });
        let got: Vec<(&str, &str)> = m.replica_urls(7).into_iter().map(|(r, u)| (r.node.as_str(), u)).collect();
        assert_eq!(got, [("n2", "http://n2"), ("n1", "http://n1")]);
        assert!(m.replica_urls(8).is_empty());
    }
}
