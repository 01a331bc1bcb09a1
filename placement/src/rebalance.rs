//! Rebalancing: moves placement units between groups when a group holds or
//! takes much more than the mean (`tessera rebalance`, and placement's own
//! loop with `--rebalance-every`). The plan is a pure function of the
//! groups and two samples of the unit statistics (`units.rs`), so it can be
//! explained (`--dry-run`) and tested; it is carried out one move at a time
//! (`moves.rs`), at most `max_moves` per round.
//!
//! Rules, for bytes and then for writes per second (each only past an
//! absolute floor, so a small federation is left alone):
//! - while a group is above the mean by more than `margin`, it gives one
//!   unit to the group lowest in that measure: the unit that brings the two
//!   closest (at most half their difference, so a move never overshoots),
//!   up to `max_moves` in a round;
//! - for writes, a unit that alone is above the mean by more than the
//!   margin cannot be helped by moves (its group stays above wherever it
//!   is, whatever else moves away): it is split, its
//!   subtrees spread over every group (`crate::split`), and the round ends
//!   (the next one sees the groups as the split left them). Sizes are
//!   evened out by whole units only.
//!
//! Only whole units move (prefixes with the map's depth of slashes, so a
//! pin of one covers exactly its keys), and never one under a pin, a spread
//! or a move in flight: those an admin placed.

use crate::api::{PlannedMove, RebalancePlan, RebalanceRequest, UnitsReport};
use crate::error::Result;
use crate::ops::Placement;
use serde::{Deserialize, Serialize};
use shardmap::ShardMap;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Thresholds of a rebalancing round.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// How far above the mean a group may go (0.2: 20 %).
    pub margin: f64,
    /// Below this many bytes in the fullest group, sizes are left alone.
    pub min_bytes: u64,
    /// Below this many writes per second on the busiest group, load is left alone.
    pub min_writes_per_s: f64,
    /// Moves per round at most.
    pub max_moves: usize,
}

impl Thresholds {
    pub fn validate(&self) -> std::result::Result<(), crate::error::PlacementError> {
        if !self.margin.is_finite() || self.margin < 0.0 {
            return Err(crate::error::PlacementError::invalid("the rebalancing margin must be 0 or more"));
        }
        if self.min_writes_per_s.is_nan() || self.min_writes_per_s < 0.0 || self.max_moves == 0 {
            return Err(crate::error::PlacementError::invalid("the write floor must be 0 or more, and max moves at least 1"));
        }
        Ok(())
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { margin: 0.2, min_bytes: 64 << 20, min_writes_per_s: 500.0, max_moves: 1 }
    }
}

/// One unit's figures between the two samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    pub unit: String,
    pub group: u64,
    pub bytes: u64,
    pub writes_per_s: f64,
}

/// The units of two samples, with write rates.
pub fn units_between(first: &UnitsReport, second: &UnitsReport) -> Vec<Unit> {
    let secs = second.at_ms.saturating_sub(first.at_ms) as f64 / 1000.0;
    let before: BTreeMap<(&str, u64), u64> = first.units.iter().map(|u| ((u.unit.as_str(), u.group), u.writes)).collect();
    second
        .units
        .iter()
        .map(|u| {
            let then = before.get(&(u.unit.as_str(), u.group)).copied().unwrap_or(0);
            let writes_per_s = if secs > 0.0 { u.writes.saturating_sub(then) as f64 / secs } else { 0.0 };
            Unit { unit: u.unit.clone(), group: u.group, bytes: u.bytes, writes_per_s }
        })
        .collect()
}

/// Whether the unit may be moved by the rebalancer.
pub(crate) fn movable(map: &ShardMap, unit: &str) -> bool {
    let whole = unit.ends_with('/') && unit.matches('/').count() == map.depth;
    let placed = map
        .pins
        .keys()
        .chain(map.spreads.keys())
        .chain(map.moves.keys())
        .any(|p| unit.starts_with(p.as_str()) || p.starts_with(unit));
    whole && !placed
}

