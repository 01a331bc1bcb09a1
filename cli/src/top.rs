//! `tessera top`: the hottest and largest placement units, from two samples
//! of placement's unit statistics `--interval` apart.

use placement::api::{UnitRow, UnitsReport};
use placement::PlacementClient;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TopRow {
    pub unit: String,
    pub group: u64,
    pub keys: i64,
    pub bytes: u64,
    pub writes_per_s: f64,
    pub reads_per_s: f64,
    /// Of its group's bytes, and of its group's writes per second.
    pub bytes_share: f64,
    pub writes_share: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Top {
    pub epoch: u64,
    pub interval_s: f64,
    pub sorted_by: String,
    pub units: Vec<TopRow>,
    pub partial: Vec<u64>,
}

/// Rates between two samples (a unit new in the second counts from 0).
pub fn rates(first: &UnitsReport, second: &UnitsReport) -> Vec<TopRow> {
    let secs = (second.at_ms.saturating_sub(first.at_ms)) as f64 / 1000.0;
    let before: BTreeMap<(&str, u64), &UnitRow> = first.units.iter().map(|u| ((u.unit.as_str(), u.group), u)).collect();
    let rate = |now: u64, then: u64| if secs > 0.0 { now.saturating_sub(then) as f64 / secs } else { 0.0 };
    let mut rows: Vec<TopRow> = second
        .units
        .iter()
        .map(|u| {
            let b = before.get(&(u.unit.as_str(), u.group));
            TopRow {
                unit: u.unit.clone(),
                group: u.group,
                keys: u.keys,
                bytes: u.bytes,
                writes_per_s: rate(u.writes, b.map_or(0, |b| b.writes)),
                reads_per_s: rate(u.reads, b.map_or(0, |b| b.reads)),
                bytes_share: 0.0,
                writes_share: 0.0,
            }
        })
        .collect();
    let mut per_group: BTreeMap<u64, (u64, f64)> = BTreeMap::new();
    for r in &rows {
        let g = per_group.entry(r.group).or_default();
        g.0 += r.bytes;
        g.1 += r.writes_per_s;
    }
    for r in &mut rows {
        let (bytes, writes) = per_group[&r.group];
        r.bytes_share = if bytes > 0 { r.bytes as f64 / bytes as f64 } else { 0.0 };
        r.writes_share = if writes > 0.0 { r.writes_per_s / writes } else { 0.0 };
    }
    rows
}

pub async fn run(p: &PlacementClient, interval: f64, by: &str, limit: usize) -> anyhow::Result<Top> {
    let key: fn(&TopRow) -> f64 = match by {
        "bytes" => |r| r.bytes as f64,
        "keys" => |r| r.keys as f64,
        "writes" => |r| r.writes_per_s,
        "reads" => |r| r.reads_per_s,
        other => anyhow::bail!("--by {other:?}: one of bytes, keys, writes, reads"),
    };
    if !(interval > 0.0 && interval <= 600.0) {
        anyhow::bail!("--interval must be between 0 and 600 seconds");
    }
    let first = p.units().await?;
    tokio::time::sleep(Duration::from_secs_f64(interval)).await;
    let second = p.units().await?;
    let mut units = rates(&first, &second);
    // A unit that left the group (moved, deleted) and takes no load now.
    units.retain(|u| u.keys > 0 || u.writes_per_s > 0.0 || u.reads_per_s > 0.0);
    units.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.unit.cmp(&b.unit)));
    if limit > 0 {
        units.truncate(limit);
    }
    let mut partial = second.partial.clone();
    partial.extend(first.partial.iter().filter(|g| !second.partial.contains(g)));
    Ok(Top { epoch: second.epoch, interval_s: interval, sorted_by: by.into(), units, partial })
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

pub fn print(t: &Top) -> String {
    let mut out = vec![format!(
        "placement units by {} (map epoch {}, rates over {:.1} s){}",
        t.sorted_by,
        t.epoch,
        t.interval_s,
        if t.partial.is_empty() { String::new() } else { format!("; groups {:?} answered in part", t.partial) }
    )];
    out.push(format!(
        "{:<32} {:>5} {:>9} {:>10} {:>9} {:>9} {:>8} {:>8}",
        "UNIT", "GROUP", "KEYS", "BYTES", "WRITES/S", "READS/S", "%BYTES", "%WRITES"
    ));
    for r in &t.units {
        out.push(format!(
            "{:<32} {:>5} {:>9} {:>10} {:>9.1} {:>9.1} {:>7.0}% {:>7.0}%",
            if r.unit.is_empty() { "(keys without a '/')" } else { r.unit.as_str() },
            r.group,
            r.keys,
            size(r.bytes),
            r.writes_per_s,
            r.reads_per_s,
            r.bytes_share * 100.0,
            r.writes_share * 100.0
        ));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(unit: &str, group: u64, bytes: u64, writes: u64) -> UnitRow {
        UnitRow { unit: unit.into(), group, keys: 1, bytes, writes, reads: 0 }
    }

    #[test]
    fn rates_and_shares_come_from_the_two_samples() {
        let first =
            UnitsReport { at_ms: 1000, units: vec![row("/a/", 1, 100, 10), row("/b/", 1, 300, 10)], ..Default::default() };
        let second = UnitsReport {
            at_ms: 3000,
            units: vec![row("/a/", 1, 100, 110), row("/b/", 1, 300, 20), row("/c/", 2, 50, 4)],
            ..Default::default()
        };
        let r = rates(&first, &second);
        let a = r.iter().find(|x| x.unit == "/a/").unwrap();
        assert_eq!((a.writes_per_s, a.bytes_share), (50.0, 0.25));
        assert!((a.writes_share - 50.0 / 55.0).abs() < 1e-9);
        let c = r.iter().find(|x| x.unit == "/c/").unwrap();
        assert_eq!((c.writes_per_s, c.bytes_share, c.writes_share), (2.0, 1.0, 1.0), "new in the second sample");
    }
}
