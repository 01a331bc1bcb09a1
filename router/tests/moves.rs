//! Moving a prefix with its data (`tessera move`, docs/architecture.md
//! "Moving a prefix") through a real federation, under writes, paginated
//! lists and a watch: no acknowledged write lost (each put's prev_kv is
//! the writer's own last write), no watch event missing or twice, each
//! key's revisions increasing across the cutover, every list whole at its
//! revision, the data in exactly one group afterwards. And placement killed
//! at a step of a move: the next placement finishes or rolls it back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_proto::etcdserverpb::kv_client::KvClient;
use tessera_proto::etcdserverpb::watch_client::WatchClient;
use tessera_proto::etcdserverpb::watch_request::RequestUnion;
use tessera_proto::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
use tessera_rpc::metadata::group_request;
use tessera_testkit::writer::{fill_units, prev_kv_writer};
use tessera_testkit::{wait, Federation};
use tonic::transport::Channel;

const PREFIX: &str = "/registry/widgets/";
const KEYS: usize = 3000;
const WRITERS: usize = 4;

fn key(i: usize) -> Vec<u8> {
    format!("{PREFIX}ns{}/w{i:05}", i % 7).into_bytes()
}

/// Live keys under PREFIX in `group`, read from its first replica that answers.
async fn count_in(map: &shardmap::ShardMap, group: u64) -> i64 {
    let req = RangeRequest {
        key: PREFIX.into(),
        range_end: shardmap::prefix_end(PREFIX.as_bytes()),
        count_only: true,
        ..Default::default()
    };
    let mut last = None;
    for rep in &map.groups[&group].replicas {
        let Ok(mut kv) = KvClient::connect(map.nodes[&rep.node].client_url.clone()).await else { continue };
        match kv.range(group_request(group, req.clone())).await {
            Ok(r) => return r.into_inner().count,
            Err(e) => last = Some(e),
        }
    }
    panic!("no replica of group {group} answered: {last:?}")
}

/// Live keys under PREFIX, through the router.
async fn count_through(kv: &mut KvClient<Channel>) -> i64 {
    let req = RangeRequest {
        key: PREFIX.into(),
        range_end: shardmap::prefix_end(PREFIX.as_bytes()),
        count_only: true,
        ..Default::default()
    };
    kv.range(req).await.unwrap().into_inner().count
}

async fn map_of(f: &Federation) -> shardmap::ShardMap {
    placement::PlacementClient::new(f.placement()).map().await.unwrap()
}

async fn load(kv: &KvClient<Channel>) -> i64 {
    let mut tasks = vec![];
    for w in 0..8 {
        let mut kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let mut rev = 0;
            for i in (w..KEYS).step_by(8) {
                let r = kv.put(PutRequest { key: key(i), value: b"0".to_vec(), ..Default::default() }).await.unwrap();
                rev = rev.max(r.into_inner().header.unwrap().revision);
            }
            rev
        }));
    }
    let mut rev = 0;
    for t in tasks {
        rev = rev.max(t.await.unwrap());
    }
    rev
}

/// Writer `w` owns keys i ≡ w (mod WRITERS) and rewrites them in turn;
/// each put's prev_kv must be its own last write. Returns (key, revision) acked.
async fn writer(mut kv: KvClient<Channel>, w: usize, stop: Arc<AtomicBool>) -> Vec<(Vec<u8>, i64)> {
    let mut last: BTreeMap<usize, String> = BTreeMap::new();
    let mut acked = vec![];
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let i = w + WRITERS * (n % (KEYS / WRITERS));
        n += 1;
        let value = format!("{w}-{n}");
        let put = PutRequest { key: key(i), value: value.clone().into_bytes(), prev_kv: true, ..Default::default() };
        let resp = kv.put(put).await.unwrap_or_else(|e| panic!("write {n} of writer {w} failed: {e:?}")).into_inner();
        let prev = resp.prev_kv.map(|p| String::from_utf8(p.value).unwrap()).unwrap_or_default();
        let expected = last.get(&i).cloned().unwrap_or_else(|| "0".into());
        assert_eq!(prev, expected, "key {} lost a write", String::from_utf8_lossy(&key(i)));
        last.insert(i, value);
        acked.push((key(i), resp.header.unwrap().revision));
    }
    acked
}

