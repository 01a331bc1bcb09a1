//! Moving a prefix (and its subtree) with its data to one group
//! (docs/architecture.md, "Moving a prefix"). Placement drives; the groups
//! keep each step in their raft logs (`shard-node`'s `moves`), and the map
//! records the move, so any placement can finish or roll back a move whose
//! driver died:
//!
//! 1. record the move in the map (phase `copying`); the target stages
//!    (`MoveStage{reset}`);
//! 2. copy: each source's history of the prefix in revision order, in
//!    bounded chunks (`Export` → `MoveStage`), pass after pass while writes
//!    go on, until a pass has little left to copy;
//! 3. cut over at E = epoch + 1: each source fences the prefix at E,
//!    pending (older maps refused, newer ones held), the target holds calls
//!    routed by map E (`MoveTarget{CUTOVER}`); the last changes and the
//!    leases are copied, and the live keys counted on both sides;
//! 4. commit the map at E (pin → target, phase `committed`, with what the
//!    target needs to adopt); if the map moved meanwhile, cut over again
//!    at the new epoch;
//! 5. the target adopts (the staged history becomes its own, raised past
//!    the sources' revisions), the sources release (their copy leaves the
//!    index), the record goes.
//!
//! Until 4, any failure rolls back: the target drops what it staged, the
//! sources lift their fences, the record goes (which moves the map past
//! the fences' epoch). From 4 on, the move only goes forward.

use crate::api::{MoveProgress, MoveReport, MovesList, PhaseTime};
use crate::error::{PlacementError, Result};
use crate::members::{group_request, on_group};
use crate::ops::Placement;
use shardmap::{Adoption, MovePhase, MoveRecord, ShardMap};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};
use tessera_proto::tessera::command::{move_target::Action, LeaseCopy, MoveRelease, MoveStage, MoveTarget};
use tessera_proto::tessera::shard::shard_client::ShardClient;
use tessera_proto::tessera::shard::{ExportRequest, ExportResponse, FenceRequest, MoveStageResponse};
use tessera_rpc::tls::Dialer;
use tonic::transport::Channel;

/// Bytes of values per export chunk (a staged chunk is one raft entry,
/// below a group's request limit).
const CHUNK_BYTES: u64 = 512 * 1024;
/// A pass that copied less than this is followed by the cutover.
const CUTOVER_BELOW_BYTES: u64 = 256 * 1024;
/// Passes before cutting over whatever is left (writes faster than the copy).
const MAX_PASSES: u32 = 20;
/// Cutovers tried when the map keeps changing under one.
const ATTEMPTS: usize = 5;
/// Moves done that `tessera moves` lists.
const RECENT: usize = 20;
/// An export not answered this long asks another replica too (the first
/// answer wins): a replica that restarted answers only once it caught up
/// with the group's commit index.
const EXPORT_HEDGE_AFTER: Duration = Duration::from_millis(500);

/// The moves this placement drives, and the last ones done (in memory: a
/// placement that restarts forgets them; the map's records it does not).
#[derive(Default)]
pub(crate) struct Tracker {
    in_flight: BTreeMap<String, Driving>,
    recent: VecDeque<MoveReport>,
}

struct Driving {
    progress: MoveProgress,
    started: Instant,
    cancel: bool,
}

/// Whether two prefixes share a key.
pub(crate) fn overlap(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// A prefix an admin names: a path that ends with `/` (so it is a whole
/// subtree, not every key that starts with its letters).
pub(crate) fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Err(PlacementError::invalid("a prefix is needed (the empty prefix is every key)"));
    }
    if !prefix.ends_with('/') {
        return Err(PlacementError::invalid(format!(
            "prefix {prefix:?} must end with '/' (a prefix names a subtree, e.g. \"{prefix}/\")"
        )));
    }
    Ok(())
}

/// A Shard client taking a whole export chunk (values of up to `CHUNK_BYTES`,
/// one value past it at most: a group's request limit).
fn shard_client(ch: Channel) -> ShardClient<Channel> {
    ShardClient::new(ch).max_decoding_message_size(64 << 20)
}

/// Calls `group`'s Shard service (any replica that answers).
async fn shard<R, Fut>(
    d: &Dialer,
    map: &ShardMap,
    group: u64,
    what: &str,
    call: impl Fn(ShardClient<Channel>) -> Fut,
) -> Result<R>
where
    Fut: Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
{
    on_group(d, map, group, None, |ch| call(shard_client(ch)), |_| None)
        .await
        .map_err(|e| PlacementError::unavailable(format!("{what} on group {group}: {e}")))
}

