//! Consistent hashing of placement units onto groups: each group owns
//! `VNODES` points on a 64-bit ring; a unit belongs to the first point at or
//! after its hash. Adding a group moves ~1/N of the units.
//!
//! Written here rather than taken from the `consistent_hash` crate: the
//! placement of every key depends on the exact hash function, so it must
//! never change with a dependency upgrade (that crate is unmaintained and
//! hashes with std's `DefaultHasher`, which Rust does not promise to keep).

pub const VNODES: u32 = 64;

/// FNV-1a 64: stable, specified, fast on short keys.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    // FNV's low bits mix poorly on short inputs; finish with a splitmix step.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h
}

#[derive(Clone, Debug, Default)]
pub struct Ring {
    points: Vec<(u64, u64)>, // (point, group)
}

impl Ring {
    pub fn new(groups: &[u64]) -> Self {
        let mut points = Vec::with_capacity(groups.len() * VNODES as usize);
        for g in groups {
            for v in 0..VNODES {
                points.push((hash(format!("group-{g}-{v}").as_bytes()), *g));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    pub fn owner(&self, unit: &[u8]) -> Option<u64> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash(unit);
        let i = self.points.partition_point(|(p, _)| *p < h);
        Some(self.points[i % self.points.len()].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_group_moves_about_one_nth() {
        let before = Ring::new(&[1, 2, 3]);
        let after = Ring::new(&[1, 2, 3, 4]);
        let units: Vec<String> = (0..4000).map(|i| format!("/registry/type{i}/")).collect();
        let moved = units.iter().filter(|u| before.owner(u.as_bytes()) != after.owner(u.as_bytes())).count();
        assert!(moved > 600 && moved < 1500, "moved {moved} of 4000");
        // every moved unit moved to the new group
        assert!(units
            .iter()
            .filter(|u| before.owner(u.as_bytes()) != after.owner(u.as_bytes()))
            .all(|u| after.owner(u.as_bytes()) == Some(4)));
        let per: Vec<usize> = (1..=3).map(|g| units.iter().filter(|u| before.owner(u.as_bytes()) == Some(g)).count()).collect();
        assert!(per.iter().all(|n| *n > 800), "unbalanced: {per:?}");
    }
}
