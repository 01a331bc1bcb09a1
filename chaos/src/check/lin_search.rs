//! The linearizability search of one partition: Wing & Gong's depth-first
//! search as Lowe made it practical ("Testing for linearizability", 2017)
//! and porcupine implements it.
//!
//! The ops' call and return events sit in one doubly linked list ordered by
//! time (a call before a return at the same instant: such ops overlap). A
//! candidate to linearize next is an op whose call comes before the first
//! remaining return; linearizing it applies it to the model and lifts its
//! events out of the list; reaching a return whose op is not linearized
//! means backtracking. A set of (linearized ops, model state) fingerprints
//! (128-bit: Zobrist hashing of the op set, a hash of the state) prunes
//! configurations already explored.
//!
//! The order in which candidates are tried matters more than anything:
//! list order (Lowe's) places a long-running write as soon as it is called,
//! and with tens of concurrent clients the reads that must precede it are
//! then found only after exponentially many orderings. Here the ops that
//! must be linearized are tried by revision (header), which the model
//! forces anyway, so the first attempt is almost always the linearization.
//!
//! The same fact prunes: an op that must still be linearized and has a
//! revision can only be placed while the floor (the highest revision placed
//! so far) is below it, so a placement that raises the floor past the
//! lowest such revision is a dead end, rejected at once instead of being
//! explored until that op's return blocks.
//!
//! Ops of unknown outcome have no return: they may be linearized anywhere
//! after their call, or never. To keep them from multiplying the search they
//! are tried after the other candidates, and interchangeable ones (same
//! effect on the model, e.g. deletes of one key, or puts of values nobody
//! saw) form classes linearized only in call order: any linearization using
//! a later one can use an earlier one in its place, so that loses nothing.
//! An optional op that would leave the state as it is (a txn of unknown
//! outcome whose compare fails, a lease drop with no key attached) is not
//! placed: leaving it out loses nothing and it stays available for later.
//! The model may offer two successors (a txn of unknown outcome whose
//! compare the state cannot decide); they are tried in turn.

