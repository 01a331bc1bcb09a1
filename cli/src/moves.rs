//! `tessera move`, `moves` and `where`: moving a prefix with its data (with
//! a progress line while it runs), the moves in flight, where a key lives.

use placement::api::{MergeReport, MoveProgress, MoveReport, MoveRequest, MovesList, RebalancePlan, SplitReport};
use placement::PlacementClient;
use serde::Serialize;
use shardmap::ShardMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Runs the move; while it runs, a progress line on a terminal's stderr.
pub async fn run(p: &PlacementClient, req: &MoveRequest, json: bool) -> anyhow::Result<MoveReport> {
    with_progress(p, json, p.move_prefix(req), |m| m.prefix == req.prefix).await
}

/// Awaits `op` (a move, or an operation made of moves: split, merge,
/// drain, a ring join); while it runs, a progress line on a terminal's
/// stderr for the move in flight that `ours` picks.
pub async fn with_progress<T>(
    p: &PlacementClient,
    json: bool,
    op: impl std::future::Future<Output = Result<T, placement::PlacementError>>,
    ours: impl Fn(&MoveProgress) -> bool,
) -> anyhow::Result<T> {
    let show_progress = !json && std::io::stderr().is_terminal();
    tokio::pin!(op);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            done = &mut op => {
                if show_progress {
                    eprint!("\r\x1b[2K");
                }
                return Ok(done?);
            }
            _ = tick.tick(), if show_progress => {
                if let Ok(list) = p.moves().await {
                    if let Some(m) = list.in_flight.iter().find(|m| ours(m)) {
                        eprint!("\r\x1b[2K{}", progress(m));
                        let _ = std::io::stderr().flush();
                    }
                }
            }
        }
    }
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn progress(m: &MoveProgress) -> String {
    format!(
        "{} -> group {}: {} (pass {}), {} revisions, {} copied, {} live keys staged, {:.1}s",
        m.prefix,
        m.to,
        m.phase,
        m.passes,
        m.revisions,
        mb(m.bytes),
        m.keys,
        m.elapsed_ms as f64 / 1e3
    )
}

pub fn summary(r: &MoveReport) -> String {
    let from = r.from.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    if r.outcome == "already" {
        return format!("{} is already on group {} (map epoch {})", r.prefix, r.to, r.epoch);
    }
    let phases = r.phases.iter().map(|p| format!("{} {} ms", p.phase, p.ms)).collect::<Vec<_>>().join(", ");
    // A leaving group's remainder moves under the empty prefix.
    let what = if r.prefix.is_empty() { "the keys of its unit pins".to_string() } else { r.prefix.clone() };
    format!(
        "{what} moved from group(s) {from} to group {} (map epoch {}): {} live keys, {} revisions, {} at {:.1} MB/s; writes paused {} ms; {phases}",
        r.to,
        r.epoch,
        r.keys,
        r.revisions,
        mb(r.bytes),
        r.copy_mb_per_s,
        r.write_pause_ms
    )
}

pub fn list(l: &MovesList) -> String {
    let mut out = vec![];
    if l.in_flight.is_empty() {
        out.push("no move in flight".to_string());
    }
    for m in &l.in_flight {
        let driver = if m.driven_here { "" } else { " (its placement is gone: the next to start settles it)" };
        out.push(format!("in flight: {}{driver}", progress(m)));
    }
    for r in &l.recent {
        match &r.error {
            Some(e) => out.push(format!("{}: {} -> group {} rolled back: {e}", r.outcome, r.prefix, r.to)),
            None => out.push(summary(r)),
        }
    }
    out.join("\n")
}

/// Where a key lives.
#[derive(Serialize)]
pub struct Location {
    pub key: String,
    /// The map entry that decides: a pin or spread prefix, or the ring's unit.
    pub decided_by: String,
    pub unit: String,
    pub group: Option<u64>,
    pub epoch: u64,
}

pub fn locate(map: &ShardMap, key: &str) -> Location {
    let k = key.as_bytes();
    let pin = map.pins.keys().filter(|p| k.starts_with(p.as_bytes())).max_by_key(|p| p.len());
    let spread = map.spreads.keys().filter(|p| k.starts_with(p.as_bytes())).max_by_key(|p| p.len());
    let unit = String::from_utf8_lossy(shardmap::placement_unit(k, map.depth)).into_owned();
    let decided_by = match (pin, spread) {
        (Some(p), Some(s)) if p.len() >= s.len() => format!("pin {p}"),
        (_, Some(s)) => format!("spread {s}"),
        (Some(p), None) => format!("pin {p}"),
        (None, None) if map.unit_pins.contains_key(&unit) => format!("unit pin {unit:?} (kept there by a ring change)"),
        (None, None) => format!("ring (unit {unit})"),
    };
    let group = map.clone().routing().group_of(k);
    Location { key: key.into(), decided_by, unit, group, epoch: map.epoch }
}

pub fn located(l: &Location) -> String {
    match l.group {
        Some(g) => format!("{}: group {g}, by {} (map epoch {})", l.key, l.decided_by, l.epoch),
        None => format!("{}: no group yet (the map has none)", l.key),
    }
}

pub fn plan(p: &RebalancePlan) -> String {
    let mut out = vec![];
    if p.moves.is_empty() {
        out.push("no move needed".to_string());
    }
    for m in &p.moves {
        if m.split_over.is_empty() {
            out.push(format!("move {} from group {} to group {}: {}", m.unit, m.from, m.to, m.why));
        } else {
            let over = m.split_over.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            out.push(format!("split {} from group {} over groups {over}: {}", m.unit, m.from, m.why));
        }
    }
    out.extend(p.notes.iter().cloned());
    out.extend(p.executed.iter().map(|e| format!("done: {e}")));
    out.join("\n")
}

pub fn split_summary(r: &SplitReport) -> String {
    let mut out: Vec<String> = r.moves.iter().map(summary).collect();
    let over = r.groups.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    out.push(format!(
        "{} split over groups {over}: {} subtrees moved, {} stayed on group {}, {} keys right under it stayed (map epoch {})",
        r.prefix,
        r.moves.len(),
        r.stayed,
        r.owner,
        r.leaves,
        r.epoch
    ));
    out.join("\n")
}

pub fn merge_summary(r: &MergeReport) -> String {
    let mut out: Vec<String> = r.moves.iter().map(summary).collect();
    out.push(format!(
        "{} merged on group {}: {} moves, {} pins under it dropped (map epoch {})",
        r.prefix,
        r.group,
        r.moves.len(),
        r.pins_dropped,
        r.epoch
    ));
    out.join("\n")
}