/// The plan for one round.
pub fn plan(map: &ShardMap, units: &[Unit], t: &Thresholds) -> RebalancePlan {
    plan_knowing(map, units, t, &BTreeSet::new())
}

/// The plan for one round, knowing which hot units a split found nothing
/// to spread in (they are not planned as splits again).
pub fn plan_knowing(map: &ShardMap, units: &[Unit], t: &Thresholds, unsplittable: &BTreeSet<String>) -> RebalancePlan {
    let mut moves: Vec<PlannedMove> = vec![];
    let mut notes: Vec<String> = vec![];
    // A draining group gives its units away (`group drain`): it takes none.
    let groups: Vec<u64> = map.groups.keys().copied().filter(|g| !map.draining_groups.contains(g)).collect();
    for g in &map.draining_groups {
        notes.push(format!("group {g} is draining: left out"));
    }
    if groups.len() < 2 {
        notes.push("one group: nothing to balance".into());
        return RebalancePlan { moves, notes, executed: vec![] };
    }
    // Per group, as the moves planned so far leave it.
    let mut units: Vec<Unit> = units.iter().filter(|u| groups.contains(&u.group)).cloned().collect();
    for (measure, floor) in [("bytes", t.min_bytes as f64), ("writes", t.min_writes_per_s)] {
        let of = |u: &Unit| if measure == "bytes" { u.bytes as f64 } else { u.writes_per_s };
        let totals = |units: &[Unit]| {
            let mut by: BTreeMap<u64, f64> = groups.iter().map(|g| (*g, 0.0)).collect();
            for u in units {
                *by.entry(u.group).or_default() += of(u);
            }
            by
        };
        loop {
            let by = totals(&units);
            let mean = by.values().sum::<f64>() / by.len() as f64;
            let (&top, &high) = by.iter().max_by(|a, b| a.1.total_cmp(b.1)).expect("groups");
            let (&low_g, &low) = by.iter().min_by(|a, b| a.1.total_cmp(b.1)).expect("groups");
            if high < floor {
                notes.push(format!(
                    "{measure}: the busiest group (group {top}, {}) is below the floor ({}): left alone",
                    fmt(measure, high),
                    fmt(measure, floor)
                ));
                break;
            }
            if high <= mean * (1.0 + t.margin) {
                notes.push(format!(
                    "{measure}: every group within {:.0}% of the mean ({})",
                    t.margin * 100.0,
                    fmt(measure, mean)
                ));
                break;
            }
            if moves.len() >= t.max_moves {
                notes.push(format!(
                    "{measure}: group {top} is still above the margin; more moves next round (at most {} per round)",
                    t.max_moves
                ));
                break;
            }
            // The unit that brings `top` and `low` closest without overshooting.
            let want = (high - low) / 2.0;
            if measure == "writes" {
                // A unit that alone is above the mean by more than the margin
                // keeps whichever group holds it there (moves only move the
                // hot spot, and moving its neighbours away does not help):
                // its subtrees are spread instead.
                let limit = mean * (1.0 + t.margin);
                let hottest =
                    units.iter().filter(|u| u.group == top && movable(map, &u.unit)).max_by(|a, b| of(a).total_cmp(&of(b)));
                if let Some(hot) = hottest.filter(|u| of(u) > limit) {
                    if unsplittable.contains(&hot.unit) {
                        notes.push(format!(
                            "writes: unit {} alone takes {}, above the mean and margin ({}), but a split of it found nothing to spread (its keys are leaves, or its subtrees already where a spread puts them): left where it is",
                            hot.unit,
                            fmt(measure, of(hot)),
                            fmt(measure, limit)
                        ));
                        break;
                    }
                    let why = format!(
                        "writes: group {top} takes {} (mean {}, margin {:.0}%); unit {} alone takes {}, above the mean and margin ({}) wherever it goes: moving it would move the hot spot, so its subtrees are spread over every group",
                        fmt(measure, high),
                        fmt(measure, mean),
                        t.margin * 100.0,
                        hot.unit,
                        fmt(measure, of(hot)),
                        fmt(measure, limit)
                    );
                    moves.push(PlannedMove { unit: hot.unit.clone(), from: top, to: 0, split_over: groups.clone(), why });
                    // How the split leaves the groups is known after it: the next round sees.
                    break;
                }
            }
            let best = units
                .iter()
                .filter(|u| u.group == top && movable(map, &u.unit) && of(u) > 0.0 && of(u) <= want)
                .max_by(|a, b| of(a).total_cmp(&of(b)));
            let Some(u) = best else {
                notes.push(format!(
                    "{measure}: group {top} is above the margin but no unit of it fits (every movable unit is larger than half the gap, or pinned)"
                ));
                break;
            };
            let why = format!(
                "{measure}: group {top} has {} (mean {}, margin {:.0}%), group {low_g} has {}; unit {} ({}) brings them closest",
                fmt(measure, high),
                fmt(measure, mean),
                t.margin * 100.0,
                fmt(measure, low),
                u.unit,
                fmt(measure, of(u))
            );
            moves.push(PlannedMove { unit: u.unit.clone(), from: top, to: low_g, split_over: vec![], why });
            // The next choice sees the groups as this move leaves them.
            let moved = u.unit.clone();
            units.iter_mut().filter(|x| x.unit == moved && x.group == top).for_each(|x| x.group = low_g);
        }
    }
    RebalancePlan { moves, notes, executed: vec![] }
}

