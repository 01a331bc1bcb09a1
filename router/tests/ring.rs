//! Groups joining the consistent-hash ring with their data (`tessera group
//! add --ring`, docs/architecture.md "A group joining the ring") through a
//! real federation, under writes, a lease and a watch: each new group gets
//! the units the ring then gives it, moved online; no acknowledged write is
//! lost (each put's prev_kv is the writer's own last write); the watch
//! sees every acknowledged write once, in order per key; every key is in
//! exactly the group the map names and readable through the router; a
//! rebalance then evens the bytes out to a third each (± 10 %); the lease
//! keeps its home; a unit created afterwards goes where the new ring says.
//! Then a unit of another group and one of the first group are split over
//! every group, and the first group — on the ring, holding the shallow
//! units, split subtrees and a split unit's own keys, home of every lease
//! — drains (leaves the ring, its pins, remainder and leases go) and is
//! removed, still under the writer and the watch.

use etcd_client::{Client, PutOptions, WatchOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::{PutRequest, RangeRequest};
use tessera_rpc::metadata::group_request;
use tessera_testkit::writer::{fill_units, prev_kv_writer};
use tessera_testkit::{wait, Federation};

const UNITS: usize = 50;
const PER_UNIT: usize = 200;

fn unit(u: usize) -> String {
    format!("/registry/kind{u:02}/")
}

async fn map_of(f: &Federation) -> shardmap::ShardMap {
    placement::PlacementClient::new(f.placement()).map().await.unwrap()
}

/// Every live key `group` holds, read from one of its replicas directly.
async fn keys_in(map: &shardmap::ShardMap, group: u64) -> Vec<Vec<u8>> {
    for (_, url) in map.replica_urls(group) {
        let Ok(mut kv) = KvClient::connect(url.to_string()).await else { continue };
        let req = RangeRequest { key: vec![0], range_end: vec![0], keys_only: true, ..Default::default() };
        if let Ok(r) = kv.range(group_request(group, req)).await {
            return r.into_inner().kvs.into_iter().map(|kv| kv.key).collect();
        }
    }
    panic!("no replica of group {group} answered")
}

type Seen = Arc<Mutex<Vec<(String, i64)>>>;

/// A watch of `/registry/` from `start` through the router, collecting
/// (key, revision) of its events; a cancel fails the test.
async fn watch_registry(c: &mut Client, start: i64) -> (Seen, tokio::task::JoinHandle<()>) {
    let opts = WatchOptions::new().with_prefix().with_start_revision(start);
    let mut stream = c.watch("/registry/", Some(opts)).await.unwrap();
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            assert!(!resp.canceled(), "the watch was cancelled: {resp:?}");
            let mut s = sink.lock().unwrap();
            for e in resp.events() {
                let kv = e.kv().unwrap();
                s.push((String::from_utf8_lossy(kv.key()).into_owned(), kv.mod_revision()));
            }
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_join_the_ring_then_the_first_leaves_with_its_data_under_writes_leases_and_a_watch() {
    let f = Federation::start(1);
    let mut kv = f.kv().await;
    let mut etcd = Client::connect([f.endpoint()], None).await.unwrap();
    fill_units(&mut kv, &(0..UNITS).map(unit).collect::<Vec<_>>(), PER_UNIT).await;
    // Keys of units too shallow to move as a prefix (kube-apiserver's own).
    let shallow = ["compact_rev_key", "/registry/health", "/registry/version"];
    for k in shallow {
        kv.put(PutRequest { key: k.into(), value: b"s".to_vec(), ..Default::default() }).await.unwrap();
    }
    // A lease with keys in three units.
    let lease = etcd.lease_grant(300, None).await.unwrap().id();
    let leased: Vec<String> = (0..3).map(|u| format!("{}ns/leased", unit(u * 7))).collect();
    let mut last_rev = 0;
    for k in &leased {
        last_rev =
            etcd.put(k.as_str(), "l", Some(PutOptions::new().with_lease(lease))).await.unwrap().header().unwrap().revision();
    }
    let total = (UNITS * PER_UNIT + shallow.len() + leased.len()) as i64;
    // A lease with no keys: it lives only on its home (group 1), until group 1 leaves.
    let keyless = etcd.lease_grant(300, None).await.unwrap().id();

    let (seen, watching) = watch_registry(&mut etcd, last_rev + 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let written: Vec<String> =
        (0..UNITS).flat_map(|u| (0..4).map(move |i| format!("{}ns/o{i}", unit(u)))).chain(["/registry/health".into()]).collect();
    let writing = tokio::spawn(prev_kv_writer(kv.clone(), written, stop.clone()));

    for new_group in [2u64, 3] {
        let joined = f.tessera(&["group", "add", "--replicas", "3", "--ring", "--json"]);
        assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
        let joined: placement::api::RingJoined = serde_json::from_slice(&joined.stdout).unwrap();
        assert_eq!(joined.group, new_group);
        assert!(joined.moves.iter().all(|m| m.outcome == "moved" && m.to == new_group), "{joined:?}");
        let ring = shardmap::ring::Ring::new(&(1..=new_group).collect::<Vec<_>>());
        let expected = (0..UNITS).filter(|u| ring.owner(unit(*u).as_bytes()) == Some(new_group)).count();
        assert!(expected > 0, "the ring gives group {new_group} some of the 50 units");
        assert_eq!(joined.moves.len(), expected, "{joined:?}");
        eprintln!("group {new_group} joined: {} units moved, older maps refused for {} ms", expected, joined.flip_ms);
    }
    let map = map_of(&f).await;
    assert_eq!(map.ring, vec![1, 2, 3]);
    assert_eq!(map.lease_homes, vec![1], "leases stay homed where they were granted");
    assert!(map.pins.is_empty(), "the joins' pins are implied by the ring: {:?}", map.pins);
    let ring = shardmap::ring::Ring::new(&[1, 2, 3]);
    for u in ["", "/registry/"] {
        let kept = map.unit_pins.get(u).copied();
        assert_eq!(kept.is_some(), ring.owner(u.as_bytes()) != Some(1), "unit {u:?} stays on group 1: {:?}", map.unit_pins);
        if kept.is_some() {
            let key = if u.is_empty() { "compact_rev_key".to_string() } else { format!("{u}health") };
            let w = f.tessera(&["where", &key]);
            let said = String::from_utf8_lossy(&w.stdout);
            assert!(said.contains("group 1") && said.contains("unit pin"), "{said}");
        }
    }

    // A rebalance evens the bytes out to a third each (± 10 %), still under writes.
    let done = f.tessera(&["rebalance", "--min-mib", "0", "--margin", "0.1", "--max-moves", "100", "--json"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let admin = placement::PlacementClient::new(f.placement());
    let mut bytes: BTreeMap<u64, u64> = BTreeMap::new();
    for u in admin.units().await.unwrap().units.iter().filter(|u| u.keys > 0) {
        *bytes.entry(u.group).or_default() += u.bytes;
    }
    let sum: u64 = bytes.values().sum();
    for (g, b) in &bytes {
        let share = *b as f64 / sum as f64;
        assert!((0.23..=0.43).contains(&share), "group {g} holds {:.0}% of the bytes: {bytes:?}", share * 100.0);
    }

    // A unit the ring gives group 2 is split over every group: group 1
    // then holds subtrees of it pinned to it (it lists the unit, whose
    // ring-placed keys are not its own).
    let split = (0..UNITS).map(unit).find(|u| ring.owner(u.as_bytes()) == Some(2)).expect("a unit on group 2");
    for ns in 0..6 {
        kv.put(PutRequest { key: format!("{split}sub{ns}/k").into(), value: b"x".to_vec(), ..Default::default() }).await.unwrap();
    }
    let total = total + 6;
    let spread = f.tessera(&["split", &split, "1,2,3", "--json"]);
    assert!(spread.status.success(), "{}", String::from_utf8_lossy(&spread.stderr));
    let pinned: Vec<u64> =
        map_of(&f).await.pins.iter().filter(|(p, _)| shardmap::strictly_under(p, &split)).map(|(_, g)| *g).collect();
    assert!(pinned.contains(&1), "the split pinned subtrees to group 1: {pinned:?}");
    // And a unit on group 1, split too: group 1 keeps the unit's own keys
    // (a leaf right under it, a subtree made after the split), which leave
    // with its remainder (kept by a unit pin: a pin over the unit could not
    // move while its subtrees are pinned elsewhere).
    let routing = map_of(&f).await.routing();
    let own = (0..UNITS)
        .map(unit)
        .find(|u| *u != split && routing.ring_places(u.as_bytes()) && routing.ring_owner(u.as_bytes()) == Some(1))
        .expect("a unit the ring gives group 1");
    kv.put(PutRequest { key: format!("{own}leaf").into(), value: b"x".to_vec(), ..Default::default() }).await.unwrap();
    let spread = f.tessera(&["split", &own, "1,2,3", "--json"]);
    assert!(spread.status.success(), "{}", String::from_utf8_lossy(&spread.stderr));
    kv.put(PutRequest { key: format!("{own}late/k").into(), value: b"x".to_vec(), ..Default::default() }).await.unwrap();
    let total = total + 2;

    // Group 1 — on the ring, holding the shallow units, home of both
    // leases — leaves with its data, under the writer and the watch.
    let drained = f.tessera(&["group", "drain", "1", "--json"]);
    assert!(drained.status.success(), "{}", String::from_utf8_lossy(&drained.stderr));
    let drained: placement::api::GroupDrained = serde_json::from_slice(&drained.stdout).unwrap();
    assert!(drained.moves.iter().all(|m| m.outcome == "moved" && m.to != 1 && m.from == [1]), "{drained:?}");
    assert!(drained.moves.iter().any(|m| m.prefix.is_empty() && m.keys >= 5), "its unit pins' keys moved: {drained:?}");
    assert!(drained.leases_copied >= 1, "the keyless lease was copied: {drained:?}");
    eprintln!(
        "group 1 drained: {} moves, left the ring in {} ms, {} leases copied",
        drained.moves.len(),
        drained.ring_flip_ms,
        drained.leases_copied
    );
    let removed = f.tessera(&["group", "remove", "1", "--json"]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let map = map_of(&f).await;
    assert_eq!(map.ring, vec![2, 3]);
    assert!(!map.groups.contains_key(&1) && map.removed_groups.contains(&1));
    assert!(map.pins.values().chain(map.unit_pins.values()).all(|g| *g != 1), "{map:?}");

    stop.store(true, Ordering::Relaxed);
    let acked = writing.await.unwrap();
    assert!(acked.puts.len() > 100, "the writer kept writing: {}", acked.puts.len());

    // The watch saw every acknowledged write once, each key's in order.
    let last = acked.puts.iter().map(|(_, r)| *r).max().unwrap();
    wait::until("the watch to reach the last write", Duration::from_secs(30), || {
        seen.lock().unwrap().iter().any(|(_, r)| *r >= last)
    })
    .await;
    let events = seen.lock().unwrap().clone();
    let unique: BTreeSet<&(String, i64)> = events.iter().collect();
    assert_eq!(unique.len(), events.len(), "an event came twice");
    let mut per_key: BTreeMap<&str, i64> = BTreeMap::new();
    for (k, r) in &events {
        let prev = per_key.insert(k.as_str(), *r).unwrap_or(0);
        assert!(*r > prev, "{k}: revision {r} after {prev}");
    }
    let missing: Vec<&(String, i64)> = acked.puts.iter().filter(|p| !unique.contains(p)).collect();
    assert!(missing.is_empty(), "{} acknowledged writes not watched, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    watching.abort();

    // Every key in exactly the group the map names, and readable through the router.
    let map = map_of(&f).await;
    let routing = map.clone().routing();
    let mut held = 0;
    for g in map.groups.keys() {
        for k in keys_in(&map, *g).await {
            assert_eq!(routing.group_of(&k), Some(*g), "{} is in group {g}", String::from_utf8_lossy(&k));
            held += 1;
        }
    }
    assert_eq!(held, total);
    let through = kv.range(RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() }).await;
    assert_eq!(through.unwrap().into_inner().count, total);
    for k in shallow.into_iter().map(String::from).chain([format!("{own}leaf"), format!("{own}late/k")]) {
        assert_eq!(etcd.get(k.as_str(), None).await.unwrap().kvs().len(), 1, "{k}");
    }

    // The leases outlived their home: renewed and listing their keys through the router.
    let (mut keeper, mut renewals) = etcd.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert!(renewals.message().await.unwrap().unwrap().ttl() > 0);
    let ttl = etcd.lease_time_to_live(lease, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(ttl.keys().len(), leased.len());
    let (mut keeper, mut renewals) = etcd.lease_keep_alive(keyless).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert!(renewals.message().await.unwrap().unwrap().ttl() > 0, "the keyless lease lives on");
    assert!(etcd.lease_time_to_live(keyless, None).await.unwrap().ttl() > 0);
    // A lease granted now lives on a serving group and renews.
    let fresh_lease = etcd.lease_grant(60, None).await.unwrap().id();
    let (mut keeper, mut renewals) = etcd.lease_keep_alive(fresh_lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert!(renewals.message().await.unwrap().unwrap().ttl() > 0);

    // A unit created now goes where the new ring says.
    let fresh = (0..400).map(|i| format!("/registry/fresh{i}/")).find(|u| routing.group_of(u.as_bytes()) == Some(3)).unwrap();
    assert_eq!(shardmap::ring::Ring::new(&[2, 3]).owner(fresh.as_bytes()), Some(3));
    let key = format!("{fresh}ns/x");
    etcd.put(key.as_str(), "x", None).await.unwrap();
    assert!(keys_in(&map, 3).await.contains(&key.into_bytes()));
}
