//! Revision guarantees of etcd, checked without a search:
//!
//! (a) header revisions never go back in real time: if op A completed before
//!     op B was invoked, B's header revision is at least A's (for every op
//!     with a header; serializable reads, which may be served stale, are not
//!     held to it);
//! (b) per key, write revisions are unique and increase in real-time order;
//!     across keys, two ops never write at one revision (etcd gives each
//!     txn its own; a federation's groups share one timeline);
//! (c) a read at an explicit revision R returns the state reconstructed at R
//!     from the writes of the history;
//! (d) a read at the latest revision is a snapshot at its header revision:
//!     every kv is the key's state there and no existing key is missing.
//!
//! (c) and (d) compare only what the history determines: a key with a write
//! of unknown outcome that may have landed at or below the read's revision,
//! or attached to a lease that may have expired, is skipped.

use super::index::{keys_in, RtMax};
use super::timeline::{kv_mismatch, StateAt, Timelines};
use super::{Checker, Violation};
use crate::history::{describe, in_range, Bytes, Call, History, Kv, Response};
use std::collections::BTreeMap;

pub fn check(h: &History) -> Vec<Violation> {
    check_with(h, &Timelines::new(h))
}

pub(crate) fn check_with(h: &History, t: &Timelines) -> Vec<Violation> {
    let mut out = headers_monotonic(h);
    out.extend(write_revisions(h, t));
    for (i, _) in h.ops.iter().enumerate() {
        out.extend(read_snapshot(h, t, i));
    }
    for &(i, existed) in &t.range_delete_counts {
        if let Some(Response::Delete { deleted, .. }) = h.ops.get(i).and_then(|o| o.response()) {
            if *deleted != existed {
                let msg = format!("{} deleted {deleted} keys but {existed} existed in the range", describe(h, i));
                out.push(Violation::new(Checker::Revisions, msg, vec![i]));
            }
        }
    }
    out
}

/// (a): one violation per op that saw a revision older than an op before it.
fn headers_monotonic(h: &History) -> Vec<Violation> {
    let items = h.ops.iter().enumerate().filter_map(|(i, op)| Some((op.complete?, op.header_rev()?, i))).collect();
    let rt = RtMax::new(items);
    let mut by_culprit: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        let Some(rev) = op.header_rev() else { continue };
        if op.is_serializable() {
            continue;
        }
        if let Some((seen, a)) = rt.before(op.invoke) {
            if rev < seen {
                by_culprit.entry(a).or_default().push(i);
            }
        }
    }
    let mut out = Vec::new();
    for (a, bs) in by_culprit {
        let seen = h.ops.get(a).and_then(|o| o.header_rev()).unwrap_or(0);
        for &b in bs.iter().take(3) {
            let msg = format!(
                "header revision went back in real time: {} was invoked after {} completed with header {seen}",
                describe(h, b),
                describe(h, a)
            );
            out.push(Violation::new(Checker::Revisions, msg, vec![a, b]));
        }
        if bs.len() > 3 {
            let msg = format!("... and {} more ops invoked after #{a} saw headers below {seen}", bs.len() - 3);
            out.push(Violation::new(Checker::Revisions, msg, bs[3..].to_vec()));
        }
    }
    out
}

