//! The shard map as the router and nodes read it from the store (JSON), and
//! routing by it: any map that decodes, and any key or range, must route
//! without a panic, and a key's group must be among its range's groups.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardmap::ShardMap;

fuzz_target!(|data: &[u8]| {
    // The map, then keys: "<map json>\n<key>\n<range end>".
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (Some(json), key, end) = (parts.next(), parts.next().unwrap_or(b"/registry/pods/a"), parts.next().unwrap_or(b"")) else {
        return;
    };
    let Ok(map) = serde_json::from_slice::<ShardMap>(json) else { return };
    if key.is_empty() {
        return; // etcd refuses an empty key before anything routes it
    }
    let routing = map.routing();
    let one = routing.group_of(key);
    let single = routing.groups_for_range(key, &[]);
    assert_eq!(single, one.into_iter().collect::<Vec<_>>());
    let groups = routing.groups_for_range(key, end);
    if end.is_empty() || key < end {
        if let Some(g) = one {
            assert!(end.is_empty() || groups.contains(&g), "{key:?}'s group {g} is not among [{key:?}, {end:?})'s {groups:?}");
        }
    }
});
