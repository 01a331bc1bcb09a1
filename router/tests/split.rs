//! A hot unit split over the groups with its data, and merged back
//! (`tessera split`/`merge`, placement's rebalancing loop), through a real
//! federation under writes: `tessera top` names the unit, `rebalance
//! --dry-run` says why, placement's own round splits it within a minute,
//! and no acknowledged write is lost (each put's prev_kv is the writer's
//! own last write) while its subtrees move.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::{PutRequest, RangeRequest};
use tessera_rpc::metadata::group_request;
use tessera_testkit::writer::prev_kv_writer;
use tessera_testkit::{wait, Federation};

const NAMESPACES: usize = 12;
const PER_NAMESPACE: usize = 5;

/// Live keys under `prefix` in `group`, read from a replica directly.
async fn count_in(map: &shardmap::ShardMap, group: u64, prefix: &str) -> i64 {
    let rep = &map.groups[&group].replicas[0];
    let mut kv = KvClient::connect(map.nodes[&rep.node].client_url.clone()).await.unwrap();
    let req = RangeRequest {
        key: prefix.into(),
        range_end: shardmap::prefix_end(prefix.as_bytes()),
        count_only: true,
        ..Default::default()
    };
    kv.range(group_request(group, req)).await.unwrap().into_inner().count
}

async fn map_of(f: &Federation) -> shardmap::ShardMap {
    placement::PlacementClient::new(f.placement()).map().await.unwrap()
}

/// Keys of the hot unit (12 namespaces of 5, and one key right under it)
/// and one key in each cold unit.
fn keys(hot: &str, cold: &[String]) -> (Vec<String>, Vec<String>) {
    let mut h: Vec<String> =
        (0..NAMESPACES).flat_map(|n| (0..PER_NAMESPACE).map(move |i| format!("{hot}ns{n:02}/o{i}"))).collect();
    h.push(format!("{hot}cluster-scoped"));
    (h, cold.iter().map(|u| format!("{u}ns/o")).collect())
}

