//! Choosing nodes for replicas: the least loaded first, so groups spread
//! over the nodes; ties broken by a hash of (node, group) so successive
//! groups do not all pick the same nodes.

use shardmap::ring::hash;
use shardmap::{Replica, ShardMap};

fn load(map: &ShardMap, node: &str) -> (usize, usize) {
    let mut voters = 0;
    let mut all = 0;
    for g in map.groups.values() {
        for r in g.replicas.iter().filter(|r| r.node == node) {
            all += 1;
            voters += usize::from(!r.learner);
        }
    }
    (all, voters)
}

pub fn member_id(node: &str, group: u64) -> u64 {
    hash(format!("{node}/{group}").as_bytes()) | 1
}

/// Nodes for a new group's voters and learners (distinct nodes).
pub fn new_group(map: &ShardMap, group: u64, voters: usize, learners: usize) -> Result<Vec<Replica>, String> {
    let need = voters + learners;
    if voters == 0 {
        return Err("a group needs at least one voter".into());
    }
    if map.nodes.len() < need {
        return Err(format!(
            "a group of {voters} voters and {learners} learners needs {need} nodes; {} registered",
            map.nodes.len()
        ));
    }
    let mut nodes: Vec<&String> = map.nodes.keys().collect();
    nodes.sort_by_key(|n| (load(map, n), hash(format!("{n}/{group}").as_bytes())));
    Ok(nodes
        .into_iter()
        .take(need)
        .enumerate()
        .map(|(i, n)| Replica { node: n.clone(), member_id: member_id(n, group), learner: i >= voters, initial: true })
        .collect())
}

/// The node for one more replica of `group` (none of its replicas there).
pub fn extra_replica(map: &ShardMap, group: u64) -> Result<String, String> {
    let g = map.groups.get(&group).ok_or_else(|| format!("no group {group}"))?;
    map.nodes
        .keys()
        .filter(|n| g.replica_on(n).is_none())
        .min_by_key(|n| (load(map, n), hash(format!("{n}/{group}").as_bytes())))
        .cloned()
        .ok_or_else(|| format!("every registered node already hosts group {group}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmap::{GroupInfo, NodeInfo};

    #[test]
    fn groups_spread_over_nodes() {
        let mut map = ShardMap::default();
        for n in ["n1", "n2", "n3", "n4"] {
            map.nodes.insert(n.into(), NodeInfo { name: n.into(), peer_url: String::new(), client_url: String::new() });
        }
        for g in 1..=4 {
            let replicas = new_group(&map, g, 3, 1).unwrap();
            let distinct: std::collections::BTreeSet<_> = replicas.iter().map(|r| r.node.clone()).collect();
            assert_eq!(distinct.len(), 4);
            map.groups.insert(g, GroupInfo { id: g, replicas });
        }
        // every node is a learner for exactly one of the four groups
        for n in map.nodes.keys() {
            let learner_of = map.groups.values().filter(|g| g.replica_on(n).is_some_and(|r| r.learner)).count();
            assert_eq!(learner_of, 1, "{n}");
        }
        assert!(new_group(&map, 9, 4, 1).is_err());
    }
}