/// Paginated lists (500 per page, all pages at the first page's revision):
/// each must hold every key once, in order.
async fn lister(mut kv: KvClient<Channel>, stop: Arc<AtomicBool>) -> usize {
    let mut lists = 0;
    while !stop.load(Ordering::Relaxed) {
        let end = shardmap::prefix_end(PREFIX.as_bytes());
        let mut from = PREFIX.as_bytes().to_vec();
        let (mut rev, mut seen, mut total) = (0, BTreeSet::new(), None);
        loop {
            let req = RangeRequest { key: from.clone(), range_end: end.clone(), limit: 500, revision: rev, ..Default::default() };
            let page = kv.range(req).await.expect("a list page").into_inner();
            if rev == 0 {
                rev = page.header.as_ref().unwrap().revision;
                total = Some(page.count);
            }
            for k in &page.kvs {
                assert!(seen.insert(k.key.clone()), "a key listed twice");
            }
            if !page.more {
                break;
            }
            from = page.kvs.last().unwrap().key.clone();
            from.push(0);
        }
        assert_eq!(seen.len() as i64, total.unwrap(), "a list at revision {rev} is whole");
        assert_eq!(seen.len(), KEYS);
        lists += 1;
    }
    lists
}

type Seen = Arc<Mutex<Vec<(Vec<u8>, i64)>>>;

/// A watch of `prefix` from `start` through the router: its (key, revision)
/// events as they come (a cancel fails the test). Dropping the handle ends it.
async fn watch(f: &Federation, prefix: &[u8], start: i64) -> (Seen, WatchHandle) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let create = WatchCreateRequest {
        key: prefix.to_vec(),
        range_end: shardmap::prefix_end(prefix),
        start_revision: start,
        ..Default::default()
    };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut stream =
        WatchClient::new(f.channel().await).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().unwrap().created);
    let events: Seen = Arc::default();
    let sink = events.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            assert!(!resp.canceled, "the watch was cancelled: {resp:?}");
            let mut ev = sink.lock().unwrap();
            ev.extend(resp.events.into_iter().map(|e| e.kv.unwrap()).map(|kv| (kv.key, kv.mod_revision)));
        }
    });
    (events, WatchHandle { _tx: tx, task })
}

