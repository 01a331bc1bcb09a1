//! A group leaving the federation: `drain` marks it draining (the
//! rebalancer gives it nothing, new leases are granted elsewhere), takes it
//! off the ring with its units (`crate::ring`, leaving), gives away every
//! prefix pinned to it, with its data (one move each, `crate::moves`), to
//! the group holding the fewest bytes at the time, then its remainder —
//! the keys of its unit pins (`""`, `/registry/`: units too shallow to move
//! as a prefix) — in one move under the empty prefix, and copies its
//! leases to their new homes (a keyless lease lives only there). `remove`
//! then takes the group out of the map once it owns nothing and holds no
//! key, and the nodes stop its replicas and delete their data. A drain cut
//! short (a move rolled back, placement gone) is run again: it does what
//! is left.

use crate::api::{GroupDrained, GroupRemoved};
use crate::error::{PlacementError, Result};
use crate::moves::in_batch;
use crate::ops::Placement;
use shardmap::{strictly_under, ShardMap};
use std::collections::BTreeMap;

/// Why `group` cannot give away what it owns by moving pins, if it cannot.
fn cannot_drain(map: &ShardMap, group: u64) -> Option<String> {
    if let Some((p, _)) = map.spreads.iter().find(|(_, gs)| gs.contains(&group)) {
        return Some(format!("group {group} is one of the groups the prefix {p:?} is spread over (a spread's keys do not move)"));
    }
    if let Some((p, _)) = map.moves.iter().find(|(_, m)| m.to == group || m.from.contains(&group)) {
        return Some(format!("a move of {p:?} involving group {group} is in flight (see `tessera moves`)"));
    }
    None
}

/// Why `group` still owns keys by the ring or unit pins (a drain gives
/// them away), if it does.
fn owns_units(map: &ShardMap, group: u64) -> Option<String> {
    if map.ring.contains(&group) {
        return Some(format!("group {group} is on the ring: drain it first (`tessera group drain {group}`)"));
    }
    map.unit_pins.iter().find(|(_, g)| **g == group).map(|(u, _)| {
        format!("group {group} keeps the keys of unit {u:?} (a unit pin): drain it first (`tessera group drain {group}`)")
    })
}

/// `group`'s pins over whole units that a split placed parts of elsewhere
/// become unit pins (a move of such a pin is refused: its subtrees stay
/// where they are); the remainder then takes their keys. No key routes
/// differently: no shorter pin or spread covers them, and a unit pin
/// places what no deeper pin or spread does, as the pin did. Whether any did.
fn split_pins_to_unit_pins(m: &mut ShardMap, group: u64) -> bool {
    let placed: Vec<&String> = m.pins.keys().chain(m.spreads.keys()).collect();
    let turned: Vec<String> = m
        .pins
        .iter()
        .filter(|(p, g)| **g == group && crate::ring::whole(m, p.as_bytes()))
        .filter(|(p, _)| placed.iter().any(|q| strictly_under(q, p)) && !placed.iter().any(|q| strictly_under(p, q)))
        .map(|(p, _)| p.clone())
        .collect();
    for p in &turned {
        m.pins.remove(p);
        m.unit_pins.insert(p.clone(), group);
    }
    !turned.is_empty()
}

