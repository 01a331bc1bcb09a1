//! etcd's watch guarantees, per watch, against the writes of the history:
//!
//! - ordered: event revisions never decrease, and strictly increase per key;
//! - unique: no (key, mod_rev) is delivered twice;
//! - atomic: all events of one revision come in one response (a txn is never split);
//! - reliable: every known write in the watched range (and not filtered) with
//!   a revision from the start revision up to what the watch has covered (its
//!   last event or last progress) is delivered; writes of unknown outcome may
//!   be absent, but one that is delivered counts as applied;
//! - accurate: an event is a write some op made (value, lease, create_rev,
//!   version as the history determines them), and prev_kv is the key's state
//!   just before it, only when asked; filters are honoured;
//! - progress: a progress response with revision R comes after every event
//!   at or below R, and no event at or below R follows it; the answer to a
//!   RequestProgress (watch id -1) covers every watch created before it and is
//!   at least the revision of every write acknowledged before the request;
//! - cancellation: only for compaction (the start revision is below the
//!   compact revision, and that compaction was requested) or on request.

use super::index::{keys_in, RtMax};
use super::timeline::{kv_mismatch, Effect, StateAt, Timelines, UEffect};
use super::{Checker, Violation};
use crate::history::{describe, in_range, Bytes, Call, Event, EventKind, History, Kv, Watch, WatchFilter, WatchStream};
use std::collections::{HashMap, HashSet};

pub fn check(h: &History) -> Vec<Violation> {
    check_with(h, &Timelines::new(h))
}

pub(crate) fn check_with(h: &History, t: &Timelines) -> Vec<Violation> {
    let compactions: HashSet<i64> = h
        .ops
        .iter()
        .filter(|o| !o.is_error())
        .filter_map(|o| match o.call {
            Call::Compact { revision } => Some(revision),
            _ => None,
        })
        .collect();
    let writes = h
        .ops
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o.call, Call::Put { .. } | Call::Delete { .. } | Call::Txn { .. }))
        .filter_map(|(i, o)| Some((o.complete?, o.header_rev()?, i)))
        .collect();
    let writes = RtMax::new(writes);
    // Writes of unknown outcome seen applied by some watch: every watch that
    // covers them must deliver them too.
    let mut applied: HashMap<&Bytes, Vec<(i64, EventKind)>> = HashMap::new();
    for r in h.watches.iter().flat_map(|s| &s.responses) {
        for e in r.events.iter().filter(|e| e.mod_rev > t.start) {
            if !t.known_of(&e.key).iter().any(|k| k.rev == e.mod_rev) && by_uncertain(t, e) {
                applied.entry(&e.key).or_default().push((e.mod_rev, e.kind));
            }
        }
    }
    let mut out = Vec::new();
    for (s, stream) in h.watches.iter().enumerate() {
        let ctx = StreamCtx { h, t, s, stream, compactions: &compactions, applied: &applied };
        out.extend(progress_answers(&ctx, &writes));
        for w in &stream.watches {
            out.extend(ctx.check_watch(w));
        }
    }
    out
}

struct StreamCtx<'a> {
    h: &'a History,
    t: &'a Timelines,
    s: usize,
    stream: &'a WatchStream,
    compactions: &'a HashSet<i64>,
    applied: &'a HashMap<&'a Bytes, Vec<(i64, EventKind)>>,
}

/// Answers to RequestProgress are matched to requests in order; each must be
/// at least the revision of every write acknowledged before its request.
fn progress_answers(ctx: &StreamCtx, writes: &RtMax) -> Vec<Violation> {
    let mut requests = ctx.stream.progress_requests.clone();
    requests.sort();
    let mut next = 0;
    let mut out = Vec::new();
    for (j, r) in ctx.stream.responses.iter().enumerate() {
        if r.watch_id != -1 || !r.is_progress() {
            continue;
        }
        let Some(&sent) = requests.get(next).filter(|&&sent| sent <= r.at) else {
            continue;
        };
        next += 1;
        if let Some((rev, a)) = writes.before(sent) {
            if r.header_rev < rev {
                let msg = format!(
                    "stream #{} response {j}: progress answer {} is below the revision {rev} of {}, acknowledged \
                     before the request was sent at {sent}",
                    ctx.s,
                    r.header_rev,
                    describe(ctx.h, a)
                );
                out.push(Violation::on_stream(Checker::Watch, msg, ctx.s, vec![a]));
            }
        }
    }
    out
}