struct WatchHandle {
    _tx: tokio::sync::mpsc::Sender<WatchRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_moves_with_its_data_under_writes_lists_and_a_watch() {
    // The watches' traffic logged on the router and the nodes: a miss
    // here has been seen once (in CI, not reproduced since), and its logs
    // are what tells where an event went.
    let f = Federation::start_logging(3, Some("info,router::watch=debug,shard_node::server::watch=debug"));
    let kv = f.kv().await;
    let loaded = load(&kv).await;
    let before = map_of(&f).await;
    let old = before.clone().routing().group_of(&key(0)).unwrap();
    let new = *before.groups.keys().find(|g| **g != old).unwrap();
    assert_eq!(count_in(&before, old).await, KEYS as i64);

    // Watches from just after the load, through the cutover: of the prefix
    // (one group's at a time), and of all of /registry/ (every group's).
    let (events, _w1) = watch(&f, PREFIX.as_bytes(), loaded + 1).await;
    let (wide, _w2) = watch(&f, b"/registry/", loaded + 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS).map(|w| tokio::spawn(writer(kv.clone(), w, stop.clone()))).collect();
    let listing = tokio::spawn(lister(kv.clone(), stop.clone()));
    wait::until("writes to go on", Duration::from_secs(20), || !events.lock().unwrap().is_empty()).await;

    let placement = f.placement();
    let moved = tokio::task::spawn_blocking(move || {
        tessera_testkit::bins::command(tessera_testkit::bins::path("tessera"))
            .args(["move", PREFIX, &new.to_string(), "--json", "--placement", &placement])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    let report: placement::api::MoveReport = serde_json::from_slice(&moved.stdout).unwrap();
    assert_eq!((report.outcome.as_str(), report.from.as_slice(), report.keys), ("moved", &[old][..], KEYS as i64));
    assert!(report.revisions >= KEYS as u64 && report.bytes > 0);
    let phases: Vec<&str> = report.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(phases, ["copy", "cutover", "adopt"]);

    // Writes go on after the move, on the new owner.
    let after_move = events.lock().unwrap().len();
    wait::until("writes after the move", Duration::from_secs(20), || events.lock().unwrap().len() > after_move + 200).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = vec![];
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(listing.await.unwrap() > 0, "lists ran");
    let last = acked.iter().map(|(_, r)| *r).max().unwrap();
    for (name, events) in [("prefix", &events), ("wide", &wide)] {
        wait::until("the watch to catch up", Duration::from_secs(20), || {
            events.lock().unwrap().last().is_some_and(|(_, r)| *r >= last)
        })
        .await;
        // Every acknowledged write once in the watch, nothing else, in order per key.
        let seen = events.lock().unwrap().clone();
        let unique: BTreeSet<&(Vec<u8>, i64)> = seen.iter().collect();
        if unique.len() != seen.len() {
            let mut count: BTreeMap<&(Vec<u8>, i64), usize> = BTreeMap::new();
            seen.iter().for_each(|e| *count.entry(e).or_default() += 1);
            let twice: Vec<String> =
                count.iter().filter(|(_, n)| **n > 1).map(|((k, r), _)| format!("{}@{r}", String::from_utf8_lossy(k))).collect();
            panic!("the {name} watch saw events twice: {twice:?}");
        }
        let acked_set: BTreeSet<&(Vec<u8>, i64)> = acked.iter().collect();
        let show = |s: Vec<&&(Vec<u8>, i64)>| {
            s.iter().take(5).map(|(k, r)| format!("{}@{r}", String::from_utf8_lossy(k))).collect::<Vec<_>>()
        };
        let missing = show(acked_set.difference(&unique).collect());
        let extra = show(unique.difference(&acked_set).collect());
        assert!(
            missing.is_empty() && extra.is_empty(),
            "the {name} watch missed {missing:?} and saw {extra:?} that nobody wrote"
        );
        let mut per_key: BTreeMap<&[u8], i64> = BTreeMap::new();
        for (k, r) in &seen {
            let prev = per_key.insert(k, *r).unwrap_or(0);
            assert!(*r > prev, "revisions of {} go back in the {name} watch: {prev} then {r}", String::from_utf8_lossy(k));
        }
    }

    // The data is in exactly one group, the new one.
    let map = map_of(&f).await;
    assert_eq!(map.clone().routing().group_of(&key(0)), Some(new));
    assert!(map.moves.is_empty());
    assert_eq!(count_in(&map, new).await, KEYS as i64);
    assert_eq!(count_in(&map, old).await, 0);
    let moves = f.tessera(&["moves", "--json"]);
    let list: placement::api::MovesList = serde_json::from_slice(&moves.stdout).unwrap();
    assert!(list.in_flight.is_empty() && list.recent.len() == 1);
}

/// Kills placement at `failpoint` during a move, starts it again, and
/// returns the map once it has settled the move.
async fn move_interrupted(f: &mut Federation, failpoint: &str, to: u64) -> shardmap::ShardMap {
    let args = f.kill9(f.pid_of_placement());
    f.restart_with_env(&args, &[("FAILPOINTS", &format!("{failpoint}=panic"))]);
    let placement = placement::PlacementClient::new(f.placement());
    wait::until_async("placement with the failpoint", Duration::from_secs(20), || async { placement.map().await.is_ok() }).await;
    let out = f.tessera(&["move", PREFIX, &to.to_string()]);
    assert!(!out.status.success(), "placement dies at {failpoint}");
    f.kill_restarted();
    f.restart(&args);
    wait::until_async("the next placement to settle the move", Duration::from_secs(30), || {
        let placement = placement.clone();
        async move { placement.map().await.is_ok_and(|m| m.moves.is_empty()) }
    })
    .await;
    placement.map().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_placement_dies_is_rolled_back_or_finished_by_the_next() {
    let mut f = Federation::start(2);
    let mut kv = f.kv().await;
    for i in 0..200 {
        kv.put(PutRequest { key: key(i), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    }
    let map = map_of(&f).await;
    let old = map.clone().routing().group_of(&key(0)).unwrap();
    let new = *map.groups.keys().find(|g| **g != old).unwrap();

    // Dead before the map changed: rolled back, the prefix stays (and takes writes) where it was.
    let map = move_interrupted(&mut f, "move::before_commit", new).await;
    assert_eq!(map.clone().routing().group_of(&key(0)), Some(old));
    assert_eq!((count_in(&map, old).await, count_in(&map, new).await), (200, 0));
    kv.put(PutRequest { key: key(500), value: b"v".to_vec(), ..Default::default() }).await.unwrap();

    // Dead after the map changed: finished, the prefix is on the new group only.
    let map = move_interrupted(&mut f, "move::after_commit", new).await;
    assert_eq!(map.clone().routing().group_of(&key(0)), Some(new));
    assert_eq!((count_in(&map, old).await, count_in(&map, new).await), (0, 201));
    assert_eq!(count_through(&mut kv).await, 201);
    kv.put(PutRequest { key: key(501), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(count_in(&map, new).await, 202);
}

/// The node leading `group` (from `tessera status`), once there is one.
async fn leader_of(f: &Federation, group: u64) -> String {
    let mut leader = None;
    wait::until("a leader", Duration::from_secs(30), || {
        let status = f.status_json();
        let g = status["groups"].as_array().unwrap().iter().find(|g| g["id"].as_u64() == Some(group)).cloned();
        leader = g.and_then(|g| g["leader"].as_str().map(String::from));
        leader.is_some()
    })
    .await;
    leader.unwrap()
}

/// The leader of the move's source or target dies where its replica
/// applies a step (shard-node's failpoints: staging, adoption, release),
/// and the router is killed while a move runs: each move ends finished or
/// rolled back, the prefix's keys all in exactly the group the map gives
/// them, and writes through the router go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_source_or_target_leader_dies_at_each_step_ends_in_one_owner() {
    let mut f = Federation::start(2);
    let mut kv = f.kv().await;
    let mut written = 0;
    for i in 0..300 {
        kv.put(PutRequest { key: key(i), value: vec![b'v'; 64], ..Default::default() }).await.unwrap();
        written += 1;
    }
    for (failpoint, dies) in [("apply::move_stage", "target"), ("apply::move_adopt", "target"), ("apply::move_release", "source")]
    {
        let map = map_of(&f).await;
        let owner = map.clone().routing().group_of(&key(0)).unwrap();
        let other = *map.groups.keys().find(|g| **g != owner).unwrap();
        let group = if dies == "target" { other } else { owner };
        // Its leader restarted with the failpoint armed, then made leader again.
        let node = leader_of(&f, group).await;
        let args = f.kill9(f.pid(&node));
        f.restart_with_env(&args, &[("FAILPOINTS", &format!("{failpoint}=panic"))]);
        wait::until("the node to lead again", Duration::from_secs(30), || {
            f.tessera(&["group", "move-leader", &group.to_string(), &node]).status.success()
        })
        .await;
        let moved = f.tessera(&["move", PREFIX, &other.to_string(), "--json"]);
        let said = if moved.status.success() { &moved.stdout } else { &moved.stderr };
        eprintln!("{failpoint} on the {dies}'s leader {node}: {}", String::from_utf8_lossy(said).replace('\n', " "));
        wait::until("the node to die at the failpoint", Duration::from_secs(30), || f.restarted_exited()).await;
        f.kill_restarted();
        f.restart(&args);
        let placement = placement::PlacementClient::new(f.placement());
        wait::until_async("the move to be finished or rolled back", Duration::from_secs(60), || {
            let placement = placement.clone();
            async move { placement.map().await.is_ok_and(|m| m.moves.is_empty()) }
        })
        .await;
        let map = map_of(&f).await;
        let now = map.clone().routing().group_of(&key(0)).unwrap();
        let gone = if now == owner { other } else { owner };
        wait::until_async("the prefix's keys in exactly one group", Duration::from_secs(30), || {
            let map = map.clone();
            async move { (count_in(&map, now).await, count_in(&map, gone).await) == (written, 0) }
        })
        .await;
        kv.put(PutRequest { key: key(1000 + written as usize), value: b"after".to_vec(), ..Default::default() }).await.unwrap();
        written += 1;
    }

    // The router killed while a move copies (rate-limited to last ~2 s): the
    // move does not need it; a new router serves the moved prefix.
    let map = map_of(&f).await;
    let owner = map.clone().routing().group_of(&key(0)).unwrap();
    let other = *map.groups.keys().find(|g| **g != owner).unwrap();
    let router = f.kill9(f.pid_of_router());
    let placement = f.placement();
    let moving = std::thread::spawn(move || {
        tessera_testkit::bins::command(tessera_testkit::bins::path("tessera"))
            .args(["move", PREFIX, &other.to_string(), "--rate-mb", "0.01", "--json", "--placement", &placement])
            .output()
            .unwrap()
    });
    f.restart(&router);
    let moved = moving.join().unwrap();
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    let mut kv = f.kv().await;
    assert_eq!(count_through(&mut kv).await, written);
    let map = map_of(&f).await;
    assert_eq!((count_in(&map, other).await, count_in(&map, owner).await), (written, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_units_and_rebalance_moves_one_to_the_emptier_group() {
    let f = Federation::start(2);
    let map = map_of(&f).await;
    let routing = map.clone().routing();
    // Three units that the ring gives to the same group, of 300, 200 and 100 keys.
    let units: Vec<String> =
        (0..200).map(|i| format!("/registry/things{i}/")).filter(|u| routing.group_of(u.as_bytes()) == Some(1)).take(3).collect();
    assert_eq!(units.len(), 3);
    let mut kv = f.kv().await;
    for (u, n) in units.iter().zip([300, 200, 100]) {
        for i in 0..n {
            kv.put(PutRequest { key: format!("{u}ns/k{i}").into_bytes(), value: vec![b'v'; 512], ..Default::default() })
                .await
                .unwrap();
        }
    }
    let top = f.tessera(&["top", "--by", "bytes", "--interval", "0.2", "--json"]);
    assert!(top.status.success(), "{}", String::from_utf8_lossy(&top.stderr));
    let top: serde_json::Value = serde_json::from_slice(&top.stdout).unwrap();
    let rows: Vec<(String, u64, i64)> = top["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["unit"].as_str().unwrap().to_string(), r["group"].as_u64().unwrap(), r["keys"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        rows,
        units.iter().cloned().zip([1, 1, 1]).zip([300, 200, 100]).map(|((u, g), k)| (u, g, k)).collect::<Vec<_>>(),
        "largest first"
    );

    // Group 1 holds everything: half the gap is 300 keys' worth, and the largest unit that fits is the 300-key one.
    let args = ["rebalance", "--min-mib", "0", "--margin", "0.1", "--json"];
    let dry = f.tessera(&[&args[..], &["--dry-run"]].concat());
    let plan: placement::api::RebalancePlan = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(plan.moves.len(), 1, "{plan:?}");
    assert_eq!((plan.moves[0].unit.as_str(), plan.moves[0].from, plan.moves[0].to), (units[0].as_str(), 1, 2));
    assert!(plan.executed.is_empty() && plan.moves[0].why.contains("brings them closest"), "{plan:?}");
    assert_eq!(map_of(&f).await.epoch, map.epoch, "a dry run changes nothing");
    let done = f.tessera(&args);
    let plan: placement::api::RebalancePlan = serde_json::from_slice(&done.stdout).unwrap();
    assert!(plan.executed.len() == 1 && plan.executed[0].starts_with("moved"), "{plan:?}");
    let after = map_of(&f).await;
    assert_eq!(after.clone().routing().group_of(units[0].as_bytes()), Some(2));
    let count = |m: &shardmap::ShardMap, g: u64| {
        let rep = &m.groups[&g].replicas[0];
        let url = m.nodes[&rep.node].client_url.clone();
        async move {
            let mut kv = KvClient::connect(url).await.unwrap();
            let req = RangeRequest {
                key: b"/registry/".to_vec(),
                range_end: shardmap::prefix_end(b"/registry/"),
                count_only: true,
                ..Default::default()
            };
            kv.range(group_request(g, req)).await.unwrap().into_inner().count
        }
    };
    assert_eq!((count(&after, 1).await, count(&after, 2).await), (300, 300));
}

/// One group holding 50 units, two groups added: a rebalance moves units
/// until each group holds a third of the bytes (± 10 %), while a writer
/// keeps writing to every unit (none of its writes lost or failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_groups_take_a_third_each_of_a_full_group_under_writes() {
    let f = Federation::start(1);
    let mut kv = f.kv().await;
    let unit = |u: usize| format!("/registry/kind{u:02}/");
    fill_units(&mut kv, &(0..50).map(unit).collect::<Vec<_>>(), 200).await;
    for _ in 0..2 {
        let added = f.tessera(&["group", "add", "--replicas", "3"]);
        assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let written: Vec<String> = (1..=50 * 7).map(|n| format!("{}ns/o{}", unit(n % 50), n % 7)).collect();
    let writing = tokio::spawn(prev_kv_writer(kv.clone(), written, stop.clone()));
    let done = f.tessera(&["rebalance", "--min-mib", "0", "--margin", "0.1", "--max-moves", "100", "--json"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let plan: placement::api::RebalancePlan = serde_json::from_slice(&done.stdout).unwrap();
    assert!(plan.executed.iter().all(|e| e.starts_with("moved")), "{plan:?}");
    assert!(plan.moves.len() >= 30, "about two thirds of the units move: {plan:?}");

    let admin = placement::PlacementClient::new(f.placement());
    let bytes_per_group = |units: &placement::api::UnitsReport| {
        let mut bytes: BTreeMap<u64, u64> = BTreeMap::new();
        for u in units.units.iter().filter(|u| u.keys > 0) {
            *bytes.entry(u.group).or_default() += u.bytes;
        }
        bytes
    };
    let bytes = bytes_per_group(&admin.units().await.unwrap());
    let total: u64 = bytes.values().sum();
    assert_eq!(bytes.len(), 3, "{bytes:?}");
    for (g, b) in &bytes {
        let share = *b as f64 / total as f64;
        assert!((0.23..=0.43).contains(&share), "group {g} holds {:.0}% of the bytes: {bytes:?}", share * 100.0);
    }

    // One of the new groups leaves again, under the same writes: drained
    // (its units move to the others with their data), then removed.
    let leaving = *map_of(&f).await.groups.keys().max().unwrap();
    let refused = f.tessera(&["group", "drain", "1"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("on the ring"));
    let refused = f.tessera(&["group", "remove", &leaving.to_string()]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("drain it first"));
    let drained = f.tessera(&["group", "drain", &leaving.to_string(), "--json"]);
    assert!(drained.status.success(), "{}", String::from_utf8_lossy(&drained.stderr));
    let drained: placement::api::GroupDrained = serde_json::from_slice(&drained.stdout).unwrap();
    assert!(drained.moves.len() >= 10 && drained.moves.iter().all(|m| m.outcome == "moved" && m.to != leaving), "{drained:?}");
    let removed = f.tessera(&["group", "remove", &leaving.to_string()]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let map = map_of(&f).await;
    assert!(!map.groups.contains_key(&leaving) && map.removed_groups.contains(&leaving), "{map:?}");
    assert!(!map.pins.values().any(|g| *g == leaving));
    stop.store(true, Ordering::Relaxed);
    let last = writing.await.unwrap().last;
    // Its nodes stop the replicas: none answers for it any more.
    let node_urls: Vec<String> = map.nodes.values().map(|n| n.client_url.clone()).collect();
    wait::until_async("the removed group's replicas to stop", Duration::from_secs(20), || {
        let urls = node_urls.clone();
        async move {
            for url in urls {
                let Ok(mut kv) = KvClient::connect(url).await else { continue };
                let req = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() };
                if kv.range(group_request(leaving, req)).await.is_ok() {
                    return false;
                }
            }
            true
        }
    })
    .await;

    let units = admin.units().await.unwrap();
    let keys: i64 = units.units.iter().map(|u| u.keys).sum();
    assert_eq!(keys, 50 * 200);
    let bytes = bytes_per_group(&units);
    assert_eq!(bytes.len(), 2, "the two groups left hold every key: {bytes:?}");
    for (key, value) in last {
        let got = kv.range(RangeRequest { key: key.clone().into_bytes(), ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(got.kvs[0].value, value.into_bytes(), "{key}");
    }
}