fn fmt(measure: &str, v: f64) -> String {
    match measure {
        "bytes" => format!("{:.1} MiB", v / (1u64 << 20) as f64),
        _ => format!("{v:.0} writes/s"),
    }
}

impl Placement {
    /// Plans a round from two samples of the unit statistics `interval`
    /// apart and, unless `dry_run`, carries out its moves one at a time.
    pub async fn rebalance(&self, req: &RebalanceRequest) -> Result<RebalancePlan> {
        let t = req.thresholds.clone().unwrap_or_default();
        t.validate()?;
        let first = self.units().await?;
        tokio::time::sleep(Duration::from_millis(req.interval_ms.clamp(100, 60_000))).await;
        let second = self.units().await?;
        let map = self.map().await?;
        let unsplittable = self.unsplittable.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut p = plan_knowing(&map, &units_between(&first, &second), &t, &unsplittable);
        if req.dry_run {
            return Ok(p);
        }
        for m in &p.moves {
            if !m.split_over.is_empty() {
                let outcome = match self.split(&m.unit, &m.split_over, 0).await {
                    Ok(r) if r.moves.is_empty() => {
                        self.unsplittable.lock().unwrap_or_else(|p| p.into_inner()).insert(m.unit.clone());
                        format!(
                            "split {} found nothing to spread ({} subtrees stayed, {} leaf keys): not planned again",
                            m.unit, r.stayed, r.leaves
                        )
                    }
                    Ok(r) => format!(
                        "split {} over groups {:?} ({} subtrees moved, {} stayed)",
                        m.unit,
                        m.split_over,
                        r.moves.len(),
                        r.stayed
                    ),
                    Err(e) => format!("splitting {} failed: {e}", m.unit),
                };
                tracing::info!(unit = m.unit, why = m.why, outcome, "rebalanced");
                p.executed.push(outcome);
                continue;
            }
            let outcome = match self.move_prefix(&m.unit, m.to, 0).await {
                Ok(r) => format!("moved {} to group {} ({} keys, writes paused {} ms)", m.unit, m.to, r.keys, r.write_pause_ms),
                Err(e) => format!("moving {} to group {} failed: {e}", m.unit, m.to),
            };
            tracing::info!(unit = m.unit, to = m.to, why = m.why, outcome, "rebalanced");
            p.executed.push(outcome);
        }
        Ok(p)
    }