/// Whether a write of unknown outcome (or a lease expiry) could have made the event.
fn by_uncertain(t: &Timelines, e: &Event) -> bool {
    t.keys.get(&e.key).is_some_and(|tl| {
        tl.uncertain.iter().any(|u| {
            let fits = match (&u.effect, e.kind) {
                (UEffect::Put { value, lease }, EventKind::Put) => *value == e.value && *lease == e.lease,
                (UEffect::Delete | UEffect::LeaseDrop(_), EventKind::Delete) => true,
                _ => false,
            };
            fits && u.may_land(e.mod_rev.saturating_sub(1), e.mod_rev)
        })
    })
}

fn filtered(w: &Watch, kind: EventKind) -> bool {
    w.filters
        .iter()
        .any(|f| matches!((f, kind), (WatchFilter::NoPut, EventKind::Put) | (WatchFilter::NoDelete, EventKind::Delete)))
}

impl StreamCtx<'_> {
    fn violation(&self, w: &Watch, msg: String, ops: Vec<usize>) -> Violation {
        let text = format!("stream #{} watch {} [{}, {}): {msg}", self.s, w.watch_id, w.key, w.range_end);
        Violation::on_stream(Checker::Watch, text, self.s, ops)
    }

    fn check_watch(&self, w: &Watch) -> Vec<Violation> {
        let responses = &self.stream.responses;
        let created = responses.iter().position(|r| r.watch_id == w.watch_id && r.created);
        let start = if w.start_revision > 0 {
            Some(w.start_revision)
        } else {
            created.and_then(|j| responses.get(j)).map(|r| r.header_rev.saturating_add(1))
        };
        let mut out = Vec::new();
        let mut last_rev = 0;
        let mut progress = 0;
        let mut per_key: HashMap<&Bytes, i64> = HashMap::new();
        let mut delivered: HashSet<(&Bytes, i64)> = HashSet::new();
        let mut rev_response: HashMap<i64, usize> = HashMap::new();
        let mut canceled = false;
        for (j, r) in responses.iter().enumerate() {
            let mine = r.watch_id == w.watch_id && !r.created;
            let answer = r.watch_id == -1 && r.is_progress() && created.is_some_and(|c| c < j);
            if !(mine || answer) {
                continue;
            }
            if canceled {
                if mine && !r.events.is_empty() {
                    out.push(self.violation(w, format!("response {j} delivers events after the watch was canceled"), vec![]));
                }
                continue;
            }
            if r.is_progress() {
                if r.header_rev < last_rev {
                    let msg =
                        format!("response {j}: progress {} is below event revision {last_rev} already delivered", r.header_rev);
                    out.push(self.violation(w, msg, vec![]));
                }
                progress = progress.max(r.header_rev);
                continue;
            }
            if r.canceled {
                canceled = true;
                out.extend(self.check_cancel(w, j, start));
                continue;
            }
            for e in &r.events {
                let mut bad = |msg: String| {
                    out.push(self.violation(w, format!("response {j}, event {}@{}: {msg}", e.key, e.mod_rev), vec![]))
                };
                if e.mod_rev <= progress {
                    bad(format!("delivered after progress {progress} had covered it"));
                }
                if e.mod_rev < last_rev {
                    bad(format!("out of order: revision {last_rev} was delivered before"));
                }
                if !delivered.insert((&e.key, e.mod_rev)) {
                    bad("delivered twice".into());
                } else if per_key.get(&e.key).is_some_and(|&p| p >= e.mod_rev) {
                    bad(format!("out of order for its key: revision {} of it came before", per_key[&e.key]));
                }
                if start.is_some_and(|s| e.mod_rev < s) {
                    bad(format!("below the watch's start revision {}", start.unwrap_or(0)));
                }
                if !in_range(&w.key, &w.range_end, &e.key) {
                    bad("key outside the watched range".into());
                }
                if filtered(w, e.kind) {
                    bad(format!("{:?} events are filtered out on this watch", e.kind));
                }
                if r.header_rev < e.mod_rev {
                    bad(format!("response header revision {} is below the event", r.header_rev));
                }
                let prior = rev_response.get(&e.mod_rev).copied();
                match prior {
                    Some(other) if other != j => bad(format!("revision split: its other events came in response {other}")),
                    _ => {
                        rev_response.insert(e.mod_rev, j);
                    }
                }
                last_rev = last_rev.max(e.mod_rev);
                let p = per_key.entry(&e.key).or_insert(e.mod_rev);
                *p = (*p).max(e.mod_rev);
                for (msg, ops) in self.event_content(w, e) {
                    out.push(self.violation(w, format!("response {j}, event {}@{}: {msg}", e.key, e.mod_rev), ops));
                }
            }
        }
        if let Some(start) = start {
            out.extend(self.reliable(w, start, last_rev.max(progress), &delivered));
        }
        out
    }

    fn check_cancel(&self, w: &Watch, j: usize, start: Option<i64>) -> Vec<Violation> {
        let Some(r) = self.stream.responses.get(j) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let c = r.compact_revision;
        if c > 0 {
            if start.is_some_and(|s| s >= c) {
                let msg = format!("canceled for compaction at {c} though it starts at {}", start.unwrap_or(0));
                out.push(self.violation(w, msg, vec![]));
            }
            if !self.compactions.contains(&c) {
                out.push(self.violation(
                    w,
                    format!("canceled for compaction at {c}, but no compaction to {c} was requested"),
                    vec![],
                ));
            }
        } else if w.cancel_sent_at.is_none() {
            let msg = format!("canceled by the server without compaction or a cancel request (reason {:?})", r.cancel_reason);
            out.push(self.violation(w, msg, vec![]));
        }
        out
    }

    /// Whether an event is a write the history could have made, with the
    /// fields the history determines, and its prev_kv.
    fn event_content(&self, w: &Watch, e: &Event) -> Vec<(String, Vec<usize>)> {
        let (h, t) = (self.h, self.t);
        let mut out = Vec::new();
        if e.mod_rev <= t.start {
            return out;
        }
        let known = t.known_of(&e.key).iter().find(|k| k.rev == e.mod_rev);
        let explained = match (known, e.kind) {
            (Some(k), EventKind::Put) => match &k.effect {
                Effect::Put { value, lease } if *value == e.value && *lease == e.lease => true,
                _ => {
                    let by = k.op.map_or("a write".into(), |o| describe(h, o));
                    out.push((format!("does not match {by} at that revision"), k.op.into_iter().collect()));
                    true
                }
            },
            (Some(k), EventKind::Delete) => {
                if k.effect != Effect::Delete {
                    let by = k.op.map_or("a write".into(), |o| describe(h, o));
                    out.push((format!("delete event, but {by} put the key at that revision"), k.op.into_iter().collect()));
                }
                true
            }
            (None, _) => by_uncertain(t, e),
        };
        if !explained {
            out.push(("no op of the history could have made this write".into(), vec![]));
        }
        let as_kv = |e: &Event| Kv {
            value: e.value.clone(),
            mod_rev: e.mod_rev,
            create_rev: e.create_rev,
            version: e.version,
            lease: e.lease,
        };
        if let StateAt::Known { kv, exact, by } = t.state_at(&e.key, e.mod_rev) {
            let got = (e.kind == EventKind::Put).then(|| as_kv(e));
            if let Some(diff) = kv_mismatch(&kv, exact, &got) {
                out.push((format!("the key's state at this revision differs: {diff}"), by.into_iter().collect()));
            }
        }
        if !w.prev_kv && e.prev.is_some() {
            out.push(("carries a prev_kv the watch did not ask for".into(), vec![]));
        }
        if w.prev_kv {
            if let StateAt::Known { kv, exact, by } = t.state_at(&e.key, e.mod_rev.saturating_sub(1)) {
                if let Some(diff) = kv_mismatch(&kv, exact, &e.prev) {
                    out.push((format!("prev_kv is not the state just before: {diff}"), by.into_iter().collect()));
                }
            }
        }
        out
    }

    /// Every known write in range with a revision in [start, covered] was delivered.
    fn reliable(&self, w: &Watch, start: i64, covered: i64, delivered: &HashSet<(&Bytes, i64)>) -> Vec<Violation> {
        let mut missed = Vec::new();
        for k in keys_in(&self.t.universe, &w.key, &w.range_end) {
            for e in self.t.known_of(k) {
                let kind = if e.effect == Effect::Delete { EventKind::Delete } else { EventKind::Put };
                if e.rev >= start && e.rev <= covered && !filtered(w, kind) && !delivered.contains(&(k, e.rev)) {
                    missed.push((k, e.rev, e.op));
                }
            }
            for &(rev, kind) in self.applied.get(k).into_iter().flatten() {
                let counted = missed.iter().any(|m| m.0 == k && m.1 == rev);
                if rev >= start && rev <= covered && !filtered(w, kind) && !delivered.contains(&(k, rev)) && !counted {
                    missed.push((k, rev, None));
                }
            }
        }
        if missed.is_empty() {
            return Vec::new();
        }
        missed.sort_by_key(|m| m.1);
        let shown: Vec<String> = missed
            .iter()
            .take(5)
            .map(|(k, rev, op)| {
                format!(
                    "{k}@{rev}{}",
                    op.map_or(" (a write of unknown outcome another watch delivered)".into(), |o| {
                        format!(" ({})", describe(self.h, o))
                    })
                )
            })
            .collect();
        let more = if missed.len() > 5 { format!(" and {} more", missed.len() - 5) } else { String::new() };
        let msg = format!("missed {} event(s) between start {start} and {covered}: {}{more}", missed.len(), shown.join("; "));
        vec![self.violation(w, msg, missed.iter().filter_map(|m| m.2).collect())]
    }
}
