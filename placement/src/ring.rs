//! A group joining the consistent-hash ring with its share of the data
//! (`tessera group add --ring`, `tessera group join`).
//!
//! Adding group N to ring R changes the owner of exactly the units R + N
//! hashes to N (~1/N of them, each from one old owner); nothing else moves.
//! `join_ring` does it online:
//!
//! 1. **Move.** It lists the units holding keys on every ring group
//!    (keys-only ranges that skip each whole unit once seen) and moves each
//!    whole unit (`depth` slashes, no pin, spread or move in or over it)
//!    the new ring gives N, with the move protocol (`crate::moves`), one at
//!    a time; meanwhile the moved units are pinned to N.
//! 2. **Flip** at epoch E: every ring group fences every key at E (the
//!    empty prefix: calls routed by an older map are refused, and the
//!    router routes them again by E — any unit might change owner), N is
//!    raised past their revisions, and their units are listed again — now
//!    final, as nothing routed by an older map lands any more. The map
//!    commits at E if it is still at E − 1: N joins the ring; a unit still
//!    holding keys on an old owner that the new ring would give N (created
//!    since the listing, too shallow to move as a prefix, or with pins in
//!    it) is kept there — a pin for a whole unit, a *unit pin* for a
//!    shallow one (only its own keys: `""`, `/registry/`); the pins to N
//!    the ring now implies go; lease homes stay the old ring's groups (a
//!    lease's home is where it was granted). If the map changed while
//!    fencing, it fences again at the next epoch.
//! 3. **Settle.** The whole units kept on their old owner move to N as in
//!    step 1 and their pins go; shallow ones stay (unit pins).
//!
//! **Leaving** (`leave_ring`, the first step of `group drain` for a ring
//! group) is the same with the ring minus the group: its units move to the
//! groups the smaller ring names, then the flip fences only the leaving
//! group (only its units change owner), raises the others past it, lists
//! its units again and keeps those it still holds pinned (or unit-pinned)
//! to it; the drain then moves its pins, and its unit pins go with its
//! remainder (`Placement::move_remainder`).
//!
//! The flip pauses every call routed by the old map on the ring's groups
//! for its fence → commit (milliseconds: one fence entry per group, a
//! keys-only listing that skips whole units, one map write). A join cut
//! short (a move rolled back, placement gone) is run again and does what is
//! left: moved units are pinned to N, so listing again skips them.

use crate::api::{KeptUnit, MoveReport, RingJoined};
use crate::error::{PlacementError, Result};
use crate::members::keys_page;
use crate::ops::Placement;
use crate::ownership::{fence, raise};
use shardmap::ring::Ring;
use shardmap::unit::{placement_unit, prefix_fixes_unit};
use shardmap::{prefix_end, strictly_under, ShardMap};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Keys read per listing call (most calls end in a unit the next skips).
const LIST_BATCH: i64 = 100;
/// How often the flip is fenced again when the map keeps changing under it.
const ATTEMPTS: usize = 5;
/// How long a join waits for moves already in flight to end.
const MOVES_WAIT: Duration = Duration::from_secs(120);

/// The placement units a group holds keys of, from keys-only listings.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct UnitWalk {
    pub units: BTreeSet<Vec<u8>>,
}

/// Which keys a walk goes by: every key the group holds, or only those the
/// ring places (a ring change moves only those: a unit listed for keys a
/// split's subtree pin holds there would be kept by a needless pin, which
/// a drain cannot move with the subtree pinned elsewhere).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Counted {
    All,
    RingPlaced,
}

/// Whether the ring places `key` (of unit `unit`): no pin or spread covers
/// it and no unit pin names its unit.
fn ring_placed(map: &ShardMap, key: &[u8], unit: &[u8]) -> bool {
    !map.pins.keys().chain(map.spreads.keys()).any(|p| key.starts_with(p.as_bytes()))
        && !std::str::from_utf8(unit).is_ok_and(|u| map.unit_pins.contains_key(u))
}

