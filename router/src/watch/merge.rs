//! The release logic of a merged watch, without I/O: what the upstreams
//! told (events, creations, progress, fences) goes in, and out come the
//! responses to send, the progress answers that are due and the groups to
//! bump. Kept apart from the async loop that feeds it so that its ordering
//! rules can be tested one message at a time.
//!
//! Each group has a watermark: the revision up to which it has sent
//! everything (its last event or progress revision; unknown until it was
//! created or reported progress). Events are held until every group's
//! watermark reaches them and released in revision order, so a group that
//! is behind can never have a later write land below what was released.
//! A group that holds pending events back is a laggard: the watcher bumps
//! it (a no-data raft entry raising its revision) and asks it for progress.

use super::header;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tessera_proto::etcdserverpb::WatchResponse;
use tessera_proto::mvccpb::Event;

/// Events per response when a backlog is released; a revision is never
/// split, so a revision with more events goes alone in a bigger one.
pub const MAX_EVENTS_PER_RESPONSE: usize = 1000;

/// The least time between two bumps of one group by one watcher. A held-back
/// event gets its laggards bumped at once, then again every gap while it
/// waits; under a write load the groups' own writes move their watermarks
/// and no bumps are needed, so this caps what an idle group is asked for.
pub const BUMP_GAP: Duration = Duration::from_millis(5);

/// An event held until every group's watermark reaches its revision.
struct Pending {
    rev: i64,
    group: u64,
    event: Event,
}

/// A progress request (of the client, or the periodic notification): with
/// a target, answered once everything up to the target is released (the
/// groups are raised to it and asked for progress); without, once every
/// group it was asked of confirmed.
struct ProgressRequest<W> {
    waiter: W,
    target: Option<i64>,
    unconfirmed: BTreeSet<u64>,
}

/// A group's bumps by this watcher.
struct Bumping {
    last: Instant,
    in_flight: bool,
}

/// One group to ask for progress, raised to `bump_to` first.
#[derive(Debug, PartialEq, Eq)]
pub struct Ask {
    pub group: u64,
    pub bump_to: Option<i64>,
}

/// The upstreams to change after a reroute: stop these, then start those
/// groups from those revisions.
#[derive(Debug, PartialEq, Eq)]
pub struct Reroute {
    pub stop: Vec<u64>,
    pub start: Vec<(u64, i64)>,
}

/// What `release` let go: responses in order, and the progress requests now answered (at which revision).
pub struct Released<W> {
    pub responses: Vec<WatchResponse>,
    pub answers: Vec<(W, i64)>,
}

/// What a merged watch holding events back for long shows in the log.
pub struct Stall {
    pub pending: usize,
    pub oldest: Option<i64>,
    pub released: i64,
    pub watermarks: BTreeMap<u64, Option<i64>>,
    /// Progress requests not answered yet: their target and who has still to confirm.
    pub progress: Vec<(Option<i64>, BTreeSet<u64>)>,
}

/// The merge state of one watcher; `W` is whoever waits for a progress answer.
pub struct Merge<W> {
    watch_id: i64,
    /// The groups merged now and their watermarks.
    watermarks: BTreeMap<u64, Option<i64>>,
    pending: Vec<Pending>,
    /// Everything up to here has been released (never goes back).
    released: i64,
    created: bool,
    progress: Vec<ProgressRequest<W>>,
    bumps: BTreeMap<u64, Bumping>,
    /// Since when the pending events have not moved (for the stall warning).
    held_since: Option<Instant>,
    /// Nothing above this is released while it is set: the client stream's
    /// progress answer is on its way, and no event after it may go first.
    cap: Option<i64>,
    /// The revision the creation answers, if set (else the release point).
    created_at: Option<i64>,
}

impl<W> Merge<W> {
    /// A merge of `groups`, all watched from `start` (0: from now, each
    /// group's watermark unknown until it says where it starts).
    pub fn new(watch_id: i64, groups: &[u64], start: i64) -> Self {
        let known = (start > 0).then_some(start - 1);
        Merge {
            watch_id,
            watermarks: groups.iter().map(|g| (*g, known)).collect(),
            pending: vec![],
            released: start - 1,
            created: false,
            progress: vec![],
            bumps: BTreeMap::new(),
            held_since: None,
            cap: None,
            created_at: None,
        }
    }