impl Placement {
    /// Gives away everything `group` holds (module doc): off the ring, its
    /// pins to the groups holding the fewest bytes (as it stands after the
    /// moves before), one at a time, its remainder, its leases.
    pub async fn drain_group(&self, group: u64, rate_bytes: u64) -> Result<GroupDrained> {
        let map = self.map().await?;
        if !map.groups.contains_key(&group) {
            return Err(PlacementError::not_found(format!("no group {group}")));
        }
        if let Some(why) = cannot_drain(&map, group).or_else(|| crate::ring::cannot_leave(&map, group)) {
            return Err(PlacementError::conflict(why));
        }
        let others: Vec<u64> = map.groups.keys().copied().filter(|g| *g != group && !map.draining_groups.contains(g)).collect();
        if others.is_empty() {
            return Err(PlacementError::conflict(format!("group {group} is the only group: its keys have nowhere to go")));
        }
        // From now on the rebalancer gives it nothing (it would be the
        // emptiest), and leases are granted elsewhere; lease homes freeze
        // (a home hashed over every group would change with its removal).
        self.store
            .update(|m| {
                if !m.groups.contains_key(&group) || m.draining_groups.contains(&group) {
                    return Ok::<_, PlacementError>(false);
                }
                m.freeze_lease_homes();
                m.draining_groups.insert(group);
                Ok(true)
            })
            .await?;
        let mut bytes: BTreeMap<u64, u64> = others.iter().map(|g| (*g, 0)).collect();
        let units = self.units().await?;
        for u in &units.units {
            if let Some(b) = bytes.get_mut(&u.group) {
                *b += u.bytes;
            }
        }
        let left = self.leave_ring(group, rate_bytes).await?;
        let mut moves = left.moves;
        let map = self.store.update(|m| Ok::<_, PlacementError>(split_pins_to_unit_pins(m, group))).await?;
        let pinned: Vec<String> = map.pins.iter().filter(|(_, g)| **g == group).map(|(p, _)| p.clone()).collect();
        for prefix in pinned {
            let (&to, _) = bytes.iter().min_by_key(|(g, b)| (**b, **g)).expect("another group");
            let report = self.move_in_batch(&prefix, to, rate_bytes, moves.len(), "drain").await?;
            *bytes.entry(to).or_default() += report.bytes;
            moves.push(report);
        }
        let map = self.map().await?;
        if map.unit_pins.values().any(|g| *g == group) {
            // The remainder goes to the emptiest group that took none before.
            let to = bytes
                .iter()
                .filter(|(g, _)| !map.took_remainder.contains(g))
                .min_by_key(|(g, b)| (**b, **g))
                .map(|(g, _)| *g)
                .ok_or_else(|| {
                    PlacementError::conflict(format!(
                        "group {group} keeps unit pins, and every other group took a leaving group's remainder before"
                    ))
                })?;
            let done = moves.len();
            let report = self.move_remainder(group, to, rate_bytes).await;
            moves.push(report.map_err(|e| in_batch(e, &format!("group {group}'s remainder"), to, done, "drain"))?);
        }
        let leases_copied = self.copy_leases_off(group).await?;
        let epoch = self.map().await?.epoch;
        Ok(GroupDrained { group, moves, epoch, ring_flip_ms: left.flip_ms, leases_copied })
    }