/// (b): per key, two writes never share a revision, and a write invoked
/// after another completed has a higher revision.
fn write_revisions(h: &History, t: &Timelines) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut keys: Vec<&Bytes> = t.keys.keys().collect();
    keys.sort();
    let mut writer_of: BTreeMap<i64, (usize, &Bytes)> = BTreeMap::new();
    for key in keys {
        let known = t.known_of(key);
        for e in known.iter() {
            let Some(op) = e.op else { continue };
            match writer_of.get(&e.rev) {
                Some(&(other, other_key)) if other != op && other_key != key => {
                    let msg = format!(
                        "two ops wrote at revision {}: {} ({other_key}) and {} ({key})",
                        e.rev,
                        describe(h, other),
                        describe(h, op)
                    );
                    out.push(Violation::new(Checker::Revisions, msg, vec![other, op]));
                }
                Some(_) => {}
                None => {
                    writer_of.insert(e.rev, (op, key));
                }
            }
        }
        for pair in known.windows(2) {
            if let ([a, b], Some(x), Some(y)) = (pair, pair[0].op, pair[1].op) {
                if a.rev == b.rev && x != y {
                    let msg =
                        format!("two writes of {key} at the same revision {}: {} and {}", a.rev, describe(h, x), describe(h, y));
                    out.push(Violation::new(Checker::Revisions, msg, vec![x, y]));
                }
            }
        }
        let items = known
            .iter()
            .filter_map(|e| {
                let op = e.op?;
                Some((h.ops.get(op)?.complete?, e.rev, op))
            })
            .collect();
        let rt = RtMax::new(items);
        for e in known {
            let Some(b) = e.op else { continue };
            let Some(invoke) = h.ops.get(b).map(|o| o.invoke) else {
                continue;
            };
            if let Some((rev, a)) = rt.before(invoke) {
                if e.rev <= rev && a != b {
                    let msg = format!(
                        "write revisions of {key} went back in real time: {} (rev {}) was invoked after {} (rev {rev}) completed",
                        describe(h, b),
                        e.rev,
                        describe(h, a)
                    );
                    out.push(Violation::new(Checker::Revisions, msg, vec![a, b]));
                }
            }
        }
    }
    out
}

/// (c) and (d) for one op.
fn read_snapshot(h: &History, t: &Timelines, i: usize) -> Vec<Violation> {
    let Some(op) = h.ops.get(i) else { return Vec::new() };
    let (key, end, revision, limit, header, kvs, more, count) = match (&op.call, op.response()) {
        (Call::Get { key, revision, .. }, Some(Response::Get { header_rev, kv })) => {
            let kvs: Vec<(Bytes, Kv)> = kv.iter().map(|kv| (key.clone(), kv.clone())).collect();
            (key, Bytes::default(), *revision, 0, *header_rev, kvs, false, 0)
        }
        (Call::Range { key, range_end, revision, limit, .. }, Some(Response::Range { header_rev, kvs, more, count })) => {
            (key, range_end.clone(), *revision, *limit, *header_rev, kvs.clone(), *more, *count)
        }
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    let mut bad = |msg: String, by: Option<usize>| {
        let mut ops = vec![i];
        ops.extend(by);
        out.push(Violation::new(Checker::Revisions, format!("{}: {msg}", describe(h, i)), ops));
    };
    let at = if revision > 0 { revision } else { header };
    if revision > 0 && header < revision {
        bad(format!("header revision {header} is below the requested revision {revision}"), None);
    }
    for (n, (k, kv)) in kvs.iter().enumerate() {
        if !in_range(key, &end, k) {
            bad(format!("returned {k}, which is outside the range"), None);
        }
        if n > 0 && kvs[n - 1].0 >= *k {
            bad(format!("keys not in ascending order at {k}"), None);
        }
        if kv.mod_rev > at {
            bad(format!("returned {k} with mod_rev {} above the read's revision {at}", kv.mod_rev), None);
        }
    }
    if limit > 0 && kvs.len() as i64 > limit {
        bad(format!("returned {} keys with limit {limit}", kvs.len()), None);
    }
    if count > 0 && (count < kvs.len() as i64 || (limit == 0 && count != kvs.len() as i64)) {
        bad(format!("count {count} does not fit the {} keys returned", kvs.len()), None);
    }
    let returned: BTreeMap<&Bytes, &Kv> = kvs.iter().map(|(k, kv)| (k, kv)).collect();
    let last = kvs.last().map(|(k, _)| k.clone());
    let what = if revision > 0 { "at revision" } else { "snapshot at header" };
    for k in keys_in(&t.universe, key, &end) {
        if more && last.as_ref().is_none_or(|l| k > l) {
            break;
        }
        let StateAt::Known { kv, exact, by } = t.state_at(k, at) else {
            continue;
        };
        let got = returned.get(k).map(|kv| (*kv).clone());
        if let Some(diff) = kv_mismatch(&kv, exact, &got) {
            let by_text = by.map_or(String::new(), |b| format!(" (last write {})", describe(h, b)));
            bad(format!("{what} {at}, key {k}: {diff}{by_text}"), by);
        }
    }
    out
}
