//! Checkers over a recorded history. Each returns violations a human can
//! read (which guarantee, what was seen, which ops); `check_all` runs them
//! all and gathers a `Report`.
//!
//! What the checkers assume of the history: every write to the workload's
//! key space is one of its ops (so a key's state at a revision can be
//! reconstructed), keys that existed before are listed in
//! `History::initial`, and times come from one monotonic clock.

pub mod durability;
pub mod leases;
pub mod linearizable;
pub mod revisions;
pub mod watch;

pub(crate) mod index;
mod lin_compile;
mod lin_model;
mod lin_search;
pub(crate) mod timeline;

use crate::history::{Bytes, History};
use serde::{Deserialize, Serialize};
use std::fmt;
use timeline::Timelines;

/// Which checker found a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checker {
    /// The recording itself is malformed (see `History::validate`).
    History,
    Linearizable,
    Revisions,
    Watch,
    Durability,
    Leases,
}

impl Checker {
    pub const ALL: [Checker; 6] =
        [Checker::History, Checker::Linearizable, Checker::Revisions, Checker::Watch, Checker::Durability, Checker::Leases];
    pub fn name(self) -> &'static str {
        match self {
            Checker::History => "history",
            Checker::Linearizable => "linearizable",
            Checker::Revisions => "revisions",
            Checker::Watch => "watch",
            Checker::Durability => "durability",
            Checker::Leases => "leases",
        }
    }
}

impl fmt::Display for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken guarantee: `ops` are indices into `History::ops`, `streams`
/// into `History::watches`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub checker: Checker,
    pub message: String,
    pub ops: Vec<usize>,
    pub streams: Vec<usize>,
}

impl Violation {
    pub fn new(checker: Checker, message: impl Into<String>, ops: Vec<usize>) -> Violation {
        Violation { checker, message: message.into(), ops, streams: Vec::new() }
    }
    pub fn on_stream(checker: Checker, message: impl Into<String>, stream: usize, ops: Vec<usize>) -> Violation {
        Violation { checker, message: message.into(), ops, streams: vec![stream] }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.checker, self.message)?;
        if !self.ops.is_empty() {
            let ops: Vec<String> = self.ops.iter().map(|o| format!("#{o}")).collect();
            write!(f, " (ops {})", ops.join(" "))?;
        }
        if !self.streams.is_empty() {
            let s: Vec<String> = self.streams.iter().map(|o| format!("#{o}")).collect();
            write!(f, " (streams {})", s.join(" "))?;
        }
        Ok(())
    }
}

/// A partition the linearizability search gave up on (step budget spent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inconclusive {
    pub keys: Vec<Bytes>,
    pub ops: usize,
    pub steps: u64,
    /// Where the deepest attempt got stuck.
    pub detail: String,
}

/// Tuning of the checkers.
#[derive(Clone, Debug)]
pub struct Options {
    /// Model steps the linearizability search may take per partition
    /// before it reports the partition as inconclusive.
    pub step_budget: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { step_budget: 2_000_000 }
    }
}

/// Everything the checkers found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub ops: usize,
    pub streams: usize,
    pub watches: usize,
    pub partitions: usize,
    pub inconclusive: Vec<Inconclusive>,
    /// Checks that could not run (e.g. no final read).
    pub notes: Vec<String>,
}

impl Report {
    /// No violation and nothing inconclusive.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty() && self.inconclusive.is_empty()
    }
    pub fn of(&self, checker: Checker) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.checker == checker)
    }
    pub fn count(&self, checker: Checker) -> usize {
        self.of(checker).count()
    }
}

/// How many violations per checker the summary prints.
const SHOWN: usize = 20;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} ops, {} watch streams ({} watches), {} linearizability partitions",
            self.ops, self.streams, self.watches, self.partitions
        )?;
        for c in Checker::ALL {
            let n = self.count(c);
            if n == 0 {
                if c != Checker::History {
                    writeln!(f, "  {c}: ok")?;
                }
                continue;
            }
            writeln!(f, "  {c}: {n} violation(s)")?;
            for v in self.of(c).take(SHOWN) {
                writeln!(f, "    - {}", v.message)?;
            }
            if n > SHOWN {
                writeln!(f, "    ... and {} more", n - SHOWN)?;
            }
        }
        for i in &self.inconclusive {
            let keys: Vec<String> = i.keys.iter().take(5).map(|k| k.to_string()).collect();
            let (ops, steps, detail) = (i.ops, i.steps, &i.detail);
            writeln!(f, "  inconclusive: partition of {ops} ops on {} after {steps} steps; {detail}", keys.join(","))?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        write!(f, "{}", if self.is_ok() { "PASS" } else { "FAIL" })
    }
}

/// Run every checker with default options.
pub fn check_all(h: &History) -> Report {
    check_all_with(h, &Options::default())
}

/// Run every checker.
pub fn check_all_with(h: &History, options: &Options) -> Report {
    let mut report = Report {
        ops: h.ops.len(),
        streams: h.watches.len(),
        watches: h.watches.iter().map(|s| s.watches.len()).sum(),
        ..Report::default()
    };
    for e in h.validate() {
        let (ops, streams) = match &e {
            crate::history::HistoryError::Op { op, .. } => (vec![*op], vec![]),
            crate::history::HistoryError::Stream { stream, .. } => (vec![], vec![*stream]),
            crate::history::HistoryError::Json(_) => (vec![], vec![]),
        };
        report.violations.push(Violation { checker: Checker::History, message: e.to_string(), ops, streams });
    }
    let timelines = Timelines::new(h);
    let lin = linearizable::check_with(h, &timelines, options);
    report.partitions = lin.partitions;
    report.inconclusive = lin.inconclusive;
    report.violations.extend(lin.violations);
    report.violations.extend(revisions::check_with(h, &timelines));
    report.violations.extend(watch::check_with(h, &timelines));
    let (durability, note) = durability::check_with(h, &timelines);
    report.violations.extend(durability);
    report.notes.extend(note);
    report.violations.extend(leases::check(h));
    report
}
