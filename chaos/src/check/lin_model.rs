//! The sequential model of the linearizability check: the etcd key-value
//! state of one partition of keys, and what each op does to it.
//!
//! Per key: exists, value, mod_rev, create_rev, version, lease. Per
//! partition: `floor`, a lower bound of the store revision at this point of
//! the linearization (the highest revision any op placed so far saw). A write
//! whose revision is known (its header) must exceed the floor; a read's
//! header must be at least the floor. A write of unknown outcome has an
//! unknown revision: the floor rises by one and the key's mod_rev is only
//! known to be at least that, until a read binds it.

use crate::history::{Bytes, CmpOp};
use std::cmp::Ordering;

/// Value id of a put whose value no other op wrote, read, watched or
/// compared: such puts are interchangeable (see the search's classes).
pub(crate) const GHOST: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Rev {
    Known(i64),
    AtLeast(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KState {
    pub(crate) exists: bool,
    pub(crate) value: u32,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) mod_rev: Rev,
    pub(crate) create_rev: Rev,
}

impl KState {
    pub(crate) const ABSENT: KState =
        KState { exists: false, value: 0, version: 0, lease: 0, mod_rev: Rev::Known(0), create_rev: Rev::Known(0) };
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct PState {
    pub(crate) keys: Vec<KState>,
    pub(crate) floor: i64,
}

/// A kv an op returned (value interned).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ObsKv {
    pub(crate) value: u32,
    pub(crate) mod_rev: i64,
    pub(crate) create_rev: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LTarget {
    ModRev(i64),
    CreateRev(i64),
    Version(i64),
    Value(u32),
    Lease(i64),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LCompare {
    pub(crate) key: usize,
    pub(crate) op: CmpOp,
    pub(crate) target: LTarget,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LTxnOp {
    Get(usize),
    Put(usize, u32, i64),
    Delete(usize),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LResult {
    Get(Option<ObsKv>),
    Put,
    Delete(i64),
}

/// An op projected on one partition (keys are partition-local indices).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LKind {
    /// A read at the latest revision: each key's kv (None: absent).
    Read { items: Vec<(usize, Option<ObsKv>)> },
    /// `prev`: Some when the put asked for the previous kv and it came back.
    Put { key: usize, value: u32, lease: i64, prev: Option<Option<ObsKv>> },
    /// `full`: the keys are all the keys of the delete, so `deleted` counts them.
    Delete { keys: Vec<usize>, deleted: Option<i64>, full: bool },
    Txn {
        compares: Vec<LCompare>,
        success: Vec<LTxnOp>,
        failure: Vec<LTxnOp>,
        branch: Option<bool>,
        results: Option<Vec<LResult>>,
    },
    /// A lease revoked or expired: its keys vanish.
    LeaseDrop { keys: Vec<usize>, lease: i64 },
}

/// `header`: the response's revision; None when the outcome is unknown.
#[derive(Clone, Debug)]
pub(crate) struct LOp {
    pub(crate) op: Option<usize>,
    pub(crate) kind: LKind,
    pub(crate) header: Option<i64>,
}

/// Bind an unknown revision to an observed one, or compare a known one.
fn bind(r: &mut Rev, v: i64, max: i64) -> bool {
    match *r {
        Rev::Known(x) => x == v,
        Rev::AtLeast(x) if v >= x && v <= max => {
            *r = Rev::Known(v);
            true
        }
        Rev::AtLeast(_) => false,
    }
}

fn observe(ks: &mut KState, obs: &Option<ObsKv>, max: i64) -> bool {
    match obs {
        None => !ks.exists,
        Some(o) => {
            ks.exists
                && ks.value == o.value
                && ks.version == o.version
                && ks.lease == o.lease
                && bind(&mut ks.mod_rev, o.mod_rev, max)
                && bind(&mut ks.create_rev, o.create_rev, o.mod_rev)
        }
    }
}

fn put(ks: &mut KState, value: u32, lease: i64, rev: Rev) {
    if ks.exists {
        ks.version = ks.version.saturating_add(1);
    } else {
        *ks = KState { exists: true, version: 1, create_rev: rev, ..*ks };
    }
    ks.value = value;
    ks.lease = lease;
    ks.mod_rev = rev;
}

/// The revision of a call that changes something (the keys it writes).
fn begin_write(n: &mut PState, header: Option<i64>) -> Option<Rev> {
    match header {
        Some(w) if w > n.floor => {
            n.floor = w;
            Some(Rev::Known(w))
        }
        Some(_) => None,
        None => {
            n.floor = n.floor.saturating_add(1);
            Some(Rev::AtLeast(n.floor))
        }
    }
}

/// A call that changed nothing still saw the store at its header.
fn no_write(n: &mut PState, header: Option<i64>) -> bool {
    match header {
        Some(h) if h >= n.floor => {
            n.floor = h;
            true
        }
        Some(_) => false,
        None => true,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tri {
    True,
    False,
    Maybe,
}

fn tri(b: bool) -> Tri {
    if b {
        Tri::True
    } else {
        Tri::False
    }
}

fn cmp_known(actual: Ordering, op: CmpOp) -> Tri {
    tri(match op {
        CmpOp::Eq => actual == Ordering::Equal,
        CmpOp::NotEq => actual != Ordering::Equal,
        CmpOp::Less => actual == Ordering::Less,
        CmpOp::Greater => actual == Ordering::Greater,
    })
}

fn cmp_rev(r: Rev, x: i64, op: CmpOp) -> Tri {
    match r {
        Rev::Known(m) => cmp_known(m.cmp(&x), op),
        // The actual revision is some m' >= m.
        Rev::AtLeast(m) => match op {
            CmpOp::Eq if x < m => Tri::False,
            CmpOp::NotEq if x < m => Tri::True,
            CmpOp::Less if x <= m => Tri::False,
            CmpOp::Greater if x < m => Tri::True,
            _ => Tri::Maybe,
        },
    }
}

/// etcd's compare: a missing key compares as a zero kv, except that a value
/// compare on it always fails.
fn eval(ks: &KState, c: &LCompare, values: &[Bytes]) -> Tri {
    let absent = !ks.exists;
    match c.target {
        LTarget::Value(_) if absent => Tri::False,
        LTarget::Value(v) => match c.op {
            CmpOp::Eq => tri(ks.value == v),
            CmpOp::NotEq => tri(ks.value != v),
            _ => match (values.get(ks.value as usize), values.get(v as usize)) {
                (Some(a), Some(b)) => cmp_known(a.cmp(b), c.op),
                _ => Tri::Maybe,
            },
        },
        LTarget::ModRev(x) if absent => cmp_known(0.cmp(&x), c.op),
        LTarget::ModRev(x) => cmp_rev(ks.mod_rev, x, c.op),
        LTarget::CreateRev(x) if absent => cmp_known(0.cmp(&x), c.op),
        LTarget::CreateRev(x) => cmp_rev(ks.create_rev, x, c.op),
        LTarget::Version(x) => cmp_known(ks.version.cmp(&x), c.op),
        LTarget::Lease(x) => cmp_known(ks.lease.cmp(&x), c.op),
    }
}

/// The states the op can lead to from `s` (none: it cannot be linearized here).
pub(crate) fn step(s: &PState, op: &LOp, values: &[Bytes], out: &mut Vec<PState>) {
    let mut n = s.clone();
    let ok = match &op.kind {
        LKind::Read { items } => {
            let max = op.header.unwrap_or(i64::MAX);
            items.iter().all(|(k, obs)| n.keys.get_mut(*k).is_some_and(|ks| observe(ks, obs, max))) && no_write(&mut n, op.header)
        }
        LKind::Put { key, value, lease, prev } => {
            let max = op.header.map_or(i64::MAX, |w| w.saturating_sub(1));
            let seen = prev.as_ref().is_none_or(|p| n.keys.get_mut(*key).is_some_and(|ks| observe(ks, p, max)));
            match (seen, begin_write(&mut n, op.header)) {
                (true, Some(rev)) => n.keys.get_mut(*key).map(|ks| put(ks, *value, *lease, rev)).is_some(),
                _ => false,
            }
        }
        LKind::Delete { keys, deleted, full } => delete(&mut n, keys, *deleted, *full, op.header),
        LKind::LeaseDrop { keys, lease } => {
            let mut any = false;
            for k in keys {
                if let Some(ks) = n.keys.get_mut(*k).filter(|ks| ks.exists && ks.lease == *lease) {
                    *ks = KState::ABSENT;
                    any = true;
                }
            }
            if any {
                n.floor = n.floor.saturating_add(1);
            }
            true
        }
        LKind::Txn { compares, success, failure, branch, results } => {
            let mut all = Tri::True;
            for c in compares {
                match n.keys.get(c.key).map(|ks| eval(ks, c, values)) {
                    Some(Tri::True) => {}
                    Some(Tri::Maybe) if all == Tri::True => all = Tri::Maybe,
                    Some(Tri::Maybe) => {}
                    Some(Tri::False) | None => all = Tri::False,
                }
            }
            let branches: &[bool] = match (branch, all) {
                (Some(true), Tri::True | Tri::Maybe) | (None, Tri::True) => &[true],
                (Some(false), Tri::False | Tri::Maybe) | (None, Tri::False) => &[false],
                (None, Tri::Maybe) => &[true, false],
                _ => &[],
            };
            for &b in branches {
                let mut m = n.clone();
                if b {
                    bind_compares(&mut m, compares);
                }
                let ops = if b { success } else { failure };
                if run_branch(&mut m, ops, results.as_deref(), op.header) {
                    out.push(m);
                }
            }
            return;
        }
    };
    if ok {
        out.push(n);
    }
}

fn delete(n: &mut PState, keys: &[usize], deleted: Option<i64>, full: bool, header: Option<i64>) -> bool {
    let count = keys.iter().filter(|&&k| n.keys.get(k).is_some_and(|ks| ks.exists)).count() as i64;
    match deleted {
        Some(d) if full && d != count => return false,
        Some(0) if count > 0 => return false,
        _ => {}
    }
    let consumed = match (deleted, header) {
        (Some(d), Some(_)) => d > 0,
        _ => count > 0,
    };
    if !consumed {
        return no_write(n, header);
    }
    if begin_write(n, header).is_none() {
        return false;
    }
    for &k in keys {
        if let Some(ks) = n.keys.get_mut(k) {
            *ks = KState::ABSENT;
        }
    }
    true
}

/// The success branch ran: an equality compare on a revision known only
/// from below tells what it is.
fn bind_compares(m: &mut PState, compares: &[LCompare]) {
    for c in compares.iter().filter(|c| c.op == CmpOp::Eq) {
        let Some(ks) = m.keys.get_mut(c.key).filter(|ks| ks.exists) else {
            continue;
        };
        match c.target {
            LTarget::ModRev(x) => {
                bind(&mut ks.mod_rev, x, i64::MAX);
            }
            LTarget::CreateRev(x) => {
                bind(&mut ks.create_rev, x, i64::MAX);
            }
            _ => {}
        }
    }
}

fn run_branch(m: &mut PState, ops: &[LTxnOp], results: Option<&[LResult]>, header: Option<i64>) -> bool {
    let effective = ops.iter().any(|o| match o {
        LTxnOp::Put(..) => true,
        LTxnOp::Delete(k) => m.keys.get(*k).is_some_and(|ks| ks.exists),
        LTxnOp::Get(_) => false,
    });
    let rev = if effective {
        match begin_write(m, header) {
            Some(rev) => rev,
            None => return false,
        }
    } else if no_write(m, header) {
        Rev::Known(0)
    } else {
        return false;
    };
    let max = header.unwrap_or(i64::MAX);
    for (j, o) in ops.iter().enumerate() {
        let result = results.and_then(|r| r.get(j));
        let fine = match o {
            LTxnOp::Get(k) => match result {
                Some(LResult::Get(obs)) => m.keys.get_mut(*k).is_some_and(|ks| observe(ks, obs, max)),
                Some(_) => false,
                None => true,
            },
            LTxnOp::Put(k, v, lease) => m.keys.get_mut(*k).map(|ks| put(ks, *v, *lease, rev)).is_some(),
            LTxnOp::Delete(k) => match m.keys.get_mut(*k) {
                Some(ks) => {
                    let existed = ks.exists as i64;
                    *ks = KState::ABSENT;
                    match result {
                        Some(LResult::Delete(d)) => *d == existed,
                        Some(_) => false,
                        None => true,
                    }
                }
                None => false,
            },
        };
        if !fine {
            return false;
        }
    }
    true
}