impl UnitWalk {
    /// Takes in a batch of keys (in order); where the listing goes on from
    /// (None: the end of the keyspace).
    pub(crate) fn take(&mut self, map: &ShardMap, keys: &[Vec<u8>], counted: Counted) -> Option<Vec<u8>> {
        let depth = map.depth;
        for k in keys {
            let unit = placement_unit(k, depth);
            if counted == Counted::All || ring_placed(map, k, unit) {
                self.units.insert(unit.to_vec());
            }
        }
        let last = keys.last()?;
        let unit = placement_unit(last, depth);
        let placed_inside = |p: &String| p.len() > unit.len() && p.as_bytes().starts_with(unit);
        let deeper: Vec<&String> = map.pins.keys().chain(map.spreads.keys()).filter(|p| placed_inside(p)).collect();
        // Its keys are not placed alike until one of them is listed.
        let mixed = counted == Counted::RingPlaced && !deeper.is_empty() && !self.units.contains(unit);
        if mixed {
            // Past the deeper pin or spread the last key is under, else
            // key by key.
            if let Some(p) = deeper.iter().filter(|p| last.starts_with(p.as_bytes())).max_by_key(|p| p.len()) {
                return Some(prefix_end(p.as_bytes()));
            }
        } else if prefix_fixes_unit(unit, depth) {
            // Every key under a whole unit is the unit's (and it is listed,
            // or none of its keys will be): skip past it.
            let end = prefix_end(unit);
            return (end != [0]).then_some(end);
        }
        Some([last.as_slice(), &[0]].concat())
    }
}

/// A unit with exactly `depth` slashes: a prefix that is exactly its keys,
/// and that the ring hashes as it hashes them (a deeper prefix — a split's
/// subtree pin — is hashed by its unit, not by itself).
pub(crate) fn whole(map: &ShardMap, unit: &[u8]) -> bool {
    unit.ends_with(b"/") && unit.iter().filter(|b| **b == b'/').count() == map.depth
}

/// The map `m` with `ring` as its ring: kept units pinned to their old
/// owner, and the pins to `gaining` / unit pins the new ring implies gone.
/// A whole unit with pins or spreads inside (a split's) is unit-pinned: a
/// pin over it could not move while its subtrees are placed elsewhere, and
/// a leaving group's unit pins go with its remainder.
fn flipped(m: &mut ShardMap, ring: &[u64], gaining: &[u64], kept: &[KeptUnit]) {
    m.freeze_lease_homes();
    m.ring = ring.to_vec();
    for k in kept {
        let placed_inside = m.pins.keys().chain(m.spreads.keys()).any(|p| strictly_under(p, &k.unit));
        if whole(m, k.unit.as_bytes()) && !placed_inside {
            m.pins.insert(k.unit.clone(), k.group);
        } else {
            m.unit_pins.insert(k.unit.clone(), k.group);
        }
    }
    drop_implied(m, gaining);
}

/// Drops the pins to `groups` of whole units, and the unit pins, that say
/// what the ring says (a map change that routes no key differently).
fn drop_implied(m: &mut ShardMap, groups: &[u64]) {
    let ring = Ring::new(&m.ring);
    let implied: Vec<String> = m
        .pins
        .iter()
        .filter(|(p, g)| groups.contains(g) && whole(m, p.as_bytes()) && ring.owner(p.as_bytes()) == Some(**g))
        // Without the pin the ring places the unit: no shorter pin or
        // spread covers it, and no unit pin names it.
        .filter(|(p, _)| {
            let shorter = m.pins.keys().chain(m.spreads.keys()).any(|q| q.len() < p.len() && p.starts_with(q.as_str()));
            !shorter && !m.unit_pins.contains_key(*p)
        })
        .map(|(p, _)| p.clone())
        .collect();
    for p in implied {
        m.pins.remove(&p);
    }
    m.unit_pins.retain(|u, g| ring.owner(u.as_bytes()) != Some(*g));
}

/// The units of `listed` (holding keys on the ring's groups) whose keys
/// the ring places and that `next` gives another group than the map's
/// ring: each with the group it stays on.
fn changing(map: &ShardMap, listed: &BTreeSet<Vec<u8>>, next: &Ring) -> Vec<KeptUnit> {
    let routing = map.clone().routing();
    listed
        .iter()
        .filter(|u| routing.ring_places(u))
        .filter_map(|u| {
            let was = routing.ring_owner(u)?;
            (next.owner(u) != Some(was)).then(|| KeptUnit { unit: String::from_utf8_lossy(u).into_owned(), group: was })
        })
        .collect()
}