use super::lin_model::{step, LOp, PState};
use crate::history::Bytes;
use std::collections::{BTreeSet, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// One partition ready for the search.
pub(crate) struct Partition {
    pub(crate) keys: Vec<Bytes>,
    pub(crate) ops: Vec<LOp>,
    pub(crate) calls: Vec<u64>,
    /// None: may be left out (unknown outcome); Some(u64::MAX): must be
    /// linearized, completion unknown.
    pub(crate) returns: Vec<Option<u64>>,
    /// The previous member of the op's interchangeable class.
    pub(crate) class_prev: Vec<Option<usize>>,
    /// The order to try ops that must be linearized: (revision, 0 for a
    /// put / 1 otherwise). Known revisions force that order (a write's
    /// revision exceeds every revision seen before it, a read's is at least
    /// them), so the smallest is almost always the right next op.
    pub(crate) order: Vec<(i64, u8)>,
    pub(crate) init: PState,
}

pub(crate) struct Failure {
    /// The op whose return could not be passed, in the deepest attempt.
    pub(crate) blocking: Option<usize>,
    /// The last ops linearized before it, latest first.
    pub(crate) before: Vec<usize>,
    /// The op with the lowest revision still to be placed then (the one a
    /// higher revision would have passed).
    pub(crate) lowest: Option<usize>,
    pub(crate) depth: usize,
    pub(crate) state: PState,
}

pub(crate) enum Verdict {
    Linearizable,
    Violation(Failure),
    /// The budget ran out; the deepest attempt so far, if any got stuck.
    Inconclusive(Option<Failure>),
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

struct Entry {
    lop: usize,
    ret: bool,
    prev: usize,
    next: usize,
}

/// One placed op: the candidates of its node and its index among them,
/// the state before it and its successors not tried yet.
struct Frame {
    lop: usize,
    cands: Vec<usize>,
    next: usize,
    before: PState,
    alts: Vec<PState>,
}

/// Hashes a u128 fingerprint by folding it.
#[derive(Default)]
struct Fold(u64);
impl Hasher for Fold {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u128(&mut self, x: u128) {
        self.0 = (x as u64) ^ ((x >> 64) as u64);
    }
}

/// A fast mixing hasher for model states (seeded twice for 128 bits).
struct Mix(u64, u64);
impl Hasher for Mix {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(23) ^ x).wrapping_mul(self.1);
    }
    fn write_i64(&mut self, x: i64) {
        self.write_u64(x as u64);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
    fn write_u8(&mut self, x: u8) {
        self.write_u64(x as u64);
    }
    fn write_isize(&mut self, x: isize) {
        self.write_u64(x as u64);
    }
}

fn fingerprint(s: &PState) -> u128 {
    let mut a = Mix(0x243f_6a88_85a3_08d3, 0x9e37_79b9_7f4a_7c15);
    s.hash(&mut a);
    let mut b = Mix(0x1319_8a2e_0370_7344, 0xff51_afd7_ed55_8ccd);
    s.hash(&mut b);
    ((a.finish() as u128) << 64) | b.finish() as u128
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Search<'a> {
    p: &'a Partition,
    entries: Vec<Entry>,
    call_entry: Vec<usize>,
    ret_entry: Vec<Option<usize>>,
    linearized: Vec<bool>,
    /// Per op, the floor above which it can no longer be placed (ops that
    /// must be linearized and have a revision), and the multiset of those
    /// of the ops not placed yet.
    threshold: Vec<Option<i64>>,
    pending: BTreeSet<(i64, usize)>,
}

impl Search<'_> {
    fn lift(&mut self, l: usize) {
        let mut unlink = |i: usize| {
            let (p, n) = (self.entries[i].prev, self.entries[i].next);
            self.entries[p].next = n;
            if n != NIL {
                self.entries[n].prev = p;
            }
        };
        unlink(self.call_entry[l]);
        if let Some(r) = self.ret_entry[l] {
            unlink(r);
        }
        self.linearized[l] = true;
        if let Some(t) = self.threshold[l] {
            self.pending.remove(&(t, l));
        }
    }

    fn unlift(&mut self, l: usize) {
        let mut relink = |i: usize| {
            let (p, n) = (self.entries[i].prev, self.entries[i].next);
            self.entries[p].next = i;
            if n != NIL {
                self.entries[n].prev = i;
            }
        };
        if let Some(r) = self.ret_entry[l] {
            relink(r);
        }
        relink(self.call_entry[l]);
        self.linearized[l] = false;
        if let Some(t) = self.threshold[l] {
            self.pending.insert((t, l));
        }
    }

    /// The lowest threshold of the ops not placed yet, other than `l`: a
    /// state whose floor exceeds it is a dead end (that op can never be placed).
    fn lowest_pending_without(&self, l: usize) -> Option<i64> {
        self.pending.iter().find(|p| p.1 != l).map(|p| p.0)
    }

    /// The ops that may be linearized next (their call comes before the
    /// first remaining return), in the order to try them: the ops that must
    /// be linearized by revision, then the optional ones in call order.
    fn candidates(&self) -> Vec<usize> {
        let mut must: Vec<(i64, u8, usize)> = Vec::new();
        let mut optional = Vec::new();
        let mut e = self.entries[HEAD].next;
        while e != NIL && !self.entries[e].ret {
            let l = self.entries[e].lop;
            if self.p.returns[l].is_some() {
                must.push((self.p.order[l].0, self.p.order[l].1, l));
            } else if self.p.class_prev[l].is_none_or(|c| self.linearized[c]) {
                optional.push(l);
            }
            e = self.entries[e].next;
        }
        must.sort();
        must.into_iter().map(|m| m.2).chain(optional).collect()
    }

    fn first_return(&self) -> Option<usize> {
        let mut e = self.entries[HEAD].next;
        while e != NIL {
            if self.entries[e].ret {
                return Some(self.entries[e].lop);
            }
            e = self.entries[e].next;
        }
        None
    }
}