async fn stage(d: &Dialer, map: &ShardMap, to: u64, msg: MoveStage) -> Result<MoveStageResponse> {
    shard(d, map, to, "staging", |mut c| {
        let r = group_request(to, msg.clone());
        async move { c.move_stage(r).await }
    })
    .await
}

/// Exports from the first of `g`'s replicas to answer: one is asked, and
/// one more every `EXPORT_HEDGE_AFTER` while none has (or when one fails).
/// Any replica's export is whole up to the call (it waits for ReadIndex).
async fn export(d: &Dialer, map: &ShardMap, g: u64, msg: ExportRequest) -> Result<ExportResponse> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let ask = |url: String| {
        let msg = msg.clone();
        async move {
            let ch = shardmap::watcher::channel(&url, d).await.map_err(|e| e.to_string())?;
            let mut c = shard_client(ch);
            c.export(group_request(g, msg)).await.map(tonic::Response::into_inner).map_err(|e| e.message().to_string())
        }
    };
    let mut urls = map.replica_urls(g).into_iter().map(|(_, u)| u.to_string());
    let mut asked: FuturesUnordered<_> = urls.next().map(ask).into_iter().collect();
    let mut last = String::from("no reachable member");
    while !asked.is_empty() {
        tokio::select! {
            Some(answer) = asked.next() => match answer {
                Ok(x) => return Ok(x),
                Err(e) => {
                    last = e;
                    asked.extend(urls.next().map(ask));
                }
            },
            _ = tokio::time::sleep(EXPORT_HEDGE_AFTER) => asked.extend(urls.next().map(ask)),
        }
    }
    Err(PlacementError::unavailable(format!("exporting on group {g}: {last}")))
}

async fn target(d: &Dialer, map: &ShardMap, to: u64, msg: MoveTarget) -> Result<()> {
    shard(d, map, to, "cutting over", |mut c| {
        let r = group_request(to, msg.clone());
        async move { c.move_target(r).await }
    })
    .await
    .map(|_| ())
}

async fn release(d: &Dialer, map: &ShardMap, g: u64, msg: MoveRelease) -> Result<i64> {
    shard(d, map, g, "releasing", |mut c| {
        let r = group_request(g, msg.clone());
        async move { c.move_release(r).await }
    })
    .await
    .map(|r| r.keys)
}

/// Fences `prefix` at `epoch` on `g`, pending; its revision at the fence.
async fn fence(d: &Dialer, map: &ShardMap, g: u64, prefix: &str, epoch: u64) -> Result<i64> {
    let msg = FenceRequest { prefix: prefix.as_bytes().to_vec(), epoch, pending: true, skip_count: true };
    let resp = shard(d, map, g, "fencing", |mut c| {
        let r = group_request(g, msg.clone());
        async move { c.fence(r).await }
    })
    .await?;
    Ok(resp.header.map_or(0, |h| h.revision))
}

/// Where the copy stands.
#[derive(Default)]
struct Copied {
    /// Per source: the export cursor (main, sub).
    cursors: BTreeMap<u64, (i64, i64)>,
    revisions: u64,
    bytes: u64,
    /// Live keys staged on the target.
    staged_keys: i64,
    /// Filled by the last pass (under the fences).
    source_keys: i64,
    /// The last pass's digests of the live keys: the target's staged, and
    /// the sources' summed (`ExportResponse.digest`).
    staged_digest: u64,
    source_digest: u64,
    compact_revision: i64,
    leases: Vec<LeaseCopy>,
    /// A leaving group's remainder (`Placement::move_remainder`), and the
    /// map's epoch when the move began.
    remainder: bool,
    since_epoch: u64,
}

impl Copied {
    /// The target's staging, (re)started.
    fn reset(&self, prefix: &str) -> MoveStage {
        MoveStage {
            prefix: prefix.as_bytes().to_vec(),
            reset: true,
            remainder: self.remainder,
            epoch: self.since_epoch,
            ..Default::default()
        }
    }
}

