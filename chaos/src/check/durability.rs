//! Durability: after the faults healed, a final read of the workload's key
//! space must show every acknowledged write. Per key, the final state is the
//! last write in revision order among the acknowledged writes and the ones
//! of unknown outcome that may have landed after it: an acknowledged put
//! that is missing (or older than what was acknowledged) is a lost write,
//! and a key whose acknowledged delete is the last write must not come back.

use super::index::keys_in;
use super::timeline::{kv_mismatch, Effect, StateAt, Timelines, UEffect};
use super::{Checker, Violation};
use crate::history::{describe, in_range, History, Kv};
use std::collections::BTreeMap;

pub fn check(h: &History) -> Vec<Violation> {
    check_with(h, &Timelines::new(h)).0
}

/// The violations, and a note when there is no final read to check.
pub(crate) fn check_with(h: &History, t: &Timelines) -> (Vec<Violation>, Option<String>) {
    let Some(f) = &h.final_read else {
        return (Vec::new(), Some("no final read recorded: durability not checked".into()));
    };
    let mut out = Vec::new();
    let mut bad = |msg: String, ops: Vec<usize>| out.push(Violation::new(Checker::Durability, msg, ops));
    let got: BTreeMap<_, _> = f.kvs.iter().map(|(k, kv)| (k, kv)).collect();
    for k in got.keys() {
        if !in_range(&f.key, &f.range_end, k) {
            bad(format!("the final read returned {k}, outside its range"), vec![]);
        }
    }
    // The final read comes after every acknowledged write of its key space.
    let newest = keys_in(&t.universe, &f.key, &f.range_end)
        .into_iter()
        .flat_map(|k| t.known_of(k))
        .filter_map(|e| Some((e.rev, e.op?)))
        .filter(|(_, i)| h.ops.get(*i).is_some_and(|o| o.response().is_some()))
        .max();
    if let Some((rev, i)) = newest {
        if f.header_rev < rev {
            let msg = format!("the final read's header revision {} is below {}", f.header_rev, describe(h, i));
            bad(msg, vec![i]);
        }
    }
    for k in keys_in(&t.universe, &f.key, &f.range_end) {
        let final_kv = got.get(k).map(|kv| (*kv).clone());
        let known = t.known_of(k);
        let last = known.iter().rev().find(|e| e.rev <= f.header_rev);
        let last_text = last.and_then(|e| e.op).map_or("the initial state".into(), |o| describe(h, o));
        let ops: Vec<usize> = last.and_then(|e| e.op).into_iter().collect();
        // Lost or resurrected: the final state is older than the last acknowledged write.
        if let (Some(e), Some(g)) = (last, &final_kv) {
            if g.mod_rev < e.rev {
                let what = if e.effect == Effect::Delete { "deleted key came back" } else { "acknowledged write lost" };
                bad(format!("{what}: final read shows {k}@{} but {last_text} wrote it at {}", g.mod_rev, e.rev), ops);
                continue;
            }
        }
        match t.state_at(k, f.header_rev) {
            StateAt::Known { kv, exact, .. } => {
                if let Some(diff) = kv_mismatch(&kv, exact, &final_kv) {
                    let what = match (&kv, &final_kv) {
                        (Some(_), None) => "acknowledged write lost",
                        (None, Some(_)) => "deleted key came back",
                        _ => "final state differs from the last write",
                    };
                    bad(format!("{what}: final read of {k}: {diff} (last write {last_text})"), ops);
                }
            }
            StateAt::Unknown => {
                if let Some(msg) = unexplained(t, k, last.map(|e| (e.rev, &e.effect)), &final_kv) {
                    bad(format!("final read of {k}: {msg} (last acknowledged write {last_text})"), ops);
                }
            }
        }
    }
    (out, None)
}

/// With writes of unknown outcome after the last known one, the final state
/// must be the last known write or one of those.
fn unexplained(t: &Timelines, k: &crate::history::Bytes, last: Option<(i64, &Effect)>, got: &Option<Kv>) -> Option<String> {
    let after = last.map_or(0, |l| l.0);
    let uncertain = t.keys.get(k).map(|tl| tl.uncertain.as_slice()).unwrap_or(&[]);
    match got {
        None => {
            let deleted_last = matches!(last, None | Some((_, Effect::Delete)));
            let may_delete = uncertain
                .iter()
                .any(|u| matches!(u.effect, UEffect::Delete | UEffect::LeaseDrop(_)) && u.may_land(after, i64::MAX));
            (!deleted_last && !may_delete).then(|| "acknowledged write lost: the key is missing".to_string())
        }
        Some(g) if g.mod_rev == after => match last {
            Some((_, Effect::Put { value, .. })) if *value == g.value => None,
            Some((_, Effect::Put { value, .. })) => {
                Some(format!("value {} at {} but the write there put {value}", g.value, after))
            }
            _ => Some(format!("deleted key came back with {}@{}", g.value, g.mod_rev)),
        },
        Some(g) => {
            let fits = uncertain.iter().any(|u| match &u.effect {
                UEffect::Put { value, .. } => *value == g.value && u.may_land(after.max(g.mod_rev.saturating_sub(1)), g.mod_rev),
                _ => false,
            });
            (!fits).then(|| format!("shows {}@{}, which no write after {after} could have made", g.value, g.mod_rev))
        }
    }
}