/// Search for a linearization of the partition within `budget` model steps.
pub(crate) fn search(p: &Partition, values: &[Bytes], budget: u64) -> (Verdict, u64) {
    let n = p.ops.len();
    let mut events: Vec<(u64, bool, usize)> = (0..n).map(|l| (p.calls[l], false, l)).collect();
    events.extend((0..n).filter_map(|l| Some((p.returns[l]?, true, l))));
    events.sort();
    let mut s = Search {
        p,
        entries: vec![Entry { lop: 0, ret: false, prev: NIL, next: NIL }],
        call_entry: vec![0; n],
        ret_entry: vec![None; n],
        linearized: vec![false; n],
        // A write at `rev` needs the floor below it.
        threshold: (0..n)
            .map(|l| match (p.returns[l], p.order[l]) {
                (Some(_), (rev, kind)) if rev != i64::MAX => Some(rev.saturating_sub((kind == 0) as i64)),
                _ => None,
            })
            .collect(),
        pending: BTreeSet::new(),
    };
    for l in 0..n {
        if let Some(t) = s.threshold[l] {
            s.pending.insert((t, l));
        }
    }
    for (i, &(_, ret, l)) in events.iter().enumerate() {
        let idx = i + 1;
        s.entries[idx - 1].next = idx;
        s.entries.push(Entry { lop: l, ret, prev: idx - 1, next: NIL });
        if ret {
            s.ret_entry[l] = Some(idx);
        } else {
            s.call_entry[l] = idx;
        }
    }
    let mut seed = 0x5eed_u64;
    let zobrist: Vec<u128> = (0..n).map(|_| ((splitmix(&mut seed) as u128) << 64) | splitmix(&mut seed) as u128).collect();
    let mut remaining = p.returns.iter().filter(|r| r.is_some()).count();
    let mut memo: HashSet<u128, BuildHasherDefault<Fold>> = HashSet::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut state = p.init.clone();
    let mut hash: u128 = 0;
    let mut steps = 0u64;
    let mut succ: Vec<PState> = Vec::new();
    let mut best: Option<Failure> = None;
    let mut cands = s.candidates();
    let mut next = 0;
    loop {
        if remaining == 0 {
            return (Verdict::Linearizable, steps);
        }
        if steps >= budget {
            return (Verdict::Inconclusive(best), steps);
        }
        if let Some(&l) = cands.get(next) {
            steps += 1;
            succ.clear();
            step(&state, &p.ops[l], values, &mut succ);
            if p.returns[l].is_none() {
                // An optional op that changes nothing here need not be placed here.
                succ.retain(|x| *x != state);
            }
            if let Some(lowest) = s.lowest_pending_without(l) {
                succ.retain(|x| x.floor <= lowest);
            }
            let base = hash ^ zobrist[l];
            if let Some(i) = succ.iter().position(|x| memo.insert(base ^ fingerprint(x))) {
                let alts: Vec<PState> = succ.drain(i + 1..).collect();
                let Some(chosen) = succ.pop() else { continue };
                let before = std::mem::replace(&mut state, chosen);
                let taken = std::mem::take(&mut cands);
                stack.push(Frame { lop: l, cands: taken, next, before, alts });
                s.lift(l);
                hash = base;
                remaining -= p.returns[l].is_some() as usize;
                cands = s.candidates();
                next = 0;
            } else {
                next += 1;
            }
            continue;
        }
        if best.as_ref().is_none_or(|b| stack.len() > b.depth) {
            let before = stack.iter().rev().take(6).map(|f| f.lop).collect();
            best = Some(Failure {
                blocking: s.first_return(),
                before,
                lowest: s.pending.first().map(|p| p.1),
                depth: stack.len(),
                state: state.clone(),
            });
        }
        // Backtrack: undo the last placement, try its other successors, then the next candidate.
        let Some(mut f) = stack.pop() else {
            return (best.map_or(Verdict::Inconclusive(None), Verdict::Violation), steps);
        };
        s.unlift(f.lop);
        hash ^= zobrist[f.lop];
        remaining += p.returns[f.lop].is_some() as usize;
        state = std::mem::take(&mut f.before);
        let base = hash ^ zobrist[f.lop];
        let mut placed = None;
        while let Some(alt) = f.alts.pop() {
            if memo.insert(base ^ fingerprint(&alt)) {
                placed = Some(alt);
                break;
            }
        }
        if let Some(alt) = placed {
            f.before = std::mem::replace(&mut state, alt);
            s.lift(f.lop);
            hash = base;
            remaining -= p.returns[f.lop].is_some() as usize;
            stack.push(f);
            cands = s.candidates();
            next = 0;
        } else {
            cands = f.cands;
            next = f.next + 1;
        }
    }
}