impl MoveReport {
    /// The report of a move starting at map `epoch` (filled as it goes).
    fn starting(prefix: &str, to: u64, from: &[u64], epoch: u64) -> Self {
        MoveReport {
            prefix: prefix.into(),
            to,
            from: from.to_vec(),
            outcome: "moved".into(),
            error: None,
            epoch,
            keys: 0,
            revisions: 0,
            bytes: 0,
            phases: vec![],
            write_pause_ms: 0,
            copy_mb_per_s: 0.0,
        }
    }
}

/// Phase timings.
struct Phases {
    done: Vec<PhaseTime>,
    since: Instant,
}

impl Phases {
    fn new() -> Self {
        Phases { done: vec![], since: Instant::now() }
    }

    fn end(&mut self, phase: &str) {
        self.done.push(PhaseTime { phase: phase.into(), ms: self.since.elapsed().as_millis() as u64 });
        self.since = Instant::now();
    }
}

impl Placement {
    /// Moves `prefix` and its subtree, with its data, to group `to`;
    /// `rate_bytes`: at most that many bytes copied per second (0: no limit).
    pub async fn move_prefix(&self, prefix: &str, to: u64, rate_bytes: u64) -> Result<MoveReport> {
        check_prefix(prefix)?;
        let started = Instant::now();
        let map = self.map().await?;
        if !map.groups.contains_key(&to) {
            return Err(PlacementError::not_found(format!("no group {to}")));
        }
        let end = shardmap::prefix_end(prefix.as_bytes());
        if let Some(elsewhere) = kept_elsewhere(&map, prefix, to) {
            return Err(PlacementError::invalid(format!(
                "pins or spreads under {prefix:?} keep part of it on groups {elsewhere:?}; move those prefixes instead"
            )));
        }
        let from: Vec<u64> =
            map.clone().routing().groups_for_range(prefix.as_bytes(), &end).into_iter().filter(|g| *g != to).collect();
        let mut report = MoveReport::starting(prefix, to, &from, map.epoch);
        if let Some((p, _)) = map.moves.iter().find(|(p, _)| overlap(p, prefix)) {
            return Err(PlacementError::conflict(format!("a move of {p:?} is in flight (see `tessera moves`)")));
        }
        if from.is_empty() {
            // The target holds all of it already: only the map changes.
            let m = self.store.update(|m| Ok::<_, PlacementError>(m.pins.get(prefix) != Some(&to) && pin(m, prefix, to))).await?;
            report.epoch = m.epoch;
            if m.epoch == map.epoch {
                report.outcome = "already".into();
            }
            return Ok(report);
        }
        self.run_move(prefix, to, from, rate_bytes, false, started, report).await
    }

    /// A leaving group's remainder — the keys of its unit pins, all it
    /// holds once it owns nothing else — moves to group `to` under the
    /// empty prefix; the commit gives `to` those unit pins (or drops them
    /// where the ring gives `to` the unit).
    pub(crate) async fn move_remainder(&self, group: u64, to: u64, rate_bytes: u64) -> Result<MoveReport> {
        let started = Instant::now();
        let map = self.map().await?;
        if let Some(why) = cannot_give_remainder(&map, group, to) {
            return Err(PlacementError::conflict(why));
        }
        // Everything the group holds moves: only its unit pins' keys may be
        // there (a stray key would land where the map does not look).
        let held = self.units_of(&map, group, crate::ring::Counted::All).await?;
        if let Some(u) = held.units.iter().find(|u| map.unit_pins.get(String::from_utf8_lossy(u).as_ref()) != Some(&group)) {
            return Err(PlacementError::conflict(format!(
                "group {group} holds keys of unit {:?}, which the map does not give it",
                String::from_utf8_lossy(u)
            )));
        }
        let report = MoveReport::starting("", to, &[group], map.epoch);
        self.run_move("", to, vec![group], rate_bytes, true, started, report).await
    }