    /// The creation answers `rev` (as etcd's answers its current revision),
    /// released once nothing holds the watch below it: a cap below it (a
    /// progress answer on its way) holds it back as it would an event.
    pub fn answer_creation_at(&mut self, rev: i64) {
        self.created_at = Some(rev);
    }

    /// Holds back everything above `cap` (None: nothing).
    pub fn set_cap(&mut self, cap: Option<i64>) {
        self.cap = cap;
    }

    /// Whether the creation was released.
    pub fn is_created(&self) -> bool {
        self.created
    }

    /// Everything up to here has been released.
    pub fn released(&self) -> i64 {
        self.released
    }

    pub fn groups(&self) -> Vec<u64> {
        self.watermarks.keys().copied().collect()
    }

    /// `group`'s watch was created at `rev` (it starts after it).
    pub fn created(&mut self, group: u64, rev: i64) {
        if let Some(w @ None) = self.watermarks.get_mut(&group) {
            *w = Some(rev);
        }
    }

    /// `group` sent `events` (in its revision order).
    pub fn events(&mut self, group: u64, events: Vec<Event>) {
        let last = events.last().map_or(0, revision_of);
        self.pending.extend(events.into_iter().map(|event| Pending { rev: revision_of(&event), group, event }));
        // Events of a group merged no more (dropped by a reroute while
        // they were on their way) are still delivered, but it holds nothing back.
        self.raise(group, last);
    }

    /// `group` has sent everything up to `rev`.
    pub fn progress(&mut self, group: u64, rev: i64) {
        self.raise(group, rev);
        for request in &mut self.progress {
            request.unconfirmed.remove(&group);
        }
    }

    fn raise(&mut self, group: u64, rev: i64) {
        if let Some(w) = self.watermarks.get_mut(&group) {
            *w = Some(w.unwrap_or(0).max(rev));
        }
    }

    /// `fenced` ended its side at a fence; the range is now owned by `now`.
    /// It sent everything up to its fence, and the new owners were raised
    /// past it by placement, so starting them after its watermark (or
    /// `fallback` if it had none) misses nothing, and its watermark held the
    /// release point, so order holds.
    pub fn rerouted(&mut self, fenced: u64, now: &[u64], fallback: i64) -> Reroute {
        let from = self.watermarks.get(&fenced).copied().flatten().unwrap_or(fallback);
        let mut stop = vec![fenced];
        stop.extend(self.watermarks.keys().filter(|g| **g != fenced && !now.contains(g)));
        for g in &stop {
            if !now.contains(g) {
                self.watermarks.remove(g);
                self.bumps.remove(g);
            }
        }
        let mut start = vec![];
        for g in now {
            if *g == fenced || !self.watermarks.contains_key(g) {
                let w = *self.watermarks.entry(*g).or_insert(Some(from));
                start.push((*g, w.unwrap_or(from) + 1));
            }
        }
        for request in &mut self.progress {
            request.unconfirmed.retain(|g| now.contains(g));
        }
        Reroute { stop, start }
    }

    /// Registers a progress request for `waiter`; answers the groups to ask,
    /// each raised to `target` first (the federation's revision: a group's
    /// own may be below what other groups have answered).
    pub fn request_progress(&mut self, waiter: W, target: Option<i64>) -> Vec<Ask> {
        let groups = self.groups();
        self.progress.push(ProgressRequest { waiter, target, unconfirmed: groups.iter().copied().collect() });
        groups.into_iter().map(|group| Ask { group, bump_to: target }).collect()
    }

    /// The groups that hold back a pending event and are not being bumped
    /// already (nor were within `BUMP_GAP`), with the revision to raise them
    /// to: the newest pending one. They count as being bumped from `now`.
    pub fn laggards(&mut self, now: Instant) -> Vec<(u64, i64)> {
        let Some(top) = self.pending.iter().map(|p| p.rev).max() else {
            return vec![];
        };
        let mut out = vec![];
        for (g, w) in &self.watermarks {
            let busy = self.bumps.get(g).is_some_and(|b| b.in_flight || now.duration_since(b.last) < BUMP_GAP);
            if w.is_some_and(|w| w >= top) || busy {
                continue;
            }
            self.bumps.insert(*g, Bumping { last: now, in_flight: true });
            out.push((*g, top));
        }
        out
    }