    /// Placement's rebalancing loop: a round every `every` (errors logged).
    pub async fn rebalance_every(&self, every: Duration, thresholds: Thresholds) {
        loop {
            tokio::time::sleep(every).await;
            let req = RebalanceRequest { dry_run: false, interval_ms: 2000, thresholds: Some(thresholds.clone()) };
            if let Err(e) = self.rebalance(&req).await {
                tracing::warn!(error = %e, "rebalancing round failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmap::GroupInfo;

    fn map(groups: &[u64]) -> ShardMap {
        let mut m = ShardMap { ring: groups.to_vec(), ..Default::default() };
        for g in groups {
            m.groups.insert(*g, GroupInfo { id: *g, replicas: vec![] });
        }
        m
    }

    fn unit(name: &str, group: u64, mib: u64, writes: f64) -> Unit {
        Unit { unit: name.into(), group, bytes: mib << 20, writes_per_s: writes }
    }

    fn small() -> Thresholds {
        Thresholds { margin: 0.1, min_bytes: 1 << 20, min_writes_per_s: 10.0, max_moves: 4 }
    }

    #[test]
    fn a_full_group_gives_the_unit_that_brings_it_closest_to_the_emptiest() {
        let m = map(&[1, 2, 3]);
        let units = [unit("/r/a/", 1, 60, 0.0), unit("/r/b/", 1, 30, 0.0), unit("/r/c/", 1, 20, 0.0), unit("/r/d/", 2, 30, 0.0)];
        let p = plan(&m, &units, &small());
        assert_eq!(p.moves.len(), 2, "{p:?}");
        // Group 1 has 110 MiB, group 3 none: half the gap is 55 MiB; /r/b/ (30) is the largest that fits.
        assert_eq!((p.moves[0].unit.as_str(), p.moves[0].from, p.moves[0].to), ("/r/b/", 1, 3));
        assert!(p.moves[0].why.contains("group 1 has 110.0 MiB"), "{}", p.moves[0].why);
        // Then 80 against group 2's 30: half the gap is 25 MiB, /r/c/ (20) fits; /r/a/ (60) never does.
        assert_eq!((p.moves[1].unit.as_str(), p.moves[1].from, p.moves[1].to), ("/r/c/", 1, 2));
        let one = plan(&m, &units, &Thresholds { max_moves: 1, ..small() });
        assert_eq!(one.moves.len(), 1);
        assert!(one.notes.iter().any(|n| n.contains("more moves next round")), "{one:?}");
    }

    #[test]
    fn new_groups_get_units_until_every_group_is_near_the_mean() {
        // One group with 50 units of 4 MiB, two new empty groups.
        let m = map(&[1, 2, 3]);
        let units: Vec<Unit> = (0..50).map(|i| unit(&format!("/r/u{i}/"), 1, 4, 0.0)).collect();
        let t = Thresholds { max_moves: 100, ..small() };
        let p = plan(&m, &units, &t);
        let mut bytes: BTreeMap<u64, u64> = [(1, 200), (2, 0), (3, 0)].into();
        for mv in &p.moves {
            *bytes.get_mut(&mv.from).unwrap() -= 4;
            *bytes.get_mut(&mv.to).unwrap() += 4;
        }
        let mean = 200.0 / 3.0;
        assert!(
            bytes.values().all(|b| (*b as f64) <= mean * 1.1 && (*b as f64) >= mean * 0.9),
            "{bytes:?} after {} moves",
            p.moves.len()
        );
        assert!(p.notes.iter().any(|n| n.contains("within 10%")), "{p:?}");
    }

    #[test]
    fn a_hot_unit_a_split_found_nothing_in_is_not_split_again() {
        let m = map(&[1, 2, 3]);
        let units = [unit("/r/hot/", 1, 0, 1000.0), unit("/r/a/", 1, 0, 10.0), unit("/r/b/", 2, 0, 10.0)];
        let p = plan(&m, &units, &small());
        assert_eq!(p.moves.len(), 1, "{p:?}");
        assert_eq!(p.moves[0].split_over, vec![1, 2, 3], "{p:?}");
        let known: BTreeSet<String> = ["/r/hot/".to_string()].into();
        let p = plan_knowing(&m, &units, &small(), &known);
        assert!(p.moves.is_empty(), "{p:?}");
        assert!(p.notes.iter().any(|n| n.contains("found nothing to spread")), "{p:?}");
    }

    #[test]
    fn a_balanced_or_small_federation_is_left_alone() {
        let m = map(&[1, 2]);
        let even = [unit("/r/a/", 1, 50, 100.0), unit("/r/b/", 2, 52, 100.0)];
        let p = plan(&m, &even, &small());
        assert!(p.moves.is_empty() && p.notes.iter().any(|n| n.contains("within 10%")), "{p:?}");
        let tiny = [unit("/r/a/", 1, 0, 1.0)];
        let p = plan(&m, &tiny, &small());
        assert!(p.moves.is_empty() && p.notes.iter().all(|n| n.contains("below the floor")), "{p:?}");
    }

    #[test]
    fn a_hot_unit_is_split_and_pinned_ones_stay() {
        let m = map(&[1, 2, 3]);
        // 10x the others' writes: above the mean and margin wherever it goes.
        let mut hot: Vec<Unit> = (0..9).map(|i| unit(&format!("/r/u{i}/"), 1 + i % 3, 1, 10.0)).collect();
        hot.push(unit("/r/hot/", 1, 1, 100.0));
        let p = plan(&m, &hot, &small());
        assert_eq!(p.moves.len(), 1, "{p:?}");
        assert_eq!((p.moves[0].unit.as_str(), p.moves[0].from, p.moves[0].split_over.as_slice()), ("/r/hot/", 1, &[1, 2, 3][..]));
        assert!(p.moves[0].why.contains("would move the hot spot"), "{p:?}");
        // The busiest unit above half the gap but not above the mean and
        // margin: moving a smaller one balances the groups, so no split.
        let two = [unit("/r/a/", 1, 1, 60.0), unit("/r/b/", 1, 1, 40.0)];
        let p = plan(&map(&[1, 2]), &two, &Thresholds { margin: 0.2, ..small() });
        assert_eq!(p.moves.len(), 1, "{p:?}");
        assert_eq!((p.moves[0].unit.as_str(), p.moves[0].to, p.moves[0].split_over.len()), ("/r/b/", 2, 0), "{p:?}");
        // Once split (pins under it), it is an admin's placement: left alone.
        let mut split = map(&[1, 2, 3]);
        split.pins.insert("/r/hot/ns1/".into(), 2);
        let p = plan(&split, &hot, &small());
        assert!(p.moves.iter().all(|mv| mv.unit != "/r/hot/" && mv.split_over.is_empty()), "{p:?}");
        let mut pinned = map(&[1, 2]);
        pinned.pins.insert("/r/".into(), 1);
        let full = [unit("/r/a/", 1, 60, 0.0), unit("/r/b/", 1, 30, 0.0)];
        let p = plan(&pinned, &full, &small());
        assert!(p.moves.is_empty() && p.notes.iter().any(|n| n.contains("no unit of it fits")), "{p:?}");
        let p = plan(&map(&[1, 2]), &[unit("/r/", 1, 60, 0.0), unit("/r/x/y/", 1, 60, 0.0)], &small());
        assert!(p.moves.is_empty(), "only whole units (the map's depth) move: {p:?}");
    }

    #[test]
    fn a_draining_group_is_given_nothing() {
        let mut m = map(&[1, 2, 3]);
        m.draining_groups.insert(3);
        let units = [unit("/r/a/", 1, 60, 0.0), unit("/r/b/", 1, 30, 0.0), unit("/r/c/", 1, 20, 0.0)];
        let p = plan(&m, &units, &small());
        assert!(!p.moves.is_empty() && p.moves.iter().all(|mv| mv.to == 2), "{p:?}");
        assert!(p.notes.iter().any(|n| n.contains("group 3 is draining")), "{p:?}");
    }
}