impl Placement {
    /// The units holding keys on `group` (a linearizable listing), of
    /// every key or of those the ring places.
    pub(crate) async fn units_of(&self, map: &ShardMap, group: u64, counted: Counted) -> Result<UnitWalk> {
        let mut out = UnitWalk::default();
        let mut from = vec![0];
        loop {
            let (keys, more) = keys_page(self.dialer(), map, group, &from, &[0], LIST_BATCH).await?;
            match out.take(map, &keys, counted) {
                Some(next) if more => from = next,
                _ => return Ok(out),
            }
        }
    }

    /// Every unit holding keys the ring places on `groups` (listed
    /// concurrently: a flip lists while older maps' calls wait).
    async fn units_on(&self, map: &ShardMap, groups: &[u64]) -> Result<BTreeSet<Vec<u8>>> {
        let walks = futures::future::join_all(groups.iter().map(|g| self.units_of(map, *g, Counted::RingPlaced))).await;
        let mut all = BTreeSet::new();
        for w in walks {
            all.extend(w?.units);
        }
        Ok(all)
    }

    /// Waits (bounded) until no move is in flight: the flip lists units as
    /// the map places them, and a move changes that under it.
    async fn no_moves_in_flight(&self) -> Result<ShardMap> {
        let until = Instant::now() + MOVES_WAIT;
        loop {
            let map = self.map().await?;
            match map.moves.keys().next() {
                None => return Ok(map),
                Some(p) if Instant::now() > until => {
                    return Err(PlacementError::conflict(format!(
                        "a move of {p:?} is still in flight (see `tessera moves`); run the join again when it is done"
                    )))
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Moves each whole, movable unit of `units` to the group `to` names
    /// for it (None: it stays), one at a time.
    async fn move_units(
        &self,
        units: &[Vec<u8>],
        to: impl Fn(&[u8]) -> Option<u64>,
        rate_bytes: u64,
        moves: &mut Vec<MoveReport>,
        batch: &str,
    ) -> Result<()> {
        for u in units {
            let map = self.map().await?;
            let unit = String::from_utf8_lossy(u).into_owned();
            // Movable: whole, and nothing pinned, spread or moving in or over it.
            let Some(group) = to(u).filter(|_| crate::rebalance::movable(&map, &unit)) else {
                continue;
            };
            let done = moves.len();
            moves.push(self.move_in_batch(&unit, group, rate_bytes, done, batch).await?);
        }
        Ok(())
    }

    /// Group `group` joins the ring with the units it then owns (module doc).
    pub async fn join_ring(&self, group: u64, rate_bytes: u64) -> Result<RingJoined> {
        let map = self.map().await?;
        if !map.groups.contains_key(&group) {
            return Err(PlacementError::not_found(format!("no group {group}")));
        }
        if map.draining_groups.contains(&group) {
            return Err(PlacementError::conflict(format!("group {group} is draining: it takes nothing")));
        }
        if map.ring.contains(&group) {
            return Ok(RingJoined { group, moves: vec![], kept: vec![], flip_ms: 0, epoch: map.epoch });
            // joined before
        }
        let ring: Vec<u64> = map.ring.iter().copied().chain([group]).collect();
        let flip = Flip { from: map.ring.clone(), ring, fenced: map.ring.clone(), gaining: vec![group] };
        self.change_ring(&map, &flip, group, rate_bytes, "ring join").await
    }

    /// A ring change with the data (module doc): the units the fenced
    /// groups hold move to the gaining group the new ring names for each,
    /// the ring flips, kept whole units then move on and their pins go.
    async fn change_ring(&self, map: &ShardMap, flip: &Flip, group: u64, rate_bytes: u64, batch: &str) -> Result<RingJoined> {
        let mut report = RingJoined { group, moves: vec![], kept: vec![], flip_ms: 0, epoch: map.epoch };
        let next = Ring::new(&flip.ring);
        let to = |u: &[u8]| next.owner(u).filter(|g| flip.gaining.contains(g));
        let listed: Vec<Vec<u8>> = self.units_on(map, &flip.fenced).await?.into_iter().collect();
        self.move_units(&listed, to, rate_bytes, &mut report.moves, batch).await?;
        let (kept, flip_ms, epoch) = self.flip_ring(flip).await?;
        report.flip_ms = flip_ms;
        report.epoch = epoch;
        // Settle: the whole units kept on their old owners move on to
        // their new owner now that the ring names it, and their pins go
        // (not those with pins or spreads inside: a move of a prefix whose
        // parts stay elsewhere moves no data; they stay pinned).
        let map = self.map().await?;
        let settles = |k: &&KeptUnit| {
            let mut m = map.clone();
            m.pins.remove(&k.unit);
            crate::rebalance::movable(&m, &k.unit)
        };
        for k in kept.iter().filter(settles) {
            let Some(to) = to(k.unit.as_bytes()) else { continue };
            let done = report.moves.len();
            report.moves.push(self.move_in_batch(&k.unit, to, rate_bytes, done, batch).await?);
        }
        let settled = self
            .store
            .update(|m| {
                let before = (m.pins.len(), m.unit_pins.len());
                drop_implied(m, &flip.gaining);
                Ok::<_, PlacementError>((m.pins.len(), m.unit_pins.len()) != before)
            })
            .await?;
        report.epoch = settled.epoch;
        report.kept =
            kept.into_iter().filter(|k| settled.pins.get(&k.unit).or(settled.unit_pins.get(&k.unit)) == Some(&k.group)).collect();
        Ok(report)
    }

    /// Step 2 of the module doc: the ring becomes `flip.ring` at a fenced
    /// epoch. Answers the units kept on their old owners, how long the
    /// fenced groups refused older maps (ms) and the epoch.
    async fn flip_ring(&self, flip: &Flip) -> Result<(Vec<KeptUnit>, u64, u64)> {
        let (ring, gaining) = (&flip.ring, &flip.gaining);
        let next = Ring::new(ring);
        for _ in 0..ATTEMPTS {
            let map = self.no_moves_in_flight().await?;
            if map.ring != flip.from {
                // Another join or drain flipped the ring meanwhile: this
                // one's ring (and its moves) were planned from the old one.
                return Err(PlacementError::conflict(format!(
                    "the ring changed to {:?} while this change was planned from {:?}; run the command again",
                    map.ring, flip.from
                )));
            }
            let epoch = map.epoch + 1;
            let started = Instant::now();
            let fenced = async {
                let (_, revision) = fence(self.dialer(), &map, "", &flip.fenced, epoch, false).await?;
                raise(self.dialer(), &map, gaining, revision).await?;
                self.units_on(&map, &flip.fenced).await
            };
            let listed = match fenced.await {
                Ok(l) => l,
                Err(e) => {
                    self.lift(epoch).await;
                    return Err(e);
                }
            };
            let kept = changing(&map, &listed, &next);
            let mut raced = false;
            let committed = self
                .store
                .update(|m| {
                    raced = m.epoch != map.epoch;
                    if !raced {
                        flipped(m, ring, gaining, &kept);
                    }
                    Ok::<_, PlacementError>(!raced)
                })
                .await?;
            if !raced {
                return Ok((kept, started.elapsed().as_millis() as u64, committed.epoch));
            }
            tracing::info!(epoch, now = committed.epoch, "map changed while fencing the ring; fencing again");
        }
        Err(PlacementError::unavailable("the map kept changing while fencing the ring; run the command again"))
    }

    /// Group `group` leaves the ring, giving each unit it holds to the
    /// group the ring without it names (module doc, "Leaving"). Units it
    /// keeps (shallow ones, or whole ones with pins inside) stay pinned or
    /// unit-pinned to it, for the drain to move.
    pub(crate) async fn leave_ring(&self, group: u64, rate_bytes: u64) -> Result<RingJoined> {
        let map = self.map().await?;
        if !map.ring.contains(&group) {
            return Ok(RingJoined { group, moves: vec![], kept: vec![], flip_ms: 0, epoch: map.epoch });
            // left before
        }
        if let Some(why) = cannot_leave(&map, group) {
            return Err(PlacementError::conflict(why));
        }
        let ring: Vec<u64> = map.ring.iter().copied().filter(|g| *g != group).collect();
        // Only the leaving group's units change owner: it alone is fenced;
        // the others are raised past it (a unit whose keys it deleted
        // starts on its new owner above that history).
        let flip = Flip { from: map.ring.clone(), ring: ring.clone(), fenced: vec![group], gaining: ring };
        self.change_ring(&map, &flip, group, rate_bytes, "drain").await
    }
}

/// Why `group` cannot leave the ring, if it cannot: it is the only group
/// on it (the ring's units would have no owner).
pub(crate) fn cannot_leave(map: &ShardMap, group: u64) -> Option<String> {
    (map.ring == [group])
        .then(|| format!("group {group} is the only group on the ring: add another with `tessera group add --ring` first"))
}

/// A ring change: the ring it was planned from, the new ring, the groups
/// whose units change owner (they are fenced and listed) and those that
/// gain units (raised past them).
struct Flip {
    from: Vec<u64>,
    ring: Vec<u64>,
    fenced: Vec<u64>,
    gaining: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_skips_whole_units_and_steps_through_shallow_keys() {
        let mut w = UnitWalk::default();
        let m = ShardMap { depth: 3, ..Default::default() };
        let keys = |ks: &[&str]| ks.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();
        let next = w.take(&m, &keys(&["/registry/health", "/registry/pods/ns/a", "/registry/pods/ns/b"]), Counted::All);
        assert_eq!(next.as_deref(), Some(&b"/registry/pods0"[..]));
        let next = w.take(&m, &keys(&["compact_rev_key"]), Counted::All);
        assert_eq!(next.as_deref(), Some(&b"compact_rev_key\0"[..]));
        let units: Vec<&[u8]> = w.units.iter().map(Vec::as_slice).collect();
        assert_eq!(units, [&b""[..], b"/registry/", b"/registry/pods/"]);
        assert_eq!(w.take(&m, &[], Counted::All), None);
    }

    #[test]
    fn a_ring_walk_leaves_out_keys_a_pin_places_and_skips_past_the_pin() {
        let mut m = ShardMap { depth: 3, ..Default::default() };
        m.pins.insert("/registry/pods/ns2/".into(), 1);
        m.unit_pins.insert("".into(), 1);
        let keys = |ks: &[&str]| ks.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();
        let mut w = UnitWalk::default();
        // A split unit whose keys here are all its pinned subtree's: not listed.
        let next = w.take(&m, &keys(&["compact_rev_key", "/registry/pods/ns2/a", "/registry/pods/ns2/b"]), Counted::RingPlaced);
        assert_eq!(next.as_deref(), Some(&b"/registry/pods/ns20"[..]));
        assert!(w.units.is_empty(), "{:?}", w.units);
        // One ring-placed key of it lists it; the walk then skips past it.
        let next = w.take(&m, &keys(&["/registry/pods/ns3/a"]), Counted::RingPlaced);
        assert_eq!(next.as_deref(), Some(&b"/registry/pods0"[..]));
        assert_eq!(w.units.iter().map(Vec::as_slice).collect::<Vec<_>>(), [&b"/registry/pods/"[..]]);
    }

    fn map() -> ShardMap {
        ShardMap { ring: vec![1, 2], ..Default::default() }
    }

    #[test]
    fn units_the_new_ring_gives_away_are_kept_and_implied_pins_go() {
        let mut m = map();
        let next = Ring::new(&[1, 2, 3]);
        let units: Vec<String> = (0..60).map(|i| format!("/r/kind{i}/")).chain(["/r/".into(), "".into()]).collect();
        let to3: Vec<&String> = units.iter().filter(|u| next.owner(u.as_bytes()) == Some(3)).collect();
        assert!(to3.len() > 5, "{to3:?}");
        // One unit moved before the flip (pinned to 3), another pinned by an admin to 3.
        m.pins.insert(to3[0].clone(), 3);
        m.pins.insert("/admin/".into(), 3);
        let listed: BTreeSet<Vec<u8>> = units.iter().map(|u| u.as_bytes().to_vec()).collect();
        let kept = changing(&m, &listed, &next);
        let before = m.clone().routing();
        assert!(kept.iter().all(|k| k.unit != *to3[0]), "a pinned unit is not the ring's");
        assert_eq!(kept.len(), units.iter().filter(|u| next.owner(u.as_bytes()) == Some(3)).count() - 1);
        let mut after = m.clone();
        flipped(&mut after, &[1, 2, 3], &[3], &kept);
        assert_eq!(after.lease_homes, vec![1, 2]);
        assert!(!after.pins.contains_key(to3[0].as_str()), "the moved unit's pin is implied by the ring");
        assert_eq!(after.pins.get("/admin/"), Some(&3), "a pin that is not a whole unit stays");
        let r = after.clone().routing();
        // Every listed unit's keys stay where they are; a new unit goes by the new ring.
        for u in &units {
            let key = format!("{u}ns/x").into_bytes();
            let key = if whole(&after, u.as_bytes()) { key } else { format!("{u}leaf").into_bytes() };
            assert_eq!(r.group_of(&key), before.group_of(&key), "{u}");
        }
        assert!(after.unit_pins.keys().all(|u| !whole(&after, u.as_bytes())));
        let fresh = (0..200).map(|i| format!("/new/k{i}/")).find(|u| next.owner(u.as_bytes()) == Some(3)).unwrap();
        assert_eq!(r.group_of(format!("{fresh}a").as_bytes()), Some(3));
    }

    #[test]
    fn a_leaving_group_keeps_what_it_holds_until_the_drain_moves_it() {
        let m = ShardMap { ring: vec![1, 2, 3], ..Default::default() };
        let now = Ring::new(&[1, 2, 3]);
        let next = Ring::new(&[1, 2]);
        let units: Vec<String> = (0..60).map(|i| format!("/r/kind{i}/")).chain(["/r/".into(), "".into()]).collect();
        let on3: BTreeSet<Vec<u8>> =
            units.iter().filter(|u| now.owner(u.as_bytes()) == Some(3)).map(|u| u.as_bytes().to_vec()).collect();
        assert!(on3.len() > 5);
        let kept = changing(&m, &on3, &next);
        assert_eq!(kept.len(), on3.len(), "every unit it holds changes owner");
        assert!(kept.iter().all(|k| k.group == 3));
        let mut after = m.clone();
        flipped(&mut after, &[1, 2], &[1, 2], &kept);
        assert_eq!((after.ring.clone(), after.lease_homes.clone()), (vec![1, 2], vec![1, 2, 3]));
        let (before, r) = (m.clone().routing(), after.clone().routing());
        for u in &units {
            let key = if whole(&after, u.as_bytes()) { format!("{u}ns/x") } else { format!("{u}leaf") };
            assert_eq!(r.group_of(key.as_bytes()), before.group_of(key.as_bytes()), "{u}");
        }
        // A kept unit split before (subtrees pinned inside) is unit-pinned:
        // its own keys stay, its subtrees go where their pins say.
        let mut split_kept = m.clone();
        let split_unit = kept.iter().find(|k| whole(&m, k.unit.as_bytes())).unwrap().unit.clone();
        split_kept.pins.insert(format!("{split_unit}ns1/"), 1);
        flipped(&mut split_kept, &[1, 2], &[1, 2], &kept);
        assert_eq!(split_kept.unit_pins.get(&split_unit), Some(&3));
        assert!(!split_kept.pins.contains_key(&split_unit));
        let r = split_kept.routing();
        assert_eq!(r.group_of(format!("{split_unit}ns1/a").as_bytes()), Some(1));
        assert_eq!(r.group_of(format!("{split_unit}ns2/a").as_bytes()), Some(3));
        // A split's subtree pin (deeper than a unit) stays, whatever the
        // ring hashes its own letters to.
        let mut split = m.clone();
        let deep: Vec<String> = (0..40).map(|i| format!("/r/kind0/ns{i}/")).collect();
        for p in &deep {
            split.pins.insert(p.clone(), if next.owner(p.as_bytes()) == Some(1) { 1 } else { 2 });
        }
        drop_implied(&mut split, &[1, 2]);
        assert_eq!(split.pins.len(), deep.len(), "a subtree pin is not implied by the ring");
        // A unit it did not hold goes by the smaller ring at once.
        let fresh = (0..200).map(|i| format!("/new/k{i}/")).find(|u| now.owner(u.as_bytes()) == Some(3)).unwrap();
        assert_ne!(r.group_of(format!("{fresh}a").as_bytes()), Some(3));
    }
}