    /// A bump `laggards` asked for is done (whatever its outcome).
    pub fn bumped(&mut self, group: u64) {
        if let Some(b) = self.bumps.get_mut(&group) {
            b.in_flight = false;
        }
    }

    pub fn holds_events(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the pending events have not moved for `after` (then again
    /// only after another `after`): what to log if so.
    pub fn stalled(&mut self, now: Instant, after: Duration) -> Option<Stall> {
        let since = *self.held_since.get_or_insert(now);
        if now.duration_since(since) <= after {
            return None;
        }
        self.held_since = Some(now);
        Some(Stall {
            pending: self.pending.len(),
            oldest: self.pending.iter().map(|p| p.rev).min(),
            released: self.released,
            watermarks: self.watermarks.clone(),
            progress: self.progress.iter().map(|r| (r.target, r.unconfirmed.clone())).collect(),
        })
    }

    /// Lets go of everything every group has confirmed: the creation (once
    /// every group's start is known), the events up to the lowest watermark
    /// in revision order and whole revisions per response, then the answers
    /// to progress requests every group has confirmed.
    pub fn release(&mut self) -> Released<W> {
        let mut out = Released { responses: vec![], answers: vec![] };
        let Some(point) = self
            .watermarks
            .values()
            .copied()
            .collect::<Option<Vec<i64>>>()
            .and_then(|v| v.into_iter().min())
            .map(|p| self.cap.map_or(p, |c| p.min(c)))
        else {
            return out;
        };
        if !self.created && self.created_at.is_some_and(|at| self.cap.is_some_and(|c| at > c)) {
            return out; // nothing goes before the creation
        }
        if !self.created {
            out.responses.push(WatchResponse {
                header: header(self.created_at.unwrap_or(point)),
                watch_id: self.watch_id,
                created: true,
                ..Default::default()
            });
            self.created = true;
        }
        if self.pending.iter().any(|p| p.rev <= point) {
            // Stable: one group's events of a revision (a txn) keep their order.
            self.pending.sort_by_key(|p| (p.rev, p.group));
            let ready = self.pending.partition_point(|p| p.rev <= point);
            let mut ready: Vec<Pending> = self.pending.drain(..ready).collect();
            // A revision of a key is one event. Two groups send the same
            // one when a prefix moved between them: its new owner, routed
            // again from its own (lower) watermark, replays the history the
            // move brought, which its old owner sent already. Both copies
            // are held until every watermark passes them, so they meet here.
            let mut seen = std::collections::HashSet::new();
            ready.retain(|p| seen.insert((p.rev, p.event.kv.as_ref().map(|kv| kv.key.clone()))));
            for events in batches(ready) {
                out.responses.push(WatchResponse {
                    header: header(point),
                    watch_id: self.watch_id,
                    events,
                    ..Default::default()
                });
            }
        }
        if point > self.released || self.pending.is_empty() {
            self.held_since = None; // moving again
        }
        self.released = self.released.max(point);
        let released = self.released;
        let (answered, waiting) = std::mem::take(&mut self.progress).into_iter().partition(|r| match r.target {
            Some(t) => released >= t,
            None => r.unconfirmed.is_empty(),
        });
        self.progress = waiting;
        out.answers = answered.into_iter().map(|r: ProgressRequest<W>| (r.waiter, released)).collect();
        out
    }
}

fn revision_of(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// `ready` (in revision order) cut into responses of whole revisions, at
/// most `MAX_EVENTS_PER_RESPONSE` events each unless one revision has more.
fn batches(ready: Vec<Pending>) -> Vec<Vec<Event>> {
    let mut out = vec![];
    let mut batch: Vec<Event> = vec![];
    let mut ready = ready.into_iter().peekable();
    while let Some(first) = ready.next() {
        let rev = first.rev;
        let mut revision = vec![first.event];
        while let Some(p) = ready.next_if(|p| p.rev == rev) {
            revision.push(p.event);
        }
        if !batch.is_empty() && batch.len() + revision.len() > MAX_EVENTS_PER_RESPONSE {
            out.push(std::mem::take(&mut batch));
        }
        batch.extend(revision);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

#[cfg(test)]
mod tests;
