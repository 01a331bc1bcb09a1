//! Linearizability of the key-value history, per partition of keys.
//!
//! P-compositionality: a history of independent parts is linearizable iff
//! each part is, so keys are partitioned (union-find: the keys of one txn
//! share a partition) and each partition is searched on its own
//! (`lin_search`) against the etcd model (`lin_model`). Ops that span
//! partitions without being atomic writes are projected onto each: a
//! multi-key range read at the latest revision becomes a read of its keys in
//! every partition, so are range deletes and the disappearance of a lease's
//! keys (revocation, or expiry at an unrecorded time: an op that may happen
//! or not). A projection of a linearizable history is linearizable, so every
//! violation found is real; that a range is one snapshot across partitions
//! is the revision checker's part.
//!
//! Writes' header revisions are their revisions, so the model also checks
//! revisions: a write's revision exceeds everything seen before it, a read's
//! header is at least that. Ops of unknown outcome may take effect anywhere
//! after their call or never, unless a value only they wrote was seen (then
//! they took effect, at the revision it was seen with). Reads at an explicit
//! revision and serializable reads are left to the revision checker.

use super::lin_compile::Builder;
use super::lin_model::{PState, Rev};
use super::lin_search::{search, Failure, Partition, Verdict};
use super::timeline::Timelines;
use super::{Checker, Inconclusive, Options, Violation};
use crate::history::{describe, History};

/// What the linearizability check found.
pub struct LinResult {
    pub violations: Vec<Violation>,
    pub partitions: usize,
    pub inconclusive: Vec<Inconclusive>,
}

pub fn check(h: &History) -> LinResult {
    check_with(h, &Timelines::new(h), &Options::default())
}

pub(crate) fn check_with(h: &History, t: &Timelines, options: &Options) -> LinResult {
    let mut b = Builder::build(h, t);
    let mut result = LinResult { violations: Vec::new(), partitions: 0, inconclusive: Vec::new() };
    let parts = std::mem::take(&mut b.parts);
    for p in parts.iter().filter(|p| !p.ops.is_empty()) {
        result.partitions += 1;
        let (verdict, steps) = search(p, &b.values, options.step_budget);
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Inconclusive(f) => {
                let detail = f.map_or("no attempt got stuck".into(), |f| describe_failure(&b, p, &f).1);
                result.inconclusive.push(Inconclusive { keys: p.keys.clone(), ops: p.ops.len(), steps, detail })
            }
            Verdict::Violation(f) => {
                let keys: Vec<String> = p.keys.iter().take(8).map(|k| k.to_string()).collect();
                let (ops, detail) = describe_failure(&b, p, &f);
                let msg = format!("keys {}: no linearization of {} ops. {detail}", keys.join(","), p.ops.len());
                result.violations.push(Violation::new(Checker::Linearizable, msg, ops));
            }
        }
    }
    result
}

/// The ops involved in the deepest attempt and a text about it.
fn describe_failure(b: &Builder, p: &Partition, f: &Failure) -> (Vec<usize>, String) {
    let h = b.h;
    let op_of = |l: usize| p.ops.get(l).and_then(|o| o.op);
    let blocking = f.blocking.and_then(op_of);
    let before: Vec<usize> = f.before.iter().filter_map(|&l| op_of(l)).collect();
    let mut msg = match blocking {
        Some(o) => format!("The deepest attempt placed {} ops, then could not place {}", f.depth, describe(h, o)),
        None => format!("The deepest attempt placed {} ops", f.depth),
    };
    let lowest = f.lowest.and_then(op_of).filter(|o| Some(*o) != blocking);
    if let Some(o) = lowest {
        msg += &format!("; the op with the lowest revision still to place was {}", describe(h, o));
    }
    msg += &format!("; model state then: {}", describe_state(b, p, &f.state));
    if !before.is_empty() {
        let last: Vec<String> = before.iter().take(3).map(|&o| describe(h, o)).collect();
        msg += &format!("; last placed: {}", last.join(" ← "));
    }
    (blocking.into_iter().chain(lowest).chain(before).collect(), msg)
}

fn describe_state(b: &Builder, p: &Partition, s: &PState) -> String {
    let mut parts = Vec::new();
    for (k, ks) in p.keys.iter().zip(&s.keys).take(8) {
        if !ks.exists {
            parts.push(format!("{k} absent"));
            continue;
        }
        let value = b.values.get(ks.value as usize).map_or("<a value nobody saw>".to_string(), |v| v.to_string());
        let rev = |r: Rev| match r {
            Rev::Known(x) => x.to_string(),
            Rev::AtLeast(x) => format!(">={x}"),
        };
        parts.push(format!(
            "{k}={value} mod_rev {} create_rev {} version {} lease {:x}",
            rev(ks.mod_rev),
            rev(ks.create_rev),
            ks.version,
            ks.lease
        ));
    }
    format!("{}; store revision >= {}", parts.join(", "), s.floor)
}
