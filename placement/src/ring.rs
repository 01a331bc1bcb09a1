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
use shardmap::{prefix_end, ShardMap};
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

impl UnitWalk {
    /// Takes in a batch of keys (in order); where the listing goes on from
    /// (None: the end of the keyspace).
    pub(crate) fn take(&mut self, depth: usize, keys: &[Vec<u8>]) -> Option<Vec<u8>> {
        for k in keys {
            self.units.insert(placement_unit(k, depth).to_vec());
        }
        let last = keys.last()?;
        let unit = placement_unit(last, depth);
        if prefix_fixes_unit(unit, depth) {
            // Every key under a whole unit is the unit's: skip past it.
            let end = prefix_end(unit);
            return (end != [0]).then_some(end);
        }
        Some([last.as_slice(), &[0]].concat())
    }
}

/// A unit with `depth` slashes: a prefix that is exactly its keys.
fn whole(map: &ShardMap, unit: &[u8]) -> bool {
    unit.ends_with(b"/") && prefix_fixes_unit(unit, map.depth)
}

/// The map `m` with `ring` as its ring: kept units pinned to their old
/// owner, and the pins to `joined` / unit pins the new ring implies gone.
fn flipped(m: &mut ShardMap, ring: &[u64], joined: u64, kept: &[KeptUnit]) {
    if m.lease_homes.is_empty() {
        m.lease_homes = m.ring.clone();
    }
    m.ring = ring.to_vec();
    for k in kept {
        if whole(m, k.unit.as_bytes()) {
            m.pins.insert(k.unit.clone(), k.group);
        } else {
            m.unit_pins.insert(k.unit.clone(), k.group);
        }
    }
    drop_implied(m, joined);
}

/// Drops the pins to `group` of whole units, and the unit pins, that say
/// what the ring says (a map change that routes no key differently).
fn drop_implied(m: &mut ShardMap, group: u64) {
    let ring = Ring::new(&m.ring);
    let implied: Vec<String> = m
        .pins
        .iter()
        .filter(|(p, g)| **g == group && whole(m, p.as_bytes()) && ring.owner(p.as_bytes()) == Some(group))
        .filter(|(p, _)| {
            let mut without = m.clone();
            without.pins.remove(*p);
            without.routing().ring_places(p.as_bytes())
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
    /// The units holding keys on `group` (a linearizable listing).
    async fn units_of(&self, map: &ShardMap, group: u64) -> Result<UnitWalk> {
        let mut out = UnitWalk::default();
        let mut from = vec![0];
        loop {
            let (keys, more) = keys_page(self.dialer(), map, group, &from, &[0], LIST_BATCH).await?;
            match out.take(map.depth, &keys) {
                Some(next) if more => from = next,
                _ => return Ok(out),
            }
        }
    }

    /// Every unit holding keys on the groups of `map`'s ring.
    async fn ring_units(&self, map: &ShardMap) -> Result<BTreeSet<Vec<u8>>> {
        let mut all = BTreeSet::new();
        for g in &map.ring {
            all.extend(self.units_of(map, *g).await?.units);
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

    /// Moves the whole, movable units of `units` the ring `next` gives
    /// `group` there, one at a time.
    async fn move_units(
        &self,
        units: &[Vec<u8>],
        group: u64,
        next: &Ring,
        rate_bytes: u64,
        moves: &mut Vec<MoveReport>,
    ) -> Result<()> {
        for u in units {
            let map = self.map().await?;
            let unit = String::from_utf8_lossy(u).into_owned();
            // Movable: whole, and nothing pinned, spread or moving in or over it.
            if next.owner(u) != Some(group) || !crate::rebalance::movable(&map, &unit) {
                continue;
            }
            let done = moves.len();
            moves.push(self.move_in_batch(&unit, group, rate_bytes, done, "ring join").await?);
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
        let mut report = RingJoined { group, moves: vec![], kept: vec![], flip_ms: 0, epoch: map.epoch };
        if map.ring.contains(&group) {
            return Ok(report); // joined before
        }
        let ring: Vec<u64> = map.ring.iter().copied().chain([group]).collect();
        let next = Ring::new(&ring);
        let listed: Vec<Vec<u8>> = self.ring_units(&map).await?.into_iter().collect();
        self.move_units(&listed, group, &next, rate_bytes, &mut report.moves).await?;
        let (kept, flip_ms, epoch) = self.flip_ring(&ring, group).await?;
        report.flip_ms = flip_ms;
        report.epoch = epoch;
        // Settle: the whole units kept on their old owners move on to
        // `group` now that the ring gives it to them, and their pins go
        // (not those with pins or spreads inside: a move of a prefix whose
        // parts stay elsewhere moves no data; they stay pinned).
        let map = self.map().await?;
        let settles = |k: &&KeptUnit| {
            let mut m = map.clone();
            m.pins.remove(&k.unit);
            crate::rebalance::movable(&m, &k.unit)
        };
        for k in kept.iter().filter(settles) {
            let done = report.moves.len();
            report.moves.push(self.move_in_batch(&k.unit, group, rate_bytes, done, "ring join").await?);
        }
        let settled = self
            .store
            .update(|m| {
                let before = (m.pins.len(), m.unit_pins.len());
                drop_implied(m, group);
                Ok::<_, PlacementError>((m.pins.len(), m.unit_pins.len()) != before)
            })
            .await?;
        report.epoch = settled.epoch;
        report.kept =
            kept.into_iter().filter(|k| settled.pins.get(&k.unit).or(settled.unit_pins.get(&k.unit)) == Some(&k.group)).collect();
        Ok(report)
    }

    /// Step 2 of the module doc: the ring becomes `ring` (with `joined`) at
    /// a fenced epoch. Answers the units kept on their old owners, how
    /// long the ring's groups refused older maps (ms) and the epoch.
    async fn flip_ring(&self, ring: &[u64], joined: u64) -> Result<(Vec<KeptUnit>, u64, u64)> {
        let next = Ring::new(ring);
        for _ in 0..ATTEMPTS {
            let map = self.no_moves_in_flight().await?;
            let epoch = map.epoch + 1;
            let started = Instant::now();
            let fenced = async {
                let (_, revision) = fence(self.dialer(), &map, "", &map.ring, epoch).await?;
                raise(self.dialer(), &map, &[joined], revision).await?;
                self.ring_units(&map).await
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
                        flipped(m, ring, joined, &kept);
                    }
                    Ok::<_, PlacementError>(!raced)
                })
                .await?;
            if !raced {
                return Ok((kept, started.elapsed().as_millis() as u64, committed.epoch));
            }
            tracing::info!(epoch, now = committed.epoch, "map changed while fencing the ring; fencing again");
        }
        Err(PlacementError::unavailable("the map kept changing while fencing the ring; run the join again"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_skips_whole_units_and_steps_through_shallow_keys() {
        let mut w = UnitWalk::default();
        let keys = |ks: &[&str]| ks.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();
        let next = w.take(3, &keys(&["/registry/health", "/registry/pods/ns/a", "/registry/pods/ns/b"]));
        assert_eq!(next.as_deref(), Some(&b"/registry/pods0"[..]));
        let next = w.take(3, &keys(&["compact_rev_key"]));
        assert_eq!(next.as_deref(), Some(&b"compact_rev_key\0"[..]));
        let units: Vec<&[u8]> = w.units.iter().map(Vec::as_slice).collect();
        assert_eq!(units, [&b""[..], b"/registry/", b"/registry/pods/"]);
        assert_eq!(w.take(3, &[]), None);
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
        flipped(&mut after, &[1, 2, 3], 3, &kept);
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
}