    /// Records the move, drives it, and finishes or rolls it back.
    #[allow(clippy::too_many_arguments)]
    async fn run_move(
        &self,
        prefix: &str,
        to: u64,
        from: Vec<u64>,
        rate_bytes: u64,
        remainder: bool,
        started: Instant,
        mut report: MoveReport,
    ) -> Result<MoveReport> {
        let record = MoveRecord { to, from: from.clone(), phase: MovePhase::Copying, epoch: 0, adopt: None, remainder };
        self.store
            .update(|m| {
                if let Some((p, _)) = m.moves.iter().find(|(p, _)| overlap(p, prefix)) {
                    return Err(PlacementError::conflict(format!("a move of {p:?} is in flight (see `tessera moves`)")));
                }
                m.moves.insert(prefix.to_string(), record.clone());
                Ok(true)
            })
            .await?;
        self.track(prefix, |d| {
            d.progress = MoveProgress {
                prefix: prefix.into(),
                to,
                from: from.clone(),
                phase: "copying".into(),
                driven_here: true,
                ..Default::default()
            }
        });
        let driven = self.drive(prefix, to, &from, rate_bytes, remainder, &mut report).await;
        let outcome = match driven {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(prefix, error = %e, "move failed; finishing or rolling it back");
                match self.settle(prefix, &from).await {
                    Ok(MovePhase::Committed) => Ok(()),
                    Ok(MovePhase::Copying) => {
                        report.outcome = "rolled_back".into();
                        report.error = Some(e.to_string());
                        Err(PlacementError { message: format!("{e} (the move was rolled back)"), ..e })
                    }
                    Err(e2) => {
                        // A group or the store is down: keep trying in the background.
                        let again = self.clone();
                        let (p, from) = (prefix.to_string(), from.clone());
                        tokio::spawn(async move { again.settle_until_done(&p, &from).await });
                        Err(PlacementError::unavailable(format!(
                            "{e}; then: {e2} (placement keeps finishing or rolling back the move it recorded; see `tessera moves`)"
                        )))
                    }
                }
            }
        };
        let secs = started.elapsed().as_secs_f64();
        report.copy_mb_per_s = if secs > 0.0 { report.bytes as f64 / 1e6 / secs } else { 0.0 };
        if let Ok(m) = self.map().await {
            report.epoch = report.epoch.max(m.epoch);
        }
        let mut t = self.tracker.lock().expect("move tracker");
        t.in_flight.remove(prefix);
        t.recent.push_front(report.clone());
        t.recent.truncate(RECENT);
        drop(t);
        outcome.map(|()| report)
    }

    /// One move of a batch (a drain, split or merge): a move rolled back
    /// stops the batch, saying how far it got (`done` moves before it) and
    /// that running it again does the rest.
    pub(crate) async fn move_in_batch(
        &self,
        prefix: &str,
        to: u64,
        rate_bytes: u64,
        done: usize,
        batch: &str,
    ) -> Result<MoveReport> {
        self.move_prefix(prefix, to, rate_bytes).await.map_err(|e| in_batch(e, &format!("{prefix:?}"), to, done, batch))
    }

    async fn drive(
        &self,
        prefix: &str,
        to: u64,
        from: &[u64],
        rate_bytes: u64,
        remainder: bool,
        report: &mut MoveReport,
    ) -> Result<()> {
        let mut phases = Phases::new();
        let mut copied = Copied { cursors: from.iter().map(|g| (*g, (0, 0))).collect(), remainder, ..Default::default() };
        let map = self.map().await?;
        copied.since_epoch = map.epoch;
        stage(self.dialer(), &map, to, copied.reset(prefix)).await?;
        let mut passes = 0;
        loop {
            passes += 1;
            let before = copied.bytes;
            self.copy_pass(&map, prefix, to, &mut copied, rate_bytes, false).await?;
            self.track(prefix, |d| d.progress.passes = passes);
            if copied.bytes - before < CUTOVER_BELOW_BYTES || passes >= MAX_PASSES {
                break;
            }
        }
        phases.end("copy");
        self.track(prefix, |d| d.progress.phase = "cutover".into());
        let mut paused = None;
        let mut committed = None;
        for _ in 0..ATTEMPTS {
            let map = self.map().await?;
            let epoch = map.epoch + 1;
            paused.get_or_insert_with(Instant::now);
            // The sources first: a cross-group txn a source holds prepared
            // delays its fence until it ends, and its part on the target
            // must not be held by a cutover meanwhile.
            let mut revision = 0;
            for g in from {
                revision = revision.max(fence(self.dialer(), &map, *g, prefix, epoch).await?);
            }
            let cutover =
                MoveTarget { prefix: prefix.as_bytes().to_vec(), action: Action::Cutover as i32, epoch, ..Default::default() };
            target(self.dialer(), &map, to, cutover).await?;
            copied.source_keys = 0;
            copied.source_digest = 0;
            copied.leases.clear();
            self.copy_pass(&map, prefix, to, &mut copied, 0, true).await?;
            if copied.staged_keys != copied.source_keys {
                return Err(PlacementError::unavailable(format!(
                    "copy check failed: {} live keys staged on group {to}, {} on the sources",
                    copied.staged_keys, copied.source_keys
                )));
            }
            if copied.staged_digest != copied.source_digest {
                return Err(PlacementError::unavailable(format!(
                    "copy check failed: the {} live keys staged on group {to} are not the sources' (their latest revisions differ)",
                    copied.staged_keys
                )));
            }
            let adopt = Adoption {
                revision,
                compact_revision: copied.compact_revision,
                leases: copied.leases.iter().map(|l| (l.id, l.ttl)).collect(),
            };
            fail::fail_point!("move::before_commit", |_| Err(PlacementError::unavailable("failpoint move::before_commit")));
            let mut raced = false;
            let m = self
                .store
                .update(|m| {
                    raced = m.epoch != map.epoch;
                    if raced {
                        return Ok::<_, PlacementError>(false);
                    }
                    if remainder {
                        if let Some(why) = cannot_give_remainder(m, from[0], to) {
                            return Err(PlacementError::conflict(format!("the map changed during the move: {why}")));
                        }
                        give_remainder(m, from[0], to);
                        let r =
                            m.moves.get_mut(prefix).ok_or_else(|| PlacementError::unavailable("the move's record is gone"))?;
                        r.phase = MovePhase::Committed;
                        r.epoch = epoch;
                        r.adopt = Some(adopt.clone());
                        return Ok(true);
                    }
                    // Someone pinned or spread part of it meanwhile: the
                    // sources fenced and copied are not all of it any more.
                    let owners =
                        m.clone().routing().groups_for_range(prefix.as_bytes(), &shardmap::prefix_end(prefix.as_bytes()));
                    if owners.iter().any(|g| *g != to && !from.contains(g)) {
                        return Err(PlacementError::conflict(format!("the owners of {prefix:?} changed during the move")));
                    }
                    pin(m, prefix, to);
                    let r = m.moves.get_mut(prefix).ok_or_else(|| PlacementError::unavailable("the move's record is gone"))?;
                    r.phase = MovePhase::Committed;
                    r.epoch = epoch;
                    r.adopt = Some(adopt.clone());
                    Ok(true)
                })
                .await?;
            if !raced {
                committed = Some(m);
                break;
            }
            tracing::info!(prefix, epoch, now = m.epoch, "map changed during the cutover; cutting over again");
        }
        let Some(map) = committed else {
            return Err(PlacementError::unavailable("the map kept changing during the cutover; try again"));
        };
        phases.end("cutover");
        fail::fail_point!("move::after_commit", |_| Err(PlacementError::unavailable("failpoint move::after_commit")));
        self.track(prefix, |d| d.progress.phase = "adopting".into());
        let record = map.moves.get(prefix).cloned().ok_or_else(|| PlacementError::unavailable("the move's record is gone"))?;
        let (keys, adopted) = self.finish(&map, prefix, &record).await?;
        report.keys = keys;
        // Writes under the prefix go on at the target once it adopted; the
        // sources' releases after that hold nothing routed by the new map
        // under the prefix (a source that is slow to release, e.g. its leader
        // crashed there, holds only wide reads that overlap it).
        report.write_pause_ms = paused.map_or(0, |p| adopted.duration_since(p).as_millis() as u64);
        phases.end("adopt");
        report.epoch = map.epoch;
        report.revisions = copied.revisions;
        report.bytes = copied.bytes;
        report.phases = phases.done;
        Ok(())
    }

    /// One pass over every source from its cursor to its current end
    /// (`last`: under the fences, with the leases and the key counts).
    /// Starts the whole copy over when a source compacted past a cursor
    /// (what it dropped after the cursor never reached the target).
    async fn copy_pass(&self, map: &ShardMap, prefix: &str, to: u64, c: &mut Copied, rate: u64, last: bool) -> Result<()> {
        let started = Instant::now();
        let mut bytes_this_pass = 0u64;
        'restart: loop {
            let sources: Vec<u64> = c.cursors.keys().copied().collect();
            for g in sources {
                loop {
                    if self.tracker.lock().expect("move tracker").in_flight.get(prefix).is_some_and(|d| d.cancel) {
                        return Err(PlacementError::conflict("cancelled"));
                    }
                    let (main, sub) = c.cursors[&g];
                    let req = ExportRequest {
                        prefix: prefix.as_bytes().to_vec(),
                        after_main: main,
                        after_sub: sub,
                        max_bytes: CHUNK_BYTES,
                        leases: last,
                    };
                    let x = export(self.dialer(), map, g, req).await?;
                    if (main, sub) != (0, 0) && x.compact_revision >= main {
                        tracing::info!(
                            prefix,
                            group = g,
                            compacted = x.compact_revision,
                            "a source compacted past the copy; starting over"
                        );
                        stage(self.dialer(), map, to, c.reset(prefix)).await?;
                        c.cursors.values_mut().for_each(|v| *v = (0, 0));
                        c.source_keys = 0;
                        c.source_digest = 0;
                        c.leases.clear();
                        continue 'restart;
                    }
                    let n = x.entries.len() as u64;
                    let bytes: u64 = x.entries.iter().map(|e| e.value.len() as u64).sum();
                    let staged = stage(
                        self.dialer(),
                        map,
                        to,
                        MoveStage {
                            prefix: prefix.as_bytes().to_vec(),
                            entries: x.entries,
                            digest: last,
                            remainder: c.remainder,
                            ..Default::default()
                        },
                    )
                    .await?;
                    fail::fail_point!("move::after_stage");
                    c.staged_keys = staged.keys;
                    c.staged_digest = staged.digest;
                    c.revisions += n;
                    c.bytes += bytes;
                    bytes_this_pass += bytes;
                    c.cursors.insert(g, (x.next_main, x.next_sub));
                    c.compact_revision = c.compact_revision.max(x.compact_revision);
                    self.track(prefix, |d| {
                        d.progress.revisions = c.revisions;
                        d.progress.bytes = c.bytes;
                        d.progress.keys = c.staged_keys;
                    });
                    if rate > 0 {
                        // Rate limit: no faster than `rate` bytes per second over the pass.
                        let due = Duration::from_secs_f64(bytes_this_pass as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    if x.done {
                        if last {
                            c.source_keys += x.keys;
                            c.source_digest = c.source_digest.wrapping_add(x.digest);
                            c.leases.extend(x.leases);
                        }
                        break;
                    }
                }
            }
            return Ok(());
        }
    }

    /// The target adopts, the sources release, the record goes; the live
    /// keys the sources gave away, and when the target had adopted. Each
    /// step is idempotent.
    async fn finish(&self, map: &ShardMap, prefix: &str, r: &MoveRecord) -> Result<(i64, Instant)> {
        let adopt = r.adopt.clone().unwrap_or_default();
        let msg = MoveTarget {
            prefix: prefix.as_bytes().to_vec(),
            action: Action::Adopt as i32,
            epoch: r.epoch,
            leases: adopt.leases.iter().map(|(id, ttl)| LeaseCopy { id: *id, ttl: *ttl }).collect(),
            compact_revision: adopt.compact_revision,
            revision: adopt.revision,
            remainder: r.remainder,
        };
        target(self.dialer(), map, r.to, msg).await?;
        let adopted = Instant::now();
        fail::fail_point!("move::after_adopt", |_| Err(PlacementError::unavailable("failpoint move::after_adopt")));
        let mut keys = 0;
        for g in &r.from {
            keys +=
                release(self.dialer(), map, *g, MoveRelease { prefix: prefix.as_bytes().to_vec(), epoch: r.epoch, moved: true })
                    .await?;
        }
        self.store.update(|m| Ok::<_, PlacementError>(m.moves.remove(prefix).is_some())).await?;
        Ok((keys, adopted))
    }

    /// Rolls back a move not committed: the target drops what it staged,
    /// the sources lift their fences, the record goes (the map's epoch
    /// moves past the fences').
    async fn roll_back(&self, map: &ShardMap, prefix: &str, r: &MoveRecord) -> Result<()> {
        let abandon =
            MoveStage { prefix: prefix.as_bytes().to_vec(), abandon: true, remainder: r.remainder, ..Default::default() };
        stage(self.dialer(), map, r.to, abandon).await?;
        for g in &r.from {
            release(self.dialer(), map, *g, MoveRelease { prefix: prefix.as_bytes().to_vec(), epoch: r.epoch, moved: false })
                .await?;
        }
        self.store
            .update(|m| {
                Ok::<_, PlacementError>(
                    m.moves.get(prefix).is_some_and(|x| x.phase == MovePhase::Copying) && m.moves.remove(prefix).is_some(),
                )
            })
            .await?;
        Ok(())
    }

    /// Finishes (committed) or rolls back (not) the move of `prefix` (from
    /// groups `from`) the map records; what it was.
    async fn settle(&self, prefix: &str, from: &[u64]) -> Result<MovePhase> {
        let map = self.map().await?;
        let Some(r) = map.moves.get(prefix).cloned() else {
            // Finished or rolled back already: the map says which (a
            // remainder's: whether its group still has unit pins).
            let committed =
                if prefix.is_empty() { !map.unit_pins.values().any(|g| from.contains(g)) } else { map.pins.contains_key(prefix) };
            return Ok(if committed { MovePhase::Committed } else { MovePhase::Copying });
        };
        match r.phase {
            MovePhase::Committed => self.finish(&map, prefix, &r).await.map(|_| MovePhase::Committed),
            MovePhase::Copying => self.roll_back(&map, prefix, &r).await.map(|()| MovePhase::Copying),
        }
    }

    /// `settle`, again and again (backing off) until it is done.
    async fn settle_until_done(&self, prefix: &str, from: &[u64]) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.settle(prefix, from).await {
                Ok(phase) => {
                    tracing::info!(prefix, ?phase, "settled a move that had failed");
                    return;
                }
                Err(e) => tracing::warn!(prefix, error = %e, "settling a failed move; trying again"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Settles every move the map records that no one here drives (their
    /// driver died): at a placement's start.
    pub async fn resume_moves(&self) -> Result<usize> {
        let map = self.map().await?;
        let mut n = 0;
        for (prefix, r) in &map.moves {
            if self.tracker.lock().expect("move tracker").in_flight.contains_key(prefix) {
                continue;
            }
            let phase = self.settle(prefix, &r.from).await?;
            tracing::info!(prefix, ?phase, "settled a move its driver left");
            n += 1;
        }
        Ok(n)
    }

    /// Moves in flight (this placement's, and those the map records) and
    /// the last ones this placement did.
    pub async fn moves(&self) -> Result<MovesList> {
        let map = self.map().await?;
        let t = self.tracker.lock().expect("move tracker");
        let mut in_flight: Vec<MoveProgress> = t
            .in_flight
            .values()
            .map(|d| MoveProgress { elapsed_ms: d.started.elapsed().as_millis() as u64, ..d.progress.clone() })
            .collect();
        for (p, r) in &map.moves {
            if !t.in_flight.contains_key(p) {
                let phase = match r.phase {
                    MovePhase::Copying => "copying",
                    MovePhase::Committed => "committed",
                };
                in_flight.push(MoveProgress {
                    prefix: p.clone(),
                    to: r.to,
                    from: r.from.clone(),
                    phase: phase.into(),
                    ..Default::default()
                });
            }
        }
        Ok(MovesList { in_flight, recent: t.recent.iter().cloned().collect() })
    }

    /// Asks the move of `prefix` this placement drives to stop (it rolls
    /// back, unless its cutover committed already).
    pub fn cancel_move(&self, prefix: &str) -> Result<()> {
        let mut t = self.tracker.lock().expect("move tracker");
        match t.in_flight.get_mut(prefix) {
            Some(d) => {
                d.cancel = true;
                Ok(())
            }
            None => Err(PlacementError::not_found(format!("no move of {prefix:?} driven by this placement"))),
        }
    }

    fn track(&self, prefix: &str, f: impl FnOnce(&mut Driving)) {
        let mut t = self.tracker.lock().expect("move tracker");
        let d = t.in_flight.entry(prefix.to_string()).or_insert_with(|| Driving {
            progress: MoveProgress::default(),
            started: Instant::now(),
            cancel: false,
        });
        f(d);
    }
}

/// The groups that would still own part of `prefix` once it is pinned to
/// `to` (pins or spreads under it), if any.
pub(crate) fn kept_elsewhere(map: &ShardMap, prefix: &str, to: u64) -> Option<Vec<u64>> {
    let mut after = map.clone();
    pin(&mut after, prefix, to);
    let owners = after.routing().groups_for_range(prefix.as_bytes(), &shardmap::prefix_end(prefix.as_bytes()));
    (owners != [to]).then_some(owners)
}

/// A move of a batch (`what`, to group `to`) that failed (rolled back, or
/// left to finish in the background): how far the batch got, and that
/// running it again does the rest.
pub(crate) fn in_batch(e: PlacementError, what: &str, to: u64, done: usize, batch: &str) -> PlacementError {
    let message = format!("moving {what} to group {to}: {}; {done} moves done before it; run the {batch} again", e.message);
    PlacementError { message, ..e }
}

/// Why `group`'s remainder cannot move to `to` now, if it cannot: the
/// group must own nothing but unit pins (off the ring, no pin, spread or
/// move), and `to` must not have taken a remainder before.
pub(crate) fn cannot_give_remainder(map: &ShardMap, group: u64, to: u64) -> Option<String> {
    if !map.groups.contains_key(&to) || to == group {
        return Some(format!("group {to} cannot take group {group}'s keys"));
    }
    if map.took_remainder.contains(&to) {
        return Some(format!("group {to} took a leaving group's remainder before (each group takes one)"));
    }
    if map.ring.contains(&group) {
        return Some(format!("group {group} is still on the ring"));
    }
    if let Some((p, _)) = map.pins.iter().find(|(_, g)| **g == group) {
        return Some(format!("prefix {p:?} is still pinned to group {group}"));
    }
    if map.spreads.values().any(|gs| gs.contains(&group)) {
        return Some(format!("group {group} is still one of a spread's groups"));
    }
    // (A remainder's own record, under "", is checked when it is made.)
    if let Some(p) = map.moves.keys().find(|p| !p.is_empty()) {
        return Some(format!("a move of {p:?} is in flight"));
    }
    None
}

/// The map change of a remainder's move: `group`'s unit pins go to `to`,
/// or go where the ring gives `to` the unit anyway.
fn give_remainder(m: &mut ShardMap, group: u64, to: u64) {
    let ring = shardmap::ring::Ring::new(&m.ring);
    m.unit_pins.retain(|u, g| *g != group || ring.owner(u.as_bytes()) != Some(to));
    for g in m.unit_pins.values_mut().filter(|g| **g == group) {
        *g = to;
    }
    m.took_remainder.insert(to);
}

/// The map change of a move: `prefix` pinned to `to` (a spread of it goes).
fn pin(m: &mut ShardMap, prefix: &str, to: u64) -> bool {
    m.spreads.remove(prefix);
    m.pins.insert(prefix.to_string(), to);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_names_a_subtree() {
        assert!(check_prefix("/registry/pods/").is_ok());
        assert!(check_prefix("/registry/pods").unwrap_err().message.contains("must end with '/'"));
        assert!(check_prefix("").is_err());
        assert!(overlap("/a/", "/a/b/") && overlap("/a/b/", "/a/") && !overlap("/a/b/", "/a/c/"));
    }

    #[test]
    fn a_remainder_goes_once_its_group_owns_nothing_else_and_only_once_to_a_group() {
        let mut m = ShardMap { ring: vec![1, 2], ..Default::default() };
        for g in 1..=3 {
            m.groups.insert(g, shardmap::GroupInfo { id: g, replicas: vec![] });
        }
        m.unit_pins.insert("".into(), 3);
        m.unit_pins.insert("/registry/".into(), 3);
        m.pins.insert("/a/".into(), 3);
        assert!(cannot_give_remainder(&m, 3, 1).unwrap().contains("pinned"));
        m.pins.clear();
        assert_eq!(cannot_give_remainder(&m, 3, 1), None);
        let ring = shardmap::ring::Ring::new(&[1, 2]);
        let before = m.clone().routing();
        give_remainder(&mut m, 3, 1);
        for (u, key) in [("", "compact_rev_key"), ("/registry/", "/registry/health")] {
            let by_ring = ring.owner(u.as_bytes()) == Some(1);
            assert_eq!(m.unit_pins.get(u), (!by_ring).then_some(&1), "{u:?}");
            assert_eq!(before.group_of(key.as_bytes()), Some(3));
            assert_eq!(m.clone().routing().group_of(key.as_bytes()), Some(1), "{key}");
        }
        assert!(cannot_give_remainder(&m, 2, 1).unwrap().contains("took a leaving group's remainder"));
    }
}