    /// Takes `group` out of the map: only once it owns nothing (off the
    /// ring, no pin, no spread, no move) and holds no live key. The nodes
    /// then stop its replicas and delete their data.
    pub async fn remove_group(&self, group: u64) -> Result<GroupRemoved> {
        let map = self.map().await?;
        if !map.groups.contains_key(&group) {
            return Err(PlacementError::not_found(format!("no group {group}")));
        }
        if let Some(why) = cannot_drain(&map, group).or_else(|| owns_units(&map, group)) {
            return Err(PlacementError::conflict(why));
        }
        if let Some((p, _)) = map.pins.iter().find(|(_, g)| **g == group) {
            return Err(PlacementError::conflict(format!(
                "prefix {p:?} is pinned to group {group}: drain it first (`tessera group drain {group}`)"
            )));
        }
        let units = self.units().await?;
        if units.partial.contains(&group) {
            return Err(PlacementError::unavailable(format!(
                "not every replica of group {group} answered; cannot tell that it holds no keys"
            )));
        }
        let keys: i64 = units.units.iter().filter(|u| u.group == group).map(|u| u.keys).sum();
        if keys > 0 {
            return Err(PlacementError::conflict(format!("group {group} still holds {keys} keys")));
        }
        if map.draining_groups.contains(&group) {
            // Again (it does nothing twice): a drain cut short before its
            // leases were copied, or a lease granted here by a router whose
            // map was older than the draining mark.
            self.copy_leases_off(group).await?;
        }
        let mut removed = false;
        let map = self
            .store
            .update(|m| {
                // The checks again, on the map the change is made to.
                if !m.groups.contains_key(&group)
                    || cannot_drain(m, group).or_else(|| owns_units(m, group)).is_some()
                    || m.pins.values().any(|g| *g == group)
                {
                    return Ok::<_, PlacementError>(false);
                }
                m.groups.remove(&group);
                m.draining_groups.remove(&group);
                m.removed_groups.insert(group);
                removed = true;
                Ok(true)
            })
            .await?;
        if !removed {
            return Err(PlacementError::conflict(format!("group {group} changed while it was being removed; try again")));
        }
        Ok(GroupRemoved { group, epoch: map.epoch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmap::{GroupInfo, MovePhase, MoveRecord};

    #[test]
    fn only_a_group_off_the_ring_with_nothing_in_flight_can_leave() {
        let mut map = ShardMap { ring: vec![1, 2], ..Default::default() };
        for g in 1..=4 {
            map.groups.insert(g, GroupInfo { id: g, replicas: vec![] });
        }
        map.pins.insert("/a/".into(), 3);
        map.spreads.insert("/s/".into(), vec![2, 4]);
        assert_eq!(cannot_drain(&map, 1), None, "a drain takes a group off the ring");
        assert!(owns_units(&map, 1).unwrap().contains("on the ring"));
        assert!(cannot_drain(&map, 4).unwrap().contains("spread over"));
        assert_eq!(cannot_drain(&map, 3), None, "pins are what a drain moves");
        map.moves.insert(
            "/a/".into(),
            MoveRecord { to: 4, from: vec![3], phase: MovePhase::Copying, epoch: 0, adopt: None, remainder: false },
        );
        assert!(cannot_drain(&map, 3).unwrap().contains("in flight"));
        map.moves.clear();
        map.unit_pins.insert("/r/".into(), 3);
        assert!(owns_units(&map, 3).unwrap().contains("unit \"/r/\""));
    }

    #[test]
    fn a_split_units_pin_on_a_leaving_group_becomes_a_unit_pin_that_routes_alike() {
        let mut map = ShardMap { ring: vec![2, 3], depth: 3, ..Default::default() };
        map.pins.insert("/r/split/".into(), 1); // split: subtrees pinned inside
        map.pins.insert("/r/split/ns1/".into(), 2);
        map.pins.insert("/r/split/ns2/".into(), 1);
        map.pins.insert("/r/whole/".into(), 1); // nothing inside: a move takes it
        map.pins.insert("/q/".into(), 3); // a shorter pin over a split unit
        map.pins.insert("/q/split/".into(), 1);
        map.pins.insert("/q/split/ns/".into(), 2);
        let keys = ["/r/split/leaf", "/r/split/ns1/a", "/r/split/ns2/a", "/r/split/ns3/a", "/r/whole/a", "/q/split/x/y"];
        let before: Vec<Option<u64>> = keys.iter().map(|k| map.clone().routing().group_of(k.as_bytes())).collect();
        assert!(split_pins_to_unit_pins(&mut map, 1));
        assert_eq!(map.unit_pins.keys().collect::<Vec<_>>(), ["/r/split/"]);
        assert!(map.pins.contains_key("/r/whole/") && map.pins.contains_key("/q/split/"));
        let after: Vec<Option<u64>> = keys.iter().map(|k| map.clone().routing().group_of(k.as_bytes())).collect();
        assert_eq!(after, before);
        assert!(!split_pins_to_unit_pins(&mut map, 1), "done once");
        // The only group on the ring cannot leave it (checked before the drain marks it).
        assert!(crate::ring::cannot_leave(&ShardMap { ring: vec![2], ..Default::default() }, 2).is_some());
        assert_eq!(crate::ring::cannot_leave(&map, 2), None);
    }
}