/// The writer's keys: ten of the hot unit for each key of every cold one.
fn ten_to_one(hot: &[String], cold: &[String]) -> Vec<String> {
    let mut round: Vec<String> = (0..10 * cold.len()).map(|i| hot[(i * 7) % hot.len()].clone()).collect();
    round.extend(cold.iter().cloned());
    round
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_unit_is_split_by_the_rebalancer_within_a_minute_and_merged_back() {
    let mut f = Federation::start(3);
    let routing = map_of(&f).await.routing();
    let on = |g: u64, n: usize| -> Vec<String> {
        (0..400).map(|i| format!("/registry/kind{i}/")).filter(|u| routing.group_of(u.as_bytes()) == Some(g)).take(n).collect()
    };
    let hot = on(1, 1).remove(0);
    let cold: Vec<String> = [on(1, 4)[1..].to_vec(), on(2, 3), on(3, 3)].concat();
    let (hot_keys, cold_keys) = keys(&hot, &cold);
    let mut kv = f.kv().await;
    for k in hot_keys.iter().chain(&cold_keys) {
        kv.put(PutRequest { key: k.clone().into_bytes(), value: b"0".to_vec(), ..Default::default() }).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(prev_kv_writer(kv.clone(), ten_to_one(&hot_keys, &cold_keys), stop.clone()));

    // `top` names the hot unit first, by writes.
    let top = f.tessera(&["top", "--by", "writes", "--interval", "1", "--json"]);
    assert!(top.status.success(), "{}", String::from_utf8_lossy(&top.stderr));
    let top: serde_json::Value = serde_json::from_slice(&top.stdout).unwrap();
    let first = &top["units"][0];
    assert_eq!((first["unit"].as_str(), first["group"].as_u64()), (Some(hot.as_str()), Some(1)), "{top}");

    // The dry run plans its split and says why, and changes nothing.
    let epoch = map_of(&f).await.epoch;
    let dry = f.tessera(&["rebalance", "--dry-run", "--min-mib", "1024", "--min-writes", "5", "--json"]);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let plan: placement::api::RebalancePlan = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(plan.moves.len(), 1, "{plan:?}");
    let planned = &plan.moves[0];
    assert_eq!(
        (planned.unit.as_str(), planned.from, planned.split_over.as_slice()),
        (hot.as_str(), 1, &[1, 2, 3][..]),
        "{plan:?}"
    );
    assert!(planned.why.contains("would move the hot spot"), "{plan:?}");
    assert_eq!(map_of(&f).await.epoch, epoch, "a dry run changes nothing");

    // Placement's own rounds (every 2 s) split it within a minute.
    let mut args = f.kill9(f.pid_of_placement());
    args.retain(|a| !a.starts_with("--rebalance-"));
    args.extend(["--rebalance-every=2", "--rebalance-min-writes=5", "--rebalance-min-bytes=1073741824"].map(String::from));
    f.restart(&args);
    let split_at = std::time::Instant::now();
    let placement = placement::PlacementClient::new(f.placement());
    // The namespaces a spread over the three groups gives to groups 2 and 3.
    let leaving = (0..NAMESPACES).filter(|n| shardmap::spread_group(format!("ns{n:02}/").as_bytes(), &[1, 2, 3]) != 1).count();
    assert!(leaving > 0);
    wait::until_async("placement's rounds to split the hot unit", Duration::from_secs(60), || {
        let placement = placement.clone();
        let hot = hot.clone();
        async move {
            placement.map().await.is_ok_and(|m| {
                let parts = m.pins.keys().filter(|p| shardmap::strictly_under(p, &hot)).count();
                m.moves.is_empty() && parts == leaving
            })
        }
    })
    .await;
    let took = split_at.elapsed();
    let map = map_of(&f).await;
    let parts: BTreeMap<&String, &u64> = map.pins.iter().filter(|(p, _)| shardmap::strictly_under(p, &hot)).collect();
    assert!(parts.keys().all(|p| p.ends_with('/') && p.matches('/').count() == 4), "whole namespaces move: {parts:?}");
    let mut held: BTreeMap<u64, i64> = BTreeMap::new();
    for g in [1, 2, 3] {
        held.insert(g, count_in(&map, g, &hot).await);
    }
    assert_eq!(held.values().sum::<i64>(), hot_keys.len() as i64, "every key of the unit in exactly one group: {held:?}");
    assert!(held.values().filter(|n| **n > 0).count() >= 2, "spread over the groups: {held:?}");
    assert!(held[&1] >= 1, "the key right under the unit stays with its owner: {held:?}");
    // `where` names the pin of a moved namespace and its group.
    let (part, group) = parts.iter().next().unwrap();
    let found = f.tessera(&["where", &format!("{part}o0"), "--json"]);
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    let found: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!((found["group"].as_u64(), found["decided_by"].as_str()), (Some(**group), Some(format!("pin {part}").as_str())));
    eprintln!("split within {took:?}: keys per group {held:?}, {} namespaces moved", parts.len());

    // Merged back onto group 2, still under writes.
    let merged = f.tessera(&["merge", &hot, "2", "--json"]);
    assert!(merged.status.success(), "{}", String::from_utf8_lossy(&merged.stderr));
    let merged: placement::api::MergeReport = serde_json::from_slice(&merged.stdout).unwrap();
    assert!(merged.moves.iter().all(|m| m.outcome == "moved"), "{merged:?}");
    stop.store(true, Ordering::Relaxed);
    let writes = writing.await.unwrap().puts.len();
    let map = map_of(&f).await;
    assert_eq!(map.pins.get(&hot), Some(&2));
    assert!(!map.pins.keys().any(|p| shardmap::strictly_under(p, &hot)), "pins under it dropped: {:?}", map.pins);
    assert_eq!(count_in(&map, 2, &hot).await, hot_keys.len() as i64);
    for g in [1, 3] {
        assert_eq!(count_in(&map, g, &hot).await, 0, "group {g} holds none of it");
    }
    // Every key reads through the router; the cold units were not touched by the merge.
    let mut seen = BTreeSet::new();
    let all = RangeRequest {
        key: b"/registry/".to_vec(),
        range_end: shardmap::prefix_end(b"/registry/"),
        keys_only: true,
        ..Default::default()
    };
    for kv in kv.range(all).await.unwrap().into_inner().kvs {
        seen.insert(String::from_utf8(kv.key).unwrap());
    }
    let want: BTreeSet<String> = hot_keys.iter().chain(&cold_keys).cloned().collect();
    assert_eq!(seen, want);
    assert!(writes > 100, "the writer kept writing ({writes} writes)");
}
